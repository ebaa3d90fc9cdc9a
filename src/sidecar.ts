// The sidecar: wakes on NOTIFY (a hint) and on a poll timer (the guarantee), takes pg-boss jobs
// (the durable record that a subscription has work), and delivers each due subscription.
// A subscription is held by one sidecar at a time (advisory lock in deliver/index.ts); several sidecars
// share the jobs. Stop: finish the batch in flight (its target transaction commits or rolls back
// as a whole), then exit.
import PgBoss from 'pg-boss'
import { createRequire } from 'node:module'
import type pg from 'pg'
import type { Logger } from 'pino'
import type { Batch } from './batch.js'
import { deliverSubscription, type DeliveryContext, type RoundResult } from './deliver/index.js'
import type { SubscriptionRow } from './read.js'
import { poolSizeFor } from './db.js'
import { installSchema, queues } from './schema.js'
import type { Sink } from './sinks/index.js'
import { settledWithin } from './timeout.js'

/**
 * The wait before retry `attempt` (1 for the first) of a subscription whose target failed:
 * exponential backoff with full jitter, uniform in [0, min(capMs, baseMs * 2^(attempt-1))].
 * Full jitter spreads the retries of many subscriptions (or sidecars) hit by one outage.
 */
export function retryDelay(attempt: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.max(0, attempt - 1))
  return Math.round(random() * ceiling)
}

// pg-listen is CommonJS with `exports.default`; require it to get the function itself.
const createSubscriber: typeof import('pg-listen').default = createRequire(import.meta.url)('pg-listen').default

export interface SidecarOptions {
  databaseUrl: string
  /** The home pool, made by createPool for the same install (schema). */
  pool: pg.Pool
  /** The install's schema: its pg-boss queue and NOTIFY channel (Default: SEGMENTER_SCHEMA or segmenter). */
  schema?: string
  log: Logger
  /** Poll for work this often even without NOTIFY (Default: 1000 ms). */
  pollIntervalMs?: number
  /**
   * Subscriptions delivered in parallel (Default: 4). A round holds up to three of the pool's
   * clients at once: size the pool with `poolSizeFor(concurrency)` (as `segmenter run` does).
   */
  concurrency?: number
  /** Backoff for an unreachable target: base and cap (Default: 500 ms, 30 s), with full jitter. */
  retryBaseMs?: number
  retryMaxMs?: number
  /** How long a stop waits for batches in flight (Default: 30000 ms). */
  stopTimeoutMs?: number
  /** Stop when nothing is pending (`segmenter run --once`). */
  once?: boolean
  onBatch?: (sub: SubscriptionRow, batch: Batch, ok: boolean, ms: number) => void
  onRound?: (subscriptionId: string, result: RoundResult) => void
  /** Extra periodic work (the refresh scheduler). */
  tick?: () => Promise<void>
  /** How often `tick` runs (Default: 10000 ms): the schedule view evaluates every ready_sql. */
  tickIntervalMs?: number
  env?: NodeJS.ProcessEnv
}

export interface Sidecar {
  stop(): Promise<void>
  done: Promise<void>
}

