// A Postgres target: the seed scenario including clear, the checkpoint row it keeps, and sinks
// opened at the same moment on one target. Real servers, the sidecar in-process.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { openPostgresSink } from '../src/sinks/postgres.js'
import { freshPg } from './harness/db.js'
import { SEGMENT_DDL } from './harness/fixtures.js'
import { startTestSidecar } from './harness/sidecar.js'
import { deferrer, until } from './harness/wait.js'

test('Postgres as a target: the seed scenario including clear, and the checkpoint row in the target', async (t) => {
  const defer = deferrer(t)
  const home = await freshPg()
  defer(() => home.close())
  const target = await freshPg()
  defer(() => target.close())
  await home.query(SEGMENT_DDL)
  await target.query(`create table mysegment (segId text not null, clientId text not null, updated timestamptz, unique (segId, clientId));
    create table segments (segment_id text primary key, name text, updated timestamptz)`)
  const [{ id }] = await home.query(`select segmenter.create_segment('vip', 'public.test_segment') as id`)
  await home.query(`select segmenter.create_consumer('pgt', 'postgres', 'postgres', 'PG_TARGET_URL')`)
  await home.query(
    `select segmenter.create_subscription(name => 'pg_vip', consumer => 'pgt', segments => array['vip'], syntax => 'altcraft',
    batch_size => 1000, batch_timeout => '1 s',
    add_sql => $1, remove_sql => $2, clear_sql => $3, segment_upsert_sql => $4, segment_delete_sql => $5)`,
    [
      `INSERT INTO mysegment (segId, clientId, updated)
VALUES
{for $index, $lead = $batch}
({segment_id}, '{$lead.CustomID}', NOW()){autocomma}
{end}
ON CONFLICT (segId, clientId) DO UPDATE SET updated = NOW();`,
      `DELETE FROM mysegment WHERE segId = {segment_id} AND clientId IN ({batch_in "CustomID"})`,
      `DELETE FROM mysegment WHERE segId = {segment_id}`,
      `INSERT INTO segments (segment_id, name, updated) VALUES ({segment_id}, '{segment_name}', NOW())
ON CONFLICT (segment_id) DO UPDATE SET name = excluded.name, updated = NOW();`,
      `DELETE FROM segments WHERE segment_id = {segment_id}`,
    ],
  )
  await startTestSidecar({ databaseUrl: home.url, pollIntervalMs: 200, env: { ...process.env, PG_TARGET_URL: target.url } }, defer)
  const n = async () => Number((await target.query('select count(*) as n from mysegment'))[0].n)

  await until('segment row', async () => (await target.query('select segment_id, name from segments'))[0])
  assert.deepEqual(await target.query('select segment_id, name from segments'), [{ segment_id: id, name: 'vip' }])
  await home.query(`insert into test_segment (segment_id, id, customid) select $1, g::text, 'c' || g from generate_series(1, 5000) g`, [id])
  await until('5,000 members', async () => (await n()) === 5000)
  await home.query(`update test_segment set actual_end = now() where id::int <= 1000`)
  await until('1,000 removes', async () => (await n()) === 4000)
  assert.equal(Number((await target.query(`select count(*) as n from mysegment where clientId in ('c1', 'c1000')`))[0].n), 0)
  const want = (await home.query(`select 'c' || id as c from test_segment where actual_end = 'infinity' order by 1`)).map((r) => r.c)
  const got = (await target.query(`select clientid as c from mysegment where segid = $1 order by 1`, [id])).map((r) => r.c)
  assert.deepEqual(got, want)

  await home.query(`select segmenter.clear_segment('vip')`)
  await until('clear', async () => (await n()) === 0)
  await home.query(`select segmenter.retire_segment('vip')`)
  await until('segment deleted', async () => Number((await target.query('select count(*) as n from segments'))[0].n) === 0)
  const [clears] = await home.query(`select count(*)::int as n from segmenter.log where kind = 'batch' and event = 'clear' and ok`)
  assert.equal(clears.n, 1)

  // The target's checkpoint row: this subscription's sync_key at the last relevant position (the segment_delete).
  const [sub] = await home.query(`select sync_key::text, cursor_pos::text, cursor_ord from segmenter.subscriptions where name = 'pg_vip'`)
  const [last] = await home.query(
    `select max(pos)::text as pos from segmenter.changes
    where segment_id = $1 and (subscription_id is null or subscription_id = (select subscription_id from segmenter.subscriptions where name = 'pg_vip'))`,
    [id],
  )
  const [lastEvent] = await home.query(`select event from segmenter.changes where pos = $1`, [last.pos])
  assert.equal(lastEvent.event, 'segment_delete')
  const checkpoints = await target.query('select sync_key, pos::text, ord from segmenter_checkpoint')
  assert.deepEqual(checkpoints, [{ sync_key: sub.sync_key, pos: last.pos, ord: 1 }])
  await until(
    'home cursor',
    async () => {
      const [s] = await home.query(`select cursor_pos::text as pos, cursor_ord as ord from segmenter.subscriptions where name = 'pg_vip'`)
      return s.pos === last.pos && s.ord === 1
    },
    5000,
  )
})

test('sinks opened at the same moment on one Postgres target both work (checkpoint table creation race)', async (t) => {
  for (let round = 0; round < 5; round++) {
    const db = await freshPg()
    const sinks = await Promise.all(Array.from({ length: 4 }, () => openPostgresSink(db.url, 'postgres', 'test-home')))
    await Promise.all(sinks.map((s, i) => s.apply([], `key-${i}`, { pos: 7n, ord: i })))
    assert.equal(Number((await db.query('select count(*) as n from segmenter_checkpoint'))[0].n), 4)
    for (const s of sinks) await s.close()
    await db.close()
  }
})
