// Parallel lanes and read-ahead: several target transactions open at once, committed in batch
// order, and the next window read while one is applied. Tested on the sinks directly (two
// transactions really are open together; a crash between commits leaves a prefix and its
// checkpoint) and end to end (the target only ever shows a prefix of the batches; batches that
// lock the same rows fall back to one lane and stay exact; rejected rows are dead-lettered and
// the rest arrive once; a resync mid-delivery stays exact).
import assert from 'node:assert/strict'
import { test } from 'node:test'
import mysql from 'mysql2/promise'
import { pino } from 'pino'
import { openMysqlSink } from '../src/sinks/mysql.js'
import { openPostgresSink } from '../src/sinks/postgres.js'
import type { Sink } from '../src/sinks/sink.js'
import { freshMysql, freshPg, freshPgPlain } from './harness/db.js'
import { deferrer, sleep, until } from './harness/wait.js'
import { startTestSidecar } from './harness/sidecar.js'

const silent = pino({ level: 'silent' })

for (const kind of ['mysql', 'postgres'] as const) {
  test(`${kind} sink: two transactions open at once, committed in order; the uncommitted one leaves no trace`, async (t) => {
    const defer = deferrer(t)
    let target: { url: string; query(sql: string): Promise<any[]> }
    let sink: Sink
    let openTransactions: () => Promise<number>
    if (kind === 'mysql') {
      const db = await freshMysql()
      target = db
      defer(() => db.close())
      await db.query('create table members (member varchar(20) not null)')
      sink = await openMysqlSink(db.url, 'mysql', 'test-home', { lanes: 2 })
      // Uncommitted rows are visible to a dirty read: one row per open transaction below.
      const dirty = await mysql.createConnection({ uri: db.url })
      defer(() => dirty.end())
      await dirty.query('set session transaction isolation level read uncommitted')
      openTransactions = async () => {
        const [[{ all }]] = (await dirty.query('select count(*) as "all" from members')) as any
        const [{ committed }] = await db.query('select count(*) as committed from members')
        return Number(all) - Number(committed)
      }
    } else {
      const db = await freshPgPlain()
      target = db
      defer(() => db.close())
      await db.query('create table members (member text not null)')
      sink = await openPostgresSink(db.url, 'postgres', 'test-home', { lanes: 2 })
      openTransactions = async () =>
        Number(
          (
            await db.query(
              `select count(*) as n from pg_stat_activity where datname = current_database() and state = 'idle in transaction'`,
            )
          )[0].n,
        )
    }
    defer(() => sink.close())
    const rows = async () => (await target.query('select member from members order by member')).map((r: { member: string }) => r.member)
    const insert = (...ids: string[]) => `insert into members (member) values ${ids.map((id) => `('${id}')`).join(', ')}`

    const first = sink.begin([insert('a1')])
    const second = sink.begin([insert('b1')])
    await Promise.all([first.executed, second.executed])
    assert.equal(await openTransactions(), 2, 'both batches are executing in their own open transaction')
    assert.deepEqual(await rows(), [], 'nothing is visible before a commit')
    await first.commit('lanes', { pos: 10n, ord: 2 })
    assert.deepEqual(await rows(), ['a1'])
    assert.deepEqual(await sink.checkpoint('lanes'), { pos: 10n, ord: 2, home: 'test-home' })
    assert.deepEqual(sink.lastCommitted('lanes'), { pos: 10n, ord: 2 }, 'the sink knows what it committed without reading it back')
    // The sidecar dies here: the second batch was executed but never committed.
    await sink.close()
    await until('the dead connection is gone', async () => (await openTransactions()) === 0, 10_000)
    assert.deepEqual(await rows(), ['a1'], 'only the committed prefix is in the target')
    const reopened =
      kind === 'mysql'
        ? await openMysqlSink(target.url, 'mysql', 'test-home', { lanes: 2 })
        : await openPostgresSink(target.url, 'postgres', 'test-home')
    defer(() => reopened.close())
    assert.equal(reopened.lastCommitted('lanes'), null, 'a new sink knows nothing: its checkpoint is read from the target')
    assert.deepEqual(
      await reopened.checkpoint('lanes'),
      { pos: 10n, ord: 2, home: 'test-home' },
      'a restart resumes right after the committed batch',
    )
    assert.deepEqual(reopened.lastCommitted('lanes'), { pos: 10n, ord: 2 }, 'the next transaction must find the checkpoint read')

    // A failed statement rolls its transaction back and frees the lane for the next one.
    const bad = reopened.begin(['insert into no_such_table values (1)'])
    await assert.rejects(bad.executed)
    await bad.rollback()
    const after = reopened.begin([insert('c1')])
    await after.executed
    await after.commit('lanes', { pos: 11n, ord: 1 })
    assert.deepEqual(await rows(), ['a1', 'c1'])
    // apply() (one lane's whole transaction) knows its checkpoint too; a rejected one moves nothing.
    await reopened.apply([insert('d1')], 'lanes', { pos: 12n, ord: 1 })
    await assert.rejects(reopened.apply(['insert into no_such_table values (1)'], 'lanes', { pos: 13n, ord: 1 }))
    assert.deepEqual(reopened.lastCommitted('lanes'), { pos: 12n, ord: 1 })
    assert.deepEqual(await reopened.checkpoint('lanes'), { pos: 12n, ord: 1, home: 'test-home' })
  })
}

