// Configuration from the environment, resolved once at start and frozen.
import assert from 'node:assert'
import { installSchema } from './schema.js'

export interface Config {
  /** Home database. (Default: none: the CLI starts an embedded Postgres under ./.segmenter/) */
  databaseUrl: string | undefined
  /** The schema of the install in the home database, SEGMENTER_SCHEMA (schema.ts). (Default: segmenter) */
  schema: string
  /** Poll for work this often even without NOTIFY. (Default: 1000) */
  pollIntervalMs: number
  /** Subscriptions delivered in parallel, 1 to 64; the home pool is sized from it. (Default: 4) */
  concurrency: number
  /** pino log level. (Default: info) */
  logLevel: string
  /** How often due auto segments are looked for and refreshed. (Default: 10000) */
  refreshIntervalMs: number
  /** Port of /healthz, /readyz, /metrics and the status page; 0 picks a free one. (Default: 9187) */
  httpPort: number
  /** Address the HTTP endpoint binds. (Default: 127.0.0.1) */
  httpHost: string
  /** Where the embedded Postgres keeps its data when DATABASE_URL is not set. (Default: ./.segmenter) */
  dataDir: string
  /** The embedded Postgres' port. (Default: 54329) */
  embeddedPort: number
  /**
   * As root, where the embedded Postgres' binaries and data go when the user it runs as cannot
   * reach them in the checkout. (Default: /var/cache/segmenter)
   */
  embeddedCache: string
}

export const defaults = {
  refreshIntervalMs: 10_000,
  pollIntervalMs: 1000,
  concurrency: 4,
  logLevel: 'info',
  httpPort: 9187,
  httpHost: '127.0.0.1',
  dataDir: '.segmenter',
  embeddedPort: 54329,
  embeddedCache: '/var/cache/segmenter',
} satisfies Partial<Config>

/**
 * The most subscriptions one sidecar delivers at once. Its home pool grows with it
 * (db.ts poolSizeFor: 195 clients at 64), and the home server's max_connections must hold them.
 */
export const MAX_CONCURRENCY = 64

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Readonly<Config> {
  const config: Config = {
    databaseUrl: env.DATABASE_URL || undefined,
    schema: installSchema(env),
    pollIntervalMs: env.SEGMENTER_POLL_INTERVAL_MS ? Number(env.SEGMENTER_POLL_INTERVAL_MS) : defaults.pollIntervalMs,
    concurrency: env.SEGMENTER_CONCURRENCY ? Number(env.SEGMENTER_CONCURRENCY) : defaults.concurrency,
    logLevel: env.SEGMENTER_LOG_LEVEL ?? defaults.logLevel,
    refreshIntervalMs: env.SEGMENTER_REFRESH_INTERVAL_MS ? Number(env.SEGMENTER_REFRESH_INTERVAL_MS) : defaults.refreshIntervalMs,
    httpPort: env.SEGMENTER_HTTP_PORT ? Number(env.SEGMENTER_HTTP_PORT) : defaults.httpPort,
    httpHost: env.SEGMENTER_HTTP_HOST ?? defaults.httpHost,
    dataDir: env.SEGMENTER_DATA_DIR ?? defaults.dataDir,
    embeddedPort: env.SEGMENTER_EMBEDDED_PORT ? Number(env.SEGMENTER_EMBEDDED_PORT) : defaults.embeddedPort,
    embeddedCache: env.SEGMENTER_EMBEDDED_CACHE || defaults.embeddedCache,
  }
  assert(
    Number.isInteger(config.pollIntervalMs) && config.pollIntervalMs >= 10,
    `configuration assert: SEGMENTER_POLL_INTERVAL_MS must be an integer of at least 10 (got ${env.SEGMENTER_POLL_INTERVAL_MS})`,
  )
  assert(
    Number.isInteger(config.concurrency) && config.concurrency >= 1 && config.concurrency <= MAX_CONCURRENCY,
    `configuration assert: SEGMENTER_CONCURRENCY must be an integer from 1 to ${MAX_CONCURRENCY} (got ${env.SEGMENTER_CONCURRENCY})`,
  )
  assert(
    Number.isInteger(config.refreshIntervalMs) && config.refreshIntervalMs >= 100,
    `configuration assert: SEGMENTER_REFRESH_INTERVAL_MS must be an integer of at least 100 (got ${env.SEGMENTER_REFRESH_INTERVAL_MS})`,
  )
  assert(
    Number.isInteger(config.httpPort) && config.httpPort >= 0 && config.httpPort < 65536,
    `configuration assert: SEGMENTER_HTTP_PORT must be a port number (got ${env.SEGMENTER_HTTP_PORT})`,
  )
  return Object.freeze(config)
}