export async function startSidecar(opts: SidecarOptions): Promise<Sidecar> {
  const { pool, log } = opts
  const schema = opts.schema ?? installSchema()
  const deliverQueue = queues(schema).deliver
  const pollMs = opts.pollIntervalMs ?? 1000
  const requested = opts.concurrency ?? 4
  // A round holds one pooled client for its advisory lock from start to end and takes more for its
  // other queries. Rounds whose lock clients filled the pool would each wait for a client none of
  // them gives back (10 rounds on a pool of 10 waited out the 10 s checkout timeout again and
  // again). The pool should be poolSizeFor(concurrency); a smaller one runs fewer rounds at once,
  // always leaving clients for those queries and the loop's sweep.
  const poolMax = pool.options.max ?? 10
  const concurrency = Math.max(1, Math.min(requested, poolMax - 2))
  if (concurrency < requested)
    log.warn(
      { concurrency: requested, rounds: concurrency, poolMax, wanted: poolSizeFor(requested) },
      'home pool too small for the concurrency: fewer rounds at once; size it with poolSizeFor(concurrency)',
    )
  const ctx: DeliveryContext = {
    pool,
    log,
    sinks: new Map<string, Sink>(),
    templates: new Map(),
    oneLane: new Set(),
    onBatch: opts.onBatch,
    env: opts.env,
  }

  // The schema comes from db/ (0002_pgboss.sql): pg-boss must not migrate or run cron here.
  const boss = new PgBoss({
    connectionString: opts.databaseUrl,
    migrate: false,
    schedule: false,
    supervise: true,
    max: 2,
    application_name: 'segmenter-boss',
  })
  boss.on('error', (err) => log.error({ err }, 'pg-boss error'))
  await boss.start()
  // The pool opens clients as rounds need them, so a concurrency the server cannot hold fails only
  // under load ("too many clients"): say so at the start. pg-boss (2) and the listener (1) come on top.
  await pool
    .query<{ n: number }>(`select current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int as n`)
    .then(({ rows: [row] }) => {
      if (row && poolMax + 3 > row.n)
        log.warn(
          { poolMax, homeConnections: poolMax + 3, serverAllows: row.n },
          'the home pool may open more connections than the server allows: lower SEGMENTER_CONCURRENCY or raise max_connections',
        )
    })
    .catch(() => {})

  let stopping = false
  const due = new Set<string>() // subscriptions to deliver now
  // A kick that lands while the loop is busy is remembered, so the next wait returns at once.
  let kicked = false
  let notified = false
  let wake: () => void = () => {}
  const kick = () => {
    kicked = true
    wake()
  }

  // The payload is a plain word, not JSON: without `parse`, pg-listen's JSON.parse fails on every
  // notification and turns it into an error event instead of a wake-up.
  const listener = createSubscriber(
    { connectionString: opts.databaseUrl },
    { retryLimit: Infinity, retryTimeout: Infinity, parse: (payload: string) => payload },
  )
  // 'changes', then the ids of the subscriptions it wakes (db/0015_wake_payload.sql): they start at
  // once, before the sweep that follows every NOTIFY finds what a payload cannot name.
  listener.notifications.on(schema, (payload: unknown) => {
    if (typeof payload === 'string') for (const id of payload.split(' ').slice(1)) if (/^\d+$/.test(id)) due.add(id)
    notified = true
    kick()
  })
  listener.events.on('error', (err: Error) => log.warn({ err: err.message }, 'listener error; polling until it reconnects'))
  listener.events.on('reconnect', () => log.info('listener reconnected'))
  await listener.connect()
  await listener.listenTo(schema)

  const timers = new Map<string, NodeJS.Timeout>() // partial batches waiting for their timeout
  const failures = new Map<string, number>() // consecutive retry rounds per subscription
  // Subscriptions in backoff, and when (performance.now()) their retry is due. Nothing delivers them
  // before: a NOTIFY, the sweep or a pg-boss job that finds them pending wakes the loop, but only
  // their retry timer puts them back in `due`.
  const backoff = new Map<string, number>()
  const running = new Set<string>()

  const schedule = (id: string, ms: number, then?: () => void) => {
    clearTimeout(timers.get(id))
    // No delayed pg-boss job here: it would hold the queue's one 'created' slot for this
    // subscription and swallow the jobs new changes create. A timer lost with this process is
    // recomputed by any sidecar's sweep from the pending changes' age, which lives in Postgres.
    timers.set(
      id,
      setTimeout(() => {
        timers.delete(id)
        then?.()
        due.add(id)
        kick()
      }, ms),
    )
  }

  const deliver = async (id: string) => {
    running.add(id)
    try {
      const result = await deliverSubscription(ctx, id, () => stopping)
      opts.onRound?.(id, result)
      if (result.kind === 'retry') {
        const n = (failures.get(id) ?? 0) + 1
        failures.set(id, n)
        // An HTTP receiver's Retry-After is not waited here: the sink kept it at home
        // (segmenter.retry_after), and the next round waits what is left of it.
        const delay = retryDelay(n, opts.retryBaseMs ?? 500, opts.retryMaxMs ?? 30_000)
        log.warn({ subscription: id, attempt: n, delayMs: delay, err: (result.error as Error)?.message }, 'target unavailable; retrying')
        backoff.set(id, performance.now() + delay)
        schedule(id, delay, () => backoff.delete(id))
      } else {
        failures.delete(id)
        backoff.delete(id)
        if (result.kind === 'wait') schedule(id, Math.max(1, Math.ceil(result.ms)))
        if (result.kind === 'busy') schedule(id, pollMs)
      }
    } catch (err) {
      log.error({ subscription: id, err }, 'delivery failed')
      schedule(id, pollMs)
    } finally {
      running.delete(id)
      kick()
    }
  }

  // Subscriptions with anything pending (segmenter._is_pending, as segmenter.status counts it):
  // covers lost jobs and lost notifications. One held in an error state waits for its cause to be
  // fixed (which wakes it), not for a poll. The planner inlines _is_pending: an index probe per
  // subscription, never a scan of the change log.
  const sweep = async () => {
    const { rows } = await pool.query<{ subscription_id: string }>({
      name: 'segmenter:sweep',
      text: `select s.subscription_id from segmenter.subscriptions s
       where s.state = 'active' and s.error is null and exists (select 1 from segmenter.changes c where segmenter._is_pending(c, s))`,
    })
    // Waiting subscriptions are re-evaluated too: new changes may have completed their batch.
    for (const r of rows) due.add(r.subscription_id)
  }

  // Starts what is due, as far as the concurrency allows; a subscription in backoff waits for its timer.
  const dispatch = () => {
    for (const id of due) {
      const retryAt = backoff.get(id)
      if (retryAt !== undefined) {
        // Its retry timer puts it back when the backoff is over.
        if (retryAt > performance.now()) {
          due.delete(id)
          continue
        }
        backoff.delete(id)
      }
      if (running.size >= concurrency) break
      if (running.has(id)) continue
      due.delete(id)
      void deliver(id)
    }
  }

  const loop = async () => {
    let lastSweep = 0
    let lastTick = 0
    while (!stopping) {
      kicked = false
      try {
        // After a NOTIFY what it names starts at once, then the sweep, and what it finds starts
        // too, before the queue's fetch and complete (two more round trips: 3 to 5 ms of a
        // commit's latency, 2026-12-01). The sweep also finds a subscription whose job another
        // sidecar took, or whose writer skipped the job.
        if (notified || Date.now() - lastSweep >= pollMs) {
          notified = false
          lastSweep = Date.now()
          dispatch()
          await sweep()
          dispatch()
        }
        const jobs = await boss.fetch<{ subscription_id: string }>(deliverQueue, { batchSize: 20 })
        for (const job of jobs) due.add(String(job.data.subscription_id))
        if (jobs.length > 0)
          await boss.complete(
            deliverQueue,
            jobs.map((j) => j.id),
          )
        if (opts.tick && Date.now() - lastTick >= (opts.tickIntervalMs ?? 10_000)) {
          lastTick = Date.now()
          await opts.tick()
        }
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'home database unavailable; retrying')
      }
      dispatch()
      if (opts.once && due.size === 0 && running.size === 0 && timers.size === 0) {
        await sweep().catch(() => {})
        if (due.size === 0) break
      }
      if (kicked) continue
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, pollMs)
        wake = () => {
          clearTimeout(t)
          wake = () => {}
          resolve()
        }
      })
    }
  }

  // Every step of the shutdown is bounded: a client stuck on a connection that died with its
  // server (seen after a home restart under load) must not keep the process from exiting. Nothing
  // is lost by giving up: a batch in flight commits whole with its checkpoint or not at all.
  const bounded = async (what: string, p: Promise<unknown>, ms: number): Promise<void> => {
    if (!(await settledWithin(p, ms))) log.warn({ step: what, ms }, 'shutdown step timed out; going on')
  }
  // A stop ends the loop at its next check; a loop stuck on a query whose connection died under it
  // is given up on, like the steps below.
  let stopRequested = () => {}
  const stopRequest = new Promise<void>((resolve) => (stopRequested = resolve))
  const looping = loop()
  const done = Promise.race([looping, stopRequest.then(() => bounded('work loop', looping, 10_000))]).finally(async () => {
    for (const t of timers.values()) clearTimeout(t)
    await bounded(
      'batches in flight',
      (async () => {
        while (running.size > 0) await new Promise((r) => setTimeout(r, 10))
      })(),
      opts.stopTimeoutMs ?? 30_000,
    )
    await bounded('listener', listener.close(), 5000)
    await bounded('pg-boss', boss.stop({ graceful: true, wait: true, close: true }), 10_000)
    for (const sink of ctx.sinks.values()) await bounded('target connection', sink.close(), 2000)
  })

  return {
    done,
    async stop() {
      stopping = true
      kick()
      stopRequested()
      await done
    },
  }
}
