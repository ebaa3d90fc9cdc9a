// Crashes, outages and concurrency: the target must end equal to the segment, row for row.
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { test } from 'node:test'
import mysql from 'mysql2/promise'
import { pino } from 'pino'
import { createPool } from '../src/db.js'
import { readPending, type SubscriptionRow } from '../src/read.js'
import { startSidecar } from '../src/sidecar.js'
import { isTransient } from '../src/sinks/index.js'
import { freshMariadbServer, freshMysql, freshPg } from './harness/db.js'
import { deferrer, sleep, until } from './harness/wait.js'
import { startTestSidecar } from './harness/sidecar.js'

const DDL = `create table seg (segment_id uuid not null, id text, actual_begin timestamptz not null default now(),
  actual_end timestamptz not null default 'infinity', processed timestamptz not null default now());
  create index on seg (segment_id, id);`
const ADD = 'insert into members (member) values {for $i, $lead = $batch}({$lead.id}){autocomma}{end}'
const REMOVE = 'delete from members where member in ({batch_in "id"})'

// The last kill comes after 65,000 rows; a sidecar has been seen to deliver 46,000 more between a
// threshold and its kill (a count(*) poll, the test process short of CPU), so 100,000 was too few.
const MEMBERS = 200_000
for (const lanes of [1, 2]) {
  test(`kill -9 of the sidecar during a 200,000-member delivery: nothing lost, nothing twice (lanes ${lanes})`, async (t) => {
    const home = await freshPg()
    const target = await freshMysql()
    const defer = deferrer(t)
    defer(() => home.close())
    defer(() => target.close())
    // No unique key on member: a duplicate would show. `seq` only tells progress cheaply (max() reads
    // one index entry where count(*) scans), so a kill lands within a few ms of its threshold.
    await target.query('create table members (seq bigint auto_increment primary key, member varchar(64) not null)')
    await home.query(DDL)
    const [{ id }] = await home.query(`select segmenter.create_segment('big', 'seg') as id`)
    await home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'TARGET_URL', $1::jsonb)`, [JSON.stringify({ lanes })])
    await home.query(
      `select segmenter.create_subscription(name => 'big', consumer => 'maria', segments => array['big'], add_sql => $1, remove_sql => $2, batch_size => 500, syntax => 'altcraft')`,
      [ADD, REMOVE],
    )
    await home.query(`insert into seg (segment_id, id) select $1, 'm' || g from generate_series(1, $2::int) g`, [id, MEMBERS])
    const count = async () => Number((await target.query('select count(*) as n from members'))[0].n)
    const run = (): ChildProcess =>
      spawn(process.execPath, ['bin/segmenter.js', 'run'], {
        env: {
          ...process.env,
          DATABASE_URL: home.url,
          TARGET_URL: target.url,
          SEGMENTER_LOG_LEVEL: 'warn',
          SEGMENTER_POLL_INTERVAL_MS: '100',
          SEGMENTER_HTTP_PORT: '0',
        },
        stdio: ['ignore', 'ignore', 'inherit'],
      })
    // An upper bound of the rows committed (auto-increment also counts inserts rolled back by a kill).
    const progress = async () => Number((await target.query('select coalesce(max(seq), 0) as n from members'))[0].n)
    let kills = 0
    for (const threshold of [5_000, 25_000, 45_000, 65_000]) {
      // Each sidecar delivers something of its own before it is killed, however far the last one got.
      const goal = Math.max(threshold, (await progress()) + 2_000)
      const child = run()
      const exited = new Promise((r) => child.once('exit', r))
      const end = Date.now() + 120_000
      while ((await progress()) < goal) {
        assert.ok(Date.now() < end, `timed out waiting for ${goal} rows`)
        await sleep(5)
      }
      child.kill('SIGKILL')
      await exited
      kills++
      assert.ok((await count()) < MEMBERS, 'killed mid-delivery')
    }
    const child = run()
    defer(() => child.kill('SIGKILL'))
    await until('all rows', async () => (await count()) >= MEMBERS, 180_000)
    await sleep(500)
    const [row] = await target.query('select count(*) as n, count(distinct member) as d from members')
    assert.equal(kills, 4)
    assert.equal(Number(row.n), MEMBERS)
    assert.equal(Number(row.d), MEMBERS)
    child.kill('SIGTERM')
  })
}

test('two sidecars at once give the exact result, in order', async (t) => {
  const home = await freshPg()
  const target = await freshMysql()
  const defer = deferrer(t)
  defer(() => home.close())
  defer(() => target.close())
  await target.query('create table members (member varchar(64) not null)')
  await home.query(DDL)
  const [{ id }] = await home.query(`select segmenter.create_segment('two', 'seg') as id`)
  await home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'TARGET_URL')`)
  await home.query(
    `select segmenter.create_subscription(name => 'two', consumer => 'maria', segments => array['two'], add_sql => $1, remove_sql => $2, batch_size => 50, syntax => 'altcraft')`,
    [ADD, REMOVE],
  )
  const env = { ...process.env, TARGET_URL: target.url }
  const pools = [createPool(home.url), createPool(home.url)]
  const sidecars = await Promise.all(
    pools.map((pool) => startSidecar({ databaseUrl: home.url, pool, log: pino({ level: 'silent' }), pollIntervalMs: 50, env })),
  )
  defer(async () => {
    for (const s of sidecars) await s.stop()
    for (const p of pools) await p.end()
  })
  // Members enter, leave and re-enter across many statements: only in-order delivery ends right.
  for (let round = 0; round < 20; round++) {
    await home.query(`insert into seg (segment_id, id) select $1, 'r${round}-' || g from generate_series(1, 200) g`, [id])
    await home.query(
      `update seg set actual_end = now() where actual_end = 'infinity' and id like 'r${round}-%' and split_part(id, '-', 2)::int % 3 = 0`,
    )
    if (round % 4 === 3)
      await home.query(`update seg set actual_end = 'infinity' where id like 'r${round - 1}-%' and split_part(id, '-', 2)::int % 3 = 0`)
  }
  const expected = (await home.query(`select id from seg where actual_end = 'infinity' order by id`)).map((r) => r.id)
  await until(
    'converged',
    async () => {
      const rows = await target.query('select member from members order by member')
      return rows.length === expected.length && rows.every((r: { member: string }, i: number) => r.member === expected[i])
    },
    60_000,
  )
  const [dups] = await target.query('select count(*) - count(distinct member) as d from members')
  assert.equal(Number(dups.d), 0)
})

