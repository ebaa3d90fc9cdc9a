// SQL literal rendering per dialect: a value as a literal, as the text inside a template's own
// quotes, or as a quoted identifier, depending on where the lexer (lexer.ts) found its placeholder.
// The json dialect's values are written by json.ts; renderSlot dispatches to both.
//
// Assumptions about the targets (each one is documented because a wrong guess is an
// injection, not just a syntax error):
// - MySQL/MariaDB: the session may or may not have NO_BACKSLASH_ESCAPES, so every literal we
//   emit means the same thing in both modes (quote doubling only, or a hex literal); the
//   connection character set is utf8mb4.
// - PostgreSQL: literals with a backslash use E'' so they do not depend on
//   standard_conforming_strings; a placeholder embedded in a larger template string
//   ('pre-{x}') assumes standard_conforming_strings = on (the default since 9.1).
// - SQL Server: QUOTED_IDENTIFIER either way ("x" as identifier or string both stay closed).
// - Oracle: '' is NULL there, so an empty string reaches Oracle as NULL; booleans are 1/0
//   because SQL-level TRUE/FALSE only exists from 23ai.

/** The SQL dialects: what a literal is written for. */
export type Dialect = 'mysql' | 'postgres' | 'mssql' | 'oracle' | 'bigquery' | 'clickhouse'
/**
 * What a template renders: SQL of a dialect, or `json`, an HTTP request (src/render/json.ts).
 * A separate type, so the SQL-literal functions keep taking only SQL dialects.
 */
export type TemplateDialect = Dialect | 'json'
export type Syntax = 'squirrelly' | 'altcraft'
export const DIALECTS: readonly Dialect[] = ['mysql', 'postgres', 'mssql', 'oracle', 'bigquery', 'clickhouse']
export const TEMPLATE_DIALECTS: readonly TemplateDialect[] = [...DIALECTS, 'json']
export const SYNTAXES: readonly Syntax[] = ['squirrelly', 'altcraft']

export interface RenderContext {
  segment_id: string
  segment_name: string
  audience: string | null
  /**
   * The batch's version: an integer that grows from batch to batch of a subscription in delivery
   * order and is the same when a batch is delivered again (batchVersion in batch.ts), for targets
   * that converge through versioned rows (ClickHouse's ReplacingMergeTree). Delivery always sets
   * it; left out (a preview), it renders as NULL.
   */
  version?: bigint
  /** One object per member, keyed by the segment table's column names. */
  batch: Array<Record<string, unknown>>
}

export class TemplateError extends Error {
  readonly code = 'TEMPLATE_INVALID'
  constructor(
    message: string,
    readonly line?: number,
    readonly col?: number,
  ) {
    super(message)
    this.name = 'TemplateError'
  }
}

/** A value that cannot be written as a literal for the dialect (NUL in PostgreSQL text, …). */
export class ValueError extends Error {
  readonly code = 'VALUE_INVALID'
  constructor(
    message: string,
    public field?: string,
  ) {
    super(message)
    this.name = 'ValueError'
  }
}

/** Text produced by the renderer itself (IN-lists, JSON value lists); the only thing emitted without literal(). */
export class SqlFragment {
  constructor(readonly sql: string) {}
}

export function lineCol(source: string, offset: number): { line: number; col: number } {
  const before = source.slice(0, offset).split('\n')
  return { line: before.length, col: before[before.length - 1]!.length + 1 }
}

export function templateError(source: string, offset: number, problem: string, fix: string): TemplateError {
  const { line, col } = lineCol(source, offset)
  return new TemplateError(`${problem} at line ${line}:${col}. ${fix}`, line, col)
}

// ---------------------------------------------------------------------------------------------
// Literals

const CONTROL = /[\x00-\x1f\x7f]/
const LONE_SURROGATE = /\p{Cs}/u

