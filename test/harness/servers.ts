// Throwaway PostgreSQL, MariaDB and ClickHouse servers for tests: each gets its own temp dir
// (data + log), a free loopback port, and speed-over-durability settings.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { accessSync, closeSync, constants, existsSync, openSync, readdirSync, readFileSync, realpathSync, rmSync } from 'node:fs'
import { chmod, chown, mkdtemp, rm, writeFile } from 'node:fs/promises'
import net, { type AddressInfo } from 'node:net'
import { dirname, join } from 'node:path'
import pg from 'pg'
import mysql from 'mysql2/promise'

export interface Server {
  kind: 'postgres' | 'mariadb' | 'clickhouse'
  /** postgres://postgres@127.0.0.1:PORT/postgres, mysql://root@127.0.0.1:PORT/ or http://default@127.0.0.1:PORT/default */
  url: string
  port: number
  /** temp dir holding dataDir and logFile */
  root: string
  dataDir: string
  logFile: string
  /** argv used to (re)start the server */
  command: string[]
  readonly running: boolean
  /** (Re)start on the same port and data dir; resolves once it accepts connections. */
  start(): Promise<void>
  /** Stop the server, keeping its data (start() brings it back). */
  stop(): Promise<void>
  /** Stop and remove the temp dir (unless keepData). Idempotent. */
  destroy(opts?: { keepData?: boolean }): Promise<void>
}
export type PgServer = Server
export type MariaServer = Server
export type ClickhouseServer = Server

const isRoot = process.getuid?.() === 0
const START_TIMEOUT_MS = 60_000
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

// Servers still running when this process exits (crash, forgotten destroy()) are
// killed synchronously so they never outlive the test run holding ports and memory.
const live = new Set<{ killSync(): void; root: string }>()
process.on('exit', () => {
  for (const s of live) {
    try {
      s.killSync()
      if (process.env.SEGMENTER_TEST_KEEP !== '1') rmSync(s.root, { recursive: true, force: true })
    } catch {
      /* best effort */
    }
  }
})

// Ports handed out by this process: servers started in parallel must not get the same
// port back from the kernel before the first one has bound it.
const handedOut = new Set<number>()
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = net.createServer().unref().on('error', reject)
      srv.listen(0, '127.0.0.1', () => {
        const { port } = srv.address() as AddressInfo
        srv.close(() => resolve(port))
      })
    })
    if (handedOut.has(port)) continue
    handedOut.add(port)
    return port
  }
}

export function isExecutable(p: string): boolean {
  try {
    accessSync(p, constants.X_OK)
    return true
  } catch {
    return false
  }
}

/** First executable `name` on PATH, then in `fallbackDirs`. */
export function findBin(name: string, fallbackDirs: string[]): string {
  const dirs = [...(process.env.PATH ?? '').split(':').filter(Boolean), ...fallbackDirs]
  for (const d of dirs) if (isExecutable(join(d, name))) return join(d, name)
  throw new Error(`${name} not found on PATH or in ${fallbackDirs.join(', ')}; install it (see .ci/run)`)
}

function pgBins(): { pgCtl: string; initdb: string } {
  // SEGMENTER_PG_BIN: another build's bin directory (test/matrix.ts runs the suites on each major).
  const pinned = process.env.SEGMENTER_PG_BIN
  if (pinned) return { pgCtl: join(pinned, 'pg_ctl'), initdb: join(pinned, 'initdb') }
  // Debian keeps the real binaries in /usr/lib/postgresql/N/bin; prefer 15, then any other version.
  const versions = existsSync('/usr/lib/postgresql') ? readdirSync('/usr/lib/postgresql').sort((a, b) => Number(b) - Number(a)) : []
  const fallbacks = ['15', ...versions.filter((v) => v !== '15')].map((v) => `/usr/lib/postgresql/${v}/bin`)
  const pgCtl = findBin('pg_ctl', fallbacks)
  // initdb must match pg_ctl's version: look next to the resolved pg_ctl first.
  const sibling = join(dirname(realpathSync(pgCtl)), 'initdb')
  return { pgCtl, initdb: isExecutable(sibling) ? sibling : findBin('initdb', fallbacks) }
}

/** Command line that runs `cmd` as `user` when we are root (initdb and friends refuse root). */
function asUser(user: string, cmd: string, args: string[]): string[] {
  return isRoot ? ['runuser', '-u', user, '--', cmd, ...args] : [cmd, ...args]
}

