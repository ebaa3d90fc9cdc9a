// Stopping and restarting: a graceful stop mid-delivery, stop() with subscriptions sharing a
// consumer, and a restart of the home Postgres. Real servers, the sidecar in-process.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import pg from 'pg'
import { migrate } from '../src/migrate.js'
import { freshMysql, freshPgServer } from './harness/db.js'
import { count, initialSyncDone, MEMBERS_DDL, SEGMENT_DDL, setup, subscribe, T } from './harness/fixtures.js'
import { startTestSidecar } from './harness/sidecar.js'
import { deferrer, sleep, until } from './harness/wait.js'

test('graceful stop mid-delivery: whole batches only, checkpoint matches; a new sidecar finishes exactly', async (t) => {
  const defer = deferrer(t)
  const { home, target, start } = await setup(defer)
  const first = await start({ pollIntervalMs: 100 })
  const id = await subscribe(home, { segment: 'g', args: { add_sql: T.add, remove_sql: T.remove, batch_size: 5000 } })
  await until('initial sync', () => initialSyncDone(home, 'sub'))
  await home.query(`insert into test_segment (segment_id, id) select $1, 'm' || g from generate_series(1, 50000) g`, [id])

  await until('first batch', async () => (await count(target)) >= 5000, 60_000)
  const atStop = await count(target)
  assert.ok(atStop < 50_000, `delivery in flight when stop() is called (${atStop} rows)`)
  await first.stop()
  const delivered = await count(target)
  assert.equal(delivered % 5000, 0, `no half-committed batch: ${delivered}`)
  const [sub] = await home.query(`select subscription_id, sync_key::text from segmenter.subscriptions where name = 'sub'`)
  const [checkpoint] = await target.query('select pos, ord from segmenter_checkpoint where sync_key = ?', [sub.sync_key])
  const [{ n: covered }] = await home.query(
    `select count(*)::int as n from segmenter.events
    where segment_id = $1 and event = 'add' and (pos, ord) <= ($2::bigint, $3::int)`,
    [id, checkpoint.pos, checkpoint.ord],
  )
  assert.equal(covered, delivered, `the target's checkpoint (${checkpoint.pos}, ${checkpoint.ord}) covers exactly the delivered rows`)

  await start({ pollIntervalMs: 100 })
  await until('all 50,000', async () => (await count(target)) >= 50_000, 120_000)
  await sleep(500)
  const [row] = await target.query('select count(*) as n, count(distinct member) as d from members')
  assert.equal(Number(row.n), 50_000)
  assert.equal(Number(row.d), 50_000)
  // Last, so the properties above are checked either way: stop() waits for the batch in flight
  // (sidecar.ts, README: "SIGTERM/SIGINT finish the batch in flight"), not for the rest of the window.
  assert.ok(
    delivered < 50_000,
    `stop() finishes the batch in flight, not the whole window: ${delivered} of 50,000 rows when it resolved (${atStop} when called)`,
  )
})

test('subscriptions sharing a consumer: stop() leaves no target connection open', async (t) => {
  const defer = deferrer(t)
  const { home, target } = await setup(defer)
  // The consumer's database is one the test itself never connects to, so every connection to it
  // on the server is the sidecar's.
  const shared = await freshMysql()
  defer(() => shared.close())
  const connections = async () =>
    Number(
      (
        await target.query('select count(*) as n from information_schema.processlist where db = ? and id <> connection_id()', [
          shared.database,
        ])
      )[0].n,
    )
  defer(async () => {
    // whatever the outcome, end leftover connections so they cannot keep this process alive
    for (const r of await target.query('select id from information_schema.processlist where db = ?', [shared.database])) {
      await target.query(`kill ${Number(r.id)}`).catch(() => {})
    }
  })
  for (let i = 1; i <= 4; i++) await target.query(`create table \`${shared.database}\`.m${i} (member varchar(64) not null)`)
  const [{ id }] = await home.query(`select segmenter.create_segment('s', 'public.test_segment') as id`)
  await home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'SHARED_URL')`)
  // Four subscriptions on one consumer, all due when the sidecar starts: delivered concurrently.
  for (let i = 1; i <= 4; i++) {
    await home.query(
      `select segmenter.create_subscription(name => $1, consumer => 'maria', segments => array['s'], syntax => 'altcraft', batch_size => 100,
      add_sql => $2, remove_sql => $3)`,
      [
        `sub${i}`,
        `insert into m${i} (member) values {for $i, $lead = $batch}({$lead.id}){autocomma}{end}`,
        `delete from m${i} where member in ({batch_in "id"})`,
      ],
    )
  }
  await home.query(`insert into test_segment (segment_id, id) select $1, 'm' || g from generate_series(1, 100) g`, [id])
  const sidecar = await startTestSidecar(
    { databaseUrl: home.url, pollIntervalMs: 200, env: { ...process.env, SHARED_URL: shared.url } },
    defer,
  )
  const stop = () => sidecar.stop()
  for (let i = 1; i <= 4; i++) {
    await until(
      `sub${i} delivered`,
      async () => Number((await target.query(`select count(*) as n from \`${shared.database}\`.m${i}`))[0].n) === 100,
    )
  }
  const open = await connections()
  assert.ok(open >= 1, 'the sidecar holds its target connection while running')
  await stop()
  await sleep(500)
  assert.equal(await connections(), 0, `connections to the target left open after stop() (${open} while running)`)
})

test('survives a restart of the home Postgres', async (t) => {
  const defer = deferrer(t)
  const server = await freshPgServer()
  defer(() => server.destroy())
  await migrate(server.url)
  const target = await freshMysql()
  defer(() => target.close())
  await target.query(MEMBERS_DDL)
  /** One connection per call: the test must not depend on a pool noticing the restart. */
  const q = async (sql: string, params: unknown[] = []) => {
    const c = new pg.Client({ connectionString: server.url, connectionTimeoutMillis: 10_000, query_timeout: 30_000 })
    c.on('error', () => {})
    await c.connect()
    try {
      return (await c.query(sql, params)).rows
    } finally {
      await Promise.race([c.end().catch(() => {}), sleep(1000)])
    }
  }
  await q(SEGMENT_DDL)
  const [{ id }] = await q(`select segmenter.create_segment('h', 'public.test_segment') as id`)
  await q(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'TARGET_URL')`)
  await q(
    `select segmenter.create_subscription(name => 'sub', consumer => 'maria', segments => array['h'], syntax => 'altcraft',
    add_sql => $1, remove_sql => $2, batch_size => 100)`,
    [T.add, T.remove],
  )
  await startTestSidecar({ databaseUrl: server.url, pollIntervalMs: 200, env: { ...process.env, TARGET_URL: target.url } }, defer)

  await q(`insert into test_segment (segment_id, id) select $1, 'a' || g from generate_series(1, 500) g`, [id])
  await until('first rows', async () => (await count(target)) === 500, 30_000)

  await server.stop()
  await sleep(1000)
  await server.start()
  await q(`insert into test_segment (segment_id, id) select $1, 'b' || g from generate_series(1, 500) g`, [id])
  await q(`update test_segment set actual_end = now() where id in ('a1', 'a2', 'a3')`)
  await until('rows after the restart', async () => (await count(target)) === 997, 15_000)
  const [dups] = await target.query('select count(*) - count(distinct member) as d from members')
  assert.equal(Number(dups.d), 0)
  assert.equal(await count(target, `member in ('a1', 'a2', 'a3')`), 0)
})
