// Delivery to an HTTP receiver through the whole pipeline (home INSERT → capture → sidecar → the
// default templates/http/add.json body, signed as Standard Webhooks, one POST per batch), with the
// sidecar started as users start it (`bin/segmenter.js run`, a child process), against a baseline
// in the same run: raw fetch() POSTs of the same bodies (signed the same way), batch by batch, to
// the same receiver. The receiver is a child process of its own (node:http: reads each body, counts
// its members, answers 200), so neither side shares a core with it. Each of R rounds runs the
// pipeline between two raw runs (the one after a round is the one before the next): raw moves by
// a third between runs on this VM, and a round's ratio (members/s of the pipeline from the home
// commit over members/s of raw, raw the mean of its two times) took all of that with one raw.
// The ratio is the median of the rounds'. Then latency with batch_size 1: one-row commits one at a
// time, from the commit (the bench's clock) to the request's arrival at the receiver (its clock:
// one machine, performance.timeOrigin + now() in both). Peak RSS (VmHWM) of the sidecar.
// Usage: node --import tsx bench/http.ts [members=1000000] [batch=10000] [rounds=3] [latency_commits=200]
//        (BENCH_SIDECAR_NODE_ARGS: node options for the sidecar, e.g. --cpu-prof)
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { WebhookSigner } from '../src/http-request.js'
import { compileTemplate } from '../src/render/index.js'
import {
  benchDatabase,
  cpuByKind,
  cpuSince,
  drained as drainedIn,
  drainEnd,
  median,
  percentile,
  procStatusMb,
  round,
  segmentTables,
  serverCpuMs,
} from './common.js'

const members = Number(process.argv[2] ?? 1_000_000)
const batch = Number(process.argv[3] ?? 10_000)
const rounds = Number(process.argv[4] ?? 3)
const latencyCommits = Number(process.argv[5] ?? 200)
const ROOT = fileURLToPath(new URL('..', import.meta.url))
const template = (name: string) => readFileSync(new URL(`../templates/http/${name}.json`, import.meta.url), 'utf8')
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const progress = (msg: string) => process.stderr.write(`[http] ${msg}\n`)
const now = () => performance.timeOrigin + performance.now()
const SECRET = 'whsec_' + randomBytes(32).toString('base64')

// The receiver: members counted per request; arrival time of each member of small requests.
const RECEIVER = `
const http = require('node:http')
let members = 0, requests = 0
const server = http.createServer((req, res) => {
  if (req.method === 'GET') {
    res.end(JSON.stringify({ members, requests }))
    return
  }
  const chunks = []
  req.on('data', (c) => chunks.push(c))
  req.on('end', () => {
    const at = performance.timeOrigin + performance.now()
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8'))
    requests++
    members += body.members.length
    // Arrivals go out on stdout as they happen: the bench is not polling (and so not loading) the
    // receiver while it measures.
    if (body.members.length <= 10) for (const m of body.members) process.stdout.write(m.id + ' ' + at + '\\n')
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end('{"ok":true}')
  })
})
server.keepAliveTimeout = 60_000
server.listen(0, '127.0.0.1', () => process.stdout.write(String(server.address().port) + '\\n'))
`
const receiver: ChildProcess = spawn(process.execPath, ['-e', RECEIVER], { stdio: ['ignore', 'pipe', 'inherit'] })
process.on('exit', () => receiver.kill('SIGKILL'))
const receiverLines = createInterface({ input: receiver.stdout! })
const port = await new Promise<number>((resolve) => receiverLines.once('line', (line) => resolve(Number(line))))
// Member id → arrival time at the receiver (its clock), for the latency commits.
const arrivals = new Map<string, number>()
receiverLines.on('line', (line) => {
  const [id, at] = line.split(' ')
  arrivals.set(id!, Number(at))
})
const receiverUrl = `http://127.0.0.1:${port}`
const stats = async () => (await (await fetch(receiverUrl)).json()) as { members: number; requests: number }

// pg_stat_statements: where the home's share of the drain goes (home_statements_per_round).
const home = await benchDatabase(['-c shared_preload_libraries=pg_stat_statements'])
const q = (sql: string, params?: unknown[]) => home.pool.query(sql, params)
process.env.BENCH_HOOK_URL = `${receiverUrl}/hooks`
process.env.BENCH_HOOK_SECRET = SECRET
await q('create extension if not exists pg_stat_statements')
await q(`select segmenter.create_consumer('hook', 'http', 'json', 'BENCH_HOOK_URL', '{"signing_secret_env": "BENCH_HOOK_SECRET"}')`)

