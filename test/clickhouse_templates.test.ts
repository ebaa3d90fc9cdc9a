// The ClickHouse templates (templates/clickhouse/) and literals on real servers, through the sink
// the sidecar uses (openClickhouseSink): Debian's clickhouse-server 18.16 over HTTP, and chDB 26.7
// in this process through @clickhouse/client's connection hook (the sink's chdb: URL).
//  * the default templates' lifecycle: schema twice, add, a replayed add, remove, a late replay of
//    an older batch, segment upsert/rename/delete, clear, a replayed clear, an add after a clear and
//    a late clear after it; read with FINAL … WHERE deleted = 0 and through the views;
//  * hostile strings round-trip byte for byte (read back as hex) in both syntaxes and every
//    placeholder position ClickHouse has, and nothing injected runs;
//  * a template of two statements: both land, in order (18.16 would drop the second if both went
//    in one request); a `;` inside a literal is no split point.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { compileTemplate, type RenderContext, type Syntax } from '../src/render/index.js'
import { openClickhouseSink, statementsOf } from '../src/sinks/clickhouse.js'
import type { Sink } from '../src/sinks/index.js'
import { freshChdb, freshClickhouse, type FreshClickhouse } from './harness/db.js'
import { deferrer } from './harness/wait.js'

const DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'templates', 'clickhouse')
const read = (file: string) => readFileSync(join(DIR, `${file}.sql`), 'utf8')
const SEG = '6f1d2a9e-4b7c-4e21-9a3f-0c8b5d7e1f20'
const OTHER = '0b5e7c3a-2d4f-4a61-8e9b-7c1d3f5a2b40'
const IDS = [`O'Brien "the" '); DROP TABLE segment_members; --`, "C:\\temp\\ \\' x\\", `🦄 emoji 👩‍👩‍👧 "mixed" 'quotes'`] as const
const NAME1 = `VIP "gold" O'Neil \\ 🦄`
const NAME2 = `renamed 'платина' \\"x"\\`

const SERVERS: Array<{ label: string; fresh: () => Promise<FreshClickhouse> }> = [
  { label: 'ClickHouse 18.16 (HTTP)', fresh: () => freshClickhouse() },
  { label: 'chDB 26.7 (in process)', fresh: () => freshChdb() },
]

const member = (segmentId: string, id: string) => ({ segment_id: segmentId, id, hash_email: null })
const ctx = (segmentId: string, name: string, ids: readonly string[], version: bigint): RenderContext => ({
  segment_id: segmentId,
  segment_name: name,
  audience: null,
  version,
  batch: ids.map((id) => member(segmentId, id)),
})
const sorted = <T>(rows: T[]) => rows.map((r) => JSON.stringify(r)).sort()

async function target(
  fresh: () => Promise<FreshClickhouse>,
  defer: ReturnType<typeof deferrer>,
): Promise<{ db: FreshClickhouse; sink: Sink }> {
  const db = await fresh()
  defer(() => db.close())
  const sink = await openClickhouseSink(db.url, 'clickhouse', 'test-home')
  defer(() => sink.close())
  return { db, sink }
}

