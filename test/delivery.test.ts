// Delivery end to end: the real home Postgres, the sidecar in-process, real MariaDB and Postgres
// targets. Timing assertions use generous bounds; speed is measured in bench/, not here.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { Sidecar } from '../src/sidecar.js'
import { freshMysql, freshPg, type FreshMysql, type FreshPg } from './harness/db.js'
import { sleep, until } from './harness/wait.js'
import { startTestSidecar } from './harness/sidecar.js'

const SEGMENT_DDL = `
  create table public.test_segment (
    segment_id uuid not null, id varchar null, customid varchar null, hash_email varchar null,
    actual_begin timestamp not null default now(), actual_end timestamp not null default 'infinity',
    processed timestamp not null default now(), constraint test_segment_id_key unique (id));
  create index on test_segment using btree(id);`

// The seed's example queries, with its column-name slips corrected (segment_id -> segId).
const SEED = {
  add: `INSERT INTO mysegment (segId, clientId, updated)
VALUES
{for $index, $lead = $batch}
({segment_id}, "{$lead.CustomID}", NOW()){autocomma}
{end}
ON DUPLICATE KEY UPDATE
updated = NOW();`,
  remove: `DELETE FROM mysegment
WHERE segId = {segment_id}
AND clientId IN ({batch_in "CustomID"})`,
  clear: `DELETE FROM mysegment
WHERE segId = {segment_id}`,
  upsert: `INSERT INTO segments (segment_id,name,updated)
VALUES
({segment_id}, "{segment_name}", NOW())
ON DUPLICATE KEY UPDATE
name = "{segment_name}",
updated = NOW();`,
  delete: `DELETE FROM segments
WHERE segment_id = {segment_id}
LIMIT 1`,
}

interface Env {
  home: FreshPg
  target: FreshMysql
  sidecar: Sidecar
  env: NodeJS.ProcessEnv
}
async function setup(pollIntervalMs = 200): Promise<Env> {
  const home = await freshPg()
  const target = await freshMysql()
  await home.query(SEGMENT_DDL)
  await target.query('create table mysegment (segId varchar(36), clientId varchar(255), updated datetime, unique key (segId, clientId))')
  await target.query('create table segments (name varchar(255), segment_id varchar(36), updated datetime, unique key (segment_id))')
  const env = { ...process.env, TARGET_URL: target.url }
  const sidecar = await startTestSidecar({ databaseUrl: home.url, pollIntervalMs, env })
  return { home, target, sidecar, env }
}
async function teardown(e: Env) {
  await e.sidecar.stop()
  await e.target.close()
  await e.home.close()
}

