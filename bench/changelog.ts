// The change log at scale (issue 15): 100M+ captured events from refreshes with churn, delivered by
// a real sidecar (`bin/segmenter.js run`, a child process, the launcher's heap flags) to an HTTP
// receiver in a child process of its own (node:http; it tallies every member it is sent per
// subscription and event: count, sum and a hash of the member numbers), so that the subscriptions
// really keep up. An auto segment of N members whose refresher rotates blocks of churn × N members
// (the universe is N + churn × N ids in blocks of churn × N; refresh r leaves block r mod blocks
// out): every refresh removes one block and re-enters the one left out before, 2 × churn × N
// member events, and the segment table keeps N + churn × N rows.
//  A. keep-up: after each refresh, wait for the subscription to drain, then
//     `prune(changes_keep => '0')`; per round: the events captured so far, the change log's rows,
//     events and bytes (heap, TOAST, indexes; dead tuples and autovacuum runs), the segment table's
//     and the database's size, WAL, and the time of the refresh, the drain and prune. The log must
//     stay bounded: its size after prune must not grow with the rounds.
//  B. paused: a second subscription of the same segment (it starts with a resync of the N current
//     members, drained and pruned), then paused; more refreshes: prune must keep its backlog
//     (pending events before and after prune), which must equal the events captured since the
//     pause in `segmenter.status` (pending_changes, oldest_pending_age) and in the sidecar's
//     /metrics (segmenter_pending_changes). Then it resumes and is paused again halfway through its
//     backlog (its batch size does not divide a change's 10,000 members, so the cursor stops inside
//     a change): prune must keep that change's undelivered members too. Resumed, drained, pruned:
//     the log must shrink back.
//  C. disk per captured event: the change log's bytes (total relation size: TOAST and indexes
//     included) per event held at each peak; WAL per event of every refresh, drain and prune, and
//     for the last refresh of A the part of its WAL that is the change log's own (pg_walinspect:
//     records whose block references name the log's heap, TOAST or indexes).
// Throws if the receiver did not get exactly the expected member events (per subscription and
// event: count, sum and hash), if a refresh's counts differ from the rotation's, if the paused
// backlog differs from the events captured since the pause, or if prune lost a pending event.
// The segment table has fillfactor 50, so that a refresh's updates of actual_end can stay on the
// page (HOT): at 1M members a refresh with 50% churn took 14 µs of wall time per event against 20
// µs with the default fillfactor; the capture is the same.
// Usage: node --import tsx bench/changelog.ts [members=10000000] [rounds=7] [paused_rounds=2] [churn=0.5] [batch=10000]
//        (rounds: churn refreshes in A after the first load; paused_rounds: refreshes while B's
//        subscription is paused; 1/churn must be a whole number. The defaults capture 10M + 9 × 10M
//        = 100M events in about 50 min. The bench's own server gets wal_keep_size = 16GB and
//        pg_walinspect.) JSON on stdout, progress on stderr; `make bench-changelog` writes
//        bench/results/DATE-changelog.json.
import { spawn, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'
import { readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { fileURLToPath } from 'node:url'
import { benchDatabase, cpuByKind, cpuSince, drained as drainedIn, postmasterPid, round, serverCpuMs } from './common.js'

const members = Number(process.argv[2] ?? 10_000_000)
const rounds = Number(process.argv[3] ?? 7)
const pausedRounds = Number(process.argv[4] ?? 2)
const churn = Number(process.argv[5] ?? 0.5)
const batch = Number(process.argv[6] ?? 10_000)
const block = Math.round(members * churn)
const blocks = Math.round(1 / churn) + 1
if (block * (blocks - 1) !== members || pausedRounds < 1)
  throw new Error('1/churn must be a whole number dividing members; paused_rounds >= 1')
// B's batch size: not a divisor of a change's 10,000 members, so its windows (10 × batch) end
// inside a change.
const pausedBatch = 4_096
const ROOT = fileURLToPath(new URL('..', import.meta.url))
const template = (name: string) => readFileSync(new URL(`../templates/http/${name}.json`, import.meta.url), 'utf8')
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const started = performance.now()
const progress = (msg: string) =>
  process.stderr.write(
    `[changelog] ${new Date().toISOString().slice(11, 19)} +${Math.round((performance.now() - started) / 1000)}s ${msg}\n`,
  )

// --- the receiver: per path and event, how many members, their numbers' sum and a hash sum -------
const RECEIVER = `
const http = require('node:http')
const tallies = {}
let requests = 0
const server = http.createServer((req, res) => {
  if (req.method === 'GET') return void res.end(JSON.stringify({ requests, tallies }))
  const chunks = []
  req.on('data', (c) => chunks.push(c))
  req.on('end', () => {
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8'))
    requests++
    const t = (tallies[req.url + ' ' + body.event] ??= { n: 0, sum: 0, hash: 0 })
    for (const m of body.members) {
      const x = Number(m.id.slice(7))
      t.n++
      t.sum += x
      t.hash = (t.hash + (Math.imul(x, 0x9e3779b1) >>> 0)) >>> 0
    }
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end('{"ok":true}')
  })
})
server.keepAliveTimeout = 60_000
server.listen(0, '127.0.0.1', () => process.stdout.write(String(server.address().port) + '\\n'))
`
type Tally = { n: number; sum: number; hash: number }
const receiver: ChildProcess = spawn(process.execPath, ['-e', RECEIVER], { stdio: ['ignore', 'pipe', 'inherit'] })
process.on('exit', () => receiver.kill('SIGKILL'))
const receiverPort = await new Promise<number>((resolve) =>
  receiver.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))),
)
const receiverUrl = `http://127.0.0.1:${receiverPort}`
const received = async () => ((await (await fetch(receiverUrl)).json()) as { requests: number; tallies: Record<string, Tally> }).tallies

