// Template rendering: the seed's documented queries, literal escaping per dialect (checked by
// decoding the output with a small lexer that follows each server's rules), and compile errors.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Sqrl from 'squirrelly'
import {
  compileTemplate,
  DIALECTS,
  literal,
  TemplateError,
  ValueError,
  type Dialect,
  type RenderContext,
  type Syntax,
} from '../src/render/index.js'

// ---------------------------------------------------------------------------------------------
// A tiny SQL lexer per dialect. String literals come back decoded ({ str }), quoted identifiers
// as { id }, comments as { comment }, everything else as its raw text. If a value broke out of
// its literal, the token list would show extra words, quotes or comments.

type Tok = string | { str: string } | { id: string } | { comment: string }
type Mode = 'plain' | 'mysql' | 'pg' | 'bq' | 'ch'
interface LexOpts {
  noBackslashEscapes?: boolean // MySQL NO_BACKSLASH_ESCAPES
  scsOff?: boolean // PostgreSQL standard_conforming_strings = off
}

function unescape(s: string, i: number, mode: Mode): [string, number] {
  const c = s[i]
  if (c === undefined) throw new Error('backslash at end of input')
  const hex = (len: number, base = 16) => {
    const digits = s.slice(i + 1, i + 1 + len)
    if (digits.length !== len || Number.isNaN(parseInt(digits, base))) throw new Error(`bad escape \\${c}${digits}`)
    return [String.fromCodePoint(parseInt(digits, base)), i + 1 + len] as [string, number]
  }
  switch (mode) {
    case 'mysql': {
      const map: Record<string, string> = { '0': '\0', b: '\b', n: '\n', r: '\r', t: '\t', Z: '\x1a', '%': '\\%', _: '\\_' }
      return [map[c] ?? c, i + 1]
    }
    case 'pg': {
      const map: Record<string, string> = { b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' }
      if (/[0-7]/.test(c)) {
        const m = /^[0-7]{1,3}/.exec(s.slice(i))![0]
        return [String.fromCharCode(parseInt(m, 8)), i + m.length]
      }
      if (c === 'x') {
        const m = /^[0-9a-fA-F]{1,2}/.exec(s.slice(i + 1))![0]
        return [String.fromCharCode(parseInt(m, 16)), i + 1 + m.length]
      }
      if (c === 'u') return hex(4)
      if (c === 'U') return hex(8)
      return [map[c] ?? c, i + 1]
    }
    case 'bq': {
      const map: Record<string, string> = {
        a: '\x07',
        b: '\b',
        f: '\f',
        n: '\n',
        r: '\r',
        t: '\t',
        v: '\v',
        '\\': '\\',
        '?': '?',
        '"': '"',
        "'": "'",
        '`': '`',
      }
      if (map[c] !== undefined) return [map[c]!, i + 1]
      if (c === 'x' || c === 'X') return hex(2)
      if (c === 'u') return hex(4)
      if (c === 'U') return hex(8)
      if (/^[0-7]{3}/.test(s.slice(i))) return [String.fromCodePoint(parseInt(s.slice(i, i + 3), 8)), i + 3]
      throw new Error(`BigQuery rejects the escape \\${c}`)
    }
    case 'ch': {
      const map: Record<string, string> = { a: '\x07', b: '\b', e: '\x1b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v', '0': '\0', N: '' }
      if (map[c] !== undefined) return [map[c]!, i + 1]
      if (c === 'x') return hex(2)
      if ('\\\'"`/='.includes(c) || c <= '\x1f') return [c, i + 1]
      return ['\\' + c, i + 1]
    }
    default:
      throw new Error('no escapes in this mode')
  }
}

/** Reads a quoted token whose opening char is at `i`; returns the decoded text and the end. */
function readQuoted(s: string, i: number, close: string, mode: Mode): [string, number] {
  let v = ''
  i++
  for (;;) {
    const c = s[i]
    if (c === undefined) throw new Error(`unterminated literal in: ${s}`)
    if (c === close) {
      // BigQuery has no doubled-quote escape; '' ends the literal there.
      if (s[i + 1] === close && mode !== 'bq') ((v += close), (i += 2))
      else return [v, i + 1]
    } else if (c === '\\' && mode !== 'plain') {
      const [ch, next] = unescape(s, i + 1, mode)
      v += ch
      i = next
    } else ((v += c), i++)
  }
}

function lex(sql: string, d: Dialect, o: LexOpts = {}): Tok[] {
  const out: Tok[] = []
  const strMode: Mode = {
    mysql: o.noBackslashEscapes ? 'plain' : 'mysql',
    postgres: o.scsOff ? 'pg' : 'plain',
    mssql: 'plain',
    oracle: 'plain',
    bigquery: 'bq',
    clickhouse: 'ch',
  }[d] as Mode
  const quotedIdent = (c: string) =>
    c === '"'
      ? !['mysql', 'bigquery'].includes(d)
      : c === '`'
        ? ['mysql', 'bigquery', 'clickhouse'].includes(d)
        : c === '[' && d === 'mssql'
  let i = 0
  while (i < sql.length) {
    const rest = sql.slice(i)
    let m: RegExpExecArray | null
    if ((m = /^\s+/.exec(rest))) {
      i += m[0].length
    } else if (
      (m = /^(--[^\n]*|\/\*[\s\S]*?\*\/)/.exec(rest)) ||
      (['mysql', 'bigquery', 'clickhouse'].includes(d) && (m = /^#[^\n]*/.exec(rest)))
    ) {
      out.push({ comment: m[0] })
      i += m[0].length
    } else if (d === 'mysql' && (m = /^_utf8mb4 X'([0-9A-F]*)'/.exec(rest))) {
      out.push({ str: Buffer.from(m[1]!, 'hex').toString('utf8') })
      i += m[0].length
    } else if (d === 'mssql' && (m = /^\((?:N'(?:[^']|'')*'|NCHAR\(0\))(?:\+(?:N'(?:[^']|'')*'|NCHAR\(0\)))+\)/.exec(rest))) {
      out.push({
        str: m[0]
          .slice(1, -1)
          .split('+')
          .map((p) => (p === 'NCHAR(0)' ? '\0' : p.slice(2, -1).replaceAll("''", "'")))
          .join(''),
      })
      i += m[0].length
    } else if (d === 'oracle' && (m = /^\((?:'(?:[^']|'')*'|CHR\(0\))(?:\|\|(?:'(?:[^']|'')*'|CHR\(0\)))+\)/.exec(rest))) {
      out.push({
        str: m[0]
          .slice(1, -1)
          .split('||')
          .map((p) => (p === 'CHR(0)' ? '\0' : p.slice(1, -1).replaceAll("''", "'")))
          .join(''),
      })
      i += m[0].length
    } else if (d === 'postgres' && /^[eE]'/.test(rest)) {
      const [v, end] = readQuoted(sql, i + 1, "'", 'pg')
      out.push({ str: v })
      i = end
    } else if ((d === 'mssql' || d === 'oracle') && /^N'/.test(rest)) {
      const [v, end] = readQuoted(sql, i + 1, "'", 'plain')
      out.push({ str: v })
      i = end
    } else if (rest[0] === "'" || (rest[0] === '"' && !quotedIdent('"'))) {
      const [v, end] = readQuoted(sql, i, rest[0], strMode)
      out.push({ str: v })
      i = end
    } else if (quotedIdent(rest[0]!)) {
      const close = rest[0] === '[' ? ']' : rest[0]!
      const mode: Mode = d === 'clickhouse' || (d === 'bigquery' && close === '`') ? (d === 'bigquery' ? 'bq' : 'ch') : 'plain'
      const [v, end] = readQuoted(sql, i, close, mode)
      out.push({ id: v })
      i = end
    } else if ((m = /^([A-Za-z_][A-Za-z0-9_$]*|\d+(\.\d+)?(e[+-]?\d+)?)/i.exec(rest))) {
      out.push(m[0])
      i += m[0].length
    } else {
      out.push(rest[0]!)
      i++
    }
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// Fixtures

const SEG = '4f0c8a1e-2b3d-4c5e-8f9a-0b1c2d3e4f50'
const batch3 = [{ customid: 'c-1' }, { customid: "O'Brien" }, { customid: 'back\\slash' }]
const ctx = (over: Partial<RenderContext> = {}): RenderContext => ({
  segment_id: SEG,
  segment_name: 'VIP "gold" O\'Neil',
  audience: 'crm',
  batch: batch3,
  ...over,
})
const render = (src: string, syntax: Syntax, dialect: Dialect, c: RenderContext = ctx()) => compileTemplate(src, syntax, dialect).render(c)

// The seed's documented queries, verbatim.
const SEED = {
  add: `INSERT INTO mysegment (segId, clientId, updated)
VALUES
{for $index, $lead = $batch}
({segment_id}, "{$lead.CustomID}", NOW()){autocomma}
{end}
ON DUPLICATE KEY UPDATE
updated = NOW();`,
  remove: `DELETE FROM mysegment
WHERE segment_id = {segment_id}
AND clientId IN ({batch_in "CustomID"})`,
  clear: `DELETE FROM mysegment
WHERE segment_id = {segment_id}`,
  upsert: `INSERT INTO segments (segment_id,name,updated)
VALUES
({segment_id}, "{segment_name}", NOW())
ON DUPLICATE KEY UPDATE
name = "{segment_name}",
updated = NOW();`,
  delete: `DELETE FROM segments
WHERE segment_id = {segment_id}
LIMIT 1`,
}

// The same five queries in Squirrelly syntax.
const SQRL = {
  add: `INSERT INTO mysegment (segId, clientId, updated)
VALUES
{{@rows(it.batch) => lead}}({{ it.segment_id }}, "{{ lead.CustomID }}", NOW()){{/rows}}
ON DUPLICATE KEY UPDATE
updated = NOW();`,
  remove: `DELETE FROM mysegment
WHERE segment_id = {{ it.segment_id }}
AND clientId IN ({{ it.batch | in("CustomID") }})`,
  clear: `DELETE FROM mysegment
WHERE segment_id = {{ it.segment_id }}`,
  upsert: `INSERT INTO segments (segment_id,name,updated)
VALUES
({{ it.segment_id }}, "{{ it.segment_name }}", NOW())
ON DUPLICATE KEY UPDATE
name = "{{ it.segment_name }}",
updated = NOW();`,
  delete: `DELETE FROM segments
WHERE segment_id = {{ it.segment_id }}
LIMIT 1`,
}

const HEX_BACKSLASH = "_utf8mb4 X'6261636B5C736C617368'" // back\slash
const EXPECTED_MYSQL = {
  add: `INSERT INTO mysegment (segId, clientId, updated)
VALUES
('${SEG}', 'c-1', NOW()),
('${SEG}', 'O''Brien', NOW()),
('${SEG}', ${HEX_BACKSLASH}, NOW())
ON DUPLICATE KEY UPDATE
updated = NOW();`,
  remove: `DELETE FROM mysegment
WHERE segment_id = '${SEG}'
AND clientId IN ('c-1', 'O''Brien', ${HEX_BACKSLASH})`,
  clear: `DELETE FROM mysegment
WHERE segment_id = '${SEG}'`,
  upsert: `INSERT INTO segments (segment_id,name,updated)
VALUES
('${SEG}', 'VIP "gold" O''Neil', NOW())
ON DUPLICATE KEY UPDATE
name = 'VIP "gold" O''Neil',
updated = NOW();`,
  delete: `DELETE FROM segments
WHERE segment_id = '${SEG}'
LIMIT 1`,
}

// ---------------------------------------------------------------------------------------------
// Seed scenario

for (const name of Object.keys(SEED) as Array<keyof typeof SEED>) {
  test(`seed ${name} query renders exactly for mysql (altcraft)`, () => {
    assert.equal(render(SEED[name], 'altcraft', 'mysql'), EXPECTED_MYSQL[name])
  })
  test(`seed ${name} query in squirrelly renders the same SQL`, () => {
    assert.equal(render(SQRL[name], 'squirrelly', 'mysql'), EXPECTED_MYSQL[name])
  })
}

test('seed add query: one member has no comma, an empty batch has no rows', () => {
  const one = ctx({ batch: [{ customid: 'x' }] })
  const expected = `INSERT INTO mysegment (segId, clientId, updated)\nVALUES\n('${SEG}', 'x', NOW())\nON DUPLICATE KEY UPDATE\nupdated = NOW();`
  assert.equal(render(SEED.add, 'altcraft', 'mysql', one), expected)
  assert.equal(render(SQRL.add, 'squirrelly', 'mysql', one), expected)
  assert.equal(
    render(SEED.add, 'altcraft', 'mysql', ctx({ batch: [] })),
    'INSERT INTO mysegment (segId, clientId, updated)\nVALUES\nON DUPLICATE KEY UPDATE\nupdated = NOW();',
  )
})

test('empty batch gives IN (NULL) in both syntaxes', () => {
  const empty = ctx({ batch: [] })
  assert.match(render(SEED.remove, 'altcraft', 'mysql', empty), /IN \(NULL\)$/)
  assert.match(render(SQRL.remove, 'squirrelly', 'mysql', empty), /IN \(NULL\)$/)
})

test('fields lists the lead columns referenced', () => {
  assert.deepEqual(compileTemplate(SEED.add, 'altcraft', 'mysql').fields, ['CustomID'])
  assert.deepEqual(compileTemplate(SEED.remove, 'altcraft', 'mysql').fields, ['CustomID'])
  assert.deepEqual(compileTemplate(SEED.upsert, 'altcraft', 'mysql').fields, [])
  assert.deepEqual(compileTemplate(SQRL.add, 'squirrelly', 'mysql').fields, ['CustomID'])
  assert.deepEqual(compileTemplate(SQRL.remove, 'squirrelly', 'mysql').fields, ['CustomID'])
  const named = compileTemplate('{{@rows(it.batch) => m, i}}({{ m.email }}, {{ m["phone"] }}, {{ i }}){{/rows}}', 'squirrelly', 'postgres')
  assert.deepEqual(named.fields.sort(), ['email', 'phone'])
})

test('altcraft: inline loop, custom variable names, index, and case-insensitive fields', () => {
  const src = 'SELECT * FROM t WHERE (id, pos) IN ({for $i, $m = $batch}({$m.CustomID}, {$i}){autocomma}{end})'
  assert.equal(render(src, 'altcraft', 'postgres'), `SELECT * FROM t WHERE (id, pos) IN (('c-1', 0),('O''Brien', 1),(E'back\\\\slash', 2))`)
  // An exact key wins over a case-insensitive one.
  const both = ctx({ batch: [{ CustomID: 'exact', customid: 'lower' }] })
  assert.equal(render('{for $index, $lead = $batch}{$lead.CustomID}{end}', 'altcraft', 'postgres', both), "'exact'")
  assert.throws(
    () => render('{for $index, $lead = $batch}{$lead.CUSTOMID}{end}', 'altcraft', 'postgres', both),
    /field "CUSTOMID" is ambiguous/,
  )
})

test('altcraft: "{" not followed by $ or a letter is plain text, so JSON works', () => {
  assert.equal(
    render(`SELECT '{"a": {}}'::jsonb, { segment_id}, {1}, {segment_id}`, 'altcraft', 'postgres'),
    `SELECT '{"a": {}}'::jsonb, { segment_id}, {1}, '${SEG}'`,
  )
})

test('audience renders as a literal and NULL when absent', () => {
  assert.equal(render('SELECT {audience}', 'altcraft', 'mysql'), "SELECT 'crm'")
  assert.equal(render('SELECT {audience}, "{audience}"', 'altcraft', 'mysql', ctx({ audience: null })), 'SELECT NULL, NULL')
  assert.equal(render('SELECT {{ it.audience }}', 'squirrelly', 'mysql', ctx({ audience: null })), 'SELECT NULL')
})

test('squirrelly: rows with a custom separator block, each, if, and index', () => {
  const src = `{{@rows(it.batch) => lead, i}}SELECT {{ i }}, {{ lead.customid }}{{#sep}}\nUNION ALL\n{{/rows}}`
  assert.equal(
    render(src, 'squirrelly', 'clickhouse'),
    `SELECT 0, 'c-1'\nUNION ALL\nSELECT 1, 'O\\'Brien'\nUNION ALL\nSELECT 2, 'back\\\\slash'`,
  )
  const each = '{{@each(it.batch) => lead, i}}{{@if(i > 0)}}, {{/if}}{{ lead.customid }}{{/each}}'
  assert.equal(render(each, 'squirrelly', 'mssql'), "N'c-1', N'O''Brien', N'back\\slash'")
})

// ---------------------------------------------------------------------------------------------
// literal()

test('literal: non-string values', () => {
  for (const d of DIALECTS) {
    assert.equal(literal(null, d), 'NULL')
    assert.equal(literal(undefined, d), 'NULL')
    assert.equal(literal(42, d), '42')
    assert.equal(literal(-5, d), '(-5)') // `x -{n}` must not become a `--` comment
    assert.equal(literal(1.5, d), '1.5')
    assert.equal(literal(12345678901234567890n, d), '12345678901234567890')
    assert.equal(literal(-3n, d), '(-3)')
  }
  assert.equal(literal(true, 'postgres'), 'TRUE')
  assert.equal(literal(false, 'mysql'), 'FALSE')
  assert.equal(literal(true, 'mssql'), '1')
  assert.equal(literal(false, 'oracle'), '0')
  assert.equal(literal(NaN, 'postgres'), "'NaN'")
  assert.equal(literal(-Infinity, 'mssql'), "N'-Infinity'")
  assert.equal(literal(new Date(Date.UTC(2024, 1, 29, 3, 4, 5, 6)), 'mysql'), "'2024-02-29 03:04:05.006'")
  assert.equal(literal(new Date(Date.UTC(2024, 0, 1)), 'mssql'), "N'2024-01-01 00:00:00.000'")
  assert.equal(literal({ a: "it's", n: 1n, l: [1] }, 'postgres'), `'{"a":"it''s","n":"1","l":[1]}'`)
  assert.equal(literal(['x\\y'], 'bigquery'), `'["x\\\\\\\\y"]'`)
  assert.throws(() => literal(new Date(NaN), 'mysql'), ValueError)
  assert.throws(() => literal(Symbol('x'), 'mysql'), ValueError)
  assert.throws(() => literal('\ud800', 'mysql'), /not valid Unicode/)
})

const HOSTILE = [
  "O'Brien",
  'say "hi"',
  'back\\slash',
  'abc\\',
  "a\\'b",
  'line1\nline2\r\nx\ty',
  'nul\0byte',
  '🙂 émoji ü',
  '{$lead.x}',
  '{{ it.batch }}',
  '}',
  "x'); drop table t; --",
  "'",
  "''",
  "\\'",
  '\\',
  '`',
  ']',
  '*/ -- /*',
  '$$',
  '\x1a\x7f\x01',
  '',
]

// Exact literal text for a few hostile strings, per dialect.
const EXACT: Record<string, Record<Dialect, string | typeof ValueError>> = {
  "O'Brien": {
    mysql: "'O''Brien'",
    postgres: "'O''Brien'",
    mssql: "N'O''Brien'",
    oracle: "'O''Brien'",
    bigquery: "'O\\'Brien'",
    clickhouse: "'O\\'Brien'",
  },
  'say "hi"': {
    mysql: `'say "hi"'`,
    postgres: `'say "hi"'`,
    mssql: `N'say "hi"'`,
    oracle: `'say "hi"'`,
    bigquery: `'say "hi"'`,
    clickhouse: `'say "hi"'`,
  },
  'back\\slash': {
    mysql: "_utf8mb4 X'6261636B5C736C617368'",
    postgres: "E'back\\\\slash'",
    mssql: "N'back\\slash'",
    oracle: "'back\\slash'",
    bigquery: "'back\\\\slash'",
    clickhouse: "'back\\\\slash'",
  },
  'abc\\': {
    mysql: "_utf8mb4 X'6162635C'",
    postgres: "E'abc\\\\'",
    mssql: "N'abc\\'",
    oracle: "'abc\\'",
    bigquery: "'abc\\\\'",
    clickhouse: "'abc\\\\'",
  },
  "a\\'b": {
    mysql: "_utf8mb4 X'615C2762'",
    postgres: "E'a\\\\''b'",
    mssql: "N'a\\''b'",
    oracle: "'a\\''b'",
    bigquery: "'a\\\\\\'b'",
    clickhouse: "'a\\\\\\'b'",
  },
  'a\nb\r\tc': {
    mysql: "_utf8mb4 X'610A620D0963'",
    postgres: "'a\nb\r\tc'",
    mssql: "N'a\nb\r\tc'",
    oracle: "'a\nb\r\tc'",
    bigquery: "'a\\nb\\r\\tc'",
    clickhouse: "'a\\nb\\r\\tc'",
  },
  'a\0b': {
    mysql: "_utf8mb4 X'610062'",
    postgres: ValueError,
    mssql: "(N'a'+NCHAR(0)+N'b')",
    oracle: "('a'||CHR(0)||'b')",
    bigquery: "'a\\x00b'",
    clickhouse: "'a\\0b'",
  },
  '\0': { mysql: "_utf8mb4 X'00'", postgres: ValueError, mssql: 'NCHAR(0)', oracle: 'CHR(0)', bigquery: "'\\x00'", clickhouse: "'\\0'" },
  '🙂': { mysql: "'🙂'", postgres: "'🙂'", mssql: "N'🙂'", oracle: "'🙂'", bigquery: "'🙂'", clickhouse: "'🙂'" },
}

test('literal: exact text for hostile strings in every dialect', () => {
  for (const [value, byDialect] of Object.entries(EXACT))
    for (const d of DIALECTS) {
      const want = byDialect[d]
      if (want === ValueError)
        assert.throws(
          () => literal(value, d),
          (e: unknown) => e instanceof ValueError && e.code === 'VALUE_INVALID',
          `${d} ${JSON.stringify(value)}`,
        )
      else assert.equal(literal(value, d), want, `${d} ${JSON.stringify(value)}`)
    }
})

// Each server mode a literal must survive.
const MODES: Record<Dialect, LexOpts[]> = {
  mysql: [{}, { noBackslashEscapes: true }],
  postgres: [{}, { scsOff: true }],
  mssql: [{}],
  oracle: [{}],
  bigquery: [{}],
  clickhouse: [{}],
}

test('literal: every hostile string decodes back to itself in every dialect and server mode', () => {
  for (const d of DIALECTS)
    for (const v of HOSTILE) {
      if (d === 'postgres' && v.includes('\0')) {
        assert.throws(() => literal(v, d), /PostgreSQL text cannot contain the NUL/)
        continue
      }
      for (const mode of MODES[d])
        assert.deepEqual(lex(literal(v, d), d, mode), [{ str: v }], `${d} ${JSON.stringify(mode)} ${JSON.stringify(v)} -> ${literal(v, d)}`)
    }
})

// ---------------------------------------------------------------------------------------------
// Placeholders the template wraps in its own quotes

interface Form {
  name: string
  applies: (d: Dialect) => boolean
  sql: (placeholder: string) => string
  expect: (v: string, d: Dialect) => Tok
  ident?: boolean
  partial?: boolean
  modeIndependent?: boolean // holds under every server mode, not only the documented defaults
}
const DQ_STRING = (d: Dialect) => d === 'mysql' || d === 'bigquery'
const FORMS: Form[] = [
  { name: 'bare', applies: () => true, sql: (p) => `SELECT ${p}, 1`, expect: (v) => ({ str: v }), modeIndependent: true },
  { name: "whole '…'", applies: () => true, sql: (p) => `SELECT '${p}', 1`, expect: (v) => ({ str: v }), modeIndependent: true },
  { name: 'whole "…"', applies: DQ_STRING, sql: (p) => `SELECT "${p}", 1`, expect: (v) => ({ str: v }), modeIndependent: true },
  {
    name: 'identifier "…"',
    applies: (d) => !DQ_STRING(d),
    sql: (p) => `SELECT "${p}", 1`,
    expect: (v) => ({ id: v }),
    ident: true,
    modeIndependent: true,
  },
  {
    name: 'identifier `…`',
    applies: (d) => ['mysql', 'bigquery', 'clickhouse'].includes(d),
    sql: (p) => `SELECT \`${p}\`, 1`,
    expect: (v) => ({ id: v }),
    ident: true,
    modeIndependent: true,
  },
  {
    name: 'identifier […]',
    applies: (d) => d === 'mssql',
    sql: (p) => `SELECT [${p}], 1`,
    expect: (v) => ({ id: v }),
    ident: true,
    modeIndependent: true,
  },
  {
    name: "partial '…'",
    applies: (d) => d !== 'mysql',
    sql: (p) => `SELECT 'pre-${p}-post', 1`,
    expect: (v) => ({ str: `pre-${v}-post` }),
    partial: true,
  },
  {
    name: 'partial "…"',
    applies: (d) => d === 'bigquery',
    sql: (p) => `SELECT "pre-${p}-post", 1`,
    expect: (v) => ({ str: `pre-${v}-post` }),
    partial: true,
  },
]

function rejects(d: Dialect, f: Form, v: string): boolean {
  if (d === 'postgres' && v.includes('\0')) return true
  if (f.ident) return v === '' || v.includes('\0') || (d === 'oracle' && v.includes('"'))
  return !!f.partial && (d === 'mssql' || d === 'oracle') && v.includes('\0')
}

const PLACEHOLDER: Record<Syntax, string> = { altcraft: '{segment_name}', squirrelly: '{{ it.segment_name }}' }

for (const syntax of ['altcraft', 'squirrelly'] as const)
  test(`${syntax}: hostile values stay inside their literal, bare or wrapped in template quotes, in every dialect`, () => {
    for (const d of DIALECTS)
      for (const f of FORMS.filter((x) => x.applies(d))) {
        const t = compileTemplate(f.sql(PLACEHOLDER[syntax]), syntax, d)
        for (const v of HOSTILE) {
          const label = `${d} ${f.name} ${JSON.stringify(v)}`
          if (rejects(d, f, v)) {
            assert.throws(
              () => t.render(ctx({ segment_name: v })),
              (e: unknown) => e instanceof ValueError && e.field === PLACEHOLDER[syntax],
              label,
            )
            continue
          }
          const sql = t.render(ctx({ segment_name: v }))
          for (const mode of f.modeIndependent ? MODES[d] : [{}])
            assert.deepEqual(lex(sql, d, mode), ['SELECT', f.expect(v, d), ',', '1'], `${label} ${JSON.stringify(mode)}: ${sql}`)
        }
      }
  })

test('whole-literal quotes are replaced, partial strings escaped in place', () => {
  assert.equal(
    render(`SELECT '{segment_name}', "{segment_name}"`, 'altcraft', 'mysql', ctx({ segment_name: "it's" })),
    "SELECT 'it''s', 'it''s'",
  )
  assert.equal(render(`SELECT 'x-{segment_name}'`, 'altcraft', 'postgres', ctx({ segment_name: "it's" })), "SELECT 'x-it''s'")
  assert.equal(render(`SELECT 'x-{segment_name}'`, 'altcraft', 'mssql', ctx({ segment_name: 'ü' })), "SELECT N'x-ü'") // N added
  assert.equal(render(`SELECT N'{segment_name}'`, 'altcraft', 'mssql', ctx({ segment_name: 'ü' })), "SELECT N'ü'")
  assert.equal(render(`SELECT "{segment_name}"`, 'altcraft', 'postgres', ctx({ segment_name: 'a"b' })), 'SELECT "a""b"')
  assert.equal(render('SELECT `{segment_name}`', 'altcraft', 'bigquery', ctx({ segment_name: 'a`b' })), 'SELECT `a\\`b`')
  assert.equal(render("SELECT '{segment_name}'", 'altcraft', 'bigquery', ctx({ segment_name: "it's" })), "SELECT 'it\\'s'")
  // Numbers inside quotes become text, since the author asked for a string.
  assert.equal(render(`{for $i, $l = $batch}'{$i}' {end}`, 'altcraft', 'oracle'), "'0' '1' '2' ")
})

test('a bare literal glued to a word gets a space, so E/N/_charset prefixes cannot change its meaning', () => {
  assert.equal(render('SELECT E{segment_name}', 'altcraft', 'postgres', ctx({ segment_name: 'a\\' })), "SELECT E E'a\\\\'")
  assert.equal(render('SELECT E{{ it.segment_name }}', 'squirrelly', 'postgres', ctx({ segment_name: 'x' })), "SELECT E 'x'")
  assert.equal(render('SELECT r{segment_name}', 'altcraft', 'bigquery', ctx({ segment_name: "\\'" })), "SELECT r '\\\\\\''")
})

test('negative numbers cannot start a comment', () => {
  const c = ctx({ batch: [{ n: -5 }] })
  const sql = render('{for $i, $l = $batch}SELECT 1 -{$l.n}{end}', 'altcraft', 'postgres', c)
  assert.equal(sql, 'SELECT 1 -(-5)')
})

test('squirrelly: an injected value cannot break out, whatever the dialect', () => {
  const evil = "x'); drop table t; --"
  const src = `INSERT INTO t VALUES {{@rows(it.batch) => lead}}({{ lead.v }}, '{{ lead.v }}'){{/rows}}; SELECT {{ it.segment_name }}`
  for (const d of DIALECTS)
    for (const mode of MODES[d]) {
      const sql = render(src, 'squirrelly', d, ctx({ segment_name: evil, batch: [{ v: evil }, { v: 'ok' }] }))
      assert.deepEqual(
        lex(sql, d, mode),
        [
          'INSERT',
          'INTO',
          't',
          'VALUES',
          '(',
          { str: evil },
          ',',
          { str: evil },
          ')',
          ',',
          '(',
          { str: 'ok' },
          ',',
          { str: 'ok' },
          ')',
          ';',
          'SELECT',
          { str: evil },
        ],
        `${d}: ${sql}`,
      )
    }
})

test('template syntax inside values is not interpreted', () => {
  const c = ctx({ segment_name: '{segment_id} {{ it.segment_id }}', batch: [{ customid: '{$lead.customid}' }] })
  assert.equal(
    render('SELECT {segment_name}, {batch_in "customid"}', 'altcraft', 'postgres', c),
    "SELECT '{segment_id} {{ it.segment_id }}', '{$lead.customid}'",
  )
  assert.equal(render('SELECT {{ it.segment_name }}', 'squirrelly', 'postgres', c), "SELECT '{segment_id} {{ it.segment_id }}'")
})

// ---------------------------------------------------------------------------------------------
// Errors

function throwsTemplate(fn: () => unknown, message: RegExp) {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof TemplateError, `expected TemplateError, got ${String(e)}`)
    assert.equal(e.code, 'TEMPLATE_INVALID')
    assert.match(e.message, message)
    return true
  })
}
const alt =
  (src: string, d: Dialect = 'mysql') =>
  () =>
    compileTemplate(src, 'altcraft', d)
