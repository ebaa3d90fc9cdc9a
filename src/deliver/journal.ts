// What is sent is recorded before it is sent, where the target cannot commit a batch together with
// its checkpoint (ClickHouse, HTTP receivers: isTransactional). A sidecar killed between sending
// and the checkpoint leaves the batch unconfirmed; the next round sends it again exactly as it was
// recorded in segmenter.in_flight (db/0011_journal.sql): the same statements byte for byte, so the
// same `version` and the same request id, whatever the window read now would render (it may be
// longer, a member's attributes may have changed, a template may have been edited).
import { createHash } from 'node:crypto'
import type { Batch } from '../batch.js'
import type { SubscriptionRow } from '../read.js'
import { isFenced, isTransactional, isTransient, type Checkpoint, type OpenTransaction, type Sink } from '../sinks/index.js'
import { utf8 } from '../utf8.js'
import { recordBatches } from './record.js'
import type { DeliveryContext, Round } from './round.js'

/** Whether the subscription's sends are recorded before they go. */
export const journals = (sub: SubscriptionRow): boolean => !isTransactional(sub.consumer)

/**
 * The stable id of a send, from the extent it covers: the same on every replay of it (an HTTP
 * receiver's webhook-id and Idempotency-Key), different for any other extent (a split batch).
 */
export function requestId(syncKey: string, from: Checkpoint, to: Checkpoint): string {
  const extent = `${syncKey}\0${from.pos}.${from.ord}\0${to.pos}.${to.ord}`
  return 'msg_' + createHash('sha256').update(extent).digest('hex').slice(0, 32)
}

/**
 * A rendered request with its batch's id on the first line (for a sink that identifiesRequests):
 * the id comes from the batch's own extent, so it is the same whether the batch goes in a group
 * or alone, and whenever it is sent again.
 */
export function withRequestId(syncKey: string, batch: Batch, rendered: string): string {
  return `${requestId(syncKey, batch.first!, batch.through)}\n${rendered}`
}

/** Where the next send starts: the checkpoint the sink last read or committed, else the target's. */
export async function sendsFrom(sink: Sink, syncKey: string): Promise<Checkpoint> {
  const known = sink.lastCommitted(syncKey)
  if (known) return known
  const { pos, ord } = await sink.checkpoint(syncKey)
  return { pos, ord }
}

/** Record the send of `batches` (their `statements`, in order) from `from` to `to`. */
export async function recordSending(
  { ctx, sub }: Pick<Round, 'ctx' | 'sub'>,
  from: Checkpoint,
  to: Checkpoint,
  statements: string[],
  batches: Array<{ batch: Batch; statements: number }>,
): Promise<void> {
  await ctx.pool.query({
    name: 'segmenter:record_sending',
    text: `select segmenter._record_sending(subscription_id => $1, from_pos => $2, from_ord => $3, to_pos => $4, to_ord => $5,
       request_id => $6, statements => $7, statement_lengths => $8::int[], segment_ids => $9::uuid[], events => $10::segmenter.event[],
       rows => $11::bigint[], statement_counts => $12::int[])`,
    values: [
      sub.subscription_id,
      from.pos.toString(),
      from.ord,
      to.pos.toString(),
      to.ord,
      requestId(sub.sync_key, from, to),
      // As the bytes the statements go as (a binary text parameter is its UTF-8; utf8.ts): the
      // pipeline encoded each once already, so they are not encoded again for the record.
      statements.length === 1 ? utf8(statements[0]!) : Buffer.concat(statements.map(utf8)),
      statements.map((st) => st.length),
      batches.map((b) => b.batch.segmentId),
      batches.map((b) => b.batch.event),
      batches.map((b) => b.batch.size),
      batches.map((b) => b.statements),
    ],
  })
}

/**
 * sink.apply, recorded first where the subscription journals. `from` is where the target stands
 * (sendsFrom, or the end of the send before); `batches` what the statements are of, for the log.
 */