/** What the receiver must have got: per `path event`, the tally of every member number sent. */
const expected: Record<string, Tally> = {}
function expect(path: string, event: 'add' | 'remove', from: number, to: number) {
  const t = (expected[`${path} ${event}`] ??= { n: 0, sum: 0, hash: 0 })
  for (let x = from; x <= to; x++) {
    t.n++
    t.sum += x
    t.hash = (t.hash + (Math.imul(x, 0x9e3779b1) >>> 0)) >>> 0
  }
}
async function checkReceiver(when: string) {
  const got = await received()
  const keys = new Set([...Object.keys(got), ...Object.keys(expected)])
  for (const k of keys) {
    const [a, b] = [got[k] ?? { n: 0, sum: 0, hash: 0 }, expected[k] ?? { n: 0, sum: 0, hash: 0 }]
    if (a.n !== b.n || a.sum !== b.sum || a.hash !== b.hash)
      throw new Error(`${when}: the receiver got ${JSON.stringify(a)} for ${k}, expected ${JSON.stringify(b)}`)
  }
}

// --- the home, the segment, the sidecar -----------------------------------------------------------
const home = await benchDatabase()
if (!home.dataDir) throw new Error('bench/changelog measures its own server: unset BENCH_DATABASE_URL')
const homeCpuMs = () => serverCpuMs(postmasterPid(home.dataDir!))
const q = (sql: string, params?: unknown[]) => home.pool.query(sql, params)
const one = async (sql: string, params?: unknown[]) => (await q(sql, params)).rows[0]
process.env.BENCH_HOOK_A = `${receiverUrl}/a`
process.env.BENCH_HOOK_B = `${receiverUrl}/b`
await q(`select segmenter.create_consumer('hook_a', 'http', 'json', 'BENCH_HOOK_A')`)
await q(`select segmenter.create_consumer('hook_b', 'http', 'json', 'BENCH_HOOK_B')`)