const sq =
  (src: string, d: Dialect = 'mysql') =>
  () =>
    compileTemplate(src, 'squirrelly', d)

test('altcraft compile errors name the problem, the position and the fix', () => {
  throwsTemplate(alt('SELECT\n  {foo}'), /^unknown tag \{foo\} at line 2:3\. Known tags: \{segment_id\}, .*\{batch_in "Field"\}/)
  throwsTemplate(alt('VALUES\n{for $index, $lead = $batch}\n({$lead.x})'), /^\{for\} is never closed at line 2:1\. add \{end\}/)
  throwsTemplate(alt('SELECT 1 {end}'), /^\{end\} without a matching \{for\} at line 1:10/)
  throwsTemplate(alt('SELECT 1{autocomma}'), /^\{autocomma\} outside a \{for\} loop at line 1:9/)
  throwsTemplate(alt('SELECT {$lead.CustomID}'), /^\{\$lead\.CustomID\} outside a \{for\} loop at line 1:8\. .*\{batch_in "CustomID"\}/)
  throwsTemplate(alt('SELECT {$index}'), /outside a \{for\} loop at line 1:8/)
  throwsTemplate(alt('{for $i, $l = $batch}{for $j, $m = $batch}{end}{end}'), /^nested \{for\} loops are not supported at line 1:22/)
  throwsTemplate(
    alt('{for $i, $m = $batch}{$lead.x}{end}'),
    /^unknown variable \$lead in \{\$lead\.x\} at line 1:22\. the loop names its member \$m/,
  )
  throwsTemplate(alt("SELECT 'id-{segment_id}'"), /larger string literal is not supported for mysql .* at line 1:12\. use CONCAT/)
  throwsTemplate(alt('SELECT 1 -- {segment_id}'), /\{segment_id\} is inside an SQL comment at line 1:13/)
  throwsTemplate(alt('SELECT /* {segment_id} */ 1', 'postgres'), /inside an SQL comment/)
  throwsTemplate(alt('SELECT "t_{segment_id}"', 'postgres'), /must be the entire identifier/)
  throwsTemplate(alt('SELECT * FROM t WHERE id IN ("{batch_in "id"}")', 'postgres'), /entire identifier|inside quotes/)
  throwsTemplate(alt(`SELECT '{batch_in "id"}'`, 'postgres'), /produces a list of literals and cannot stand inside quotes/)
  throwsTemplate(alt("SELECT 'abc", 'postgres'), /a string literal is never closed at line 1:8/)
  throwsTemplate(alt("SELECT 'it\\'s', {segment_id}"), /NO_BACKSLASH_ESCAPES/)
  throwsTemplate(alt("SELECT '{for $i, $l = $batch}{$l.x}{end}'", 'postgres'), /\{for \$i, \$l = \$batch\} is inside a string literal/)
  throwsTemplate(alt('SELECT $$ {segment_id} $$', 'postgres'), /inside a dollar-quoted string/)
  throwsTemplate(alt("SELECT B'{segment_id}'", 'postgres'), /prefixed literal B'…'/)
  throwsTemplate(alt('SELECT /*!50000 {segment_id} */'), /executable comments/)
  const e = (() => {
    try {
      alt('\n\n  {nope}')()
    } catch (err) {
      return err as TemplateError
    }
  })()
  assert.equal(e?.line, 3)
  assert.equal(e?.col, 3)
})