for (const server of SERVERS) {
  test(`${server.label}: the default templates converge, replays included (add, remove, segments, clear)`, async (t) => {
    const { db, sink } = await target(server.fresh, deferrer(t))
    for (let i = 0; i < 2; i++) for (const statement of statementsOf(read('schema'))) await db.exec(statement)
    const version = await db.query<{ v: string }>('SELECT version() AS v')
    t.diagnostic(`server version ${version[0]!.v}`)

    let pos = 0n
    const apply = (kind: string, c: RenderContext) =>
      sink.apply([compileTemplate(read(kind), 'altcraft', 'clickhouse').render(c)], 'templates-test', { pos: ++pos, ord: 0 })
    const members = async () =>
      sorted(
        await db.query<{ s: string; m: string }>('SELECT segment_id AS s, member_id AS m FROM segment_members FINAL WHERE deleted = 0'),
      )
    const viaView = async () =>
      sorted(await db.query<{ s: string; m: string }>('SELECT segment_id AS s, member_id AS m FROM current_segment_members'))
    const segments = async () => sorted(await db.query<{ s: string; n: string }>('SELECT segment_id AS s, name AS n FROM current_segments'))
    const expect = (pairs: Array<[string, string]>) => sorted(pairs.map(([s, m]) => ({ s, m })))

    await apply('add', ctx(SEG, NAME1, IDS, 10n))
    assert.deepEqual(await members(), expect(IDS.map((id) => [SEG, id])), 'after add: every hostile id exactly')
    await apply('add', ctx(SEG, NAME1, IDS, 10n)) // the same batch again: a replay after a crash
    await apply('add', ctx(OTHER, 'other', [IDS[0]], 20n))
    const all = expect([...IDS.map((id): [string, string] => [SEG, id]), [OTHER, IDS[0]]])
    assert.deepEqual(await members(), all, 'a replayed add changes nothing')
    const raw = await db.query<{ n: string }>('SELECT count() AS n FROM segment_members')
    assert.ok(Number(raw[0]!.n) >= 4, 'the replay did write rows again (FINAL is what makes it converge)')

    await apply('remove', ctx(SEG, NAME1, [IDS[1]], 30n))
    const afterRemove = expect([
      [SEG, IDS[0]],
      [SEG, IDS[2]],
      [OTHER, IDS[0]],
    ])
    assert.deepEqual(await members(), afterRemove, 'after remove')
    // A zombie request of a killed sidecar, landing late: its lower version loses.
    await apply('add', ctx(SEG, NAME1, IDS, 10n))
    assert.deepEqual(await members(), afterRemove, 'a late replay of an older add does not bring the removed member back')
    assert.deepEqual(await viaView(), afterRemove, 'the view says the same')

    await apply('segment_upsert', ctx(SEG, NAME1, [], 40n))
    assert.deepEqual(await segments(), sorted([{ s: SEG, n: NAME1 }]), 'after segment_upsert')
    await apply('segment_upsert', ctx(OTHER, 'other', [], 41n))
    await apply('segment_upsert', ctx(SEG, NAME2, [], 42n))
    await apply('segment_upsert', ctx(SEG, NAME1, [], 40n)) // late replay of the first upsert
    assert.deepEqual(
      await segments(),
      sorted([
        { s: SEG, n: NAME2 },
        { s: OTHER, n: 'other' },
      ]),
      'renamed; the late replay loses',
    )
    await apply('segment_delete', ctx(SEG, NAME2, [], 50n))
    assert.deepEqual(await segments(), sorted([{ s: OTHER, n: 'other' }]), 'after segment_delete')
    assert.deepEqual(await members(), afterRemove, 'segment_delete leaves the members')

    await apply('clear', ctx(SEG, NAME2, [], 60n))
    assert.deepEqual(await members(), expect([[OTHER, IDS[0]]]), 'after clear')
    await apply('clear', ctx(SEG, NAME2, [], 60n))
    assert.deepEqual(await members(), expect([[OTHER, IDS[0]]]), 'a replayed clear')
    await apply('add', ctx(SEG, NAME2, [IDS[1]], 70n))
    await apply('clear', ctx(SEG, NAME2, [], 60n)) // a late clear: older than the add after it
    await apply('add', ctx(SEG, NAME1, [IDS[0]], 10n)) // a late add: older than the clear
    assert.deepEqual(
      await members(),
      expect([
        [OTHER, IDS[0]],
        [SEG, IDS[1]],
      ]),
      'a clear wins over older adds only',
    )
    const tombstones = await db.query<{ n: string }>(
      `SELECT count() AS n FROM segment_members FINAL WHERE deleted = 1 AND segment_id = '${SEG}'`,
    )
    assert.equal(Number(tombstones[0]!.n), 2, 'the cleared members are tombstones')
  })

  test(`${server.label}: a template of two statements lands both, in order, one request each`, async (t) => {
    const { db, sink } = await target(server.fresh, deferrer(t))
    await db.exec('CREATE TABLE steps (n UInt32, what String, at UInt64) ENGINE = MergeTree ORDER BY n')
    const tpl = compileTemplate(
      "INSERT INTO steps (n, what, at) VALUES ({version}, 'first; not a split', 1);\n" +
        "INSERT INTO steps (n, what, at) SELECT {version}, {segment_name}, count() FROM steps WHERE what = 'first; not a split';",
      'altcraft',
      'clickhouse',
    )
    const sql = tpl.render(ctx(SEG, "a;b'; INSERT INTO steps VALUES (9, 'x', 0)", [], 7n))
    assert.equal(statementsOf(sql).length, 2, `two statements: ${sql}`)
    await sink.apply([sql], 'two', { pos: 1n, ord: 0 })
    const rows = await db.query<{ n: number; what: string; at: string }>('SELECT n, what, at FROM steps ORDER BY what')
    assert.deepEqual(
      rows.map((r) => [Number(r.n), r.what]),
      [
        [7, "a;b'; INSERT INTO steps VALUES (9, 'x', 0)"],
        [7, 'first; not a split'],
      ],
    )
    assert.equal(Number(rows[0]!.at), 1, 'the second statement saw the first: they ran in order')
  })

  test(`${server.label}: hostile strings round-trip exactly in both syntaxes and every placeholder position`, async (t) => {
    const { db, sink } = await target(server.fresh, deferrer(t))
    await db.exec('CREATE TABLE rt (c UInt32, k UInt32, v String) ENGINE = MergeTree ORDER BY (c, k)')
    await db.exec('CREATE TABLE hits (c UInt32, k UInt32) ENGINE = MergeTree ORDER BY (c, k)')
    const values = hostileStrings()
    const positions: Array<{ name: string; expr: (slot: string) => string; stored: (v: string) => string }> = [
      { name: 'bare', expr: (s) => s, stored: (v) => v },
      { name: "'…' (the template's own quotes)", expr: (s) => `'${s}'`, stored: (v) => v },
      { name: "'<…>' (inside a larger literal)", expr: (s) => `'<${s}>'`, stored: (v) => `<${v}>` },
      { name: "'[…|…]' (two in one literal)", expr: (s) => `'[${s}|${s}]'`, stored: (v) => `[${v}|${v}]` },
      { name: 'concat(…)', expr: (s) => `concat('(', ${s}, ')')`, stored: (v) => `(${v})` },
    ]
    const SLOT = { altcraft: '{$lead.v}', squirrelly: '{{ lead.v }}' } as const
    const rowsTemplate = (syntax: Syntax, c: number, expr: string) =>
      syntax === 'altcraft'
        ? `INSERT INTO rt (c, k, v) VALUES\n{for $i, $lead = $batch}\n(${c}, {$lead.k}, ${expr}){autocomma}\n{end}\n`
        : `INSERT INTO rt (c, k, v) VALUES\n{{@rows(it.batch) => lead}}(${c}, {{ lead.k }}, ${expr}){{/rows}}\n`
    const inList = (syntax: Syntax, c: number) =>
      syntax === 'altcraft'
        ? `INSERT INTO hits (c, k) SELECT c, k FROM rt WHERE c = ${c} AND v IN ({batch_in "v"})`
        : `INSERT INTO hits (c, k) SELECT c, k FROM rt WHERE c = ${c} AND v IN ({{ it.batch | in("v") }})`
    const expected = new Map<string, string>()
    const hex = (s: string) => Buffer.from(s, 'utf8').toString('hex')
    let pos = 0n
    let c = 0
    const bare: Partial<Record<Syntax, number>> = {}
    for (const syntax of ['altcraft', 'squirrelly'] as const) {
      for (const p of positions) {
        const cc = ++c
        if (p.name === 'bare') bare[syntax] = cc
        const tpl = compileTemplate(rowsTemplate(syntax, cc, p.expr(SLOT[syntax])), syntax, 'clickhouse')
        const batch = values.map((v, k) => ({ k, v }))
        for (const m of batch) expected.set(`${cc}:${m.k}`, hex(p.stored(m.v)))
        // One batch of all of them, then each payload alone: a break-out would run its own INSERT.
        await sink.apply([tpl.render({ ...ctx(SEG, 'seg', [], 1n), batch })], 'quoting', { pos: ++pos, ord: 0 })
      }
    }
    const got = new Map(
      (await db.query<{ c: number; k: number; h: string }>('SELECT c, k, lower(hex(v)) AS h FROM rt')).map((r) => [`${r.c}:${r.k}`, r.h]),
    )
    const problems: string[] = []
    for (const [key, want] of expected)
      if (got.get(key) !== want)
        problems.push(
          `${key}: expected ${JSON.stringify(Buffer.from(want, 'hex').toString())}, got ${got.has(key) ? JSON.stringify(Buffer.from(got.get(key)!, 'hex').toString()) : 'nothing'}`,
        )
    for (const key of got.keys()) if (!expected.has(key)) problems.push(`unexpected row ${key}`)
    assert.deepEqual(problems.slice(0, 10), [], `${problems.length} values did not round-trip`)
    // IN lists of the same values find exactly the rows the bare position stored.
    for (const syntax of ['altcraft', 'squirrelly'] as const) {
      const tpl = compileTemplate(inList(syntax, bare[syntax]!), syntax, 'clickhouse')
      await sink.apply([tpl.render({ ...ctx(SEG, 'seg', [], 1n), batch: values.map((v, k) => ({ k, v })) })], 'quoting', {
        pos: ++pos,
        ord: 0,
      })
      const hits = await db.query<{ n: string }>(`SELECT count() AS n FROM hits WHERE c = ${bare[syntax]}`)
      assert.equal(Number(hits[0]!.n), values.length, `${syntax}: IN (…) matches every value`)
    }
    const pwned = await db.query<{ name: string }>("SELECT name FROM system.tables WHERE name LIKE 'pwned%'")
    assert.deepEqual(pwned, [], 'nothing injected ran')
  })
}

