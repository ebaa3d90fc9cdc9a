// Delivery of one subscription: hold it (advisory lock), ask the target where it stands, read what
// is pending after that, flush what is due as batches, each committed in the target together with
// its checkpoint, then record it at home. Rejected rows are isolated by splitting and dead-lettered.
import type pg from 'pg'
import type { Logger } from 'pino'
import { compact, MEMBER_EVENTS, planFlush, toBatches, type Batch, type FlushPlan, type PendingEvent } from './batch.js'
import { SegmenterError } from './errors.js'
import { compileTemplate, TemplateError, type CompiledTemplate, type Dialect } from './render/index.js'
import {
  columnsFor,
  loadMemberRows,
  loadSegments,
  loadSubscription,
  membersOf,
  readPending,
  type MemberRows,
  type SegmentInfo,
  type SubscriptionRow,
} from './read.js'
import {
  compareCheckpoints,
  consumerFingerprint,
  isFenced,
  isLockConflict,
  isTransient,
  openSink,
  type Checkpoint,
  type OpenTransaction,
  type Sink,
} from './sinks/index.js'

// Locks are (class, subscription id) pairs; this class keeps them apart from other tools' locks.
const LOCK_CLASS = 0x5e6d
// A read ahead takes ~100 ms for 10,000 members; one that takes this long is given up on.
const READ_AHEAD_TIMEOUT_MS = 30_000
const READ_AHEAD_MAX_EVENTS = 20_000
// Batches delivered in a run are recorded at home this many at a time (and when the run ends).
const RECORD_EVERY = 20
// On one lane, a backlog's batches go up to this many (and this many bytes) to one target
// transaction. What that saves is the commit and round trip per batch: a backlog of 20,000
// one-member batches drained in 1.0-1.2 s instead of 6.7-8.3 s (one-off measurement, MariaDB on
// this machine); for batches of 1,000 rows it made no measurable difference. A failed group is
// sent again one batch at a time.
const TRANSACTION_MAX_BATCHES = 100
const TRANSACTION_MAX_BYTES = 1 << 20

export interface DeliveryContext {
  pool: pg.Pool
  log: Logger
  // One target connection per subscription, reused across rounds: subscriptions delivered in
  // parallel never share a connection (one's failed multi-statement must not leave a transaction
  // open for another's batch).
  sinks: Map<string, Sink>
  templates: Map<string, CompiledTemplate>
  /** Subscriptions whose batches conflicted in the target: delivered on one lane from then on. */
  oneLane: Set<string>
  onBatch?: (sub: SubscriptionRow, batch: Batch, ok: boolean, ms: number) => void
  env?: NodeJS.ProcessEnv
}