test('squirrelly compile errors', () => {
  throwsTemplate(sq('SELECT {{ it.segment_id '), /^Squirrelly cannot compile the template: unclosed tag at line 1 col \d+/)
  throwsTemplate(sq('SELECT {{ it.segment_id + }}'), /^Squirrelly cannot compile the template: Bad template syntax/)
  throwsTemplate(sq('{{@rows(it.batch) => l}}x'), /unclosed helper "rows"/)
  throwsTemplate(sq('SELECT {{* it.segment_name }}'), /raw output .* is not allowed at line 1:8/)
  throwsTemplate(sq('SELECT {{ it.segment_name | safe }}'), /asks for raw output/)
  throwsTemplate(sq('{{! tR += it.segment_name }}'), /execute tag .* is not allowed/)
  throwsTemplate(sq("{{@block('segment_name')}}x{{/block}}"), /unknown helper @block .* available helpers: @rows/)
  throwsTemplate(sq("SELECT 'x-{{ it.segment_id }}'"), /not supported for mysql/)
  throwsTemplate(sq('SELECT \'{{ it.batch | in("x") }}\'', 'postgres'), /cannot stand inside quotes/)
  throwsTemplate(sq('SELECT 1 -- {{ it.segment_id }}', 'postgres'), /inside an SQL comment at line 1:13/)
  throwsTemplate(sq("'{{@each(it.batch) => l}}{{ l.x }}{{/each}}'", 'postgres'), /inside a string literal/)
})