/** The body templates/http/add.json renders for members first .. first+count-1, built by hand. */
function rawBody(first: number, count: number, segmentId: string, version: number): string {
  const ids: string[] = []
  for (let g = first; g < first + count; g++) ids.push(`  {"id": "member-${g}"}`)
  return `{"audience": null, "segment_id": "${segmentId}", "event": "add", "version": ${version}, "members": [\n${ids.join(',\n')}\n]}\n`
}
// The same bytes as the pipeline sends, or the baseline would measure another body.
const sample = compileTemplate(template('add'), 'altcraft', 'json').render({
  segment_id: '00000000-0000-0000-0000-000000000000',
  segment_name: 'x',
  audience: null,
  version: 7n,
  batch: [{ id: 'member-7' }, { id: 'member-8' }, { id: 'member-9' }],
})
if (sample !== rawBody(7, 3, '00000000-0000-0000-0000-000000000000', 7))
  throw new Error(`the baseline's body is not what templates/http/add.json renders:\n${sample}`)

/** The baseline: the bodies the default add template renders for the same members, POSTed one by one. */
async function rawRound() {
  const signer = new WebhookSigner(SECRET)
  const before = (await stats()).members
  const cpu = cpuByKind()
  const start = performance.now()
  for (let first = 1; first <= members; first += batch) {
    const body = rawBody(first, Math.min(batch, members - first + 1), '00000000-0000-0000-0000-000000000000', first)
    const id = `msg_raw_${first}`
    const when = new Date()
    const response = await fetch(`${receiverUrl}/hooks`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'idempotency-key': id,
        'webhook-id': id,
        'webhook-timestamp': String(Math.floor(when.getTime() / 1000)),
        'webhook-signature': signer.sign(id, when, body),
      },
      body,
    })
    await response.text()
    if (!response.ok) throw new Error(`raw POST: HTTP ${response.status}`)
  }
  const ms = performance.now() - start
  const cpuMs = cpuSince(cpu)
  if ((await stats()).members - before !== members) throw new Error('raw POSTs lost members')
  return { ms, cpuMs }
}

const tables = segmentTables(home.pool)
async function subscribe(name: string, segmentName: string, batchSize: number) {
  await q(
    `select segmenter.create_subscription(name => $1, consumer => 'hook', segments => array[$2], syntax => 'altcraft',
       add_sql => $3, remove_sql => $4, batch_size => $5)`,
    [name, segmentName, template('add'), template('remove'), batchSize],
  )
  return (await q(`select subscription_id from segmenter.subscriptions where name = $1`, [name])).rows[0].subscription_id as string
}
const drained = (subscriptionId: string) => drainedIn(home.pool, subscriptionId)

/** The pipeline: a fresh segment and subscription; one home INSERT of every member, then the drain. */
async function pipelineRound(r: number) {
  const name = `bench_http_${r}`
  const seg = await tables.replace(name)
  const sub = await subscribe(`throughput_${r}`, name, batch)
  await drained(sub)
  const before = (await stats()).members
  const start = performance.now()
  await q(`insert into ${name} (segment_id, id) select $1, 'member-' || g from generate_series(1, $2) g`, [seg, members])
  const commitMs = performance.now() - start
  const committedAt = now()
  const cpu = cpuByKind()
  const sidecarBefore = serverCpuMs(sidecar.pid!)
  await drained(sub)
  // To the log row of the last batch, not to when the poll saw it (drainEnd).
  const drainMs = (await drainEnd(home.pool, sub)) - committedAt
  const cpuMs = cpuSince(cpu)
  const sidecarCpuMs = serverCpuMs(sidecar.pid!) - sidecarBefore
  const got = (await stats()).members - before
  if (got !== members) throw new Error(`pipeline delivered ${got} members, not ${members}`)
  await q(`select segmenter.drop_subscription($1)`, [`throughput_${r}`])
  return { commitMs, drainMs, cpuMs, sidecarCpuMs }
}

// The launcher's own heap flags (its shebang line), as users run it; BENCH_SIDECAR_NODE_ARGS adds
// node options for the sidecar alone (e.g. --cpu-prof --cpu-prof-dir=/tmp/prof).
const launcherFlags = readFileSync(new URL('../bin/segmenter.js', import.meta.url), 'utf8')
  .split('\n')[0]!
  .split(' ')
  .filter((f) => f.startsWith('--'))
const sidecarArgs = [...launcherFlags, ...(process.env.BENCH_SIDECAR_NODE_ARGS?.split(' ').filter(Boolean) ?? [])]
const sidecar: ChildProcess = spawn(process.execPath, [...sidecarArgs, 'bin/segmenter.js', 'run'], {
  cwd: ROOT,
  env: { ...process.env, DATABASE_URL: home.url, SEGMENTER_LOG_LEVEL: 'warn', SEGMENTER_HTTP_PORT: '0' },
  stdio: ['ignore', process.env.BENCH_SIDECAR_STDOUT ? 2 : 'ignore', 'inherit'],
})
// A failed run must not leave the sidecar behind, retrying a home that is gone.
process.on('exit', () => sidecar.kill('SIGKILL'))
await sleep(2000)
const idleMb = procStatusMb(sidecar.pid!, 'VmRSS')