// Block b (0-based) holds the members b × block + 1 .. (b + 1) × block; refresh r leaves block
// (r mod blocks) out. bench_round holds the block left out.
const blockRange = (b: number): [number, number] => [b * block + 1, (b + 1) * block]
await q(`create table bench_round (excluded int not null); insert into bench_round values (0)`)
await q(`create table bench_seg (segment_id uuid not null, id text not null, actual_begin timestamptz not null default now(),
  actual_end timestamptz not null default 'infinity', processed timestamptz not null default now()) with (fillfactor = 50);
  create index on bench_seg (segment_id, id)`)
// pg_walinspect reads the WAL of one refresh back; keep enough of it for that (a refresh of 10M
// events writes more WAL than max_wal_size, and checkpoints recycle segments).
await q(`create extension if not exists pg_walinspect`)
await q(`alter system set wal_keep_size = '16GB'`)
await q(`select pg_reload_conf()`)
await q(`select segmenter.create_segment('bench', 'bench_seg', 'auto', $1)`, [
  `select 'member-' || g as id from generate_series(1, ${members + block}) g where (g - 1) / ${block} <> (select excluded from bench_round)`,
])
async function subscribe(name: string, consumer: string, batchSize: number) {
  await q(
    `select segmenter.create_subscription(name => $1, consumer => $2, segments => array['bench'], syntax => 'altcraft',
       add_sql => $3, remove_sql => $4, batch_size => $5)`,
    [name, consumer, template('add'), template('remove'), batchSize],
  )
  return (await one(`select subscription_id from segmenter.subscriptions where name = $1`, [name])).subscription_id as string
}
const subA = await subscribe('a', 'hook_a', batch)

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer()
    s.once('error', reject).listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })
const metricsPort = await freePort()
const launcherFlags = readFileSync(new URL('../bin/segmenter.js', import.meta.url), 'utf8')
  .split('\n')[0]!
  .split(' ')
  .filter((f) => f.startsWith('--'))
const sidecar: ChildProcess = spawn(process.execPath, [...launcherFlags, 'bin/segmenter.js', 'run'], {
  cwd: ROOT,
  env: { ...process.env, DATABASE_URL: home.url, SEGMENTER_LOG_LEVEL: 'warn', SEGMENTER_HTTP_PORT: String(metricsPort) },
  stdio: ['ignore', 'ignore', 'inherit'],
})
process.on('exit', () => sidecar.kill('SIGKILL'))
const sidecarDead = () =>
  sidecar.exitCode !== null || sidecar.signalCode !== null ? `the sidecar exited (${sidecar.exitCode ?? sidecar.signalCode})` : null
const drained = (subscriptionId: string) => drainedIn(home.pool, subscriptionId, sidecarDead, 3_600_000)
async function metricPending(subscription: string): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    try {
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text()
      const m = new RegExp(`^segmenter_pending_changes\\{subscription="${subscription}"\\} (\\d+)$`, 'm').exec(text)
      if (!m) throw new Error(`no segmenter_pending_changes for ${subscription} in /metrics`)
      return Number(m[1])
    } catch (e) {
      if (attempt >= 20) throw e
      await sleep(500)
    }
  }
}

