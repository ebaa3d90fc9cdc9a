// Installs under any schema name (src/schema.ts): `segmenter --schema NAME migrate` gives a second,
// independent install in the same database, with its own queues, NOTIFY channel and lock classes.
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { test } from 'node:test'
import * as api from '../src/api.js'
import { inSchema } from '../src/schema.js'
import { freshMysql, freshPg } from './harness/db.js'
import { cli } from './harness/spawn.js'
import { deferrer, sleep, until } from './harness/wait.js'

/** A sidecar process (`segmenter [--schema NAME] run`); stopped with SIGTERM. */
function sidecar(args: string[], env: NodeJS.ProcessEnv): { child: ChildProcess; stop(): Promise<void> } {
  const child = spawn(process.execPath, ['bin/segmenter.js', ...args, 'run'], {
    env: { ...process.env, SEGMENTER_HTTP_PORT: '0', SEGMENTER_LOG_LEVEL: 'warn', SEGMENTER_POLL_INTERVAL_MS: '200', ...env },
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  const exited = new Promise<void>((r) => child.on('exit', () => r()))
  return {
    child,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
      await exited
    },
  }
}

test('the schema rename covers every name an install shares with the database, and nothing else', () => {
  const sql = `create schema segmenter; select segmenter.f('segmenter.' || x), pg_notify('segmenter', 'changes');
    insert into pgboss.job (name) values ('segmenter_deliver'), ('segmenter_refresh');
    create table t (segmenter_checkpoint int); -- Segmenter, segmenter_log, xsegmenter.f, $segmenter`
  assert.equal(
    inSchema(sql, 'seg_b'),
    `create schema seg_b; select seg_b.f('seg_b.' || x), pg_notify('seg_b', 'changes');
    insert into pgboss.job (name) values ('seg_b_deliver'), ('seg_b_refresh');
    create table t (segmenter_checkpoint int); -- Segmenter, segmenter_log, xsegmenter.f, $segmenter`,
  )
  assert.equal(inSchema(sql, 'segmenter'), sql, 'the default install runs the files as they are')
})

test('two installs in one database: each delivers its own segments, neither sees the other', async (t) => {
  const defer = deferrer(t)
  const home = await freshPg() // the default install comes with the test database
  const targetA = await freshMysql()
  const targetB = await freshMysql()
  defer(() => home.close())
  defer(() => targetA.close())
  defer(() => targetB.close())
  const env = { DATABASE_URL: home.url, TARGET_A: targetA.url, TARGET_B: targetB.url }

  const bad = await cli(['--schema', 'Seg-B', 'migrate'], env)
  assert.equal(bad.code, 2, bad.stderr)
  assert.match(bad.stderr, /"Seg-B" is not a valid schema name.*lower-case identifier/s)
  const missing = await cli(['status'], { ...env, SEGMENTER_SCHEMA: 'seg_b' })
  assert.notEqual(missing.code, 0)
  assert.match(missing.stderr, /no Segmenter install in schema seg_b.*--schema seg_b migrate/s)

  const migrated = await cli(['--schema', 'seg_b', 'migrate', '--json'], env)
  assert.equal(migrated.code, 0, migrated.stderr)
  const applied: string[] = JSON.parse(migrated.stdout).applied
  assert.deepEqual(
    applied,
    (await home.query<{ name: string }>('select name from segmenter.migrations order by id')).map((r) => r.name),
    'the same migrations as the default install',
  )
  assert.deepEqual(JSON.parse((await cli(['--schema', 'seg_b', 'migrate', '--json'], env)).stdout).applied, [], 'and only once')

  // Nothing of seg_b refers to the default install: functions, views, column defaults.
  const [refs] = await home.query<{ functions: number; views: number; defaults: number }>(
    `select (select count(*) from pg_proc where pronamespace = 'seg_b'::regnamespace and prosrc ~ '\\msegmenter\\M') ::int as functions,
            (select count(*) from pg_views where schemaname = 'seg_b' and definition ~ '\\msegmenter\\.')::int as views,
            (select count(*) from pg_attrdef d join pg_class c on c.oid = d.adrelid
              where c.relnamespace = 'seg_b'::regnamespace and pg_get_expr(d.adbin, d.adrelid) ~ '\\msegmenter\\.')::int as defaults`,
  )
  assert.deepEqual(refs, { functions: 0, views: 0, defaults: 0 })
  const queues = (await home.query<{ name: string }>(`select name from pgboss.queue order by name`)).map((r) => r.name)
  assert.deepEqual(queues, ['seg_b_deliver', 'seg_b_refresh', 'segmenter_deliver', 'segmenter_refresh'])
  const [classes] = await home.query<{ a: number; b: number }>(
    `select segmenter._lock_class('deliver') as a, seg_b._lock_class('deliver') as b`,
  )
  assert.notEqual(classes!.a, classes!.b)

  // The same names in both installs: subscription 1 of each, both called `sub`.
  for (const [schema, table] of [
    ['segmenter', 'members_a'],
    ['seg_b', 'members_b'],
  ] as const) {
    const q = (sql: string) => home.query(inSchema(sql, schema))
    await home.query(`create table ${table} (segment_id uuid not null, id text, actual_begin timestamptz not null default now(),
      actual_end timestamptz not null default 'infinity', processed timestamptz not null default now())`)
    await q(`select segmenter.create_segment('members', '${table}')`)
    await q(`select segmenter.create_consumer('maria', 'mysql', 'mysql', '${schema === 'segmenter' ? 'TARGET_A' : 'TARGET_B'}')`)
    await q(`select segmenter.create_subscription(name => 'sub', consumer => 'maria', segments => array['members'], batch_size => 100, syntax => 'altcraft',
      add_sql => 'insert into members values {for $i, $m = $batch}({$m.id}){autocomma}{end}',
      remove_sql => 'delete from members where member in ({batch_in "id"})')`)
  }
  const ids = await home.query<{ a: string; b: string }>(
    `select (select subscription_id from segmenter.subscriptions) as a, (select subscription_id from seg_b.subscriptions) as b`,
  )
  assert.deepEqual(ids, [{ a: '1', b: '1' }])
  await targetA.query('create table members (member varchar(40) not null)')
  await targetB.query('create table members (member varchar(40) not null)')

  const add = (schema: string, prefix: string, from: number, to: number) =>
    home.query(
      inSchema(`select segmenter.add_members('members', array(select '${prefix}' || g from generate_series(${from}, ${to}) g))`, schema),
    )
  const targetRows = async (target: typeof targetA) =>
    (await target.query<{ member: string }>('select member from members order by member')).map((r) => r.member)
  const segmentRows = async (table: string) =>
    (await home.query<{ id: string }>(`select id from ${table} where actual_end = 'infinity' order by id`)).map((r) => r.id)

  const a = sidecar([], env)
  let b = sidecar(['--schema', 'seg_b'], env)
  defer(() => a.stop())
  defer(() => b.stop())
  await add('segmenter', 'a', 1, 300)
  await add('seg_b', 'b', 1, 200)
  await until('both targets filled', async () => (await targetRows(targetA)).length === 300 && (await targetRows(targetB)).length === 200)
  assert.ok((await targetRows(targetA)).every((m) => m.startsWith('a')))
  assert.ok((await targetRows(targetB)).every((m) => m.startsWith('b')))

  // Lock classes: holding the default install's delivery lock of subscription 1 stops that one, not seg_b's.
  const locker = await home.pool.connect()
  defer(() => locker.release())
  await locker.query(`select pg_advisory_lock(segmenter._lock_class('deliver'), 1)`)
  await add('segmenter', 'a', 301, 310)
  await add('seg_b', 'b', 201, 250)
  await until('seg_b delivered while the default install is locked', async () => (await targetRows(targetB)).length === 250)
  assert.equal((await targetRows(targetA)).length, 300, 'the locked subscription waits')
  await locker.query(`select pg_advisory_unlock(segmenter._lock_class('deliver'), 1)`)
  await until('the default install delivered once unlocked', async () => (await targetRows(targetA)).length === 310)

  // seg_b's sidecar stopped: its changes wait for it, and the default install's sidecar (polling
  // every 200 ms, woken by every NOTIFY of its own channel) never delivers them.
  await b.stop()
  await add('seg_b', 'b', 251, 290)
  await add('segmenter', 'a', 311, 320)
  await until('the default install still delivers', async () => (await targetRows(targetA)).length === 320)
  await sleep(1500)
  assert.equal((await targetRows(targetB)).length, 250)
  const [pendingB] = await home.query<{ pending: string }>(`select pending_changes as pending from seg_b.status`)
  assert.equal(pendingB!.pending, '40')
  assert.deepEqual(
    (await home.query<{ subscription: string; state: string }>(`select subscription, state from segmenter.status`)).map(
      (r) => r.subscription,
    ),
    ['sub'],
    'each status view lists its own install only',
  )
  const notifyOwn = await api.status(home.pool) // the TS twins work on the process's install (default here)
  assert.equal(notifyOwn.length, 1)

  b = sidecar(['--schema', 'seg_b'], env)
  await until('seg_b caught up after its restart', async () => (await targetRows(targetB)).length === 290)
  assert.deepEqual(await targetRows(targetA), await segmentRows('members_a'))
  assert.deepEqual(await targetRows(targetB), await segmentRows('members_b'))
  const statusB = await cli(['--schema', 'seg_b', 'status', '--json'], env)
  assert.equal(statusB.code, 0, statusB.stderr)
  assert.deepEqual(
    JSON.parse(statusB.stdout).map((r: { subscription: string; pending_changes: string }) => [r.subscription, Number(r.pending_changes)]),
    [['sub', 0]],
  )
})