test('the seed scenario end to end into MariaDB', async (t) => {
  const e = await setup()
  t.after(() => teardown(e))
  const { home, target } = e
  const [{ id }] = await home.query(`select segmenter.create_segment('vip', 'public.test_segment') as id`)
  await home.query(`select segmenter.create_consumer('crm', 'mysql', 'mysql', 'TARGET_URL')`)
  await home.query(
    `select segmenter.create_subscription(name => 'crm_vip', consumer => 'crm', segments => array['vip'],
    add_sql => $1, remove_sql => $2, clear_sql => $3, segment_upsert_sql => $4, segment_delete_sql => $5,
    batch_size => 1000, batch_timeout => '2 s', syntax => 'altcraft')`,
    [SEED.add, SEED.remove, SEED.clear, SEED.upsert, SEED.delete],
  )
  await until('segment row', async () => (await target.query('select name, segment_id from segments'))[0])
  assert.deepEqual(await target.query('select name, segment_id from segments'), [{ name: 'vip', segment_id: id }])

  await home.query(`insert into test_segment (segment_id, id, customid) select $1, g::text, 'c' || g from generate_series(1, 10000) g`, [
    id,
  ])
  await until('10,000 members', async () => Number((await target.query('select count(*) as n from mysegment'))[0].n) === 10000)
  // The log row of a batch is written just after the target commits it: wait for the last one.
  const stats = await until('the batches logged', async () => {
    const rows = await home.query(`select event, sum(rows)::int as rows, count(*)::int as batches, max(rows)::int as biggest
      from segmenter.log where kind = 'batch' and ok and event = 'add' group by event`)
    return rows[0]?.rows === 10000 && rows
  })
  assert.deepEqual(stats, [{ event: 'add', rows: 10000, batches: 10, biggest: 1000 }])

  await home.query(`update test_segment set actual_end = now() where id::int <= 1000`)
  await until('1,000 removes', async () => Number((await target.query('select count(*) as n from mysegment'))[0].n) === 9000)
  assert.equal(Number((await target.query(`select count(*) as n from mysegment where clientId in ('c1', 'c1000')`))[0].n), 0)

  await home.query(`select segmenter.clear_segment('vip')`)
  await until('clear', async () => Number((await target.query('select count(*) as n from mysegment'))[0].n) === 0)
  // The batch's log row is written right after the target commits it.
  await until(
    'the clear logged',
    async () =>
      (await home.query(`select count(*)::int as n from segmenter.log where kind = 'batch' and event = 'clear' and ok`))[0].n === 1,
  )

  await home.query(
    `select segmenter.create_segment('vip', 'public.test_segment', kind => 'auto', refresh_sql => 'select 1 as id', refresh_cron => '0 3 * * *')`,
  )
  await home.query(`select segmenter.retire_segment('vip')`)
  await until(
    'segment deleted',
    async () =>
      (await target.query('select count(*) as n from segments'))[0].n === 0 ||
      Number((await target.query('select count(*) as n from segments'))[0].n) === 0,
  )
  const status = await home.query(`select pending_changes::int as pending, last_error from segmenter.status`)
  assert.deepEqual(status, [{ pending: 0, last_error: null }])
})

test('batch timing: a partial batch waits for its timeout, a full one goes at once as one statement', async (t) => {
  const e = await setup()
  t.after(() => teardown(e))
  const { home, target } = e
  await target.query('create table slow (segId varchar(36), clientId varchar(255), updated datetime)')
  const [{ id }] = await home.query(`select segmenter.create_segment('s', 'public.test_segment') as id`)
  await home.query(`select segmenter.create_consumer('crm', 'mysql', 'mysql', 'TARGET_URL')`)
  await home.query(
    `select segmenter.create_subscription(name => 'sub', consumer => 'crm', segments => array['s'],
    add_sql => $1, remove_sql => $2, batch_size => 100, batch_timeout => '1 s', syntax => 'altcraft')`,
    [SEED.add, SEED.remove],
  )
  // The same batch size with a timeout no test run reaches: only a full batch can go.
  await home.query(
    `select segmenter.create_subscription(name => 'slow', consumer => 'crm', segments => array['s'],
    add_sql => $1, remove_sql => $2, batch_size => 100, batch_timeout => '1 hour', syntax => 'altcraft')`,
    [SEED.add.replace('mysegment', 'slow').replace('ON DUPLICATE KEY UPDATE\nupdated = NOW();', ''), SEED.remove],
  )
  await sleep(300)
  const t0 = Date.now()
  await home.query(`insert into test_segment (segment_id, id, customid) select $1, g::text, 'c' || g from generate_series(1, 5) g`, [id])
  await sleep(600)
  assert.equal(Number((await target.query('select count(*) as n from mysegment'))[0].n), 0, 'nothing before the timeout')
  await until('5 members', async () => Number((await target.query('select count(*) as n from mysegment'))[0].n) === 5)
  const waited = Date.now() - t0
  assert.ok(waited >= 950 && waited < 10_000, `arrived after ${waited} ms`)
  assert.equal(Number((await target.query('select count(*) as n from slow'))[0].n), 0, 'a partial batch waits for its timeout')

  await home.query(`insert into test_segment (segment_id, id, customid) select $1, g::text, 'c' || g from generate_series(101, 195) g`, [
    id,
  ])
  await until(
    '100 members in the full batch',
    async () => Number((await target.query('select count(*) as n from slow'))[0].n) === 100,
    20_000,
  )
  const batches =
    await home.query(`select l.rows::int, l.statements from segmenter.log l join segmenter.subscriptions s using (subscription_id)
    where s.name = 'slow' and l.kind = 'batch' and l.event = 'add' and l.statements > 0`)
  assert.deepEqual(batches, [{ rows: 100, statements: 1 }])
})

