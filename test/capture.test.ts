// Change capture on segment tables: every row change maps to the right event (or to none), each
// event is captured exactly once and positioned in commit order, statements are chunked, delivery
// is woken with at most one pending pg-boss job per subscription and one NOTIFY per statement.
// Every test runs in its own fresh migrated database on the seed's test_segment table.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import pg from 'pg'
import { freshPg, type FreshPg } from './harness/db.js'

// The seed's segment table (seeds/002), verbatim: tabs, trailing space, unique (id) and index.
const SEED_DDL = `drop table if exists public.test_segment; 
create table public.test_segment (
	segment_id 		uuid 		not null,
	id 				varchar 	null,
	hash_email 		varchar 	null,
	hash_phone 		varchar 	null,
	actual_begin 	timestamp 	not null 	default now(),
	actual_end 		timestamp 	not null 	default 'infinity',
	processed 		timestamp 	not null 	default now(),
	constraint test_segment_id_key unique (id)

);
create index on test_segment using btree(id);`

interface Ev {
  pos: string
  ord: number | null
  event: string
  segment: string | null
  member_id: string | null
}

/** A fresh database with the seed table registered as segment 'a'; `drain()` returns the events
 * sequenced since the previous drain (positions are strictly after everything seen before). */
async function setup(t: TestContext) {
  const db = await freshPg()
  // node runs t.after hooks first-registered-first, so one hook runs the test's own cleanups
  // (last-first: clients back to the pool) and then drops the database.
  const cleanups: Array<() => unknown> = []
  const defer = (fn: () => unknown) => {
    cleanups.push(fn)
  }
  t.after(async () => {
    for (const fn of cleanups.reverse()) await fn()
    await db.close()
  })
  await db.query(SEED_DDL)
  const [{ id: a }] = (await db.query<{ id: string }>(`select segmenter.create_segment('a', 'public.test_segment') as id`)) as [
    { id: string },
  ]
  let last = 0n
  const drain = async (): Promise<Ev[]> => {
    await db.query('select segmenter.sequence_changes()')
    const rows = await db.query<Ev>(
      `select pos, ord, event::text as event, segment, member_id from segmenter.events
       where subscription_id is null and pos > $1 order by pos, ord`,
      [last.toString()],
    )
    const before = last
    for (const r of rows) {
      assert.ok(BigInt(r.pos) > before, 'new events are positioned after everything drained before')
      if (BigInt(r.pos) > last) last = BigInt(r.pos)
    }
    return rows
  }
  return { db, a, drain, defer }
}

/** Two pooled clients, released before the database is dropped. */
async function twoClients(db: FreshPg, defer: (fn: () => unknown) => void): Promise<[pg.PoolClient, pg.PoolClient]> {
  const c1 = await db.pool.connect()
  const c2 = await db.pool.connect()
  defer(() => {
    c1.release(true)
    c2.release(true)
  })
  return [c1, c2]
}

const brief = (evs: Ev[]) => evs.map((e) => `${e.event} ${e.segment ?? '-'} ${e.member_id ?? '-'}`)
const sortedBrief = (evs: Ev[]) => brief(evs).sort()

async function insertMembers(db: FreshPg, segmentId: string, ids: string[], actualEnd = 'infinity') {
  await db.query(
    `insert into public.test_segment (segment_id, id, hash_email, actual_end)
     select $1, x, 'e_' || x, $3::timestamp from unnest($2::text[]) x`,
    [segmentId, ids, actualEnd],
  )
}

async function changeCount(db: FreshPg): Promise<number> {
  return (await db.query<{ n: number }>('select count(*)::int as n from segmenter.changes'))[0]!.n
}

// ---------------------------------------------------------------------------------------------
// Event types

test('seed DDL verbatim registers as a segment: capture triggers attached, segment_upsert emitted', async (t) => {
  const { db, a, drain } = await setup(t)
  assert.match(a, /^[0-9a-f-]{36}$/)
  const triggers = await db.query<{ tgname: string }>(
    `select tgname from pg_trigger where tgrelid = 'public.test_segment'::regclass and not tgisinternal order by tgname`,
  )
  assert.equal(triggers.length, 4)
  assert.deepEqual(brief(await drain()), ['segment_upsert a -'])
})

