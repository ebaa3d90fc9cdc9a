// The `segmenter` command. Every command works on DATABASE_URL; `migrate` and `run` are the two an
// operator needs, the others are SQL API calls with readable output (or --json).
import { Command } from 'commander'
import { loadConfig } from './config.js'
import { createPool } from './db.js'
import { fromPgError } from './errors.js'
import { createLogger } from './logger.js'
import { migrate } from './migrate.js'
import { previewSubscription } from './preview.js'
import { runDueRefreshes } from './refresh.js'
import { startSidecar } from './sidecar.js'

const program = new Command('segmenter').description('Postgres-native segments, kept in sync with external SQL stores').showHelpAfterError()

function databaseUrl(): string {
  const url = loadConfig().databaseUrl
  if (!url) {
    console.error('segmenter: DATABASE_URL is not set (export DATABASE_URL=postgres://user@host/db)')
    process.exit(2)
  }
  return url
}

function print(rows: unknown, json: boolean): void {
  if (json) console.log(JSON.stringify(rows, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2))
  else if (Array.isArray(rows)) console.table(rows)
  else console.log(rows)
}

async function withPool<T>(fn: (pool: ReturnType<typeof createPool>) => Promise<T>): Promise<T> {
  const pool = createPool(databaseUrl(), 2)
  try {
    return await fn(pool)
  } catch (err) {
    throw fromPgError(err)
  } finally {
    await pool.end()
  }
}

program.command('migrate').description('apply the db/ migrations (safe to run twice or concurrently)').option('--json', 'JSON output')
  .action(async (o: { json?: boolean }) => {
    const result = await migrate(databaseUrl())
    print(o.json ? result : result.applied.length ? `applied: ${result.applied.join(', ')}` : 'up to date', !!o.json)
  })

program.command('run').description('run the sidecar: deliver changes to every active subscription')
  .option('--once', 'exit when nothing is pending')
  .action(async (o: { once?: boolean }) => {
    const config = loadConfig()
    const url = databaseUrl()
    const log = createLogger(config.logLevel)
    await migrate(url)
    const pool = createPool(url)
    const sidecar = await startSidecar({
      databaseUrl: url, pool, log, once: o.once, pollIntervalMs: config.pollIntervalMs, concurrency: config.concurrency,
      // Auto segments: refresh the due and ready ones on the poll timer (serialized in SQL).
      tick: async () => { await runDueRefreshes(pool, { log: (msg, data) => log.info(data ?? {}, msg) }) },
    })
    log.info('sidecar started')
    const stop = async (signal: string) => {
      log.info({ signal }, 'stopping: finishing the batch in flight')
      await sidecar.stop()
    }
    process.once('SIGTERM', () => void stop('SIGTERM'))
    process.once('SIGINT', () => void stop('SIGINT'))
    await sidecar.done
    await pool.end()
    log.info('sidecar stopped')
  })

program.command('status').description('per subscription: state, pending changes, lag, last success and error').option('--json', 'JSON output')
  .action(async (o: { json?: boolean }) => {
    print(await withPool(async (p) => (await p.query('select * from segmenter.status order by subscription')).rows), !!o.json)
  })

program.command('stats').description('sync statistics per subscription and minute').option('--json', 'JSON output')
  .action(async (o: { json?: boolean }) => {
    print(await withPool(async (p) => (await p.query('select * from segmenter.sync_stats order by bucket desc, subscription limit 100')).rows), !!o.json)
  })

program.command('resync <subscription>').description('re-export a subscription from one consistent snapshot').option('--json', 'JSON output')
  .action(async (name: string, o: { json?: boolean }) => {
    const pos = await withPool(async (p) => (await p.query('select segmenter.resync(subscription => $1::text) as pos', [name])).rows[0].pos)
    print(o.json ? { subscription: name, snapshot_pos: pos } : `resync of ${name} queued from position ${pos}`, !!o.json)
  })

program.command('preview <subscription>').description('render a subscription\'s templates for sample members, without executing them')
  .option('-n, --members <n>', 'members in the sample batch', '3').option('--json', 'JSON output')
  .action(async (name: string, o: { members: string; json?: boolean }) => {
    const previews = await withPool((p) => previewSubscription(p, name, Number(o.members)))
    if (o.json) return print(previews, true)
    for (const pv of previews) {
      console.log(`-- ${pv.subscription}: segment ${pv.segment}, ${pv.members} member(s), dialect ${pv.dialect}`)
      for (const [event, sql] of Object.entries(pv.statements)) if (sql !== null) console.log(`-- ${event}\n${sql}\n`)
    }
  })

const dead = program.command('dead-letters').description('list or replay events a target rejected')
dead.command('list [subscription]').option('--json', 'JSON output').action(async (name: string | undefined, o: { json?: boolean }) => {
  print(await withPool(async (p) => (await p.query(
    `select d.dead_letter_id, s.name as subscription, d.at, d.event, d.member_id, d.error from segmenter.dead_letters d
     join segmenter.subscriptions s using (subscription_id) where d.replayed_at is null and ($1::text is null or s.name = $1) order by d.at`, [name ?? null])).rows), !!o.json)
})
dead.command('replay <subscription>').option('--json', 'JSON output').action(async (name: string, o: { json?: boolean }) => {
  const n = await withPool(async (p) => (await p.query('select segmenter.replay_dead_letters(subscription => $1::text) as n', [name])).rows[0].n)
  print(o.json ? { subscription: name, replayed: Number(n) } : `${n} dead letter(s) of ${name} queued again`, !!o.json)
})

program.parseAsync().catch((err: unknown) => {
  const e = fromPgError(err) as Error & { code?: string }
  console.error(`segmenter: ${e.message}`)
  process.exit(e.code === 'NOT_FOUND' ? 3 : 1)
})