export type RoundResult =
  | { kind: 'idle' } // nothing pending, or paused, or gone
  | { kind: 'busy' } // another sidecar holds it
  | { kind: 'wait'; ms: number } // a partial batch waits for its timeout
  | { kind: 'retry'; error: unknown } // the target is unreachable; try again after a backoff
  | { kind: 'held'; error: string } // held in an error state (segmenter.hold_subscription) until its cause is fixed

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
    locked = (await lockClient.query<{ ok: boolean }>('select pg_try_advisory_lock($1, $2::int) as ok', [LOCK_CLASS, subscriptionId]))
      .rows[0]!.ok
    if (!locked) return { kind: 'busy' }
    for (;;) {
      if (stopped()) return lockLost ? lostLock(ctx, subscriptionId) : { kind: 'idle' }
      // Between windows the target waits for these round trips: they go together.
      const [, sub, identity]: [unknown, SubscriptionRow | null, HomeIdentity | null, void] = await Promise.all([
        ctx.pool.query('select segmenter.sequence_changes()'),
        loadSubscription(ctx.pool, subscriptionId),
        home ? null : homeIdentity(ctx.pool),
        logRows.written,
      ])
      home ??= identity
      if (!sub || sub.state !== 'active' || sub.error !== null) return { kind: 'idle' }
      const broken = brokenTemplate(ctx, sub)
      if (broken) return hold(ctx, sub, 'template', broken, templateHint(sub))
      let sink: Sink
      try {
        sink = await sinkFor(ctx, sub, home!.identity)
      } catch (error) {
        if (error instanceof SegmenterError && error.code === 'CONFIG_INVALID') {
          return hold(ctx, sub, 'configuration', error.message, error.hint)
        }
        await recordFailure(ctx, sub, error)
        return { kind: 'retry', error }
      }
      let from: Checkpoint
      try {
        // The advisory lock has been held since this call began, so no one else moved the target's
        // checkpoint since this sink committed it (and if someone did, the fence says so): read
        // back only at the start (a round trip per window, with the target idle, at 10,000
        // members a window).
        const known = sink === lastWindowSink ? sink.lastCommitted(sub.sync_key) : null
        if (known) from = known
        else {
          const target = await sink.checkpoint(sub.sync_key)
          // The high-water mark read after the checkpoint: every position in the target was
          // assigned before it was delivered, so before this read (a sidecar that lost its lock may
          // have delivered positions assigned after this call began).
          const diverged = divergence(sub, target, await homeIdentity(ctx.pool))
          if (diverged) return hold(ctx, sub, 'diverged', diverged, divergedHint(sub))
          from = target
        }
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
      // The next window, read while the previous one was being applied, if it starts here.
      const prefetched = ahead ? await ahead : null
      ahead = null
      // The scope holds batch_size, and with it the window size.
      const hit = prefetched !== null && compareCheckpoints(prefetched.from, from) === 0 && prefetched.scope === scopeOf(sub)
      const pending = hit ? prefetched.pending : await readPending(lockClient, sub, from, window)
      if (pending.length === 0) {
        await reconcileHomeCursor(ctx.pool, sub, from)
        return { kind: 'idle' }
      }
      const { plan, batches } = (hit && prefetched.planned) || planWindow(sub, pending, window)
      if (plan.flush.length === 0) return { kind: 'wait', ms: plan.waitMs ?? sub.batch_timeout_ms }
      const segments = hit ? prefetched.segments : await loadSegments(ctx.pool, [...new Set(batches.map((b) => b.segmentId))])
      const columnsOf = memberColumns(ctx, sub, sink.dialect)
      const members = hit ? prefetched.members : await loadMemberRows(ctx.pool, segments, plan.flush, columnsOf)
      const round: Round = { ctx, sink, sub, segments, members, logRows }
      // A full window means more is waiting: read it while this one is applied. Not for windows
      // of big batches: they amortize their own read, and a second one would double the memory.
      if (pending.length === window && window <= READ_AHEAD_MAX_EVENTS) {
        const end = plan.flush[plan.flush.length - 1]!
        ahead = readWindow(ctx.pool, sub, { pos: end.pos, ord: end.ord }, window, columnsOf)
      }
      // Stops only between batches: each is committed whole with its checkpoint, or not at all.
      for (let i = 0; i < batches.length && !stopped();) {
        try {
          const run = runLength(batches, i)
          let alone = 1
          if (run > 1) {
            const result = await deliverRun(round, batches.slice(i, i + run), stopped)
            i += result.committed
            if (result.error !== undefined) throw result.error
            if (result.committed === run || stopped()) continue
            alone = result.alone
          }
          // One at a time: a lone batch, or those where a run stopped (a rejection is split here).
          await logRows.written
          for (const stop = i + alone; i < stop && !stopped(); i++) await deliverBatch(round, batches[i]!)
        } catch (error) {
          if (error instanceof HeldTemplate) return hold(ctx, sub, 'template', error.message, templateHint(sub))
          if (isFenced(error)) {
            // Another sidecar delivered meanwhile (it holds the lock now, or this one's zombie
            // transaction committed): nothing of this transaction committed; start again from
            // what the target says, once the lock is ours.
            ctx.log.warn({ subscription: sub.name, err: error.message }, 'fenced: the target checkpoint moved under this sidecar')
            return { kind: 'busy' }
          }
          if (!isTransient(error)) throw error
          await dropSink(ctx, sub.subscription_id)
          await record(round, batches[i]!, 0, false, error, false)
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
    if (locked && !failure && !lockLost)
      await lockClient.query('select pg_advisory_unlock($1, $2::int)', [LOCK_CLASS, subscriptionId]).catch(() => {})
    lockClient.release(failure ?? (lockLost ? new Error('advisory lock session ended') : undefined))
    // Unless the round failed anyway: the round's own error says more than the log's.
    if (recordError !== undefined && failure === undefined) throw recordError
  }
}

function lostLock(ctx: DeliveryContext, subscriptionId: string): RoundResult {
  ctx.log.warn({ subscription: subscriptionId }, 'the home session holding the subscription lock ended; stopped delivering it')
  return { kind: 'busy' }
}

interface HomeIdentity {
  identity: string
  lastPos: bigint
}

async function homeIdentity(pool: pg.Pool): Promise<HomeIdentity> {
  const { rows } = await pool.query<{ identity: string; last_pos: string }>('select identity, last_pos from segmenter.home_identity()')
  return { identity: rows[0]!.identity, lastPos: BigInt(rows[0]!.last_pos) }
}

/** Why the target's checkpoint cannot be this home's own history, or null if it can. */
function divergence(sub: SubscriptionRow, target: { pos: bigint; ord: number; home: string }, home: HomeIdentity): string | null {
  if (target.home !== home.identity) {
    return `the target's checkpoint of subscription ${sub.name} was written by another home (${target.home}); this home is ${home.identity}`
  }
  if (target.pos > home.lastPos) {
    return `the target's checkpoint of subscription ${sub.name} is at position ${target.pos}, ahead of the last position this home assigned (${home.lastPos}): the home was restored from a backup (or lost its change log), and changes since it would be skipped`
  }
  return null
}

const divergedHint = (sub: SubscriptionRow) =>
  `if this home is the restored or moved one, run select segmenter.resync('${sub.name}') to re-export the subscription to the target with a fresh checkpoint; if two homes deliver into one target, give each consumer its own options.checkpoint_table`

const templateHint = (sub: SubscriptionRow) =>
  `fix the template with select segmenter.alter_subscription('${sub.name}', ...); the cursor and the dead letters are kept`

/** Hold the subscription in an error state: nothing is delivered or dead-lettered until its cause is fixed. */
async function hold(
  ctx: DeliveryContext,
  sub: SubscriptionRow,
  kind: 'template' | 'configuration' | 'diverged',
  error: string,
  hint?: string,
): Promise<RoundResult> {
  ctx.log.error({ subscription: sub.name, kind, err: error, hint }, 'subscription held until its cause is fixed')
  await ctx.pool.query('select segmenter.hold_subscription($1, $2, $3, $4)', [sub.subscription_id, kind, error, hint ?? null])
  return { kind: 'held', error }
}

/** A template of the subscription that does not compile for the target's dialect: its error. */
function brokenTemplate(ctx: DeliveryContext, sub: SubscriptionRow): string | null {
  for (const event of ['add', 'update', 'remove', 'clear', 'segment_upsert', 'segment_delete'] as const) {
    try {
      templateFor(ctx, sub, event, sub.consumer.dialect)
    } catch (error) {
      return `${TEMPLATE_FIELDS[event]}: ${(error as Error).message}`
    }
  }
  return null
}
const TEMPLATE_FIELDS = {
  add: 'add_sql',
  update: 'update_sql',
  remove: 'remove_sql',
  clear: 'clear_sql',
  segment_upsert: 'segment_upsert_sql',
  segment_delete: 'segment_delete_sql',
} as const

/** A template that fails for a member with a row: the template's fault, not the member's. */
class HeldTemplate extends Error {}

/** A window read ahead: the pending events from `from` and everything needed to render them. */
interface Window {
  from: Checkpoint
  size: number
  scope: string // what of the subscription it was read and planned for (scopeOf)
  pending: PendingEvent[]
  /** A full window's batches, cut while the previous window was applied; null for a partial one. */
  planned: ReturnType<typeof planWindow> | null
  segments: Map<string, SegmentInfo>
  members: MemberRows
}

/** What a read-ahead's events, window size and batches depend on besides its start. */
const scopeOf = (sub: SubscriptionRow) => `${sub.segment_ids.join()}/${sub.batch_size}/${sub.update_sql === null}`

/** What of a window goes now, cut into batches. */
function planWindow(sub: SubscriptionRow, pending: PendingEvent[], window: number): { plan: FlushPlan; batches: Batch[] } {
  const plan = planFlush(pending, sub.batch_size, sub.batch_timeout_ms, pending.length === window)
  return { plan, batches: toBatches(plan.flush, compact(plan.flush), sub.batch_size, sub.update_sql === null) }
}

/**
 * Read a window on its own connection. Never rejects and never hangs for long: a failed or slow
 * read ahead (the home database restarting) is null, and the window is read again in order.
 */
async function readWindow(
  pool: pg.Pool,
  sub: SubscriptionRow,
  from: Checkpoint,
  size: number,
  columnsOf: (segment: SegmentInfo) => string[] | null,
): Promise<Window | null> {
  const read = async (): Promise<Window> => {
    const client = await pool.connect()
    let pending: PendingEvent[]
    try {
      pending = await readPending(client, sub, from, size)
      client.release()
    } catch (error) {
      client.release(error as Error)
      throw error
    }
    const segments = await loadSegments(pool, [...new Set(pending.map((e) => e.segmentId))])
    const members = await loadMemberRows(pool, segments, pending, columnsOf)
    // A partial window's plan depends on its events' age when it is used; a full one's does not.
    const planned = pending.length === size ? planWindow(sub, pending, size) : null
    return { from, size, scope: scopeOf(sub), pending, planned, segments, members }
  }
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), READ_AHEAD_TIMEOUT_MS)))
  try {
    return await Promise.race([read().catch(() => null), timeout])
  } finally {
    clearTimeout(timer)
  }
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
  const sink = await openSink(sub.consumer, home, ctx.env)
  openedFrom.set(sink, fingerprint)
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

