// Delivery of one subscription: hold it (advisory lock), ask the target where it stands, read what
// is pending after that, flush what is due as batches, each committed in the target together with
// its checkpoint, then record it at home. The round is here; its parts have a module each: hold.ts
// (error states, divergence), read-ahead.ts (planning and reading the next window), pipeline.ts
// (runs of batches), isolate.ts (one batch, rejected rows split out and dead-lettered),
// journal.ts (what a target without transactions is sent, recorded before and replayed as it was)
// and record.ts (everything else written home).
import { sequenceChanges } from '../api.js'
import { endOf, eventCount, MEMBER_EVENTS, type Batch } from '../batch.js'
import { SegmenterError } from '../errors.js'
import type pg from 'pg'
import { loadMemberRows, loadSegments, loadSubscription, readPending, SUBSCRIPTION_SQL, type SubscriptionRow } from '../read.js'
import {
  compareCheckpoints,
  consumerFingerprint,
  holdsSubscription,
  isFenced,
  isTransient,
  openSink,
  type Checkpoint,
  type Sink,
} from '../sinks/index.js'
import {
  brokenTemplate,
  divergedHint,
  divergence,
  HeldTemplate,
  holdSubscription,
  homeIdentity,
  templateHint,
  type HomeIdentity,
} from './hold.js'
import { deliverBatch } from './isolate.js'
import { replayUnconfirmed } from './journal.js'
import { deliverRun, runLength, type ExtendRun } from './pipeline.js'
import { planWindow, READ_AHEAD_MAX_EVENTS, readWindow, scopeOf, type Window } from './read-ahead.js'
import { reconcileCursor, recordRetry, recordRoundFailure, type LogRows } from './record.js'
import { memberColumns, type DeliveryContext, type Round, type RoundResult } from './round.js'

export type { DeliveryContext, RoundResult } from './round.js'

// Locks are (class, subscription id) pairs. The class comes from the install's schema
// (segmenter._lock_class, db/0009_schema.sql): other tools' locks and other installs' subscriptions
// with the same ids never collide with them.
const LOCK = `segmenter._lock_class('deliver'), $1::int`

/**
 * Take the subscription's lock and read its row under it, in one round trip: the two statements
 * go as one simple query (so the id is written into it, checked to be a number), and at READ
 * COMMITTED the second takes its snapshot after the first took the lock. The read is a statement
 * prepared once per connection (SQL PREPARE: a simple query cannot use the protocol's), as its
 * planning alone took 1.4 ms. Apart, lock and read were two of the round trips between a commit
 * and its delivery.
 */
const prepared = new WeakSet<pg.PoolClient>()
async function lockAndLoad(client: pg.PoolClient, subscriptionId: string): Promise<{ locked: boolean; sub: SubscriptionRow | null }> {
  if (!/^\d+$/.test(subscriptionId)) throw new Error(`not a subscription id: ${subscriptionId}`)
  const lock = LOCK.replace('$1', subscriptionId)
  const prepare = prepared.has(client) ? '' : `prepare segmenter_load_subscription(bigint) as ${SUBSCRIPTION_SQL}; `
  let results: pg.QueryResult[]
  try {
    results = (await client.query(
      `${prepare}select pg_try_advisory_lock(${lock}) as ok; execute segmenter_load_subscription(${subscriptionId})`,
    )) as unknown as pg.QueryResult[]
  } catch (error) {
    // A migration added a column to subscriptions: `s.*` no longer matches what was prepared
    // ("cached plan must not change result type"). The lock the failed query may have taken is
    // kept through the rollback (a session lock): it goes, and the read is prepared anew.
    if (!prepared.has(client) || (error as { code?: string }).code !== '0A000') throw error
    prepared.delete(client)
    await client.query(`deallocate segmenter_load_subscription; select pg_advisory_unlock(${lock})`)
    return lockAndLoad(client, subscriptionId)
  }
  prepared.add(client)
  const [locked, load] = results.slice(-2) as [pg.QueryResult<{ ok: boolean }>, pg.QueryResult<SubscriptionRow>]
  return { locked: locked.rows[0]!.ok, sub: load.rows[0] ?? null }
}

