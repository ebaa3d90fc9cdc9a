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
// two to one corpus. Only what needs JavaScript itself (a syntax error in a Squirrelly
// expression) is left to the sidecar, which holds such a subscription in an error state.
import { compileAltcraft } from './altcraft.js'
import { DIALECTS, SYNTAXES, TemplateError, type Dialect, type RenderContext, type Syntax } from './literals.js'
import { compileSquirrelly } from './squirrelly.js'

export { DIALECTS, literal, SYNTAXES, TemplateError, ValueError } from './literals.js'
export type { Dialect, RenderContext, Syntax } from './literals.js'

export interface CompiledTemplate {
  syntax: Syntax
  dialect: Dialect
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

export function compileTemplate(source: string, syntax: Syntax, dialect: Dialect, options: CompileOptions = {}): CompiledTemplate {
  if (!SYNTAXES.includes(syntax)) throw new TemplateError(`unknown template syntax "${syntax}"; use one of ${SYNTAXES.join(', ')}`)
  if (!DIALECTS.includes(dialect)) throw new TemplateError(`unknown SQL dialect "${dialect}"; use one of ${DIALECTS.join(', ')}`)
  const compiled = syntax === 'altcraft' ? compileAltcraft(source, dialect) : compileSquirrelly(source, dialect)
  if (options.columns) checkFields(compiled.fields, options.columns, options.table)
  return { syntax, dialect, source, fields: compiled.fields, render: compiled.render }
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