/**
 * Which member columns to read: for the seed's syntax, those its member templates name. A
 * Squirrelly template is code and may read any column, so it gets them all.
 */
function memberColumns(ctx: DeliveryContext, sub: SubscriptionRow, dialect: Dialect): (segment: SegmentInfo) => string[] | null {
  if (sub.syntax !== 'altcraft') return () => null
  const fields = new Set<string>()
  try {
    for (const event of MEMBER_EVENTS) templateFor(ctx, sub, event, dialect)?.fields.forEach((f) => fields.add(f))
  } catch {
    return () => null // a template that does not compile fails where it renders, and is dead-lettered there
  }
  return (segment) => columnsFor(segment, fields)
}

/** What the batches of one flushed window share. */
interface Round {
  ctx: DeliveryContext
  sink: Sink
  sub: SubscriptionRow
  segments: Map<string, SegmentInfo>
  members: MemberRows
  logRows: LogRows
}

/**
 * The log rows of committed batches, written home in order; a window's last ones still while the
 * next window goes (the target would otherwise wait for them). Awaited before a batch is delivered
 * on its own, whose record must follow them, and before the delivery call returns.
 */
interface LogRows {
  written: Promise<void>
}

/** Queue `done` after the log rows already on their way; a failure is rethrown where `written` is awaited. */
function queueLogRows(round: Round, done: Delivered[]): void {
  const { logRows } = round
  logRows.written = logRows.written.then(() => recordDelivered(round, done))
  logRows.written.catch(() => {})
}