// --- measurements ---------------------------------------------------------------------------------
const walLsn = async () => (await one(`select pg_current_wal_lsn()::text as l`)).l as string
const walSince = async (lsn: string) => Number((await one(`select pg_wal_lsn_diff(pg_current_wal_lsn(), $1)::bigint as b`, [lsn])).b)
/** The change log now: rows, member events, bytes by part, dead tuples and vacuum runs of the heap and its TOAST. */
async function log() {
  const r = await one(`
    select (select count(*) from segmenter.changes) as rows,
           (select coalesce(sum(members), 0) from segmenter.changes) as events,
           pg_total_relation_size('segmenter.changes') as total_bytes,
           pg_relation_size('segmenter.changes') as heap_bytes,
           pg_relation_size(c.reltoastrelid) as toast_bytes,
           pg_indexes_size(c.reltoastrelid) as toast_index_bytes,
           pg_indexes_size('segmenter.changes') as index_bytes,
           h.n_live_tup as heap_live, h.n_dead_tup as heap_dead, h.autovacuum_count as heap_autovacuums,
           t.n_live_tup as toast_live, t.n_dead_tup as toast_dead, t.autovacuum_count as toast_autovacuums,
           pg_relation_size('bench_seg') + pg_indexes_size('bench_seg') as segment_bytes,
           pg_database_size(current_database()) as database_bytes
    from pg_class c
    join pg_stat_all_tables h on h.relid = c.oid
    join pg_stat_all_tables t on t.relid = c.reltoastrelid
    where c.oid = 'segmenter.changes'::regclass`)
  return Object.fromEntries(Object.entries(r).map(([k, v]) => [k, Number(v)])) as LogFigures
}
type LogFigures = Record<
  | 'rows'
  | 'events'
  | 'total_bytes'
  | 'heap_bytes'
  | 'toast_bytes'
  | 'toast_index_bytes'
  | 'index_bytes'
  | 'heap_live'
  | 'heap_dead'
  | 'heap_autovacuums'
  | 'toast_live'
  | 'toast_dead'
  | 'toast_autovacuums'
  | 'segment_bytes'
  | 'database_bytes',
  number
>
async function status(name: string) {
  const t0 = performance.now()
  const r = await one(
    `select pending_changes::bigint as pending, extract(epoch from oldest_pending_age)::float8 as oldest_s, state, cursor_pos::text, cursor_ord
     from segmenter.status where subscription = $1`,
    [name],
  )
  return {
    pending: Number(r.pending),
    oldest_pending_age_s: r.oldest_s === null ? null : round(r.oldest_s, 1),
    state: r.state as string,
    cursor: `${r.cursor_pos}/${r.cursor_ord}`,
    query_ms: round(performance.now() - t0, 1),
  }
}
/** prune(changes_keep => '0'): its time, what it deleted, the WAL it wrote. */
async function prune() {
  const lsn = await walLsn()
  const t0 = performance.now()
  const r = await one(`select * from segmenter.prune(changes_keep => '0')`)
  return { ms: round(performance.now() - t0, 1), deleted_changes: Number(r.changes), wal_bytes: await walSince(lsn) }
}

let captured = 0 // member events captured by the triggers so far (refreshes)
let r = 0 // refresh number; 0 is the first load
/** Refresh r: block r mod blocks leaves, block (r - 1) mod blocks (re-)enters; returns what it did. */
async function refresh(paths: string[]) {
  const out = (r % blocks) as number
  const back = r === 0 ? null : (r - 1) % blocks
  await q(`update bench_round set excluded = $1`, [out])
  const lsn = await walLsn()
  const cpu0 = homeCpuMs()
  const t0 = performance.now()
  const counts = (await one(`select segmenter.refresh('bench') as c`)).c
  const ms = performance.now() - t0
  const cpuMs = homeCpuMs() - cpu0
  const lsnTo = await walLsn()
  const wal = await walSince(lsn)
  if (counts.ok !== true) throw new Error(`refresh ${r} failed: ${JSON.stringify(counts)}`)
  let events: number
  if (r === 0) {
    const want = { added: members, removed: 0, reentered: 0 }
    if (counts.added !== want.added || counts.removed !== 0 || counts.reentered !== 0)
      throw new Error(`refresh 0: ${JSON.stringify(counts)}, expected ${JSON.stringify(want)}`)
    for (let b = 1; b < blocks; b++) for (const p of paths) expect(p, 'add', ...blockRange(b))
    events = members
  } else {
    // The block coming back was a fresh insert the first time it entered (refresh 1: block 0).
    const fresh = r === 1
    const want = { added: fresh ? block : 0, removed: block, reentered: fresh ? 0 : block }
    if (counts.added !== want.added || counts.removed !== want.removed || counts.reentered !== want.reentered || counts.updated !== 0)
      throw new Error(`refresh ${r}: ${JSON.stringify(counts)}, expected ${JSON.stringify(want)}`)
    for (const p of paths) {
      expect(p, 'remove', ...blockRange(out))
      expect(p, 'add', ...blockRange(back!))
    }
    events = 2 * block
  }
  captured += events
  r++
  return {
    refresh: r - 1,
    left: out,
    entered: back,
    events,
    ms: Math.round(ms),
    home_cpu_ms: Math.round(cpuMs),
    wal_bytes: wal,
    wal_bytes_per_event: round(wal / events, 1),
    lsn_from: lsn,
    lsn_to: lsnTo,
  }
}
async function drain(subscriptionId: string) {
  const lsn = await walLsn()
  const cpu = cpuByKind()
  const t0 = performance.now()
  await drained(subscriptionId)
  const ms = performance.now() - t0
  return { ms: Math.round(ms), cpu_ms: cpuSince(cpu), wal_bytes: await walSince(lsn) }
}
const perEvent = (bytes: number, events: number) => (events > 0 ? round(bytes / events, 2) : null)