test('render errors: missing columns and unrepresentable values', () => {
  throwsTemplate(
    () => render('{for $i, $l = $batch}{$l.Nope}{end}', 'altcraft', 'mysql'),
    /field "Nope" is not a column of the segment \(columns: customid\)/,
  )
  throwsTemplate(() => render('{{@rows(it.batch) => l}}{{ l.Nope }}{{/rows}}', 'squirrelly', 'mysql'), /field "Nope" is not a column/)
  throwsTemplate(() => render('SELECT {{ it.batch | in("Nope") }}', 'squirrelly', 'mysql'), /field "Nope"/)
  throwsTemplate(() => render('SELECT {{ it.nothing.deeper }}', 'squirrelly', 'mysql'), /failed while rendering/)
  assert.throws(
    () => render('{for $i, $l = $batch}{$l.CustomID}{end}', 'altcraft', 'postgres', ctx({ batch: [{ customid: 'a\0b' }] })),
    (e: unknown) =>
      e instanceof ValueError &&
      e.code === 'VALUE_INVALID' &&
      e.field === 'CustomID' &&
      /CustomID: PostgreSQL text cannot contain the NUL/.test(e.message),
  )
  assert.throws(() => compileTemplate('x', 'jinja' as Syntax, 'mysql'), TemplateError)
  assert.throws(() => compileTemplate('x', 'altcraft', 'sqlite' as Dialect), TemplateError)
})

