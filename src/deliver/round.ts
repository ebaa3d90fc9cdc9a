// What the parts of a delivery round share: the sidecar's context, the window being flushed, the
// subscription's compiled templates and the rendering of one batch.
import type pg from 'pg'
import type { Logger } from 'pino'
import { batchVersion, MEMBER_EVENTS, type Batch } from '../batch.js'
import { compileTemplate, type CompiledTemplate, type Dialect } from '../render/index.js'
import { columnsFor, membersOf, type MemberRows, type SegmentInfo, type SubscriptionRow } from '../read.js'
import type { Sink } from '../sinks/index.js'
import { withRequestId } from './journal.js'
import type { LogRows } from './record.js'

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

/** What the batches of one flushed window share. */
export interface Round {
  ctx: DeliveryContext
  sink: Sink
  sub: SubscriptionRow
  segments: Map<string, SegmentInfo>
  members: MemberRows
  logRows: LogRows
}

export function templateFor(ctx: DeliveryContext, sub: SubscriptionRow, event: Batch['event'], dialect: Dialect): CompiledTemplate | null {
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
export function memberColumns(ctx: DeliveryContext, sub: SubscriptionRow, dialect: Dialect): (segment: SegmentInfo) => string[] | null {
  if (sub.syntax !== 'altcraft') return () => null
  const fields = new Set<string>()
  try {
    for (const event of MEMBER_EVENTS) templateFor(ctx, sub, event, dialect)?.fields.forEach((f) => fields.add(f))
  } catch {
    return () => null // a template that does not compile fails where it renders, and is dead-lettered there
  }
  return (segment) => columnsFor(segment, fields)
}

/** The batch's statement, or null when it has none (no template for the event, no members). */
export function renderBatch({ ctx, sink, sub, segments, members }: Round, batch: Batch): string | null {
  const segment = segments.get(batch.segmentId)
  const template = batch.size > 0 ? templateFor(ctx, sub, batch.event, sink.dialect) : null
  if (!template || !segment) return null
  const rows = MEMBER_EVENTS.has(batch.event) ? membersOf(segment, batch, members) : []
  const rendered = template.render({
    segment_id: segment.segment_id,
    segment_name: segment.name,
    audience: sub.audience,
    version: batchVersion(batch),
    batch: rows,
  })
  batch.rendered?.()
  return sink.identifiesRequests ? withRequestId(sub.sync_key, batch, rendered) : rendered
}
