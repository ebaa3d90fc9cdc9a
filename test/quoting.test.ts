// No injection in any server mode (issue 13, item 9): a property test. Random strings heavy in
// quotes, backslashes (a trailing one too), `$`, `$$`, comment openers, `;`, control characters and
// non-ASCII text go through both template syntaxes and every placeholder position the renderer
// accepts, are executed by the real sinks (openMysqlSink / openPostgresSink, as the sidecar does)
// in every quoting mode a target may start a session in, and are read back byte for byte (as hex).
// Plus the template's own literals (they must mean what the scanner assumed), IN lists, the
// issue's payloads, a check that no injected table exists, and one case through a real sidecar.
//
// Modes: PostgreSQL with standard_conforming_strings on, and off as the database's default
// (`alter database … set`); MariaDB with the global sql_mode '' , NO_BACKSLASH_ESCAPES,
// ANSI_QUOTES, ANSI and NO_BACKSLASH_ESCAPES,ANSI_QUOTES on a private server (SET GLOBAL applies to
// the connections opened afterwards: checked on a new plain connection before each mode runs).
//
// QUOTING_SEED=<n> replays a run (every failure message starts with it); QUOTING_COUNT=<n> draws
// more strings per mode than the default 200.
import assert from 'node:assert/strict'
import { after, test } from 'node:test'
import mysql from 'mysql2/promise'
import pg from 'pg'
import {
  compileTemplate,
  TemplateError,
  type CompiledTemplate,
  ValueError,
  type Dialect,
  type RenderContext,
  type Syntax,
} from '../src/render/index.js'
import { openMysqlSink } from '../src/sinks/mysql.js'
import { openPostgresSink } from '../src/sinks/postgres.js'
import type { Sink } from '../src/sinks/index.js'
import { freshMariadbServer, freshPg, type FreshPg, type MariaServer } from './harness/db.js'
import { startTestSidecar } from './harness/sidecar.js'
import { deferrer, until } from './harness/wait.js'

const SEED = process.env.QUOTING_SEED ? Number(process.env.QUOTING_SEED) : Math.floor(Math.random() * 2 ** 32)
const PER_MODE = Number(process.env.QUOTING_COUNT ?? 200) // random strings per mode, besides the fixed ones
const SEEDED = `QUOTING_SEED=${SEED}`

// ---------------------------------------------------------------------------------------------
// Strings

