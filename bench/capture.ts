// Capture overhead: INSERT of N current members and UPDATE of N (actual_end = now()) into a
// segment table with capture triggers (registered, with an active subscription) versus the same
// table unregistered, in one run, alternating the order each round to cancel drift.
// Usage: node --import tsx bench/capture.ts [members=1000000] [rounds=3]
import { benchDatabase, median, round, timed } from './common.js'

const members = Number(process.argv[2] ?? 1_000_000)
const rounds = Number(process.argv[3] ?? 3)
const db = await benchDatabase()
const q = (sql: string) => db.pool.query(sql)

const ddl = (table: string) => `
  drop table if exists ${table};
  create table ${table} (
    segment_id uuid not null, id varchar null, hash_email varchar null, hash_phone varchar null,
    actual_begin timestamp not null default now(), actual_end timestamp not null default 'infinity',
    processed timestamp not null default now(), constraint ${table}_id_key unique (id));
  create index on ${table} using btree(id);`

await q(ddl('bench_registered'))
const { rows } = await q(`select segmenter.create_segment('bench', 'bench_registered') as id`)
const segmentId: string = rows[0].id
await q(`select segmenter.create_consumer('bench', 'mysql', 'mysql', 'BENCH_URL')`)
await q(`select segmenter.create_subscription('bench', 'bench', array['bench'], 'select 1', 'select 1')`)

const insert = (table: string) =>
  q(`insert into ${table} (segment_id, id, hash_email, hash_phone)
  select '${segmentId}', 'member-' || g, md5(g::text), md5((g * 7)::text) from generate_series(1, ${members}) g`)
const update = (table: string) => q(`update ${table} set actual_end = now()`)

const times = {
  insert: { plain: [] as number[], registered: [] as number[] },
  update: { plain: [] as number[], registered: [] as number[] },
}
for (let r = 0; r < rounds; r++) {
  const order = r % 2 === 0 ? (['plain', 'registered'] as const) : (['registered', 'plain'] as const)
  for (const kind of order) {
    const table = `bench_${kind}`
    if (kind === 'plain') await q(ddl(table))
    else {
      await q(`truncate ${table}; delete from segmenter.changes where subscription_id is null`)
      await q('vacuum segmenter.changes')
    }
    await q('checkpoint')
    times.insert[kind].push(await timed(() => insert(table)))
    await q(`vacuum analyze ${table}`)
    await q('checkpoint')
    times.update[kind].push(await timed(() => update(table)))
  }
}
const captured = await q(
  `select event, sum(cardinality(ids))::bigint as n from segmenter.changes where subscription_id is null and ids is not null group by event order by event`,
)
const report = {
  benchmark: 'capture',
  members,
  rounds,
  insert_ms: { plain: round(median(times.insert.plain), 0), registered: round(median(times.insert.registered), 0) },
  update_ms: { plain: round(median(times.update.plain), 0), registered: round(median(times.update.registered), 0) },
  insert_ratio: round(median(times.insert.registered) / median(times.insert.plain), 2),
  update_ratio: round(median(times.update.registered) / median(times.update.plain), 2),
  target_ratio: 1.5,
  last_round_events: Object.fromEntries(captured.rows.map((r) => [r.event, Number(r.n)])),
}
console.log(JSON.stringify(report, null, 2))
await db.stop()