test('INSERT of a current row is add; INSERT of a closed row is nothing', async (t) => {
  const { db, a, drain } = await setup(t)
  await drain()
  await insertMembers(db, a, ['m1'])
  assert.deepEqual(brief(await drain()), ['add a m1'])
  await insertMembers(db, a, ['old1', 'old2'], '2020-01-01')
  assert.deepEqual(await drain(), [])
  // a mixed statement captures only the current row
  await db.query(
    `insert into public.test_segment (segment_id, id, actual_end) values ($1, 'm2', 'infinity'), ($1, 'old3', now() - interval '1 day')`,
    [a],
  )
  assert.deepEqual(brief(await drain()), ['add a m2'])
})

test('UPDATE actual_end infinity -> now() is remove; finite -> infinity is add (re-entry)', async (t) => {
  const { db, a, drain } = await setup(t)
  await insertMembers(db, a, ['m1', 'm2'])
  await drain()
  await db.query(`update public.test_segment set actual_end = now(), processed = now() where id = 'm1'`)
  assert.deepEqual(brief(await drain()), ['remove a m1'])
  await db.query(`update public.test_segment set actual_end = 'infinity', actual_begin = now() where id = 'm1'`)
  assert.deepEqual(brief(await drain()), ['add a m1'])
})

test('UPDATE of an attribute of a current row is update; touching only processed is nothing', async (t) => {
  const { db, a, drain } = await setup(t)
  await insertMembers(db, a, ['m1', 'm2'])
  await drain()
  await db.query(`update public.test_segment set hash_email = 'changed' where id = 'm1'`)
  assert.deepEqual(brief(await drain()), ['update a m1'])
  await db.query(`update public.test_segment set processed = now() + interval '1 hour'`)
  assert.deepEqual(await drain(), [])
  // setting an attribute to the value it already has is not a change either
  await db.query(`update public.test_segment set hash_email = hash_email, hash_phone = hash_phone`)
  assert.deepEqual(await drain(), [])
})

test('UPDATE of attributes of a non-current row is nothing', async (t) => {
  const { db, a, drain } = await setup(t)
  await insertMembers(db, a, ['gone'], '2020-01-01')
  await insertMembers(db, a, ['m1'])
  await drain()
  await db.query(`update public.test_segment set hash_email = 'x', hash_phone = 'y', processed = now() where id = 'gone'`)
  assert.deepEqual(await drain(), [])
  // moving the exit time of a closed row keeps it closed
  await db.query(`update public.test_segment set actual_end = '2021-01-01' where id = 'gone'`)
  assert.deepEqual(await drain(), [])
})

test('DELETE of a current row is remove and keeps the row; DELETE of a non-current row is nothing', async (t) => {
  const { db, a, drain } = await setup(t)
  await insertMembers(db, a, ['m1', 'm2'])
  await insertMembers(db, a, ['gone'], '2020-01-01')
  await drain()
  await db.query(`update public.test_segment set hash_phone = 'p1' where id = 'm1'`)
  await drain()
  await db.query(`delete from public.test_segment where id = 'm1'`)
  assert.deepEqual(brief(await drain()), ['remove a m1'])
  const [change] = await db.query<{ ids: string[]; rows: Array<Record<string, unknown>> }>(
    `select ids, rows from segmenter.changes where event = 'remove' and segment_id = $1`,
    [a],
  )
  assert.ok(change)
  assert.deepEqual(change.ids, ['m1'])
  assert.equal(change.rows.length, 1)
  assert.equal(change.rows[0]!.id, 'm1')
  assert.equal(change.rows[0]!.hash_email, 'e_m1')
  assert.equal(change.rows[0]!.hash_phone, 'p1')
  await db.query(`delete from public.test_segment where id = 'gone'`)
  assert.deepEqual(await drain(), [])
  assert.equal((await db.query(`select 1 from public.test_segment where id = 'gone'`)).length, 0)
})

test('TRUNCATE is one clear per segment stored in the table', async (t) => {
  const { db, a, drain } = await setup(t)
  await insertMembers(db, a, ['m1', 'm2', 'm3'])
  await drain()
  await db.query('truncate public.test_segment')
  assert.deepEqual(brief(await drain()), ['clear a -'])
})

