// The template lexer both syntaxes use: follows the dialect's lexer over the template's own SQL
// text (placeholders are opaque) so a placeholder's surroundings are known at compile time: plain
// SQL, a whole string literal, part of one, a quoted identifier, a comment. Wherever it cannot be
// sure what the server will see, it refuses the template rather than guess.
// db/0007_templates.sql ports analyze() to plpgsql (segmenter._scan_sql) so that the home refuses
// the same templates when a subscription is written: change both together;
// test/template_check.test.ts fails when they disagree.
import { templateError, type Dialect, type IdentQuote, type SlotContext } from './literals.js'

export type Piece =
  | { kind: 'text'; text: string; at: number }
  | { kind: 'slot'; at: number; name: string } // renders a value
  | { kind: 'ctl'; at: number; name: string } // loops/conditions: must sit in plain SQL
  | { kind: 'fixed'; at: number } // constant punctuation emitted by the engine ({autocomma})

export interface Analysis {
  contexts: SlotContext[] // one per slot, in order
  texts: string[] // per piece: the text with quotes around whole-literal slots removed
  /** Statement ends: each `;` in plain SQL (source offset), and whether SQL other than comments precedes it. */
  ends: Array<{ at: number; code: boolean }>
  /** Whether SQL other than comments follows the last `;`. */
  tail: boolean
}

type Quoted = {
  m: 'quoted'
  ident: boolean
  q: string // opening quote char
  close: string
  bs: boolean // backslash escapes the next char
  triple: boolean
  prefix: string
  open: { piece: number; start: number; end: number; at: number }
  slots: number[]
  other: boolean // anything besides exactly one slot between the quotes
  // PostgreSQL continuation (see Join): the escape mode this literal continues in, whether it is the
  // first thing after a loop or condition tag, and whether it holds a backslash.
  cont?: JoinMode
  head?: boolean
  backslash?: boolean
}
// PostgreSQL joins string constants that touch ('a''b') or are separated only by whitespace with a
// line break ('a'<newline>'b'): one literal, in the escape mode of its first part (so an E'…' part,
// or a value the renderer wrote as E'…', makes a backslash in the next part an escape). A Join is
// what the output so far ends with: a string literal of mode `plain`, `e` (E'…', B'…', X'…') or
// `unknown` (a value: E'…' or '…' depending on the data), and how it touches what comes next.
type JoinMode = 'plain' | 'e' | 'unknown'
type Join = { mode: JoinMode; glued: boolean; nl: boolean }
const PG_SPACE = /[ \t\n\r\f\v]/
type State =
  | { m: 'code' }
  | Quoted
  | { m: 'line'; at: number }
  | { m: 'block'; depth: number; at: number }
  | { m: 'dollar'; tag: string; at: number }
  | { m: 'qquote'; close: string; at: number }

export const WORD_END = /[\p{L}\p{N}_$&]$/u

/** WORD_END.test(text), without a regex for the usual ASCII last character (it runs per value). */
export function endsWord(text: string): boolean {
  const c = text.charCodeAt(text.length - 1)
  if (c < 128) return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c === 95 || c === 36 || c === 38
  return WORD_END.test(text.slice(-2)) // NaN (empty text) lands here too, and is no word
}
const WORD_CHAR = /[A-Za-z0-9_]/
const IDENT_START = /[A-Za-z_]/
const DOLLAR_TAG = /\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/y
const WHOLE_PREFIX = /^(|N|E|U&|R)$/i
const NESTED_COMMENTS: ReadonlySet<Dialect> = new Set(['postgres', 'mssql', 'clickhouse'])

function describe(st: State): string {
  switch (st.m) {
    case 'quoted':
      return st.ident ? 'a quoted identifier' : 'a string literal'
    case 'line':
    case 'block':
      return 'an SQL comment'
    case 'dollar':
      return 'a dollar-quoted string'
    case 'qquote':
      return 'a q-quoted string'
    default:
      return 'plain SQL'
  }
}