test('squirrelly trim markers are applied before scanning, so a trimmed newline cannot pull a value into a comment', () => {
  throwsTemplate(sq('SELECT 1 -- note\n{{- it.segment_name }}', 'postgres'), /inside an SQL comment/)
  assert.equal(render('SELECT\n{{- it.segment_name -}}\n, 1', 'squirrelly', 'postgres', ctx({ segment_name: 'x' })), "SELECT 'x', 1")
  assert.equal(render("SELECT '  {{_ it.segment_name _}}  '", 'squirrelly', 'mysql', ctx({ segment_name: "a'b" })), "SELECT 'a''b'")
  // Numbers are written the same raw or as literals, so plain Squirrelly is the reference for whitespace.
  const nums = ctx({ batch: [{ n: 1 }, { n: 2 }, { n: 3 }] })
  for (const src of [
    '{{@each(it.batch) => l, i}}\n  {{- l.n -}}\n{{/each}}',
    '(\n{{_ it.batch.length _}}\n\n({{- it.batch.length }}\n',
    '{{@each(it.batch) => l, i}}\r\n{{- l.n }},\n{{_ i -}}\r\n\n{{/each}}x',
  ])
    assert.equal(
      render(src, 'squirrelly', 'postgres', nums),
      Sqrl.render(src, nums, { autoEscape: false, autoTrim: false }),
      JSON.stringify(src),
    )
})