export function literal(value: unknown, dialect: Dialect): string {
  if (value === null || value === undefined) return 'NULL'
  switch (typeof value) {
    case 'boolean':
      return dialect === 'mssql' || dialect === 'oracle' ? (value ? '1' : '0') : value ? 'TRUE' : 'FALSE'
    case 'bigint':
      // Parenthesised so `a -{x}` cannot become `a --5`, a comment that swallows the line.
      return value < 0n ? `(${value})` : String(value)
    case 'number':
      if (!Number.isFinite(value)) return stringLiteral(String(value), dialect)
      return value < 0 ? `(${value})` : String(value)
    case 'string':
      return stringLiteral(value, dialect)
    case 'object':
      return stringLiteral(textOf(value), dialect)
    default:
      throw new ValueError(`a ${typeof value} cannot be written as an SQL literal`)
  }
}

/** The text a value stands for when the template puts it inside quotes. */
export function textOf(value: unknown): string {
  if (typeof value === 'string') return value
  if (value instanceof Date) return formatDate(value)
  if (typeof value === 'object' && value !== null) {
    const json = JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))
    if (json === undefined) throw new ValueError('the object has no JSON form')
    return json
  }
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return String(value)
  throw new ValueError(`a ${typeof value} cannot be written as SQL text`)
}

function formatDate(d: Date): string {
  const y = d.getUTCFullYear()
  if (Number.isNaN(d.getTime()) || y < 0 || y > 9999) throw new ValueError('the date is invalid or outside years 0-9999')
  const p = (n: number, w = 2) => String(n).padStart(w, '0')
  return `${p(y, 4)}-${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}.${p(d.getUTCMilliseconds(), 3)}`
}

const dq = (s: string) => s.replaceAll("'", "''")

/** Backslash escaping shared by BigQuery and ClickHouse (the only escape both always honour). */
function backslashEscape(s: string, quote: string, nul: string): string {
  let out = ''
  for (const ch of s) {
    if (ch === '\\' || ch === quote) out += '\\' + ch
    else if (ch === '\n') out += '\\n'
    else if (ch === '\r') out += '\\r'
    else if (ch === '\t') out += '\\t'
    else if (ch === '\0') out += nul
    else if (CONTROL.test(ch)) out += '\\x' + ch.charCodeAt(0).toString(16).padStart(2, '0')
    else out += ch
  }
  return out
}

// NUL cannot sit raw inside an SQL Server or Oracle literal, so it becomes a function call
// glued on with the dialect's concatenation operator.
function withNul(s: string, quote: (part: string) => string, nul: string, concat: string): string {
  if (!s.includes('\0')) return quote(s)
  const parts: string[] = []
  s.split('\0').forEach((part, i) => {
    if (i > 0) parts.push(nul)
    if (part) parts.push(quote(part))
  })
  return parts.length === 1 ? parts[0]! : `(${parts.join(concat)})`
}

