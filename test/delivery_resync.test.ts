// Where delivery starts over: a resync of a corrupted target, the initial sync of a new
// subscription, and a paused subscription catching up. Real servers, the sidecar in-process.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { converged, count, setup, subscribe, T, targetIds } from './harness/fixtures.js'
import { deferrer, homeCaughtUp, sleep, until } from './harness/wait.js'

test('resync: a corrupted target becomes the segment again; changes right after the resync arrive once', async (t) => {
  const defer = deferrer(t)
  const { home, target, start } = await setup(defer)
  await start()
  const id = await subscribe(home, { segment: 'r', args: { add_sql: T.add, remove_sql: T.remove, clear_sql: T.clear, batch_size: 500 } })
  const [{ id: other }] = await home.query(`select gen_random_uuid()::text as id`)
  await home.query(`insert into test_segment (segment_id, id) select $1, 'm' || lpad(g::text, 5, '0') from generate_series(1, 3000) g`, [
    id,
  ])
  await until('3,000 delivered', () => converged(home, target, id))

  // Corrupt the target: members lost, junk with the same segId, a row of another segment (not ours to touch).
  await target.query(`delete from members where member like 'm000%' or member like 'm02%'`)
  await target.query(`insert into members (seg, member) values (?, 'junk-1'), (?, 'junk-2'), (?, 'm00001'), (?, 'keep-me')`, [
    id,
    id,
    id,
    other,
  ])
  assert.equal(await converged(home, target, id), false, 'the target is corrupted')
  const logBefore = Number((await home.query(`select coalesce(max(log_id), 0) as n from segmenter.log`))[0].n)

  const [{ pos }] = await home.query(`select segmenter.resync('sub') as pos`)
  assert.ok(Number(pos) > 0, 'resync returns the snapshot position')
  // Right after the resync: new members, leavers, and a leaver who comes back.
  await home.query(`insert into test_segment (segment_id, id) select $1, 'n' || g from generate_series(1, 200) g`, [id])
  await home.query(`update test_segment set actual_end = now() where segment_id = $1 and id in ('m00010', 'm00020', 'm02500', 'n7')`, [id])
  await home.query(`update test_segment set actual_end = 'infinity' where segment_id = $1 and id = 'm02500'`, [id])

  await until('converged after resync', () => converged(home, target, id))
  await sleep(1000) // nothing more may arrive (a late replay of pre-snapshot changes would show here)
  assert.equal(await converged(home, target, id), true, 'still equal')
  const [dups] = await target.query('select count(*) - count(distinct seg, member) as d, count(*) as n from members where seg = ?', [id])
  assert.equal(Number(dups.d), 0, 'no member twice')
  assert.equal(Number(dups.n), 3000 + 200 - 3)
  assert.deepEqual(await target.query('select member from members where seg = ?', [other]), [{ member: 'keep-me' }])
  // The resync went out as a clear followed by adds.
  await homeCaughtUp(home.query)
  const log = await home.query(
    `select event, sum(rows)::int as rows from segmenter.log where log_id > $1 and ok and kind = 'batch'
    group by event order by event`,
    [logBefore],
  )
  const byEvent = Object.fromEntries(log.map((r) => [r.event, r.rows]))
  assert.ok(byEvent.clear >= 1, `a clear was delivered: ${JSON.stringify(log)}`)
  assert.ok(byEvent.add >= 3000, `every current member was re-added: ${JSON.stringify(log)}`)
})

