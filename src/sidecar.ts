// The sidecar: wakes on NOTIFY (a hint) and on a poll timer (the guarantee), takes pg-boss jobs
// (the durable record that a subscription has work), and delivers each due subscription.
// A subscription is held by one sidecar at a time (advisory lock in deliver.ts); several sidecars
// share the jobs. Stop: finish the batch in flight (its target transaction commits or rolls back
// as a whole), then exit.
import PgBoss from 'pg-boss'
import { createRequire } from 'node:module'
import type pg from 'pg'
import type { Logger } from 'pino'
import type { Batch } from './batch.js'
import { deliverSubscription, type DeliveryContext, type RoundResult } from './deliver.js'
import type { SubscriptionRow } from './read.js'
import type { Sink } from './sinks/index.js'
import { settledWithin } from './timeout.js'

export const DELIVER_QUEUE = 'segmenter_deliver'

// pg-listen is CommonJS with `exports.default`; require it to get the function itself.
const createSubscriber: typeof import('pg-listen').default = createRequire(import.meta.url)('pg-listen').default

export interface SidecarOptions {
  databaseUrl: string
  pool: pg.Pool
  log: Logger
  /** Poll for work this often even without NOTIFY (Default: 1000 ms). */
  pollIntervalMs?: number
  /** Subscriptions delivered in parallel (Default: 4). */
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
  const pollMs = opts.pollIntervalMs ?? 1000
  const concurrency = opts.concurrency ?? 4
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

  let stopping = false
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
  listener.notifications.on('segmenter', () => {
    notified = true
    kick()
  })
  listener.events.on('error', (err: Error) => log.warn({ err: err.message }, 'listener error; polling until it reconnects'))
  listener.events.on('reconnect', () => log.info('listener reconnected'))
  await listener.connect()
  await listener.listenTo('segmenter')

  const due = new Set<string>() // subscriptions to deliver now
  const timers = new Map<string, NodeJS.Timeout>() // partial batches waiting for their timeout
  const failures = new Map<string, number>() // consecutive retry rounds per subscription
  const running = new Set<string>()

  const schedule = (id: string, ms: number) => {
    clearTimeout(timers.get(id))
    // No delayed pg-boss job here: it would hold the queue's one 'created' slot for this
    // subscription and swallow the jobs new changes create. A timer lost with this process is
    // recomputed by any sidecar's sweep from the pending changes' age, which lives in Postgres.
    timers.set(
      id,
      setTimeout(() => {
        timers.delete(id)
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
        const cap = Math.min(opts.retryMaxMs ?? 30_000, (opts.retryBaseMs ?? 500) * 2 ** (n - 1))
        const delay = Math.round(cap / 2 + Math.random() * (cap / 2))
        log.warn({ subscription: id, attempt: n, delayMs: delay, err: (result.error as Error)?.message }, 'target unavailable; retrying')
        schedule(id, delay)
      } else {
        failures.delete(id)
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

  // Subscriptions with anything pending, found by SQL: covers lost jobs and lost notifications.
  const sweep = async () => {
    const { rows } = await pool.query<{ subscription_id: string }>(
      `select s.subscription_id from segmenter.subscriptions s
       where s.state = 'active' and exists (
         select 1 from segmenter.changes c
         where c.segment_id = any(s.segment_ids) and (c.subscription_id is null or c.subscription_id = s.subscription_id)
           and (c.pos is null or c.pos > s.cursor_pos or (c.pos = s.cursor_pos and c.members > s.cursor_ord)))`,
    )
    // Waiting subscriptions are re-evaluated too: new changes may have completed their batch.
    for (const r of rows) due.add(r.subscription_id)
  }

  const loop = async () => {
    let lastSweep = 0
    let lastTick = 0
    while (!stopping) {
      kicked = false
      try {
        const jobs = await boss.fetch<{ subscription_id: string }>(DELIVER_QUEUE, { batchSize: 20 })
        for (const job of jobs) due.add(String(job.data.subscription_id))
        if (jobs.length > 0)
          await boss.complete(
            DELIVER_QUEUE,
            jobs.map((j) => j.id),
          )
        // A NOTIFY whose job another sidecar took (or whose writer skipped the job) still finds
        // its subscription here.
        if (notified || Date.now() - lastSweep >= pollMs) {
          notified = false
          lastSweep = Date.now()
          await sweep()
        }
        if (opts.tick && Date.now() - lastTick >= (opts.tickIntervalMs ?? 10_000)) {
          lastTick = Date.now()
          await opts.tick()
        }
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'home database unavailable; retrying')
      }
      for (const id of due) {
        if (running.size >= concurrency) break
        if (running.has(id)) continue
        due.delete(id)
        void deliver(id)
      }
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