const HOSTILE = [
  "O'Brien",
  'say "hi"',
  'back\\slash',
  'trailing\\',
  "a\\'b",
  'line1\nline2\r\n\ttab',
  '🙂 emoji ünïcødé',
  '{$lead.id} {{ it.batch }} }{',
  "'; drop table x; --",
  '"',
  "''",
  '\\\\',
]

for (const syntax of ['altcraft', 'squirrelly'] as const) {
  test(`hostile strings round-trip exactly into MariaDB and Postgres (${syntax})`, async (t) => {
    const e = await setup()
    t.after(() => teardown(e))
    const { home, target } = e
    const pgTarget = await freshPg()
    t.after(() => pgTarget.close())
    await pgTarget.query('create table audience (seg text, member text, email text)')
    await target.query(
      'create table audience (seg varchar(36), member varchar(255), email text) default charset utf8mb4 collate utf8mb4_bin',
    )
    e.env.PG_TARGET_URL = pgTarget.url
    const [{ id }] = await home.query(`select segmenter.create_segment('h', 'public.test_segment') as id`)
    await home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'TARGET_URL')`)
    await home.query(`select segmenter.create_consumer('pg', 'postgres', 'postgres', 'PG_TARGET_URL')`)
    const add =
      syntax === 'altcraft'
        ? `insert into audience (seg, member, email) values {for $i, $lead = $batch}({segment_id}, {$lead.id}, "{$lead.hash_email}"){autocomma}{end}`
        : `insert into audience (seg, member, email) values {{@rows(it.batch) => lead}}({{ it.segment_id }}, {{ lead.id }}, {{ lead.hash_email }}){{/rows}}`
    const addPg = add.replace('"{$lead.hash_email}"', "'{$lead.hash_email}'")
    const remove =
      syntax === 'altcraft'
        ? `delete from audience where member in ({batch_in "id"})`
        : `delete from audience where member in ({{ it.batch | in("id") }})`
    for (const [name, consumer, sql] of [
      ['to_maria', 'maria', add],
      ['to_pg', 'pg', addPg],
    ]) {
      await home.query(
        `select segmenter.create_subscription(name => $1, consumer => $2, segments => array['h'], add_sql => $3, remove_sql => $4, batch_size => 5, syntax => $5)`,
        [name, consumer, sql, remove, syntax],
      )
    }
    const values = HOSTILE.map((v, i) => ({ id: `${v}#${i}`, email: v }))
    for (const v of values)
      await home.query(`insert into test_segment (segment_id, id, hash_email) values ($1, $2, $3)`, [id, v.id, v.email])
    const expected = values.map((v) => ({ member: v.id, email: v.email })).sort((a, b) => (a.member < b.member ? -1 : 1))
    const sorted = (rows: Array<{ member: string; email: string }>) =>
      rows.map((r) => ({ member: r.member, email: r.email })).sort((a, b) => (a.member < b.member ? -1 : 1))
    await until('MariaDB rows', async () => (await target.query('select count(*) as n from audience'))[0].n == HOSTILE.length)
    await until('Postgres rows', async () => Number((await pgTarget.query('select count(*) as n from audience'))[0].n) === HOSTILE.length)
    assert.deepEqual(sorted(await target.query('select member, email from audience')), expected)
    assert.deepEqual(sorted(await pgTarget.query('select member, email from audience')), expected)
    // and out again: removes match the exact values
    await home.query(`update test_segment set actual_end = now()`)
    await until('MariaDB empty', async () => Number((await target.query('select count(*) as n from audience'))[0].n) === 0)
    await until('Postgres empty', async () => Number((await pgTarget.query('select count(*) as n from audience'))[0].n) === 0)
  })
}