/** Of the WAL of a refresh, the change log's part: records naming its heap, TOAST or indexes. */
async function logWal(ref: { lsn_from: string; lsn_to: string; events: number; wal_bytes: number }) {
  progress("C: reading the last refresh's WAL back (pg_walinspect)")
  const t0 = performance.now()
  const w = await one(
    `with rels as (
       select array_agg(pg_relation_filenode(o)::text) as f
       from (select 'segmenter.changes'::regclass::oid as o
             union all select reltoastrelid from pg_class where oid = 'segmenter.changes'::regclass
             union all select indexrelid from pg_index
               where indrelid in ('segmenter.changes'::regclass, (select reltoastrelid from pg_class where oid = 'segmenter.changes'::regclass))) x)
     select count(*) as records, sum(record_length) as bytes,
            count(*) filter (where (regexp_match(block_ref, 'rel \\d+/\\d+/(\\d+)'))[1] = any(rels.f)) as log_records,
            sum(record_length) filter (where (regexp_match(block_ref, 'rel \\d+/\\d+/(\\d+)'))[1] = any(rels.f)) as log_bytes
     from pg_get_wal_records_info($1, $2), rels`,
    [ref.lsn_from, ref.lsn_to],
  )
  const [records, bytes, logRecords, logBytes] = [w.records, w.bytes, w.log_records, w.log_bytes].map(Number) as [
    number,
    number,
    number,
    number,
  ]
  return {
    refresh: ref,
    records,
    bytes,
    log_records: logRecords,
    log_bytes: logBytes,
    log_bytes_per_event: round(logBytes / ref.events, 2),
    other_bytes_per_event: round((bytes - logBytes) / ref.events, 2),
    read_ms: Math.round(performance.now() - t0),
  }
}
let walOfLog: Awaited<ReturnType<typeof logWal>> | undefined

