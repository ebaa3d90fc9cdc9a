// The member rows a delivery window reads (src/read.ts), against the same rows read the usual way.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import Cursor from 'pg-cursor'
import { batchOf, eventCount, type PendingEvent } from '../src/batch.js'
import { createPool, endPool } from '../src/db.js'
import { loadMemberRows, loadSegments, loadSubscription, readPending } from '../src/read.js'
import { freshPg } from './harness/db.js'

test('member rows read a column at a time are the values pg parses from whole rows, for every kind of column', async (t) => {
  const home = await freshPg()
  const pool = createPool(home.url)
  t.after(async () => {
    await endPool(pool)
    await home.close()
  })
  await home.query(`create domain positive as int4 check (value > 0); create domain small as positive check (value < 10);
    create type mood as enum ('ok', 'sad')`)
  await home.query(`create table public.kinds (segment_id uuid not null, id text not null, dm positive, dd small, en mood,
      t text, v varchar(10), c char(5), u uuid, nm name, i2 int2, i4 int4, i8 int8, n numeric, f8 float8, f4 float4,
      b bool, ts timestamp, tstz timestamptz, d date, ip inet, j json, jb jsonb, ta text[], ia int4[], by bytea, iv interval,
      actual_begin timestamptz not null default now(), actual_end timestamptz not null default 'infinity',
      processed timestamptz not null default now());
    create index on kinds (segment_id, id)`)
  const [{ id: seg }] = await home.query(`select segmenter.create_segment('kinds', 'public.kinds') as id`)
  await home.query(
    `insert into kinds (segment_id, id, dm, dd, en, t, v, c, u, nm, i2, i4, i8, n, f8, f4, b, ts, tstz, d, ip, j, jb, ta, ia, by, iv)
     values ($1, 'full', 7, 3, 'sad', $2, 'v ', 'ab', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'nm', -3, 2147483647, 9007199254740993,
             12345678901234567890.123456789, 'NaN', 1.5, false, '2026-01-02 03:04:05.123456', '2026-01-02 03:04:05.123456+02',
             '2026-01-02', '10.0.0.1', '{"a": [1, "x"], "s": "\\u00e9"}', '{"b": null}', array['x', null, 'y "z"'],
             array[1, 2], '\\x00ff', '1 day 02:03:04'),
            ($1, 'nulls', null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null,
             null, null, null, null, null, null)`,
    [seg, `it's "q" \\ \\\n\r\t 😀 {x} {{it.y}} ${'\u00e9'}`],
  )
  // A member that left: its latest closed row comes from the fallback probe.
  await home.query(
    `insert into kinds (segment_id, id, t, actual_end) values ($1, 'gone', 'old', now() - interval '1 day'),
    ($1, 'gone', 'latest', now())`,
    [seg],
  )
  const segments = await loadSegments(pool, [seg])
  const ids = ['full', 'nulls', 'gone', 'absent']
  const events = ids.map((memberId, i): PendingEvent => ({
    pos: 1n,
    ord: i + 1,
    ageMs: 0,
    segmentId: seg,
    event: 'add',
    memberId,
    row: null,
  }))
  const batch = batchOf('add', seg, events, { pos: 1n, ord: events.length })
  const expected = async (id: string) =>
    (await pool.query(`select * from kinds where id = $1 order by actual_end desc limit 1`, [id])).rows[0]

  const all = (await loadMemberRows(pool, segments, [batch])).get(seg)!
  for (const id of ['full', 'nulls', 'gone']) assert.deepEqual(all.get(id), await expected(id), id)
  assert.equal(all.get('gone')!.t, 'latest')
  assert.equal(all.has('absent'), false, 'a member without any row has none')

  // Only the columns the templates name (and id), in any order.
  const some = (await loadMemberRows(pool, segments, [batch], () => ['n', 'id', 'c', 'ip'])).get(seg)!
  const full = await expected('full')
  assert.deepEqual(some.get('full'), { n: full.n, id: 'full', c: full.c, ip: full.ip })
  assert.deepEqual(Object.keys(some.get('nulls')!), ['n', 'id', 'c', 'ip'])
})

test('a window reads the changes it needs, not the backlog: a small change before 10,000-member chunks does not pull them all', async (t) => {
  const home = await freshPg()
  const pool = createPool(home.url)
  t.after(async () => {
    await endPool(pool)
    await home.close()
  })
  await home.query(`create table public.seg (segment_id uuid not null, id text, actual_begin timestamptz not null default now(),
    actual_end timestamptz not null default 'infinity', processed timestamptz not null default now())`)
  const [{ id: seg }] = await home.query(`select segmenter.create_segment('seg', 'public.seg') as id`)
  await home.query(`insert into seg (segment_id, id) select $1, 'm' || g from generate_series(1, 300000) g`, [seg])
  await home.query(`select segmenter.create_consumer('c', 'postgres', 'postgres', 'NOWHERE')`)
  // A new subscription's first sync: segment_upsert (1 member), then 30 chunks of 10,000 adds.
  await home.query(`select segmenter.create_subscription(name => 's', consumer => 'c', segments => array['seg'],
    add_sql => 'select 1', remove_sql => 'select 2')`)
  await home.query('select segmenter.sequence_changes()')
  const [{ subscription_id: id }] = await home.query(`select subscription_id from segmenter.subscriptions`)
  const sub = (await loadSubscription(pool, id))!
  const client = await pool.connect()
  t.after(() => client.release())
  // Count the change rows the cursor brings over.
  let fetched = 0
  const query = client.query.bind(client) as (...args: unknown[]) => unknown
  ;(client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
    // The first change comes by a plain query, the rest through a cursor.
    if (!(args[0] instanceof Cursor))
      return (query(...args) as Promise<{ rows: unknown[] }>).then((r) => {
        fetched += r.rows.length
        return r
      })
    const cursor = query(...args) as { read(n: number): Promise<unknown[]> }
    const read = cursor.read.bind(cursor)
    cursor.read = async (n: number) => {
      const rows = await read(n)
      fetched += rows.length
      return rows
    }
    return cursor
  }
  const spans = await readPending(client, sub, { pos: 0n, ord: 0 }, 10_000)
  assert.equal(eventCount(spans), 10_000)
  assert.equal(spans[0]!.change.event, 'segment_upsert')
  assert.ok(fetched <= 3, `${fetched} changes fetched for a window of 10,000 (the backlog has 31)`)
})