test('a row the target rejects is dead-lettered, the rest arrive, replay delivers it after the fix', async (t) => {
  const e = await setup()
  t.after(() => teardown(e))
  const { home, target } = e
  await target.query('create table narrow (member varchar(5) not null)')
  await target.query(`set global sql_mode = 'STRICT_ALL_TABLES'`)
  const [{ id }] = await home.query(`select segmenter.create_segment('d', 'public.test_segment') as id`)
  await home.query(`select segmenter.create_consumer('crm', 'mysql', 'mysql', 'TARGET_URL')`)
  await home.query(`select segmenter.create_subscription(name => 'dl', consumer => 'crm', segments => array['d'], batch_size => 10, syntax => 'altcraft',
    add_sql => 'insert into narrow (member) values {for $i, $lead = $batch}({$lead.id}){autocomma}{end}', remove_sql => 'delete from narrow where member in ({batch_in "id"})')`)
  await home.query(
    `insert into test_segment (segment_id, id) select $1, case when g = 7 then 'much-too-long' else 'm' || g end from generate_series(1, 10) g`,
    [id],
  )
  await until('9 rows', async () => Number((await target.query('select count(*) as n from narrow'))[0].n) === 9)
  const dead = await until('dead letter', async () => (await home.query(`select member_id, event, error from segmenter.dead_letters`))[0])
  assert.equal(dead.member_id, 'much-too-long')
  assert.equal(dead.event, 'add')
  assert.match(dead.error, /too long/i)
  await until('status shows it', async () => Number((await home.query(`select dead_letters from segmenter.status`))[0].dead_letters) === 1)
  await target.query('alter table narrow modify member varchar(50) not null')
  assert.equal(Number((await home.query(`select segmenter.replay_dead_letters('dl') as n`))[0].n), 1)
  await until('replayed', async () => (await target.query(`select count(*) as n from narrow where member = 'much-too-long'`))[0].n == 1)
  assert.equal(Number((await target.query('select count(*) as n from narrow'))[0].n), 10)
})

test('NOTIFY wakes the sidecar: batch size 1 arrives well before the 10 s poll', async (t) => {
  const e = await setup(10_000)
  t.after(() => teardown(e))
  const { home, target } = e
  const [{ id }] = await home.query(`select segmenter.create_segment('fast', 'public.test_segment') as id`)
  await home.query(`select segmenter.create_consumer('crm', 'mysql', 'mysql', 'TARGET_URL')`)
  await home.query(
    `select segmenter.create_subscription(name => 'fast', consumer => 'crm', segments => array['fast'],
    add_sql => $1, remove_sql => $2, syntax => 'altcraft')`,
    [SEED.add, SEED.remove],
  )
  await until(
    'the initial sync',
    async () => Number((await home.query(`select pending_changes from segmenter.status`))[0].pending_changes) === 0,
    15_000,
  )
  const latencies: number[] = []
  for (let i = 1; i <= 5; i++) {
    const t0 = Date.now()
    await home.query(`insert into test_segment (segment_id, id, customid) values ($1, $2, $3)`, [id, `n${i}`, `c${i}`])
    await until(`member ${i}`, async () => Number((await target.query('select count(*) as n from mysegment'))[0].n) === i, 9_000)
    latencies.push(Date.now() - t0)
  }
  assert.ok(Math.max(...latencies) < 2_000, `commit to visible: ${latencies.join(', ')} ms`)
})
