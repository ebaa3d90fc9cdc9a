// Public rendering API: compile a subscription's SQL template once, render it per batch.
//
// Errors: compileTemplate throws TemplateError (code TEMPLATE_INVALID, with line/col) for
// anything decidable from the text. render() throws TemplateError when a referenced column
// is missing from a batch member (or Squirrelly code fails), and ValueError (code
// VALUE_INVALID, with .field) when a value cannot be written for the dialect, e.g. NUL in
// PostgreSQL text or in the middle of an SQL Server string.
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

export function compileTemplate(source: string, syntax: Syntax, dialect: Dialect): CompiledTemplate {
  if (!SYNTAXES.includes(syntax)) throw new TemplateError(`unknown template syntax "${syntax}"; use one of ${SYNTAXES.join(', ')}`)
  if (!DIALECTS.includes(dialect)) throw new TemplateError(`unknown SQL dialect "${dialect}"; use one of ${DIALECTS.join(', ')}`)
  const compiled = syntax === 'altcraft' ? compileAltcraft(source, dialect) : compileSquirrelly(source, dialect)
  return { syntax, dialect, source, fields: compiled.fields, render: compiled.render }
}
