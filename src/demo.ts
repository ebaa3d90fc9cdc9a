// `make demo`: everything on the embedded Postgres (./.segmenter/): sample customers and orders, an
// auto segment with a schedule and a readiness rule, a manual segment, a consumer that is a second
// database of the same server, subscriptions in the seed's template syntax; runs the scheduler's
// refresh and the delivery, prints segmenter.status and segmenter.sync_stats. The data stays.
import pg from 'pg'
import { pino } from 'pino'
import { createPool } from './db.js'
import { formatResult } from './table.js'
import { startEmbedded } from './embedded.js'
import { migrate } from './migrate.js'
import { runDueRefreshes } from './refresh.js'
import { startSidecar } from './sidecar.js'

const t0 = Date.now()
const step = (msg: string) => console.log(`\n▶ ${msg}  (${((Date.now() - t0) / 1000).toFixed(1)} s)`)

step('starting the embedded PostgreSQL under ./.segmenter/')
const server = await startEmbedded()
await server.createDatabase('segmenter')
await server.createDatabase('crm_target')
const home = server.url('segmenter')
// Every run starts from an empty install: the data dir is the demo's own.
const admin = new pg.Client({ connectionString: home })
await admin.connect()
await admin.query('drop schema if exists segmenter cascade; drop schema if exists pgboss cascade')
await admin.end()
await migrate(home)
const pool = createPool(home)
process.env.DEMO_CRM_URL = server.url('crm_target')

step('sample data: 100,000 customers and 300,000 orders')
await pool.query(`
  drop table if exists demo_customers, demo_orders, demo_big_spenders, demo_vip cascade;
  create table demo_customers (id int primary key, email text, city text);
  insert into demo_customers select g, 'user' || g || '@example.com', (array['Berlin', 'Paris', 'Riga', 'Oslo'])[1 + g % 4]
    from generate_series(1, 100000) g;
  create table demo_orders (customer_id int, amount numeric, day date);
  insert into demo_orders select 1 + (g::bigint * 7919) % 100000, round((g % 997)::numeric / 5, 2), current_date - (g % 30)
    from generate_series(1, 300000) g;
  -- segment tables: the seed's shape, one per segment
  create table demo_big_spenders (segment_id uuid not null, id varchar, hash_email varchar, city varchar,
    actual_begin timestamp not null default now(), actual_end timestamp not null default 'infinity',
    processed timestamp not null default now(), unique (segment_id, id));
  create table demo_vip (like demo_big_spenders including all);`)

step('an auto segment (cron, sources, readiness rule) and a manual one')
await pool.query(
  `select segmenter.create_segment('big_spenders', 'demo_big_spenders', kind => 'auto',
  refresh_sql => $1, refresh_cron => '*/5 * * * *', sources => array['demo_customers', 'demo_orders']::regclass[],
  ready_sql => 'select exists (select 1 from demo_orders where day = current_date)')`,
  [
    `select c.id::text as id, md5(c.email) as hash_email, c.city from demo_customers c
   join demo_orders o on o.customer_id = c.id group by c.id having sum(o.amount) > 350`,
  ],
)
await pool.query(`select segmenter.create_segment('vip', 'demo_vip')`)
await pool.query(`select segmenter.add_members('vip', array(select g::text from generate_series(1, 500) g))`)

step("a consumer (the crm_target database) and subscriptions in the seed's syntax")
await pool.query(`select segmenter.create_consumer('crm', 'postgres', 'postgres', 'DEMO_CRM_URL')`)
const target = new pg.Client({ connectionString: server.url('crm_target') })
await target.connect()
await target.query(`drop table if exists mysegment, segments;
  create table mysegment (segid text, clientid text, city text, updated timestamptz);
  create table segments (segment_id text primary key, name text, updated timestamptz)`)
for (const segment of ['big_spenders', 'vip']) {
  await pool.query(
    `select segmenter.create_subscription(name => $1, consumer => 'crm', segments => array[$2],
    syntax => 'altcraft', batch_size => 1000, batch_timeout => '1 s', add_sql => $3, remove_sql => $4,
    clear_sql => 'DELETE FROM mysegment WHERE segid = {segment_id}', segment_upsert_sql => $5,
    segment_delete_sql => 'DELETE FROM segments WHERE segment_id = {segment_id}')`,
    [
      `crm_${segment}`,
      segment,
      `INSERT INTO mysegment (segid, clientid, city, updated) VALUES
{for $index, $lead = $batch}
({segment_id}, '{$lead.id}', '{$lead.city}', NOW()){autocomma}
{end}`,
      'DELETE FROM mysegment WHERE segid = {segment_id} AND clientid IN ({batch_in "id"})',
      `INSERT INTO segments (segment_id, name, updated) VALUES ({segment_id}, '{segment_name}', NOW())
ON CONFLICT (segment_id) DO UPDATE SET name = '{segment_name}', updated = NOW()`,
    ],
  )
}

step('the loaders mark the sources loaded; the scheduler refreshes the due, ready segment')
await pool.query(`select segmenter.mark_loaded('demo_customers'), segmenter.mark_loaded('demo_orders')`)
for (const r of await runDueRefreshes(pool)) console.log(`  ${r.segment}: ${r.outcome} ${JSON.stringify(r.counts ?? r.reason ?? '')}`)

step('delivering to crm_target')
const sidecar = await startSidecar({ databaseUrl: home, pool, log: pino({ level: 'warn' }), pollIntervalMs: 200, once: true })
const progress = setInterval(async () => {
  const {
    rows: [{ n }],
  } = await target.query('select count(*)::int as n from mysegment').catch(() => ({ rows: [{ n: '?' }] }))
  console.log(`  … ${n} members in crm_target.mysegment`)
}, 2000)
await sidecar.done
clearInterval(progress)
const { rows: counts } = await target.query('select segid, count(*)::int as members from mysegment group by segid')
console.log(`  crm_target.mysegment: ${counts.map((c) => `${c.members} members of ${c.segid}`).join(', ')}`)

step('select * from segmenter.status')
const width = (process.stdout.isTTY && process.stdout.columns) || Infinity
console.log(
  formatResult(await pool.query('select subscription, state, pending_changes, last_success, last_error from segmenter.status'), width),
)
step('select * from segmenter.sync_stats')
console.log(
  formatResult(
    await pool.query(
      'select subscription, bucket, successful_queries, rows, errors from segmenter.sync_stats order by bucket, subscription',
    ),
    width,
  ),
)
console.log(`
Done in ${((Date.now() - t0) / 1000).toFixed(1)} s. The data stays in ./.segmenter/.
  node bin/segmenter.js status      (starts the embedded server again; any command does)
  node bin/segmenter.js run         (the sidecar; while it runs, psql works:)
  psql ${home}`)
await target.end()
await pool.end()
await server.stop()