// --- A. keep-up -----------------------------------------------------------------------------------
await drained(subA)
const keepUp: Record<string, unknown>[] = []
for (let i = 0; i <= rounds; i++) {
  progress(`A ${i}/${rounds}: refresh ${r} (${captured.toLocaleString()} events captured so far)`)
  const ref = await refresh(['/a'])
  const peak = await log()
  progress(
    `A ${i}/${rounds}: ${ref.ms} ms, ${ref.events} events; log ${peak.events} events, ${(peak.total_bytes / 2 ** 20).toFixed(0)} MiB; draining`,
  )
  const d = await drain(subA)
  await checkReceiver(`A, after refresh ${ref.refresh}`)
  const before = await log()
  const p = await prune()
  const after = await log()
  if (after.events !== 0) throw new Error(`A, refresh ${ref.refresh}: prune left ${after.events} events with every subscription caught up`)
  progress(
    `A ${i}/${rounds}: drain ${d.ms} ms, prune ${p.ms} ms (${p.deleted_changes} rows); after: ${(after.total_bytes / 2 ** 20).toFixed(0)} MiB, toast dead ${after.toast_dead}`,
  )
  // After the drain and prune, so that the drain's time is not the WAL read's (wal_keep_size keeps it).
  if (i === rounds) walOfLog = await logWal(ref)
  keepUp.push({
    ...ref,
    captured_total: captured,
    log_at_peak: { ...peak, bytes_per_event: perEvent(peak.total_bytes, peak.events) },
    drain: d,
    log_before_prune: before,
    prune: p,
    log_after_prune: after,
  })
}

// --- B. a paused subscription ---------------------------------------------------------------------
progress(`B: subscription b (its resync of ${members} members), batch ${pausedBatch}`)
const subB = await subscribe('b', 'hook_b', pausedBatch)
for (let b = 0; b < blocks; b++) if (b !== (r - 1) % blocks) expect('/b', 'add', ...blockRange(b))
const resyncDrain = await drain(subB)
await checkReceiver('B, after the resync of b')
const resyncPrune = await prune()
await q(`select segmenter.pause('b')`)
const atPause = captured
const pauseLog = await log()
progress(`B: b drained (${resyncDrain.ms} ms) and paused; log ${pauseLog.events} events`)
const paused: Record<string, unknown>[] = []
const deferredB: Array<() => void> = []
for (let i = 1; i <= pausedRounds; i++) {
  progress(`B ${i}/${pausedRounds}: refresh ${r} with b paused`)
  const ref = await refresh(['/a'])
  // b gets these once it resumes.
  deferredB.push(() => {
    expect('/b', 'remove', ...blockRange(ref.left))
    expect('/b', 'add', ...blockRange(ref.entered!))
  })
  const d = await drain(subA)
  const backlog = captured - atPause
  const before = await status('b')
  const metric = await metricPending('b')
  const logBefore = await log()
  const p = await prune()
  const after = await status('b')
  const logAfter = await log()
  if (before.pending !== backlog || after.pending !== backlog || metric !== backlog)
    throw new Error(
      `B, refresh ${ref.refresh}: b's backlog is ${before.pending} before prune, ${after.pending} after, ${metric} in /metrics; expected ${backlog} (captured since the pause)`,
    )
  if (before.state !== 'paused') throw new Error(`b is ${before.state}, not paused`)
  progress(
    `B ${i}/${pausedRounds}: backlog ${backlog} kept; log ${logAfter.events} events, ${(logAfter.total_bytes / 2 ** 20).toFixed(0)} MiB`,
  )
  paused.push({
    ...ref,
    captured_total: captured,
    drain_a: d,
    backlog_expected: backlog,
    status_before_prune: before,
    metrics_pending: metric,
    log_before_prune: { ...logBefore, bytes_per_event: perEvent(logBefore.total_bytes, logBefore.events) },
    prune: p,
    status_after_prune: after,
    log_after_prune: { ...logAfter, bytes_per_event: perEvent(logAfter.total_bytes, logAfter.events) },
  })
}
await checkReceiver('B, with b paused (a caught up, b got nothing more)')
const peakLog = await log()
const peakStatusMs = (await status('b')).query_ms
const statusTimes: number[] = []
for (let i = 0; i < 5; i++) statusTimes.push((await status('b')).query_ms)

