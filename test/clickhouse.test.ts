// ClickHouse as a target through the whole pipeline, on the real server (Debian's clickhouse-server
// 18.16): the seed's scenario with the default templates, rejected rows isolated and dead-lettered
// with the server's message, a two-statement template once per batch, the errors that are outages,
// batches sized to max_query_size, and consumer URLs with a password.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { positionVersion } from '../src/batch.js'
import { previewSubscription } from '../src/preview.js'
import { ClickhouseError, openClickhouseSink, statementsOf } from '../src/sinks/clickhouse.js'
import { isTransient } from '../src/sinks/index.js'
import { clickhouseClient, freshClickhouse, freshPg, type FreshClickhouse, type FreshPg } from './harness/db.js'
import { SEGMENT_DDL } from './harness/fixtures.js'
import { CLICKHOUSE_USER } from './harness/servers.js'
import { startTestSidecar } from './harness/sidecar.js'
import { deferrer, homeCaughtUp, until } from './harness/wait.js'

const DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'templates', 'clickhouse')
const read = (file: string) => readFileSync(join(DIR, `${file}.sql`), 'utf8')

interface World {
  home: FreshPg
  target: FreshClickhouse
  env: NodeJS.ProcessEnv
  segmentId: string
  /** The segment's current members, sorted. */
  segment(): Promise<string[]>
  /** The target's members after FINAL (deleted = 0), sorted; one entry per key, so a duplicate cannot hide. */
  final(): Promise<string[]>
}

/** A home with the seed's segment table `vip`, a ClickHouse consumer, and the default templates in the target. */
async function world(
  defer: ReturnType<typeof deferrer>,
  opts: { add?: string; remove?: string; clear?: string | null; batchSize?: number; batchTimeout?: string; upserts?: boolean } = {},
): Promise<World> {
  const home = await freshPg()
  defer(() => home.close())
  const target = await freshClickhouse()
  defer(() => target.close())
  for (const statement of statementsOf(read('schema'))) await target.exec(statement)
  await home.query(SEGMENT_DDL)
  const [{ id }] = await home.query(`select segmenter.create_segment('vip', 'public.test_segment') as id`)
  await home.query(`select segmenter.create_consumer('ch', 'clickhouse', 'clickhouse', 'CH_URL')`)
  await home.query(
    `select segmenter.create_subscription(name => 'sub', consumer => 'ch', segments => array['vip'], syntax => 'altcraft',
       add_sql => $1, remove_sql => $2, clear_sql => $3, segment_upsert_sql => $4, segment_delete_sql => $5,
       batch_size => $6, batch_timeout => $7::interval)`,
    [
      opts.add ?? read('add'),
      opts.remove ?? read('remove'),
      opts.clear === undefined ? read('clear') : opts.clear,
      opts.upserts === false ? null : read('segment_upsert'),
      opts.upserts === false ? null : read('segment_delete'),
      opts.batchSize ?? 1000,
      opts.batchTimeout ?? '2 s',
    ],
  )
  return {
    home,
    target,
    env: { ...process.env, CH_URL: target.url },
    segmentId: id,
    segment: async () =>
      (await home.query(`select id from test_segment where actual_end = 'infinity' order by id collate "C"`)).map((r) => r.id),
    final: async () =>
      (await target.query<{ m: string }>('SELECT member_id AS m FROM segment_members FINAL WHERE deleted = 0 ORDER BY member_id')).map(
        (r) => r.m,
      ),
  }
}

async function converged(w: World, what: string, timeoutMs = 60_000): Promise<void> {
  await until(what, async () => JSON.stringify(await w.final()) === JSON.stringify(await w.segment()), timeoutMs).catch(async (err) => {
    const [t, s] = [await w.final(), await w.segment()]
    throw new Error(`${(err as Error).message}: target ${t.length} rows after FINAL, segment ${s.length}`)
  })
}

const segmentsRow = async (w: World) =>
  (
    await w.target.query<{ name: string; deleted: number; version: string }>(
      `SELECT name, deleted, version FROM segments FINAL WHERE segment_id = '${w.segmentId}'`,
    )
  )[0]

