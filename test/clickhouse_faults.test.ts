// ClickHouse under faults, on the real server (Debian's clickhouse-server 18.16): kill -9 of the
// sidecar (`node bin/segmenter.js run`) four times during a 100,000-member delivery, and the target
// stopped for 30 s mid-delivery. Without transactions a batch whose checkpoint was not written runs
// again: the target must still equal the segment after FINAL, row for row, and a replayed batch must
// carry the version of its first attempt (an `attempts` log in a plain MergeTree keeps every
// attempt's rows, which ReplacingMergeTree would merge away).
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { statementsOf } from '../src/sinks/clickhouse.js'
import { freshClickhouse, freshClickhouseServer, freshPg, type FreshClickhouse } from './harness/db.js'
import { SEGMENT_DDL } from './harness/fixtures.js'
import { startTestSidecar } from './harness/sidecar.js'
import { sidecarProcess } from './harness/spawn.js'
import { deferrer, sleep, until } from './harness/wait.js'

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const read = (file: string) => readFileSync(join(repo, 'templates', 'clickhouse', `${file}.sql`), 'utf8')
// The default add, and every attempt's (member, version) in a table that never merges rows away.
const ADD = `${read('add').trimEnd()};
INSERT INTO attempts (member_id, version) VALUES {for $i, $lead = $batch}({$lead.id}, {version}){autocomma}{end}`

const finalIds = async (target: Pick<FreshClickhouse, 'query'>) =>
  (await target.query<{ m: string }>('SELECT member_id AS m FROM segment_members FINAL WHERE deleted = 0 ORDER BY member_id')).map(
    (r) => r.m,
  )

/** A home with segment `name` and a ClickHouse consumer `ch`; the default schema in the target, and an `attempts` log (`columns`) that never merges rows away. */
async function world(defer: ReturnType<typeof deferrer>, name: string, attempts: string, serverUrl?: string) {
  const home = await freshPg()
  defer(() => home.close())
  const target = await freshClickhouse(serverUrl)
  defer(() => target.close())
  for (const statement of statementsOf(read('schema'))) await target.exec(statement)
  await target.exec(`CREATE TABLE attempts (${attempts}) ENGINE = MergeTree ORDER BY member_id`)
  await home.query(SEGMENT_DDL)
  const [{ id }] = await home.query(`select segmenter.create_segment($1, 'public.test_segment') as id`, [name])
  await home.query(`select segmenter.create_consumer('ch', 'clickhouse', 'clickhouse', 'CH_URL')`)
  return { home, target, id: id as string }
}

