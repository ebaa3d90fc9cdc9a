// Delivery of one subscription: hold it (advisory lock), ask the target where it stands, read what
// is pending after that, flush what is due as batches, each committed in the target together with
// its checkpoint, then record it at home. Rejected rows are isolated by splitting and dead-lettered.
import type pg from 'pg'
import type { Logger } from 'pino'
import { compact, MEMBER_EVENTS, planFlush, toBatches, type Batch, type PendingEvent } from './batch.js'
import { compileTemplate, type CompiledTemplate, type Dialect } from './render/index.js'
import { loadMemberRows, loadSegments, loadSubscription, membersOf, readPending, type SegmentInfo, type SubscriptionRow } from './read.js'
import { compareCheckpoints, isTransient, openSink, type Checkpoint, type ConsumerRow, type Sink } from './sinks/index.js'

// Locks are (class, subscription id) pairs; this class keeps them apart from other tools' locks.
const LOCK_CLASS = 0x5e6d

export interface DeliveryContext {
  pool: pg.Pool
  log: Logger
  // One target connection per subscription, reused across rounds: subscriptions delivered in
  // parallel never share a connection (one's failed multi-statement must not leave a transaction
  // open for another's batch).
  sinks: Map<string, Sink>
  templates: Map<string, CompiledTemplate>
  onBatch?: (sub: SubscriptionRow, batch: Batch, ok: boolean, ms: number) => void
  env?: NodeJS.ProcessEnv
}

export type RoundResult =
  | { kind: 'idle' } // nothing pending, or paused, or gone
  | { kind: 'busy' } // another sidecar holds it
  | { kind: 'wait'; ms: number } // a partial batch waits for its timeout
  | { kind: 'retry'; error: unknown } // the target is unreachable; try again after a backoff

/** Deliver everything that is due for one subscription. */
export async function deliverSubscription(
  ctx: DeliveryContext,
  subscriptionId: string,
  shouldStop: () => boolean = () => false,
): Promise<RoundResult> {
  const lockClient = await ctx.pool.connect()
  let locked = false
  try {
    locked = (await lockClient.query<{ ok: boolean }>('select pg_try_advisory_lock($1, $2::int) as ok', [LOCK_CLASS, subscriptionId]))
      .rows[0]!.ok
    if (!locked) return { kind: 'busy' }
    for (;;) {
      if (shouldStop()) return { kind: 'idle' }
      await ctx.pool.query('select segmenter.sequence_changes()')
      const sub = await loadSubscription(ctx.pool, subscriptionId)
      if (!sub || sub.state !== 'active') return { kind: 'idle' }
      let sink: Sink
      try {
        sink = await sinkFor(ctx, sub)
      } catch (error) {
        await recordFailure(ctx, sub, error)
        return { kind: 'retry', error }
      }
      let from: Checkpoint
      try {
        from = (await sink.checkpoint(sub.sync_key)) ?? { pos: 0n, ord: 0 }
      } catch (error) {
        await dropSink(ctx, sub.subscription_id)
        await recordFailure(ctx, sub, error)
        return { kind: 'retry', error }
      }
      // A resync supersedes everything before its snapshot.
      if (sub.resync_pos !== null && compareCheckpoints(from, { pos: BigInt(sub.resync_pos), ord: 0 }) < 0) {
        from = { pos: BigInt(sub.resync_pos), ord: 0 }
      }
      const window = Math.max(sub.batch_size, Math.min(100_000, Math.max(sub.batch_size * 10, 10_000)))
      const pending = await readPending(lockClient, sub, from, window)
      if (pending.length === 0) {
        await reconcileHomeCursor(ctx.pool, sub, from)
        return { kind: 'idle' }
      }
      const plan = planFlush(pending, sub.batch_size, sub.batch_timeout_ms, pending.length === window)
      if (plan.flush.length === 0) return { kind: 'wait', ms: plan.waitMs ?? sub.batch_timeout_ms }
      const batches = toBatches(plan.flush, compact(plan.flush), sub.batch_size, sub.update_sql === null)
      const segments = await loadSegments(ctx.pool, [...new Set(batches.map((b) => b.segmentId))])
      const round: Round = { ctx, sink, sub, segments, members: await loadMemberRows(ctx.pool, segments, plan.flush) }
      for (const batch of batches) {
        if (shouldStop()) return { kind: 'idle' } // stop between batches: each committed whole with its checkpoint
        try {
          await deliverBatch(round, batch)
        } catch (error) {
          if (!isTransient(error)) throw error
          await dropSink(ctx, sub.subscription_id)
          await record(round, batch, 0, false, error, false)
          return { kind: 'retry', error }
        }
      }
      if (plan.waitMs !== null) return { kind: 'wait', ms: plan.waitMs }
    }
  } finally {
    if (locked) await lockClient.query('select pg_advisory_unlock($1, $2::int)', [LOCK_CLASS, subscriptionId]).catch(() => {})
    lockClient.release()
  }
}