/** Run to completion; reject with the command's output on failure. */
function run(argv: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const [cmd, ...args] = argv as [string, ...string[]]
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    p.stdout.on('data', (d) => (out += d))
    p.stderr.on('data', (d) => (out += d))
    p.on('error', reject)
    // 'exit' rather than 'close': a daemonized grandchild could keep the pipes open.
    p.on('exit', (code, signal) =>
      code === 0 ? resolve(out) : reject(new Error(`${argv.join(' ')} failed (${signal ?? code}):\n${out.trim()}`)),
    )
  })
}

/** Fresh temp dir owned by the service user; /tmp entries must be traversable for it. */
async function makeRoot(kind: string, owner: string): Promise<string> {
  const root = await mkdtemp(`/tmp/segmenter-${kind}-`)
  await chmod(root, 0o755)
  if (isRoot) {
    const { uid, gid } = lookupUser(owner)
    await chown(root, uid, gid)
  }
  return root
}

function lookupUser(name: string): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${name}:`))
  if (!line) throw new Error(`system user ${name} does not exist; is the server package installed? (see .ci/run)`)
  const [, , uid, gid] = line.split(':')
  return { uid: Number(uid), gid: Number(gid) }
}

function logTail(file: string, lines = 40): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
  } catch {
    return '(no log)'
  }
}

/** Poll `probe` until it succeeds; on timeout (or `failed()` saying why) throw with the log tail. */
async function waitReady(kind: string, logFile: string, probe: () => Promise<void>, failed: () => string | undefined) {
  const deadline = Date.now() + START_TIMEOUT_MS
  let last: unknown
  for (;;) {
    const why = failed()
    if (why === undefined) {
      try {
        return await probe()
      } catch (e) {
        last = e
      }
    }
    if (why !== undefined || Date.now() > deadline) {
      throw new Error(
        `${kind} did not start (${why ?? `no connection within ${START_TIMEOUT_MS / 1000}s: ${String(last)}`}).\n` +
          `log: ${logFile}\n--- log tail ---\n${logTail(logFile)}\n---`,
      )
    }
    await sleep(100)
  }
}

/**
 * `options`: more server settings (`-c name=value`), after the defaults and SEGMENTER_TEST_PG_OPTIONS,
 * so they override both (a bench's home sized like a production server; the tests pass none).
 */
export async function startPostgres(options: string[] = []): Promise<PgServer> {
  const { pgCtl, initdb } = pgBins()
  const port = await freePort()
  const root = await makeRoot('pg', 'postgres')
  const dataDir = join(root, 'data')
  const logFile = join(root, 'server.log')
  // --no-sync/fsync=off etc.: test data is disposable, speed matters more than durability.
  await run(asUser('postgres', initdb, ['-D', dataDir, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--locale=C', '--no-sync']))
  const opts = [
    `-p ${port}`,
    `-k ${root}`,
    '-c listen_addresses=127.0.0.1',
    '-c fsync=off',
    '-c synchronous_commit=off',
    '-c full_page_writes=off',
    '-c max_connections=200',
    '-c shared_buffers=256MB',
    // For profiling, e.g. '-c shared_preload_libraries=pg_stat_statements'.
    ...(process.env.SEGMENTER_TEST_PG_OPTIONS ? [process.env.SEGMENTER_TEST_PG_OPTIONS] : []),
    ...options,
  ].join(' ')
  const command = asUser('postgres', pgCtl, ['-D', dataDir, '-l', logFile, '-w', '-t', '60', '-o', opts, 'start'])
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`
  let running = false
  let destroyed = false
  const kill = asUser('postgres', pgCtl, ['-D', dataDir, '-m', 'immediate', 'stop'])
  const handle = {
    root,
    killSync: () => {
      spawnSync(kill[0]!, kill.slice(1), { stdio: 'ignore' })
    },
  }
  // A server that failed to start is killed but its dir is kept: the error points at its log.
  const abandon = () => {
    handle.killSync()
    running = false
    live.delete(handle)
  }

  const server: PgServer = {
    kind: 'postgres',
    url,
    port,
    root,
    dataDir,
    logFile,
    command,
    get running() {
      return running
    },
    async start() {
      if (running) return
      live.add(handle)
      let startErr: string | undefined
      await run(command).catch((e: Error) => {
        startErr = e.message
      })
      running = startErr === undefined
      await waitReady(
        'postgres',
        logFile,
        async () => {
          const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 })
          c.on('error', () => {})
          try {
            await c.connect()
            await c.query('select 1')
          } finally {
            await c.end().catch(() => {})
          }
        },
        () => startErr,
      ).catch((e) => {
        abandon()
        throw e
      })
    },
    async stop() {
      if (!running) return
      await run(asUser('postgres', pgCtl, ['-D', dataDir, '-m', 'fast', '-w', '-t', '60', 'stop']))
      running = false
      live.delete(handle)
    },
    async destroy({ keepData = false } = {}) {
      if (destroyed) return
      destroyed = true
      await server.stop().catch(() => handle.killSync())
      live.delete(handle)
      if (!keepData) await rm(root, { recursive: true, force: true })
    },
  }
  await server.start()
  return server
}