test('changing a segment definition is segment_upsert and keeps history; identical args change nothing; retire is segment_delete', async (t) => {
  const { db, a, drain } = await setup(t)
  await drain()
  // identical arguments: no event, no version
  const same = await db.query<{ id: string }>(`select segmenter.create_segment('a', 'public.test_segment') as id`)
  assert.equal(same[0]!.id, a)
  assert.deepEqual(await drain(), [])
  assert.equal((await db.query(`select 1 from segmenter.segments where name = 'a'`)).length, 1)

  const changed = await db.query<{ id: string }>(
    `select segmenter.create_segment('a', 'public.test_segment', 'auto', 'select 1 as id', '0 3 * * *') as id`,
  )
  assert.equal(changed[0]!.id, a, 'a definition change keeps the segment_id')
  assert.deepEqual(brief(await drain()), ['segment_upsert a -'])
  const versions = await db.query<{ kind: string; current: boolean; refresh_cron: string | null }>(
    `select kind, actual_end = 'infinity' as current, refresh_cron from segmenter.segments where name = 'a' order by version_id`,
  )
  assert.deepEqual(
    versions.map((v) => ({ ...v })),
    [
      { kind: 'manual', current: false, refresh_cron: null },
      { kind: 'auto', current: true, refresh_cron: '0 3 * * *' },
    ],
  )

  // the same auto definition again: still nothing
  await db.query(`select segmenter.create_segment('a', 'public.test_segment', 'auto', 'select 1 as id', '0 3 * * *')`)
  assert.deepEqual(await drain(), [])
  assert.equal((await db.query(`select 1 from segmenter.segments where name = 'a'`)).length, 2)

  await db.query(`select segmenter.retire_segment('a')`)
  const retired = await drain()
  assert.deepEqual(
    retired.map((e) => [e.event, e.member_id]),
    [['segment_delete', null]],
  )
  const [del] = await db.query<{ segment_id: string }>(`select segment_id from segmenter.changes where event = 'segment_delete'`)
  assert.equal(del!.segment_id, a)
  assert.equal(retired[0]!.segment, 'a', 'events of a retired segment still name it')
  assert.equal((await db.query(`select 1 from segmenter.segments where name = 'a' and actual_end = 'infinity'`)).length, 0)
})

// ---------------------------------------------------------------------------------------------
// Exactly once, in order

test('a statement producing N events yields exactly N member rows (mixed UPDATE and bulk INSERT)', async (t) => {
  const { db, a, drain } = await setup(t)
  await insertMembers(db, a, ['m1', 'm2', 'm3'])
  await insertMembers(db, a, ['m4', 'm5', 'm6'], '2020-01-01')
  await drain()
  // one statement: m1 leaves, m4..m6 return, m2 changes an attribute, m3 only gets processed
  await db.query(`
    update public.test_segment set
      actual_end = case when id = 'm1' then now()::timestamp when actual_end <> 'infinity' then 'infinity'::timestamp else actual_end end,
      hash_email = case when id = 'm2' then 'new' else hash_email end,
      processed = now()`)
  assert.deepEqual(sortedBrief(await drain()), ['add a m4', 'add a m5', 'add a m6', 'remove a m1', 'update a m2'])

  await db.query(`insert into public.test_segment (segment_id, id) select $1, 'bulk' || g from generate_series(1, 777) g`, [a])
  const evs = await drain()
  assert.equal(evs.length, 777)
  assert.ok(evs.every((e) => e.event === 'add' && e.segment === 'a'))
  assert.equal(new Set(evs.map((e) => e.member_id)).size, 777)
  assert.deepEqual(
    evs.map((e) => e.ord),
    Array.from({ length: 777 }, (_, i) => i + 1),
  )
})

test('positions follow commit order: a transaction that commits later gets later positions', async (t) => {
  const { db, a, drain, defer } = await setup(t)
  await drain()
  const [c1, c2] = await twoClients(db, defer)
  await c1.query('begin')
  await c1.query(`insert into public.test_segment (segment_id, id) values ($1, 't1')`, [a]) // captured first
  await c2.query('begin')
  await c2.query(`insert into public.test_segment (segment_id, id) values ($1, 't2')`, [a])
  await c2.query('commit')
  // the sequencer runs while T1 is still open: it must not skip past T1's change
  await db.query('select segmenter.sequence_changes()')
  await c1.query('commit')
  const evs = await drain()
  const all = await db.query<{ pos: string; member_id: string; seq: string }>(
    `select pos, member_id, seq from segmenter.events where event = 'add' order by pos`,
  )
  assert.deepEqual(
    all.map((e) => e.member_id),
    ['t2', 't1'],
    'T2 committed first, so it is positioned first',
  )
  assert.ok(BigInt(all[0]!.seq) > BigInt(all[1]!.seq), 'T1 was captured first (lower seq) but committed second')
  assert.ok(
    evs.some((e) => e.member_id === 't1'),
    'T1 is sequenced after it commits',
  )
  assert.equal(all.length, 2, 'each change exactly once')
})