test("the seed's scenario into ClickHouse with the default templates: after FINAL the target equals the segment", async (t) => {
  const defer = deferrer(t)
  const w = await world(defer)
  await startTestSidecar({ databaseUrl: w.home.url, pollIntervalMs: 100, env: w.env }, defer)
  await until('segment_upsert', async () => (await segmentsRow(w))?.name === 'vip')

  // 10,000 adds, committed in 20 statements: batches of 1,000, the last part after the 2 s timeout.
  for (let i = 0; i < 20; i++)
    await w.home.query(
      `insert into test_segment (segment_id, id, hash_email) select $1, 'm' || g, md5(g::text) from generate_series($2::int, $3::int) g`,
      [w.segmentId, i * 500 + 1, i * 500 + 500],
    )
  await converged(w, '10,000 adds')
  await homeCaughtUp((sql) => w.home.query(sql))
  const adds = await w.home.query(`select rows from segmenter.log where kind = 'batch' and ok and event = 'add' order by at`)
  assert.ok(adds.length >= 10 && adds.every((r) => Number(r.rows) <= 1000), `batches of at most 1,000: ${adds.map((r) => r.rows)}`)
  assert.equal(
    adds.reduce((s, r) => s + Number(r.rows), 0),
    10_000,
  )
  // Versions grow batch to batch: the 10 batches wrote 10 distinct versions, in member order.
  const versions = await w.target.query<{ v: string; n: string; lo: string }>(
    'SELECT version AS v, count() AS n, min(toUInt32(substring(member_id, 2))) AS lo FROM segment_members GROUP BY version ORDER BY version',
  )
  assert.equal(versions.length, adds.length, 'one version per batch')
  for (let i = 1; i < versions.length; i++)
    assert.ok(Number(versions[i]!.lo) > Number(versions[i - 1]!.lo), 'later batches, higher versions')

  await w.home.query(`update test_segment set actual_end = now() where actual_end = 'infinity' and substring(id, 2)::int % 10 = 0`)
  await converged(w, '1,000 removes')
  assert.equal((await w.final()).length, 9000)

  await w.home.query(`select segmenter.clear_segment('vip')`)
  await converged(w, 'the clear')
  assert.deepEqual(await w.final(), [])
  const [{ n: tombstones }] = await w.target.query(`SELECT count() AS n FROM segment_members FINAL WHERE deleted = 1`)
  assert.equal(Number(tombstones), 10_000, 'every member is a tombstone now')

  // Members after the clear: they win over its tombstones.
  await w.home.query(`insert into test_segment (segment_id, id) select $1, 'n' || g from generate_series(1, 50) g`, [w.segmentId])
  await converged(w, 'adds after the clear')

  // A changed definition is a segment_upsert (a higher version); retiring it a segment_delete.
  const before = await segmentsRow(w)
  await w.home.query(
    `select segmenter.create_segment('vip', 'public.test_segment', kind => 'auto', refresh_sql => 'select id from test_segment')`,
  )
  await until('segment_upsert again', async () => BigInt((await segmentsRow(w))!.version) > BigInt(before!.version))
  assert.deepEqual({ ...(await segmentsRow(w))!, version: 'x' }, { name: 'vip', deleted: 0, version: 'x' })
  await w.home.query(`select segmenter.retire_segment('vip')`)
  await until('segment_delete', async () => Number((await segmentsRow(w))?.deleted) === 1)
  assert.deepEqual(await w.target.query(`SELECT segment_id FROM current_segments`), [], 'no current segment in the target')
  assert.deepEqual(await w.final(), await w.segment(), 'the members stay as they were (segment_delete keeps them)')
  const [dead] = await w.home.query(`select count(*)::int as n from segmenter.dead_letters`)
  assert.equal(dead.n, 0)
})

test('a statement the server rejects is isolated by splitting and dead-lettered with the server message; the rest is delivered', async (t) => {
  const defer = deferrer(t)
  const w = await world(defer, {
    // toUInt32 of a member id that is not a number fails the whole INSERT (CANNOT_PARSE_TEXT).
    add: 'INSERT INTO numbered (n, version) VALUES {for $i, $lead = $batch}(toUInt32({$lead.id}), {version}){autocomma}{end}',
    batchSize: 100,
    batchTimeout: '0 s',
    upserts: false,
  })
  await w.target.exec('CREATE TABLE numbered (n UInt32, version UInt64) ENGINE = MergeTree ORDER BY n')
  await startTestSidecar({ databaseUrl: w.home.url, pollIntervalMs: 100, env: w.env }, defer)
  await w.home.query(
    `insert into test_segment (segment_id, id) select $1, case when g in (17, 150) then 'bad-' || g else g::text end from generate_series(1, 250) g`,
    [w.segmentId],
  )
  await until('all but two delivered', async () => Number((await w.target.query('SELECT count() AS n FROM numbered'))[0].n) === 248)
  const dead = await until('two dead letters', async () => {
    const rows = await w.home.query(`select member_id, error, statement from segmenter.dead_letters order by member_id`)
    return rows.length === 2 ? rows : undefined
  })
  assert.deepEqual(
    dead.map((d) => d.member_id),
    ['bad-150', 'bad-17'],
  )
  for (const d of dead) {
    assert.match(d.error, /Code: \d+.*Cannot parse|CANNOT_PARSE/s, `the server's message: ${d.error}`)
    assert.ok(d.statement.includes(`'${d.member_id}'`), 'the statement that failed is kept')
  }
  const [{ rows, d }] = await w.target.query('SELECT count() AS rows, uniqExact(n) AS d FROM numbered')
  assert.equal(Number(d), Number(rows), 'nothing twice')
})

