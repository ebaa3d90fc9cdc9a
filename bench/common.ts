// Shared by the benchmarks: a database to run in (BENCH_DATABASE_URL, or a throwaway server
// started like the tests' one), timing, and the JSON report every benchmark prints.
import { readdirSync, readFileSync } from 'node:fs'
import mysql from 'mysql2/promise'
import pg from 'pg'
import { migrate } from '../src/migrate.js'
import { startMariadb, startPostgres, type PgServer } from '../test/harness/servers.js'

/** `pgOptions`: settings (`-c name=value`) for the server it starts, over the tests' defaults. */
export async function benchDatabase(
  pgOptions: string[] = [],
): Promise<{ url: string; pool: pg.Pool; dataDir: string | undefined; stop(): Promise<void> }> {
  let server: PgServer | undefined
  let url = process.env.BENCH_DATABASE_URL
  if (!url) {
    server = await startPostgres(pgOptions)
    url = server.url
  }
  await migrate(url)
  const pool = new pg.Pool({ connectionString: url, max: 4 })
  return {
    url,
    pool,
    dataDir: server?.dataDir,
    async stop() {
      await pool.end()
      await server?.destroy()
    },
  }
}

export async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint()
  await fn()
  return Number(process.hrtime.bigint() - t0) / 1e6
}

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
}

export const round = (x: number, digits = 3): number => Number(x.toFixed(digits))

// --- MariaDB for the delivery benchmark -------------------------------------------------------

/** A MariaDB server (BENCH_MYSQL_URL, or a throwaway one started like the tests' one). */
export async function benchMysql(): Promise<{ url: string; pid: (() => number) | undefined; stop(): Promise<void> }> {
  const url = process.env.BENCH_MYSQL_URL
  if (url) return { url, pid: undefined, async stop() {} }
  // mariadb-install-db now and then fails when another install runs at the same moment (a clash
  // on its temporary tables in /tmp); a second attempt gets a fresh directory.
  let server: Awaited<ReturnType<typeof startMariadb>> | undefined
  for (let attempt = 1; !server; attempt++) {
    try {
      server = await startMariadb()
    } catch (e) {
      if (attempt >= 3) throw e
    }
  }
  return {
    url: server.url,
    pid: () => Number(readFileSync(`${server!.root}/mariadbd.pid`, 'utf8')),
    async stop() {
      await server!.destroy()
    },
  }
}

/** A fresh database `name` on the MariaDB server at `serverUrl`: its URL and a connection to it. */
export async function mysqlDatabase(serverUrl: string, name: string): Promise<{ url: string; conn: mysql.Connection }> {
  const admin = await mysql.createConnection({ uri: serverUrl })
  await admin.query(`drop database if exists \`${name}\``)
  await admin.query(`create database \`${name}\` character set utf8mb4 collate utf8mb4_bin`)
  await admin.end()
  const u = new URL(serverUrl)
  u.pathname = `/${name}`
  const conn = await mysql.createConnection({
    uri: u.toString(),
    multipleStatements: true,
    charset: 'utf8mb4',
    supportBigNumbers: true,
    bigNumberStrings: true,
  })
  return { url: u.toString(), conn }
}

/** A /proc/<pid>/status field in MB (VmRSS, VmHWM, …). */
export function procStatusMb(pid: number, field: string): number | undefined {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) / 1024 : undefined
  } catch {
    return undefined
  }
}

/** Nearest-rank percentile of a sample (p in 0..100). */
export const percentile = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!
}

/**
 * CPU time (ms, user + system, including waited-for children) of every process on the machine by
 * kind: the Postgres servers, the MariaDB servers, Node processes, the rest; and the machine's
 * steal time. A difference of two readings says where a phase spent the machine's cores.
 */
export function cpuByKind(): Record<'postgres' | 'mariadb' | 'node' | 'other' | 'steal', number> {
  const tick = 1000 / 100 // USER_HZ is 100 on Linux
  // Steal: time the hypervisor gave this machine's vCPUs to someone else (all cores together).
  // On a shared host it explains rounds that are slow for no reason of their own.
  const cpuLine = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.split(/\s+/)
  const out = { postgres: 0, mariadb: 0, node: 0, other: 0, steal: Number(cpuLine[8] ?? 0) * tick }
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue
    let stat: string
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    } catch {
      continue // exited meanwhile
    }
    const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const ms = (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) * tick
    const kind = name.startsWith('postgres')
      ? 'postgres'
      : name.startsWith('mariadb') || name.startsWith('mysqld')
        ? 'mariadb'
        : name.startsWith('node')
          ? 'node'
          : 'other'
    out[kind] += ms
  }
  return out
}

