// What goes out in a batch: net compaction, update events, statements sized to the target's
// max_allowed_packet, and a one-lane backlog grouped into few target transactions (a rejected row
// in a group still isolated). Real servers, the sidecar in-process.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import mysql from 'mysql2/promise'
import { converged, count, currentIds, initialSyncDone, privateTarget, setup, subscribe, T } from './harness/fixtures.js'
import { startTestSidecar } from './harness/sidecar.js'
import { deferrer, homeCaughtUp, sleep, until } from './harness/wait.js'

test('net compaction: 50 adds and 20 of them closed within the timeout arrive as 30 adds and no removes', async (t) => {
  const defer = deferrer(t)
  const { home, target, start } = await setup(defer)
  await start()
  const id = await subscribe(home, { segment: 'c', args: { add_sql: T.add, remove_sql: T.remove, batch_size: 1000, batch_timeout: '1 s' } })
  await until('initial sync', () => initialSyncDone(home, 'sub'))
  const [{ n: logBefore }] = await home.query(`select coalesce(max(log_id), 0)::int as n from segmenter.log`)

  await home.query(`insert into test_segment (segment_id, id) select $1, 'm' || lpad(g::text, 2, '0') from generate_series(1, 50) g`, [id])
  await home.query(`update test_segment set actual_end = now() where segment_id = $1 and id <= 'm20'`, [id])
  await until('30 members', async () => (await count(target)) === 30, 10_000)
  await sleep(1500) // any later batch of this round would show by now
  assert.equal(await count(target), 30)
  assert.equal(await converged(home, target, id), true)
  const log = await home.query(
    `select event, statements, rows::int, ok from segmenter.log where kind = 'batch' and log_id > $1 order by log_id`,
    [logBefore],
  )
  const adds = log.filter((r) => r.event === 'add')
  assert.equal(
    adds.reduce((n, r) => n + r.rows, 0),
    30,
    `sum(rows) of add batches: ${JSON.stringify(log)}`,
  )
  assert.equal(adds.length, 1, 'one add batch')
  assert.deepEqual(
    log.filter((r) => r.event === 'remove' && r.statements > 0),
    [],
    'no remove statement',
  )
  assert.ok(log.every((r) => r.ok))
})

