// The `json` dialect: templates that render an HTTP request (src/http-request.ts) instead of SQL.
//
//   POST /lists/{audience}/members        optional request line: METHOD and a path relative to
//                                         the consumer's URL; its values are percent-encoded
//   <blank line>
//   {"members": [{for $i, $m = $batch}{"id": {$m.id}}{autocomma}{end}]}   the body: JSON
//
// In the body every value is a whole JSON value (a string with its quotes, a number, null, an
// object), so a placeholder inside a JSON string is refused: its quotes would be doubled, and
// escaping for "the inside of a string" would be a second escaping scheme to get wrong. The body
// of a sample render must parse as JSON, checked when the template is compiled.
//
// db/0012_http.sql ports analyzeJson (segmenter._scan_json) and, for the seed's syntax, the
// sample render, so create_subscription refuses the same templates; test/template_check.test.ts
// holds the two to one corpus. Change both together.
import type { Piece } from './lexer.js'
import { lineCol, TemplateError, templateError, type RenderContext, type SlotContext } from './literals.js'

export const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'] as const
export type Method = (typeof METHODS)[number]

/**
 * Where a template's request line ends (the offset of its line break), or -1 when it has none:
 * a template has one when it starts with a method and a space. The request line must be followed
 * by an empty line; a template whose first line only looks like one gets a TemplateError here,
 * where the position is still the author's.
 */
export function requestLineEnd(source: string): number {
  const m = /^([A-Z]+) /.exec(source)
  if (!m) return -1
  if (!(METHODS as readonly string[]).includes(m[1]!))
    throw new TemplateError(
      `the request line starts with "${m[1]}", which is not an HTTP method at line 1:1. Use one of ${METHODS.join(', ')}, or start the template with the JSON body`,
      1,
      1,
    )
  const nl = source.indexOf('\n')
  if (nl < 0 || !/^\r?\n/.test(source.slice(nl + 1)))
    throw templateError(
      source,
      nl < 0 ? source.length : nl,
      'the request line is not followed by an empty line',
      'write the request line ("POST /path"), then an empty line, then the JSON body',
    )
  return nl
}

/**
 * Each slot's context for the json dialect: 'path' in the request line, 'json' in the body; and
 * the refusals: a placeholder inside a JSON string, a loop or condition in the request line or
 * inside a JSON string. The body's JSON is otherwise checked on the sample render.
 */
export function analyzeJson(pieces: Piece[], source: string): SlotContext[] {
  const lineEnd = requestLineEnd(source)
  const contexts: SlotContext[] = []
  let inString = false // in the body, inside a JSON string of the template's own text
  let stringAt = 0
  for (const pc of pieces) {
    if (pc.kind === 'text') {
      const s = pc.text
      for (let i = 0; i < s.length; i++) {
        if (pc.at + i <= lineEnd) continue
        const c = s[i]
        if (inString) {
          if (c === '\\') i++
          else if (c === '"') inString = false
        } else if (c === '"') ((inString = true), (stringAt = pc.at + i))
      }
      continue
    }
    if (pc.kind === 'fixed') continue
    if (pc.at < lineEnd) {
      if (pc.kind === 'ctl')
        throw templateError(
          source,
          pc.at,
          `${pc.name} is in the request line`,
          'loops and conditions belong in the body; the request line takes values like {audience} only',
        )
      contexts.push({ kind: 'path' })
      continue
    }
    if (inString)
      throw templateError(
        source,
        pc.at,
        pc.kind === 'slot'
          ? `${pc.name} is inside a JSON string (the string opened at line ${lineCol(source, stringAt).line}:${lineCol(source, stringAt).col})`
          : `${pc.name} is inside a JSON string`,
        pc.kind === 'slot'
          ? `remove the quotes around it: every value is written as a JSON value ("x" for text, 1 for a number, null), e.g. "name": ${pc.name}`
          : 'loops and conditions must start and end outside JSON strings',
      )
    if (pc.kind === 'slot') contexts.push({ kind: 'json' })
  }
  return contexts
}

// ---------------------------------------------------------------------------------------------
// The rendered request

export interface RenderedRequest {
  /** The request line's method, or null when the template has none (the consumer's is used). */
  method: Method | null
  /** The request target from the request line ('' when none): "/path?query" or "?query". */
  path: string
  body: string
}