const ADD = 'insert into members (member) values {for $i, $m = $batch}({$m.id}){autocomma}{end}'
const REMOVE = 'delete from members where member in ({batch_in "id"})'

interface Scenario {
  lanes: number
  batchSize: number
  /** The target's tables (a `members` table at least). */
  targetDdl: string[]
  addSql?: string
  clearSql?: string
}
/**
 * A home database with segment `seg` (table `seg`), a fresh MariaDB target, consumer `c` with
 * the given lanes and altcraft subscription `s`; `start` runs a sidecar until the test ends.
 */
async function scenario(t: { after(fn: () => Promise<void>): void }, o: Scenario) {
  const defer = deferrer(t)
  const home = await freshPg()
  defer(() => home.close())
  const target = await freshMysql()
  defer(() => target.close())
  await home.query(`create table seg (segment_id uuid not null, id text, actual_begin timestamptz not null default now(),
    actual_end timestamptz not null default 'infinity', processed timestamptz not null default now());
    create index on seg (segment_id, id)`)
  for (const ddl of o.targetDdl) await target.query(ddl)
  const [{ id: segmentId }] = await home.query(`select segmenter.create_segment('seg', 'seg'::regclass) as id`)
  await home.query(`select segmenter.create_consumer('c', 'mysql', 'mysql', 'TARGET_URL', $1::jsonb)`, [JSON.stringify({ lanes: o.lanes })])
  await home.query(
    `select segmenter.create_subscription(name => 's', consumer => 'c', segments => array['seg'], syntax => 'altcraft',
      batch_size => $1, add_sql => $2, remove_sql => $3, clear_sql => $4)`,
    [o.batchSize, o.addSql ?? ADD, REMOVE, o.clearSql ?? null],
  )
  return {
    home,
    target,
    segmentId: segmentId as string,
    defer,
    async start(log = silent) {
      await startTestSidecar({ databaseUrl: home.url, log, pollIntervalMs: 100, env: { ...process.env, TARGET_URL: target.url } }, defer)
    },
  }
}

test('end to end with 2 lanes: the target only ever shows whole statements in order, and ends exact', async (t) => {
  // 40 home transactions of 250 members: commit order numbers them, and each is 2 batches. Each
  // batch sleeps 50 ms in its transaction, so that the watch sees two open at once.
  const { home, target, segmentId, defer, start } = await scenario(t, {
    lanes: 2,
    batchSize: 125,
    targetDdl: ['create table members (member varchar(20) not null)'],
    addSql: `${ADD}; do sleep(0.05)`,
  })
  const STATEMENTS = 40
  const PER = 250
  for (let s = 0; s < STATEMENTS; s++) {
    await home.query(
      `insert into seg (segment_id, id) select $1, lpad($2::text, 3, '0') || '-' || lpad(g::text, 4, '0') from generate_series(1, $3) g`,
      [segmentId, s, PER],
    )
  }
  await start()
  // Watch the target while it fills: complete statements form a prefix, at most one is partial.
  let polls = 0
  let partialSeen = 0
  let mostUncommitted = 0
  const dirty = await mysql.createConnection({ uri: target.url })
  defer(() => dirty.end())
  await dirty.query('set session transaction isolation level read uncommitted')
  for (;;) {
    const counts = new Map<number, number>()
    for (const r of await target.query(`select left(member, 3) as s, count(*) as n from members group by left(member, 3)`))
      counts.set(Number(r.s), Number(r.n))
    const present = [...counts.keys()].sort((a, b) => a - b)
    const full = present.filter((s) => counts.get(s) === PER)
    for (const [s, n] of counts) assert.ok(n <= PER, `statement ${s} has ${n} rows: delivered twice`)
    assert.ok(
      present.every((s, i) => s === i),
      `statements present must be a prefix 0..k, got ${present.join(',')}`,
    )
    assert.ok(present.length - full.length <= 1, `at most the last statement is partial: ${JSON.stringify([...counts])}`)
    if (present.length - full.length === 1) partialSeen++
    // Dirty read first, then the committed count: a commit in between can only lower the difference.
    const [[{ all }]] = (await dirty.query('select count(*) as "all" from members')) as any
    const [{ committed }] = await target.query('select count(*) as committed from members')
    const uncommitted = Number(all) - Number(committed)
    mostUncommitted = Math.max(mostUncommitted, uncommitted)
    polls++
    if (full.length === STATEMENTS) break
    await sleep(5)
  }
  assert.ok(polls > 3, 'the watch saw delivery in progress')
  assert.ok(partialSeen > 0, 'some polls landed between the batches of one statement')
  // Only whole batches of 125 are ever uncommitted: more than one batch means two open at once.
  assert.ok(mostUncommitted > 125, `two batches were open in the target at once (most rows uncommitted: ${mostUncommitted})`)
  assert.ok(mostUncommitted <= 250, `never more than two (most rows uncommitted: ${mostUncommitted})`)
  const [{ n }] = await target.query('select count(*) as n from members')
  assert.equal(Number(n), STATEMENTS * PER)
})

