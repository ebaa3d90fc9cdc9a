// Refresh cost: segmenter.refresh of an N-member auto segment with 5% churn (5% leave, 4% new,
// 1% re-enter from closed rows) and 1% attribute changes, with capture (registered table, active
// subscription) versus the same refresh on the table without its capture triggers, and versus
// a naive refresh (delete every row, insert the new result) of the same table, with and without
// capture. One run, rounds alternate the order; every timed run starts from the same table state.
// Besides wall time, each timed run's CPU of the bench's own Postgres server (/proc) and the
// machine's steal are recorded: on a shared machine the CPU ratio is the steadier reading.
// Usage: node --import tsx bench/refresh.ts [members=1000000] [rounds=3] [naive=1]
// naive=0 leaves the naive refreshes out: at 10M they take about 9 of a round's 12 minutes, and the
// target is about the refresh with and without capture.
import { benchDatabase, cpuByKind, median, postmasterPid, round, serverCpuMs, timed } from './common.js'

const members = Number(process.argv[2] ?? 1_000_000)
const rounds = Number(process.argv[3] ?? 3)
const withNaive = (process.argv[4] ?? '1') !== '0'
const churn = Math.round(members * 0.05)
const reenter = Math.round(members * 0.01)
const db = await benchDatabase()
const q = (sql: string, params?: unknown[]) => db.pool.query(sql, params)

// The seed's table shape: unique (id) and an index on id. Autovacuum off (reset() vacuums): a
// timed run must not overlap an autovacuum of the dead rows the run before left (bench/capture
// at 10M had minutes of it).
await q(`create table bench_seg (
  segment_id uuid not null, id varchar null, hash_email varchar null, hash_phone varchar null,
  actual_begin timestamp not null default now(), actual_end timestamp not null default 'infinity',
  processed timestamp not null default now(), constraint bench_seg_id_key unique (id))
  with (autovacuum_enabled = false, toast.autovacuum_enabled = false);
  create index on bench_seg using btree(id);`)
await q('create table bench_src (id text, hash_email text, hash_phone text)')
const segmentId: string = (
  await q(`select segmenter.create_segment('bench', 'bench_seg', 'auto',
  'select id, hash_email, hash_phone from bench_src') as id`)
).rows[0].id
await q(`select segmenter.create_consumer('bench', 'mysql', 'mysql', 'BENCH_URL')`)
await q(`select segmenter.create_subscription('bench', 'bench', array['bench'], 'select 1', 'select 1')`)

// Before: members 1..N current, 2N+1..2N+reenter closed. After: the first `churn` members leave,
// every 100th stayer changes its email, N+1..N+churn-reenter are new, the closed ones re-enter.
await q('create table bench_base (like bench_seg)')
await q(
  `insert into bench_base
  select $1::uuid as segment_id, g::text as id, md5(g::text)::varchar as hash_email, md5((g * 7)::text)::varchar as hash_phone,
         (now() - interval '2 days')::timestamp as actual_begin, 'infinity'::timestamp as actual_end, (now() - interval '2 days')::timestamp as processed
  from generate_series(1, $2) g
  union all
  select $1, g::text, md5(g::text), md5((g * 7)::text), now() - interval '3 days', now() - interval '2 days', now() - interval '2 days'
  from generate_series(2 * $2 + 1, 2 * $2 + $3) g`,
  [segmentId, members, reenter],
)
await q(
  `insert into bench_src
  select g::text, case when g % 100 = 0 then 'changed' else md5(g::text) end, md5((g * 7)::text) from generate_series($3 + 1, $1) g
  union all select g::text, md5(g::text), md5((g * 7)::text) from generate_series($1 + 1, $1 + $3 - $2) g
  union all select g::text, md5(g::text), md5((g * 7)::text) from generate_series(2 * $1 + 1, 2 * $1 + $2) g`,
  [members, reenter, churn],
)
await q('analyze bench_src')

// Without capture means without the triggers, not with them disabled: a disabled trigger that names
// transition tables still has Postgres fill them (a 2M-row UPDATE wrote 198 MB of temporary files
// with the trigger disabled, 194 MB with it enabled, none without it), which would leave that part
// of capture's cost in the baseline. Each timed run starts without them; capture's get them back.
// The triggers are found by their functions (segmenter's), so their names live only in db/.
async function dropCapture(): Promise<void> {
  const { rows } = await q(
    `select t.tgname from pg_trigger t join pg_proc p on p.oid = t.tgfoid
     where t.tgrelid = 'bench_seg'::regclass and not t.tgisinternal and p.pronamespace = 'segmenter'::regnamespace`,
  )
  for (const { tgname } of rows) await q(`drop trigger ${JSON.stringify(tgname)} on bench_seg`)
}
const registerCapture = () => q(`select segmenter._register_table('bench_seg'::regclass)`)

