// The delivery promises under faults (issue: fencing, no silent divergence): a zombie transaction of
// a killed sidecar, a sidecar whose advisory-lock session a DBA terminated, a home restored from a
// backup, clears without a clear template, a repointed consumer, retired and re-created segments,
// a read-only target, id columns of every common type, a missing DSN variable, a broken template.
// Each target table has no unique key: a member delivered twice shows as two rows.
import assert from 'node:assert/strict'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { dirname, resolve } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import mysql from 'mysql2/promise'
import pg from 'pg'
import { pino } from 'pino'
import { createPool } from '../src/db.js'
import { startSidecar } from '../src/sidecar.js'
import { findBin } from './harness/servers.js'
import { freshMariadbServer, freshMysql, freshPg, freshPgPlain, type FreshMysql, type FreshPg } from './harness/db.js'
import { deferrer, homeCaughtUp, sleep, until } from './harness/wait.js'
import { startTestSidecar } from './harness/sidecar.js'

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const run = promisify(execFile)

const DDL = `create table seg (segment_id uuid not null, id text, v text, actual_begin timestamptz not null default now(),
  actual_end timestamptz not null default 'infinity', processed timestamptz not null default now());
  create index on seg (segment_id, id);`
const ADD = 'insert into members (member) values {for $i, $lead = $batch}({$lead.id}){autocomma}{end}'
const REMOVE = 'delete from members where member in ({batch_in "id"})'

interface World {
  home: FreshPg
  /** MariaDB unless the world was made with `target: 'postgres'` (the tests below that say so). */
  target: FreshMysql
  env: NodeJS.ProcessEnv
  segmentId: string
  /** The target's members, sorted, and how many rows (duplicates count). */
  targetMembers(): Promise<string[]>
  /** The segment's current members, sorted. */
  segmentMembers(): Promise<string[]>
}

async function world(
  defer: ReturnType<typeof deferrer>,
  opts: {
    addSql?: string
    clearSql?: string | null
    batchSize?: number
    lanes?: number
    targetDdl?: string[]
    target?: 'mysql' | 'postgres'
  } = {},
): Promise<World> {
  const home = await freshPg()
  defer(() => home.close())
  const kind = opts.target ?? 'mysql'
  const target = (kind === 'mysql' ? await freshMysql() : await freshPgPlain()) as FreshMysql
  defer(() => target.close())
  for (const ddl of opts.targetDdl ?? ['create table members (member varchar(64) not null)']) await target.query(ddl)
  await home.query(DDL)
  const [{ id }] = await home.query(`select segmenter.create_segment('seg', 'seg') as id`)
  await home.query(`select segmenter.create_consumer('maria', $1, $1, 'TARGET_URL', $2::jsonb)`, [
    kind,
    JSON.stringify({ lanes: opts.lanes ?? 1 }),
  ])
  await home.query(
    `select segmenter.create_subscription(name => 'sub', consumer => 'maria', segments => array['seg'], add_sql => $1, remove_sql => $2,
       clear_sql => $3, batch_size => $4, syntax => 'altcraft')`,
    [opts.addSql ?? ADD, REMOVE, opts.clearSql === undefined ? null : opts.clearSql, opts.batchSize ?? 100],
  )
  return {
    home,
    target,
    env: { ...process.env, TARGET_URL: target.url },
    segmentId: id,
    targetMembers: async () => (await target.query('select member from members order by member')).map((r: { member: string }) => r.member),
    segmentMembers: async () => (await home.query(`select id from seg where actual_end = 'infinity' order by id`)).map((r) => r.id),
  }
}

// pg_locks is the whole server's: only this test's database (tests run two at a time).
const IN_THIS_DATABASE = 'and database = (select oid from pg_database where datname = current_database())'

/** The subscription's status row, once the sidecar holds it in an error state. */
const heldStatus = (home: FreshPg, subscription = 'sub') =>
  until(`${subscription} held`, async () =>
    (await home.query(`select * from segmenter.status where subscription = $1 and state = 'error'`, [subscription])).at(0),
  )

/** A sidecar in the test process on the world's home, polling every 50 ms. */
const sidecarOn = (w: World, defer: ReturnType<typeof deferrer>) =>
  startTestSidecar({ databaseUrl: w.home.url, pollIntervalMs: 50, env: w.env }, defer)

