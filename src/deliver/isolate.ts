// One batch at a time, isolating what the target rejects: a batch is split in halves down to the
// member, the rejected members are dead-lettered and the checkpoint passes them.
import { batchOf, type Batch } from '../batch.js'
import { TemplateError } from '../render/index.js'
import { holdsSubscription, isFenced, isTransient } from '../sinks/index.js'
import { HeldTemplate } from './hold.js'
import { applyRecorded } from './journal.js'
import { recordDeadLetter, recordRejected, recordSuccess } from './record.js'
import { renderBatch, type Round } from './round.js'

/**
 * Render and apply one batch. A rejection (not a connection problem) splits the batch in halves
 * until the rejected members stand alone; those are dead-lettered and the checkpoint passes them.
 * A statement over the target's size limit is split the same way before it is sent.
 */
export async function deliverBatch(round: Round, batch: Batch): Promise<void> {
  const { sink, sub } = round
  const started = performance.now()
  let statement: string | null = null
  // Each step in its own try, so that only a failure of this batch's own statement splits it:
  // a split re-sends its halves, which must never include anything the target already committed.
  try {
    statement = renderBatch(round, batch)
  } catch (error) {
    // A value this dialect cannot represent, or a field a member lacks: isolate it like a rejection.
    if (batch.size > 1) return splitAndDeliver(round, batch)
    // A template that fails for a member with a row would fail for every member: hold instead.
    if (error instanceof TemplateError && hasRow(round, batch)) throw new HeldTemplate(`${batch.event}: ${error.message}`)
    return deadLetter(round, batch, statement, error)
  }
  if (statement !== null && Buffer.byteLength(statement) > sink.maxStatementBytes && batch.size > 1) {
    return splitAndDeliver(round, batch)
  }
  try {
    const statements = statement === null ? [] : [statement]
    await applyRecorded(round, null, statements, batch.through, [{ batch, statements: statements.length }])
  } catch (error) {
    // A receiver that says the endpoint is gone rejects every batch alike: held, not dead-lettered.
    if (isTransient(error) || isFenced(error) || holdsSubscription(error)) throw error
    return batch.size > 1 ? splitAndDeliver(round, batch) : deadLetter(round, batch, statement, error)
  }
  const answer = statement === null ? undefined : sink.answerTo?.(statement)
  await recordSuccess(round, batch, performance.now() - started, statement === null ? 0 : 1, answer)
}

/** Whether the batch's (one) member has a row of its own: read from the segment table or captured. */
function hasRow({ segments, members }: Round, batch: Batch): boolean {
  const e = batch.makeEvents()[0]
  if (!e || e.memberId === null) return true // a segment-level event: only the template is there
  return e.row !== null || members.get(batch.segmentId)?.has(e.memberId) === true || !segments.has(batch.segmentId)
}

async function splitAndDeliver(round: Round, batch: Batch): Promise<void> {
  const events = batch.makeEvents()
  const half = Math.ceil(events.length / 2)
  const first = events.slice(0, half)
  const last = first[first.length - 1]!
  await deliverBatch(round, batchOf(batch.event, batch.segmentId, first, { pos: last.pos, ord: last.ord }))
  await deliverBatch(round, batchOf(batch.event, batch.segmentId, events.slice(half), batch.through))
}

async function deadLetter(round: Round, batch: Batch, statement: string | null, error: unknown): Promise<void> {
  const { ctx, sub } = round
  const e = batch.makeEvents()[0]
  const message = (error as Error)?.message ?? String(error)
  ctx.log.warn({ subscription: sub.name, event: batch.event, member: e?.memberId, err: message }, 'target rejected an event; dead-lettered')
  if (e) await recordDeadLetter(ctx, sub, e, statement, error)
  await applyRecorded(round, null, [], batch.through, [{ batch, statements: 0 }]) // pass it; the other members go on
  await recordRejected(round, batch, error)
}