test('target down for 30 s mid-delivery: retries, errors counted, then catches up', async (t) => {
  const home = await freshPg()
  const server = await freshMariadbServer()
  const defer = deferrer(t)
  defer(() => home.close())
  defer(() => server.destroy())
  const admin = await mysql.createConnection(server.url)
  await admin.query('create database tgt')
  await admin.query('create table tgt.members (member varchar(64) not null)')
  await admin.end()
  const url = server.url.replace(/\/?$/, '/tgt')
  await home.query(DDL)
  const [{ id }] = await home.query(`select segmenter.create_segment('down', 'seg') as id`)
  await home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'TARGET_URL')`)
  await home.query(
    `select segmenter.create_subscription(name => 'down', consumer => 'maria', segments => array['down'], add_sql => $1, remove_sql => $2, batch_size => 100, syntax => 'altcraft')`,
    [ADD, REMOVE],
  )
  await startTestSidecar(
    { databaseUrl: home.url, pollIntervalMs: 100, retryBaseMs: 200, retryMaxMs: 2000, env: { ...process.env, TARGET_URL: url } },
    defer,
  )
  const count = async () => {
    const c = await mysql.createConnection(url)
    try {
      return Number(((await c.query('select count(*) as n from members')) as any)[0][0].n)
    } finally {
      await c.end()
    }
  }
  await home.query(`insert into seg (segment_id, id) select $1, 'a' || g from generate_series(1, 1000) g`, [id])
  await until('first part', async () => (await count()) === 1000)
  await server.stop()
  await home.query(`insert into seg (segment_id, id) select $1, 'b' || g from generate_series(1, 1000) g`, [id])
  await sleep(30_000)
  const errors = await home.query(`select coalesce(sum(errors), 0)::int as n from segmenter.sync_stats`)
  assert.ok(errors[0].n >= 3, `errors counted in sync_stats: ${errors[0].n}`)
  const status = await home.query(`select pending_changes::int as pending, last_error from segmenter.status`)
  assert.equal(status[0].pending, 1000)
  assert.ok(status[0].last_error)
  await server.start()
  await until('caught up', async () => (await count()) === 2000, 30_000)
  const [pending] = await home.query(`select pending_changes::int as n from segmenter.status`)
  await until('status clean', async () => Number((await home.query(`select pending_changes as n from segmenter.status`))[0].n) === 0)
  assert.ok(pending.n >= 0)
})

/** A fresh home database, a sidecar pool on it, and one client checked out of it with its backend's pid. */
async function homeWithClient(defer: ReturnType<typeof deferrer>) {
  const home = await freshPg()
  defer(() => home.close())
  const pool = createPool(home.url)
  defer(() => pool.end())
  const client = await pool.connect()
  const [{ pid }] = (await client.query('select pg_backend_pid() as pid')).rows
  return { home, pool, client, pid }
}

test('a checked-out home connection killed between two queries fails its next query (retryable) instead of the process', async (t) => {
  // The client is held the way a delivery round holds its advisory-lock client.
  const { home, pool, client, pid } = await homeWithClient(deferrer(t))
  await home.query('select pg_terminate_backend($1)', [pid])
  await sleep(300) // the server's FATAL message arrives while no query runs on the client
  const error = await client.query('select 1').then(
    () => null,
    (e: Error) => e,
  )
  assert.ok(error, 'the dead connection cannot answer')
  assert.ok(isTransient(error), `a lost home connection is retried, not treated as a rejection: ${error.message}`)
  client.release()
  const [{ ok }] = (await pool.query('select true as ok')).rows
  assert.equal(ok, true, 'the pool dropped the dead client and connects anew')
})

test("a change read whose connection dies mid-read fails at once instead of hanging on the cursor's close", async (t) => {
  const { home, pool, client, pid } = await homeWithClient(deferrer(t))
  // Hold the change log so that the read blocks on the server, then kill its connection.
  const locker = await pool.connect()
  await locker.query('begin; lock table segmenter.changes in access exclusive mode')
  const sub = { segment_ids: ['00000000-0000-0000-0000-000000000001'], subscription_id: '1' } as SubscriptionRow
  const reading = readPending(client, sub, { pos: 0n, ord: 0 }, 100).then(
    () => 'read',
    (e: Error) => e,
  )
  await until('the read waits for the lock', async () => {
    const [row] = await home.query(`select wait_event_type from pg_stat_activity where pid = $1`, [pid])
    return row?.wait_event_type === 'Lock'
  })
  await home.query('select pg_terminate_backend($1)', [pid])
  const outcome = await Promise.race([reading, sleep(5000).then(() => 'still waiting')])
  client.release(new Error('discard')) // before asserting: the pool's end() would wait for it
  await locker.query('rollback')
  locker.release()
  assert.ok(outcome instanceof Error, `the read fails (got: ${String(outcome)})`)
  assert.ok(isTransient(outcome), `as a lost connection, retried: ${outcome.message}`)
})

test('stop() returns, and the pool ends, while the work loop waits on a query that does not come back', async (t) => {
  const defer = deferrer(t)
  const home = await freshPg()
  defer(() => home.close())
  // Another session holds the subscriptions table: the loop's next sweep waits on it, as a query
  // on a connection that died under it would wait.
  const locker = createPool(home.url, 1)
  defer(() => locker.end())
  const lock = await locker.connect()
  const unlock = async () => {
    await lock.query('rollback').catch(() => {})
  }
  defer(async () => lock.release())
  defer(unlock)
  const sidecar = await startTestSidecar({ databaseUrl: home.url, pollIntervalMs: 50, stopTimeoutMs: 1000 }, defer)
  await lock.query('begin; lock table segmenter.subscriptions in access exclusive mode')
  await until('the sweep waits for the lock', async () => {
    const rows = await home.query(
      `select 1 from pg_stat_activity where application_name = 'segmenter' and wait_event_type = 'Lock' and query like '%segmenter.subscriptions%'`,
    )
    return rows.length > 0
  })
  const started = performance.now()
  // stop() also ends its pool, whose one client is still waiting.
  const outcome = await Promise.race([sidecar.stop().then(() => 'stopped'), sleep(30_000).then(() => 'still stopping')])
  const ms = performance.now() - started
  const [{ waiting }] = await home.query(
    `select count(*)::int as waiting from pg_stat_activity where application_name = 'segmenter' and wait_event_type = 'Lock'`,
  )
  await unlock() // a stop still under way finishes now
  assert.equal(outcome, 'stopped')
  assert.equal(waiting, 1, 'the query was still waiting when stop() returned')
  // Bounds: 10 s for the loop, 1 s for batches in flight, 5 s for the pool, plus the other steps.
  assert.ok(ms < 25_000, `stop() returned after ${Math.round(ms)} ms`)
})