test('a new subscription on a segment with 5,000 members starts with segment_upsert and all members, then follows changes', async (t) => {
  const defer = deferrer(t)
  const { home, target, start } = await setup(defer)
  await target.query('create table segments (segment_id varchar(36) primary key, name varchar(255))')
  const [{ id }] = await home.query(`select segmenter.create_segment('big', 'public.test_segment') as id`)
  await home.query(`insert into test_segment (segment_id, id) select $1, 'm' || lpad(g::text, 5, '0') from generate_series(1, 5000) g`, [
    id,
  ])
  await home.query(`update test_segment set actual_end = now() where id in ('m00001', 'm00002')`) // history the snapshot must not replay
  await start()
  await home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'TARGET_URL')`)
  await home.query(
    `select segmenter.create_subscription(name => 'sub', consumer => 'maria', segments => array['big'], syntax => 'altcraft',
    add_sql => $1, remove_sql => $2, clear_sql => $3, batch_size => 1000,
    segment_upsert_sql => 'insert into segments (segment_id, name) values ({segment_id}, {segment_name}) on duplicate key update name = values(name)')`,
    [T.add, T.remove, T.clear],
  )
  await until('4,998 members', async () => (await count(target)) === 4998)
  assert.deepEqual(await target.query('select segment_id, name from segments'), [{ segment_id: id, name: 'big' }])
  assert.equal(await converged(home, target, id), true)
  await homeCaughtUp(home.query)
  const log = await home.query(`select event, rows::int from segmenter.log where kind = 'batch' and ok order by log_id`)
  assert.equal(log[0]?.event, 'segment_upsert', `the first batch is the segment: ${JSON.stringify(log.slice(0, 3))}`)
  assert.deepEqual([...new Set(log.slice(1).map((r) => r.event))], ['add'], 'then adds only (no clear, no removes)')
  assert.equal(
    log.slice(1).reduce((n, r) => n + r.rows, 0),
    4998,
  )
  assert.ok(log.slice(1).every((r) => r.rows <= 1000))

  // Then it follows changes.
  await home.query(`insert into test_segment (segment_id, id) select $1, 'n' || g from generate_series(1, 10) g`, [id])
  await home.query(`update test_segment set actual_end = now() where id in ('m00100', 'm00200', 'm00300')`)
  await until('changes followed', async () => (await count(target)) === 4998 + 10 - 3 && converged(home, target, id))
  const [dups] = await target.query('select count(*) - count(distinct member) as d from members')
  assert.equal(Number(dups.d), 0)
})

test('pause accumulates, resume catches up', async (t) => {
  const defer = deferrer(t)
  const { home, target, start } = await setup(defer)
  await start()
  const id = await subscribe(home, { segment: 'p', args: { add_sql: T.add, remove_sql: T.remove, batch_size: 50 } })
  await home.query(`insert into test_segment (segment_id, id) select $1, 'm' || lpad(g::text, 4, '0') from generate_series(1, 200) g`, [id])
  await until('200 delivered', () => converged(home, target, id))
  const before = await targetIds(target, id)

  await home.query(`select segmenter.pause('sub')`)
  // 300 changes: 200 adds (some in single statements) and 100 removes of delivered members.
  await home.query(`insert into test_segment (segment_id, id) select $1, 'n' || lpad(g::text, 4, '0') from generate_series(1, 150) g`, [id])
  for (let i = 151; i <= 200; i++)
    await home.query(`insert into test_segment (segment_id, id) values ($1, $2)`, [id, `n${String(i).padStart(4, '0')}`])
  await home.query(`update test_segment set actual_end = now() where segment_id = $1 and id between 'm0001' and 'm0100'`, [id])
  await sleep(1500)
  assert.deepEqual(await targetIds(target, id), before, 'a paused subscription delivers nothing')
  const [status] = await home.query(`select state, pending_changes::int as pending from segmenter.status where subscription = 'sub'`)
  assert.equal(status.state, 'paused')
  assert.ok(status.pending > 0, `pending_changes shows the backlog: ${status.pending}`)
  assert.equal(status.pending, 300, 'every accumulated member event is counted')

  await home.query(`select segmenter.resume('sub')`)
  await until('caught up', () => converged(home, target, id), 30_000)
  assert.equal(await count(target), 300)
  await until(
    'status clean',
    async () => Number((await home.query(`select pending_changes from segmenter.status`))[0].pending_changes) === 0,
  )
})