test('update events: update_sql when given, the (upsert) add template otherwise', async (t) => {
  const defer = deferrer(t)
  const { home, target, start } = await setup(defer)
  await start()
  await target.query('create table with_update (member varchar(64) primary key, email varchar(255), via varchar(10))')
  await target.query('create table without_update (member varchar(64) primary key, email varchar(255), via varchar(10))')
  const [{ id }] = await home.query(`select segmenter.create_segment('u', 'public.test_segment') as id`)
  // One consumer each: subscriptions sharing a consumer are the subject of the sink test below.
  await home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'TARGET_URL')`)
  await home.query(`select segmenter.create_consumer('maria2', 'mysql', 'mysql', 'TARGET_URL')`)
  const add = (
    table: string,
  ) => `insert into ${table} (member, email, via) values {for $i, $lead = $batch}({$lead.id}, {$lead.hash_email}, 'add'){autocomma}{end}
    on duplicate key update email = values(email), via = values(via)`
  const remove = (table: string) => `delete from ${table} where member in ({batch_in "id"})`
  await home.query(
    `select segmenter.create_subscription(name => 'with_update', consumer => 'maria', segments => array['u'], syntax => 'altcraft',
    add_sql => $1, remove_sql => $2, update_sql => $3, batch_size => 10)`,
    [
      add('with_update'),
      remove('with_update'),
      `{for $i, $lead = $batch}update with_update set email = {$lead.hash_email}, via = 'update' where member = {$lead.id};
{end}`,
    ],
  )
  await home.query(
    `select segmenter.create_subscription(name => 'without_update', consumer => 'maria2', segments => array['u'], syntax => 'squirrelly',
    add_sql => $1, remove_sql => $2, batch_size => 10)`,
    [
      "insert into without_update (member, email, via) values {{@rows(it.batch) => lead}}({{ lead.id }}, {{ lead.hash_email }}, 'add'){{/rows}} on duplicate key update email = values(email), via = 'upsert'",
      'delete from without_update where member in ({{ it.batch | in("id") }})',
    ],
  )
  await home.query(
    `insert into test_segment (segment_id, id, hash_email) values ($1, 'a', 'a@old'), ($1, 'b', 'b@old'), ($1, 'c', 'c@old')`,
    [id],
  )
  const rows = (table: string) => target.query(`select member, email, via from ${table} order by member`)
  const initial = [
    { member: 'a', email: 'a@old', via: 'add' },
    { member: 'b', email: 'b@old', via: 'add' },
    { member: 'c', email: 'c@old', via: 'add' },
  ]
  await until('both delivered', async () => (await rows('with_update')).length === 3 && (await rows('without_update')).length === 3)
  assert.deepEqual(await rows('with_update'), initial)
  assert.deepEqual(await rows('without_update'), initial)

  await home.query(`update test_segment set hash_email = 'a@new' where id = 'a'`)
  await home.query(`update test_segment set hash_email = 'c@new', processed = now() where id = 'c'`)
  await until(
    'updates delivered',
    async () =>
      (await rows('with_update')).filter((r: { email: string }) => r.email.endsWith('@new')).length === 2 &&
      (await rows('without_update')).filter((r: { email: string }) => r.email.endsWith('@new')).length === 2,
  )
  assert.deepEqual(await rows('with_update'), [
    { member: 'a', email: 'a@new', via: 'update' },
    { member: 'b', email: 'b@old', via: 'add' },
    { member: 'c', email: 'c@new', via: 'update' },
  ])
  assert.deepEqual(await rows('without_update'), [
    { member: 'a', email: 'a@new', via: 'upsert' },
    { member: 'b', email: 'b@old', via: 'add' },
    { member: 'c', email: 'c@new', via: 'upsert' },
  ])
  await homeCaughtUp(home.query)
  const events =
    await home.query(`select s.name, l.event, sum(l.rows)::int as rows from segmenter.log l join segmenter.subscriptions s using (subscription_id)
    where l.kind = 'batch' and l.ok and l.event in ('add', 'update') group by s.name, l.event order by s.name, l.event`)
  assert.deepEqual(events, [
    { name: 'with_update', event: 'add', rows: 3 },
    { name: 'with_update', event: 'update', rows: 2 },
    { name: 'without_update', event: 'add', rows: 5 },
  ])
  // A statement that only stamps `processed` is no update.
  await home.query(`update test_segment set processed = now() + interval '1 minute'`)
  await sleep(1000)
  const [{ n }] = await home.query(`select count(*)::int as n from segmenter.changes where event = 'update'`)
  assert.equal(n, 2)
})

test("statements are sized to the target's max_allowed_packet: split batches, every row, no dead letters", async (t) => {
  const defer = deferrer(t)
  const { home, admin, url } = await privateTarget(defer, 'member varchar(64) not null, payload varchar(255) not null')
  await admin.query('set global max_allowed_packet = 16384')
  const check = await mysql.createConnection(url)
  defer(() => check.end())
  const [[{ packet }]] = (await check.query('select @@max_allowed_packet as packet')) as any
  assert.equal(Number(packet), 16384, 'new connections see the small packet limit')

  const [{ id }] = await home.query(`select segmenter.create_segment('wide', 'public.test_segment') as id`)
  await home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'TARGET_URL')`)
  await home.query(`select segmenter.create_subscription(name => 'wide', consumer => 'maria', segments => array['wide'], syntax => 'altcraft', batch_size => 1000,
    add_sql => 'insert into members (member, payload) values {for $i, $lead = $batch}({$lead.id}, {$lead.hash_email}){autocomma}{end}',
    remove_sql => 'delete from members where member in ({batch_in "id"})')`)
  await startTestSidecar(
    { databaseUrl: home.url, pollIntervalMs: 200, retryBaseMs: 200, retryMaxMs: 1000, env: { ...process.env, TARGET_URL: url } },
    defer,
  )
  // ~100 bytes per row: a 1,000-member statement is ~100 KB, six times the limit.
  await home.query(
    `insert into test_segment (segment_id, id, hash_email) select $1, 'member-' || lpad(g::text, 6, '0'), repeat(md5(g::text), 2) || 'x'
    from generate_series(1, 1000) g`,
    [id],
  )
  const rows = async () => Number(((await check.query('select count(*) as n, count(distinct member) as d from members')) as any)[0][0].n)
  await until('1,000 rows', async () => (await rows()) === 1000, 60_000)
  await sleep(300)
  const [[dist]] = (await check.query('select count(*) as n, count(distinct member) as d, min(length(payload)) as len from members')) as any
  assert.deepEqual([Number(dist.n), Number(dist.d), Number(dist.len)], [1000, 1000, 65])
  assert.equal(Number((await home.query(`select count(*) as n from segmenter.dead_letters`))[0].n), 0, 'no dead letters')
  const log = await home.query(`select count(*)::int as batches, sum(rows)::int as rows, max(rows)::int as biggest,
    count(*) filter (where not ok)::int as failed from segmenter.log where kind = 'batch' and event = 'add'`)
  assert.ok(log[0].batches > 1, `split into several add batches: ${JSON.stringify(log[0])}`)
  assert.equal(log[0].rows, 1000)
  assert.ok(log[0].biggest < 1000)
  assert.equal(log[0].failed, 0, 'no failed round (an oversized statement would drop the connection)')
})