// Halfway: resume, pause again once half the backlog went, let the sidecar's window finish.
const backlog = captured - atPause
progress(`B: resume b, pause it again halfway through its ${backlog} events`)
await q(`select segmenter.resume('b')`)
for (const end = Date.now() + 3_600_000; (await status('b')).pending > backlog / 2;) {
  const dead = sidecarDead() ?? (Date.now() > end ? 'b did not get halfway through its backlog within an hour' : null)
  if (dead) throw new Error(dead)
  await sleep(200)
}
await q(`select segmenter.pause('b')`)
let halfway = await status('b')
for (let still = 0; still < 5;) {
  await sleep(500)
  const now = await status('b')
  still = now.cursor === halfway.cursor ? still + 1 : 0
  halfway = now
}
const [cursorPos, cursorOrd] = halfway.cursor.split('/').map(Number) as [number, number]
const inside = await one(`select members from segmenter.changes where pos = $1`, [cursorPos])
const midChange = inside !== undefined && cursorOrd > 0 && cursorOrd < Number(inside.members)
const halfwayPrune = await prune()
const halfwayAfter = await status('b')
if (halfwayAfter.pending !== halfway.pending)
  throw new Error(`B, halfway (cursor ${halfway.cursor}): prune lost ${halfway.pending - halfwayAfter.pending} pending events of b`)
progress(`B: halfway ${halfway.pending} pending at cursor ${halfway.cursor} (inside a change: ${midChange}); prune kept them`)

progress('B: resume b, drain, prune')
await q(`select segmenter.resume('b')`)
const resumeDrain = await drain(subB)
for (const f of deferredB) f()
await checkReceiver('B, after b resumed')
const resumePrune = await prune()
const resumedLog = await log()
if (resumedLog.events !== 0) throw new Error(`B: prune left ${resumedLog.events} events after b caught up`)
// The space the log frees is reused, not returned: let autovacuum (or a manual vacuum) show what remains.
await q('vacuum segmenter.changes')
const vacuumedLog = await log()

const keepUpAfter = keepUp.map((k) => (k.log_after_prune as { total_bytes: number }).total_bytes)
const keepUpPeak = keepUp.map((k) => (k.log_at_peak as { total_bytes: number }).total_bytes)
const pruneMs = keepUp.map((k) => (k.prune as { ms: number }).ms)
const report = {
  benchmark: 'changelog',
  members,
  churn,
  block,
  keep_up_rounds: rounds,
  paused_rounds: pausedRounds,
  batch_size: { a: batch, b: pausedBatch },
  cores: availableParallelism(),
  events_captured: captured,
  events_delivered: Object.fromEntries(Object.entries(await received()).map(([k, t]) => [k, t.n])),
  duration_s: Math.round((performance.now() - started) / 1000),
  summary: {
    keep_up_log_bytes_after_prune: keepUpAfter,
    keep_up_log_bytes_at_peak: keepUpPeak,
    keep_up_prune_ms: pruneMs,
    paused_backlog_events: backlog,
    paused_peak_log: { ...peakLog, bytes_per_event: perEvent(peakLog.total_bytes, peakLog.events) },
    status_query_ms_at_peak: [peakStatusMs, ...statusTimes],
    halfway: {
      cursor: halfway.cursor,
      inside_a_change: midChange,
      pending: halfway.pending,
      kept_by_prune: halfwayAfter.pending,
      prune: halfwayPrune,
    },
    resumed: { drain: resumeDrain, prune: resumePrune, log: resumedLog, log_after_vacuum: vacuumedLog },
    wal: {
      refresh_bytes_per_event: keepUp.map((k) => k.wal_bytes_per_event),
      last_keep_up_refresh: walOfLog,
      full_page_writes: (await one(`show full_page_writes`)).full_page_writes,
    },
  },
  keep_up: keepUp,
  paused_subscription: {
    resync: { drain: resyncDrain, prune: resyncPrune },
    log_at_pause: pauseLog,
    rounds: paused,
  },
}
console.log(JSON.stringify(report, null, 2))
sidecar.kill('SIGTERM')
await new Promise((res) => sidecar.once('exit', res))
receiver.kill('SIGTERM')
await home.stop()
