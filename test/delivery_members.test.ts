// What templates get of a member: its latest row (the current one, else the last closed one), no
// row at all when they print only ids, and an integer id as a number. Real servers, the sidecar
// in-process.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import pg from 'pg'
import { count, setup, subscribe, T, targetIds } from './harness/fixtures.js'
import { deferrer, homeCaughtUp, until } from './harness/wait.js'

test("templates get each member's latest row: the current one, else the last closed one", async (t) => {
  const defer = deferrer(t)
  const { home, target, start } = await setup(defer)
  // A history table: one row per stint, no unique key on id.
  await home.query(`create table public.stints (segment_id uuid not null, id text not null, tag text,
    actual_begin timestamptz not null default now(), actual_end timestamptz not null default 'infinity',
    processed timestamptz not null default now());
    create index on stints (segment_id, id)`)
  await target.query('create table got (member varchar(64), tag varchar(64), ev varchar(10))')
  const [{ id }] = await home.query(`select segmenter.create_segment('stints', 'public.stints') as id`)
  // Closed stints first (they are no events), then the current ones, in an order that puts the
  // current row neither first nor last on disk.
  const closed = (rows: string) =>
    home.query(`insert into stints (segment_id, id, tag, actual_begin, actual_end) select $1::uuid, r.* from (values ${rows}) r`, [id])
  await closed(`('a', 'a-2019', '2019-01-01'::timestamptz, '2019-12-31'::timestamptz), ('b', 'b-2021', '2021-01-01', '2021-12-31'),
    ('b', 'b-2020', '2020-01-01', '2020-12-31')`)
  await home.query(`insert into stints (segment_id, id, tag) values ($1, 'a', 'a-now'), ($1, 'b', 'b-now'), ($1, 'c', 'c-now')`, [id])
  await closed(`('a', 'a-2018', '2018-01-01'::timestamptz, '2018-12-31'::timestamptz)`)
  await home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'TARGET_URL')`)
  const write = (ev: string) => `insert into got (member, tag, ev) values {for $i, $m = $batch}({$m.id}, {$m.tag}, '${ev}'){autocomma}{end}`
  await home.query(
    `select segmenter.create_subscription(name => 'stints', consumer => 'maria', segments => array['stints'], syntax => 'altcraft',
       add_sql => $1, remove_sql => $2, batch_size => 10, batch_timeout => '100 ms')`,
    [write('add'), write('remove')],
  )
  await start()
  const got = () => target.query('select member, tag, ev from got order by ev, member')
  await until('initial sync', async () => (await got()).length === 3)
  // b leaves: its latest row is now the stint just closed, not an older one.
  await home.query(`update stints set actual_end = now() where id = 'b' and actual_end = 'infinity'`)
  await until('remove delivered', async () => (await got()).length === 4)
  assert.deepEqual(await got(), [
    { member: 'a', tag: 'a-now', ev: 'add' },
    { member: 'b', tag: 'b-now', ev: 'add' },
    { member: 'c', tag: 'c-now', ev: 'add' },
    { member: 'b', tag: 'b-now', ev: 'remove' },
  ])
})

test('templates that print only ids deliver without reading a member row: the segment table may be locked', async (t) => {
  const defer = deferrer(t)
  const { home, target, start } = await setup(defer)
  const id = await subscribe(home, {
    segment: 'ids',
    name: 'ids',
    args: { add_sql: T.add, remove_sql: T.remove, batch_size: 100, batch_timeout: '100 ms' },
  })
  await start()
  await homeCaughtUp(home.query)
  await home.query(`select segmenter.pause('ids')`)
  await home.query(`insert into test_segment (segment_id, id) select $1, 'm' || g from generate_series(1, 250) g`, [id])
  // Another session holds the segment table: reading a member's row would wait until it lets go.
  const locker = new pg.Client({ connectionString: home.url })
  await locker.connect()
  defer(() => locker.end())
  await locker.query('begin; lock table test_segment in access exclusive mode')
  await home.query(`select segmenter.resume('ids')`)
  await until('250 members while the segment table is locked', async () => (await count(target)) === 250, 15_000)
  await locker.query('rollback')
  assert.deepEqual((await targetIds(target, id)).slice(0, 3), ['m1', 'm10', 'm100'])
})

test('an integer id still reaches templates as a number', async (t) => {
  const defer = deferrer(t)
  const { home, target, start } = await setup(defer)
  await home.query(`create table public.nums (segment_id uuid not null, id integer not null,
    actual_begin timestamptz not null default now(), actual_end timestamptz not null default 'infinity',
    processed timestamptz not null default now()); create index on nums (segment_id, id)`)
  await target.query('create table kinds (member varchar(20), kind varchar(20))')
  // MariaDB's JSON says which literal the template got: 5 is an INTEGER, '5' a STRING.
  const id = await subscribe(home, {
    segment: 'nums',
    table: 'public.nums',
    name: 'nums',
    args: {
      add_sql: `insert into kinds (member, kind) values {for $i, $m = $batch}({$m.id}, json_type(json_extract(json_array({$m.id}), '$[0]'))){autocomma}{end}`,
      remove_sql: 'delete from kinds where member in ({batch_in "id"})',
      batch_size: 100,
      batch_timeout: '100 ms',
    },
  })
  await start()
  await home.query(`insert into nums (segment_id, id) select $1, g from generate_series(1, 5) g`, [id])
  await until('5 members', async () => Number((await target.query('select count(*) as n from kinds'))[0].n) === 5)
  assert.deepEqual(await target.query('select kind, count(*) as n from kinds group by kind'), [{ kind: 'INTEGER', n: '5' }])
})
