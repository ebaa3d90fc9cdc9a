// Public rendering API: compile a subscription's SQL template once, render it per batch.
//
// Errors: compileTemplate throws TemplateError (code TEMPLATE_INVALID, with line/col) for
// anything decidable from the text, and, given the segment table's columns, for a member field
// none of them answers to. render() throws TemplateError when a referenced column is missing
// from a batch member (or Squirrelly code fails), and ValueError (code VALUE_INVALID, with
// .field) when a value cannot be written for the dialect, e.g. NUL in PostgreSQL text or in the
// middle of an SQL Server string.
//
// The home database refuses the same templates when a subscription is written
// (segmenter._template_fields in db/0007_templates.sql); test/template_check.test.ts holds the
// two to one corpus. The json dialect (HTTP requests: json.ts) also renders a sample batch and
// refuses a body that does not parse. Only what needs JavaScript itself (a syntax error in a Squirrelly
// expression) is left to the sidecar, which holds such a subscription in an error state.
import { compileAltcraft } from './altcraft.js'
import { jsonError, sampleContext, splitRequest } from './json.js'
import { lineCol, SYNTAXES, TEMPLATE_DIALECTS, TemplateError, type RenderContext, type Syntax, type TemplateDialect } from './literals.js'
import { compileSquirrelly } from './squirrelly.js'

export { DIALECTS, jsonValue, literal, SYNTAXES, TEMPLATE_DIALECTS, TemplateError, ValueError } from './literals.js'
export type { Dialect, RenderContext, Syntax, TemplateDialect } from './literals.js'
export { METHODS, splitRequest, type Method, type RenderedRequest } from './json.js'

export interface CompiledTemplate {
  syntax: Syntax
  dialect: TemplateDialect
  source: string
  /** Batch-member columns the template references, as written (match case-insensitively). */
  fields: string[]
  render(ctx: RenderContext): string
}

export interface CompileOptions {
  /** The segment table's columns: every field the template names must resolve to one of them. */
  columns?: readonly string[]
  /** How to name the table in the error (default "the segment table"). */
  table?: string
}

export function compileTemplate(source: string, syntax: Syntax, dialect: TemplateDialect, options: CompileOptions = {}): CompiledTemplate {
  if (!SYNTAXES.includes(syntax)) throw new TemplateError(`unknown template syntax "${syntax}"; use one of ${SYNTAXES.join(', ')}`)
  if (!TEMPLATE_DIALECTS.includes(dialect))
    throw new TemplateError(`unknown dialect "${dialect}"; use one of ${TEMPLATE_DIALECTS.join(', ')} (json for HTTP consumers)`)
  const compiled = syntax === 'altcraft' ? compileAltcraft(source, dialect) : compileSquirrelly(source, dialect)
  if (options.columns) checkFields(compiled.fields, options.columns, options.table)
  if (dialect === 'json') checkSampleBody(compiled, syntax)
  return { syntax, dialect, source, fields: compiled.fields, render: compiled.render }
}

/**
 * A json template must render a body that parses: render it for a sample batch (two members with
 * text values for the fields it uses) and parse the body. A request line is checked by
 * splitRequest; with one, an empty body is allowed (a request without a body).
 */
function checkSampleBody(compiled: { fields: string[]; render(ctx: RenderContext): string }, syntax: Syntax): void {
  let text: string
  try {
    text = compiled.render(sampleContext(compiled.fields))
  } catch (e) {
    // Squirrelly runs JavaScript on the sample's text values, which real values (numbers,
    // arrays) may not make fail: that is for the real render to report.
    if (syntax === 'squirrelly') return
    throw e
  }
  const req = splitRequest(text)
  if (req.method !== null && /^[ \t\n\r]*$/.test(req.body)) return
  const err = jsonError(req.body)
  if (!err) return
  const { line, col } = lineCol(req.body, err.at)
  const excerpt = JSON.stringify(req.body.slice(Math.max(0, err.at - 40), err.at) + '⟨here⟩' + req.body.slice(err.at, err.at + 20))
  throw new TemplateError(
    `the body is not JSON when rendered for a sample batch: ${err.problem} at line ${line}:${col} of the body (${excerpt}). ` +
      'Values are written as JSON values; check the commas ({autocomma} between items), brackets and quotes around that place',
  )
}

/**
 * Refuse a member field that no column answers to the way the renderer looks it up (fieldValue:
 * the exact name, else the one column that matches it case-insensitively), so a typo is found
 * when the template is compiled instead of once per member.
 */
export function checkFields(fields: Iterable<string>, columns: readonly string[], table = 'the segment table'): void {
  for (const f of fields) {
    if (columns.includes(f)) continue
    const matches = columns.filter((c) => c.toLowerCase() === f.toLowerCase())
    if (matches.length === 1) continue
    throw new TemplateError(
      matches.length
        ? `the template uses member field "${f}", which is ambiguous in ${table} (${matches.join(', ')}); write the exact name`
        : `the template uses member field "${f}", which ${table} does not have; use one of its columns: ${columns.join(', ')}`,
    )
  }
}