export function analyze(pieces: Piece[], dialect: Dialect, source: string): Analysis {
  const fail = (at: number, problem: string, fix: string): never => {
    throw templateError(source, at, problem, fix)
  }
  const contexts: SlotContext[] = []
  const edits: Array<Array<[number, number, string]>> = pieces.map(() => [])
  let st: State = { m: 'code' }
  const slotAt: number[] = []
  const pg = dialect === 'postgres'
  let join: Join | null = null
  const touches = () => join !== null && (join.glued || join.nl)
  // Loops and conditions reorder the output: what ends before any such tag (a tail) may meet what
  // starts after any of them (a head).
  const tails: JoinMode[] = []
  const heads: Array<{ at: number; risky: boolean }> = []
  let headPending = false
  const ends: Analysis['ends'] = []
  let code = false // the statement so far has more than whitespace and comments
  const joined = (at: number): never =>
    fail(
      at,
      'a placeholder touches a string literal or another placeholder (PostgreSQL joins string constants that touch or are separated only by a line break into one literal)',
      "separate them with || or a comma, or put them on one line with a space: 'a' || {x}",
    )

  const finish = (q: Quoted, piece: number, start: number, end: number) => {
    if (!q.slots.length) return
    const first = slotAt[q.slots[0]!]!
    const whole = q.slots.length === 1 && !q.other
    const dropQuotes = () => {
      edits[q.open.piece]!.push([q.open.start, q.open.end, ''])
      edits[piece]!.push([start, end, ''])
    }
    if (q.ident) {
      if (!whole || q.prefix)
        fail(
          first,
          'a placeholder inside a quoted identifier must be the entire identifier',
          'write "{x}" alone, or build the name outside the template',
        )
      contexts[q.slots[0]!] = { kind: 'ident', quote: q.q as IdentQuote }
      return dropQuotes()
    }
    if (q.cont && whole) joined(first)
    if (q.cont && q.cont !== 'plain')
      fail(
        first,
        "a placeholder inside a string that PostgreSQL joins to an E'…' string or a value before it (they touch, or only a line break separates them) would be read with backslash escapes",
        "separate the two with || or a comma, or put them on one line: 'a' || '…{x}…'",
      )
    if (whole) {
      if (!WHOLE_PREFIX.test(q.prefix))
        fail(
          first,
          `a placeholder inside a prefixed literal ${q.prefix}'…' is not supported`,
          'remove the prefix; the value is written as a complete literal',
        )
      contexts[q.slots[0]!] = { kind: 'string' }
      return dropQuotes()
    }
    if (dialect === 'mysql')
      fail(
        first,
        'a placeholder inside a larger string literal is not supported for mysql (its meaning of \\ depends on NO_BACKSLASH_ESCAPES)',
        "use CONCAT('prefix', {x}, 'suffix') with a bare placeholder",
      )
    if (q.prefix && !/^N$/i.test(q.prefix))
      fail(
        first,
        `a placeholder inside a prefixed literal ${q.prefix}'…' must be the whole literal`,
        'remove the prefix or concatenate a bare placeholder',
      )
    // SQL Server keeps a non-N literal in the code page: the value would lose characters.
    if (dialect === 'mssql' && !q.prefix) edits[q.open.piece]!.push([q.open.start, q.open.start, 'N'])
    for (const n of q.slots) contexts[n] = { kind: 'inside', quote: q.q }
  }

  for (let p = 0; p < pieces.length; p++) {
    const pc = pieces[p]!
    if (pc.kind === 'slot') {
      const n = slotAt.push(pc.at) - 1
      if (st.m === 'code') {
        code = true
        const prev = pieces[p - 1]
        contexts[n] = { kind: 'bare', space: prev?.kind === 'text' && WORD_END.test(prev.text) }
        if (pg) {
          if (touches()) joined(pc.at)
          join = { mode: 'unknown', glued: true, nl: false }
          headPending = false
        }
      } else if (st.m === 'quoted') st.slots.push(n)
      else fail(pc.at, `${pc.name} is inside ${describe(st)}`, 'move it out; values cannot be escaped there')
      continue
    }
    if (pc.kind === 'ctl') {
      if (st.m !== 'code')
        fail(
          pc.at,
          `${pc.name} is inside ${describe(st)}`,
          'loops and conditions must start and end in plain SQL, outside quotes and comments',
        )
      if (pg) {
        if (join) tails.push(join.mode)
        headPending = true
      }
      continue
    }
    if (pc.kind === 'fixed') {
      if (st.m === 'quoted') st.other = true
      continue
    }
    const s = pc.text
    let i = 0
    // Whether the text just before is part of an identifier, which a "$" then continues (Postgres
    // reads a$b$ as one name, but 1$b$ and a closing $$ followed by $$ as a dollar quote).
    let ident = false
    while (i < s.length) {
      const c = s[i]!
      const at = pc.at + i
      switch (st.m) {
        case 'code': {
          const next = s[i + 1]
          if (pg && c !== "'") {
            if (PG_SPACE.test(c)) {
              if (join) ((join.glued = false), (join.nl ||= c === '\n' || c === '\r'))
            } else if (c === '-' && next === '-') {
              if (join) join.glued = false // a -- comment counts as whitespace; its line break ends it
            } else ((join = null), (headPending = false))
          }
          if (c === "'" || (c === '"' && (dialect === 'mysql' || dialect === 'bigquery'))) {
            code = true
            let b = i
            while (b > 0 && WORD_CHAR.test(s[b - 1]!)) b--
            if (b === i && s[i - 1] === '&' && /u/i.test(s[i - 2] ?? '') && !WORD_CHAR.test(s[i - 3] ?? '')) b = i - 2
            const prefix = s.slice(b, i)
            if (dialect === 'oracle' && /^n?q$/i.test(prefix) && c === "'") {
              const d = s[i + 1]
              if (d === undefined) fail(at, "a q-quoted literal needs its delimiter right after q'", "write q'[...]'")
              const close = ({ '[': ']', '(': ')', '{': '}', '<': '>' } as Record<string, string>)[d!] ?? d!
              st = { m: 'qquote', close: close + "'", at }
              i += 2
              ident = false
              break
            }
            const triple = dialect === 'bigquery' && s.startsWith(c.repeat(3), i)
            const bs =
              dialect === 'mysql' || dialect === 'bigquery' || dialect === 'clickhouse' || (dialect === 'postgres' && /^e$/i.test(prefix))
            const len = triple ? 3 : 1
            // A plain ' that touches the literal before it continues it (prefix letters would have
            // ended the join), in that literal's mode.
            const cont = pg && touches() ? join!.mode : undefined
            st = {
              m: 'quoted',
              ident: false,
              q: c,
              close: c.repeat(len),
              bs: bs || cont === 'e',
              triple,
              prefix,
              open: { piece: p, start: b, end: i + len, at },
              slots: [],
              other: false,
              cont,
              head: headPending,
            }
            join = null
            headPending = false
            i += len
          } else if (
            c === '"' ||
            (c === '`' && dialect !== 'postgres' && dialect !== 'oracle' && dialect !== 'mssql') ||
            (c === '[' && dialect === 'mssql')
          ) {
            const close = c === '[' ? ']' : c
            const bs = dialect === 'clickhouse' || (dialect === 'bigquery' && c === '`')
            code = true
            let b = i
            while (b > 0 && WORD_CHAR.test(s[b - 1]!)) b--
            if (dialect === 'postgres' && c === '"' && s[i - 1] === '&' && /u/i.test(s[i - 2] ?? '')) b = i - 2
            st = {
              m: 'quoted',
              ident: true,
              q: c,
              close,
              bs,
              triple: false,
              prefix: s.slice(b, i),
              open: { piece: p, start: b, end: i + 1, at },
              slots: [],
              other: false,
            }
            i++
          } else if (c === '-' && next === '-') {
            // MySQL needs whitespace after "--"; at the end of the text we cannot see what
            // follows, so assume a comment: any placeholder then is refused, never mis-escaped.
            if (dialect === 'mysql' && i + 2 < s.length && !/[\x00-\x20]/.test(s[i + 2]!)) ((code = true), (i += 2))
            else ((st = { m: 'line', at }), (i += 2))
          } else if (c === '#' && (dialect === 'mysql' || dialect === 'bigquery' || dialect === 'clickhouse')) {
            // ClickHouse only treats "# " and "#!" as comments, but any other "#" is a
            // lexer error there, so calling it a comment is safe.
            st = { m: 'line', at }
            i++
          } else if (c === '/' && next === '/' && dialect === 'clickhouse') {
            st = { m: 'line', at }
            i += 2
          } else if (c === '/' && next === '*') {
            if (dialect === 'mysql' && (s[i + 2] === '!' || s.startsWith('M!', i + 2)))
              fail(at, 'MySQL executable comments /*! … */ are not supported', 'write the SQL without the comment wrapper')
            st = { m: 'block', depth: 1, at }
            i += 2
          } else if (c === '$' && (dialect === 'postgres' || dialect === 'clickhouse') && !ident) {
            // ClickHouse reads "$anything$" as a heredoc whose end it searches for anywhere
            // later, values included; refusing "$" is simpler than predicting that.
            if (dialect === 'clickhouse')
              fail(at, 'a "$" heredoc or parameter is not supported in ClickHouse templates', 'use a quoted string instead')
            code = true
            DOLLAR_TAG.lastIndex = i
            const m = DOLLAR_TAG.exec(s)
            if (m) ((st = { m: 'dollar', tag: m[0], at }), (i += m[0].length))
            else i++
          } else {
            // Postgres identifiers: a letter, "_" or any non-ASCII character starts or continues
            // one; digits and "$" continue one.
            ident = IDENT_START.test(c) || c.charCodeAt(0) >= 0x80 ? true : c === '$' || (c >= '0' && c <= '9') ? ident : false
            if (c === ';') {
              ends.push({ at, code })
              code = false
            } else if (c > ' ') code = true
            i++
            continue
          }
          ident = false
          break
        }
        case 'quoted': {
          if (pg && c === '\\' && !st.ident) {
            st.backslash = true
            if (st.cont === 'unknown')
              fail(
                at,
                "a backslash in a string that PostgreSQL joins to a value before it (they touch, or only a line break separates them): the value may be written as E'…', which makes the backslash an escape",
                "separate the two with || or a comma, or put them on one line: {x} || 'a\\b'",
              )
          }
          if (st.bs && c === '\\') {
            if (i + 1 >= s.length) fail(at, 'a placeholder cannot follow a backslash inside a string literal', 'remove the backslash')
            if (dialect === 'mysql' && s[i + 1] === st.q)
              fail(
                at,
                `\\${st.q} inside a MySQL string means different things with and without NO_BACKSLASH_ESCAPES`,
                `double the quote (${st.q}${st.q}) instead`,
              )
            st.other = true
            i += 2
          } else if (s.startsWith(st.close, i)) {
            if (!st.triple && s[i + 1] === st.close) {
              st.other = true
              i += 2
            } else {
              finish(st, p, i, i + st.close.length)
              i += st.close.length
              if (pg && !st.ident) {
                const whole = st.slots.length === 1 && !st.other
                const mode: JoinMode = st.cont ?? (whole ? 'unknown' : /^[ebx]$/i.test(st.prefix) ? 'e' : 'plain')
                join = { mode, glued: true, nl: false }
                if (st.head) heads.push({ at: st.open.at, risky: (st.slots.length > 0 && !whole) || !!st.backslash })
              }
              st = { m: 'code' }
            }
          } else {
            st.other = true
            i++
          }
          break
        }
        case 'line':
          if (c === '\r' && s[i + 1] !== '\n')
            fail(at, 'a lone carriage return inside a -- comment', 'servers disagree on where such a comment ends; use \\n line breaks')
          if (c === '\n') {
            st = { m: 'code' }
            if (join) join.nl = true
          }
          i++
          break
        case 'block':
          if (c === '*' && s[i + 1] === '/') {
            i += 2
            if (--st.depth === 0) st = { m: 'code' }
          } else if (c === '/' && s[i + 1] === '*' && NESTED_COMMENTS.has(dialect)) {
            st.depth++
            i += 2
          } else i++
          break
        case 'dollar':
        case 'qquote': {
          const close = st.m === 'dollar' ? st.tag : st.close
          const j = s.indexOf(close, i)
          if (j < 0) i = s.length
          else ((i = j + close.length), (st = { m: 'code' }))
          break
        }
      }
    }
  }
  if (st.m !== 'code' && st.m !== 'line') {
    const at = st.m === 'quoted' ? st.open.at : st.at
    fail(at, `${describe(st)} is never closed`, 'close it; the scanner must know where every literal ends')
  }
  const risky = heads.find((h) => h.risky)
  if (risky && tails.some((m) => m !== 'plain'))
    fail(
      risky.at,
      "a string with a backslash or a placeholder right after a loop or condition tag may be joined by PostgreSQL to an E'…' string or a value that ends before such a tag (string constants that touch or are separated only by a line break are one literal, in the first one's escape mode)",
      'put a comma, an operator or other SQL between the tag and the string, or end the text before the tag with something other than a string',
    )
  const texts = pieces.map((pc, i) => {
    if (pc.kind !== 'text') return ''
    let t = pc.text
    for (const [a, b, r] of edits[i]!.sort((x, y) => y[0] - x[0])) t = t.slice(0, a) + r + t.slice(b)
    return t
  })
  return { contexts, texts, ends, tail: code }
}

/**
 * A script's statements, split where the dialect's lexer sees a `;` in plain SQL (not in a
 * literal, a quoted identifier or a comment), without those that are only whitespace and comments.
 * For targets that take one statement per request (ClickHouse).
 */
export function splitStatements(sql: string, dialect: Dialect): string[] {
  const { ends, tail } = analyze([{ kind: 'text', text: sql, at: 0 }], dialect, sql)
  const out: string[] = []
  let from = 0
  for (const end of [...ends, { at: sql.length, code: tail }]) {
    if (end.code) out.push(sql.slice(from, end.at).trim())
    from = end.at + 1
  }
  return out
}