export async function applyRecorded(
  round: Round,
  from: Checkpoint | null,
  statements: string[],
  to: Checkpoint,
  batches: Array<{ batch: Batch; statements: number }>,
): Promise<void> {
  const { sink, sub } = round
  if (journals(sub)) await recordSending(round, from ?? (await sendsFrom(sink, sub.sync_key)), to, statements, batches)
  await sink.apply(statements, sub.sync_key, to)
}

/** sink.begin, recorded first where the subscription journals (the statements go once it is). */
export function beginRecorded(
  round: Round,
  from: Checkpoint | null,
  statements: string[],
  to: Checkpoint,
  batches: Array<{ batch: Batch; statements: number }>,
): OpenTransaction {
  if (!journals(round.sub)) return round.sink.begin(statements)
  let tx: OpenTransaction | undefined
  const recorded = (async () => recordSending(round, from ?? (await sendsFrom(round.sink, round.sub.sync_key)), to, statements, batches))()
  const executed = recorded.then(() => {
    tx = round.sink.begin(statements)
    return tx.executed
  })
  executed.catch(() => {})
  return {
    executed,
    async commit(syncKey, at) {
      await executed
      await tx!.commit(syncKey, at)
    },
    async rollback() {
      await executed.catch(() => {})
      await tx?.rollback()
    },
  }
}

interface InFlightRow {
  from_pos: string
  from_ord: number
  to_pos: string
  to_ord: number
  statements: string
  statement_lengths: number[]
  segment_ids: string[]
  events: Batch['event'][]
  rows: string[]
  statement_counts: number[]
}

/** The statements of a recorded send, as they were before they were joined. */
function splitStatements(row: Pick<InFlightRow, 'statements' | 'statement_lengths'>): string[] {
  let at = 0
  return row.statement_lengths.map((n) => row.statements.slice(at, (at += n)))
}

/**
 * Send again, as recorded, what was sent from `from` on and never confirmed (a chain of sends, each
 * starting where the one before ends), and log it; returns where the target stands after them. A
 * recorded send the target now rejects is dropped from the journal: the round renders those
 * events anew, where a rejected member is isolated as usual.
 */
export async function replayUnconfirmed(ctx: DeliveryContext, sink: Sink, sub: SubscriptionRow, from: Checkpoint): Promise<Checkpoint> {
  if (!journals(sub) || sub.has_in_flight === false) return from
  const { rows } = await ctx.pool.query<InFlightRow>(
    `select from_pos, from_ord, to_pos, to_ord, statements, statement_lengths, segment_ids, events::text[] as events, rows, statement_counts
     from segmenter.in_flight where subscription_id = $1 and (from_pos, from_ord) >= ($2, $3) order by from_pos, from_ord`,
    [sub.subscription_id, from.pos.toString(), from.ord],
  )
  let at = from
  for (const row of rows) {
    if (BigInt(row.from_pos) !== at.pos || row.from_ord !== at.ord) break // not a continuation of what the target holds
    const to = { pos: BigInt(row.to_pos), ord: row.to_ord }
    const statements = splitStatements(row)
    const started = performance.now()
    try {
      await sink.apply(statements, sub.sync_key, to)
    } catch (error) {
      if (isTransient(error) || isFenced(error)) throw error
      ctx.log.warn(
        { subscription: sub.name, err: (error as Error).message },
        'the target rejects a recorded send it never confirmed; rendering those events anew',
      )
      await ctx.pool.query('select segmenter._forget_sending($1, $2, $3)', [sub.subscription_id, at.pos.toString(), at.ord])
      return at
    }
    ctx.log.info(
      { subscription: sub.name, from: `${at.pos}.${at.ord}`, to: `${to.pos}.${to.ord}` },
      'replayed an unconfirmed send as recorded',
    )
    const ms = (performance.now() - started) / row.events.length
    let k = 0 // the statement of batch i, where it has one
    await recordBatches(
      { ctx, sub },
      row.events.map((event, i) => ({
        segmentId: row.segment_ids[i]!,
        event,
        rows: Number(row.rows[i]),
        through: to,
        statements: row.statement_counts[i]!,
        ms,
        detail: row.statement_counts[i] ? sink.answerTo?.(statements[k++]!) : undefined,
      })),
    )
    at = to
  }
  return at
}