const raw: Array<Awaited<ReturnType<typeof rawRound>>> = []
const pipe: Array<Awaited<ReturnType<typeof pipelineRound>>> = []
await q('select pg_stat_statements_reset()')
progress(`raw fetch POSTs, ${members} members in batches of ${batch}`)
raw.push(await rawRound())
for (let r = 1; r <= rounds; r++) {
  progress(`round ${r}/${rounds}: pipeline, then raw`)
  pipe.push(await pipelineRound(r))
  raw.push(await rawRound())
}
// The home's statements in the pipeline rounds, per round (the drain's, the bench's poll, the
// setup of each round; not the INSERT that makes the backlog): the ten that took longest.
const homeStatements = (
  await q(
    `select left(regexp_replace(query, '\\s+', ' ', 'g'), 160) as query, calls::bigint / $1::int as calls,
       round((total_exec_time / $1::int)::numeric, 1)::float8 as exec_ms, shared_blks_hit::bigint / $1::int as hit,
       shared_blks_dirtied::bigint / $1::int as dirtied, wal_bytes::bigint / $1::int as wal_bytes
     from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database())
       and query not like 'insert into bench_http_%' and query not like '%pg_stat_statements%'
     order by total_exec_time desc limit 10`,
    [rounds],
  )
).rows.map((r) => ({ ...r, calls: Number(r.calls), hit: Number(r.hit), dirtied: Number(r.dirtied), wal_bytes: Number(r.wal_bytes) }))

progress(`latency: ${latencyCommits} single-row commits, batch_size 1`)
const segLatency = await tables.replace('bench_http_latency')
const subLatency = await subscribe('latency', 'bench_http_latency', 1)
await drained(subLatency)
const latencies: number[] = []
for (let i = 0; i < latencyCommits; i++) {
  await q(`insert into bench_http_latency (segment_id, id) values ($1, $2)`, [segLatency, `l${i}`])
  const committed = now()
  let at: number | undefined
  for (let tries = 0; at === undefined && tries < 5000; tries++) {
    at = arrivals.get(`l${i}`)
    if (at === undefined) await sleep(1)
  }
  if (at === undefined) throw new Error(`l${i} never arrived`)
  latencies.push(at - committed)
}
const peakMb = procStatusMb(sidecar.pid!, 'VmHWM')
sidecar.kill('SIGTERM')
await new Promise((r) => sidecar.once('exit', r))

const perSecond = (ms: number) => Math.round(members / (ms / 1000))
// Round i's baseline: the raw runs before (i) and after (i + 1) it.
const rawMs = pipe.map((_, i) => (raw[i]!.ms + raw[i + 1]!.ms) / 2)
const ratios = pipe.map((p, i) => rawMs[i]! / p.drainMs)
console.log(
  JSON.stringify(
    {
      benchmark: 'http',
      members,
      batch_size: batch,
      rounds,
      cores: availableParallelism(),
      target_ratio: 0.8,
      // R + 1 raw runs: before round 1, then after each round.
      raw_members_per_s: raw.map((x) => perSecond(x.ms)),
      raw_cpu_ms: raw.map((x) => x.cpuMs),
      // From the home commit (the rows and their change log in Postgres) to the home cursor covering
      // the last member (the receiver answered 2xx to every batch): how fast a backlog drains.
      drain_members_per_s: pipe.map((p) => perSecond(p.drainMs)),
      drain_ratios: ratios.map((x) => round(x, 2)),
      drain_ratio: round(median(ratios), 2),
      home_insert_commit_ms: pipe.map((p) => Math.round(p.commitMs)),
      drain_cpu_ms: pipe.map((p) => p.cpuMs),
      // The sidecar process alone (its CPU is what the drain waits for: the steadier reading of
      // a change to it than the ratio, which moves with the machine's other load).
      sidecar_cpu_us_per_member: pipe.map((p) => round((p.sidecarCpuMs * 1000) / members, 2)),
      home_statements_per_round: homeStatements,
      latency_ms: {
        commits: latencyCommits,
        p50: round(percentile(latencies, 50), 1),
        p99: round(percentile(latencies, 99), 1),
        max: round(Math.max(...latencies), 1),
        target_p50: 10,
        target_p99: 50,
      },
      sidecar: { idle_rss_mb: round(idleMb ?? NaN, 0), peak_rss_mb: round(peakMb ?? NaN, 0), target_peak_rss_mb: 250 },
    },
    null,
    2,
  ),
)
await tables.dropCurrent()
receiver.kill('SIGTERM')
await home.stop()