async function reset(): Promise<void> {
  await dropCapture()
  await q('truncate bench_seg')
  await q('insert into bench_seg select * from bench_base')
  await q('delete from segmenter.changes')
  await q('vacuum analyze bench_seg')
  await q('vacuum segmenter.changes')
  await q('checkpoint')
}

type Variant = 'capture' | 'no_capture' | 'naive_capture' | 'naive_no_capture'
const variants: Variant[] = withNaive ? ['capture', 'no_capture', 'naive_capture', 'naive_no_capture'] : ['capture', 'no_capture']
const times: Record<Variant, number[]> = { capture: [], no_capture: [], naive_capture: [], naive_no_capture: [] }
const cpu: Record<Variant, number[]> = { capture: [], no_capture: [], naive_capture: [], naive_no_capture: [] }
const steal: Record<Variant, number[]> = { capture: [], no_capture: [], naive_capture: [], naive_no_capture: [] }
// The server's CPU is readable only for a server this bench started (not BENCH_DATABASE_URL).
const serverCpu = db.dataDir ? () => serverCpuMs(postmasterPid(db.dataDir!)) : () => NaN
const progress = (msg: string) => process.stderr.write(`[refresh] ${new Date().toISOString().slice(11, 19)} ${msg}\n`)
async function measure(v: Variant, fn: () => Promise<unknown>): Promise<void> {
  const cpu0 = serverCpu()
  const steal0 = cpuByKind().steal
  times[v].push(await timed(fn))
  cpu[v].push(serverCpu() - cpu0)
  steal[v].push(cpuByKind().steal - steal0)
  progress(`${v}: ${round(times[v].at(-1)!, 0)} ms, cpu ${round(cpu[v].at(-1)!, 0)} ms, steal ${round(steal[v].at(-1)!, 0)} ms`)
}
const naive = () =>
  q(`begin;
  delete from bench_seg where segment_id = '${segmentId}';
  insert into bench_seg (segment_id, id, hash_email, hash_phone, actual_begin, actual_end, processed)
    select '${segmentId}', id, hash_email, hash_phone, now(), 'infinity', now() from bench_src;
  commit;`)
let counts: Record<string, unknown> = {}
let events: Record<string, number> = {}

for (let r = 0; r < rounds; r++) {
  const order = r % 2 === 0 ? variants : [...variants].reverse()
  for (const v of order) {
    await reset()
    const capture = !v.endsWith('no_capture')
    if (capture) await registerCapture()
    if (v.startsWith('naive')) await measure(v, naive)
    else {
      await measure(v, async () => {
        counts = (await q(`select segmenter.refresh('bench') as r`)).rows[0].r
      })
      if (counts.ok !== true) throw new Error(`refresh failed: ${JSON.stringify(counts)}`)
    }
    if (v === 'capture') {
      const rows = (
        await q(
          `select event::text, sum(cardinality(ids))::bigint as n from segmenter.changes where ids is not null group by event order by event`,
        )
      ).rows
      events = Object.fromEntries(rows.map((x) => [x.event, Number(x.n)]))
    }
  }
}

const ms = (v: Variant) => round(median(times[v]), 0)
const { duration_ms: _d, ...lastCounts } = counts
console.log(
  JSON.stringify(
    {
      benchmark: 'refresh',
      members,
      rounds,
      counts: lastCounts,
      capture_events: events,
      refresh_ms: { capture: ms('capture'), no_capture: ms('no_capture') },
      naive_ms: withNaive ? { capture: ms('naive_capture'), no_capture: ms('naive_no_capture') } : null,
      capture_ratio: round(median(times.capture) / median(times.no_capture), 2),
      target_ratio: 1.3,
      // The bench server's CPU (ms, median), and the ratio of those medians.
      refresh_cpu_ms: { capture: round(median(cpu.capture), 0), no_capture: round(median(cpu.no_capture), 0) },
      capture_cpu_ratio: round(median(cpu.capture) / median(cpu.no_capture), 2),
      naive_vs_refresh: withNaive
        ? {
            with_capture: round(median(times.naive_capture) / median(times.capture), 2),
            without_capture: round(median(times.naive_no_capture) / median(times.no_capture), 2),
          }
        : null,
      all_ms: Object.fromEntries(variants.map((v) => [v, times[v].map((x) => round(x, 0))])),
      all_cpu_ms: Object.fromEntries(variants.map((v) => [v, cpu[v].map((x) => round(x, 0))])),
      all_steal_ms: Object.fromEntries(variants.map((v) => [v, steal[v].map((x) => round(x, 0))])),
    },
    null,
    2,
  ),
)
await db.stop()