// What a request target may contain: RFC 3986 path and query characters (unreserved, %XX,
// sub-delims, ":", "@", "/", "?"). Everything else (spaces, "#", "\\", quotes, non-ASCII) is refused
// rather than encoded: template text is the author's, and values arrive percent-encoded.
const TARGET = /^[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*$/
const DOT_SEGMENT = /^(?:\.|%2e){1,2}$/i

/**
 * Split a rendered json-dialect template into request line and body. TemplateError for a request
 * line that could send the request elsewhere than below the consumer's URL: an absolute URL, a
 * "//host" or "\\" start, a dot segment, or characters a request target cannot hold.
 */
export function splitRequest(rendered: string): RenderedRequest {
  const m = /^([A-Z]+) ([^\r\n]*)\r?\n/.exec(rendered)
  if (!m) return { method: null, path: '', body: rendered }
  const method = m[1]!
  const target = m[2]!
  const bad = (problem: string, fix: string): never => {
    throw new TemplateError(`the request line ${JSON.stringify(m[0].trimEnd())} ${problem}. ${fix}`)
  }
  if (!(METHODS as readonly string[]).includes(method))
    bad(`starts with "${method}", which is not an HTTP method`, `Use one of ${METHODS.join(', ')}`)
  const rest = rendered.slice(m[0].length)
  const blank = /^\r?\n/.exec(rest)
  if (!blank) bad('is not followed by an empty line', 'Write the request line, then an empty line, then the JSON body')
  if (!target.startsWith('/') && !target.startsWith('?'))
    bad(
      'does not start its path with "/" or "?"',
      "The path is relative to the consumer's URL (its environment variable), e.g. POST /lists/{audience}/members; an absolute URL is not allowed",
    )
  if (target.startsWith('//')) bad('starts with "//", which names another host', 'Start the path with a single "/"')
  if (!TARGET.test(target) || /%(?![0-9A-Fa-f]{2})/.test(target))
    bad(
      'holds a character a request path cannot (a space, "#", "\\", a quote, non-ASCII, a "%" without two hex digits, …)',
      'Percent-encode it in the template; values in the request line are encoded for you',
    )
  const q = target.indexOf('?')
  if ((q < 0 ? target : target.slice(0, q)).split('/').some((seg) => DOT_SEGMENT.test(seg)))
    bad('has a "." or ".." path segment', "Write the path without dot segments; it is relative to the consumer's URL")
  return { method: method as Method, path: target, body: rest.slice(blank![0].length) }
}

// ---------------------------------------------------------------------------------------------
// The sample render

/** Sample data for the compile-time render: two members, so a missing {autocomma} shows. */
export function sampleContext(fields: Iterable<string>): RenderContext {
  const member = (n: number) => Object.fromEntries([...fields].map((f) => [f, `sample ${f} ${n}`]))
  return {
    segment_id: '00000000-0000-4000-8000-000000000000',
    segment_name: 'sample',
    audience: 'sample',
    version: 1n,
    batch: [member(1), member(2)],
  }
}

/**
 * The offset of the first RFC 8259 error in `text` and what is wrong there, or null when `text`
 * is one JSON value (with whitespace around it). Hand-written rather than JSON.parse because
 * V8's messages do not always give the position.
 */
export function jsonError(text: string): { at: number; problem: string } | null {
  let i = 0
  const n = text.length
  const ws = () => {
    while (i < n) {
      const c = text.charCodeAt(i)
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++
      else break
    }
  }
  class Bad {
    constructor(
      readonly at: number,
      readonly problem: string,
    ) {}
  }
  const found = () => (i >= n ? 'the end of the body' : JSON.stringify(text[i]))
  const value = (depth: number): void => {
    if (depth > 512) throw new Bad(i, 'JSON nested too deep')
    ws()
    const c = text[i]
    if (c === '{') {
      i++
      ws()
      if (text[i] === '}') return void i++
      for (;;) {
        ws()
        if (text[i] !== '"') throw new Bad(i, `expected a member name in double quotes, found ${found()}`)
        string()
        ws()
        if (text[i] !== ':') throw new Bad(i, `expected ":" after the member name, found ${found()}`)
        i++
        value(depth + 1)
        ws()
        if (text[i] === ',') i++
        else if (text[i] === '}') return void i++
        else throw new Bad(i, `expected "," or "}" in the object, found ${found()}`)
      }
    }
    if (c === '[') {
      i++
      ws()
      if (text[i] === ']') return void i++
      for (;;) {
        value(depth + 1)
        ws()
        if (text[i] === ',') i++
        else if (text[i] === ']') return void i++
        else throw new Bad(i, `expected "," or "]" in the array, found ${found()}`)
      }
    }
    if (c === '"') return string()
    const lit = /true|false|null|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y
    lit.lastIndex = i
    const m = lit.exec(text)
    if (m && m[0].length) {
      i += m[0].length
      // "01" or "1x": the literal must end there.
      if (i < n && /[0-9A-Za-z_.+-]/.test(text[i]!)) throw new Bad(i, `unexpected ${found()} after ${m[0]}`)
      return
    }
    throw new Bad(i, `expected a JSON value, found ${found()}`)
  }
  const string = () => {
    i++ // the opening quote
    for (;;) {
      if (i >= n) throw new Bad(i, 'a string is never closed')
      const c = text.charCodeAt(i)
      if (c === 0x22) return void i++
      if (c < 0x20) throw new Bad(i, `a control character (U+${c.toString(16).padStart(4, '0')}) inside a string must be escaped`)
      if (c === 0x5c) {
        const e = text[i + 1]
        if (e !== undefined && '"\\/bfnrt'.includes(e)) i += 2
        else if (e === 'u' && /^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) i += 6
        else throw new Bad(i, 'an invalid escape in a string')
      } else i++
    }
  }
  try {
    value(0)
    ws()
    if (i < n) throw new Bad(i, `unexpected ${found()} after the JSON value`)
    return null
  } catch (e) {
    if (e instanceof Bad) return { at: e.at, problem: e.problem }
    throw e
  }
}