/** Deliver everything that is due for one subscription. */
export async function deliverSubscription(
  ctx: DeliveryContext,
  subscriptionId: string,
  shouldStop: () => boolean = () => false,
): Promise<RoundResult> {
  const lockClient = await ctx.pool.connect()
  let locked = false
  // The advisory lock lives as long as this session: a session the server ended (a DBA's
  // pg_terminate_backend, idle_session_timeout, a failover) lost it, and another sidecar may hold
  // it now. Nothing more is sent from here on; the fence stops what was already on its way.
  let lockLost = false
  const onLockLost = () => (lockLost = true)
  lockClient.on('error', onLockLost)
  lockClient.on('end', onLockLost)
  const stopped = () => lockLost || shouldStop()
  let ahead: Promise<Window | null> | null = null
  // Log rows of batches the target committed, still being written home while the next window goes;
  // shared by every window's Round.
  const logRows: LogRows = { written: Promise.resolve() }
  // The sink that delivered the previous window of this call, whose checkpoint it knows.
  let lastWindowSink: Sink | null = null
  let home: HomeIdentity | null = null
  let failure: Error | undefined
  try {
    // The first window's round trips go together: changes get their positions while the lock is taken.
    const [held, , identity] = await Promise.all([
      lockAndLoad(lockClient, subscriptionId),
      sequenceChanges(ctx.pool),
      homeIdentity(ctx.pool),
    ])
    locked = held.locked
    if (!locked) return { kind: 'busy' }
    home = identity
    let loaded: SubscriptionRow | null | undefined = held.sub
    // The subscription read again before a window (new changes sequenced, the log rows so far
    // written): between windows, or where a run goes on into the next one (runsOn).
    const reload = async () =>
      (await Promise.all([sequenceChanges(ctx.pool), loadSubscription(ctx.pool, subscriptionId), logRows.written]))[1]
    for (;;) {
      if (stopped()) return lockLost ? lostLock(ctx, subscriptionId) : { kind: 'idle' }
      // Between windows the target waits for these round trips: they go together.
      const sub = loaded !== undefined ? loaded : await reload()
      loaded = undefined
      if (!sub || sub.state !== 'active' || sub.error !== null) return { kind: 'idle' }
      // The receiver's Retry-After, heard by this sidecar or another (one killed while it waited).
      if (sub.retry_after_ms) return { kind: 'wait', ms: sub.retry_after_ms }
      const broken = brokenTemplate(ctx, sub)
      if (broken) return holdSubscription(ctx, sub, 'template', broken, templateHint(sub))
      let sink: Sink
      try {
        sink = await sinkFor(ctx, sub, home!.identity)
      } catch (error) {
        if (error instanceof SegmenterError && error.code === 'CONFIG_INVALID') {
          return holdSubscription(ctx, sub, 'configuration', error.message, error.hint)
        }
        await recordRoundFailure(ctx, sub, error)
        return { kind: 'retry', error }
      }
      let from: Checkpoint
      let known: Checkpoint | null = null
      try {
        // The advisory lock has been held since this call began, so no one else moved the target's
        // checkpoint since this sink committed it (and if someone did, the fence says so): read
        // back only at the start (a round trip per window, with the target idle, at 10,000
        // members a window).
        known = sink === lastWindowSink ? sink.lastCommitted(sub.sync_key) : null
        if (known) from = known
        else if (sink.checkpointAtHome) {
          from = { pos: BigInt(sub.cursor_pos), ord: sub.cursor_ord }
          sink.startFrom!(sub.sync_key, from)
        } else {
          const target = await sink.checkpoint(sub.sync_key)
          // The high-water mark read after the checkpoint: every position in the target was
          // assigned before it was delivered, so before this read (a sidecar that lost its lock may
          // have delivered positions assigned after this call began).
          const diverged = divergence(sub, target, await homeIdentity(ctx.pool))
          if (diverged) return holdSubscription(ctx, sub, 'diverged', diverged, divergedHint(sub))
          from = target
        }
      } catch (error) {
        await dropSink(ctx, sub.subscription_id)
        await recordRoundFailure(ctx, sub, error)
        return { kind: 'retry', error }
      }
      // A resync supersedes everything before its snapshot.
      if (sub.resync_pos !== null && compareCheckpoints(from, { pos: BigInt(sub.resync_pos), ord: 0 }) < 0) {
        from = { pos: BigInt(sub.resync_pos), ord: 0 }
      }
      // What a sidecar sent from here and the target never confirmed goes again first, as it was.
      if (!known) {
        try {
          from = await replayUnconfirmed(ctx, sink, sub, from)
        } catch (error) {
          if (isFenced(error)) return { kind: 'busy' }
          if (holdsSubscription(error)) return holdSubscription(ctx, sub, 'configuration', error.message, error.holdHint(sub.name))
          await dropSink(ctx, sub.subscription_id)
          await recordRoundFailure(ctx, sub, error)
          return { kind: 'retry', error }
        }
      }
      const window = Math.max(sub.batch_size, Math.min(100_000, Math.max(sub.batch_size * 10, 10_000)))
      // The next window, read while the previous one was being applied, if it starts here.
      const prefetched = ahead ? await ahead : null
      ahead = null
      // The scope holds batch_size, and with it the window size.
      const hit = prefetched !== null && compareCheckpoints(prefetched.from, from) === 0 && prefetched.scope === scopeOf(sub)
      // In the call's first window the subscription's segments are read beside its changes (one
      // round trip, not two after each other: the latency of a lone change); later, only once
      // there are changes (the window that finds none, which ends every call, reads nothing more).
      const [pending, ofSub] = hit
        ? [prefetched.pending, null]
        : lastWindowSink === null
          ? await Promise.all([readPending(lockClient, sub, from, window), loadSegments(ctx.pool, sub.segment_ids)])
          : [await readPending(lockClient, sub, from, window), null]
      if (pending.length === 0) {
        await reconcileCursor(ctx.pool, sub, from)
        return { kind: 'idle' }
      }
      const count = hit ? prefetched.count : eventCount(pending)
      let { plan, batches } = (hit && prefetched.planned) || planWindow(sub, pending, count, window)
      if (plan.flush.length === 0) return { kind: 'wait', ms: plan.waitMs ?? sub.batch_timeout_ms }
      const segments = hit ? prefetched.segments : (ofSub ?? (await loadSegments(ctx.pool, sub.segment_ids)))
      const columnsOf = memberColumns(ctx, sub, sink.dialect)
      const members = hit ? prefetched.members : await loadMemberRows(ctx.pool, segments, batches, columnsOf)
      const round: Round = { ctx, sink, sub, segments, members, logRows }
      // A full window means more is waiting: read it while this one is applied. Not for windows
      // of big batches whose member rows were read: they amortize their own read, and a second
      // one would double the memory. A window without rows (templates that print only ids) is its
      // changes alone, their ids as JSON text (about 1.5 MB at 100,000): without the read ahead, HTTP in batches of 10,000 sent
      // nothing while each window was read, rendered and recorded (0.38x raw fetch, 2026-12-01).
      if (count === window && (window <= READ_AHEAD_MAX_EVENTS || rowCount(members) === 0)) {
        ahead = readWindow(ctx.pool, sub, endOf(plan.flush), window, columnsOf)
      }
      // A window without member rows lets its last run go on into the windows read ahead of it
      // (deliverRun's extend): a backlog streams through one pipeline instead of emptying it at every
      // window's end (HTTP in batches of 10,000: the receiver waited 12-21 ms at each of them, for
      // the round trips between windows and the next window's first render and record). The
      // subscription is read again for each window it goes on into, as between windows, and a
      // pause, an edit, a Retry-After or anything else that differs ends the run there.
      // With member rows it does not: a window's rows are its own (Round.members).
      const streams = ahead !== null && rowCount(members) === 0
      /**
       * The window read ahead, if the run ending with `tail` goes on into it: that window then is the
       * current one (its plan, segments and read ahead); returns its batches and how many of them
       * continue the run.
       */
      const runsOn = async (tail: Batch): Promise<{ batches: Batch[]; consumed: number } | null> => {
        if (!ahead || stopped()) return null
        const now = await reload()
        if (!now || !deliversAlike(ctx, sub, now)) return null
        const next = await ahead
        if (!next?.planned || next.planned.plan.waitMs !== null || rowCount(next.members) > 0) return null
        if (next.scope !== scopeOf(sub) || compareCheckpoints(next.from, tail.through) !== 0) return null
        const first = next.planned.batches[0]
        if (!first || first.event !== tail.event || first.segmentId !== tail.segmentId || !MEMBER_EVENTS.has(tail.event)) return null
        ahead = readWindow(ctx.pool, sub, endOf(next.planned.plan.flush), window, columnsOf)
        plan = next.planned.plan
        round.segments = next.segments
        round.members = next.members
        return { batches: next.planned.batches, consumed: runLength(next.planned.batches, 0) }
      }
      // Stops only between batches: each is committed whole with its checkpoint, or not at all.
      for (let i = 0; i < batches.length && !stopped();) {
        try {
          const run = runLength(batches, i)
          const last = i + run === batches.length
          let alone = 1
          if (run > 1 || (last && streams)) {
            // The window the run went on into, and how many of its batches it took.
            const went: { into: { batches: Batch[]; consumed: number } | null } = { into: null }
            const extend: ExtendRun | undefined =
              last && streams
                ? async () => {
                    const at = went.into
                    // A run that took only part of a window ends inside it.
                    if (at && at.consumed < at.batches.length) return null
                    const next = await runsOn(at ? at.batches[at.consumed - 1]! : batches[batches.length - 1]!)
                    if (!next) return null
                    went.into = next
                    return next.batches.slice(0, next.consumed)
                  }
                : undefined
            const unfinished = batches.slice(i, i + run)
            const result = await deliverRun(round, unfinished, stopped, extend)
            const { into } = went
            if (into === null) i += result.committed
            else {
              // Where the run went on: what is left of it, then the rest of the window it ended in.
              batches = [...unfinished, ...into.batches.slice(into.consumed)]
              i = 0
            }
            if (result.error !== undefined) throw result.error
            if (unfinished.length === 0 || stopped()) continue
            alone = result.alone
          }
          // One at a time: a lone batch, or those where a run stopped (a rejection is split here).
          await logRows.written
          for (const stop = i + alone; i < stop && !stopped(); i++) await deliverBatch(round, batches[i]!)
        } catch (error) {
          if (error instanceof HeldTemplate) return holdSubscription(ctx, sub, 'template', error.message, templateHint(sub))
          if (holdsSubscription(error)) return holdSubscription(ctx, sub, 'configuration', error.message, error.holdHint(sub.name))
          if (isFenced(error)) {
            // Another sidecar delivered meanwhile (it holds the lock now, or this one's zombie
            // transaction committed): nothing of this transaction committed; start again from
            // what the target says, once the lock is ours.
            ctx.log.warn({ subscription: sub.name, err: error.message }, 'fenced: the target checkpoint moved under this sidecar')
            return { kind: 'busy' }
          }
          if (!isTransient(error)) throw error
          await dropSink(ctx, sub.subscription_id)
          await recordRetry(round, batches[i]!, error)
          return { kind: 'retry', error }
        }
      }
      lastWindowSink = sink
      if (lockLost) return lostLock(ctx, subscriptionId)
      if (shouldStop()) return { kind: 'idle' }
      if (plan.waitMs !== null) return { kind: 'wait', ms: plan.waitMs }
    }
  } catch (error) {
    failure = error as Error
    throw error
  } finally {
    lockClient.off('error', onLockLost)
    lockClient.off('end', onLockLost)
    await ahead
    // Written before the lock goes: the next holder reads the home cursor these rows move.
    const recordError = await logRows.written.then(
      () => undefined,
      (e: unknown) => e,
    )
    // After a failure the client may be mid-query on a dead connection: it is discarded (which
    // also ends its session and so the advisory lock) instead of going back to the pool.
    if (locked && !failure && !lockLost) await lockClient.query(`select pg_advisory_unlock(${LOCK})`, [subscriptionId]).catch(() => {})
    lockClient.release(failure ?? (lockLost ? new Error('advisory lock session ended') : undefined))
    // Unless the round failed anyway: the round's own error says more than the log's.
    if (recordError !== undefined && failure === undefined) throw recordError
  }
}

