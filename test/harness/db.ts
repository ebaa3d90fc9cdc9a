// Per-test databases on the shared servers started by test/run.ts, plus private
// servers for tests that need to stop/restart a server. Always close() what you
// get (e.g. `t.after(() => db.close())`): open mysql2 pools keep the process alive.
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import mysql from 'mysql2/promise'
import { ClickHouseLogLevel, createClient, type ClickHouseClient } from '@clickhouse/client'
import { startClickhouse, startMariadb, startPostgres, type ClickhouseServer, type MariaServer, type PgServer } from './servers.js'

export type { ClickhouseServer, MariaServer, PgServer } from './servers.js'

export interface FreshPg {
  url: string
  database: string
  pool: pg.Pool
  query<T extends pg.QueryResultRow = any>(sql: string, params?: unknown[]): Promise<T[]>
  /** Ends the pool and drops the database. */
  close(): Promise<void>
}

export interface FreshMysql {
  url: string
  database: string
  pool: mysql.Pool
  /** Rows for a SELECT; for other statements mysql2's ResultSetHeader (cast as needed). */
  query<T = any>(sql: string, params?: unknown[]): Promise<T[]>
  /** Ends the pool and drops the database. */
  close(): Promise<void>
}

function env(name: string): string {
  const v = process.env[name]
  if (!v) throw new Error(`${name} is not set: run tests with \`make test\` (or \`make test-one FILE=...\`), which starts the test servers`)
  return v
}

/** The shared Postgres server (URL of its `postgres` database). */
export function pgServer(): { url: string } {
  return { url: env('SEGMENTER_TEST_PG_URL') }
}

/** The shared MariaDB server (mysql://root@127.0.0.1:PORT/). */
export function mariadb(): { url: string; port: number } {
  const url = env('SEGMENTER_TEST_MYSQL_URL')
  return { url, port: Number(new URL(url).port) }
}

const uniqueName = () => `t_${randomBytes(6).toString('hex')}`
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

function withDatabase(url: string, database: string): string {
  const u = new URL(url)
  u.pathname = `/${database}`
  return u.toString()
}

// allowExitOnIdle: the admin pool is never ended explicitly; it must not keep the process alive.
let pgAdmin: pg.Pool | undefined
function admin(): pg.Pool {
  if (!pgAdmin) {
    pgAdmin = new pg.Pool({ connectionString: pgServer().url, max: 2, allowExitOnIdle: true })
    pgAdmin.on('error', () => {})
  }
  return pgAdmin
}

// How long a test's teardown waits for the sessions it left to end on their own before the drop
// terminates them.
const SESSIONS_GONE_MS = 1000

/**
 * Wait until no session but ours is connected to `database`, up to SESSIONS_GONE_MS. Once in a
 * full run, a session a test left behind was terminated by the forced drop, and a client of it
 * without an error listener failed the test running next ("terminating connection due to
 * administrator command"; whose client it was is not found). Sessions still there after the wait
 * are named on stderr, to find that out, then terminated as before.
 */
async function sessionsGone(database: string): Promise<void> {
  const end = Date.now() + SESSIONS_GONE_MS
  for (;;) {
    const { rows } = await admin().query(
      `select pid, application_name, state, left(query, 80) as query from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()`,
      [database],
    )
    if (rows.length === 0) return
    if (Date.now() > end) {
      process.stderr.write(`[harness] ${database}: ${rows.length} session(s) left at teardown, terminated: ${JSON.stringify(rows)}\n`)
      return
    }
    await sleep(20)
  }
}

async function createPg(template: string): Promise<FreshPg> {
  const database = uniqueName()
  // CREATE DATABASE ... TEMPLATE fails with 55006 while any other session is connected
  // to the template (including a concurrent copy in another test process): back off and retry.
  for (let attempt = 1; ; attempt++) {
    try {
      await admin().query(`CREATE DATABASE ${database} TEMPLATE ${template}`)
      break
    } catch (e) {
      if ((e as { code?: string }).code !== '55006' || attempt >= 100) throw e
      await sleep(20 + Math.random() * 30 * Math.min(attempt, 10))
    }
  }
  const url = withDatabase(pgServer().url, database)
  const pool = new pg.Pool({ connectionString: url, max: 10, allowExitOnIdle: true })
  pool.on('error', () => {}) // an idle client dying must not crash the test process
  let closed = false
  return {
    url,
    database,
    pool,
    async query(sql, params) {
      return (await pool.query(sql, params as unknown[])).rows
    },
    async close() {
      if (closed) return
      closed = true
      await pool.end()
      await sessionsGone(database)
      await admin().query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)
    },
  }
}

/** A new database copied from the migrated template (schema `segmenter` present). */
export function freshPg(): Promise<FreshPg> {
  return createPg(process.env.SEGMENTER_TEST_PG_TEMPLATE ?? 'segmenter_template')
}

/** A new empty database (from template0, no migrations) for migration tests. */
export function freshPgPlain(): Promise<FreshPg> {
  return createPg('template0')
}