test('a member changed by T1 and then, after T1 commits, by a blocked T2 shows T1 then T2', async (t) => {
  const { db, a, drain, defer } = await setup(t)
  await insertMembers(db, a, ['m1'])
  await drain()
  const [c1, c2] = await twoClients(db, defer)
  await c2.query('begin')
  await c2.query(`insert into public.test_segment (segment_id, id) values ($1, 'other')`, [a]) // T2 writes first
  await c1.query('begin')
  await c1.query(`update public.test_segment set actual_end = now() where id = 'm1'`)
  const pid2 = (await c2.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid
  const t2update = c2.query(`update public.test_segment set actual_end = 'infinity', hash_email = 'back' where id = 'm1'`)
  for (let i = 0; ; i++) {
    // wait until T2 waits for T1's row lock
    const w = await db.query(`select 1 from pg_stat_activity where pid = $1 and wait_event_type = 'Lock'`, [pid2])
    if (w.length) break
    assert.ok(i < 200, 'T2 never blocked on T1')
    await new Promise((r) => setTimeout(r, 10))
  }
  await c1.query('commit')
  await t2update
  await c2.query('commit')
  const evs = await drain()
  assert.deepEqual(brief(evs.filter((e) => e.member_id === 'm1')), ['remove a m1', 'add a m1'])
  assert.deepEqual(sortedBrief(evs), ['add a m1', 'add a other', 'remove a m1'])
  const [row] = await db.query(`select hash_email, actual_end = 'infinity' as current from public.test_segment where id = 'm1'`)
  assert.deepEqual({ ...row }, { hash_email: 'back', current: true })
})

test('two segments in one table: events carry their segment; TRUNCATE clears both', async (t) => {
  const { db, a, drain } = await setup(t)
  const [{ id: b }] = (await db.query<{ id: string }>(`select segmenter.create_segment('b', 'public.test_segment') as id`)) as [
    { id: string },
  ]
  assert.notEqual(a, b)
  assert.deepEqual(brief(await drain()), ['segment_upsert a -', 'segment_upsert b -'])
  await db.query(`insert into public.test_segment (segment_id, id) values ($1, 'a1'), ($2, 'b1'), ($1, 'a2'), ($2, 'b2')`, [a, b])
  assert.deepEqual(sortedBrief(await drain()), ['add a a1', 'add a a2', 'add b b1', 'add b b2'])
  await db.query(`update public.test_segment set hash_email = 'x' where id in ('a1', 'b2')`)
  assert.deepEqual(sortedBrief(await drain()), ['update a a1', 'update b b2'])
  await db.query(`update public.test_segment set actual_end = now() where id in ('a2', 'b1')`)
  assert.deepEqual(sortedBrief(await drain()), ['remove a a2', 'remove b b1'])
  // moving a current member from a to b is a remove from a and an add to b
  await db.query(`update public.test_segment set segment_id = $1 where id = 'a1'`, [b])
  assert.deepEqual(sortedBrief(await drain()), ['add b a1', 'remove a a1'])
  await db.query('truncate public.test_segment')
  assert.deepEqual(sortedBrief(await drain()), ['clear a -', 'clear b -'])
})

// ---------------------------------------------------------------------------------------------
// Manual segment API

test('add_members / remove_members / clear_segment emit the right events', async (t) => {
  const { db, a, drain } = await setup(t)
  await drain()
  const added = await db.query<{ n: string }>(`select segmenter.add_members('a', array['x', 'y', 'z']) as n`)
  assert.equal(Number(added[0]!.n), 3)
  assert.deepEqual(sortedBrief(await drain()), ['add a x', 'add a y', 'add a z'])

  // adding a current member again changes nothing
  const again = await db.query<{ n: string }>(`select segmenter.add_members('a', array['x']) as n`)
  assert.equal(Number(again[0]!.n), 0)
  assert.deepEqual(await drain(), [])

  const removed = await db.query<{ n: string }>(`select segmenter.remove_members('a', array['x']) as n`)
  assert.equal(Number(removed[0]!.n), 1)
  assert.deepEqual(brief(await drain()), ['remove a x'])

  // removing a non-member (never there, or already gone) does nothing
  const none = await db.query<{ n: string }>(`select segmenter.remove_members('a', array['nobody', 'x']) as n`)
  assert.equal(Number(none[0]!.n), 0)
  assert.deepEqual(await drain(), [])

  // re-adding x reopens its single row (the seed table has unique (id)): re-entry add
  const back = await db.query<{ n: string }>(`select segmenter.add_members('a', array['x']) as n`)
  assert.equal(Number(back[0]!.n), 1)
  assert.deepEqual(brief(await drain()), ['add a x'])
  const rows = await db.query(`select actual_end = 'infinity' as current from public.test_segment where id = 'x'`)
  assert.deepEqual(
    rows.map((r) => ({ ...r })),
    [{ current: true }],
  )

  const cleared = await db.query<{ n: string }>(`select segmenter.clear_segment('a') as n`)
  assert.equal(Number(cleared[0]!.n), 3)
  assert.deepEqual(brief(await drain()), ['clear a -'], 'one clear, no per-member removes')
  const left = await db.query(`select 1 from public.test_segment where segment_id = $1 and actual_end = 'infinity'`, [a])
  assert.equal(left.length, 0)

  // after a clear, ordinary removes are captured again
  await db.query(`select segmenter.add_members('a', array['w'])`)
  await db.query(`select segmenter.remove_members('a', array['w'])`)
  assert.deepEqual(brief(await drain()), ['add a w', 'remove a w'])
})

test('clear_segment clears only its own segment in a shared table', async (t) => {
  const { db, a, drain } = await setup(t)
  const [{ id: b }] = (await db.query<{ id: string }>(`select segmenter.create_segment('b', 'public.test_segment') as id`)) as [
    { id: string },
  ]
  await insertMembers(db, a, ['a1', 'a2'])
  await insertMembers(db, b, ['b1', 'b2'])
  await drain()
  await db.query(`select segmenter.clear_segment('a')`)
  assert.deepEqual(brief(await drain()), ['clear a -'])
  const current = await db.query<{ id: string }>(`select id from public.test_segment where actual_end = 'infinity' order by id`)
  assert.deepEqual(
    current.map((r) => r.id),
    ['b1', 'b2'],
  )
})

// ---------------------------------------------------------------------------------------------
// Waking delivery

async function subscribe(db: FreshPg, name: string, segment: string): Promise<string> {
  await db.query(`select segmenter.create_consumer('c', 'mysql', 'mysql', 'TARGET_URL')`)
  const [row] = await db.query<{ id: string }>(
    `select segmenter.create_subscription($1, 'c', array[$2], 'insert into t values ({{ it.segment_id }})', 'delete from t') as id`,
    [name, segment],
  )
  return row!.id
}

const pendingJobs = async (db: FreshPg, subscriptionId: string) =>
  (
    await db.query<{ n: number }>(
      `select count(*)::int as n from pgboss.job where name = 'segmenter_deliver' and state = 'created' and singleton_key = $1::text`,
      [subscriptionId],
    )
  )[0]!.n

test('at most one pending pg-boss job per affected active subscription', async (t) => {
  const { db, a } = await setup(t)
  await db.query(`select segmenter.create_segment('b', 'public.test_segment')`)
  const active = await subscribe(db, 'sa', 'a')
  const paused = await subscribe(db, 'sp', 'a')
  const other = await subscribe(db, 'sb', 'b')
  await db.query(`select segmenter.pause('sp')`)
  assert.equal(await pendingJobs(db, active), 1, 'a new subscription is woken for its initial sync')
  // the sidecar took every job
  await db.query(`update pgboss.job set state = 'completed', completed_on = now() where name = 'segmenter_deliver'`)
  for (const s of [active, paused, other]) assert.equal(await pendingJobs(db, s), 0)

  for (let i = 0; i < 50; i++) {
    await db.query(`insert into public.test_segment (segment_id, id) values ($1, $2)`, [a, `m${i}`])
  }
  assert.equal(await pendingJobs(db, active), 1)
  assert.equal(await pendingJobs(db, paused), 0, 'a paused subscription is not woken')
  assert.equal(await pendingJobs(db, other), 0, 'a subscription on another segment is not woken')
  const [job] = await db.query(`select data from pgboss.job where name = 'segmenter_deliver' and state = 'created'`)
  assert.deepEqual(job!.data, { subscription_id: Number(active) })

  // once the job is taken (active), the next statement queues a fresh one
  await db.query(`update pgboss.job set state = 'active', started_on = now() where name = 'segmenter_deliver' and state = 'created'`)
  await db.query(`update public.test_segment set hash_email = 'x' where id = 'm1'`)
  assert.equal(await pendingJobs(db, active), 1)

  // resuming wakes the paused one
  await db.query(`select segmenter.resume('sp')`)
  assert.equal(await pendingJobs(db, paused), 1)
})

test('concurrent writers of subscribed segments neither wait for each other nor deadlock on the wake-up job', async (t) => {
  const { db, a, drain, defer } = await setup(t)
  const [{ id: b }] = (await db.query<{ id: string }>(`select segmenter.create_segment('b', 'public.test_segment') as id`)) as [
    { id: string },
  ]
  const sa = await subscribe(db, 'sa', 'a')
  const sb = await subscribe(db, 'sb', 'b')
  await db.query(`update pgboss.job set state = 'completed', completed_on = now() where name = 'segmenter_deliver'`)
  await drain()
  const [c1, c2] = await twoClients(db, defer)
  for (const c of [c1, c2]) await c.query(`set lock_timeout = '3s'`) // a regression fails instead of hanging
  const ins = (c: pg.PoolClient, seg: string, id: string) =>
    c.query(`insert into public.test_segment (segment_id, id) values ($1, $2)`, [seg, id])
  await c1.query('begin')
  await c2.query('begin')
  await ins(c1, a, 'a1') // T1 enqueues sa's job (uncommitted)
  await ins(c2, b, 'b1') // T2 enqueues sb's job (uncommitted)
  const t0 = Date.now()
  await ins(c1, b, 'b2') // T1 touches sb's segment: must not wait for T2
  await ins(c2, a, 'a2') // T2 touches sa's segment: must not wait for T1 (was a deadlock)
  assert.ok(Date.now() - t0 < 1000, `writers waited ${Date.now() - t0} ms`)
  await c1.query('commit')
  await c2.query('commit')
  assert.deepEqual(sortedBrief(await drain()), ['add a a1', 'add a a2', 'add b b1', 'add b b2'])
  assert.equal(await pendingJobs(db, sa), 1)
  assert.equal(await pendingJobs(db, sb), 1)

  // a writer that skipped (T1 open) is still woken by the next statement after T1 rolls back
  await db.query(`update pgboss.job set state = 'completed' where name = 'segmenter_deliver'`)
  await c1.query('begin')
  await ins(c1, a, 'x1')
  await ins(c2, a, 'x2') // autocommit, skips: T1 holds the subscription's enqueue turn
  await c1.query('rollback')
  // x2 is pending where the sidecar's sweep looks (status counts unsequenced member changes)
  const [st] = await db.query(`select pending_changes::int as n from segmenter.status where subscription = 'sa'`)
  assert.ok(st!.n >= 1)
  await ins(c2, a, 'x3')
  assert.equal(await pendingJobs(db, sa), 1)
})

test('a multi-row statement sends exactly one NOTIFY', async (t) => {
  const { db, a, defer } = await setup(t)
  await subscribe(db, 'sa', 'a')
  await db.query(`update pgboss.job set state = 'completed', completed_on = now() where name = 'segmenter_deliver'`)
  const listener = new pg.Client({ connectionString: db.url })
  await listener.connect()
  defer(() => listener.end())
  const got: string[] = []
  listener.on('notification', (n) => got.push(`${n.channel}:${n.payload}`))
  await listener.query('listen segmenter')
  await db.query(`insert into public.test_segment (segment_id, id) select $1, 'n' || g from generate_series(1, 200) g`, [a])
  await new Promise((r) => setTimeout(r, 300))
  assert.equal(got.length, 1, `notifications: ${JSON.stringify(got)}`)
  // It names the subscriptions it wakes, so the sidecar starts them without asking which.
  const [{ subscription_id: id }] = await db.query(`select subscription_id from segmenter.subscriptions where name = 'sa'`)
  assert.equal(got[0], `segmenter:changes ${id}`)
})

test('the NOTIFY names the active subscriptions of the touched segments, up to 100; beyond, it names none', async (t) => {
  const { db, a, defer } = await setup(t)
  await subscribe(db, 'sa', 'a')
  await subscribe(db, 'sb', 'a')
  await subscribe(db, 'sc', 'a')
  await db.query(`select segmenter.pause('sb')`)
  const listener = new pg.Client({ connectionString: db.url })
  await listener.connect()
  defer(() => listener.end())
  const got: string[] = []
  listener.on('notification', (n) => got.push(n.payload ?? ''))
  await listener.query('listen segmenter')
  const ids = async (...names: string[]) =>
    (await db.query(`select subscription_id from segmenter.subscriptions where name = any($1) order by subscription_id`, [names])).map(
      (r: { subscription_id: string }) => r.subscription_id,
    )
  await db.query(`insert into public.test_segment (segment_id, id) values ($1, 'p1')`, [a])
  await new Promise((r) => setTimeout(r, 200))
  assert.deepEqual(got, [`changes ${(await ids('sa', 'sc')).join(' ')}`], 'the paused one is not named')
  for (let i = 0; i < 100; i++) await subscribe(db, `many${i}`, 'a')
  // Creating a subscription wakes the sidecar too (its first sync): those notifications go first.
  await new Promise((r) => setTimeout(r, 300))
  got.length = 0
  await db.query(`insert into public.test_segment (segment_id, id) values ($1, 'p2')`, [a])
  await new Promise((r) => setTimeout(r, 200))
  assert.deepEqual(got, ['changes'], '102 active subscriptions: too many for a payload, the sweep finds them')
})

// ---------------------------------------------------------------------------------------------
// Chunking, rollback

test('a statement touching more than 10000 members is stored in chunks of at most 10000 ids', async (t) => {
  const { db, a, drain } = await setup(t)
  await drain()
  const N = 25_001
  await db.query(`insert into public.test_segment (segment_id, id) select $1, 'c' || g from generate_series(1, ${N}) g`, [a])
  const chunks = await db.query<{ max: number; n: number }>(
    `select max(cardinality(ids))::int as max, count(*)::int as n from segmenter.changes where event = 'add'`,
  )
  assert.deepEqual({ ...chunks[0] }, { max: 10_000, n: 3 })
  let evs = await drain()
  assert.equal(evs.length, N)
  assert.equal(new Set(evs.map((e) => e.member_id)).size, N)

  await db.query(`update public.test_segment set actual_end = now()`) // all leave in one statement
  evs = await drain()
  assert.equal(evs.length, N)
  assert.ok(evs.every((e) => e.event === 'remove'))
  assert.equal(new Set(evs.map((e) => e.member_id)).size, N)

  await db.query(`update public.test_segment set actual_end = 'infinity'`) // all return
  await drain()
  await db.query(`delete from public.test_segment`)
  evs = await drain()
  assert.equal(evs.length, N)
  assert.equal(new Set(evs.map((e) => e.member_id)).size, N)
  const [max] = await db.query<{ max: number }>(`select max(cardinality(ids))::int as max from segmenter.changes`)
  assert.equal(max!.max, 10_000)
  const [del] = await db.query<{ ok: boolean }>(
    `select bool_and(jsonb_array_length(rows) = cardinality(ids)) as ok from segmenter.changes where rows is not null`,
  )
  assert.equal(del!.ok, true, 'each delete chunk keeps exactly its own rows')
})

test('a rolled back transaction leaves no change rows', async (t) => {
  const { db, a } = await setup(t)
  await insertMembers(db, a, ['keep'])
  const before = await changeCount(db)
  const c = await db.pool.connect()
  try {
    await c.query('begin')
    await c.query(`insert into public.test_segment (segment_id, id) select $1, 'r' || g from generate_series(1, 20) g`, [a])
    await c.query(`update public.test_segment set hash_email = 'x' where id = 'keep'`)
    await c.query(`delete from public.test_segment where id = 'r1'`)
    await c.query(`select segmenter.clear_segment('a')`)
    assert.ok(Number((await c.query('select count(*) as n from segmenter.changes')).rows[0].n) > before)
    await c.query('rollback')
  } finally {
    c.release()
  }
  assert.equal(await changeCount(db), before)
  await db.query('select segmenter.sequence_changes()')
  assert.deepEqual(
    (await db.query(`select member_id from segmenter.events where event = 'add' order by pos`)).map((r) => r.member_id),
    ['keep'],
  )
})