function mulberry32(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

// [token, weight]: quotes and backslashes dominate; everything a lexer might react to is there.
const TOKENS: Array<[string, number]> = [
  ["'", 10],
  ['"', 7],
  ['\\', 10],
  ["''", 2],
  ["\\'", 4],
  ['\\"', 2],
  ['\\\\', 2],
  ['`', 2],
  ['$', 3],
  ['$$', 3],
  ['$q$', 1],
  ['--', 3],
  ['-- ', 1],
  ['/*', 2],
  ['*/', 1],
  ['#', 1],
  [';', 3],
  ['\n', 3],
  ['\r', 2],
  ['\r\n', 1],
  ['\t', 2],
  ['\x1a', 1], // MySQL's \Z
  ['\b', 1],
  ['\x7f', 1],
  ['\u0085', 1], // NEL, a C1 control
  [' ', 3],
  ['a', 3],
  ['x', 2],
  ['0', 1],
  ['%', 1],
  ['_', 1],
  ['(', 1],
  [')', 1],
  [',', 1],
  ['?', 1],
  ['{', 1],
  ['}', 1],
  ['{$lead.v}', 1],
  ['{{ lead.v }}', 1],
  ["E'", 1],
  ["N'", 1],
  ["X'", 1],
  ['_utf8mb4', 1],
  ['U&', 1],
  ['Жёлтый', 2],
  ['ё', 1],
  ['漢字', 1],
  ['🙂', 2],
  ['👩‍👩‍👧', 1], // ZWJ sequence
  ['e\u0301', 2], // combining acute
  ['\u0338', 1], // combining long solidus overlay
  ['\u00a0', 1],
  ['\u2028', 1],
  ['\ufeff', 1],
]
const TOTAL_WEIGHT = TOKENS.reduce((s, [, w]) => s + w, 0)

function hostile(rnd: () => number, nul: boolean): string {
  const pick = () => {
    if (nul && rnd() < 0.06) return '\0'
    let r = rnd() * TOTAL_WEIGHT
    for (const [t, w] of TOKENS) if ((r -= w) < 0) return t
    return 'a'
  }
  const len = Math.floor(rnd() ** 1.5 * 24)
  let s = ''
  for (let j = 0; j < len; j++) s += pick()
  const r = rnd()
  if (r < 0.2) s += '\\'
  else if (r < 0.28) s = "'" + s
  else if (r < 0.34) s += "'"
  else if (r < 0.38 && nul) s += '\\\0'
  return s
}

/** The issue's payload and its relatives: each one alone in a batch, so a break-out would commit. */
const PAYLOADS = [
  "x\\'); create table pwned1 (x int); --",
  "x\\'); create table pwned2 (x int); -- ",
  "\\'); create table pwned3 (x int); #",
  "x'); create table pwned4 (x int); -- ",
  'x"); create table pwned5 (x int); -- ',
  'x\\"); create table pwned6 (x int); -- ',
  "x\\\\'); create table pwned7 (x int); -- ",
  '$$); create table pwned8 (x int); -- ',
  "x\\'\n); create table pwned9 (x int); /*",
]

const FIXED = [
  '',
  "'",
  '"',
  '\\',
  "\\'",
  "'\\",
  "''",
  '\\\\',
  "a\\'b",
  'trailing\\',
  "O'Brien",
  'say "hi"',
  '$$',
  '$$;$$',
  '$tag$ x $tag$',
  '-- c',
  '/* c',
  'a;b',
  '\n',
  '\r',
  '\r\n\t',
  'Жёлтый 🙂 e\u0301 👩‍👩‍👧 漢字',
  ...PAYLOADS,
]

/** Strings a mode is tested with: the fixed ones, then PER_MODE random ones (no NUL: see nulStrings). */
function strings(seed: number): string[] {
  const rnd = mulberry32(seed)
  const out = [...FIXED]
  for (let i = 0; i < PER_MODE; i++) out.push(hostile(rnd, false))
  return out
}
/** Random strings that contain NUL: MariaDB stores them; PostgreSQL text cannot, a ValueError. */
function nulStrings(seed: number, n: number): string[] {
  const rnd = mulberry32(seed ^ 0x5bd1e995)
  const out = ['\0', 'a\0b', "\\\0'"]
  while (out.length < n) {
    const s = hostile(rnd, true)
    out.push(s.includes('\0') ? s : s + '\0')
  }
  return out
}

/** A PostgreSQL identifier keeps at most 63 bytes and cannot be empty. */
function identSafe(s: string): string {
  const chars = Array.from(s)
  while (Buffer.byteLength(chars.join(''), 'utf8') > 63) chars.pop()
  return chars.join('') || 'empty'
}

// ---------------------------------------------------------------------------------------------
// Placeholder positions. `expr` wraps the placeholder as the template writes it; `stored` is what
// the target must then hold. `refused`: the renderer may refuse the template for that dialect
// (and must then do it with a TemplateError); anything it accepts must round-trip.

interface Position {
  name: string
  dialects: Dialect[]
  expr(slot: string): string
  stored(v: string): string
  refused?: Dialect[]
  value?: (v: string) => string // the member value to send, if not the string itself
}
const same = (v: string) => v
const POSITIONS: Position[] = [
  { name: 'bare', dialects: ['mysql', 'postgres'], expr: (s) => s, stored: same },
  { name: "'…'", dialects: ['mysql', 'postgres'], expr: (s) => `'${s}'`, stored: same },
  { name: '"…" (a string in MySQL)', dialects: ['mysql'], expr: (s) => `"${s}"`, stored: same },
  {
    // In PostgreSQL "…" is an identifier: read back as the key of row_to_json.
    name: '"…" (an identifier in PostgreSQL)',
    dialects: ['postgres'],
    expr: (s) => `(select json_object_keys(row_to_json(q)) from (select 1 as "${s}") q)`,
    stored: same,
    value: identSafe,
  },
  { name: "N'…'", dialects: ['mysql', 'postgres'], expr: (s) => `N'${s}'`, stored: same },
  { name: "E'…'", dialects: ['postgres'], expr: (s) => `E'${s}'`, stored: same },
  { name: "U&'…'", dialects: ['postgres'], expr: (s) => `U&'${s}'`, stored: same },
  {
    name: "'<…>' (inside a larger literal)",
    dialects: ['mysql', 'postgres'],
    expr: (s) => `'<${s}>'`,
    stored: (v) => `<${v}>`,
    refused: ['mysql'],
  },
  {
    name: "'[…|…]' (two in one literal)",
    dialects: ['mysql', 'postgres'],
    expr: (s) => `'[${s}|${s}]'`,
    stored: (v) => `[${v}|${v}]`,
    refused: ['mysql'],
  },
  { name: "N'<…>'", dialects: ['mysql', 'postgres'], expr: (s) => `N'<${s}>'`, stored: (v) => `<${v}>`, refused: ['mysql'] },
  // E'' gives the backslash a meaning the inside-escaping does not handle: must be refused.
  { name: "E'<…>'", dialects: ['postgres'], expr: (s) => `E'<${s}>'`, stored: (v) => `<${v}>`, refused: ['postgres'] },
]

const SLOT = { altcraft: '{$lead.v}', squirrelly: '{{ lead.v }}' } as const
const NAME = { altcraft: '{segment_name}', squirrelly: '{{ it.segment_name }}' } as const

// One row per line, so that a `--` an injected value brings only comments out the rest of its row.
function rowsTemplate(syntax: Syntax, c: number, expr: string): string {
  return syntax === 'altcraft'
    ? `insert into rt (c, k, v) values\n{for $i, $lead = $batch}\n(${c}, {$lead.k}, ${expr}){autocomma}\n{end}\n`
    : `insert into rt (c, k, v) values\n{{@rows(it.batch) => lead}}(${c}, {{ lead.k }}, ${expr}){{/rows}}\n`
}
function inListTemplate(syntax: Syntax, c: number): string {
  return syntax === 'altcraft'
    ? `delete from rt where c = ${c} and v in ({batch_in "v"})`
    : `delete from rt where c = ${c} and v in ({{ it.batch | in("v") }})`
}
// The template's own literals next to a value: what they hold must be what the scanner assumed
// (MySQL: a backslash escapes and "…" is a string; PostgreSQL: standard_conforming_strings on).
function constantsTemplate(syntax: Syntax, dialect: Dialect, c: number): { sql: string; stored: (name: string) => string[] } {
  const n = NAME[syntax]
  if (dialect === 'mysql')
    return {
      sql: `insert into rt (c, k, v) values (${c}, 0, 'bs\\\\const'), (${c}, 1, "dq ""const"" 'x'"), (${c}, 2, 'sq ''const'' "x"'),\n(${c}, 3, ${n}),\n(${c}, 4, "${n}")`,
      stored: (name) => ['bs\\const', `dq "const" 'x'`, `sq 'const' "x"`, name, name],
    }
  // Rows 5-7: string constants PostgreSQL joins across a line break, in the first one's escape
  // mode (the ones the renderer accepts; see the continuation test below for those it refuses).
  return {
    sql:
      `insert into rt (c, k, v) values (${c}, 0, 'bs\\\\const'), (${c}, 1, E'e\\\\const'), (${c}, 2, $$dollar 'q' \\$$),\n(${c}, 3, ${n}),\n(${c}, 4, '<${n}>'),\n` +
      `(${c}, 5, '${n}'\n'-suffix'),\n(${c}, 6, 'prefix-' -- a comment is whitespace here\n'<${n}>'),\n(${c}, 7, E'e\\\\'\n'it\\'s')`,
    stored: (name) => ['bs\\\\const', 'e\\const', "dollar 'q' \\", name, `<${name}>`, `${name}-suffix`, `prefix-<${name}>`, "e\\it's"],
  }
}

// ---------------------------------------------------------------------------------------------
// Driving a target

interface Target {
  label: string
  dialect: Dialect
  sink: Sink
  /** Every row of rt as (c, k, hex of v's UTF-8 bytes, lowercase). */
  rows(): Promise<Array<{ c: number; k: number; h: string }>>
  count(c: number): Promise<number>
  /** Tables named pwned* anywhere in the target. */
  pwned(): Promise<string[]>
}

const firstLine = (err: unknown): string => String((err as Error)?.message ?? err).split('\n')[0]!
const hex = (s: string) => Buffer.from(s, 'utf8').toString('hex')
const show = (s: string) => JSON.stringify(s)
const ctxFor = (batch: Array<Record<string, unknown>>, name = 'seg'): RenderContext => ({
  segment_id: '00000000-0000-4000-8000-000000000001',
  segment_name: name,
  audience: null,
  batch,
})

/** Deliver everything into one target mode; returns the problems found (empty: all good). */
async function exercise(t: Target, seed: number): Promise<string[]> {
  const problems: string[] = []
  // At most two lines per case, the rest counted: one broken position must not hide the others.
  const perCase = new Map<string, number>()
  const say = (what: string, detail: string) => {
    const n = (perCase.get(what) ?? 0) + 1
    perCase.set(what, n)
    if (n <= 2) problems.push(`${t.label}: ${what}: ${detail}`)
  }
  const values = strings(seed)
  const expected = new Map<string, string>() // `${c}:${k}` -> hex
  let pos = 0n
  let c = 0
  const apply = (sql: string) => t.sink.apply([sql], 'quoting', { pos: ++pos, ord: 0 })
  const cases: Array<{ c: number; what: string }> = []

  /** Run one rendered batch; if the target rejects it, find (up to 3) members it rejects alone. */
  const deliver = async (
    what: string,
    render: (batch: Array<Record<string, unknown>>) => string,
    batch: Array<{ k: number; v: string }>,
  ) => {
    try {
      await apply(render(batch))
      return
    } catch (err) {
      say(what, `the target rejected the batch: ${firstLine(err)}`)
    }
    let found = 0
    for (const m of batch) {
      try {
        await apply(render([m]))
      } catch (err) {
        say(what, `rejects the value ${show(m.v)}: ${firstLine(err)}; rendered: ${show(render([m]).slice(0, 200))}`)
        if (++found >= 3) break
      }
    }
  }

  for (const syntax of ['altcraft', 'squirrelly'] as const) {
    // Every position, one batch of all strings.
    for (const p of POSITIONS.filter((p) => p.dialects.includes(t.dialect))) {
      const what = `${syntax} ${p.name}`
      const cc = ++c
      let tpl: CompiledTemplate
      try {
        tpl = compileTemplate(rowsTemplate(syntax, cc, p.expr(SLOT[syntax])), syntax, t.dialect)
      } catch (err) {
        if (!(err instanceof TemplateError)) say(what, `compileTemplate threw ${String(err)}, not a TemplateError`)
        else if (!p.refused?.includes(t.dialect)) say(what, `the template was refused: ${err.message}`)
        continue
      }
      cases.push({ c: cc, what })
      const batch = values.map((v, k) => ({ k, v: (p.value ?? same)(v) }))
      for (const m of batch) expected.set(`${cc}:${m.k}`, hex(p.stored(m.v)))
      await deliver(what, (b) => tpl.render(ctxFor(b)), batch)
      // The issue's payloads, each alone: a break-out would commit its create table.
      const cp = ++c
      cases.push({ c: cp, what: `${what}, payload alone` })
      const tplP = compileTemplate(rowsTemplate(syntax, cp, p.expr(SLOT[syntax])), syntax, t.dialect)
      for (const [k, v0] of PAYLOADS.entries()) {
        const v = (p.value ?? same)(v0)
        expected.set(`${cp}:${k}`, hex(p.stored(v)))
        await deliver(`${what}, payload alone`, (b) => tplP.render(ctxFor(b)), [{ k, v }])
      }
      // NUL: stored as is by MariaDB, a ValueError for PostgreSQL (never a mangled value).
      if (t.dialect === 'postgres')
        for (const v of nulStrings(seed, 20)) {
          try {
            tpl.render(ctxFor([{ k: 0, v }]))
            say(what, `${show(v)} rendered although PostgreSQL text cannot hold NUL`)
          } catch (err) {
            if (!(err instanceof ValueError) || !/NUL/.test(err.message))
              say(what, `NUL in ${show(v)} gave ${String(err)}, not a ValueError`)
          }
        }
      else {
        const cn = ++c
        cases.push({ c: cn, what: `${what}, with NUL` })
        const tplN = compileTemplate(rowsTemplate(syntax, cn, p.expr(SLOT[syntax])), syntax, t.dialect)
        const nb = nulStrings(seed, 30).map((v, k) => ({ k, v }))
        for (const m of nb) expected.set(`${cn}:${m.k}`, hex(p.stored(m.v)))
        await deliver(`${what}, with NUL`, (b) => tplN.render(ctxFor(b)), nb)
      }
    }

    // The template's own literals, with a hostile segment name next to them (bare, quoted, inside).
    const rnd = mulberry32(seed + 7)
    for (let i = 0; i < 12; i++) {
      const name = i < PAYLOADS.length ? PAYLOADS[i]! : hostile(rnd, false)
      const cc = ++c
      const what = `${syntax} template constants`
      const { sql, stored } = constantsTemplate(syntax, t.dialect, cc)
      cases.push({ c: cc, what })
      stored(name).forEach((v, k) => expected.set(`${cc}:${k}`, hex(v)))
      try {
        await apply(compileTemplate(sql, syntax, t.dialect).render(ctxFor([], name)))
      } catch (err) {
        say(what, `with segment_name ${show(name)}: ${firstLine(err)}`)
      }
    }
  }

  // Read everything back, byte for byte.
  const got = new Map((await t.rows()).map((r) => [`${r.c}:${r.k}`, r.h]))
  const decode = (h: string) => show(Buffer.from(h, 'hex').toString('utf8'))
  for (const [key, want] of expected) {
    const have = got.get(key)
    if (have === want) continue
    const cc = Number(key.split(':')[0])
    const what = cases.find((x) => x.c === cc)?.what ?? `case ${cc}`
    say(`${what}, read back`, `row ${key}: expected ${decode(want)}, ${have === undefined ? 'missing' : `got ${decode(have)}`}`)
  }
  for (const key of got.keys()) if (!expected.has(key)) say('unexpected rows', `${key}: ${decode(got.get(key)!)}`)

  // IN lists: the members' exact values match the rows the bare position stored.
  for (const syntax of ['altcraft', 'squirrelly'] as const) {
    const bare = cases.find((x) => x.what === `${syntax} bare`)
    if (!bare) continue
    const tpl = compileTemplate(inListTemplate(syntax, bare.c), syntax, t.dialect)
    try {
      await apply(tpl.render(ctxFor(values.map((v, k) => ({ k, v })))))
      const left = await t.count(bare.c)
      if (left !== 0) say(`${syntax} IN list`, `${left} of ${values.length} rows were not matched by their own values`)
    } catch (err) {
      say(`${syntax} IN list`, firstLine(err))
    }
  }

  const pwned = await t.pwned()
  if (pwned.length) problems.unshift(`${t.label}: INJECTED tables exist: ${pwned.join(', ')}`)
  for (const [what, n] of perCase) if (n > 2) problems.push(`${t.label}: ${what}: ${n - 2} more problem(s) like these`)
  return problems
}

function report(problems: string[]): void {
  if (problems.length) assert.fail(`${SEEDED} (set it to replay this run)\n${problems.join('\n')}`)
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL targets (databases on the shared server)

async function pgTarget(scs: 'on' | 'off'): Promise<{ db: FreshPg; url: string }> {
  const db = await freshPg()
  if (scs === 'off') await db.query(`alter database ${db.database} set standard_conforming_strings = off`)
  await db.query('create table rt (c int not null, k int not null, v text, primary key (c, k))')
  // A new session starts in the mode under test (the pool's may predate the alter).
  const probe = new pg.Client({ connectionString: db.url })
  await probe.connect()
  try {
    const { rows } = await probe.query<{ standard_conforming_strings: string }>('show standard_conforming_strings')
    assert.equal(rows[0]!.standard_conforming_strings, scs, 'a new session of the target database starts in the mode under test')
  } finally {
    await probe.end()
  }
  return { db, url: db.url }
}

for (const scs of ['on', 'off'] as const) {
  test(`PostgreSQL target, standard_conforming_strings = ${scs}: every string round-trips exactly, nothing injected`, async (t) => {
    const defer = deferrer(t)
    const { db, url } = await pgTarget(scs)
    defer(() => db.close())
    const sink = await openPostgresSink(url, 'postgres', 'quoting-test-home')
    defer(() => sink.close())
    const problems = await exercise(
      {
        label: `postgres scs=${scs}`,
        dialect: 'postgres',
        sink,
        rows: () => db.query(`select c, k, encode(convert_to(v, 'UTF8'), 'hex') as h from rt`),
        count: async (c) => (await db.query(`select count(*)::int as n from rt where c = $1`, [c]))[0].n,
        pwned: async () =>
          (
            await db.query(`select table_schema || '.' || table_name as t from information_schema.tables where table_name like 'pwned%'`)
          ).map((r) => r.t),
      },
      SEED + (scs === 'on' ? 1 : 2),
    )
    report(problems)
  })
}

// PostgreSQL joins string constants that touch or are separated only by whitespace with a line
// break ('a'<newline>'b' is one literal), in the escape mode of the first part. Each template below
// rendered, before the scanner knew that, into SQL that created a table in a real PostgreSQL with
// standard_conforming_strings on (an E'x' at the end of a loop body continued by the next
// iteration's '<{$lead.v}>'; a value the renderer wrote as E'…' continued by 'z\'), or into SQL
// whose meaning depends on the value. They must be refused; their neighbours that are exact stay
// accepted (rows 5-7 of the constants template above deliver such ones into both modes).
const CONTINUATION_REFUSED: Array<[Syntax, string]> = [
  ['altcraft', "insert into rt (v) select\n{for $i, $lead = $batch}\n'<{$lead.v}>' || E'x'\n{end}"],
  ['squirrelly', "insert into rt (v) select\n{{@each(it.batch) => lead}}'<{{ lead.v }}>' || E'x'\n{{/each}}"],
  ['altcraft', "insert into rt (v) select '{segment_name}'\n'z\\' || {segment_id}"],
  ['squirrelly', "insert into rt (v) select '{{ it.segment_name }}'\n'z\\' || {{ it.segment_id }}"],
  ['altcraft', "select E'a'\n'<{segment_name}>'"],
  ['altcraft', "select E'a' -- a comment\n'<{segment_name}>'"],
  ['altcraft', "select '{segment_name}'\n'<{segment_id}>'"],
  ['altcraft', "select 'abc'\n'{segment_name}'"],
  ['altcraft', "select 'abc'\n{segment_name}"],
  ['altcraft', 'select {segment_name}\n{segment_id}'],
  ['altcraft', "select {segment_name}'a\\b'"],
  ['squirrelly', "select E'a'{{@if(true)}}\n'<{{ it.segment_name }}>'{{/if}}"],
  ['squirrelly', "select {{ it.segment_name }}{{@if(true)}}\n'a\\b'{{/if}}"],
  ['squirrelly', "select '{{ it.segment_name }}'{{@if(true)}}\n{{/if}}'{{ it.segment_id }}\\'"],
]
const CONTINUATION_ACCEPTED: Array<[Syntax, string]> = [
  ['altcraft', "select 'a'\n'b', E'a\\'\n'it\\'s', '{segment_name}'\n'-suffix', 'p-'\n'<{segment_name}>', {segment_name} || 'a\\b'"],
  ['altcraft', 'delete from t where id in ({for $i, $lead = $batch}{$lead.v}{autocomma}{end})'],
  ['altcraft', "insert into t values\n{for $i, $lead = $batch}\n('<{$lead.v}>', E'x\\y'){autocomma}\n{end}"],
  ['squirrelly', 'delete from t where id in ({{@rows(it.batch) => lead}}{{ lead.v }}{{/rows}})'],
  ['squirrelly', "insert into t values {{@rows(it.batch) => lead}}('{{ lead.v }}', '<{{ lead.v }}>', E'\\\\'){{/rows}}"],
]

test('PostgreSQL string continuation: templates whose escaping it could change are refused', () => {
  for (const [syntax, src] of CONTINUATION_REFUSED)
    assert.throws(
      () => compileTemplate(src, syntax, 'postgres'),
      (e: unknown) => e instanceof TemplateError && /PostgreSQL/.test(e.message) && /join/.test(e.message),
      `${syntax} ${show(src)} must be refused`,
    )
  for (const [syntax, src] of CONTINUATION_ACCEPTED) compileTemplate(src, syntax, 'postgres')
})

// ---------------------------------------------------------------------------------------------
// MariaDB targets: a private server whose global sql_mode each mode sets

const MODES = ['', 'NO_BACKSLASH_ESCAPES', 'ANSI_QUOTES', 'ANSI', 'NO_BACKSLASH_ESCAPES,ANSI_QUOTES']

// Started at once, so it boots while the PostgreSQL modes run.
const mariaServer: Promise<MariaServer> = freshMariadbServer()
mariaServer.catch(() => {}) // reported by the tests that await it
after(async () => {
  await (await mariaServer.catch(() => undefined))?.destroy()
})

async function mariaAdmin(server: MariaServer, sql: string): Promise<any[]> {
  const c = await mysql.createConnection({ host: '127.0.0.1', port: server.port, user: 'root', charset: 'utf8mb4' })
  try {
    return (await c.query(sql))[0] as any[]
  } finally {
    await c.end()
  }
}

/** Make new connections start in `mode` and check it on one; returns a URL of a new database. */
async function mariaTarget(server: MariaServer, mode: string, database: string): Promise<string> {
  await mariaAdmin(server, `create database ${database} character set utf8mb4 collate utf8mb4_bin`)
  await mariaAdmin(server, `set global sql_mode = '${mode}'`)
  const [{ m }] = await mariaAdmin(server, 'select @@session.sql_mode as m')
  // mysql2 connects with the IGNORE_SPACE client flag, which adds that mode to every session.
  const have = new Set((m as string).split(',').filter((f) => f && f !== 'IGNORE_SPACE'))
  const want = mode.split(',').filter(Boolean)
  assert.ok(
    want.every((f) => have.has(f)) && (want.length > 0 || have.size === 0),
    `a new connection starts with sql_mode ${m}, not ${mode || "''"}`,
  )
  return `mysql://root@127.0.0.1:${server.port}/${database}`
}

for (const [i, mode] of MODES.entries()) {
  test(`MariaDB target, sql_mode = '${mode}': every string round-trips exactly, nothing injected`, async (t) => {
    const defer = deferrer(t)
    const server = await mariaServer
    const database = `q_mode_${i}`
    const url = await mariaTarget(server, mode, database)
    const target = mysql.createPool({ uri: url, connectionLimit: 2, charset: 'utf8mb4' })
    defer(() => target.end())
    await target.query('create table rt (c int not null, k int not null, v longtext, primary key (c, k))')
    const sink = await openMysqlSink(url, 'mysql', 'quoting-test-home')
    defer(() => sink.close())
    const problems = await exercise(
      {
        label: `mariadb sql_mode='${mode}'`,
        dialect: 'mysql',
        sink,
        rows: async () => ((await target.query('select c, k, lower(hex(v)) as h from rt'))[0] as any[]).map((r) => ({ ...r })),
        count: async (c) => Number(((await target.query(`select count(*) as n from rt where c = ${c}`))[0] as any[])[0].n),
        pwned: async () =>
          (
            (
              await target.query(
                `select concat(table_schema, '.', table_name) as t from information_schema.tables where table_schema = database() and table_name like 'pwned%'`,
              )
            )[0] as any[]
          ).map((r) => r.t),
      },
      SEED + 10 + i,
    )
    report(problems)
  })
}

// ---------------------------------------------------------------------------------------------
// One case end to end: a real sidecar, Postgres target with standard_conforming_strings off and
// MariaDB target starting in NO_BACKSLASH_ESCAPES,ANSI_QUOTES, both syntaxes, adds then removes.

const SEGMENT_DDL = `create table public.q_segment (
  segment_id uuid not null, id text not null, v text,
  actual_begin timestamp not null default now(), actual_end timestamp not null default 'infinity',
  processed timestamp not null default now(), unique (id))`

test('end to end through a sidecar: PostgreSQL with standard_conforming_strings off, MariaDB in NO_BACKSLASH_ESCAPES,ANSI_QUOTES', async (t) => {
  const defer = deferrer(t)
  const server = await mariaServer
  const myUrl = await mariaTarget(server, 'NO_BACKSLASH_ESCAPES,ANSI_QUOTES', 'q_e2e')
  const my = mysql.createPool({ uri: myUrl, connectionLimit: 2, charset: 'utf8mb4' })
  defer(() => my.end())
  await my.query('create table e2e (sub varchar(8) not null, id longtext not null, a longtext, b longtext)')
  const { db: pgT, url: pgUrl } = await pgTarget('off')
  defer(() => pgT.close())
  await pgT.query('create table e2e (sub text not null, id text not null, a text, b text)')
  const home = await freshPg()
  defer(() => home.close())
  await home.query(SEGMENT_DDL)

  // The sidecar's own sessions meet the modes: any injected table would show up in pwned().
  const rnd = mulberry32(SEED + 99)
  const members = [...PAYLOADS, ...FIXED.slice(0, 12)].map((s, i) => ({ id: `${i}#${s}`, v: s }))
  while (members.length < 80) members.push({ id: `${members.length}#${hostile(rnd, false)}`, v: hostile(rnd, false) })

  // The sub labels are template constants: "ma" is a string only without ANSI_QUOTES, and 'p\\s' /
  // 'm\\s' hold what the scanner assumed only with standard_conforming_strings on / backslash escapes.
  const subs: Array<{ name: string; consumer: string; syntax: Syntax; add: string; remove: string; a: (v: string) => string }> = [
    {
      name: 'pg_altcraft',
      consumer: 'pg',
      syntax: 'altcraft',
      add: `insert into e2e (sub, id, a, b) values\n{for $i, $lead = $batch}\n('pa', {$lead.id}, '<{$lead.v}>', '{$lead.v}'){autocomma}\n{end}`,
      remove: `delete from e2e where sub = 'pa' and id in ({batch_in "id"})`,
      a: (v) => `<${v}>`,
    },
    {
      name: 'pg_squirrelly',
      consumer: 'pg',
      syntax: 'squirrelly',
      add: `insert into e2e (sub, id, a, b) values\n{{@rows(it.batch) => lead}}('p\\\\s', {{ lead.id }}, '[{{ lead.v }}]', E'{{ lead.v }}'){{/rows}}`,
      remove: `delete from e2e where sub = 'p\\\\s' and id in ({{ it.batch | in("id") }})`,
      a: (v) => `[${v}]`,
    },
    {
      name: 'my_altcraft',
      consumer: 'my',
      syntax: 'altcraft',
      add: `insert into e2e (sub, id, a, b) values\n{for $i, $lead = $batch}\n("ma", {$lead.id}, "{$lead.v}", '{$lead.v}'){autocomma}\n{end}`,
      remove: `delete from e2e where sub = "ma" and id in ({batch_in "id"})`,
      a: same,
    },
    {
      name: 'my_squirrelly',
      consumer: 'my',
      syntax: 'squirrelly',
      add: `insert into e2e (sub, id, a, b) values\n{{@rows(it.batch) => lead}}('m\\\\s', {{ lead.id }}, "{{ lead.v }}", {{ lead.v }}){{/rows}}`,
      remove: `delete from e2e where sub = 'm\\\\s' and id in ({{ it.batch | in("id") }})`,
      a: same,
    },
  ]
  await home.query(`select segmenter.create_segment('q', 'public.q_segment')`)
  await home.query(`select segmenter.create_consumer('pg', 'postgres', 'postgres', 'Q_PG_URL')`)
  await home.query(`select segmenter.create_consumer('my', 'mysql', 'mysql', 'Q_MY_URL')`)
  for (const s of subs)
    await home.query(
      `select segmenter.create_subscription(name => $1, consumer => $2, segments => array['q'], add_sql => $3, remove_sql => $4, batch_size => 25, syntax => $5)`,
      [s.name, s.consumer, s.add, s.remove, s.syntax],
    )
  // Also in process.env: this file's process is its own, and the sink must not depend on which
  // environment the sidecar reads.
  Object.assign(process.env, { Q_PG_URL: pgUrl, Q_MY_URL: myUrl })
  const sidecar = await startTestSidecar({ databaseUrl: home.url, pollIntervalMs: 200, env: { ...process.env } })
  defer(() => sidecar.stop())
  const [{ id: segId }] = await home.query(`select segment_id as id from segmenter.segments where name = 'q'`)
  await home.query(
    `insert into q_segment (segment_id, id, v) select $1, m.id, m.v from jsonb_to_recordset($2::jsonb) as m(id text, v text)`,
    [segId, JSON.stringify(members)],
  )

  type Row = { sub: string; id: string; a: string; b: string }
  const pgRows = async () =>
    pgT.query<Row>(
      `select sub, encode(convert_to(id, 'UTF8'), 'hex') as id, encode(convert_to(a, 'UTF8'), 'hex') as a, encode(convert_to(b, 'UTF8'), 'hex') as b from e2e`,
    )
  const myRows = async () =>
    ((await my.query('select sub, lower(hex(id)) as id, lower(hex(a)) as a, lower(hex(b)) as b from e2e'))[0] as Row[]).map((r) => ({
      ...r,
    }))
  const n = members.length
  const problems = async () =>
    (
      await home.query(
        `select subscription, state, last_error, dead_letters from segmenter.status where last_error is not null or dead_letters > 0`,
      )
    ).map((r) => `${SEEDED}: ${JSON.stringify(r)}`)
  const pwned = async () => [
    ...(await pgT.query(`select 'postgres ' || table_name as t from information_schema.tables where table_name like 'pwned%'`)),
    ...((
      await my.query(`select concat('mariadb ', table_name) as t from information_schema.tables where table_name like 'pwned%'`)
    )[0] as any[]),
  ]
  const done = async () => (await pgRows()).length === 2 * n && (await myRows()).length === 2 * n
  // Done, or a subscription in error / with dead letters (then no point in waiting longer).
  const firstProblems = await until('every member in both targets, or an error', async () => {
    const p = await problems()
    return p.length ? p : (await done()) && []
  })
  assert.deepEqual(await pwned(), [], `${SEEDED}: injected tables`)
  assert.deepEqual(firstProblems, [])
  const sortRows = (rows: Row[]) => rows.map((r) => `${r.sub} ${r.id} ${r.a} ${r.b}`).sort()
  const want = (sub: string, a: (v: string) => string) => members.map((m) => ({ sub, id: hex(m.id), a: hex(a(m.v)), b: hex(m.v) }))
  assert.deepEqual(sortRows(await pgRows()), sortRows([...want('pa', subs[0]!.a), ...want('p\\\\s', subs[1]!.a)]), SEEDED)
  assert.deepEqual(sortRows(await myRows()), sortRows([...want('ma', same), ...want('m\\s', same)]), SEEDED)

  // Out again: the IN lists match the exact ids.
  await home.query(`update q_segment set actual_end = now()`)
  await until('both targets empty', async () => (await pgRows()).length === 0 && (await myRows()).length === 0, 40_000)
  assert.deepEqual(await problems(), [])
  assert.deepEqual(await pwned(), [], `${SEEDED}: injected tables`)
})
