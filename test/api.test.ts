// The SQL API refuses bad configuration when it is written: a stable SQLSTATE (SG0xx), a message
// that names the offending field, and nothing half-applied. Plus the happy paths the checks must
// not get in the way of, documentation comments on the public surface, and the showcase view.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import * as api from '../src/api.js'
import { SegmenterError } from '../src/errors.js'
import { freshPg, type FreshPg } from './harness/db.js'

const SEGMENT_TABLE = `create table public.members (
  segment_id uuid not null,
  id varchar,
  hash_email varchar,
  hash_phone varchar,
  actual_begin timestamp not null default now(),
  actual_end timestamp not null default 'infinity',
  processed timestamp not null default now(),
  constraint members_id_key unique (id)
)`

/** A fresh database with segment 'a' (manual, table public.members) and consumer 'c'. */
async function setup(t: TestContext): Promise<FreshPg> {
  const db = await freshPg()
  t.after(() => db.close())
  await db.query(SEGMENT_TABLE)
  await db.query(`select segmenter.create_segment('a', 'public.members')`)
  await db.query(`select segmenter.create_consumer('c', 'mysql', 'mysql', 'TARGET_URL')`)
  return db
}

/** Everything a refused call could have half-written. */
async function state(db: FreshPg) {
  const [row] = await db.query(`
    select (select count(*) from segmenter.segments)::int as segments,
           (select count(*) from segmenter.segments where actual_end = 'infinity')::int as current_segments,
           (select count(*) from segmenter.consumers)::int as consumers,
           (select count(*) from segmenter.subscriptions)::int as subscriptions,
           (select count(*) from segmenter.changes)::int as changes,
           (select count(*) from pgboss.job)::int as jobs,
           (select count(*) from pg_trigger where tgname like '\\_100\\_segmenter%')::int as triggers,
           (select coalesce(jsonb_agg(to_jsonb(m) order by m.id), '[]') from public.members m) as members,
           (select coalesce(jsonb_agg(jsonb_build_array(name, state) order by name), '[]') from segmenter.subscriptions) as states`)
  return row
}

interface PgErr {
  code?: string
  message: string
}

