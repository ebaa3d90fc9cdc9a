// `make demo`: an embedded Postgres, sample customers, a manual segment, a consumer that is a
// second database of the same server, a subscription in the seed's template syntax; delivers,
// prints segmenter.status and segmenter.sync_stats, and leaves everything for psql.
import pg from 'pg'
import { pino } from 'pino'
import { createPool } from './db.js'
import { startEmbedded } from './embedded.js'
import { migrate } from './migrate.js'
import { startSidecar } from './sidecar.js'

const step = (msg: string) => console.log(`\n▶ ${msg}`)
step('starting the embedded PostgreSQL under ./.segmenter/')
const server = await startEmbedded()
await server.createDatabase('segmenter_demo')
await server.createDatabase('crm_target')
const home = server.url('segmenter_demo')
step(`migrating ${home}`)
await migrate(home)
const pool = createPool(home)

step('sample data: 100,000 customers with orders, a segment of big spenders')
await pool.query(`
  drop table if exists demo_customers, demo_orders, demo_segment cascade;
  create table demo_customers (id int primary key, email text);
  insert into demo_customers select g, 'user' || g || '@example.com' from generate_series(1, 100000) g;
  create table demo_orders (customer_id int, amount numeric);
  insert into demo_orders select (random() * 99999)::int + 1, round((random() * 200)::numeric, 2) from generate_series(1, 300000);
  create table demo_segment (segment_id uuid not null, id varchar, hash_email varchar,
    actual_begin timestamp not null default now(), actual_end timestamp not null default 'infinity',
    processed timestamp not null default now(), unique (segment_id, id));`)
const { rows: [seg] } = await pool.query(`select segmenter.create_segment('big_spenders', 'demo_segment') as id`)
await pool.query(`delete from segmenter.subscriptions where name = 'crm_big_spenders'`)
await pool.query(`select segmenter.create_consumer('crm', 'postgres', 'postgres', 'DEMO_CRM_URL')`)
process.env.DEMO_CRM_URL = server.url('crm_target')
const target = new pg.Client({ connectionString: server.url('crm_target') })
await target.connect()
await target.query(`drop table if exists mysegment; create table mysegment (segid text, clientid text, email text, updated timestamptz)`)
await pool.query(`select segmenter.create_subscription(name => 'crm_big_spenders', consumer => 'crm', segments => array['big_spenders'],
  syntax => 'altcraft', batch_size => 1000, batch_timeout => '1 s',
  add_sql => $1, remove_sql => $2, clear_sql => 'DELETE FROM mysegment WHERE segid = {segment_id}')`, [
  `INSERT INTO mysegment (segid, clientid, email, updated) VALUES
{for $index, $lead = $batch}
({segment_id}, '{$lead.id}', '{$lead.hash_email}', NOW()){autocomma}
{end}`,
  `DELETE FROM mysegment WHERE segid = {segment_id} AND clientid IN ({batch_in "id"})`])
await pool.query(`insert into demo_segment (segment_id, id, hash_email)
  select $1, c.id::text, md5(c.email) from demo_customers c join demo_orders o on o.customer_id = c.id
  group by c.id, c.email having sum(o.amount) > 400`, [seg.id])

step('delivering to the crm_target database')
const sidecar = await startSidecar({ databaseUrl: home, pool, log: pino({ level: 'warn' }), pollIntervalMs: 200, once: true })
await sidecar.done
const { rows: [{ n }] } = await target.query('select count(*)::int as n from mysegment')
console.log(`crm_target.mysegment now holds ${n} members`)
step('select * from segmenter.status')
console.table((await pool.query('select subscription, state, pending_changes, last_success, last_error from segmenter.status')).rows)
step('select * from segmenter.sync_stats')
console.table((await pool.query('select subscription, bucket, successful_queries, rows, errors from segmenter.sync_stats')).rows)
console.log(`\nInspect with: psql ${home}`)
await target.end()
await pool.end()
await server.stop()