/** The cases and random strings of quotes, backslashes, escapes, controls, template syntax and emoji. */
function hostileStrings(): string[] {
  const fixed = [
    '',
    "'",
    '"',
    '`',
    '\\',
    'trailing\\',
    "\\'",
    "'\\",
    '\\\\',
    '\\N',
    'a\\Nb',
    '\\x41',
    '\\0',
    '\0',
    'a\0b',
    '\r\n',
    '\n',
    '\r',
    '\t',
    'tab\there',
    '\x1a\b\x7f\u0085',
    'Жёлтый 🙂 e\u0301 👩‍👩‍👧 漢字',
    '{segment_id}',
    '{$lead.v}',
    '{{ it.segment_id }}',
    '{{* it.segment_id }}',
    '$$',
    '$x$',
    '?',
    '-- c',
    '# c',
    '// c',
    '/* c',
    'a;b',
    "x\\'); CREATE TABLE pwned1 (x UInt8) ENGINE = Memory; --",
    "x'); CREATE TABLE pwned2 (x UInt8) ENGINE = Memory; -- ",
    "\\'); CREATE TABLE pwned3 (x UInt8) ENGINE = Memory; #",
    "x\\\\'); CREATE TABLE pwned4 (x UInt8) ENGINE = Memory; //",
    'x"); CREATE TABLE pwned5 (x UInt8) ENGINE = Memory; --',
  ]
  const tokens = ["'", '"', '\\', '`', '\\N', '\\x', '\0', '\n', '\r', '\t', ';', '--', '#', '/*', '{', '}', '$', 'a', ' ', '🙂', 'ё', '漢']
  let s = 0x9e3779b9
  const rnd = () => {
    s = (s + 0x6d2b79f5) >>> 0
    let x = Math.imul(s ^ (s >>> 15), s | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
  const out = [...fixed]
  for (let i = 0; i < 200; i++) {
    let v = ''
    for (let n = Math.floor(rnd() * 16); n > 0; n--) v += tokens[Math.floor(rnd() * tokens.length)]
    if (rnd() < 0.2) v += '\\'
    out.push(v)
  }
  return out
}