test('batches that lock the same rows in the target fall back to one lane, and the result stays exact', async (t) => {
  // Each batch inserts its rows, then takes the one hot row. A short second batch gets there
  // first and holds it until the first commits, which waits for it: an unseen deadlock.
  // Every row costs the target a sleep of half a millisecond, so the short batch is there about a
  // second before the long one even when this machine stalls between sending the two.
  const { home, target, segmentId, start } = await scenario(t, {
    lanes: 2,
    batchSize: 2000,
    targetDdl: [
      'create table members (member varchar(20) not null)',
      'create table hot (id int primary key, n int not null)',
      'insert into hot values (1, 0)',
    ],
    addSql: `insert into members (member) values {for $i, $m = $batch}(concat({$m.id}, if(sleep(0.0005), '', ''))){autocomma}{end};
      update hot set n = n + 1 where id = 1`,
  })
  await home.query(`insert into seg (segment_id, id) select $1, 'm' || g from generate_series(1, 2010) g`, [segmentId])
  const warnings: string[] = []
  await start(pino({ level: 'warn' }, { write: (line: string) => void warnings.push(JSON.parse(line).msg) }))
  await until('all members arrive', async () => Number((await target.query('select count(*) as n from members'))[0].n) >= 2010, 60_000)
  await sleep(300)
  const [{ n: rows }] = await target.query('select count(*) as n from members')
  const [{ d }] = await target.query('select count(distinct member) as d from members')
  assert.equal(Number(rows), 2010, 'every member once')
  assert.equal(Number(d), 2010)
  const [{ n: increments }] = await target.query('select n from hot where id = 1')
  assert.equal(Number(increments), 2, 'each of the two batches committed exactly once')
  assert.ok(
    warnings.some((w) => /one lane from now on/.test(w)),
    `the conflict was noticed and the subscription went to one lane: ${JSON.stringify(warnings)}`,
  )
})

test('a resync while windows are being read ahead: the target ends exact', async (t) => {
  const { home, target, segmentId, start } = await scenario(t, {
    lanes: 1,
    batchSize: 500,
    targetDdl: ['create table members (member varchar(20) not null)'],
    clearSql: 'delete from members',
  })
  // 50,000 members: five full windows of 10,000, each read while the one before is applied.
  await home.query(`insert into seg (segment_id, id) select $1, 'm' || g from generate_series(1, 50000) g`, [segmentId])
  await start()
  const delivered = async () => Number((await target.query('select count(*) as n from members'))[0].n)
  await until('delivery under way', async () => (await delivered()) >= 12_000, 60_000)
  // Mid-delivery: leavers the old stream has not reached yet, then a resync, then newcomers.
  await home.query(`update seg set actual_end = now() where id in ('m49999', 'm50000', 'm3')`)
  await home.query(`select segmenter.resync('s')`)
  await home.query(`insert into seg (segment_id, id) select $1, 'n' || g from generate_series(1, 100) g`, [segmentId])
  const want = 50_000 - 3 + 100
  await until('converged', async () => (await delivered()) === want, 120_000)
  await sleep(1000) // a read-ahead used after the resync would add pre-snapshot rows now
  const [{ n, d }] = await target.query('select count(*) as n, count(distinct member) as d from members')
  assert.equal(Number(n), want, 'every current member, nothing else')
  assert.equal(Number(d), want, 'each once')
  const [{ gone }] = await target.query(`select count(*) as gone from members where member in ('m49999', 'm50000', 'm3')`)
  assert.equal(Number(gone), 0, 'the leavers are not in the target')
})

test('with 2 lanes, rows the target rejects are isolated and dead-lettered; every other member arrives once', async (t) => {
  const { home, target, segmentId, start } = await scenario(t, {
    lanes: 2,
    batchSize: 10,
    targetDdl: [`create table members (member varchar(20) not null, constraint no_bad check (member not like 'bad%'))`],
  })
  // Two bad members, in the 6th and the 14th of 20 batches, both inside one lane run.
  await home.query(
    `insert into seg (segment_id, id) select $1, case when g in (57, 133) then 'bad-' || g else 'm' || g end from generate_series(1, 200) g`,
    [segmentId],
  )
  await start()
  await until('both dead letters', async () => Number((await home.query(`select count(*) as n from segmenter.dead_letters`))[0].n) === 2)
  await until('198 members', async () => Number((await target.query('select count(*) as n from members'))[0].n) === 198)
  await sleep(500)
  const [{ n, d }] = await target.query('select count(*) as n, count(distinct member) as d from members')
  assert.equal(Number(n), 198, 'every good member arrived')
  assert.equal(Number(d), 198, 'each once')
  const dead = await home.query(`select member_id, error from segmenter.dead_letters order by member_id`)
  assert.deepEqual(
    dead.map((r) => r.member_id),
    ['bad-133', 'bad-57'],
  )
  for (const r of dead) assert.match(r.error, /no_bad/)
})