/**
 * Render and apply one batch. A rejection (not a connection problem) splits the batch in halves
 * until the rejected members stand alone; those are dead-lettered and the checkpoint passes them.
 * A statement over the target's size limit is split the same way before it is sent.
 */
async function deliverBatch(round: Round, batch: Batch): Promise<void> {
  const { sink, sub } = round
  const started = performance.now()
  let statement: string | null = null
  // Each step in its own try, so that only a failure of this batch's own statement splits it:
  // a split re-sends its halves, which must never include anything the target already committed.
  try {
    statement = renderBatch(round, batch)
  } catch (error) {
    // A value this dialect cannot represent, or a field a member lacks: isolate it like a rejection.
    if (batch.events.length > 1) return splitAndDeliver(round, batch)
    // A template that fails for a member with a row would fail for every member: hold instead.
    if (error instanceof TemplateError && hasRow(round, batch)) throw new HeldTemplate(`${batch.event}: ${error.message}`)
    return deadLetter(round, batch, statement, error)
  }
  if (statement !== null && Buffer.byteLength(statement) > sink.maxStatementBytes && batch.events.length > 1) {
    return splitAndDeliver(round, batch)
  }
  try {
    await sink.apply(statement === null ? [] : [statement], sub.sync_key, batch.through)
  } catch (error) {
    if (isTransient(error) || isFenced(error)) throw error
    return batch.events.length > 1 ? splitAndDeliver(round, batch) : deadLetter(round, batch, statement, error)
  }
  await record(round, batch, performance.now() - started, true, undefined, true, statement === null ? 0 : 1)
}

