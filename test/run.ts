// Test entry point: node --import tsx test/run.ts [files...]
// Starts throwaway Postgres, MariaDB and ClickHouse, builds the migrated template database, runs
// node's test runner on the files with the servers' URLs in env, and always stops
// the servers afterwards.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { migrate } from '../src/migrate.js'
import { startClickhouse, startMariadb, startPostgres, type Server } from './harness/servers.js'

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const TEMPLATE = 'segmenter_template'
const keep = process.env.SEGMENTER_TEST_KEEP === '1'
const servers: Server[] = []
let child: ChildProcess | undefined
let stopping: Promise<void> | undefined

function findTests(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => {
      const p = join(dir, e.name)
      if (e.isDirectory()) return e.name === 'node_modules' ? [] : findTests(p)
      return e.name.endsWith('.test.ts') ? [p] : []
    })
    .sort()
}

function shutdown(failed: boolean): Promise<void> {
  stopping ??= (async () => {
    const keepData = keep && failed
    await Promise.allSettled(servers.map((s) => s.destroy({ keepData })))
    if (keepData) for (const s of servers) console.error(`kept ${s.kind} data: ${s.dataDir} (log: ${s.logFile})`)
  })()
  return stopping
}

for (const [sig, code] of [
  ['SIGINT', 130],
  ['SIGTERM', 143],
] as const) {
  process.on(sig, () => {
    console.error(`\n${sig}: stopping test servers`)
    child?.kill(sig)
    void shutdown(true).finally(() => process.exit(code))
  })
}

async function buildTemplate(serverUrl: string): Promise<void> {
  const admin = new pg.Client({ connectionString: serverUrl })
  await admin.connect()
  try {
    await admin.query(`CREATE DATABASE ${TEMPLATE}`)
    const url = new URL(serverUrl)
    url.pathname = `/${TEMPLATE}`
    const { applied } = await migrate(url.toString())
    // Any session left on the template makes every CREATE DATABASE ... TEMPLATE fail (55006).
    const { rowCount } = await admin.query('select pg_terminate_backend(pid) from pg_stat_activity where datname = $1', [TEMPLATE])
    if (rowCount) console.error(`warning: migrate() left ${rowCount} connection(s) open; terminated them`)
    // No connections from now on, so copies can never collide with a stray session.
    await admin.query(`ALTER DATABASE ${TEMPLATE} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false`)
    const { rows } = await admin.query<{ server_version: string }>('show server_version')
    console.error(`template ${TEMPLATE}: ${applied.length} migration(s) applied on PostgreSQL ${rows[0]!.server_version}`)
  } finally {
    await admin.end()
  }
}

/** Tests spawn the built CLI (bin/segmenter.js runs dist/): build it when a source is newer. */
function buildIfStale(): void {
  const built = join(repo, 'dist', 'cli.js')
  const newest = (dir: string): number =>
    Math.max(
      0,
      ...readdirSync(dir, { withFileTypes: true }).map((e) =>
        e.isDirectory() ? newest(join(dir, e.name)) : statSync(join(dir, e.name)).mtimeMs,
      ),
    )
  if (existsSync(built) && statSync(built).mtimeMs >= newest(join(repo, 'src'))) return
  console.error('dist/ is older than src/: npm run build')
  execFileSync('npm', ['run', 'build', '--silent'], { cwd: repo, stdio: 'inherit' })
}

async function main(): Promise<number> {
  buildIfStale()
  const args = process.argv.slice(2)
  const files = (args.length ? args.map((f) => resolve(f)) : findTests(join(repo, 'test'))).map((f) => relative(repo, f))
  if (!files.length) {
    console.error('no test files found')
    return 1
  }

  const t0 = Date.now()
  const started = await Promise.allSettled([startPostgres(), startMariadb(), startClickhouse()])
  for (const r of started) if (r.status === 'fulfilled') servers.push(r.value)
  if (started.some((r) => r.status === 'rejected')) {
    for (const r of started) if (r.status === 'rejected') console.error(`test server startup failed: ${(r.reason as Error).message}`)
    return 1
  }
  const [pgS, my, ch] = started.map((r) => (r as PromiseFulfilledResult<Server>).value) as [Server, Server, Server]
  console.error(
    `test servers up in ${Date.now() - t0} ms: ${pgS.url} (log ${pgS.logFile}), ${my.url} (log ${my.logFile}), ${ch.url} (log ${ch.logFile})`,
  )

  try {
    await buildTemplate(pgS.url)
  } catch (e) {
    console.error(`building ${TEMPLATE} with migrate() failed:`, e)
    return 1
  }

  // Node 20's --test does not expand globs for .ts reliably, so files are listed explicitly.
  const timeout = process.env.SEGMENTER_TEST_TIMEOUT_MS ?? '300000' // a hung test must not eat CI's budget
  child = spawn(
    process.execPath,
    // --test-force-exit: a file whose tests all finished is done even if a client library still
    // holds a reconnect timer (seen once under full-suite load after the home-restart test);
    // a sidecar's own clean exit is asserted separately (test/ops.test.ts, SIGTERM → exit 0).
    [
      '--import',
      'tsx',
      '--test',
      '--test-force-exit',
      '--test-concurrency=2',
      `--test-timeout=${timeout}`,
      // SEGMENTER_TEST_NAME=regex runs only the tests whose names match (make test-one, make chaos).
      ...(process.env.SEGMENTER_TEST_NAME ? [`--test-name-pattern=${process.env.SEGMENTER_TEST_NAME}`] : []),
      ...files,
    ],
    {
      cwd: repo,
      stdio: 'inherit',
      env: {
        ...process.env,
        SEGMENTER_TEST_PG_URL: pgS.url,
        SEGMENTER_TEST_PG_TEMPLATE: TEMPLATE,
        SEGMENTER_TEST_PG_DATADIR: pgS.dataDir,
        SEGMENTER_TEST_MYSQL_URL: my.url,
        SEGMENTER_TEST_MYSQL_DATADIR: my.dataDir,
        SEGMENTER_TEST_MYSQL_CMD: JSON.stringify(my.command),
        SEGMENTER_TEST_CLICKHOUSE_URL: ch.url,
      },
    },
  )
  return new Promise((res) => {
    child!.on('error', (e) => {
      console.error(e)
      res(1)
    })
    child!.on('exit', (code, signal) => res(code ?? (signal ? 1 : 0)))
  })
}

let code = 1
try {
  code = await main()
} catch (e) {
  console.error(e)
} finally {
  await shutdown(code !== 0)
}
process.exit(code)
