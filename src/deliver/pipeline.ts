// The pipeline: a run of batches rendered while the target executes the ones before, in parallel
// lanes or grouped into few target transactions, committed strictly in order.
import { MEMBER_EVENTS, type Batch } from '../batch.js'
import { holdsSubscription, isFenced, isLockConflict, isTransient, type OpenTransaction } from '../sinks/index.js'
import { utf8 } from '../utf8.js'
import { beginRecorded, journals, recordSending, sendsFrom } from './journal.js'
import { queueLogRows, type Delivered } from './record.js'
import { renderBatch, type Round } from './round.js'

// Batches delivered in a run are recorded at home this many at a time (and when the run ends).
const RECORD_EVERY = 20
// On one lane, a backlog's batches go up to this many (and this many bytes) to one target
// transaction. What that saves is the commit and round trip per batch: a backlog of 20,000
// one-member batches drained in 1.0-1.2 s instead of 6.7-8.3 s (one-off measurement, MariaDB on
// this machine); for batches of 1,000 rows it made no measurable difference. A failed group is
// sent again one batch at a time.
const TRANSACTION_MAX_BATCHES = 100
const TRANSACTION_MAX_BYTES = 1 << 20
// Where each batch is a request of its own (sink.identifiesRequests: HTTP), a group saves only
// journal records, and rendering far ahead of what is on its way holds rendered bodies in memory
// (up to 100 of 270 kB in bench/http) and delays what a pause or a stop waits for. There, a group
// is at most this many batches, rendered while the one before is on its way.
const REQUEST_GROUP_MAX_BATCHES = 2

/**
 * How many batches from `i` on may be delivered as one run (deliverRun): consecutive batches of
 * one member event in one segment. Compaction leaves each member at most once in such a run, so
 * its batches touch different members; anything else (a clear, a segment event, a change of
 * event) is a barrier.
 */
export function runLength(batches: Batch[], i: number): number {
  const first = batches[i]!
  if (!MEMBER_EVENTS.has(first.event)) return 1
  let j = i + 1
  while (j < batches.length && batches[j]!.event === first.event && batches[j]!.segmentId === first.segmentId) j++
  return j - i
}

/**
 * Where a run may go on into the next window: the batches that continue it (the next window's first
 * run, when it is of the same event and segment), or null where the run ends with this window.
 * Asked once everything of the run is rendered, while its last sends are still on their way.
 */
export type ExtendRun = () => Promise<Batch[] | null>

/**
 * Deliver a run of batches as a pipeline: the next batches are rendered while the target executes
 * the previous ones, and the log rows go home RECORD_EVERY at a time, off the critical path. With
 * `lanes` > 1, up to that many transactions are open at once, one batch each, committed strictly
 * in order, each with its checkpoint. With one, the batches rendered while a transaction ran go
 * together in the next one (up to TRANSACTION_MAX_BATCHES, or REQUEST_GROUP_MAX_BATCHES requests,
 * and TRANSACTION_MAX_BYTES), statements, checkpoint and COMMIT in one round trip: a backlog
 * costs the target a commit and a checkpoint write per group instead of per batch, and a lone
 * change still goes at once. The run
 * stops early, rolling back what is open, where a batch fails to render or execute; it returns how
 * many batches were committed, how many from there on the caller should deliver one at a time
 * (where the target rejects a row, those are split), and a connection failure to retry.
 * With `extend`, the run goes on with the batches it gives (appended to `run`) instead of ending
 * with its last batch: the pipeline does not empty at each window's end. `run` is left holding only
 * the batches not committed: committed ones are dropped from it as they go, so that a run over many
 * windows keeps only its unfinished batches, and their ids, in memory.
 */
