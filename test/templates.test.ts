// The default templates in templates/<dialect>/: every one compiles and renders hostile member
// ids for its dialect; the MySQL and Postgres ones run against real MariaDB / Postgres through the
// sinks the sidecar uses (schema, add twice, remove, segment_upsert twice, segment_delete, clear),
// and the home database's create_subscription accepts every dialect's set.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { compileTemplate, DIALECTS, literal, type Dialect, type RenderContext } from '../src/render/index.js'
import type { Sink } from '../src/sinks/sink.js'
import { openMysqlSink } from '../src/sinks/mysql.js'
import { openPostgresSink } from '../src/sinks/postgres.js'
import { freshMysql, freshPg } from './harness/db.js'

const DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'templates')
const KINDS = ['add', 'remove', 'clear', 'segment_upsert', 'segment_delete'] as const
type Kind = (typeof KINDS)[number]
const read = (dialect: Dialect, file: string) => readFileSync(join(DIR, dialect, `${file}.sql`), 'utf8')

const SEG = '6f1d2a9e-4b7c-4e21-9a3f-0c8b5d7e1f20'
const OTHER = '0b5e7c3a-2d4f-4a61-8e9b-7c1d3f5a2b40'
// Quotes of both kinds, an injection attempt, backslashes (one before a quote, one trailing), emoji.
const IDS = [`O'Brien "the" '); DROP TABLE segment_members; --`, "C:\\temp\\ \\' x\\", `🦄 emoji 👩‍👩‍👧 "mixed" 'quotes'`] as const
const NAME1 = `VIP "gold" O'Neil \\ 🦄`
const NAME2 = `renamed 'платина' \\"x"\\`

/** A batch member as loadMembers() gives it: a row of the segment table. */
const member = (segmentId: string, id: string) => ({
  segment_id: segmentId,
  id,
  hash_email: null,
  actual_begin: new Date('2026-01-02T03:04:05Z'),
  actual_end: null,
})
const ctx = (segmentId: string, name: string, ids: readonly string[]): RenderContext => ({
  segment_id: segmentId,
  segment_name: name,
  audience: null,
  version: 7n,
  batch: ids.map((id) => member(segmentId, id)),
})
const render = (dialect: Dialect, kind: Kind, c: RenderContext) => compileTemplate(read(dialect, kind), 'altcraft', dialect).render(c)
const count = (s: string, part: string) => s.split(part).length - 1

// ---------------------------------------------------------------------------------------------
// Every dialect: compiles, renders, hostile values only ever inside their literals.

