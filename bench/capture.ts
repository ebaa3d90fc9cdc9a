// Capture overhead: INSERT of N current members and UPDATE of N (actual_end = now()) into a
// segment table with capture triggers (registered, with an active subscription) versus the same
// table unregistered, in one run, alternating the order each round to cancel drift.
// Besides wall time, each timed statement's CPU of the bench's own Postgres server (its backends
// and background processes, /proc) and the machine's steal are recorded: on a shared machine the
// CPU ratios are the steadier reading (other processes' load lengthens wall time, not this CPU).
// With floor=1, two more tables measure what any statement-trigger capture costs at least (issue 15
// item 5): `transition` has triggers that name the same transition tables and do nothing (what
// Postgres charges for filling them), `minimal` triggers that only write each statement's ids as
// one array per segment (no chunks, no check, no attribute comparison).
// Usage: node --import tsx bench/capture.ts [members=1000000] [rounds=3] [floor=0]
import { benchDatabase, cpuByKind, median, postmasterPid, round, serverCpuMs, timed } from './common.js'

const members = Number(process.argv[2] ?? 1_000_000)
const rounds = Number(process.argv[3] ?? 3)
const floor = (process.argv[4] ?? 'floor=0') === 'floor=1'
const db = await benchDatabase()
const q = (sql: string) => db.pool.query(sql)

// Autovacuum off on both tables: the UPDATE leaves N dead rows, and at 10M autovacuum took about
// four minutes to clean them, through the other table's next timed INSERT and into its UPDATE (in
// a round with plain first, the registered statements paid for it; the one-round 1.36x of
// bench/results/2026-12-01-capture-10m.json). At 1M it was over in seconds.
const ddl = (table: string) => `
  drop table if exists ${table};
  create table ${table} (
    segment_id uuid not null, id varchar null, hash_email varchar null, hash_phone varchar null,
    actual_begin timestamp not null default now(), actual_end timestamp not null default 'infinity',
    processed timestamp not null default now(), constraint ${table}_id_key unique (id))
    with (autovacuum_enabled = false, toast.autovacuum_enabled = false);
  create index on ${table} using btree(id);`

await q(ddl('bench_registered'))
const { rows } = await q(`select segmenter.create_segment('bench', 'bench_registered') as id`)
const segmentId: string = rows[0].id
await q(`select segmenter.create_consumer('bench', 'mysql', 'mysql', 'BENCH_URL')`)
await q(`select segmenter.create_subscription('bench', 'bench', array['bench'], 'select 1', 'select 1')`)

// The floor's triggers: the same REFERENCING clauses as segmenter._register_table's.
const floorScratch = 'bench_floor_ids'
if (floor)
  await q(`drop table if exists ${floorScratch}; create table ${floorScratch} (segment_id uuid, ids text[]);
  alter table ${floorScratch} alter column ids set storage external;
  create or replace function public.bench_noop() returns trigger language plpgsql as $$ begin return null; end $$;
  create or replace function public.bench_minimal_insert() returns trigger language plpgsql as $$ begin
    insert into ${floorScratch} select segment_id, array_agg(id) from new_rows where actual_end = 'infinity' group by segment_id;
    return null; end $$;
  create or replace function public.bench_minimal_update() returns trigger language plpgsql as $$ begin
    insert into ${floorScratch} select segment_id, array_agg(id) from old_rows where actual_end = 'infinity' group by segment_id;
    return null; end $$;`)
const floorTriggers = (table: string, insertFn: string, updateFn: string) => `
  create trigger capture_insert after insert on ${table} referencing new table as new_rows
    for each statement execute function ${insertFn}();
  create trigger capture_update after update on ${table} referencing old table as old_rows new table as new_rows
    for each statement execute function ${updateFn}();`
type Kind = 'plain' | 'registered' | 'transition' | 'minimal'
const kinds: Kind[] = ['plain', 'registered', ...(floor ? (['transition', 'minimal'] as const) : [])]
const freshTable = async (kind: Kind) => {
  const table = `bench_${kind}`
  if (kind === 'registered') {
    await q(`truncate ${table}; delete from segmenter.changes where subscription_id is null`)
    await q('vacuum segmenter.changes')
    return
  }
  await q(ddl(table))
  if (kind === 'transition') await q(floorTriggers(table, 'public.bench_noop', 'public.bench_noop'))
  if (kind === 'minimal') {
    await q(`truncate ${floorScratch}`)
    await q(floorTriggers(table, 'public.bench_minimal_insert', 'public.bench_minimal_update'))
  }
}

const insert = (table: string) =>
  q(`insert into ${table} (segment_id, id, hash_email, hash_phone)
  select '${segmentId}', 'member-' || g, md5(g::text), md5((g * 7)::text) from generate_series(1, ${members}) g`)
const update = (table: string) => q(`update ${table} set actual_end = now()`)