export async function deliverRun(
  round: Round,
  run: Batch[],
  shouldStop: () => boolean,
  extend?: ExtendRun,
): Promise<{ committed: number; alone: number; error?: unknown }> {
  const { ctx, sink, sub } = round
  const lanes = ctx.oneLane.has(sub.subscription_id) ? 1 : sink.lanes
  const perTransaction = lanes > 1 ? 1 : sink.identifiesRequests ? REQUEST_GROUP_MAX_BATCHES : TRANSACTION_MAX_BATCHES
  const open: Array<{ group: Rendered[]; tx: OpenTransaction; started: number; settled: boolean }> = []
  const ready: Rendered[] = [] // rendered, not begun
  let next = 0 // the first batch of `run` not rendered yet
  let end = run.length // where the run stops: before a batch that must go alone
  let committed = 0
  let alone = 1
  let failure: unknown
  const done: Delivered[] = [] // committed, not yet recorded at home
  // Where the next group's send starts, for the journal (journal.ts) of a target without transactions.
  let sentThrough = journals(sub) ? await sendsFrom(sink, sub.sync_key) : null
  const journaling = sentThrough !== null
  // The ask for more batches (extend), from when the last one is rendered until it answers.
  let extending: Promise<void> | null = null
  let extensible = extend !== undefined
  const askMore = () => {
    if (!extensible || extending || next < end || end < run.length || shouldStop()) return
    extending = extend!().then(
      (more) => {
        if (more?.length) run.push(...more)
        else extensible = false
        end = run.length
        extending = null
      },
      () => {
        // The caller's state is as it was: the run ends here, and the next window is read as usual.
        extensible = false
        extending = null
      },
    )
  }
  /** The next batch, rendered; null where the run ends before it. */
  const renderNext = (): Rendered | null => {
    if (next >= end) return null
    const batch = run[next]!
    let statement: string | null = null
    try {
      statement = renderBatch(round, batch)
    } catch {
      end = next // delivered alone, where a bad value is isolated
    }
    // Where the statement is recorded before it goes (journal.ts), its bytes are made now, once,
    // for the record and the send as well as for the limits here.
    const bytes = statement === null ? 0 : journaling ? utf8(statement).length : Buffer.byteLength(statement)
    if (bytes > sink.maxStatementBytes) end = next // split alone
    if (next >= end) return null
    next++
    if (next === end) askMore()
    return { batch, statement, bytes }
  }
  /** The rendered batches that go in the next transaction. */
  const nextGroup = (): Rendered[] => {
    const group: Rendered[] = []
    let bytes = 0
    const maxBytes = Math.min(TRANSACTION_MAX_BYTES, sink.maxApplyBytes ?? sink.maxStatementBytes)
    while (ready.length > 0 && group.length < perTransaction && (group.length === 0 || bytes + ready[0]!.bytes <= maxBytes)) {
      bytes += ready[0]!.bytes
      group.push(ready.shift()!)
    }
    return group
  }
  /** The next group, taken from `ready`; on one lane its send is recorded now (journal.ts). */
  const formGroup = () => {
    const group = nextGroup()
    const statements = group.flatMap((g) => (g.statement === null ? [] : [g.statement]))
    const through = group[group.length - 1]!.batch.through
    const sent = group.map((g) => ({ batch: g.batch, statements: g.statement === null ? 0 : 1 }))
    const from = sentThrough
    sentThrough = through
    const recorded = journaling && lanes === 1 ? recordSending(round, from!, through, statements, sent) : null
    recorded?.catch(() => {}) // awaited before the send
    return { group, statements, through, sent, from, recorded }
  }
  // On one lane, the next group formed and its send recorded while the head is still on its way,
  // so that the record does not wait for the head, nor the next send for the record. Its life: set
  // (formGroup, which starts the record) while the head is in flight, taken as the next send in
  // the loop below (and cleared there), or, where the run stops first, its record awaited in
  // `finally` so that it lands before anything recorded later. At most one at a time.
  let formed: ReturnType<typeof formGroup> | null = null
  try {
    for (;;) {
      while (open.length < lanes && !shouldStop()) {
        if (ready.length === 0 && !formed) {
          const rendered = renderNext()
          if (!rendered) break
          ready.push(rendered)
          // Where every apply costs a write of its own (sink.groupsBatches), a run's first group is
          // rendered whole before it goes, instead of its first batch alone.
          while (sink.groupsBatches && lanes === 1 && ready.length < perTransaction && !shouldStop()) {
            const more = renderNext()
            if (!more) break
            ready.push(more)
          }
        }
        const { group, statements, through, sent, from, recorded } = formed ?? formGroup()
        formed = null
        const tx =
          lanes === 1
            ? committedAtOnce(sendAfter(recorded, () => sink.apply(statements, sub.sync_key, through)))
            : beginRecorded(round, from, statements, through, sent)
        const entry = { group, tx, started: performance.now(), settled: false }
        // Awaited in order below; meanwhile it tells the rendering below to stop.
        tx.executed.then(
          () => (entry.settled = true),
          () => (entry.settled = true),
        )
        open.push(entry)
      }
      const head = open.shift()
      if (!head) {
        if (!extending) break
        await extending // everything sent: the next window's batches, if they continue the run
        continue
      }
      // The target is busy with the open transactions: render the next batches meanwhile, one per
      // turn of the event loop (after the queries above went out: they are written to the socket
      // once the microtasks have run), until a transaction's worth or the head is done.
      // Where batches are not grouped (sink.groupsBatches false: an HTTP request each), the next
      // send is recorded as soon as it is rendered, while the head is still on its way; recorded
      // only after the head came back, each send waited for its own record (a round trip with its
      // body) before it went.
      const formsNext = () => journaling && lanes === 1 && !formed && ready.length > 0 && !shouldStop()
      if (!sink.groupsBatches && formsNext()) formed = formGroup()
      const headDone = head.tx.executed.then(noop, noop)
      while (ready.length < perTransaction && !head.settled && !shouldStop()) {
        if (next >= end) {
          // Nothing left to render: until the head is back, or the next window's batches are here.
          if (!extending) break
          await Promise.race([extending, headDone])
          continue
        }
        await new Promise((resolve) => setImmediate(resolve))
        const rendered = renderNext()
        if (!rendered) break
        ready.push(rendered)
        if (!sink.groupsBatches && formsNext()) formed = formGroup()
      }
      if (formsNext()) formed = formGroup()
      try {
        await head.tx.executed
        await head.tx.commit(sub.sync_key, head.group[head.group.length - 1]!.batch.through)
      } catch (error) {
        failure = error
        alone = head.group.length // which batch failed is found by delivering them one at a time
        break
      }
      const ms = (performance.now() - head.started) / head.group.length
      // Committed: gone from the run (its first batches, in order), and from `next` and `end` with it.
      run.splice(0, head.group.length)
      next -= head.group.length
      end -= head.group.length
      for (const { batch, statement } of head.group) {
        committed++
        ctx.onBatch?.(sub, batch, true, ms)
        done.push({
          segmentId: batch.segmentId,
          event: batch.event,
          rows: batch.size,
          through: batch.through,
          statements: statement === null ? 0 : 1,
          ms,
          detail: statement === null ? undefined : sink.answerTo?.(statement),
        })
      }
      if (done.length >= RECORD_EVERY) {
        queueLogRows(round, done.splice(0))
      }
    }
  } finally {
    await extending // it changes the caller's state: settled before the caller looks at it
    await Promise.all(open.map((o) => o.tx.rollback()))
    // A group recorded but not sent: its record lands before whatever is recorded next from here.
    await formed?.recorded?.catch(() => {})
    queueLogRows(round, done)
  }
  if (failure !== undefined && lanes > 1 && isLockConflict(failure)) {
    // The template makes batches touch the same rows: open together they would only wait on each other.
    ctx.oneLane.add(sub.subscription_id)
    ctx.log.warn(
      { subscription: sub.name, err: (failure as Error).message },
      'batches lock the same rows in the target; one lane from now on',
    )
  } else if (failure !== undefined && (isTransient(failure) || isFenced(failure) || holdsSubscription(failure)))
    return { committed, alone, error: failure }
  return { committed, alone }
}

const noop = () => {}

/** A batch rendered for deliverRun; bytes of its statement. */
interface Rendered {
  batch: Batch
  statement: string | null
  bytes: number
}

/** `send` once `recorded` (the journal's record of it, if any) is written. */
async function sendAfter(recorded: Promise<void> | null, send: () => Promise<void>): Promise<void> {
  await recorded
  await send()
}

/** One lane: statements, checkpoint and COMMIT in one round trip (`executed`), so nothing stays open. */
function committedAtOnce(executed: Promise<void>): OpenTransaction {
  return { executed, commit: () => executed, rollback: () => executed.catch(() => {}) }
}