/** Whether the batch's (one) member has a row of its own: read from the segment table or captured. */
function hasRow({ segments, members }: Round, batch: Batch): boolean {
  const e = batch.events[0]
  if (!e || e.memberId === null) return true // a segment-level event: only the template is there
  return e.row !== null || members.get(batch.segmentId)?.has(e.memberId) === true || !segments.has(batch.segmentId)
}

/** The batch's statement, or null when it has none (no template for the event, no members). */
function renderBatch({ ctx, sink, sub, segments, members }: Round, batch: Batch): string | null {
  const segment = segments.get(batch.segmentId)
  const template = batch.events.length > 0 ? templateFor(ctx, sub, batch.event, sink.dialect) : null
  if (!template || !segment) return null
  const rows = MEMBER_EVENTS.has(batch.event) ? membersOf(segment, batch.events, members) : []
  return template.render({ segment_id: segment.segment_id, segment_name: segment.name, audience: sub.audience, batch: rows })
}

/**
 * How many batches from `i` on may be delivered as one run (deliverRun): consecutive batches of
 * one member event in one segment. Compaction leaves each member at most once in such a run, so
 * its batches touch different members; anything else (a clear, a segment event, a change of
 * event) is a barrier.
 */
function runLength(batches: Batch[], i: number): number {
  const first = batches[i]!
  if (!MEMBER_EVENTS.has(first.event)) return 1
  let j = i + 1
  while (j < batches.length && batches[j]!.event === first.event && batches[j]!.segmentId === first.segmentId) j++
  return j - i
}

/**
 * Deliver a run of batches as a pipeline: the next batches are rendered while the target executes
 * the previous ones, and the log rows go home RECORD_EVERY at a time, off the critical path. With
 * `lanes` > 1, up to that many transactions are open at once, one batch each, committed strictly
 * in order, each with its checkpoint. With one, the batches rendered while a transaction ran go
 * together in the next one (up to TRANSACTION_MAX_BATCHES and TRANSACTION_MAX_BYTES),
 * statements, checkpoint and COMMIT in one round trip: a backlog costs the target a commit and a
 * checkpoint write per group instead of per batch, and a lone change still goes at once. The run
 * stops early, rolling back what is open, where a batch fails to render or execute; it returns how
 * many batches were committed, how many from there on the caller should deliver one at a time
 * (where the target rejects a row, those are split), and a connection failure to retry.
 */