const perKind = () => Object.fromEntries(kinds.map((k) => [k, [] as number[]])) as Record<Kind, number[]>
const perOp = () => ({ insert: perKind(), update: perKind() })
const times = perOp()
const cpu = perOp()
const steal = perOp()
// CPU of every other process on the machine meanwhile (all processes minus this server): the load
// the timed statement shared the two cores with.
const others = perOp()
const machineCpu = () => {
  const k = cpuByKind()
  return k.postgres + k.mariadb + k.node + k.other
}
// The server's CPU is readable only for a server this bench started (not BENCH_DATABASE_URL).
const serverCpu = db.dataDir ? () => serverCpuMs(postmasterPid(db.dataDir!)) : () => NaN
const progress = (msg: string) => process.stderr.write(`[capture] ${new Date().toISOString().slice(11, 19)} ${msg}\n`)
// Other autovacuum (segmenter.changes, the catalogs) is waited out before each timed statement.
async function quiesce(): Promise<void> {
  for (;;) {
    const { rows } = await q(
      `select count(*)::int as n from pg_stat_activity where backend_type = 'autovacuum worker' and datname = current_database()`,
    )
    if (rows[0].n === 0) return
    await new Promise((r) => setTimeout(r, 200))
  }
}
async function measure(op: 'insert' | 'update', kind: Kind, fn: () => Promise<unknown>): Promise<void> {
  await quiesce()
  const cpu0 = serverCpu()
  const steal0 = cpuByKind().steal
  const machine0 = machineCpu()
  times[op][kind].push(await timed(fn))
  cpu[op][kind].push(serverCpu() - cpu0)
  steal[op][kind].push(cpuByKind().steal - steal0)
  others[op][kind].push(machineCpu() - machine0 - cpu[op][kind].at(-1)!)
  const i = times[op][kind].length - 1
  progress(
    `${op} ${kind}: ${round(times[op][kind][i]!, 0)} ms, cpu ${round(cpu[op][kind][i]!, 0)} ms, steal ${round(steal[op][kind][i]!, 0)} ms`,
  )
}
for (let r = 0; r < rounds; r++) {
  // Each round starts one table later than the one before (plain/registered alternate as before).
  const order = kinds.map((_, i) => kinds[(i + r) % kinds.length]!)
  for (const kind of order) {
    const table = `bench_${kind}`
    await freshTable(kind)
    await q('checkpoint')
    await measure('insert', kind, () => insert(table))
    await q(`vacuum analyze ${table}`)
    await q('checkpoint')
    await measure('update', kind, () => update(table))
  }
}
const rounded = (x: typeof times) =>
  Object.fromEntries(
    Object.entries(x).map(([op, v]) => [op, Object.fromEntries(Object.entries(v).map(([k, ts]) => [k, ts.map((t) => round(t, 0))]))]),
  )
const captured = await q(
  `select event, sum(cardinality(ids))::bigint as n from segmenter.changes where subscription_id is null and ids is not null group by event order by event`,
)
// The settings the capture triggers run with (their SET clauses: work_mem, hash_mem_multiplier).
const triggerSettings = await q(
  `select p.proname, p.proconfig from pg_proc p where p.pronamespace = 'segmenter'::regnamespace
   and p.proname in ('tg_segment_table__capture_insert', 'tg_segment_table__capture_update') order by p.proname`,
)
// A kind's median against plain's, for one op's figures (wall or CPU).
const toPlain = (byKind: Record<Kind, number[]>, kind: Kind) => round(median(byKind[kind]) / median(byKind.plain), 2)
const serverVersion = (await q(`select current_setting('server_version') as v`)).rows[0].v
const report = {
  benchmark: 'capture',
  server_version: serverVersion,
  members,
  rounds,
  trigger_settings: Object.fromEntries(triggerSettings.rows.map((r) => [r.proname, r.proconfig])),
  insert_ms: { plain: round(median(times.insert.plain), 0), registered: round(median(times.insert.registered), 0) },
  update_ms: { plain: round(median(times.update.plain), 0), registered: round(median(times.update.registered), 0) },
  insert_ratio: toPlain(times.insert, 'registered'),
  update_ratio: toPlain(times.update, 'registered'),
  target_ratio: 1.5,
  // The bench server's CPU (ms, median) and the ratios of those medians.
  insert_cpu_ms: { plain: round(median(cpu.insert.plain), 0), registered: round(median(cpu.insert.registered), 0) },
  update_cpu_ms: { plain: round(median(cpu.update.plain), 0), registered: round(median(cpu.update.registered), 0) },
  insert_cpu_ratio: toPlain(cpu.insert, 'registered'),
  update_cpu_ratio: toPlain(cpu.update, 'registered'),
  // Every round's figures, in round order (wall ms, server CPU ms, machine steal ms).
  all_ms: rounded(times),
  all_cpu_ms: rounded(cpu),
  all_steal_ms: rounded(steal),
  all_other_processes_cpu_ms: rounded(others),
  last_round_events: Object.fromEntries(captured.rows.map((r) => [r.event, Number(r.n)])),
  // floor=1: the two floor tables against plain, as the ratios above (medians; CPU and wall).
  ...(floor && {
    floor: Object.fromEntries(
      (['transition', 'minimal'] as const).map((k) => [
        k,
        {
          insert_cpu_ratio: toPlain(cpu.insert, k),
          update_cpu_ratio: toPlain(cpu.update, k),
          insert_ratio: toPlain(times.insert, k),
          update_ratio: toPlain(times.update, k),
        },
      ]),
    ),
  }),
}
console.log(JSON.stringify(report, null, 2))
await db.stop()