test('kill -9 of the sidecar four times during a 100,000-member delivery: after FINAL the target equals the segment; replays keep their version', async (t) => {
  const defer = deferrer(t)
  const { home, target, id } = await world(defer, 'big', 'member_id String, version UInt64')
  await home.query(
    `select segmenter.create_subscription(name => 'big', consumer => 'ch', segments => array['big'], syntax => 'altcraft',
       add_sql => $1, remove_sql => $2, clear_sql => $3, batch_size => 500)`,
    [ADD, read('remove'), read('clear')],
  )
  await home.query(`insert into test_segment (segment_id, id) select $1, 'm' || g from generate_series(1, 100000) g`, [id])
  const delivered = async () => Number((await target.query('SELECT uniqExact(member_id) AS n FROM attempts'))[0].n)
  const run = () => sidecarProcess({ DATABASE_URL: home.url, CH_URL: target.url, SEGMENTER_POLL_INTERVAL_MS: '100' })
  let kills = 0
  for (const threshold of [5_000, 25_000, 45_000, 65_000]) {
    // Each sidecar delivers something of its own before it is killed, however far the last one got.
    const goal = Math.max(threshold, (await delivered()) + 2_000)
    const child = run()
    const exited = new Promise((r) => child.once('exit', r))
    defer(async () => void child.kill('SIGKILL'))
    await until(`${goal} members`, async () => (await delivered()) >= goal, 120_000)
    child.kill('SIGKILL')
    await exited
    kills++
    assert.ok((await delivered()) < 100_000, 'killed mid-delivery')
  }
  const child = run()
  defer(async () => void child.kill('SIGKILL'))
  const want = (await home.query(`select id from test_segment where actual_end = 'infinity' order by id collate "C"`)).map((r) => r.id)
  await until(
    'the target equals the segment after FINAL',
    async () => JSON.stringify(await finalIds(target)) === JSON.stringify(want),
    180_000,
  )
  await until('the checkpoint covers everything', async () => {
    const [s] = await home.query(`select pending_changes::int as n from segmenter.status`)
    return s.n === 0
  })
  assert.equal(kills, 4)
  const [rows] = await target.query<{ n: string; keys: string }>(
    'SELECT count() AS n, uniqExact(segment_id, member_id) AS keys FROM segment_members FINAL',
  )
  assert.deepEqual([Number(rows!.n), Number(rows!.keys)], [100_000, 100_000], 'one row per member after FINAL')
  // Every attempt at a member's batch wrote the same version: replays carry their first attempt's.
  const [a] = await target.query<{ rows: string; members: string; mixed: string }>(
    `SELECT count() AS rows, uniqExact(member_id) AS members,
            (SELECT count() FROM (SELECT member_id FROM attempts GROUP BY member_id HAVING uniqExact(version) > 1)) AS mixed
     FROM attempts`,
  )
  t.diagnostic(`${a!.rows} rows written for ${a!.members} members: ${Number(a!.rows) - Number(a!.members)} in replayed batches`)
  assert.equal(Number(a!.members), 100_000)
  assert.ok(Number(a!.rows) > 100_000, 'some batch was replayed after a kill (else this test proved nothing about replays)')
  assert.equal(Number(a!.mixed), 0, 'no member was written with two versions')
  child.kill('SIGTERM')
})

test('ClickHouse stopped for 30 s mid-delivery: retries, errors in sync_stats, catches up with nothing lost', async (t) => {
  const defer = deferrer(t)
  const home = await freshPg()
  defer(() => home.close())
  const server = await freshClickhouseServer()
  defer(() => server.destroy())
  const target = await freshClickhouse(server.url)
  defer(() => target.close())
  for (const statement of statementsOf(read('schema'))) await target.exec(statement)
  await home.query(SEGMENT_DDL)
  const [{ id }] = await home.query(`select segmenter.create_segment('down', 'public.test_segment') as id`)
  await home.query(`select segmenter.create_consumer('ch', 'clickhouse', 'clickhouse', 'CH_URL')`)
  await home.query(
    `select segmenter.create_subscription(name => 'down', consumer => 'ch', segments => array['down'], syntax => 'altcraft',
       add_sql => $1, remove_sql => $2, batch_size => 100)`,
    [read('add'), read('remove')],
  )
  await startTestSidecar(
    { databaseUrl: home.url, pollIntervalMs: 100, retryBaseMs: 200, retryMaxMs: 2000, env: { ...process.env, CH_URL: target.url } },
    defer,
  )
  const count = async () => (await finalIds(target)).length
  await home.query(`insert into test_segment (segment_id, id) select $1, 'a' || g from generate_series(1, 1000) g`, [id])
  await until('first part', async () => (await count()) === 1000)
  await server.stop()
  await home.query(`insert into test_segment (segment_id, id) select $1, 'b' || g from generate_series(1, 1000) g`, [id])
  await home.query(`update test_segment set actual_end = now() where id like 'a%' and substring(id, 2)::int <= 100`)
  await sleep(30_000)
  const [errors] = await home.query(`select coalesce(sum(errors), 0)::int as n from segmenter.sync_stats`)
  assert.ok(errors.n >= 3, `errors counted in sync_stats: ${errors.n}`)
  const [status] = await home.query(`select pending_changes::int as pending, last_error from segmenter.status`)
  assert.equal(status.pending, 1100)
  assert.match(status.last_error, /ECONNREFUSED|connect/i)
  await server.start()
  const want = (await home.query(`select id from test_segment where actual_end = 'infinity' order by id collate "C"`)).map((r) => r.id)
  assert.equal(want.length, 1900)
  await until(
    'caught up: the target equals the segment after FINAL',
    async () => JSON.stringify(await finalIds(target)) === JSON.stringify(want),
    60_000,
  )
  await until('status clean', async () => Number((await home.query(`select pending_changes as n from segmenter.status`))[0].n) === 0)
})