// One-off admin connections (not a pool): mysql2 pools hold ref'd sockets that would
// keep a test process alive after its last test.
async function mysqlAdmin(sql: string): Promise<void> {
  const { port } = mariadb()
  const c = await mysql.createConnection({ host: '127.0.0.1', port, user: 'root' })
  try {
    await c.query(sql)
  } finally {
    await c.end()
  }
}

/** A new MariaDB database (utf8mb4, binary collation) with a pool to it. */
export async function freshMysql(): Promise<FreshMysql> {
  const database = uniqueName()
  await mysqlAdmin(`CREATE DATABASE \`${database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`)
  const { url: serverUrl, port } = mariadb()
  const pool = mysql.createPool({
    host: '127.0.0.1',
    port,
    user: 'root',
    database,
    connectionLimit: 10,
    supportBigNumbers: true,
    bigNumberStrings: true,
    multipleStatements: false,
    charset: 'utf8mb4',
  })
  let closed = false
  return {
    url: withDatabase(serverUrl, database),
    database,
    pool,
    async query(sql, params) {
      const [rows] = await pool.query(sql, params)
      return rows as any
    },
    async close() {
      if (closed) return
      closed = true
      await pool.end()
      await mysqlAdmin(`DROP DATABASE IF EXISTS \`${database}\``)
    },
  }
}

/** A private MariaDB server the test may stop()/start() at will; destroy() it when done. */
export function freshMariadbServer(): Promise<MariaServer> {
  return startMariadb()
}

/** A private Postgres server (no segmenter_template: migrate it yourself); destroy() it when done. */
export function freshPgServer(): Promise<PgServer> {
  return startPostgres()
}

/** The shared ClickHouse server (http://default@127.0.0.1:PORT/default). */
export function clickhouse(): { url: string; port: number } {
  const url = env('SEGMENTER_TEST_CLICKHOUSE_URL')
  return { url, port: Number(new URL(url).port) }
}

export interface FreshClickhouse {
  url: string
  database: string
  client: ClickHouseClient
  /** Rows of a SELECT (JSONEachRow; 64-bit integers as 18.16 writes them: strings). */
  query<T = any>(sql: string): Promise<T[]>
  exec(sql: string): Promise<void>
  /** Drops the database and closes the client. */
  close(): Promise<void>
}

/** A client for `url`, quiet: tests assert on errors themselves. */
export const clickhouseClient = (url: string): ClickHouseClient => createClient({ url, log: { level: ClickHouseLogLevel.OFF } })

/** Wrap a client (an HTTP one, or chDB through the connection hook) as a FreshClickhouse. */
export function clickhouseOn(client: ClickHouseClient, url: string, database: string, close: () => Promise<void>): FreshClickhouse {
  return {
    url,
    database,
    client,
    async query(sql) {
      return (await client.query({ query: sql, format: 'JSONEachRow' })).json()
    },
    async exec(sql) {
      await client.command({ query: sql })
    },
    close,
  }
}

/** A new database on the shared ClickHouse server, `server` or a private one. */
export async function freshClickhouse(serverUrl = clickhouse().url): Promise<FreshClickhouse> {
  const database = uniqueName()
  const admin = clickhouseClient(serverUrl)
  await admin.command({ query: `CREATE DATABASE ${database}` })
  const u = new URL(serverUrl)
  u.pathname = `/${database}`
  const url = u.toString()
  const client = clickhouseClient(url)
  let closed = false
  return clickhouseOn(client, url, database, async () => {
    if (closed) return
    closed = true
    await client.close()
    await admin.command({ query: `DROP DATABASE IF EXISTS ${database}` }).catch(() => {})
    await admin.close()
  })
}

/** A private ClickHouse server the test may stop()/start() at will; destroy() it when done. */
export function freshClickhouseServer(): Promise<ClickhouseServer> {
  return startClickhouse()
}

// chDB keeps one data directory per process: every test of a file shares it, each in a database of its own.
let chdbDir: string | undefined

/**
 * A new database in this process's chDB session (ClickHouse 26.7 embedded, through
 * @clickhouse/client's connection hook), and the sink URL for it (`chdb:DIR?database=NAME`).
 */
export async function freshChdb(): Promise<FreshClickhouse> {
  if (!chdbDir) {
    const dir = (chdbDir = mkdtempSync(join(tmpdir(), 'segmenter-chdb-')))
    process.on('exit', () => rmSync(dir, { recursive: true, force: true }))
  }
  const { createChdbConnection } = await import('chdb/connection')
  // chdb types the hook with @clickhouse/client-common's copy of the client's types.
  const connection = createChdbConnection({ path: chdbDir }) as unknown as NonNullable<Parameters<typeof createClient>[0]>['connection']
  const client = createClient({ connection, log: { level: ClickHouseLogLevel.OFF } })
  const database = uniqueName()
  await client.command({ query: `CREATE DATABASE ${database}` })
  await client.command({ query: `USE ${database}` })
  let closed = false
  return clickhouseOn(client, `chdb:${chdbDir}?database=${database}`, database, async () => {
    if (closed) return
    closed = true
    await client.command({ query: `DROP DATABASE IF EXISTS ${database}` }).catch(() => {})
    await client.close()
  })
}