test('a template of two statements: both land, in order, once per batch', async (t) => {
  const defer = deferrer(t)
  const ADD = `${read('add').trimEnd()};
INSERT INTO batches (version, seen, at) SELECT {version}, count(), now() FROM segment_members WHERE version = {version};`
  const w = await world(defer, { add: ADD, batchSize: 250, batchTimeout: '0 s' })
  await w.target.exec('CREATE TABLE batches (version UInt64, seen UInt64, at DateTime) ENGINE = MergeTree ORDER BY version')
  await startTestSidecar({ databaseUrl: w.home.url, pollIntervalMs: 100, env: w.env }, defer)
  await w.home.query(`insert into test_segment (segment_id, id) select $1, 'm' || g from generate_series(1, 2000) g`, [w.segmentId])
  await converged(w, '2,000 adds')
  await homeCaughtUp((sql) => w.home.query(sql)) // the log rows follow the target's checkpoints
  const logged = await w.home.query(`select count(*)::int as n from segmenter.log where kind = 'batch' and ok and event = 'add'`)
  const batches = await w.target.query<{ version: string; seen: string }>('SELECT version, seen FROM batches ORDER BY version')
  assert.equal(batches.length, logged[0].n, 'the second statement ran once per batch')
  assert.equal(new Set(batches.map((b) => b.version)).size, batches.length, 'each batch its own version')
  // The second statement saw its batch's rows: it ran after the first, which had landed.
  assert.deepEqual(
    batches.map((b) => Number(b.seen)),
    batches.map(() => 250),
  )
})

test('outages are transient, rejections are not: codes from the real server, a refused connection, TOO_MANY_PARTS', async (t) => {
  const target = await freshClickhouse()
  t.after(() => target.close())
  const sink = await openClickhouseSink(target.url, 'clickhouse', 'test-home')
  t.after(() => sink.close())
  await target.exec('CREATE TABLE n (x UInt8) ENGINE = MergeTree ORDER BY x')
  const failure = (sql: string) =>
    sink.apply([sql], 'errors', { pos: BigInt(Date.now()), ord: 0 }).then(
      () => assert.fail(`${sql} succeeded`),
      (e: unknown) => e,
    )
  const mismatch = await failure("INSERT INTO n (x) VALUES ('not a number')")
  assert.ok(mismatch instanceof ClickhouseError && !isTransient(mismatch), `a type mismatch is a rejection: ${String(mismatch)}`)
  const unknown = await failure('INSERT INTO n (nosuch) VALUES (1)')
  assert.ok(unknown instanceof ClickhouseError && !isTransient(unknown), `an unknown column is a rejection: ${String(unknown)}`)
  // 18.16 applies a query's SETTINGS clause too late for its memory limit; the URL's settings apply.
  const limited = new URL(target.url)
  limited.searchParams.set('clickhouse_setting_max_memory_usage', '30000000')
  const tight = await openClickhouseSink(limited.toString(), 'clickhouse', 'test-home')
  t.after(() => tight.close())
  const memory = await tight
    .apply(['INSERT INTO n SELECT length(groupArray(number)) % 2 FROM numbers(10000000)'], 'errors', { pos: 1n, ord: 0 })
    .then(
      () => assert.fail('the memory limit did not apply'),
      (e: unknown) => e,
    )
  assert.ok(memory instanceof ClickhouseError && memory.clickhouseCode === 241, `MEMORY_LIMIT_EXCEEDED: ${String(memory)}`)
  assert.ok(isTransient(memory), 'a memory limit is an outage: retried')
  assert.ok(isTransient(new ClickhouseError('Too many parts (300). Merges are processing significantly slower than inserts', 252)))
  assert.ok(!isTransient(new ClickhouseError('Type mismatch', 53)), 'code 53 is no Postgres SQLSTATE class 53 here')
  // Nothing listens on the port any more: ECONNREFUSED.
  const { port } = new URL(target.url)
  const refused = await openClickhouseSink(`http://default@127.0.0.1:1/${target.database}`, 'clickhouse', 'h').then(
    () => assert.fail('connected to port 1'),
    (e: unknown) => e,
  )
  assert.ok(isTransient(refused), `a refused connection is an outage: ${String(refused)} (server on ${port})`)
})