// Nothing any dialect escapes or refuses: no quote, backslash, control character or surrogate
// (emoji take the careful path too). Most values are like that, and pass with one scan.
const NEEDS_CARE = /['\\\x00-\x1f\x7f-\x9f\ud800-\udfff]/

export function stringLiteral(s: string, dialect: Dialect): string {
  if (!NEEDS_CARE.test(s)) return dialect === 'mssql' ? `N'${s}'` : `'${s}'`
  if (LONE_SURROGATE.test(s)) throw new ValueError('the string is not valid Unicode (lone surrogate)')
  switch (dialect) {
    case 'mysql':
      // A backslash means different things with and without NO_BACKSLASH_ESCAPES; a hex
      // literal does not. The introducer keeps it text and, unlike CONVERT(), coercible to
      // the column's collation.
      return /[\\\x00-\x1f\x7f]/.test(s) ? `_utf8mb4 X'${Buffer.from(s, 'utf8').toString('hex').toUpperCase()}'` : `'${dq(s)}'`
    case 'postgres':
      if (s.includes('\0')) throw new ValueError('PostgreSQL text cannot contain the NUL character')
      return s.includes('\\') ? `E'${dq(s.replaceAll('\\', '\\\\'))}'` : `'${dq(s)}'`
    case 'mssql':
      return withNul(s, (p) => `N'${dq(p)}'`, 'NCHAR(0)', '+')
    case 'oracle':
      return withNul(s, (p) => `'${dq(p)}'`, 'CHR(0)', '||')
    case 'bigquery':
      return `'${backslashEscape(s, "'", '\\x00')}'`
    case 'clickhouse':
      return `'${backslashEscape(s, "'", '\\0')}'`
  }
}

/** Escaped content for a placeholder that is only part of a template string literal. */
function escapeInside(s: string, quote: string, dialect: Dialect): string {
  if (LONE_SURROGATE.test(s)) throw new ValueError('the string is not valid Unicode (lone surrogate)')
  switch (dialect) {
    case 'bigquery':
      return backslashEscape(s, quote, '\\x00')
    case 'clickhouse':
      return backslashEscape(s, quote, '\\0')
    case 'mysql':
      throw new Error('unreachable: partial strings are rejected at compile time for mysql')
    default:
      if (s.includes('\0')) throw new ValueError(`NUL cannot be embedded in a larger string literal in ${dialect}; use a bare placeholder`)
      return dq(s)
  }
}

export function quoteIdent(name: string, quote: IdentQuote, dialect: Dialect): string {
  if (!name || name.includes('\0') || LONE_SURROGATE.test(name))
    throw new ValueError('an identifier must be non-empty valid Unicode without NUL')
  if (quote === '[') return `[${name.replaceAll(']', ']]')}]`
  if (dialect === 'clickhouse' || (dialect === 'bigquery' && quote === '`')) return quote + backslashEscape(name, quote, '\\0') + quote
  if (dialect === 'oracle' && name.includes('"')) throw new ValueError('Oracle identifiers cannot contain a double quote')
  return quote + name.replaceAll(quote, quote + quote) + quote
}

export type IdentQuote = '"' | '`' | '['

export type SlotContext =
  | { kind: 'bare'; space: boolean } // plain SQL; space: the text before ends in a word char
  | { kind: 'string' } // the whole of a template string literal; its quotes were removed
  | { kind: 'ident'; quote: IdentQuote } // the whole of a quoted identifier; its quotes were removed
  | { kind: 'inside'; quote: string } // part of a larger template string literal
  | { kind: 'json' } // json dialect: a JSON value in the body
  | { kind: 'path' } // json dialect: part of the request line, percent-encoded

export function renderSlot(value: unknown, ctx: SlotContext, dialect: TemplateDialect, what: string): string {
  try {
    if (value instanceof SqlFragment) {
      if (ctx.kind === 'path') throw new TemplateError(`${what} produces a list of values and cannot stand in the request line`)
      if (ctx.kind !== 'bare' && ctx.kind !== 'json')
        throw new TemplateError(`${what} produces a list of literals and cannot stand inside quotes`)
      return value.sql
    }
    if (ctx.kind === 'json') return jsonValue(value)
    if (ctx.kind === 'path') return pathValue(value)
    if (dialect === 'json') throw new Error(`unreachable: an SQL context (${ctx.kind}) in a json template`)
    switch (ctx.kind) {
      case 'bare':
        return (ctx.space ? ' ' : '') + literal(value, dialect)
      case 'string':
        return value == null ? 'NULL' : stringLiteral(textOf(value), dialect)
      case 'ident':
        if (value == null) throw new ValueError('an identifier cannot be NULL')
        return quoteIdent(textOf(value), ctx.quote, dialect)
      case 'inside':
        return value == null ? '' : escapeInside(textOf(value), ctx.quote, dialect)
    }
  } catch (e) {
    if (e instanceof ValueError && e.field === undefined) {
      e.field = what
      e.message = `${what}: ${e.message}`
    }
    throw e
  }
}

// ---------------------------------------------------------------------------------------------
// JSON values (the json dialect, src/render/json.ts)

// Besides what RFC 8259 requires (", \ and controls), <, >, & and the JavaScript line
// separators are escaped, so a body embedded in HTML or a script stays inert (`</script>`).
export const JSON_CARE = /["\\\x00-\x1f<>&\u2028\u2029\ud800-\udfff]/
const JSON_EXTRA = /[<>&\u2028\u2029]/g

export function jsonString(s: string): string {
  if (!JSON_CARE.test(s)) return `"${s}"`
  if (LONE_SURROGATE.test(s)) throw new ValueError('the string is not valid Unicode (lone surrogate)')
  return JSON.stringify(s).replace(JSON_EXTRA, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'))
}

/** A value as a JSON value; ValueError for what JSON cannot represent (NaN, Infinity, bytes, …). */
export function jsonValue(value: unknown, depth = 0): string {
  if (value === null || value === undefined) return 'null'
  switch (typeof value) {
    case 'string':
      return jsonString(value)
    case 'number':
      if (!Number.isFinite(value)) throw new ValueError(`${value} has no JSON form`)
      return String(value)
    case 'bigint':
      return value.toString()
    case 'boolean':
      return value ? 'true' : 'false'
    case 'object': {
      if (depth > 100) throw new ValueError('the value is nested more than 100 levels deep')
      if (value instanceof Date) {
        if (Number.isNaN(value.getTime())) throw new ValueError('the date is invalid')
        return `"${value.toISOString()}"`
      }
      if (ArrayBuffer.isView(value))
        throw new ValueError("binary data (bytea) has no JSON form; encode it in the segment table, e.g. encode(col, 'base64')")
      if (Array.isArray(value)) return '[' + value.map((v) => jsonValue(v, depth + 1)).join(',') + ']'
      const parts: string[] = []
      for (const k of Object.keys(value)) {
        const v = (value as Record<string, unknown>)[k]
        if (v !== undefined) parts.push(jsonString(k) + ':' + jsonValue(v, depth + 1))
      }
      return '{' + parts.join(',') + '}'
    }
    default:
      throw new ValueError(`a ${typeof value} has no JSON form`)
  }
}

/**
 * A value in the request line: its text, percent-encoded as a URI component, so it cannot add a
 * path segment, a query parameter or a fragment. NULL, and a value that would be a `.` or `..`
 * path segment (URL parsers resolve those, also when percent-encoded), are refused.
 */
export function pathValue(value: unknown): string {
  if (value === null || value === undefined) throw new ValueError('a NULL cannot be part of the request path')
  let text: string
  if (typeof value === 'string') text = value
  else if (value instanceof Date) text = value.toISOString()
  else if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') text = String(value)
  else throw new ValueError('only text, numbers and dates can be part of the request path')
  if (text === '.' || text === '..') throw new ValueError(`"${text}" would be a dot segment of the request path`)
  try {
    return encodeURIComponent(text)
  } catch {
    throw new ValueError('the string is not valid Unicode (lone surrogate)')
  }
}

/** Exact key first, then a unique case-insensitive match: Postgres folds column names to lowercase. */
export function fieldValue(lead: Record<string, unknown>, field: string): unknown {
  if (Object.prototype.hasOwnProperty.call(lead, field)) return lead[field]
  const lower = field.toLowerCase()
  const keys = Object.keys(lead).filter((k) => k.toLowerCase() === lower)
  if (keys.length === 1) return lead[keys[0]!]
  throw new TemplateError(
    keys.length
      ? `field "${field}" is ambiguous: the batch has ${keys.join(', ')}; write the exact name`
      : `field "${field}" is not a column of the segment (columns: ${Object.keys(lead).join(', ') || 'none'})`,
  )
}