/** `sql` fails with SQLSTATE `code`, a message matching every regex, and changes nothing. */
async function refused(db: FreshPg, sql: string, params: unknown[], code: string, ...message: RegExp[]) {
  const before = await state(db)
  await assert.rejects(db.query(sql, params), (err: PgErr) => {
    assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`)
    for (const re of message) assert.match(err.message, re)
    return true
  })
  assert.deepEqual(await state(db), before, 'nothing half-applied')
}

const sub = (args: string) => `select segmenter.create_subscription(name => 's', consumer => 'c', segments => array['a'], ${args})`
const OK_TEMPLATES = `add_sql => 'insert into t values ({{ it.segment_id }})', remove_sql => 'delete from t'`

// ---------------------------------------------------------------------------------------------
// Refusals

test('unknown segment is SG001 (add_members, remove_members, clear_segment, create_subscription, retire_segment)', async (t) => {
  const db = await setup(t)
  await refused(db, `select segmenter.add_members('nope', array['1'])`, [], 'SG001', /segment/, /'nope'/)
  await refused(db, `select segmenter.remove_members('nope', array['1'])`, [], 'SG001', /segment/, /'nope'/)
  await refused(db, `select segmenter.clear_segment('nope')`, [], 'SG001', /segment/, /'nope'/)
  await refused(db, `select segmenter.retire_segment('nope')`, [], 'SG001', /segment/, /'nope'/)
  // one good segment and one unknown: the subscription is not created at all
  await refused(
    db,
    `select segmenter.create_subscription('s', 'c', array['a', 'ghost'], 'insert', 'delete')`,
    [],
    'SG001',
    /segment/,
    /'ghost'/,
  )
  // a retired segment is unknown too
  await db.query(`select segmenter.retire_segment('a')`)
  await refused(db, `select segmenter.add_members('a', array['1'])`, [], 'SG001', /segment/, /'a'/)
})

test('unknown consumer is SG002', async (t) => {
  const db = await setup(t)
  await refused(
    db,
    `select segmenter.create_subscription('s', 'ghost', array['a'], 'insert', 'delete')`,
    [],
    'SG002',
    /consumer/,
    /'ghost'/,
  )
})

test('a table without the required columns or with a wrong column type is SG003', async (t) => {
  const db = await setup(t)
  await db.query(`create table public.partial (segment_id uuid, id text, hash_email text)`)
  await refused(
    db,
    `select segmenter.create_segment('p', 'public.partial')`,
    [],
    'SG003',
    /table_name/,
    /actual_begin/,
    /actual_end/,
    /processed/,
  )
  await db.query(`create table public.texty (segment_id text, id text, actual_begin timestamp,
    actual_end timestamp default 'infinity', processed timestamp)`)
  await refused(db, `select segmenter.create_segment('p', 'public.texty')`, [], 'SG003', /segment_id/, /uuid/)
  await db.query(`create table public.datey (segment_id uuid, id text, actual_begin timestamp,
    actual_end date default 'infinity', processed timestamp)`)
  await refused(db, `select segmenter.create_segment('p', 'public.datey')`, [], 'SG003', /actual_end/)
  // no capture triggers were attached to the refused tables
  const triggers = await db.query(
    `select tgrelid::regclass::text as t from pg_trigger where tgrelid in ('public.partial'::regclass, 'public.texty'::regclass, 'public.datey'::regclass)`,
  )
  assert.deepEqual(triggers, [])
})

test('a missing add or remove template is SG004', async (t) => {
  const db = await setup(t)
  await refused(db, sub(`add_sql => null, remove_sql => 'delete from t'`), [], 'SG004', /add_sql/)
  await refused(db, sub(`add_sql => '  ', remove_sql => 'delete from t'`), [], 'SG004', /add_sql/)
  await refused(db, sub(`add_sql => 'insert into t', remove_sql => ''`), [], 'SG004', /remove_sql/)
  await refused(db, sub(`add_sql => 'insert into t', remove_sql => null`), [], 'SG004', /remove_sql/)
})

test('batch_size below 1 is SG005; a negative batch_timeout is SG006', async (t) => {
  const db = await setup(t)
  await refused(db, sub(`${OK_TEMPLATES}, batch_size => 0`), [], 'SG005', /batch_size/)
  await refused(db, sub(`${OK_TEMPLATES}, batch_size => -5`), [], 'SG005', /batch_size/)
  await refused(db, sub(`${OK_TEMPLATES}, batch_timeout => '-1 second'`), [], 'SG006', /batch_timeout/)
})

test('an unknown dialect is SG007; an unknown template syntax is SG008', async (t) => {
  const db = await setup(t)
  await refused(db, `select segmenter.create_consumer('c2', 'mysql', 'sqlite', 'X_URL')`, [], 'SG007', /dialect/, /sqlite/)
  // updating an existing consumer with a bad dialect leaves it as it was
  await refused(db, `select segmenter.create_consumer('c', 'mysql', 'cobol', 'X_URL')`, [], 'SG007', /dialect/)
  const [c] = await db.query(`select dialect, dsn_env from segmenter.consumers where name = 'c'`)
  assert.deepEqual({ ...c }, { dialect: 'mysql', dsn_env: 'TARGET_URL' })
  await refused(db, sub(`${OK_TEMPLATES}, syntax => 'jinja'`), [], 'SG008', /syntax/, /jinja/)
})

test('consumer options are checked when written, also by a direct UPDATE (SG012): lanes 1-16, checkpoint_table a name, nothing unknown', async (t) => {
  const db = await setup(t)
  const consumer = (options: string) => `select segmenter.create_consumer('c', 'mysql', 'mysql', 'TARGET_URL', '${options}'::jsonb)`
  for (const bad of ['{"lanes": 0}', '{"lanes": 17}', '{"lanes": 1.5}', '{"lanes": "2"}', '{"lanes": -1}']) {
    await refused(db, consumer(bad), [], 'SG012', /options\.lanes: .* is not a whole number from 1 to 16/)
  }
  await refused(db, consumer('{"checkpoint_table": ""}'), [], 'SG012', /checkpoint_table/)
  await refused(db, consumer('{"checkpoint_table": 5}'), [], 'SG012', /checkpoint_table/)
  await refused(db, consumer('{"lane": 2}'), [], 'SG012', /'lane' is not a consumer option/)
  await refused(db, consumer('[]'), [], 'SG012', /JSON object/)
  // A constraint on the table: a direct UPDATE is refused the same way.
  await refused(db, `update segmenter.consumers set options = '{"lanes": 0}' where name = 'c'`, [], 'SG012', /options\.lanes/)
  // A refused update leaves the consumer as it was; good options are stored.
  const [before] = await db.query(`select options from segmenter.consumers where name = 'c'`)
  assert.deepEqual(before.options, {})
  await db.query(consumer('{"lanes": 4, "checkpoint_table": "sync_checkpoints"}'))
  const [after] = await db.query(`select options from segmenter.consumers where name = 'c'`)
  assert.deepEqual(after.options, { lanes: 4, checkpoint_table: 'sync_checkpoints' })
})

test('an invalid cron expression is SG009', async (t) => {
  const db = await setup(t)
  await db.query(`create table public.auto_seg (like public.members)`)
  const create = (cron: string) => `select segmenter.create_segment('auto1', 'public.auto_seg', 'auto', 'select 1 as id', '${cron}')`
  await refused(db, create('61 * * * *'), [], 'SG009', /refresh_cron/, /minute/)
  await refused(db, create('* * *'), [], 'SG009', /refresh_cron/, /3 field/)
  await refused(db, create('0 25 * * *'), [], 'SG009', /refresh_cron/, /hour/)
  await refused(db, create('*/0 * * * *'), [], 'SG009', /refresh_cron/)
  // an existing segment keeps its definition when a change is refused
  await refused(
    db,
    `select segmenter.create_segment('a', 'public.members', 'auto', 'select 1 as id', '61 * * * *')`,
    [],
    'SG009',
    /refresh_cron/,
  )
  const [a] = await db.query(`select kind, refresh_cron from segmenter.segments where name = 'a' and actual_end = 'infinity'`)
  assert.deepEqual({ ...a }, { kind: 'manual', refresh_cron: null })
  // valid ones pass
  await db.query(create('*/15 0-6 1,15 jan-mar mon-fri'))
  await db.query(`select segmenter.create_segment('auto2', 'public.auto_seg', 'auto', 'select 1 as id', '@daily')`)
})

test('a malformed altcraft template is SG010; the seed templates are accepted verbatim', async (t) => {
  const db = await setup(t)
  const altcraft = (add: string, remove = 'delete from t') =>
    db.query(`select segmenter.create_subscription('s', 'c', array['a'], $1, $2, syntax => 'altcraft')`, [add, remove])
  await refused(
    db,
    `select segmenter.create_subscription('s', 'c', array['a'], $1, 'delete from t', syntax => 'altcraft')`,
    ['insert into t values {for $i, $lead = $batch}({$lead.Id}){autocomma}'],
    'SG010',
    /add_sql/,
    /\{end\}/,
  )
  await refused(
    db,
    `select segmenter.create_subscription('s', 'c', array['a'], 'insert into t', $1, syntax => 'altcraft')`,
    ['delete from t where x = {foo}'],
    'SG010',
    /remove_sql/,
    /foo/,
  )
  await refused(
    db,
    `select segmenter.create_subscription('s', 'c', array['a'], 'insert', 'delete', clear_sql => $1, syntax => 'altcraft')`,
    ['delete from t where id = {$lead.Id}'],
    'SG010',
    /clear_sql/,
  )
  await refused(
    db,
    `select segmenter.create_subscription('s', 'c', array['a'], $1, 'delete', syntax => 'squirrelly')`,
    ['insert {{@each(it.batch) => m}}({{ m.id }})'],
    'SG010',
    /add_sql/,
  )

  // the seed's documented queries (seed 000), verbatim
  const add = `INSERT INTO mysegment (segId, clientId, updated)
VALUES
{for $index, $lead = $batch}
({segment_id}, "{$lead.CustomID}", NOW()){autocomma}
{end}
ON DUPLICATE KEY UPDATE
updated = NOW();`
  const remove = `DELETE FROM mysegment
WHERE segment_id = {segment_id}
AND clientId IN ({batch_in "CustomID"})`
  await db.query('alter table public.members add column "CustomID" varchar') // the seed's custom profile field
  await altcraft(add, remove)
  const [s] = await db.query(`select syntax, add_sql, remove_sql from segmenter.subscriptions where name = 's'`)
  assert.deepEqual({ ...s }, { syntax: 'altcraft', add_sql: add, remove_sql: remove })
})

test('an unknown subscription is SG011 (pause, resume, resync)', async (t) => {
  const db = await setup(t)
  await refused(db, `select segmenter.pause('nope')`, [], 'SG011', /subscription/, /'nope'/)
  await refused(db, `select segmenter.resume('nope')`, [], 'SG011', /subscription/, /'nope'/)
  await refused(db, `select segmenter.resync('nope')`, [], 'SG011', /subscription/, /'nope'/)
})

// ---------------------------------------------------------------------------------------------
// Happy paths

test('create_subscription succeeds, segmenter.status lists it, pause and resume flip its state', async (t) => {
  const db = await setup(t)
  await db.query(`select segmenter.add_members('a', array['m1', 'm2'])`)
  const [{ id }] = (await db.query(
    `select segmenter.create_subscription('crm', 'c', array['a'], 'insert into t values ({{ it.segment_id }})', 'delete from t',
       batch_size => 100, batch_timeout => '2 s') as id`,
  )) as [{ id: string }]
  const [row] = await db.query(
    `select subscription, subscription_id, state, consumer, pending_changes::int as pending, last_success, last_error from segmenter.status`,
  )
  // the initial sync is pending: one segment_upsert and both current members
  assert.deepEqual(
    { ...row },
    {
      subscription: 'crm',
      subscription_id: id,
      state: 'active',
      consumer: 'c',
      pending: 3,
      last_success: null,
      last_error: null,
    },
  )
  const [cfg] = await db.query(`select batch_size, batch_timeout::text as timeout from segmenter.subscriptions where name = 'crm'`)
  assert.deepEqual({ ...cfg }, { batch_size: 100, timeout: '00:00:02' })

  await db.query(`select segmenter.pause('crm')`)
  assert.equal((await db.query(`select state from segmenter.status where subscription = 'crm'`))[0]!.state, 'paused')
  await db.query(`select segmenter.add_members('a', array['m3'])`) // accumulates while paused
  assert.equal((await db.query(`select pending_changes::int as n from segmenter.status`))[0]!.n, 4)
  await db.query(`select segmenter.resume('crm')`)
  assert.equal((await db.query(`select state from segmenter.status where subscription = 'crm'`))[0]!.state, 'active')

  // the same name again is refused
  await refused(db, `select segmenter.create_subscription('crm', 'c', array['a'], 'insert', 'delete')`, [], 'SG013', /crm/)
})

test('every public function and view has a comment', async (t) => {
  const db = await setup(t)
  const functions = [
    'create_segment',
    'retire_segment',
    'add_members',
    'remove_members',
    'clear_segment',
    'create_consumer',
    'create_subscription',
    'pause',
    'resume',
    'resync',
  ]
  const rows = await db.query<{ proname: string; comment: string | null }>(
    `select p.proname, obj_description(p.oid, 'pg_proc') as comment from pg_proc p
     where p.pronamespace = 'segmenter'::regnamespace and p.proname = any($1)`,
    [functions],
  )
  assert.deepEqual(rows.map((r) => r.proname).sort(), [...functions].sort(), 'every function exists')
  for (const r of rows) assert.ok(r.comment && r.comment.length > 20, `function ${r.proname} has a comment`)

  // and any other function not marked private (_name) or a trigger function
  const others = await db.query<{ proname: string }>(
    `select p.proname from pg_proc p where p.pronamespace = 'segmenter'::regnamespace
       and p.proname !~ '^(_|tg_)' and obj_description(p.oid, 'pg_proc') is null`,
  )
  assert.deepEqual(
    others.map((r) => r.proname),
    [],
  )

  const views = ['showcase', 'status', 'sync_stats', 'events'] // and any other view: all need comments
  const vrows = await db.query<{ relname: string; comment: string | null }>(
    `select c.relname, obj_description(c.oid, 'pg_class') as comment from pg_class c
     where c.relnamespace = 'segmenter'::regnamespace and c.relkind = 'v'`,
  )
  const names = vrows.map((r) => r.relname)
  for (const v of views) assert.ok(names.includes(v), `view ${v} exists`)
  for (const r of vrows) assert.ok(r.comment && r.comment.length > 20, `view ${r.relname} has a comment`)
})

test('segmenter.showcase shows current members with attributes as jsonb, not closed ones', async (t) => {
  const db = await setup(t)
  await db.query(`create table public.other (like public.members including defaults)`)
  const [{ a }] = (await db.query(`select segment_id as a from segmenter.segments where name = 'a'`)) as [{ a: string }]
  const [{ b }] = (await db.query(`select segmenter.create_segment('b', 'public.other') as b`)) as [{ b: string }]
  await db.query(
    `insert into public.members (segment_id, id, hash_email, hash_phone, actual_end) values
    ($1, 'm1', 'e1', 'p1', 'infinity'), ($1, 'm2', 'e2', null, 'infinity'), ($1, 'gone', 'eg', 'pg', '2020-01-01')`,
    [a],
  )
  await db.query(`insert into public.other (segment_id, id, hash_email) values ($1, 'o1', 'eo')`, [b])
  await db.query(`select segmenter.remove_members('a', array['m2'])`)
  await db.query(`update public.members set hash_phone = 'p1new' where id = 'm1'`)

  const rows = await db.query(`select segment_id, segment, kind, member_id, attributes from segmenter.showcase order by segment, member_id`)
  assert.deepEqual(
    rows.map((r) => ({ ...r })),
    [
      { segment_id: a, segment: 'a', kind: 'manual', member_id: 'm1', attributes: { hash_email: 'e1', hash_phone: 'p1new' } },
      { segment_id: b, segment: 'b', kind: 'manual', member_id: 'o1', attributes: { hash_email: 'eo', hash_phone: null } },
    ],
  )
  // a retired segment is not in the showcase; its members stay in its table
  await db.query(`select segmenter.retire_segment('b')`)
  assert.deepEqual(
    (await db.query(`select member_id from segmenter.showcase`)).map((r) => r.member_id),
    ['m1'],
  )
  assert.equal((await db.query(`select 1 from public.other`)).length, 1)
})

test('a template naming a member field its segment table lacks is SG010, in both syntaxes', async (t) => {
  const db = await setup(t)
  await refused(
    db,
    sub(`syntax => 'altcraft', add_sql => $1, remove_sql => 'delete from t'`),
    ['insert into t values {for $i, $lead = $batch}({$lead.hash_emial}){autocomma}{end}'],
    'SG010',
    /add_sql/,
    /member field 'hash_emial'/,
    /members/,
  )
  await refused(
    db,
    sub(`syntax => 'altcraft', add_sql => 'insert into t values (1)', remove_sql => $1`),
    ['delete from t where x in ({batch_in "Phone"})'],
    'SG010',
    /remove_sql/,
    /'Phone'/,
  )
  await refused(
    db,
    sub(`add_sql => $1, remove_sql => 'delete from t'`),
    ['{{@each(it.batch) => lead}}({{ lead.nope }}){{/each}}'],
    'SG010',
    /add_sql/,
    /'nope'/,
  )
  // Known fields pass, in any letter case, as the renderer matches them.
  await db.query(sub(`syntax => 'altcraft', add_sql => $1, remove_sql => $2`), [
    'insert into t values {for $i, $lead = $batch}({$lead.HASH_EMAIL}, {$lead.id}){autocomma}{end}',
    'delete from t where x in ({batch_in "hash_phone"})',
  ])
})

// ---------------------------------------------------------------------------------------------
// The TypeScript twin (src/api.ts)

const camel = (name: string) => name.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase())

test("every public function and view has a TS twin of the same name (camelCase), but the sidecar's own", async (t) => {
  const db = await setup(t)
  const functions = await db.query<{ proname: string }>(
    `select distinct p.proname from pg_proc p where p.pronamespace = 'segmenter'::regnamespace
       and p.proname !~ '^(_|tg_)' and coalesce(obj_description(p.oid, 'pg_proc'), '') not like 'Sidecar:%' order by 1`,
  )
  const views = await db.query<{ relname: string }>(
    `select c.relname from pg_class c where c.relnamespace = 'segmenter'::regnamespace and c.relkind = 'v' order by 1`,
  )
  const names = [...functions.map((r) => r.proname), ...views.map((r) => r.relname)]
  assert.ok(names.includes('drop_subscription') && names.includes('status'), names.join())
  const exported = api as unknown as Record<string, unknown>
  const missing = names.filter((n) => typeof exported[camel(n)] !== 'function')
  assert.deepEqual(missing, [], 'SQL functions and views without a twin in src/api.ts')
})

test('the twins pass only the arguments given: the SQL defaults apply, and alterSubscription keeps what it is not given', async (t) => {
  const db = await setup(t)
  await db.query(`create table public.more (like public.members including defaults)`)
  const id = await api.createSegment(db.pool, { name: 'm', tableName: 'public.more' })
  const [segment] = await db.query(`select segment_id, kind, refresh_sql, sources from segmenter.segments where name = 'm'`)
  assert.deepEqual({ ...segment }, { segment_id: id, kind: 'manual', refresh_sql: null, sources: null })
  await api.createConsumer(db.pool, { name: 'c2', kind: 'postgres', dialect: 'postgres', dsnEnv: 'C2_URL' })
  assert.deepEqual((await db.query(`select options from segmenter.consumers where name = 'c2'`))[0]!.options, {})
  await api.createSubscription(db.pool, {
    name: 's',
    consumer: 'c2',
    segments: ['m'],
    addSql: 'insert into t values ({{ it.segment_id }})',
    removeSql: 'delete from t',
  })
  const config = `select batch_size, batch_timeout::text as timeout, syntax, clear_sql, update_sql, audience, description
                  from segmenter.subscriptions where name = 's'`
  assert.deepEqual(
    { ...(await db.query(config))[0] },
    {
      batch_size: 1,
      timeout: '00:00:00',
      syntax: 'squirrelly',
      clear_sql: null,
      update_sql: null,
      audience: null,
      description: null,
    },
  )
  await api.alterSubscription(db.pool, 's', { batchSize: 50, description: 'crm' })
  assert.deepEqual(
    { ...(await db.query(config))[0] },
    {
      batch_size: 50,
      timeout: '00:00:00',
      syntax: 'squirrelly',
      clear_sql: null,
      update_sql: null,
      audience: null,
      description: 'crm',
    },
  )
})

/** An auto segment `auto` refreshed from the table public.src, next to the setup's manual one. */
async function autoSegment(db: Awaited<ReturnType<typeof setup>>, opts: { refreshCron?: string; sources?: string[] } = {}) {
  await db.query(`create table public.src (id text)`)
  await db.query(`create table public.auto_members (like public.members including defaults)`)
  await api.createSegment(db.pool, {
    name: 'auto',
    tableName: 'public.auto_members',
    kind: 'auto',
    refreshSql: 'select id from public.src',
    ...opts,
  })
}

test('twins: dropSubscription, readiness, isReady, markLoaded, sequenceChanges, prune; SQL errors as SegmenterError', async (t) => {
  const db = await setup(t)
  await autoSegment(db, { refreshCron: '0 3 * * *', sources: ['public.src'] })
  const waiting = await api.readiness(db.pool, 'auto')
  assert.equal(waiting.ready, false)
  assert.match(waiting.reason!, /sources not loaded yet: (public\.)?src/)
  assert.equal(await api.isReady(db.pool, 'auto'), false)
  await api.markLoaded(db.pool, 'public.src')
  assert.deepEqual({ ...(await api.readiness(db.pool, 'auto')) }, { ready: true, reason: null })
  assert.equal(await api.isReady(db.pool, 'auto'), true)

  await api.addMembers(db.pool, 'a', ['m1', 'm2'])
  assert.ok((await api.sequenceChanges(db.pool)) >= 1, 'the new changes got positions')
  assert.equal(await api.sequenceChanges(db.pool), 0, 'and nothing is left to sequence')
  assert.deepEqual(await api.prune(db.pool), { changes: 0, log: 0, dead_letters: 0 }, 'nothing is old enough')
  await db.query(`update segmenter.changes set at = now() - interval '2 hours'`)
  const pruned = await api.prune(db.pool, { changesKeep: '1 hour', logKeep: '1 day' })
  assert.ok(pruned.changes >= 1, `changes no subscription needs and older than changes_keep go: ${JSON.stringify(pruned)}`)

  await api.createSubscription(db.pool, { name: 'gone', consumer: 'c', segments: ['a'], addSql: 'select 1', removeSql: 'select 2' })
  assert.equal((await api.status(db.pool)).length, 1)
  await api.dropSubscription(db.pool, 'gone')
  assert.deepEqual(await api.status(db.pool), [])
  await assert.rejects(api.dropSubscription(db.pool, 'gone'), (err: unknown) => {
    assert.ok(err instanceof SegmenterError, String(err))
    assert.equal(err.code, 'NOT_FOUND')
    assert.equal(err.sqlState, 'SG011')
    return true
  })
})

test("the views' twins: status, syncStats, showcase, events and refreshSchedule read the views, filtered by name", async (t) => {
  const db = await setup(t)
  await autoSegment(db)
  await api.addMembers(db.pool, 'a', ['m1', 'm2'])
  const sub = await api.createSubscription(db.pool, {
    name: 'crm',
    consumer: 'c',
    segments: ['a'],
    addSql: 'select 1',
    removeSql: 'select 2',
  })
  await api.createSubscription(db.pool, { name: 'other', consumer: 'c', segments: ['a'], addSql: 'select 1', removeSql: 'select 2' })

  // In one transaction, so that now() in oldest_pending_age is the same for both.
  const client = await db.pool.connect()
  try {
    await client.query('begin')
    const all = await api.status(client)
    assert.deepEqual(
      all.map((r) => r.subscription),
      ['crm', 'other'],
    )
    assert.deepEqual(all, (await client.query(`select * from segmenter.status order by subscription`)).rows)
    await client.query('commit')
  } finally {
    client.release()
  }
  const [crm] = await api.status(db.pool, 'crm')
  assert.equal(crm!.subscription_id, sub)
  assert.equal(crm!.state, 'active')
  assert.equal(Number(crm!.pending_changes), 3, 'the initial sync: segment_upsert and both members')
  assert.deepEqual(crm!.retired_segments, [])
  assert.equal(crm!.current_segments, 1)

  await db.query(
    `select segmenter.record_batch(subscription_id => $1, cursor_pos => 0, cursor_ord => 0, event => 'add', segment_id => null,
       statements => 1, rows => 2, duration_ms => 5, ok => true)`,
    [sub],
  )
  const stats = await api.syncStats(db.pool, 'crm')
  assert.equal(stats.length, 1)
  assert.deepEqual(
    {
      subscription: stats[0]!.subscription,
      queries: Number(stats[0]!.successful_queries),
      rows: Number(stats[0]!.rows),
      errors: Number(stats[0]!.errors),
    },
    { subscription: 'crm', queries: 1, rows: 2, errors: 0 },
  )
  assert.deepEqual(await api.syncStats(db.pool, 'other'), [])

  assert.deepEqual(
    (await api.showcase(db.pool, 'a')).map((r) => [r.segment, r.member_id]),
    [
      ['a', 'm1'],
      ['a', 'm2'],
    ],
  )
  assert.deepEqual(await api.showcase(db.pool, 'auto'), [])
  const events = await api.events(db.pool, 'a')
  assert.deepEqual(
    events.filter((e) => e.subscription_id === null).map((e) => [e.event, e.member_id]),
    [
      ['segment_upsert', null],
      ['add', 'm1'],
      ['add', 'm2'],
    ],
  )
  assert.ok(events.every((e) => e.segment === 'a'))

  const schedule = await api.refreshSchedule(db.pool)
  assert.deepEqual(
    schedule.map((r) => [r.segment, r.table_name, r.ready, r.running]),
    [['auto', 'auto_members', true, false]],
  )
})