test('batches are sized to the server max_query_size; a URL with a password and settings works', async (t) => {
  const defer = deferrer(t)
  const target = await freshClickhouse()
  defer(() => target.close())
  const u = new URL(target.url)
  u.username = encodeURIComponent(CLICKHOUSE_USER.name)
  u.password = encodeURIComponent(CLICKHOUSE_USER.password)
  const plain = await openClickhouseSink(u.toString(), 'clickhouse', 'h')
  defer(() => plain.close())
  assert.equal(plain.maxStatementBytes, 262_144 - 1024, "the server's default max_query_size, less headroom")
  u.searchParams.set('clickhouse_setting_max_query_size', '20000')
  const small = await openClickhouseSink(u.toString(), 'clickhouse', 'h')
  defer(() => small.close())
  assert.equal(small.maxStatementBytes, 20_000 - 1024)
  const [who] = await (
    await clickhouseClient(u.toString()).query({ query: 'SELECT currentDatabase() AS d', format: 'JSONEachRow' })
  ).json<{
    d: string
  }>()
  assert.equal(who!.d, target.database, 'the database from the URL path')

  // Through the pipeline with that URL: a remove of 1,000 long ids as one IN list would exceed
  // 20,000 bytes; the batches are split to fit, and nothing is dead-lettered.
  const home = await freshPg()
  defer(() => home.close())
  for (const statement of statementsOf(read('schema'))) await target.exec(statement)
  await home.query(SEGMENT_DDL)
  const [{ id }] = await home.query(`select segmenter.create_segment('vip', 'public.test_segment') as id`)
  await home.query(`select segmenter.create_consumer('ch', 'clickhouse', 'clickhouse', 'CH_URL')`)
  await home.query(
    `select segmenter.create_subscription(name => 'sub', consumer => 'ch', segments => array['vip'], syntax => 'altcraft',
       add_sql => $1, remove_sql => $2, batch_size => 1000)`,
    [
      read('add'),
      `INSERT INTO segment_members (segment_id, member_id, version, deleted) SELECT segment_id, member_id, {version}, 1 FROM segment_members FINAL WHERE segment_id = {segment_id} AND member_id IN ({batch_in "id"})`,
    ],
  )
  await startTestSidecar({ databaseUrl: home.url, pollIntervalMs: 100, env: { ...process.env, CH_URL: u.toString() } }, defer)
  await home.query(`insert into test_segment (segment_id, id) select $1, repeat('x', 40) || g from generate_series(1, 1000) g`, [id])
  const live = async () => Number((await target.query('SELECT count() AS n FROM segment_members FINAL WHERE deleted = 0'))[0].n)
  await until('1,000 adds', async () => (await live()) === 1000)
  await home.query(`update test_segment set actual_end = now()`)
  await until('1,000 removes', async () => (await live()) === 0)
  await homeCaughtUp((sql) => home.query(sql))
  const [dead] = await home.query(`select count(*)::int as n from segmenter.dead_letters`)
  assert.equal(dead.n, 0, 'nothing dead-lettered')
  const removes = await home.query(`select rows from segmenter.log where kind = 'batch' and ok and event = 'remove'`)
  assert.ok(removes.length > 1, `the remove went in several batches: ${removes.map((r) => r.rows)}`)
})

test('preview renders {version} as the number a batch from the cursor on carries', async (t) => {
  const defer = deferrer(t)
  const w = await world(defer)
  await w.home.query(`insert into test_segment (segment_id, id) select $1, 'p' || g from generate_series(1, 3) g`, [w.segmentId])
  const pool = new pg.Pool({ connectionString: w.home.url })
  defer(() => pool.end())
  const [preview] = await previewSubscription(pool, 'sub')
  const [{ pos, ord }] = await w.home.query(`select cursor_pos::text as pos, cursor_ord as ord from segmenter.subscriptions`)
  assert.equal(preview!.version, positionVersion(BigInt(pos), ord + 1).toString())
  assert.match(preview!.statements.add!, new RegExp(`\\('${w.segmentId}', 'p1', ${preview!.version}, 0\\)`), preview!.statements.add!)
  assert.doesNotMatch(Object.values(preview!.statements).join('\n'), /NULL/)
})