/**
 * Whether the subscription, read again, still delivers as `sub` did: active, not held, not asked to
 * wait, the same templates, batches, segments and consumer (a run goes on into the next window).
 */
function deliversAlike(ctx: DeliveryContext, sub: SubscriptionRow, now: SubscriptionRow): boolean {
  const how = (s: SubscriptionRow) =>
    JSON.stringify([
      s.segment_ids,
      s.add_sql,
      s.remove_sql,
      s.clear_sql,
      s.update_sql,
      s.segment_upsert_sql,
      s.segment_delete_sql,
      s.syntax,
      s.batch_size,
      s.batch_timeout_ms,
      s.audience,
      s.resync_pos,
      s.sync_key,
      consumerFingerprint(s.consumer, ctx.env),
    ])
  return now.state === 'active' && now.error === null && !now.retry_after_ms && how(now) === how(sub)
}

const rowCount = (members: Round['members']) => [...members.values()].reduce((n, rows) => n + rows.size, 0)

function lostLock(ctx: DeliveryContext, subscriptionId: string): RoundResult {
  ctx.log.warn({ subscription: subscriptionId }, 'the home session holding the subscription lock ended; stopped delivering it')
  return { kind: 'busy' }
}

// What each open sink was opened from (consumerFingerprint).
const openedFrom = new WeakMap<Sink, string>()

/** The subscription's sink; reopened when its consumer was repointed (or its variable changed). */
async function sinkFor(ctx: DeliveryContext, sub: SubscriptionRow, home: string): Promise<Sink> {
  const fingerprint = consumerFingerprint(sub.consumer, ctx.env) + home
  const cached = ctx.sinks.get(sub.subscription_id)
  if (cached && openedFrom.get(cached) === fingerprint) return cached
  if (cached) {
    ctx.log.info({ subscription: sub.name, consumer: sub.consumer.name }, 'consumer changed; reconnecting')
    await dropSink(ctx, sub.subscription_id)
  }
  const sink = await openSink(sub.consumer, home, ctx.env ?? process.env, ctx.pool)
  openedFrom.set(sink, fingerprint)
  ctx.sinks.set(sub.subscription_id, sink)
  return sink
}

async function dropSink(ctx: DeliveryContext, subscriptionId: string): Promise<void> {
  const sink = ctx.sinks.get(subscriptionId)
  ctx.sinks.delete(subscriptionId)
  await sink?.close().catch(() => {})
}