async function deliverRun(
  round: Round,
  run: Batch[],
  shouldStop: () => boolean,
): Promise<{ committed: number; alone: number; error?: unknown }> {
  const { ctx, sink, sub } = round
  const lanes = ctx.oneLane.has(sub.subscription_id) ? 1 : sink.lanes
  const perTransaction = lanes === 1 ? TRANSACTION_MAX_BATCHES : 1
  const open: Array<{ group: Rendered[]; tx: OpenTransaction; started: number; settled: boolean }> = []
  const ready: Rendered[] = [] // rendered, not begun
  let next = 0 // the first batch not rendered yet
  let end = run.length // where the run stops: before a batch that must go alone
  let committed = 0
  let alone = 1
  let failure: unknown
  const done: Delivered[] = [] // committed, not yet recorded at home
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
    const bytes = statement === null ? 0 : Buffer.byteLength(statement)
    if (bytes > sink.maxStatementBytes) end = next // split alone
    if (next >= end) return null
    next++
    return { batch, statement, bytes }
  }
  /** The rendered batches that go in the next transaction. */
  const nextGroup = (): Rendered[] => {
    const group: Rendered[] = []
    let bytes = 0
    const maxBytes = Math.min(TRANSACTION_MAX_BYTES, sink.maxStatementBytes)
    while (ready.length > 0 && group.length < perTransaction && (group.length === 0 || bytes + ready[0]!.bytes <= maxBytes)) {
      bytes += ready[0]!.bytes
      group.push(ready.shift()!)
    }
    return group
  }
  try {
    for (;;) {
      while (open.length < lanes && !shouldStop()) {
        if (ready.length === 0) {
          const rendered = renderNext()
          if (!rendered) break
          ready.push(rendered)
        }
        const group = nextGroup()
        const statements = group.flatMap((g) => (g.statement === null ? [] : [g.statement]))
        const through = group[group.length - 1]!.batch.through
        const tx = lanes === 1 ? committedAtOnce(sink, statements, sub.sync_key, through) : sink.begin(statements)
        const entry = { group, tx, started: performance.now(), settled: false }
        // Awaited in order below; meanwhile it tells the rendering below to stop.
        tx.executed.then(
          () => (entry.settled = true),
          () => (entry.settled = true),
        )
        open.push(entry)
      }
      const head = open.shift()
      if (!head) break
      // The target is busy with the open transactions: render the next batches meanwhile, one per
      // turn of the event loop (after the queries above went out: they are written to the socket
      // once the microtasks have run), until a transaction's worth or the head is done.
      while (ready.length < perTransaction && next < end && !head.settled && !shouldStop()) {
        await new Promise((resolve) => setImmediate(resolve))
        const rendered = renderNext()
        if (!rendered) break
        ready.push(rendered)
      }
      try {
        await head.tx.executed
        await head.tx.commit(sub.sync_key, head.group[head.group.length - 1]!.batch.through)
      } catch (error) {
        failure = error
        alone = head.group.length // which batch failed is found by delivering them one at a time
        break
      }
      const ms = (performance.now() - head.started) / head.group.length
      for (const { batch, statement } of head.group) {
        committed++
        ctx.onBatch?.(sub, batch, true, ms)
        done.push({
          segmentId: batch.segmentId,
          event: batch.event,
          rows: batch.events.length,
          through: batch.through,
          statements: statement === null ? 0 : 1,
          ms,
        })
      }
      if (done.length >= RECORD_EVERY) {
        queueLogRows(round, done.splice(0))
      }
    }
  } finally {
    await Promise.all(open.map((o) => o.tx.rollback()))
    queueLogRows(round, done)
  }
  if (failure !== undefined && lanes > 1 && isLockConflict(failure)) {
    // The template makes batches touch the same rows: open together they would only wait on each other.
    ctx.oneLane.add(sub.subscription_id)
    ctx.log.warn(
      { subscription: sub.name, err: (failure as Error).message },
      'batches lock the same rows in the target; one lane from now on',
    )
  } else if (failure !== undefined && (isTransient(failure) || isFenced(failure))) return { committed, alone, error: failure }
  return { committed, alone }
}

/** A batch rendered for deliverRun; bytes of its statement. */
interface Rendered {
  batch: Batch
  statement: string | null
  bytes: number
}

/** One lane: statements, checkpoint and COMMIT in one round trip, so nothing stays open. */
function committedAtOnce(sink: Sink, statements: string[], syncKey: string, to: Checkpoint): OpenTransaction {
  const executed = sink.apply(statements, syncKey, to)
  return { executed, commit: () => executed, rollback: () => executed.catch(() => {}) }
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

/** What the log keeps of a committed batch (not the batch: its members need not outlive it). */
interface Delivered {
  segmentId: string
  event: Batch['event']
  rows: number
  through: Checkpoint
  statements: number
  ms: number
}

/** Log batches the target committed, in one call, and move the home cursor past the last. */
async function recordDelivered({ ctx, sub }: Pick<Round, 'ctx' | 'sub'>, done: Delivered[]): Promise<void> {
  const last = done[done.length - 1]
  if (!last) return
  await ctx.pool.query(
    `select segmenter.record_batches(subscription_id => $1, cursor_pos => $2, cursor_ord => $3, segment_ids => $4::uuid[],
       events => $5::segmenter.event[], statements => $6::int[], rows => $7::bigint[], duration_ms => $8::float8[])`,
    [
      sub.subscription_id,
      last.through.pos.toString(),
      last.through.ord,
      done.map((d) => d.segmentId),
      done.map((d) => d.event),
      done.map((d) => d.statements),
      done.map((d) => d.rows),
      done.map((d) => d.ms),
    ],
  )
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
