// Delivery into ClickHouse through the whole pipeline (home INSERT → capture → sidecar → the default
// templates' versioned INSERT, one request per statement, then the checkpoint row), with the sidecar
// started as users start it (`bin/segmenter.js run`, a child process), against a baseline in the
// same run: a raw @clickhouse/client INSERT (JSONEachRow) of the same rows, batch by batch, into the
// same table. Each of R rounds runs raw and the pipeline, in alternating order; the ratio (rows/s
// of the pipeline from the home commit over rows/s of raw) is the median of the rounds'. Peak RSS
// (VmHWM) of the sidecar over the whole run. The server: Debian's clickhouse-server 18.16, started like the tests' one,
// unless BENCH_CLICKHOUSE_URL names one.
// Usage: node --import tsx bench/clickhouse.ts [members=1000000] [batch=1000] [rounds=3] [lanes=1]
import { spawn, type ChildProcess } from 'node:child_process'
import { availableParallelism } from 'node:os'
import { readdirSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { ClickHouseLogLevel, createClient } from '@clickhouse/client'
import { statementsOf } from '../src/sinks/clickhouse.js'
import { startClickhouse } from '../test/harness/servers.js'
import { benchDatabase, cpuByKind, cpuSince, drained as drainedIn, median, procStatusMb, round, segmentTables } from './common.js'

const members = Number(process.argv[2] ?? 1_000_000)
const batch = Number(process.argv[3] ?? 1000)
const rounds = Number(process.argv[4] ?? 3)
const lanes = Number(process.argv[5] ?? 1)
const ROOT = fileURLToPath(new URL('..', import.meta.url))
const template = (name: string) => readFileSync(new URL(`../templates/clickhouse/${name}.sql`, import.meta.url), 'utf8')
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const progress = (msg: string) => process.stderr.write(`[clickhouse] ${msg}\n`)

const home = await benchDatabase()
const q = (sql: string, params?: unknown[]) => home.pool.query(sql, params)
const server = process.env.BENCH_CLICKHOUSE_URL ? null : await startClickhouse()
const serverUrl = process.env.BENCH_CLICKHOUSE_URL ?? server!.url
const admin = createClient({ url: serverUrl, log: { level: ClickHouseLogLevel.OFF } })
await admin.command({ query: 'DROP DATABASE IF EXISTS bench_clickhouse' })
await admin.command({ query: 'CREATE DATABASE bench_clickhouse' })
const targetUrl = new URL(serverUrl)
targetUrl.pathname = '/bench_clickhouse'
const ch = createClient({ url: targetUrl.toString(), log: { level: ClickHouseLogLevel.OFF }, request_timeout: 300_000 })
const version = (await (await ch.query({ query: 'SELECT version() AS v', format: 'JSONEachRow' })).json<{ v: string }>())[0]!.v
process.env.BENCH_TARGET_URL = targetUrl.toString()
await q(`select segmenter.create_consumer('ch', 'clickhouse', 'clickhouse', 'BENCH_TARGET_URL', $1::jsonb)`, [JSON.stringify({ lanes })])

/** CPU ms (user + system) of this run's ClickHouse server so far (null for BENCH_CLICKHOUSE_URL). */
function serverCpuMs(): number | null {
  if (!server) return null
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      if (!readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(server.root)) continue
      const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
      return (Number(f[11]) + Number(f[12])) * 10
    } catch {
      continue
    }
  }
  return null
}

/** A fresh table `name` with the default schema's columns (ReplacingMergeTree(version)). */
async function targetTable(name: string) {
  await ch.command({ query: `DROP TABLE IF EXISTS ${name}` })
  const ddl = statementsOf(template('schema')).find((s) => s.includes('CREATE TABLE IF NOT EXISTS segment_members'))!
  await ch.command({ query: ddl.replace('CREATE TABLE IF NOT EXISTS segment_members', `CREATE TABLE ${name}`) })
}
const finalCount = async (name: string) =>
  Number(
    (
      await (
        await ch.query({ query: `SELECT count() AS n FROM ${name} FINAL WHERE deleted = 0`, format: 'JSONEachRow' })
      ).json<{ n: string }>()
    )[0]!.n,
  )

/** The baseline: the same rows, batch by batch, each one INSERT of JSONEachRow through the client. */
async function rawRound() {
  await targetTable('raw_members')
  const cpu = cpuByKind()
  const serverCpu = serverCpuMs()
  const start = performance.now()
  for (let first = 1; first <= members; first += batch) {
    const values: Array<Record<string, unknown>> = []
    for (let g = first; g < first + batch && g <= members; g++)
      values.push({ segment_id: '00000000-0000-0000-0000-000000000000', member_id: `member-${g}`, version: first, deleted: 0 })
    await ch.insert({ table: 'raw_members', values, format: 'JSONEachRow' })
  }
  const ms = performance.now() - start
  const cpuMs = cpuSince(cpu)
  const clickhouseCpuMs = serverCpu === null ? null : serverCpuMs()! - serverCpu
  if ((await finalCount('raw_members')) !== members) throw new Error('raw insert lost rows')
  await ch.command({ query: 'DROP TABLE raw_members' })
  return { ms, cpuMs, clickhouseCpuMs }
}

/** INSERT queries the server has run (system.events): the requests that each made a part. */
const insertQueries = async () =>
  Number(
    (
      await (
        await ch.query({ query: "SELECT value AS n FROM system.events WHERE event = 'InsertQuery'", format: 'JSONEachRow' })
      ).json<{ n: string }>()
    )[0]?.n ?? 0,
  )