/** `segmenter run` as a child process (never through npx: a SIGKILLed npx leaves npm's lock behind). */
function spawnSidecar(w: World, extraEnv: NodeJS.ProcessEnv = {}): ChildProcess {
  return spawn(process.execPath, ['bin/segmenter.js', 'run'], {
    cwd: repo,
    env: {
      ...w.env,
      DATABASE_URL: w.home.url,
      SEGMENTER_LOG_LEVEL: 'warn',
      SEGMENTER_POLL_INTERVAL_MS: '100',
      SEGMENTER_HTTP_PORT: '0',
      ...extraEnv,
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  })
}

const killed = (child: ChildProcess) => new Promise((r) => child.once('exit', r))

/** The target equals the segment, row for row (no duplicates, nothing missing). */
async function converged(w: World, timeoutMs = 60_000): Promise<void> {
  await until(
    'the target equals the segment',
    async () => JSON.stringify(await w.targetMembers()) === JSON.stringify(await w.segmentMembers()),
    timeoutMs,
  ).catch(async (err) => {
    const [t, s] = [await w.targetMembers(), await w.segmentMembers()]
    throw new Error(`${(err as Error).message}: target ${t.length} rows (${new Set(t).size} distinct), segment ${s.length}`)
  })
}

for (const lanes of [1, 2]) {
  test(`a zombie transaction of a SIGKILLed sidecar, still waiting on a target row lock, commits nothing twice (lanes ${lanes})`, async (t) => {
    const defer = deferrer(t)
    // Every batch also bumps a counter row: the test holds that row's lock, so the batch's script
    // waits in the target while its sidecar is killed, and runs on once the lock is released.
    const w = await world(defer, {
      addSql: `${ADD}; update gate set n = n + 1 where id = 1`,
      targetDdl: ['create table members (member varchar(64) not null)', 'create table gate (id int primary key, n int not null)'],
      lanes,
    })
    await w.target.query('insert into gate values (1, 0)')
    const blocker = await mysql.createConnection({ uri: w.target.url })
    defer(() => blocker.end().catch(() => {}))
    await blocker.query('start transaction')
    await blocker.query('select * from gate where id = 1 for update')
    await w.home.query(`insert into seg (segment_id, id) select $1, 'm' || g from generate_series(1, 1300) g`, [w.segmentId])
    const first = spawnSidecar(w)
    defer(() => first.kill('SIGKILL'))
    await until(
      'a batch waiting on the gate row',
      async () =>
        Number((await w.target.query(`select count(*) as n from information_schema.innodb_lock_waits`))[0].n) > 0 ||
        Number(
          (
            await w.target.query(
              `select count(*) as n from information_schema.processlist where lower(state) like '%updat%' and lower(info) like '%gate%'`,
            )
          )[0].n,
        ) > 0,
      30_000,
    ).catch(async (err) => {
      throw new Error(`${err.message}: ${JSON.stringify(await w.target.query('select state, info from information_schema.processlist'))}`)
    })
    first.kill('SIGKILL')
    await killed(first)
    // The standby starts while the zombie still waits, reads the checkpoint and sends the same batch.
    const second = spawnSidecar(w)
    defer(() => second.kill('SIGKILL'))
    await sleep(1500)
    await blocker.query('commit') // the zombie runs on: statements, checkpoint, COMMIT
    await converged(w)
    await sleep(500)
    assert.equal((await w.targetMembers()).length, 1300)
    second.kill('SIGTERM')
    await killed(second)
  })
}

for (const [lanes, target] of [
  [1, 'mysql'],
  [2, 'mysql'],
  [1, 'postgres'],
  [2, 'postgres'],
] as const) {
  test(`two sidecars, the lock holder's home session terminated again and again: nothing twice (lanes ${lanes}, ${target} target)`, async (t) => {
    const defer = deferrer(t)
    // Every batch waits 5 ms in the target: the delivery lasts longer than a few terminations on any
    // machine (without it, a fast machine delivered the 60,000 members between two of them).
    const pause = target === 'mysql' ? 'do sleep(0.005)' : 'select pg_sleep(0.005)'
    const w = await world(defer, { addSql: `${ADD}; ${pause}`, batchSize: 200, lanes, target })
    const sidecars = await Promise.all(
      [0, 1].map(() =>
        startTestSidecar({ databaseUrl: w.home.url, pollIntervalMs: 50, env: w.env, retryBaseMs: 50, retryMaxMs: 200 }, defer),
      ),
    )
    await w.home.query(`insert into seg (segment_id, id) select $1, 'm' || g from generate_series(1, 60000) g`, [w.segmentId])
    // A DBA ends whichever session holds the subscription's advisory lock.
    let terminations = 0
    const admin = new pg.Client({ connectionString: w.home.url })
    await admin.connect()
    defer(() => admin.end())
    while ((await w.targetMembers()).length < 60000 && terminations < 40) {
      const { rowCount } = await admin.query(
        `select pg_terminate_backend(pid) from pg_locks
         where locktype = 'advisory' and classid = segmenter._lock_class('deliver')::oid and granted ${IN_THIS_DATABASE}`,
      )
      terminations += rowCount ?? 0
      await sleep(150)
    }
    await converged(w, 120_000)
    assert.ok(terminations >= 3, `the lock holder was terminated ${terminations} times mid-delivery`)
    for (const s of sidecars) await s.stop()
  })
}

test('a standby sidecar takes over after kill -9 of the active one while the target is slow, three times: exact', async (t) => {
  const defer = deferrer(t)
  // Every batch sleeps in the target: a killed sidecar leaves a transaction running there. 400
  // batches: a transaction takes up to 100 of them on one lane, so the three kills, each after
  // another 2,000 members, land before the last one commits.
  const w = await world(defer, { addSql: `${ADD}; do sleep(0.03)`, batchSize: 250 })
  await w.home.query(`insert into seg (segment_id, id) select $1, 'm' || g from generate_series(1, 100000) g`, [w.segmentId])
  const children = new Map<string, ChildProcess>()
  const start = (name: string) => {
    // The name shows in pg_stat_activity: it says which sidecar holds the subscription's lock.
    const child = spawnSidecar(w, { DATABASE_URL: `${w.home.url}?application_name=${name}` })
    children.set(name, child)
    defer(() => child.kill('SIGKILL'))
  }
  start('s0')
  start('s1')
  const holder = async () =>
    (
      await w.home.query(`select a.application_name as name from pg_locks l join pg_stat_activity a using (pid)
                          where l.locktype = 'advisory' and l.classid = segmenter._lock_class('deliver')::oid and l.granted ${IN_THIS_DATABASE}`)
    ).at(0)?.name as string | undefined
  for (let kill = 0; kill < 3; kill++) {
    const before = (await w.targetMembers()).length
    // A killed sidecar's zombie transactions still add rows, and its session may hold the lock a
    // moment longer: the holder must be one of the live ones.
    const live = async () => {
      const name = await holder()
      return name !== undefined && children.has(name) ? name : undefined
    }
    await until('the holder delivered more', async () => (await w.targetMembers()).length > before + 2000 && (await live()), 60_000)
    const name = (await live())!
    const victim = children.get(name)!
    victim.kill('SIGKILL')
    await killed(victim)
    children.delete(name)
    start(`s${kill + 2}`) // a new standby; the old one takes over
    assert.ok((await w.targetMembers()).length < 100_000, 'killed mid-delivery')
  }
  await converged(w, 120_000)
  for (const child of children.values()) child.kill('SIGTERM')
})

test('a home restored from a backup: the target ahead of it holds the subscription (diverged), a resync makes it exact', async (t) => {
  const defer = deferrer(t)
  // A clear template: the target holds members the restored home never heard of.
  const w = await world(defer, { clearSql: 'delete from members' })
  const pgDump = findBin('pg_dump', ['/usr/lib/postgresql/15/bin'])
  const pgRestore = findBin('pg_restore', ['/usr/lib/postgresql/15/bin'])
  let sidecar = await sidecarOn(w, defer)
  await w.home.query(`insert into seg (segment_id, id) select $1, 'a' || g from generate_series(1, 100) g`, [w.segmentId])
  await converged(w)
  const dump = `${w.home.url}`
  const { stdout: backup } = await run(pgDump, ['-Fc', '-d', dump], { encoding: 'buffer', maxBuffer: 64 << 20 } as never)
  // After the backup: more changes, delivered, so the target's checkpoint moves past the backup.
  for (let i = 0; i < 20; i++) await w.home.query(`insert into seg (segment_id, id) values ($1, 'b' || $2)`, [w.segmentId, i])
  await converged(w)
  await sidecar.stop()
  // The home is lost and restored from the backup; life goes on there: 200 new members.
  const restored = await freshPgPlain()
  defer(() => restored.close())
  await new Promise<void>((resolve, reject) => {
    const p = execFile(pgRestore, ['--no-owner', '-d', restored.url], (err) => (err ? reject(err) : resolve()))
    p.stdin!.end(backup)
  })
  await restored.query(`insert into seg (segment_id, id) select $1, 'c' || g from generate_series(1, 200) g`, [w.segmentId])
  sidecar = await startTestSidecar({ databaseUrl: restored.url, pollIntervalMs: 50, env: w.env }, defer)
  const held = await heldStatus(restored)

  assert.equal(held.error_kind, 'diverged')
  assert.match(held.last_error, /ahead of the last position this home assigned/)
  assert.match(held.error_hint, /segmenter\.resync\('sub'\)/)
  assert.equal((await w.targetMembers()).filter((m) => m.startsWith('c')).length, 0, 'nothing delivered from the diverged home')
  await restored.query(`select segmenter.resync('sub')`)
  const expected = (await restored.query(`select id from seg where actual_end = 'infinity' order by id`)).map((r) => r.id)
  await until('the target equals the restored home', async () => JSON.stringify(await w.targetMembers()) === JSON.stringify(expected))
  assert.equal(expected.length, 300, 'the restored home has the backup and its 200 new members, not what came after the backup')
  await sidecar.stop()
})

test('without a clear template: clear_segment, TRUNCATE and resync leave the target equal to the segment', async (t) => {
  const defer = deferrer(t)
  const w = await world(defer, { clearSql: null, batchSize: 50 })
  await sidecarOn(w, defer)
  await w.home.query(`select segmenter.add_members('seg', array(select 'a' || g from generate_series(1, 120) g))`)
  await converged(w)
  await w.home.query(`select segmenter.clear_segment('seg')`)
  await converged(w)
  assert.deepEqual(await w.targetMembers(), [], 'clear_segment removed every member from the target')
  await w.home.query(`select segmenter.add_members('seg', array(select 'b' || g from generate_series(1, 80) g))`)
  await converged(w)
  await w.home.query('truncate seg')
  await converged(w)
  assert.deepEqual(await w.targetMembers(), [], 'TRUNCATE removed every member from the target')
  // Paused: members come and go; a resync must still deliver the removes of those that left.
  await w.home.query(`select segmenter.add_members('seg', array(select 'c' || g from generate_series(1, 40) g))`)
  await converged(w)
  await w.home.query(`select segmenter.pause('sub')`)
  await w.home.query(`select segmenter.remove_members('seg', array(select 'c' || g from generate_series(1, 15) g))`)
  await w.home.query(`delete from seg where id in ('c16', 'c17')`)
  await w.home.query(`select segmenter.resync('sub')`)
  await w.home.query(`select segmenter.resume('sub')`)
  await converged(w)
  assert.equal((await w.targetMembers()).length, 23)
  const dead = await w.home.query('select count(*)::int as n from segmenter.dead_letters')
  assert.equal(dead[0].n, 0)
})

test('a consumer repointed with create_consumer reaches a running sidecar: the next changes go to the new target', async (t) => {
  const defer = deferrer(t)
  const w = await world(defer)
  const other = await freshMysql()
  defer(() => other.close())
  await other.query('create table members (member varchar(64) not null)')
  const env = { ...w.env, OTHER_URL: other.url }
  await startTestSidecar({ databaseUrl: w.home.url, pollIntervalMs: 200, env }, defer)
  await w.home.query(`select segmenter.add_members('seg', array['x1', 'x2'])`)
  await converged(w)
  await w.home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'OTHER_URL')`)
  await w.home.query(`select segmenter.resync('sub')`) // the new target starts from a snapshot
  await w.home.query(`select segmenter.add_members('seg', array['x3'])`)
  await until('the new target has every member', async () => (await other.query('select count(*) as n from members'))[0].n == 3, 5000)
  assert.deepEqual(await w.targetMembers(), ['x1', 'x2'], 'the old target got nothing after the repoint')
})

test('a retired segment delivers nothing after its segment_delete; re-created under its name, it is followed again', async (t) => {
  const defer = deferrer(t)
  const w = await world(defer)
  await w.home.query(
    `select segmenter.create_subscription(name => 'sub2', consumer => 'maria', segments => array['seg'], add_sql => $1, remove_sql => $2,
       segment_delete_sql => 'insert into members (member) values (concat(''deleted:'', {segment_name}))', syntax => 'altcraft')`,
    [
      'insert into other_members (member) values {for $i, $lead = $batch}({$lead.id}){autocomma}{end}',
      'delete from other_members where member in ({batch_in "id"})',
    ],
  )
  await w.target.query('create table other_members (member varchar(64) not null)')
  await sidecarOn(w, defer)
  await w.home.query(`select segmenter.add_members('seg', array['r1', 'r2'])`)
  await converged(w)
  await w.home.query(`select segmenter.retire_segment('seg')`)
  await until('segment_delete delivered', async () => (await w.targetMembers()).includes('deleted:seg'))
  await w.home.query(`insert into seg (segment_id, id) values ($1, 'r3')`, [w.segmentId])
  await w.home.query(`update seg set actual_end = now() where id = 'r1'`)
  await sleep(1000)
  assert.deepEqual(await w.targetMembers(), ['deleted:seg', 'r1', 'r2'], 'nothing after the segment_delete')
  const [status] = await w.home.query(`select retired_segments, current_segments from segmenter.status where subscription = 'sub'`)
  assert.deepEqual(status, { retired_segments: ['seg'], current_segments: 0 }, 'status says the scope points at nothing current')
  const revived = (await w.home.query(`select segmenter.create_segment('seg', 'seg') as id`))[0].id
  assert.equal(revived, w.segmentId, 'the name revives the same segment')
  // The resync a revival starts brings the target to the segment as it is now.
  await until('the target follows the revived segment', async () => {
    const t = (await w.targetMembers()).filter((m) => !m.startsWith('deleted:'))
    return JSON.stringify(t) === JSON.stringify(await w.segmentMembers())
  })
  assert.deepEqual(await w.segmentMembers(), ['r2', 'r3'])
  const [after] = await w.home.query(`select retired_segments, current_segments from segmenter.status where subscription = 'sub'`)
  assert.deepEqual(after, { retired_segments: [], current_segments: 1 })
})

test('a read-only target is an outage: retried, logged and visible, never dead-lettered; a replay duplicates nothing', async (t) => {
  const defer = deferrer(t)
  const server = await freshMariadbServer()
  defer(() => server.destroy())
  const root = await mysql.createConnection({ uri: server.url, multipleStatements: true })
  defer(() => root.end())
  // root bypasses read_only: the consumer connects as an ordinary account.
  await root.query(`create database t; create table t.members (member varchar(64) not null);
    create user app@'%'; grant all on t.* to app@'%'`)
  const home = await freshPg()
  defer(() => home.close())
  await home.query(DDL)
  await home.query(`select segmenter.create_segment('seg', 'seg')`)
  await home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'TARGET_URL')`)
  await home.query(
    `select segmenter.create_subscription(name => 'sub', consumer => 'maria', segments => array['seg'], add_sql => $1, remove_sql => $2, syntax => 'altcraft')`,
    [ADD, REMOVE],
  )
  const url = new URL(server.url)
  url.username = 'app'
  url.pathname = '/t'
  await startTestSidecar(
    { databaseUrl: home.url, pollIntervalMs: 50, env: { ...process.env, TARGET_URL: url.toString() }, retryBaseMs: 100, retryMaxMs: 400 },
    defer,
  )
  await home.query(`select segmenter.add_members('seg', array['o1'])`)
  await until('o1 delivered', async () => ((await root.query('select count(*) as n from t.members')) as any)[0][0].n == 1)
  await root.query('set global read_only = 1')
  await home.query(`select segmenter.add_members('seg', array['o2', 'o3'])`)
  const [status] = await until('the outage in status', async () =>
    (await home.query(`select * from segmenter.status where last_error ~ 'read.only'`)).at(0)
      ? await home.query('select * from segmenter.status')
      : null,
  )
  assert.equal(status.state, 'active')
  assert.ok(Number(status.pending_changes) >= 2, 'the changes wait')
  const failures = await home.query(`select count(*)::int as n from segmenter.log where kind = 'batch' and not ok and error ~ 'read.only'`)
  assert.ok(failures[0].n >= 1, 'each failed round is in segmenter.log')
  assert.equal((await home.query('select count(*)::int as n from segmenter.dead_letters'))[0].n, 0, 'nothing dead-lettered')
  await root.query('set global read_only = 0')
  await until('all delivered', async () => ((await root.query('select count(*) as n from t.members')) as any)[0][0].n == 3, 20_000)
  await home.query(`select segmenter.replay_dead_letters('sub')`)
  await sleep(500)
  const [rows] = (await root.query('select member from t.members order by member')) as any
  assert.deepEqual(
    rows.map((r: { member: string }) => r.member),
    ['o1', 'o2', 'o3'],
  )
})

