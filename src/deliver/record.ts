// Recording delivery at home, only through the schema's functions: record_batch and
// record_batches (the log row of a batch and the home cursor past it), _record_dead_letter,
// _record_failure (a round that failed before any batch) and _reconcile_cursor.
import type pg from 'pg'
import type { Batch, PendingEvent } from '../batch.js'
import type { SubscriptionRow } from '../read.js'
import { compareCheckpoints, type Checkpoint } from '../sinks/index.js'
import type { DeliveryContext, Round } from './round.js'

const message = (error: unknown) => (error as Error)?.message ?? String(error)

/** What the log keeps of a committed batch (not the batch: its members need not outlive it). */
export interface Delivered {
  segmentId: string
  event: Batch['event']
  rows: number
  through: Checkpoint
  statements: number
  ms: number
  /** What the target answered (Sink.answerTo), if it says more than ok. */
  detail?: Record<string, unknown>
}

/**
 * The log rows of committed batches, written home in order; a window's last ones still while the
 * next window goes (the target would otherwise wait for them). Awaited before a batch is delivered
 * on its own, whose record must follow them, and before the delivery call returns.
 */
export interface LogRows {
  written: Promise<void>
}

/** Queue `done` after the log rows already on their way; a failure is rethrown where `written` is awaited. */
export function queueLogRows(round: Round, done: Delivered[]): void {
  const { logRows } = round
  logRows.written = logRows.written.then(() => recordBatches(round, done))
  logRows.written.catch(() => {})
}

/** Log batches the target committed, in one call, and move the home cursor past the last. */
export async function recordBatches({ ctx, sub }: Pick<Round, 'ctx' | 'sub'>, done: Delivered[]): Promise<void> {
  const last = done[done.length - 1]
  if (!last) return
  await ctx.pool.query({
    name: 'segmenter:record_batches',
    text: `select segmenter.record_batches(subscription_id => $1, cursor_pos => $2, cursor_ord => $3, segment_ids => $4::uuid[],
       events => $5::segmenter.event[], statements => $6::int[], rows => $7::bigint[], duration_ms => $8::float8[],
       details => $9::jsonb[])`,
    values: [
      sub.subscription_id,
      last.through.pos.toString(),
      last.through.ord,
      done.map((d) => d.segmentId),
      done.map((d) => d.event),
      done.map((d) => d.statements),
      done.map((d) => d.rows),
      done.map((d) => d.ms),
      done.some((d) => d.detail) ? done.map((d) => (d.detail ? JSON.stringify(d.detail) : null)) : null,
    ],
  })
}

/** One batch's log row (record_batch), with the home cursor moved to `to` if that is further. */
async function recordBatch(
  { ctx, sub }: Pick<Round, 'ctx' | 'sub'>,
  batch: Batch,
  r: { to: Checkpoint; ok: boolean; ms: number; statements: number; error: string | null; detail?: Record<string, unknown> },
): Promise<void> {
  ctx.onBatch?.(sub, batch, r.ok, r.ms)
  await ctx.pool.query({
    name: 'segmenter:record_batch',
    text: `select segmenter.record_batch(subscription_id => $1, cursor_pos => $2, cursor_ord => $3, event => $4::segmenter.event,
       segment_id => $5::uuid, statements => $6, rows => $7, duration_ms => $8, ok => $9, error => $10, detail => $11::jsonb)`,
    values: [
      sub.subscription_id,
      r.to.pos.toString(),
      r.to.ord,
      batch.event,
      batch.segmentId,
      r.statements,
      batch.size,
      r.ms,
      r.ok,
      r.error,
      r.detail ? JSON.stringify(r.detail) : null,
    ],
  })
}

/** The target committed the batch (with `statements` statements, 0 or 1) in `ms`. */
export const recordSuccess = (round: Round, batch: Batch, ms: number, statements: number, detail?: Record<string, unknown>) =>
  recordBatch(round, batch, { to: batch.through, ok: true, ms, statements, error: null, detail })

/** What an error says of the target's answer, for the log row (an HTTP status). */
const answerIn = (error: unknown): Record<string, unknown> | undefined => {
  const status = (error as { httpStatus?: number })?.httpStatus
  return typeof status === 'number' ? { http_status: status } : undefined
}

/** The target rejected the batch's member, now dead-lettered; its checkpoint has passed it. */
export const recordRejected = (round: Round, batch: Batch, error: unknown) =>
  recordBatch(round, batch, { to: batch.through, ok: false, ms: 0, statements: 0, error: message(error), detail: answerIn(error) })

/** The target went away during the batch: an error, and the home cursor stays; it is sent again. */
export const recordRetry = (round: Round, batch: Batch, error: unknown) =>
  recordBatch(round, batch, {
    to: { pos: BigInt(round.sub.cursor_pos), ord: round.sub.cursor_ord },
    ok: false,
    ms: 0,
    statements: 0,
    error: message(error),
    detail: answerIn(error),
  })

/** Log a round that failed before any batch (the target unreachable), so sync_stats counts it. */
export async function recordRoundFailure(ctx: DeliveryContext, sub: SubscriptionRow, error: unknown): Promise<void> {
  await ctx.pool.query('select segmenter._record_failure(subscription_id => $1, error => $2)', [sub.subscription_id, message(error)])
}

/** Keep a rejected event with the statement and the target's error, before the checkpoint passes it. */
export async function recordDeadLetter(
  ctx: DeliveryContext,
  sub: SubscriptionRow,
  e: PendingEvent,
  statement: string | null,
  error: unknown,
): Promise<void> {
  await ctx.pool.query(
    `select segmenter._record_dead_letter(subscription_id => $1, pos => $2, ord => $3, segment_id => $4::uuid,
       event => $5::segmenter.event, member_id => $6, statement => $7, error => $8)`,
    [sub.subscription_id, e.pos.toString(), e.ord, e.segmentId, e.event, e.memberId, statement, message(error)],
  )
}

/** Nothing is pending after the target's checkpoint `at`: the home cursor says the same (forward or back). */
export async function reconcileCursor(pool: pg.Pool, sub: SubscriptionRow, at: Checkpoint): Promise<void> {
  if (compareCheckpoints(at, { pos: BigInt(sub.cursor_pos), ord: sub.cursor_ord }) === 0) return
  await pool.query('select segmenter._reconcile_cursor(subscription_id => $1, cursor_pos => $2, cursor_ord => $3)', [
    sub.subscription_id,
    at.pos.toString(),
    at.ord,
  ])
}