test('kill -9 while batches are unconfirmed, attributes changed before the restart: every replay is byte-identical to its first attempt', async (t) => {
  const defer = deferrer(t)
  const { home, target, id } = await world(defer, 'replay', 'member_id String, version UInt64, customid String')
  // The member's attribute is in the statement: rendered anew after the update, a replay would
  // carry the new value under the old version.
  const add = `${read('add').trimEnd()};
INSERT INTO attempts (member_id, version, customid) VALUES {for $i, $lead = $batch}({$lead.id}, {version}, {$lead.customid}){autocomma}{end}`
  await home.query(
    `select segmenter.create_subscription(name => 'replay', consumer => 'ch', segments => array['replay'], syntax => 'altcraft',
       add_sql => $1, remove_sql => $2, batch_size => 200)`,
    [add, read('remove')],
  )
  await home.query(`insert into test_segment (segment_id, id, customid) select $1, 'm' || g, 'first' from generate_series(1, 30000) g`, [
    id,
  ])
  const run = () => sidecarProcess({ DATABASE_URL: home.url, CH_URL: target.url })
  const attempts = async () => Number((await target.query('SELECT count() AS n FROM attempts'))[0].n)
  /** (member, version) pairs written more than once, and those written with more than one attribute value. */
  const replays = async () => {
    const [r] = await target.query<{ again: string; differing: string }>(
      `SELECT countIf(n > 1) AS again, countIf(texts > 1) AS differing
       FROM (SELECT count() AS n, uniqExact(customid) AS texts FROM attempts GROUP BY member_id, version)`,
    )
    return { again: Number(r!.again), differing: Number(r!.differing) }
  }
  const unconfirmed = async () => Number((await home.query(`select count(*)::int as n from segmenter.in_flight`))[0].n)
  for (let kill = 1; kill <= 6 && (await replays()).again === 0; kill++) {
    const child = run()
    const exited = new Promise((r) => child.once('exit', r))
    defer(async () => void child.kill('SIGKILL'))
    const before = await attempts()
    await until('more rows reached the target, and a send is unconfirmed', async () => {
      return (await attempts()) >= before + 1000 && (await unconfirmed()) > 0
    })
    child.kill('SIGKILL')
    await exited
    // What a sidecar would render now differs from what was sent: the attribute every row carries.
    await home.query(`update test_segment set customid = 'after kill ' || $1::int where actual_end = 'infinity'`, [kill])
  }
  const child = run()
  defer(async () => void child.kill('SIGKILL'))
  const want = (await home.query(`select id from test_segment where actual_end = 'infinity' order by id collate "C"`)).map((r) => r.id)
  await until('the target equals the segment after FINAL', async () => JSON.stringify(await finalIds(target)) === JSON.stringify(want))
  await until('caught up', async () => Number((await home.query(`select pending_changes as n from segmenter.status`))[0].n) === 0)
  await until('nothing left unconfirmed', async () => (await unconfirmed()) === 0)
  const { again, differing } = await replays()
  t.diagnostic(`${await attempts()} rows written for 30,000 members; ${again} (member, version) pairs sent again`)
  assert.ok(again > 0, 'a batch was sent again after a kill (else this test proved nothing about replays)')
  assert.equal(differing, 0, 'a replayed batch carried the attribute values of its first attempt: sent as recorded, not rendered anew')
  child.kill('SIGTERM')
})