test('a replay of a dead letter whose member changed again later is superseded, not delivered twice', async (t) => {
  const defer = deferrer(t)
  // The target rejects the member once (a CHECK the test lifts), then the member is updated and delivered.
  const w = await world(defer, { targetDdl: ["create table members (member varchar(64) not null, check (member <> 'bad'))"], batchSize: 1 })
  await sidecarOn(w, defer)
  await w.home.query(`select segmenter.add_members('seg', array['bad'])`)
  await until('dead-lettered', async () => (await w.home.query('select count(*)::int as n from segmenter.dead_letters'))[0].n === 1)
  await w.target.query('alter table members drop constraint if exists members_chk_1')
  await w.target.query('alter table members drop constraint if exists CONSTRAINT_1')
  await w.home.query(`update seg set v = 'changed' where id = 'bad'`) // an update: delivered with add_sql
  await until('the update delivered', async () => (await w.targetMembers()).includes('bad'))
  assert.equal(Number((await w.home.query(`select segmenter.replay_dead_letters('sub') as n`))[0].n), 0)
  await sleep(500)
  assert.deepEqual(await w.targetMembers(), ['bad'])
})

test('id columns of every common type deliver their members with attributes (char, varchar, text, int, bigint, uuid, numeric)', async (t) => {
  const defer = deferrer(t)
  const home = await freshPg()
  defer(() => home.close())
  const target = await freshMysql()
  defer(() => target.close())
  await target.query('create table members (seg varchar(16) not null, member varchar(64) not null, v varchar(64))')
  await home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'TARGET_URL')`)
  const types = { char: 'char(6)', varchar: 'varchar(10)', text: 'text', int: 'int', bigint: 'bigint', uuid: 'uuid', numeric: 'numeric' }
  const ids: Record<string, string[]> = {
    char: ['ab', 'abcdef'],
    varchar: ['x y', 'z'],
    text: ['t1', "t'2"],
    int: ['7', '-3'],
    bigint: ['9007199254740993', '1'],
    uuid: ['8d7b6f40-0c8e-4b7c-9b8e-1d2f3a4b5c6d', '00000000-0000-0000-0000-000000000001'],
    numeric: ['1.50', '2'],
  }
  for (const [name, type] of Object.entries(types)) {
    await home.query(`create table seg_${name} (segment_id uuid not null, id ${type}, v text, actual_begin timestamptz not null default now(),
      actual_end timestamptz not null default 'infinity', processed timestamptz not null default now())`)
    await home.query(`select segmenter.create_segment('${name}', 'seg_${name}')`)
    await home.query(
      `select segmenter.create_subscription(name => 's_${name}', consumer => 'maria', segments => array['${name}'], syntax => 'altcraft',
         add_sql => 'insert into members (seg, member, v) values {for $i, $lead = $batch}({segment_name}, {$lead.id}, {$lead.v}){autocomma}{end}',
         remove_sql => 'delete from members where seg = {segment_name} and member in ({batch_in "id"})', batch_size => 10)`,
    )
    for (const id of ids[name]!) {
      await home.query(
        `insert into seg_${name} (segment_id, id, v) select segment_id, $1::text::${type}, 'v-' || $1::text from segmenter.segments where name = $2`,
        [id, name],
      )
    }
  }
  await startTestSidecar({ databaseUrl: home.url, pollIntervalMs: 50, env: { ...process.env, TARGET_URL: target.url } }, defer)
  const expected = 2 * Object.keys(types).length
  await until(
    'every member delivered',
    async () => Number((await target.query('select count(*) as n from members'))[0].n) >= expected,
    20_000,
  ).catch(async (err) => {
    const status = await home.query('select subscription, state, pending_changes, last_error, dead_letters from segmenter.status')
    throw new Error(
      `${(err as Error).message}: ${JSON.stringify(status)} target ${JSON.stringify(await target.query('select * from members'))}`,
    )
  })
  await homeCaughtUp(home.query)
  assert.equal((await home.query('select count(*)::int as n from segmenter.dead_letters'))[0].n, 0, 'no dead letters')
  const rows = await target.query('select seg, member, v from members order by seg, member')
  assert.equal(rows.length, expected)
  for (const r of rows as Array<{ seg: string; member: string; v: string }>) {
    assert.equal(r.v.trimEnd(), `v-${r.member.trimEnd()}`.trimEnd(), `${r.seg}: the member's own row was rendered`)
  }
  // Removes find their rows too.
  await home.query(`update seg_char set actual_end = now() where id = 'ab'`)
  await until(
    'char member removed',
    async () => Number((await target.query(`select count(*) as n from members where seg = 'char'`))[0].n) === 1,
  )
})