export async function startMariadb(): Promise<MariaServer> {
  const mariadbd = findBin('mariadbd', ['/usr/sbin', '/usr/local/sbin', '/usr/libexec', '/usr/local/mysql/bin'])
  const installDb = findBin('mariadb-install-db', ['/usr/bin', '/usr/local/bin', '/usr/local/mysql/scripts'])
  const port = await freePort()
  const root = await makeRoot('mariadb', 'mysql')
  const dataDir = join(root, 'data')
  const logFile = join(root, 'server.log')
  const userArg = isRoot ? ['--user=mysql'] : []
  // --no-defaults everywhere: never pick up /etc/mysql config (ports, sockets, datadir) of a system install.
  // Its own tmpdir: a starting mariadbd deletes every #sql* file in its tmpdir, and in the shared
  // /tmp those were the temporary tables of another test file's bootstrap ("Could not remove
  // temporary table", then "Installation of system tables failed").
  const tmpArg = `--tmpdir=${root}`
  await run([
    installDb,
    '--no-defaults',
    ...userArg,
    `--datadir=${dataDir}`,
    tmpArg,
    '--auth-root-authentication-method=normal',
    '--skip-test-db',
  ])
  // mariadbd (running as mysql) appends to the log we also hand it as stdout/stderr, so it must own it.
  await writeFile(logFile, '')
  if (isRoot) {
    const { uid, gid } = lookupUser('mysql')
    await chown(logFile, uid, gid)
  }
  const command = [
    mariadbd,
    '--no-defaults',
    ...userArg,
    `--datadir=${dataDir}`,
    tmpArg,
    `--port=${port}`,
    '--bind-address=127.0.0.1',
    `--socket=${join(dataDir, 's.sock')}`,
    `--pid-file=${join(root, 'mariadbd.pid')}`,
    `--log-error=${logFile}`,
    '--skip-name-resolve',
    '--innodb-flush-log-at-trx-commit=0',
    '--max-connections=500',
    '--innodb-buffer-pool-size=512M',
    '--character-set-server=utf8mb4',
    '--collation-server=utf8mb4_bin',
  ]
  return childServer({
    kind: 'mariadb',
    name: 'mariadbd',
    url: `mysql://root@127.0.0.1:${port}/`,
    port,
    root,
    dataDir,
    logFile,
    command,
    output: logFile,
    stopTimeoutMs: 60_000,
    probe: async () => {
      const c = await mysql.createConnection({ host: '127.0.0.1', port, user: 'root', connectTimeout: 2000 })
      try {
        await c.ping()
      } finally {
        await c.end().catch(() => {})
      }
    },
  })
}

/** The user with a password that ClickHouse test servers also have (for URLs with a password). */
export const CLICKHOUSE_USER = { name: 'segmenter', password: 'p@ss:w/rd' }

/**
 * Debian's clickhouse-server (18.16) as the `clickhouse` user, with a private config, users file
 * and data dir; HTTP on a free loopback port (the native protocol port too: it cannot be turned
 * off). Ready in about 0.1 s.
 */