async function sinkFor(ctx: DeliveryContext, sub: SubscriptionRow): Promise<Sink> {
  const cached = ctx.sinks.get(sub.subscription_id)
  if (cached) return cached
  const { rows } = await ctx.pool.query<ConsumerRow>('select * from segmenter.consumers where consumer_id = $1', [sub.consumer_id])
  const sink = await openSink(rows[0]!, ctx.env)
  ctx.sinks.set(sub.subscription_id, sink)
  return sink
}

async function dropSink(ctx: DeliveryContext, subscriptionId: string): Promise<void> {
  const sink = ctx.sinks.get(subscriptionId)
  ctx.sinks.delete(subscriptionId)
  await sink?.close().catch(() => {})
}

async function reconcileHomeCursor(pool: pg.Pool, sub: SubscriptionRow, at: Checkpoint): Promise<void> {
  if (compareCheckpoints(at, { pos: BigInt(sub.cursor_pos), ord: sub.cursor_ord }) === 0) return
  await pool.query('update segmenter.subscriptions set cursor_pos = $2, cursor_ord = $3 where subscription_id = $1', [
    sub.subscription_id,
    at.pos.toString(),
    at.ord,
  ])
}

function templateFor(ctx: DeliveryContext, sub: SubscriptionRow, event: Batch['event'], dialect: Dialect): CompiledTemplate | null {
  const source = {
    add: sub.add_sql,
    update: sub.update_sql ?? sub.add_sql,
    remove: sub.remove_sql,
    clear: sub.clear_sql,
    segment_upsert: sub.segment_upsert_sql,
    segment_delete: sub.segment_delete_sql,
  }[event]
  if (source === null) return null
  const key = `${sub.syntax}\0${dialect}\0${source}`
  let t = ctx.templates.get(key)
  if (!t) {
    t = compileTemplate(source, sub.syntax, dialect)
    ctx.templates.set(key, t)
  }
  return t
}

/** What the batches of one flushed window share. */
interface Round {
  ctx: DeliveryContext
  sink: Sink
  sub: SubscriptionRow
  segments: Map<string, SegmentInfo>
  members: Awaited<ReturnType<typeof loadMemberRows>>
}

/**
 * Render and apply one batch. A rejection (not a connection problem) splits the batch in halves
 * until the rejected members stand alone; those are dead-lettered and the checkpoint passes them.
 * A statement over the target's size limit is split the same way before it is sent.
 */