test('on one lane a backlog goes in groups of batches per target transaction, each batch its own statement; a rejected row in a group is still isolated', async (t) => {
  const defer = deferrer(t)
  // A private server: COMMITs are counted server-wide.
  const { home, admin, url } = await privateTarget(defer, 'seg varchar(36) not null, member varchar(12) not null')
  await admin.query(`set global sql_mode = 'STRICT_ALL_TABLES'`)
  const commits = async () => Number(((await admin.query(`show global status like 'Com_commit'`)) as any)[0][0].Value)
  const rows = async () => Number(((await admin.query('select count(*) as n from tgt.members')) as any)[0][0].n)
  const env = { ...process.env, TARGET_URL: url }
  // Each batch keeps the target busy for 50 ms, so the next batches are rendered and waiting
  // by the time a transaction commits.
  const id = await subscribe(home, {
    segment: 'g',
    args: { add_sql: T.add + ';\ndo sleep(0.05)', remove_sql: T.remove, batch_size: 10 },
  })
  await startTestSidecar({ databaseUrl: home.url, pollIntervalMs: 200, env }, defer)
  await until('initial sync', () => initialSyncDone(home, 'sub'))

  await home.query(`select segmenter.pause('sub')`)
  await home.query(`insert into test_segment (segment_id, id) select $1, 'm' || lpad(g::text, 4, '0') from generate_series(1, 200) g`, [id])
  const [{ n: logBefore }] = await home.query(`select coalesce(max(log_id), 0)::int as n from segmenter.log`)
  const commitsBefore = await commits()
  await home.query(`select segmenter.resume('sub')`)
  await until('200 rows', async () => (await rows()) === 200, 30_000)
  await until(
    'home cursor',
    async () => Number((await home.query(`select pending_changes from segmenter.status`))[0].pending_changes) === 0,
  )
  const grouped = (await commits()) - commitsBefore
  assert.ok(grouped >= 2 && grouped <= 5, `20 batches in ${grouped} target transactions`)
  const log = await home.query(
    `select statements, rows::int, ok from segmenter.log where kind = 'batch' and event = 'add' and log_id > $1`,
    [logBefore],
  )
  assert.equal(log.length, 20, 'every batch recorded')
  assert.ok(
    log.every((r) => r.statements === 1 && r.rows === 10 && r.ok),
    `one statement of 10 members per batch: ${JSON.stringify(log)}`,
  )
  const [delivered] = (await admin.query('select member from tgt.members where seg = ? order by member', [id])) as any
  assert.deepEqual(
    delivered.map((r: { member: string }) => r.member),
    await currentIds(home, id),
    'the target holds each member once',
  )

  // A member the target rejects, in the middle of a backlog: its group rolls back whole, its
  // batches go again one by one, the rejected member is split out and dead-lettered.
  await home.query(`select segmenter.pause('sub')`)
  await home.query(
    `insert into test_segment (segment_id, id) select $1, case when g = 57 then 'much-too-long-id' else 'n' || lpad(g::text, 4, '0') end
     from generate_series(1, 100) g`,
    [id],
  )
  await home.query(`select segmenter.resume('sub')`)
  const dead = await until('dead letter', async () => (await home.query(`select member_id, error from segmenter.dead_letters`))[0], 30_000)
  assert.equal(dead.member_id, 'much-too-long-id')
  await until('299 rows', async () => (await rows()) === 299, 30_000)
  await until(
    'home cursor',
    async () => Number((await home.query(`select pending_changes from segmenter.status`))[0].pending_changes) === 0,
  )
  const [[{ n, d }]] = (await admin.query(
    `select count(*) as n, count(distinct member) as d from tgt.members where member like 'n%'`,
  )) as any
  assert.deepEqual([Number(n), Number(d)], [99, 99], 'every other member of the backlog once')
})