/**
 * CPU time (ms, user + system) of one server: the process `pid` with what its exited children
 * used, and its living children (a Postgres postmaster's backends). Other servers on the machine
 * (tests running meanwhile) do not count, unlike cpuByKind.
 */
export function serverCpuMs(pid: number): number {
  const tick = 1000 / 100
  let ms = 0
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue
    let f: string[]
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8')
      f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    } catch {
      continue
    }
    if (Number(p) === pid) ms += (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) * tick
    else if (Number(f[1]) === pid) ms += (Number(f[11]) + Number(f[12])) * tick
  }
  return ms
}

/** The postmaster's pid of the Postgres server in `dataDir` (the first line of postmaster.pid). */
export const postmasterPid = (dataDir: string): number => Number(readFileSync(`${dataDir}/postmaster.pid`, 'utf8').split('\n')[0])

export function cpuSince(before: ReturnType<typeof cpuByKind>): Record<string, number> {
  const now = cpuByKind()
  return Object.fromEntries(Object.entries(now).map(([k, v]) => [k, Math.round(v - before[k as keyof typeof before])]))
}

/**
 * Segment tables of the shape the delivery benches share (the seed's columns, an index on
 * (segment_id, id)), registered as segments. `replace` retires and drops the table it made before:
 * a previous round's million rows would keep autovacuum on the cores of the next measured part.
 */
export function segmentTables(pool: pg.Pool) {
  let current: string | null = null
  const create = async (name: string): Promise<string> => {
    await pool.query(`create table ${name} (segment_id uuid not null, id text, hash_email text, actual_begin timestamptz not null default now(),
      actual_end timestamptz not null default 'infinity', processed timestamptz not null default now());
      create index on ${name} (segment_id, id)`)
    return (await pool.query(`select segmenter.create_segment($1::text, $2::regclass) as id`, [name, name])).rows[0].id as string
  }
  const dropCurrent = async () => {
    if (!current) return
    await pool.query(`select segmenter.retire_segment($1)`, [current])
    await pool.query(`drop table ${current}`)
    current = null
  }
  return {
    /** A new segment table; returns its segment id. */
    create,
    /** Retire and drop the table `replace` made last, if any. */
    dropCurrent,
    /** A new segment table in place of the one `replace` made last; returns its segment id. */
    async replace(name: string): Promise<string> {
      await dropCurrent()
      const id = await create(name)
      current = name
      return id
    },
    /** The table `replace` made last. */
    get current() {
      return current
    },
  }
}

/** How drained() asks whether a subscription is done (its $1 is the subscription id). */
export const DRAINED_POLL = 'select pending_changes from segmenter.status where subscription_id = $1'

/**
 * Wait until the subscription has nothing pending (its home cursor moves only after the target's
 * checkpoint); `alive`, if given, is checked on the way (a sidecar that died fails the wait at once).
 */
export async function drained(pool: pg.Pool, subscriptionId: string, alive?: () => string | null, timeoutMs = 1_800_000): Promise<void> {
  const end = Date.now() + timeoutMs
  for (;;) {
    const { rows } = await pool.query(DRAINED_POLL, [subscriptionId])
    if (Number(rows[0].pending_changes) === 0) return
    const dead = alive?.()
    if (dead) throw new Error(dead)
    if (Date.now() > end) throw new Error('delivery did not finish')
    await new Promise((r) => setTimeout(r, 100))
  }
}

/**
 * When the drain of a subscription ended, by the home's clock (epoch ms): the log row of its last
 * batch, written with the cursor move that ends it (segmenter.log.at is clock_timestamp()). Exact,
 * where drained() returns up to its 100 ms poll after the end (4-8% of a one-second drain).
 */
export async function drainEnd(pool: pg.Pool, subscriptionId: string): Promise<number> {
  const { rows } = await pool.query(
    `select extract(epoch from max(at)) * 1000 as at from segmenter.log where kind = 'batch' and ok and subscription_id = $1`,
    [subscriptionId],
  )
  if (rows[0].at === null) throw new Error(`subscription ${subscriptionId} logged no batch`)
  return Number(rows[0].at)
}

/** The MariaDB baseline: members 1..n into `table`, `batch` rows per INSERT, one transaction each; ms. */
export async function rawMysqlInsert(conn: mysql.Connection, table: string, n: number, batch: number): Promise<number> {
  const start = performance.now()
  for (let first = 1; first <= n; first += batch) {
    const values: string[] = []
    for (let g = first; g < first + batch && g <= n; g++)
      values.push(`('00000000-0000-0000-0000-000000000000', 'member-${g}', '${g.toString(16).padStart(32, '0')}', NOW(6))`)
    await conn.query(`start transaction; INSERT INTO ${table} (segId, clientId, email, updated) VALUES ${values.join(',')}; commit`)
  }
  return performance.now() - start
}