async function deliverBatch(round: Round, batch: Batch): Promise<void> {
  const { ctx, sink, sub } = round
  const segment = round.segments.get(batch.segmentId)
  const started = performance.now()
  let statement: string | null = null
  // Each step in its own try, so that only a failure of this batch's own statement splits it:
  // a split re-sends its halves, which must never include anything the target already committed.
  try {
    const template = batch.events.length > 0 ? templateFor(ctx, sub, batch.event, sink.dialect) : null
    if (template && segment) {
      const members = MEMBER_EVENTS.has(batch.event) ? membersOf(segment, batch.events, round.members) : []
      statement = template.render({ segment_id: segment.segment_id, segment_name: segment.name, audience: sub.audience, batch: members })
    }
  } catch (error) {
    // A value this dialect cannot represent, or a field a member lacks: isolate it like a rejection.
    return batch.events.length > 1 ? splitAndDeliver(round, batch) : deadLetter(round, batch, statement, error)
  }
  if (statement !== null && Buffer.byteLength(statement) > sink.maxStatementBytes && batch.events.length > 1) {
    return splitAndDeliver(round, batch)
  }
  try {
    await sink.apply(statement === null ? [] : [statement], sub.sync_key, batch.through)
  } catch (error) {
    if (isTransient(error)) throw error
    return batch.events.length > 1 ? splitAndDeliver(round, batch) : deadLetter(round, batch, statement, error)
  }
  await record(round, batch, performance.now() - started, true, undefined, true, statement === null ? 0 : 1)
}

async function splitAndDeliver(round: Round, batch: Batch): Promise<void> {
  const half = Math.ceil(batch.events.length / 2)
  const first = batch.events.slice(0, half)
  const last = first[first.length - 1]!
  await deliverBatch(round, { ...batch, events: first, through: { pos: last.pos, ord: last.ord } })
  await deliverBatch(round, { ...batch, events: batch.events.slice(half) })
}

async function deadLetter(round: Round, batch: Batch, statement: string | null, error: unknown): Promise<void> {
  const { ctx, sink, sub } = round
  const e: PendingEvent | undefined = batch.events[0]
  const message = (error as Error)?.message ?? String(error)
  ctx.log.warn({ subscription: sub.name, event: batch.event, member: e?.memberId, err: message }, 'target rejected an event; dead-lettered')
  if (e) {
    await ctx.pool.query(
      `insert into segmenter.dead_letters (subscription_id, pos, ord, segment_id, event, member_id, statement, error)
       values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict do nothing`,
      [sub.subscription_id, e.pos.toString(), e.ord, e.segmentId, e.event, e.memberId, statement, message],
    )
  }
  await sink.apply([], sub.sync_key, batch.through) // pass it; the other members go on
  await record(round, batch, 0, false, error)
}

/** Log a round that failed before any batch (the target unreachable), so sync_stats counts it. */
async function recordFailure(ctx: DeliveryContext, sub: SubscriptionRow, error: unknown): Promise<void> {
  await ctx.pool.query(`insert into segmenter.log (kind, subscription_id, ok, error) values ('batch', $1, false, $2)`, [
    sub.subscription_id,
    (error as Error)?.message ?? String(error),
  ])
}

/** Log the batch and, once the target has committed past it (`advanced`), move the home cursor. */
async function record(
  { ctx, sub }: Pick<Round, 'ctx' | 'sub'>,
  batch: Batch,
  ms: number,
  ok: boolean,
  error?: unknown,
  advanced = true,
  statements = 0,
): Promise<void> {
  ctx.onBatch?.(sub, batch, ok, ms)
  const to = advanced ? batch.through : { pos: BigInt(sub.cursor_pos), ord: sub.cursor_ord }
  await ctx.pool.query(
    `select segmenter.record_batch(subscription_id => $1, cursor_pos => $2, cursor_ord => $3, event => $4::segmenter.event,
       segment_id => $5::uuid, statements => $6, rows => $7, duration_ms => $8, ok => $9, error => $10)`,
    [
      sub.subscription_id,
      to.pos.toString(),
      to.ord,
      batch.event,
      batch.segmentId,
      statements,
      batch.events.length,
      ms,
      ok,
      error === undefined ? null : ((error as Error)?.message ?? String(error)),
    ],
  )
}