const tables = segmentTables(home.pool)

const drained = (subscriptionId: string) => drainedIn(home.pool, subscriptionId)

/** The pipeline: a fresh segment and subscription; one home INSERT of every member, then the drain. */
async function pipelineRound(r: number) {
  const name = `bench_members_${r}`
  const seg = await tables.replace(name)
  await targetTable('segment_members')
  await q(
    `select segmenter.create_subscription(name => $1, consumer => 'ch', segments => array[$2], syntax => 'altcraft',
       add_sql => $3, remove_sql => $4, clear_sql => $5, batch_size => $6)`,
    [`throughput_${r}`, name, template('add'), template('remove'), template('clear'), batch],
  )
  const sub = (await q(`select subscription_id from segmenter.subscriptions where name = $1`, [`throughput_${r}`])).rows[0].subscription_id
  await drained(sub)
  const start = performance.now()
  await q(`insert into ${name} (segment_id, id) select $1, 'member-' || g from generate_series(1, $2) g`, [seg, members])
  const commitMs = performance.now() - start
  const cpu = cpuByKind()
  const serverCpu = serverCpuMs()
  const insertsBefore = await insertQueries()
  await drained(sub)
  const drainMs = performance.now() - start - commitMs
  const cpuMs = cpuSince(cpu)
  const clickhouseCpuMs = serverCpu === null ? null : serverCpuMs()! - serverCpu
  const inserts = (await insertQueries()) - insertsBefore
  if ((await finalCount('segment_members')) !== members) throw new Error('pipeline lost rows')
  await q(`select segmenter.drop_subscription($1)`, [`throughput_${r}`])
  await ch.command({ query: 'DROP TABLE segment_members' })
  return { commitMs, drainMs, cpuMs, clickhouseCpuMs, inserts }
}

const sidecar: ChildProcess = spawn('bin/segmenter.js', ['run'], {
  cwd: ROOT,
  env: { ...process.env, DATABASE_URL: home.url, SEGMENTER_LOG_LEVEL: 'warn', SEGMENTER_HTTP_PORT: '0' },
  stdio: ['ignore', 'ignore', 'inherit'],
})
// A failed run must not leave the sidecar behind, retrying a home that is gone.
process.on('exit', () => sidecar.kill('SIGKILL'))
await sleep(2000)
const idleMb = procStatusMb(sidecar.pid!, 'VmRSS')

const raw: Array<Awaited<ReturnType<typeof rawRound>>> = []
const pipe: Array<Awaited<ReturnType<typeof pipelineRound>>> = []
// The order alternates: the server's state drifts from round to round (raw ran at 89,604 rows/s
// in a first round and 46,939 in a third), and whichever side always ran first got the fresher one.
for (let r = 1; r <= rounds; r++) {
  const rawRun = async () => {
    progress(`round ${r}/${rounds}: raw @clickhouse/client INSERT, ${members} rows in batches of ${batch}`)
    await tables.dropCurrent()
    raw.push(await rawRound())
  }
  const pipelineRun = async () => {
    progress(`round ${r}/${rounds}: pipeline`)
    pipe.push(await pipelineRound(r))
  }
  if (r % 2 === 1) {
    await rawRun()
    await pipelineRun()
  } else {
    await pipelineRun()
    await rawRun()
  }
}
const peakMb = procStatusMb(sidecar.pid!, 'VmHWM')
sidecar.kill('SIGTERM')
await new Promise((r) => sidecar.once('exit', r))

const perSecond = (ms: number) => Math.round(members / (ms / 1000))
const ratios = raw.map((x, i) => x.ms / pipe[i]!.drainMs)
console.log(
  JSON.stringify(
    {
      benchmark: 'clickhouse',
      server: `ClickHouse ${version}`,
      members,
      batch_size: batch,
      lanes,
      rounds,
      cores: availableParallelism(),
      target_ratio: 0.8,
      raw_rows_per_s: raw.map((x) => perSecond(x.ms)),
      raw_cpu_ms: raw.map((x) => x.cpuMs),
      // The ClickHouse server's own CPU (the machine's other processes are in raw_cpu_ms' "other").
      raw_clickhouse_cpu_ms: raw.map((x) => x.clickhouseCpuMs),
      // From the home commit (the rows and their change log in Postgres) to the subscription's
      // checkpoint in ClickHouse covering the last row: how fast the sidecar drains a backlog.
      drain_rows_per_s: pipe.map((p) => perSecond(p.drainMs)),
      drain_ratios: ratios.map((x) => round(x, 2)),
      drain_ratio: round(median(ratios), 2),
      home_insert_commit_ms: pipe.map((p) => Math.round(p.commitMs)),
      drain_cpu_ms: pipe.map((p) => p.cpuMs),
      drain_clickhouse_cpu_ms: pipe.map((p) => p.clickhouseCpuMs),
      // INSERTs the server ran during the drain: one per batch, plus a checkpoint row per group of
      // batches sent together (each INSERT makes a part, which costs as much as 1,000 rows).
      drain_insert_queries: pipe.map((p) => p.inserts),
      sidecar: { idle_rss_mb: round(idleMb ?? NaN, 0), peak_rss_mb: round(peakMb ?? NaN, 0), target_peak_rss_mb: 250 },
    },
    null,
    2,
  ),
)
await tables.dropCurrent()
await ch.close()
await admin.command({ query: 'DROP DATABASE IF EXISTS bench_clickhouse' })
await admin.close()
await server?.destroy()
await home.stop()