export async function startClickhouse(): Promise<ClickhouseServer> {
  const bin = findBin('clickhouse-server', ['/usr/sbin', '/usr/bin', '/usr/local/bin'])
  const [port, tcpPort] = [await freePort(), await freePort()]
  const root = await makeRoot('clickhouse', 'clickhouse')
  const dataDir = join(root, 'data')
  const logFile = join(root, 'server.log')
  const config = join(root, 'config.xml')
  await writeFile(
    config,
    `<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>${logFile}</log><errorlog>${join(root, 'server.err.log')}</errorlog><console>0</console></logger>
  <http_port>${port}</http_port>
  <tcp_port>${tcpPort}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>${dataDir}/</path>
  <tmp_path>${dataDir}/tmp/</tmp_path>
  <user_files_path>${dataDir}/user_files/</user_files_path>
  <format_schema_path>${dataDir}/format_schemas/</format_schema_path>
  <users_config>${join(root, 'users.xml')}</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mlock_executable>false</mlock_executable>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <max_concurrent_queries>200</max_concurrent_queries>
</yandex>
`,
  )
  const password = CLICKHOUSE_USER.password.replaceAll('&', '&amp;').replaceAll('<', '&lt;')
  await writeFile(
    join(root, 'users.xml'),
    `<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <quotas><default></default></quotas>
  <users>
    <default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>
    <${CLICKHOUSE_USER.name}><password>${password}</password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></${CLICKHOUSE_USER.name}>
  </users>
</yandex>
`,
  )
  const owner = isRoot ? lookupUser('clickhouse') : undefined
  if (owner) for (const f of [config, join(root, 'users.xml')]) await chown(f, owner.uid, owner.gid)
  const command = [bin, `--config-file=${config}`]
  return childServer({
    kind: 'clickhouse',
    name: 'clickhouse-server',
    url: `http://default@127.0.0.1:${port}/default`,
    port,
    root,
    dataDir,
    logFile,
    command,
    output: join(root, 'stdout.log'),
    // As root, the server runs as `clickhouse` (it has no --user option of its own).
    spawnOptions: { cwd: root, ...(owner ? { uid: owner.uid, gid: owner.gid } : {}) },
    stopTimeoutMs: 30_000,
    probe: async () => {
      const res = await fetch(`http://127.0.0.1:${port}/?query=SELECT%201`, { signal: AbortSignal.timeout(2000) })
      if (!res.ok || (await res.text()).trim() !== '1') throw new Error(`HTTP ${res.status}`)
    },
  })
}

/**
 * A server run as a child process of this one (MariaDB, ClickHouse), started now: detached (its
 * own process group, so a terminal ^C reaches only us and we shut it down in order) and unref'd
 * (a forgotten server must not keep a test process alive; the exit hook kills it). Ready once
 * `probe` succeeds; stopped with SIGTERM, then SIGKILL after stopTimeoutMs.
 */
async function childServer(
  options: Pick<Server, 'kind' | 'url' | 'port' | 'root' | 'dataDir' | 'logFile' | 'command'> & {
    name: string // the program, for messages
    output: string // where its stdout and stderr go (appended)
    spawnOptions?: { cwd?: string; uid?: number; gid?: number }
    stopTimeoutMs: number
    probe: () => Promise<void>
  },
): Promise<Server> {
  const { kind, name, root, command } = options
  let proc: ChildProcess | undefined
  let exited: string | undefined
  let destroyed = false
  const handle = {
    root,
    killSync: () => {
      proc?.kill('SIGKILL')
    },
  }
  const abandon = () => {
    handle.killSync()
    proc = undefined
    live.delete(handle)
  }
  const server: Server = {
    kind,
    url: options.url,
    port: options.port,
    root,
    dataDir: options.dataDir,
    logFile: options.logFile,
    command,
    get running() {
      return proc !== undefined
    },
    async start() {
      if (proc) return
      const fd = openSync(options.output, 'a')
      const p = spawn(command[0]!, command.slice(1), { stdio: ['ignore', fd, fd], detached: true, ...options.spawnOptions })
      closeSync(fd)
      p.unref()
      proc = p
      exited = undefined
      live.add(handle)
      p.on('exit', (code, signal) => {
        exited = `${name} exited with ${signal ?? code}`
        if (proc === p) {
          proc = undefined
          live.delete(handle)
        }
      })
      p.on('error', (e) => {
        exited = `cannot run ${name}: ${e.message}`
      })
      await waitReady(kind, options.logFile, options.probe, () => exited).catch((e) => {
        abandon()
        throw e
      })
    },
    async stop() {
      const p = proc
      if (!p) return
      p.ref() // keep the event loop alive while we wait for the exit
      const gone = new Promise<void>((r) => (p.exitCode !== null || p.signalCode !== null ? r() : p.once('exit', () => r())))
      p.kill('SIGTERM')
      const timer = setTimeout(() => p.kill('SIGKILL'), options.stopTimeoutMs)
      await gone
      clearTimeout(timer)
      proc = undefined
      live.delete(handle)
    },
    async destroy({ keepData = false } = {}) {
      if (destroyed) return
      destroyed = true
      await server.stop()
      if (!keepData) await rm(root, { recursive: true, force: true })
    },
  }
  await server.start()
  return server
}