test('a missing DSN variable is reported once as a configuration error naming it; repointing the consumer releases it', async (t) => {
  const defer = deferrer(t)
  const w = await world(defer)
  const env = { ...w.env }
  delete env.TARGET_URL
  env.FIXED_URL = w.target.url
  await startTestSidecar({ databaseUrl: w.home.url, pollIntervalMs: 50, env }, defer)
  await w.home.query(`select segmenter.add_members('seg', array['e1'])`)
  const held = await heldStatus(w.home)
  assert.equal(held.error_kind, 'configuration')
  assert.match(held.last_error, /TARGET_URL is not set/)
  assert.match(held.error_hint, /export TARGET_URL=/)
  await sleep(1500)
  const logged = await w.home.query(`select count(*)::int as n from segmenter.log where subscription_id = $1 and not ok`, [
    held.subscription_id,
  ])
  assert.equal(logged[0].n, 1, 'reported once, not retried as "unreachable"')
  await w.home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'FIXED_URL')`)
  await converged(w)
})

test('a template that fails at delivery holds the subscription (nothing dead-lettered); fixing it delivers everything', async (t) => {
  const defer = deferrer(t)
  const w = await world(defer)
  await sidecarOn(w, defer)
  await w.home.query(`select segmenter.add_members('seg', array(select 'h' || g from generate_series(1, 50) g))`)
  await converged(w)
  // A column the template reads is dropped from the segment table after the template was accepted.
  await w.home.query(`select segmenter.alter_subscription('sub', add_sql => $1)`, [
    'insert into members (member) values {for $i, $lead = $batch}(concat({$lead.id}, {$lead.v})){autocomma}{end}',
  ])
  await w.home.query('alter table seg drop column v')
  await w.home.query(`select segmenter.add_members('seg', array(select 'k' || g from generate_series(1, 50) g))`)
  const held = await heldStatus(w.home)
  assert.equal(held.error_kind, 'template')
  assert.match(held.error_hint, /alter_subscription/)
  assert.equal((await w.home.query('select count(*)::int as n from segmenter.dead_letters'))[0].n, 0, 'nothing dead-lettered')
  await w.home.query(`select segmenter.alter_subscription('sub', add_sql => $1)`, [ADD])
  await converged(w)
})

test('a subscription held for a broken template does not keep a sidecar from delivering the others', async (t) => {
  const defer = deferrer(t)
  const w = await world(defer)
  const pool = createPool(w.home.url)
  const sidecar = await startSidecar({ databaseUrl: w.home.url, pool, log: pino({ level: 'silent' }), pollIntervalMs: 50, env: w.env })
  defer(async () => {
    await sidecar.stop()
    await pool.end()
  })
  // A Squirrelly syntax error SQL cannot see (it is JavaScript): the sidecar's compiler holds it.
  await w.home.query(
    `select segmenter.create_subscription(name => 'broken', consumer => 'maria', segments => array['seg'], add_sql => 'insert {{ it.segment_id + }}',
       remove_sql => 'delete from members where 1 = 0')`,
  )
  await w.home.query(`select segmenter.add_members('seg', array['g1', 'g2'])`)
  await converged(w)
  const broken = await heldStatus(w.home, 'broken')

  assert.equal(broken.error_kind, 'template')
  assert.match(broken.last_error, /add_sql/)
})

for (const kind of ['mysql', 'postgres'] as const) {
  test(`${kind} sink: a transaction from a checkpoint another sink moved commits nothing (apply and a lane's commit), and says so`, async (t) => {
    const defer = deferrer(t)
    const target = (kind === 'mysql' ? await freshMysql() : await freshPgPlain()) as FreshMysql
    defer(() => target.close())
    await target.query('create table members (member varchar(64) not null)')
    const { openMysqlSink } = await import('../src/sinks/mysql.js')
    const { openPostgresSink } = await import('../src/sinks/postgres.js')
    const { isFenced } = await import('../src/sinks/index.js')
    const open = () =>
      kind === 'mysql'
        ? openMysqlSink(target.url, kind, 'home-1', { lanes: 2 })
        : openPostgresSink(target.url, kind, 'home-1', { lanes: 2 })
    const [a, b] = [await open(), await open()]
    defer(() => a.close())
    defer(() => b.close())
    const insert = (m: string) => `insert into members (member) values ('${m}')`
    assert.deepEqual(await a.checkpoint('k'), { pos: 0n, ord: 0, home: 'home-1' })
    assert.deepEqual(await b.checkpoint('k'), { pos: 0n, ord: 0, home: 'home-1' })
    await b.apply([insert('b1')], 'k', { pos: 5n, ord: 1 }) // the sidecar that took over
    await assert.rejects(a.apply([insert('a1')], 'k', { pos: 5n, ord: 1 }), (err) => isFenced(err))
    // A lane's transaction ran its statements before the checkpoint moved: its commit is fenced too.
    await b.apply([insert('b2')], 'k', { pos: 6n, ord: 1 })
    const lane = b.begin([insert('late')])
    await lane.executed
    const other = await open()
    defer(() => other.close())
    await other.checkpoint('k')
    await other.apply([insert('o1')], 'k', { pos: 7n, ord: 1 })
    await assert.rejects(lane.commit('k', { pos: 7n, ord: 1 }), (err) => isFenced(err))
    const rows = (await target.query('select member from members order by member')).map((r: { member: string }) => r.member)
    assert.deepEqual(rows, ['b1', 'b2', 'o1'], 'only the transactions that found the checkpoint where they started from committed')
    // The fenced sink reads the checkpoint again and goes on from there.
    assert.deepEqual(a.lastCommitted('k'), { pos: 5n, ord: 1 }, 'a fenced sink read where the target stood when it was fenced')
    assert.deepEqual(await a.checkpoint('k'), { pos: 7n, ord: 1, home: 'home-1' })
    await a.apply([insert('a2')], 'k', { pos: 8n, ord: 1 })
    if (kind === 'mysql') {
      // A template's own SELECT ... INTO of two rows raises what the MySQL fence raises (1172): a
      // rejection of the statement, since the checkpoint did not move.
      const twoRows = 'select 1 into @x from (select 1 union all select 2) two'
      await assert.rejects(
        a.apply([twoRows], 'k', { pos: 9n, ord: 1 }),
        (err) => !isFenced(err) && (err as { errno?: number }).errno === 1172,
      )
      assert.deepEqual(a.lastCommitted('k'), { pos: 8n, ord: 1 })
    }
    // A checkpoint written by another home is not moved by this one.
    const stranger = kind === 'mysql' ? await openMysqlSink(target.url, kind, 'home-2') : await openPostgresSink(target.url, kind, 'home-2')
    defer(() => stranger.close())
    assert.equal((await stranger.checkpoint('k')).home, 'home-1')
    await assert.rejects(stranger.apply([insert('s1')], 'k', { pos: 9n, ord: 1 }), (err) => isFenced(err))
    assert.equal(Number((await target.query(`select count(*) as n from members where member = 's1'`))[0].n), 0)
  })
}

test('after prune() emptied the change log, new changes get positions after every cursor and are delivered', async (t) => {
  const defer = deferrer(t)
  const w = await world(defer)
  await sidecarOn(w, defer)
  await w.home.query(`select segmenter.add_members('seg', array(select 'p' || g from generate_series(1, 30) g))`)
  await converged(w)
  await homeCaughtUp(w.home.query)
  await w.home.query(`update segmenter.changes set at = now() - interval '2 days'`)
  await w.home.query('select segmenter.prune()')
  assert.equal((await w.home.query('select count(*)::int as n from segmenter.changes'))[0].n, 0, 'prune took every change')
  await w.home.query(`select segmenter.add_members('seg', array['q1', 'q2'])`)
  await converged(w)
})
