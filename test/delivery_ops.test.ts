// Operating delivery: the CLI's inspection and resync commands (it spawns bin/segmenter.js) and
// prune(). Real servers, the sidecar in-process.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { execFile } from 'node:child_process'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { freshPg } from './harness/db.js'
import { setup } from './harness/fixtures.js'
import { deferrer, until } from './harness/wait.js'

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..')

/** Run bin/segmenter.js; resolve with its exit code and output (never reject). */
function cli(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    execFile(process.execPath, ['bin/segmenter.js', ...args], { cwd: repo, env, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0
      res({ code, stdout, stderr })
    })
  })
}

test('CLI: status, stats, preview, dead-letters list and resync with --json; unknown subscription exits 3; bad configuration exits 2', async (t) => {
  const defer = deferrer(t)
  const { home, target, start } = await setup(defer)
  await target.query('create table narrow (member varchar(5) not null)')
  await start()
  const [{ id }] = await home.query(`select segmenter.create_segment('cli', 'public.test_segment') as id`)
  await home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'TARGET_URL')`)
  await home.query(`select segmenter.create_subscription(name => 'sub', consumer => 'maria', segments => array['cli'], syntax => 'altcraft', batch_size => 10,
    add_sql => 'insert into narrow (member) values {for $i, $lead = $batch}({$lead.id}){autocomma}{end}',
    remove_sql => 'delete from narrow where member in ({batch_in "id"})')`)
  await home.query(`insert into test_segment (segment_id, id) values ($1, 'a1'), ($1, 'a2'), ($1, 'much-too-long')`, [id])
  await until('dead letter', async () => Number((await home.query(`select count(*) as n from segmenter.dead_letters`))[0].n) === 1)
  await until('2 rows', async () => Number((await target.query('select count(*) as n from narrow'))[0].n) === 2)

  const env: NodeJS.ProcessEnv = { ...process.env, DATABASE_URL: home.url, SEGMENTER_LOG_LEVEL: 'silent' }
  const json = async (args: string[]) => {
    const r = await cli(args, env)
    assert.equal(r.code, 0, `segmenter ${args.join(' ')} exited ${r.code}: ${r.stderr}`)
    try {
      return JSON.parse(r.stdout)
    } catch {
      assert.fail(`segmenter ${args.join(' ')} printed no JSON: ${r.stdout}`)
    }
  }
  const [status, stats, preview, dead] = await Promise.all([
    json(['status', '--json']),
    json(['stats', '--json']),
    json(['preview', 'sub', '--json']),
    json(['dead-letters', 'list', '--json']),
  ])
  assert.ok(Array.isArray(status) && status.length === 1, JSON.stringify(status))
  assert.equal(status[0].subscription, 'sub')
  assert.equal(status[0].state, 'active')
  assert.equal(status[0].consumer, 'maria')
  assert.equal(Number(status[0].dead_letters), 1)

  assert.ok(Array.isArray(stats) && stats.length >= 1, JSON.stringify(stats))
  assert.ok(stats.every((r: { subscription: string }) => r.subscription === 'sub'))
  assert.equal(
    stats.reduce((n: number, r: { errors: string }) => n + Number(r.errors), 0),
    1,
    'the rejected row is one error',
  )
  assert.ok(stats.reduce((n: number, r: { rows: string }) => n + Number(r.rows), 0) >= 2)

  assert.ok(Array.isArray(preview) && preview.length === 1, JSON.stringify(preview))
  assert.equal(preview[0].subscription, 'sub')
  assert.equal(preview[0].segment, 'cli')
  assert.equal(preview[0].dialect, 'mysql')
  assert.equal(preview[0].members, 3)
  assert.match(preview[0].statements.add, /^insert into narrow \(member\) values \('a1'\), ?\('a2'\), ?\('much-too-long'\)$/)
  assert.match(preview[0].statements.remove, /member in \('a1', 'a2', 'much-too-long'\)/)
  assert.equal(preview[0].statements.clear, null)

  assert.ok(Array.isArray(dead) && dead.length === 1, JSON.stringify(dead))
  assert.equal(dead[0].subscription, 'sub')
  assert.equal(dead[0].member_id, 'much-too-long')
  assert.equal(dead[0].event, 'add')

  const resync = await json(['resync', 'sub', '--json'])
  assert.equal(resync.subscription, 'sub')
  const [sub] = await home.query(`select resync_pos::text as pos from segmenter.subscriptions where name = 'sub'`)
  assert.equal(String(resync.snapshot_pos), sub.pos, 'the printed snapshot position is the one recorded')
  const plain = await cli(['resync', 'sub'], env)
  assert.equal(plain.code, 0, plain.stderr)
  assert.match(plain.stdout, /resync of sub queued from position \d+/)

  const nope = await cli(['preview', 'nope'], env)
  assert.equal(nope.code, 3, `preview of an unknown subscription: ${nope.stderr}`)
  assert.match(nope.stderr, /nope/)
  const nopeResync = await cli(['resync', 'nope'], env)
  assert.equal(nopeResync.code, 3, `resync of an unknown subscription: ${nopeResync.stderr}`)
  assert.match(nopeResync.stderr, /nope/)

  // Bad configuration exits 2 naming the setting. (Without DATABASE_URL the CLI now starts the
  // embedded Postgres in ./.segmenter on a fixed port, which a test must not do, so that case is
  // not exercised here.)
  const bad = await cli(['status', '--json'], { ...env, SEGMENTER_POLL_INTERVAL_MS: 'often' })
  assert.equal(bad.code, 2, `bad configuration: ${bad.stderr}`)
  assert.match(bad.stderr, /SEGMENTER_POLL_INTERVAL_MS/)
  assert.equal(bad.stdout, '')
})

test('prune deletes only changes every subscription has passed, and old log rows', async (t) => {
  const home = await freshPg()
  t.after(() => home.close())
  await home.query(`create table seg (segment_id uuid not null, id text, actual_begin timestamptz not null default now(),
    actual_end timestamptz not null default 'infinity', processed timestamptz not null default now())`)
  await home.query(`select segmenter.create_segment('a', 'seg'), segmenter.create_segment('b', 'seg')`)
  await home.query(`select segmenter.create_consumer('c', 'mysql', 'mysql', 'X_URL')`)
  await home.query(`select segmenter.create_subscription('sa', 'c', array['a'], 'select 1', 'select 2')`)
  await home.query(`select segmenter.add_members('a', array['1', '2']), segmenter.add_members('b', array['3'])`)
  await home.query(`select segmenter.sequence_changes()`)
  await home.query(`update segmenter.changes set at = now() - interval '2 days'`)
  // sa has delivered nothing yet: only b's changes (no subscription covers b) may go.
  const [first] = await home.query(`select changes::int from segmenter.prune()`)
  assert.deepEqual(await home.query(`select distinct segment from segmenter.events order by 1`), [{ segment: 'a' }])
  assert.ok(first.changes >= 2)
  // Once sa's cursor passes everything (the last member of the last change), a's changes go too;
  // recent ones stay for inspection.
  await home.query(`update segmenter.subscriptions set (cursor_pos, cursor_ord) =
    (select pos, members from segmenter.changes where pos is not null order by pos desc limit 1)`)
  await home.query(`select segmenter.add_members('a', array['4'])`)
  await home.query(`select segmenter.sequence_changes()`)
  await home.query(`select * from segmenter.prune()`)
  assert.deepEqual(await home.query(`select event, member_id from segmenter.events where member_id is not null`), [
    { event: 'add', member_id: '4' },
  ])
  await home.query(`insert into segmenter.log (kind, ok, at) values ('batch', true, now() - interval '40 days'), ('batch', true, now())`)
  const [second] = await home.query(`select log::int from segmenter.prune()`)
  assert.equal(second.log, 1)
})

test('prune keeps a change a subscription has delivered only in part (its cursor inside the change)', async (t) => {
  const home = await freshPg()
  t.after(() => home.close())
  await home.query(`create table seg (segment_id uuid not null, id text, actual_begin timestamptz not null default now(),
    actual_end timestamptz not null default 'infinity', processed timestamptz not null default now())`)
  await home.query(`select segmenter.create_segment('a', 'seg')`)
  await home.query(`select segmenter.create_consumer('c', 'mysql', 'mysql', 'X_URL')`)
  await home.query(`select segmenter.create_subscription('sa', 'c', array['a'], 'select 1', 'select 2', batch_size => 1000)`)
  await home.query(`select segmenter.add_members('a', array(select 'm' || g from generate_series(1, 2500) g))`)
  await home.query(`select segmenter.sequence_changes()`)
  await home.query(`update segmenter.changes set at = now() - interval '2 days'`)
  const [change] = await home.query(`select pos::text, members from segmenter.changes where event = 'add'`)
  assert.equal(change.members, 2500, 'one change holds the 2,500 adds')
  // A subscription paused (or held, or stopped) after its first batch: (pos, 1000) is delivered.
  await home.query(`update segmenter.subscriptions set cursor_pos = $1, cursor_ord = 1000`, [change.pos])
  const pending = async () =>
    Number((await home.query(`select pending_changes from segmenter.status where subscription = 'sa'`))[0].pending_changes)
  assert.equal(await pending(), 1500)
  await home.query(`select * from segmenter.prune()`)
  assert.equal(await pending(), 1500, 'prune deleted the change the cursor stands in: its 1,500 undelivered members are lost')
  assert.equal(Number((await home.query(`select count(*) as n from segmenter.events where event = 'add'`))[0].n), 2500)
  // Delivered in full, it goes.
  await home.query(`update segmenter.subscriptions set cursor_ord = 2500`)
  await home.query(`select * from segmenter.prune()`)
  assert.equal(await pending(), 0)
  assert.equal(Number((await home.query(`select count(*) as n from segmenter.changes where event = 'add'`))[0].n), 0)
})
