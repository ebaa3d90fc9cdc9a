// Scale: how the drain and a resync behave as a segment grows, at several sizes in one process, so
// that the figures of every size come from the same servers, the same settings and the same hour.
// Per size N (default 1M, 5M, 10M), with the sidecar started as users start it (bin/segmenter.js
// run, a child process, its launcher's heap flags):
//  1. raw: N rows into MariaDB with mysql2, batches of B, one transaction per batch (the baseline),
//     once before the drain and once after it: raw moves ±15% between measurements on this VM, and
//     one raw per size made the ratios of two sizes differ by that much (runs 7 and 9);
//  2. drain: one home INSERT of N members into a registered segment table with an active
//     subscription, then from the home commit until the home cursor covers everything (the log row
//     of the last batch); the ratio raw / drain (raw: the mean of its two times), the CPU of the
//     home Postgres and of the sidecar per member, the sidecar's peak RSS;
//  3. resync: a new subscription of the same N members (a snapshot, as resync takes) drained by a
//     fresh sidecar: its peak RSS (VmHWM) and rate;
//  4. the change log: its size on disk per captured event after the drain, and after prune().
// The home runs with shared_buffers sized like a production server that holds 10M-member segments
// (SCALE_SHARED_BUFFERS, default 6GB: a quarter of the build machine's 24 GiB, the usual advice),
// not the tests' 256MB: from 5M members on, the segment table and its index outgrow 256MB, and the
// drain's first reads then evict and write back pages, a cost of that small cache, not of capture
// or delivery (SCALE_SHARED_BUFFERS=256MB repeats the earlier runs' setting). pg_stat_statements
// records what the drain's statements read, hit, dirtied and wrote in shared buffers.
// Usage: node --import tsx bench/scale.ts [sizes=1000000,5000000,10000000] [batch=1000]
// Writes bench/results/<date>-scale.json (-scale-2.json for the day's second run, …) and prints the table.
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import {
  benchDatabase,
  benchMysql,
  cpuByKind,
  cpuSince,
  drained,
  drainEnd,
  mysqlDatabase,
  postmasterPid,
  procStatusMb,
  rawMysqlInsert,
  round,
  serverCpuMs,
  DRAINED_POLL,
} from './common.js'

const sizes = (process.argv[2] ?? '1000000,5000000,10000000').split(',').map(Number)
const batch = Number(process.argv[3] ?? 1000)
const ROOT = fileURLToPath(new URL('..', import.meta.url))
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const progress = (msg: string) => process.stderr.write(`[scale] ${new Date().toISOString().slice(11, 19)} ${msg}\n`)

const sharedBuffers = process.env.SCALE_SHARED_BUFFERS ?? '6GB'
const home = await benchDatabase([`-c shared_buffers=${sharedBuffers}`, '-c shared_preload_libraries=pg_stat_statements'])
const maria = await benchMysql()
if (!home.dataDir || !maria.pid) throw new Error('bench/scale measures its own servers: unset BENCH_DATABASE_URL and BENCH_MYSQL_URL')
// CPU of these two servers only: tests or other benches running meanwhile do not count.
const homeCpuMs = () => serverCpuMs(postmasterPid(home.dataDir!))
const mariaCpuMs = () => serverCpuMs(maria.pid!())
const q = (sql: string, params?: unknown[]) => home.pool.query(sql, params)
await q('create extension if not exists pg_stat_statements')
const homeSettings = Object.fromEntries(
  (
    await q(
      `select name, current_setting(name) as value from pg_settings
       where name in ('shared_buffers', 'work_mem', 'effective_cache_size', 'max_wal_size', 'fsync', 'server_version') order by name`,
    )
  ).rows.map((r) => [r.name, r.value]),
)
// The bench's own poll for the end of a drain (drained() in common.ts, every 100 ms). It runs on
// the home too, and costs more per call the more changes are pending (2.7 ms a call during the 10M
// drain, 0.3 ms during the 1M one: 4.0 s of the 10M drain's home CPU, 0.04 s of the 1M one's).
// It is counted apart (pollCost) and taken out of the drain's home CPU per member.
const POLL = DRAINED_POLL
const pollCost = async () => {
  const { rows } = await q(
    `select coalesce(sum(calls), 0)::bigint as calls, coalesce(sum(total_exec_time), 0)::float8 as exec_ms from pg_stat_statements
     where dbid = (select oid from pg_database where datname = current_database()) and query = $1`,
    [POLL],
  )
  return { calls: Number(rows[0].calls), exec_ms: round(rows[0].exec_ms, 1) }
}
/** Shared-buffer traffic of the drain's statements (all but the bench's own), since the reset. */
const drainBuffers = async () =>
  Object.fromEntries(
    Object.entries(
      (
        await q(`select coalesce(sum(calls), 0)::bigint as calls, coalesce(sum(shared_blks_hit), 0)::bigint as hit,
           coalesce(sum(shared_blks_read), 0)::bigint as read, coalesce(sum(shared_blks_dirtied), 0)::bigint as dirtied,
           coalesce(sum(shared_blks_written), 0)::bigint as written, coalesce(sum(temp_blks_written), 0)::bigint as temp_written
         from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database())
           and query not like 'insert into scale_%' and query not like '%pg_stat_statements%' and query <> '${POLL}'`)
      ).rows[0],
    ).map(([k, v]) => [k, Number(v)]),
  )