for (const dialect of DIALECTS) {
  test(`${dialect}: every template compiles and renders hostile ids as literals`, () => {
    const c = ctx(SEG, NAME1, IDS)
    const rendered = Object.fromEntries(KINDS.map((k) => [k, render(dialect, k, c)])) as Record<Kind, string>
    const seg = literal(SEG, dialect)

    for (const k of KINDS) {
      const lines = rendered[k].trimEnd().split('\n')
      assert.match(lines[0]!, /^-- (segment_members|segments) \(segment_id, /, `${k}: first line names the table`)
      assert.ok(rendered[k].includes(seg), `${k} has the segment id literal ${seg}`)
      // Remove every literal the renderer wrote: what is left is the template's own SQL, which has
      // no quotes, backslashes or emoji; so nothing hostile escaped its literal.
      let rest = lines.slice(1).join('\n')
      for (const v of [SEG, NAME1, ...IDS]) rest = rest.split(literal(v, dialect)).join('')
      assert.doesNotMatch(rest, /['"\\🦄]/u, `${k}: stray quote, backslash or emoji outside a literal:\n${rest}`)
    }

    // Members in batch order, one row each, in add; all of them in remove's IN list.
    const lits = IDS.map((id) => literal(id, dialect))
    const at = lits.map((l) => rendered.add.indexOf(l))
    assert.ok(
      at.every((i, n) => i > 0 && (n === 0 || i > at[n - 1]!)),
      `add lists the members in order: ${at}`,
    )
    assert.equal(count(rendered.add, seg), 3, 'add: one segment id per member row')
    assert.ok(rendered.segment_upsert.includes(literal(NAME1, dialect)), 'segment_upsert writes the name')
    if (dialect === 'clickhouse') {
      // Versioned rows instead of deletes: a remove is a tombstone row per member (test/clickhouse_templates.test.ts).
      assert.equal(count(rendered.remove, seg), 3, 'remove: one tombstone per member')
      assert.match(rendered.clear, /^INSERT INTO segment_members \(segment_id, member_id, version, deleted\)\nSELECT /m)
      assert.match(rendered.segment_delete, /^INSERT INTO segments \(segment_id, name, version, deleted\) VALUES \(/m)
    } else {
      assert.ok(rendered.remove.includes(`IN (${lits.join(', ')})`), `remove: ${rendered.remove}`)
      assert.match(rendered.remove, /DELETE FROM segment_members WHERE segment_id = \S/)
      assert.match(rendered.clear, /DELETE FROM segment_members WHERE segment_id = \S/)
      assert.match(rendered.segment_delete, /DELETE FROM segments WHERE segment_id = \S/)
    }

    const schema = read(dialect, 'schema')
    assert.equal(compileTemplate(schema, 'altcraft', dialect).render(c), schema, 'schema.sql has no placeholders')
    assert.match(schema, /^-- /)
    assert.match(schema, /CREATE TABLE (IF NOT EXISTS )?segment_members \(/)
    assert.match(schema, /CREATE TABLE (IF NOT EXISTS )?segments \(/)
  })
}

test('dialect-specific forms of the rendered SQL', () => {
  const c = ctx(SEG, NAME1, IDS)
  const r = (d: Dialect, k: Kind) => render(d, k, c)

  // MySQL: a backslash goes hex (same meaning with or without NO_BACKSLASH_ESCAPES).
  assert.match(literal(IDS[1], 'mysql'), /^_utf8mb4 X'[0-9A-F]+'$/)
  assert.equal(literal(IDS[0], 'mysql'), `'O''Brien "the" ''); DROP TABLE segment_members; --'`)
  assert.match(r('mysql', 'add'), /\)\nON DUPLICATE KEY UPDATE updated = UTC_TIMESTAMP\(6\)\n$/)
  assert.match(r('mysql', 'segment_upsert'), /ON DUPLICATE KEY UPDATE name = _utf8mb4 X'/)

  assert.equal(literal(IDS[1], 'postgres'), `E'C:\\\\temp\\\\ \\\\'' x\\\\'`)
  assert.match(r('postgres', 'add'), /ON CONFLICT \(segment_id, member_id\) DO UPDATE SET updated = excluded.updated/)
  assert.match(r('postgres', 'segment_upsert'), /ON CONFLICT \(segment_id\) DO UPDATE SET name = excluded.name/)

  // SQL Server: N'' literals (backslash is plain text there), MERGE terminated by ";".
  assert.equal(literal(IDS[1], 'mssql'), `N'C:\\temp\\ \\'' x\\'`)
  const msAdd = r('mssql', 'add')
  assert.match(msAdd, /^MERGE INTO segment_members WITH \(HOLDLOCK\) AS t\nUSING \(VALUES\n/m)
  assert.ok(msAdd.includes(`  (${literal(SEG, 'mssql')}, ${literal(IDS[2], 'mssql')})\n) AS s (segment_id, member_id)`), msAdd)
  assert.match(
    msAdd,
    /WHEN NOT MATCHED THEN INSERT \(segment_id, member_id, updated\) VALUES \(s.segment_id, s.member_id, SYSUTCDATETIME\(\)\);\n$/,
  )
  assert.match(r('mssql', 'segment_upsert'), /^MERGE INTO segments WITH \(HOLDLOCK\)[\s\S]*SYSUTCDATETIME\(\)\);\n$/m)

  // Oracle: MERGE USING a typed empty row UNION ALL one SELECT … FROM dual per member; no ";".
  assert.equal(literal(IDS[0], 'oracle'), `'O''Brien "the" ''); DROP TABLE segment_members; --'`)
  const oraAdd = r('oracle', 'add')
  assert.match(oraAdd, /^MERGE INTO segment_members t\nUSING \(\n/m)
  assert.equal(count(oraAdd, 'UNION ALL SELECT'), 3)
  assert.equal(count(oraAdd, 'FROM dual'), 4)
  for (const id of IDS)
    assert.ok(oraAdd.includes(`UNION ALL SELECT ${literal(SEG, 'oracle')}, ${literal(id, 'oracle')} FROM dual\n`), oraAdd)
  for (const k of KINDS) assert.doesNotMatch(r('oracle', k), /;\s*$/, `oracle ${k} must not end in ";"`)
  assert.match(r('oracle', 'segment_upsert'), /USING \(SELECT '[^\n]+' AS segment_id, '[^\n]+' AS name FROM dual\) s/)
  // With an empty batch the typed empty row still makes a valid source.
  assert.match(render('oracle', 'add', ctx(SEG, NAME1, [])), /FROM dual WHERE 1 = 0\n\) s\n/)

  // BigQuery: backslash-escaped quotes, MERGE USING UNNEST of a typed STRUCT array.
  assert.equal(literal(IDS[1], 'bigquery'), `'C:\\\\temp\\\\ \\\\\\' x\\\\'`)
  const bqAdd = r('bigquery', 'add')
  assert.match(bqAdd, /^MERGE segment_members t\nUSING \(SELECT \* FROM UNNEST\(ARRAY<STRUCT<segment_id STRING, member_id STRING>>\[\n/m)
  assert.ok(bqAdd.includes(`  (${literal(SEG, 'bigquery')}, ${literal(IDS[2], 'bigquery')})\n\]\)\) s\n`), bqAdd)
  assert.match(r('bigquery', 'segment_upsert'), /^MERGE segments t$/m)

  // ClickHouse: versioned rows of a ReplacingMergeTree(version); removes and clears are tombstones.
  assert.equal(literal(IDS[0], 'clickhouse'), `'O\\'Brien "the" \\'); DROP TABLE segment_members; --'`)
  const chAdd = r('clickhouse', 'add')
  assert.match(chAdd, /^INSERT INTO segment_members \(segment_id, member_id, version, deleted\) VALUES\n/m)
  assert.equal(count(chAdd, '),\n'), 2)
  assert.equal(count(chAdd, ', 7, 0)'), 3, 'each row has the batch version, not deleted')
  assert.equal(count(r('clickhouse', 'remove'), ', 7, 1)'), 3, 'each tombstone has the batch version')
  assert.match(
    r('clickhouse', 'clear'),
    /SELECT segment_id, member_id, 7, 1 FROM segment_members FINAL\nWHERE segment_id = '[^']+' AND deleted = 0 AND version < 7/,
  )
  assert.match(read('clickhouse', 'schema'), /ENGINE = ReplacingMergeTree\(version\)\nORDER BY \(segment_id, member_id\);/)
  assert.match(r('clickhouse', 'segment_upsert'), /^INSERT INTO segments \(segment_id, name, version, deleted\) VALUES \('[^\n]+', 7, 0\)/m)
})

// ---------------------------------------------------------------------------------------------
// MySQL and Postgres: run them for real.

interface Target {
  dialect: 'mysql' | 'postgres'
  sink: Sink
  exec(sql: string): Promise<void>
  members(): Promise<Array<{ segment_id: string; member_id: string; updated: Date }>>
  segments(): Promise<Array<{ segment_id: string; name: string }>>
}

const byKey = <T extends { segment_id: string }>(rows: T[], key: (r: T) => string) =>
  [...rows].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0))
const pairs = (rows: Array<{ segment_id: string; member_id: string }>) =>
  byKey(
    rows.map((r) => ({ segment_id: r.segment_id, member_id: r.member_id })),
    (r) => `${r.segment_id}\0${r.member_id}`,
  )
const expect = (list: Array<[string, string]>) => pairs(list.map(([segment_id, member_id]) => ({ segment_id, member_id })))
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function lifecycle(t: Target): Promise<void> {
  const { dialect } = t
  const schema = read(dialect, 'schema')
  // Run it twice: IF NOT EXISTS makes it safe to re-run.
  for (let i = 0; i < 2; i++)
    for (const stmt of schema.split(/;\s*(?:\n|$)/).filter((s) => s.replace(/--[^\n]*/g, '').trim())) await t.exec(stmt)

  let pos = 0n
  const apply = async (kind: Kind, c: RenderContext) => {
    const sql = render(dialect, kind, c)
    await t.sink.apply([sql], 'templates-test', { pos: ++pos, ord: 0 })
  }
  const members = async () => pairs(await t.members())
  const updatedOf = async () => new Map((await t.members()).map((r) => [`${r.segment_id}\0${r.member_id}`, r.updated.getTime()]))

  await apply('add', ctx(SEG, NAME1, IDS))
  assert.deepEqual(await members(), expect(IDS.map((id) => [SEG, id])), 'after add')
  assert.deepEqual(await t.segments(), [])
  // The same id in another segment is another row (the key is (segment_id, member_id)).
  await apply('add', ctx(OTHER, 'other', [IDS[0]]))
  const all = expect([...IDS.map((id): [string, string] => [SEG, id]), [OTHER, IDS[0]]])
  assert.deepEqual(await members(), all, 'after add to the other segment')

  const before = await updatedOf()
  await sleep(20)
  await apply('add', ctx(SEG, NAME1, IDS))
  assert.deepEqual(await members(), all, 'the second add changes no membership')
  const after = await updatedOf()
  for (const [key, ms] of after) {
    if (key.startsWith(SEG)) assert.ok(ms > before.get(key)!, `the second add refreshed updated of ${JSON.stringify(key)}`)
    else assert.equal(ms, before.get(key), 'the other segment is untouched')
  }

  await apply('remove', ctx(SEG, NAME1, [IDS[1]]))
  assert.deepEqual(
    await members(),
    expect([
      [SEG, IDS[0]],
      [SEG, IDS[2]],
      [OTHER, IDS[0]],
    ]),
    'after remove',
  )

  await apply('segment_upsert', ctx(SEG, NAME1, []))
  assert.deepEqual(await t.segments(), [{ segment_id: SEG, name: NAME1 }], 'after segment_upsert')
  await apply('segment_upsert', ctx(OTHER, 'other', []))
  await apply('segment_upsert', ctx(SEG, NAME2, []))
  assert.deepEqual(
    await t.segments(),
    byKey(
      [
        { segment_id: SEG, name: NAME2 },
        { segment_id: OTHER, name: 'other' },
      ],
      (r) => r.segment_id,
    ),
    'the second segment_upsert renames',
  )

  await apply('segment_delete', ctx(SEG, NAME2, []))
  assert.deepEqual(await t.segments(), [{ segment_id: OTHER, name: 'other' }], 'after segment_delete')
  assert.deepEqual(
    await members(),
    expect([
      [SEG, IDS[0]],
      [SEG, IDS[2]],
      [OTHER, IDS[0]],
    ]),
    'segment_delete leaves members',
  )

  await apply('clear', ctx(SEG, NAME2, []))
  assert.deepEqual(await members(), expect([[OTHER, IDS[0]]]), 'after clear')
  assert.deepEqual(await t.segments(), [{ segment_id: OTHER, name: 'other' }])
}

test('mysql templates run against MariaDB: idempotent add, remove, segment upsert/delete, clear', async (t) => {
  const db = await freshMysql()
  let sink: Sink | undefined
  t.after(async () => {
    await sink?.close()
    await db.close()
  })
  sink = await openMysqlSink(db.url, 'mysql', 'test-home')
  await lifecycle({
    dialect: 'mysql',
    sink,
    async exec(sql) {
      await db.query(sql)
    },
    async members() {
      return db.query('select segment_id, member_id, updated from segment_members')
    },
    async segments() {
      const rows = await db.query<{ segment_id: string; name: string }>('select segment_id, name from segments')
      return byKey(
        rows.map((r) => ({ ...r })),
        (r) => r.segment_id,
      )
    },
  })
})

test('postgres templates run against Postgres: idempotent add, remove, segment upsert/delete, clear', async (t) => {
  const db = await freshPg()
  let sink: Sink | undefined
  t.after(async () => {
    await sink?.close()
    await db.close()
  })
  sink = await openPostgresSink(db.url, 'postgres', 'test-home')
  await lifecycle({
    dialect: 'postgres',
    sink,
    async exec(sql) {
      await db.query(sql)
    },
    async members() {
      return db.query('select segment_id, member_id, updated from segment_members')
    },
    async segments() {
      return byKey(await db.query('select segment_id, name from segments'), (r) => r.segment_id)
    },
  })
})

test("create_subscription accepts every dialect's templates", async (t) => {
  const home = await freshPg()
  t.after(() => home.close())
  await home.query(`create table public.test_segment (
    segment_id uuid not null, id varchar null, hash_email varchar null,
    actual_begin timestamp not null default now(), actual_end timestamp not null default 'infinity',
    processed timestamp not null default now(), constraint test_segment_id_key unique (id))`)
  await home.query(`select segmenter.create_segment('vip', 'public.test_segment')`)
  for (const dialect of DIALECTS) {
    await home.query(`select segmenter.create_consumer($1, 'postgres', $2, 'UNUSED_URL')`, [`c_${dialect}`, dialect])
    const [add, remove, clear, upsert, del] = KINDS.map((k) => read(dialect, k))
    await home.query(
      `select segmenter.create_subscription(name => $1, consumer => $2, segments => array['vip'], syntax => 'altcraft',
      add_sql => $3, remove_sql => $4, clear_sql => $5, segment_upsert_sql => $6, segment_delete_sql => $7)`,
      [`s_${dialect}`, `c_${dialect}`, add, remove, clear, upsert, del],
    )
  }
  const rows = await home.query(
    `select s.name, c.dialect from segmenter.subscriptions s join segmenter.consumers c using (consumer_id) order by 1`,
  )
  assert.deepEqual(
    rows,
    DIALECTS.map((d) => ({ name: `s_${d}`, dialect: d })).sort((a, b) => (a.name < b.name ? -1 : 1)),
  )
})