/**
 * The same traffic per statement, the eight with most buffer hits: which of the drain's statements
 * costs more per member as N grows (their text cut to 160 characters, times in ms).
 */
const drainStatements = async () =>
  (
    await q(`select left(regexp_replace(query, '\\s+', ' ', 'g'), 160) as query, calls::bigint as calls,
       shared_blks_hit::bigint as hit, shared_blks_dirtied::bigint as dirtied, round(total_exec_time::numeric, 1)::float8 as exec_ms,
       round(total_plan_time::numeric, 1)::float8 as plan_ms
     from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database())
       and query not like 'insert into scale_%' and query not like '%pg_stat_statements%' and query <> '${POLL}'
     order by shared_blks_hit desc limit 8`)
  ).rows.map((r) => ({ ...r, calls: Number(r.calls), hit: Number(r.hit), dirtied: Number(r.dirtied) }))
const target = await mysqlDatabase(maria.url, 'bench_scale')
process.env.BENCH_TARGET_URL = target.url
await q(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'BENCH_TARGET_URL')`)

const ADD = (table: string) => `INSERT INTO ${table} (segId, clientId, email, updated) VALUES
{for $index, $lead = $batch}({segment_id}, {$lead.id}, {$lead.hash_email}, NOW(6)){autocomma}{end}`
const REMOVE = (table: string) => `DELETE FROM ${table} WHERE segId = {segment_id} AND clientId IN ({batch_in "id"})`
const targetTable = (table: string) =>
  target.conn.query(`create table ${table} (segId varchar(36) not null, clientId varchar(255) not null,
  email varchar(64), updated datetime(6), key (segId, clientId)) engine=InnoDB`)
const count = async (table: string) => Number(((await target.conn.query(`select count(*) as n from ${table}`)) as any)[0][0].n)

async function subscribe(name: string, segment: string, table: string): Promise<string> {
  await q(
    `select segmenter.create_subscription(name => $1, consumer => 'maria', segments => array[$2], syntax => 'altcraft',
    add_sql => $3, remove_sql => $4, batch_size => $5)`,
    [name, segment, ADD(table), REMOVE(table), batch],
  )
  return (await q(`select subscription_id from segmenter.subscriptions where name = $1`, [name])).rows[0].subscription_id
}

/** Wait for the drain; a sidecar that died on the way fails it. */
const drainedBy = (subscriptionId: string, child: ChildProcess) =>
  drained(home.pool, subscriptionId, () =>
    child.exitCode !== null || child.signalCode !== null
      ? `the sidecar exited (${child.exitCode ?? child.signalCode}) before the drain finished`
      : null,
  )

const startSidecar = () =>
  spawn(
    process.execPath,
    // SCALE_NODE_FLAGS come last, so they override the launcher's (to try other heap settings).
    [...launcherFlags(), ...(process.env.SCALE_NODE_FLAGS?.split(' ').filter(Boolean) ?? []), 'bin/segmenter.js', 'run'],
    {
      cwd: ROOT,
      env: { ...process.env, DATABASE_URL: home.url, SEGMENTER_LOG_LEVEL: 'warn', SEGMENTER_HTTP_PORT: '0' },
      // The sidecar writes nothing to stdout, except what SCALE_NODE_FLAGS asks of V8 (--trace-gc).
      stdio: ['ignore', process.env.SCALE_NODE_FLAGS ? 'inherit' : 'ignore', 'inherit'],
    },
  )
/** The heap flags of the launcher's shebang: what `bin/segmenter.js run` starts with. */
function launcherFlags(): string[] {
  const shebang = readFileSync(`${ROOT}bin/segmenter.js`, 'utf8').split('\n')[0]!
  return shebang.split(/\s+/).filter((w) => w.startsWith('--'))
}
const stopSidecar = async (child: ChildProcess) => {
  child.kill('SIGTERM')
  await new Promise((r) => child.once('exit', r))
}
/** User + system CPU of one process, ms. */
function processCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(f[11]) + Number(f[12])) * 10
}
/**
 * CPU (ms) of the home's autovacuum workers from now until stop(), sampled every 100 ms (a worker
 * that exits loses at most its last 100 ms). Autovacuum of the freshly loaded table starts within
 * its one-minute nap: inside the longer drains, maybe after a short one; the home CPU figure
 * includes it, so it is also given on its own.
 */
function autovacuumCpu(): { stop(): number } {
  const postmaster = postmasterPid(home.dataDir!)
  const first = new Map<number, number>()
  const last = new Map<number, number>()
  const sample = (initial: boolean) => {
    for (const p of readdirSync('/proc')) {
      if (!/^\d+$/.test(p)) continue
      try {
        const stat = readFileSync(`/proc/${p}/stat`, 'utf8')
        const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
        if (Number(f[1]) !== postmaster || !readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('autovacuum worker')) continue
        const ms = (Number(f[11]) + Number(f[12])) * 10
        if (initial) first.set(Number(p), ms)
        last.set(Number(p), ms)
      } catch {
        /* exited meanwhile */
      }
    }
  }
  sample(true)
  const timer = setInterval(() => sample(false), 100)
  return {
    stop() {
      clearInterval(timer)
      sample(false)
      let ms = 0
      for (const [p, v] of last) ms += v - (first.get(p) ?? 0)
      return ms
    },
  }
}
/** The change log on disk: the table, its TOAST (the id arrays) and its indexes. */
const changeLogBytes = async () => Number((await q(`select pg_total_relation_size('segmenter.changes') as n`)).rows[0].n)

async function raw(n: number) {
  await targetTable('raw_members')
  const ms = await rawMysqlInsert(target.conn, 'raw_members', n, batch)
  await target.conn.query('drop table raw_members')
  return ms
}

const results: Record<string, unknown>[] = []
for (const n of sizes) {
  progress(`${n}: raw mysql2 baseline (before the drain)`)
  const rawBeforeMs = await raw(n)

  progress(`${n}: drain`)
  const table = `scale_${n}`
  await q(`create table ${table} (segment_id uuid not null, id text, hash_email text, actual_begin timestamptz not null default now(),
    actual_end timestamptz not null default 'infinity', processed timestamptz not null default now());
    create index on ${table} (segment_id, id)`)
  const segment = (await q(`select segmenter.create_segment($1::text, $2::regclass) as id`, [table, table])).rows[0].id
  await targetTable('members')
  const drainSub = await subscribe(`drain_${n}`, table, 'members')
  let child = startSidecar()
  await drainedBy(drainSub, child)
  await sleep(1000)
  await q('select pg_stat_statements_reset()')
  const insertStart = performance.now()
  await q(
    `insert into ${table} (segment_id, id, hash_email) select $1, 'member-' || g, lpad(to_hex(g), 32, '0') from generate_series(1, $2) g`,
    [segment, n],
  )
  const insertMs = performance.now() - insertStart
  const committedAt = performance.timeOrigin + performance.now()
  const cpu = cpuByKind()
  const [home0, maria0, sidecar0] = [homeCpuMs(), mariaCpuMs(), processCpuMs(child.pid!)]
  const autovacuum = autovacuumCpu()
  await drainedBy(drainSub, child)
  const drainMs = (await drainEnd(home.pool, drainSub)) - committedAt
  const steal = cpuSince(cpu).steal!
  const [drainHomeCpuMs, drainMariaCpuMs, drainSidecarCpuMs] = [
    homeCpuMs() - home0,
    mariaCpuMs() - maria0,
    processCpuMs(child.pid!) - sidecar0,
  ]
  const drainAutovacuumCpuMs = autovacuum.stop()
  const drainPeakMb = procStatusMb(child.pid!, 'VmHWM')
  const drainBufferTraffic = await drainBuffers()
  const drainStatementTraffic = await drainStatements()
  const polling = await pollCost()
  const tableStats = (
    await q(
      `select autovacuum_count::int as autovacuum, autoanalyze_count::int as autoanalyze, vacuum_count::int as vacuum
             from pg_stat_user_tables where relid = $1::regclass`,
      [table],
    )
  ).rows[0]
  await stopSidecar(child)
  if ((await count('members')) !== n) throw new Error(`drain of ${n}: ${await count('members')} rows in the target`)
  const logBytes = await changeLogBytes()
  // The two reads of a window, for 10,000 members in the middle of the segment, as the sidecar
  // makes them (src/read.ts): where their time and buffers go as N grows.
  const middle = Math.floor(n / 2)
  const ids = JSON.stringify(Array.from({ length: 10_000 }, (_, i) => `member-${middle + i}`))
  const plan = async (sql: string, params: unknown[]) => {
    const [
      {
        'QUERY PLAN': [p],
      },
    ] = (await q(`explain (analyze, buffers, format json) ${sql}`, params)).rows
    return { ms: round(p['Execution Time'], 1), shared_hit: p.Plan['Shared Hit Blocks'], shared_read: p.Plan['Shared Read Blocks'] }
  }
  const memberRowsPlan = await plan(
    `select json_agg(t.id::text) as keys, json_agg(t.hash_email) from ${table} t
     where t.segment_id = $1 and t.actual_end = 'infinity' and t.id = any(array(select value::text from json_array_elements_text($2::json)))`,
    [segment, ids],
  )
  const middlePos = (
    await q(`select pos from segmenter.changes where segment_id = $1 order by pos offset $2 limit 1`, [segment, Math.floor(n / 20_000)])
  ).rows[0]?.pos
  const changesPlan = await plan(
    `select c.pos, to_json(c.ids) as ids from (select * from segmenter.changes c where c.pos >= $1 and c.segment_id = any($2::uuid[])
       and (c.subscription_id is null or c.subscription_id = $3) order by c.pos offset 0) c limit 2`,
    [middlePos ?? 0, [segment], drainSub],
  )
  const events = Number((await q(`select coalesce(sum(members), 0) as n from segmenter.changes`)).rows[0].n)
  await target.conn.query('drop table members')

  progress(`${n}: raw mysql2 baseline (after the drain)`)
  const rawAfterMs = await raw(n)
  const rawMs = (rawBeforeMs + rawAfterMs) / 2

  progress(`${n}: resync in a fresh sidecar`)
  await targetTable('members')
  child = startSidecar()
  await sleep(2000)
  const idleMb = procStatusMb(child.pid!, 'VmRSS')
  const resyncStart = performance.now()
  const resyncSub = await subscribe(`resync_${n}`, table, 'members')
  await drainedBy(resyncSub, child)
  const resyncMs = performance.now() - resyncStart
  const resyncPeakMb = procStatusMb(child.pid!, 'VmHWM')
  await stopSidecar(child)
  if ((await count('members')) !== n) throw new Error(`resync of ${n}: ${await count('members')} rows in the target`)
  await target.conn.query('drop table members')

  // Everything delivered: prune() may drop the change log of both subscriptions.
  await q(`select segmenter.drop_subscription($1), segmenter.drop_subscription($2)`, [`drain_${n}`, `resync_${n}`])
  await q(`select * from segmenter.prune(changes_keep => interval '0 s')`)
  const eventsAfterPrune = Number((await q(`select coalesce(sum(members), 0) as n from segmenter.changes`)).rows[0].n)
  await q(`select segmenter.retire_segment($1)`, [table])
  await q(`drop table ${table}`)
  await q(`select * from segmenter.prune(changes_keep => interval '0 s')`)
  await q('vacuum segmenter.changes')

  const result = {
    members: n,
    raw_rows_per_s: Math.round(n / (rawMs / 1000)),
    raw_rows_per_s_before_and_after: [Math.round(n / (rawBeforeMs / 1000)), Math.round(n / (rawAfterMs / 1000))],
    drain_rows_per_s: Math.round(n / (drainMs / 1000)),
    drain_ratio: round(rawMs / drainMs, 2),
    home_insert_ms: Math.round(insertMs),
    home_cpu_s: round(drainHomeCpuMs / 1000, 1),
    home_cpu_us_per_member: round((drainHomeCpuMs * 1000) / n, 2),
    // Of home_cpu_s: the autovacuum workers' (the new table's first vacuum and analyze, when they
    // fall inside the drain), and the rest per member.
    home_autovacuum_cpu_s: round(drainAutovacuumCpuMs / 1000, 1),
    home_cpu_us_per_member_without_autovacuum: round(((drainHomeCpuMs - drainAutovacuumCpuMs) * 1000) / n, 2),
    home_bench_polling: polling,
    home_cpu_us_per_member_without_autovacuum_and_polling: round(((drainHomeCpuMs - drainAutovacuumCpuMs - polling.exec_ms) * 1000) / n, 2),
    // The segment table's autovacuum runs by the end of the drain (pg_stat_user_tables).
    table_autovacuum_by_drain_end: tableStats,
    sidecar_cpu_s: round(drainSidecarCpuMs / 1000, 1),
    sidecar_cpu_us_per_member: round((drainSidecarCpuMs * 1000) / n, 2),
    mariadb_cpu_s: round(drainMariaCpuMs / 1000, 1),
    steal_s: round(steal / 1000, 1),
    drain_peak_rss_mb: round(drainPeakMb ?? NaN, 0),
    resync_rows_per_s: Math.round(n / (resyncMs / 1000)),
    resync_idle_rss_mb: round(idleMb ?? NaN, 0),
    resync_peak_rss_mb: round(resyncPeakMb ?? NaN, 0),
    // Blocks (8 kB) of the drain's statements in shared buffers: hit, read from outside, dirtied, written out.
    drain_shared_blocks: drainBufferTraffic,
    drain_statements: drainStatementTraffic,
    member_rows_read_10k: memberRowsPlan,
    changes_read_2: changesPlan,
    change_log_events: events,
    change_log_bytes: logBytes,
    change_log_bytes_per_event: round(logBytes / Math.max(1, events), 1),
    change_log_events_after_prune: eventsAfterPrune,
  }
  progress(JSON.stringify(result))
  results.push(result)
}

const first = results[0]!
const report = {
  benchmark: 'scale',
  date: new Date().toISOString(),
  batch_size: batch,
  launcher_flags: launcherFlags(),
  // The home server's settings (shared_buffers: see the top of this file).
  home_settings: homeSettings,
  target_peak_rss_mb: 250,
  sizes: results,
  // What issue 15 asks: RSS at most 250 MB and within 10% across the sizes; the drain ratio at the
  // largest size within 0.05 of the smallest's.
  peak_rss_spread: round(
    Math.max(...results.map((r) => r.resync_peak_rss_mb as number)) / Math.min(...results.map((r) => r.resync_peak_rss_mb as number)) - 1,
    3,
  ),
  drain_ratio_drop: round((first.drain_ratio as number) - (results.at(-1)!.drain_ratio as number), 2),
}
mkdirSync(`${ROOT}bench/results`, { recursive: true })
// Every run is kept: a second run of the day is -scale-2.json, and so on.
const base = `${ROOT}bench/results/${report.date.slice(0, 10)}-scale`
let file = `${base}.json`
for (let n = 2; existsSync(file); n++) file = `${base}-${n}.json`
writeFileSync(file, JSON.stringify(report, null, 2) + '\n')
console.log(JSON.stringify(report, null, 2))
console.log('\n| N | drain vs raw mysql2 | sidecar peak RSS, resync | home CPU, drain | sidecar CPU, drain |')
console.log('|---|---|---|---|---|')
for (const r of results)
  console.log(
    `| ${(r.members as number).toLocaleString('en')} | ${r.drain_ratio}× | ${r.resync_peak_rss_mb} MB | ${r.home_cpu_s} s (${r.home_cpu_us_per_member} µs/member) | ${r.sidecar_cpu_s} s (${r.sidecar_cpu_us_per_member} µs/member) |`,
  )
progress(`written to ${file}`)
await target.conn.end()
await maria.stop()
await home.stop()
