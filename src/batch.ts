// Batching: decide what to flush now (batch_size reached, timeout expired, or a segment-level
// event forces order), net-compact it, and cut it into batches of one event type and segment.
// Pure functions: the state they decide from (the pending changes and their age) lives in Postgres.
import type { Checkpoint } from './sinks/index.js'

export type EventType = 'add' | 'remove' | 'update' | 'clear' | 'segment_upsert' | 'segment_delete'
export const MEMBER_EVENTS: ReadonlySet<EventType> = new Set(['add', 'remove', 'update'])

export interface PendingEvent {
  pos: bigint
  ord: number
  ageMs: number // age of the change, measured by Postgres' clock
  segmentId: string
  event: EventType
  memberId: string | null
  row: Record<string, unknown> | null // the deleted row, for removes captured from DELETE
}

/**
 * A captured change as read for a window. Its member ids stay the JSON text Postgres sent until a
 * batch of them is rendered (memberIds): a window of 100,000 events kept as one object and one id
 * string per member lived across many young-generation collections and was promoted, and the
 * collector moving it was a third of the sidecar's CPU (bench/http, 2026-12-01).
 */
export interface Change {
  pos: bigint
  ageMs: number // age of the change, measured by Postgres' clock
  segmentId: string
  event: EventType // as delivered: a clear without a clear template goes as removes
  /** The members' ids, a JSON array; null where its one event names no member (a segment event, a clear sent whole). */
  ids: string | null
  rows: Array<Record<string, unknown> | null> | null // the deleted rows, for removes captured from DELETE
}

/** Events ord from+1 .. to of a change: of its members, or its one event where it names none. */
export interface Span {
  change: Change
  from: number
  to: number
}

export interface Batch {
  event: EventType
  segmentId: string
  /** How many events it has: members, or 1 for a segment-level event (0: all were compacted away). */
  size: number
  /** Where its first event is (its version and request id); null without events. */
  first: Checkpoint | null
  /** Checkpoint after this batch: covers events compacted away before the next batch. */
  through: Checkpoint
  /** Its events, made anew on each call: the objects die with the batch's rendering. */
  makeEvents(): PendingEvent[]
  /** Each event's member id and captured row, in order, without making the events (rendering's way). */
  visit(fn: (memberId: string | null, row: Record<string, unknown> | null, i: number) => void): void
  /** Rendered: the parsed ids of the changes it ends are not kept for a batch after it (memberIds). */
  rendered?(): void
}

export interface FlushPlan {
  flush: Span[]
  waitMs: number | null
}

/** How many events the spans hold. */
export function eventCount(spans: Span[]): number {
  let n = 0
  for (let i = 0; i < spans.length; i++) n += spans[i]!.to - spans[i]!.from
  return n
}

/** Where the spans end: the position of their last event. */
export function endOf(spans: Span[]): Checkpoint {
  const last = spans[spans.length - 1]!
  return { pos: last.change.pos, ord: last.to }
}

// The ids of the changes parsed last. A change's batches are rendered one after another, so it is
// parsed once, and only a few changes' ids live as strings at a time. Four: a window whose member
// rows are read (at most 20,000 events, two changes of the capture's 10,000) has its ids parsed
// for that read, then for its batches, while the window read ahead of it parses its own.
const PARSED_KEPT = 4
const parsed: Array<{ change: Change; ids: string[] }> = []

/** The member ids of a change that names members. */
export function memberIds(change: Change): string[] {
  for (const p of parsed) if (p.change === change) return p.ids
  const ids = JSON.parse(change.ids!) as string[]
  parsed.unshift({ change, ids })
  if (parsed.length > PARSED_KEPT) parsed.pop()
  return ids
}

/**
 * A change whose last batch is rendered (`to`, its last event, is its last member): its ids go now
 * rather than when four others were parsed. Kept, they were alive at every young-generation
 * collection and copied there: 10,000 strings a change. Without them a scavenge took 1.0 ms
 * instead of 1.5, and the sidecar's CPU per member in bench/http went from 0.34-0.41 to
 * 0.29-0.38 µs (2026-12-02). Parsed again if needed again (a batch split after a rejection).
 */
function forgetIfEnded(change: Change, to: number): void {
  const k = parsed.findIndex((p) => p.change === change)
  if (k >= 0 && parsed[k]!.ids.length === to) parsed.splice(k, 1)
}

/** The events of a span, appended to `out`. */
export function spanEvents(span: Span, out: PendingEvent[] = []): PendingEvent[] {
  const c = span.change
  const ids = c.ids === null ? null : memberIds(c)
  // One object literal with every field in the same order: all events share one hidden class.
  for (let ord = span.from + 1; ord <= span.to; ord++) {
    out.push({
      pos: c.pos,
      ord,
      ageMs: c.ageMs,
      segmentId: c.segmentId,
      event: c.event,
      memberId: ids === null ? null : ids[ord - 1]!,
      row: c.rows?.[ord - 1] ?? null,
    })
  }
  return out
}

/**
 * Which pending events go now. Everything, if the oldest member event waited batch_timeout, or if
 * it ends in a segment-level event; otherwise whole batches only, and the rest waits.
 */
export function planFlush(pending: Span[], batchSize: number, timeoutMs: number, windowFull: boolean): FlushPlan {
  // A span of a segment-level event is that one event, so the last barrier is a span.
  let lastBarrier = -1
  for (let i = pending.length - 1; i >= 0; i--) {
    if (!MEMBER_EVENTS.has(pending[i]!.change.event)) {
      lastBarrier = i
      break
    }
  }
  const tail = pending.slice(lastBarrier + 1)
  const tailLength = eventCount(tail)
  if (tailLength === 0) return { flush: pending, waitMs: null }
  const oldestAge = maxAge(tail, -Infinity)
  if (!windowFull && oldestAge >= timeoutMs) return { flush: pending, waitMs: null }
  // A full window shorter than one batch (batch_size above the read window): waiting would read
  // the same window forever, so it goes (up to its last segment-level event, if any).
  if (windowFull && tailLength < batchSize) return { flush: lastBarrier >= 0 ? pending.slice(0, lastBarrier + 1) : pending, waitMs: null }
  const whole = Math.floor(tailLength / batchSize) * batchSize
  if (whole === tailLength) return { flush: pending, waitMs: null }
  // The whole batches of the tail, the last span cut where they end.
  const flush = pending.slice(0, lastBarrier + 1)
  const rest: Span[] = []
  let taken = 0
  for (const s of tail) {
    const take = Math.min(s.to - s.from, whole - taken)
    if (take === s.to - s.from) flush.push(s)
    else {
      if (take > 0) flush.push({ change: s.change, from: s.from, to: s.from + take })
      rest.push(take > 0 ? { change: s.change, from: s.from + take, to: s.to } : s)
    }
    taken += take
  }
  return { flush, waitMs: windowFull ? null : Math.max(0, timeoutMs - maxAge(rest, 0)) }
}

function maxAge(spans: Span[], initial: number): number {
  let m = initial
  for (const s of spans) if (s.change.ageMs > m) m = s.change.ageMs
  return m
}

/**
 * Net compaction per member within the flushed window: add+remove cancel, updates fold into an
 * earlier add/update, a remove absorbs an earlier update. A clear or segment_delete is a barrier.
 */
export function compact(events: PendingEvent[]): PendingEvent[] {
  // Only a remove or an update can cancel or fold into something; a window of adds and
  // segment-level events (a bulk load, a resync) stays as it is.
  if (!events.some((e) => e.event === 'remove' || e.event === 'update')) return events
  const out: Array<PendingEvent | null> = []
  const stacks = new Map<string, number[]>() // member -> indexes in `out` of its surviving events
  for (const e of events) {
    if (e.memberId === null) {
      if (e.event === 'clear' || e.event === 'segment_delete') {
        for (const key of stacks.keys()) if (key.startsWith(e.segmentId + '\0')) stacks.delete(key)
      }
      out.push(e)
      continue
    }
    const key = e.segmentId + '\0' + e.memberId
    const stack = stacks.get(key) ?? []
    const lastIdx = stack[stack.length - 1]
    const last = lastIdx === undefined ? null : out[lastIdx]!
    if (last && last.event === 'add' && e.event === 'remove') {
      out[lastIdx!] = null
      stack.pop()
      continue
    }
    if (last && (last.event === 'add' || last.event === 'update') && e.event === 'update') continue
    if (last && last.event === 'update' && e.event === 'remove') {
      out[lastIdx!] = null
      stack.pop()
    }
    out.push(e)
    stack.push(out.length - 1)
    stacks.set(key, stack)
  }
  return out.filter((e): e is PendingEvent => e !== null)
}

/** A batch of events already made (compacted ones, a split half, a preview's sample). */
export function batchOf(event: EventType, segmentId: string, events: PendingEvent[], through: Checkpoint): Batch {
  const first = events[0]
  return {
    event,
    segmentId,
    size: events.length,
    first: first ? { pos: first.pos, ord: first.ord } : null,
    through,
    makeEvents: () => events,
    visit: (fn) => events.forEach((e, i) => fn(e.memberId, e.row, i)),
  }
}

/** A batch of spans of changes: its events are made when it is rendered. */
function spanBatch(event: EventType, segmentId: string, parts: Span[], size: number): Batch {
  const first = parts[0]!
  return {
    event,
    segmentId,
    size,
    first: { pos: first.change.pos, ord: first.from + 1 },
    through: endOf(parts),
    makeEvents: () => {
      const out: PendingEvent[] = []
      for (const part of parts) spanEvents(part, out)
      return out
    },
    visit: (fn) => {
      let i = 0
      for (const { change, from, to } of parts) {
        const ids = change.ids === null ? null : memberIds(change)
        for (let ord = from + 1; ord <= to; ord++) fn(ids === null ? null : ids[ord - 1]!, change.rows?.[ord - 1] ?? null, i++)
      }
    },
    rendered: () => {
      for (const { change, to } of parts) forgetIfEnded(change, to)
    },
  }
}

/**
 * Cut a flushed window into batches (one event type and segment, at most batchSize members;
 * segment-level events alone). `updateAsAdd`: without an update template, updates ride with adds.
 * `compacting`: the target gets each member's net change (compactsWindows); then the window's
 * events are made and compacted, and the last batch's checkpoint covers the whole window, so
 * compacted-away events are passed. Otherwise the batches are cut from the spans as they are.
 */
export function toBatches(window: Span[], batchSize: number, updateAsAdd: boolean, compacting: boolean): Batch[] {
  if (compacting && window.some((s) => s.change.event === 'remove' || s.change.event === 'update')) {
    const events: PendingEvent[] = []
    for (const s of window) spanEvents(s, events)
    return batchesOf(events, compact(events), batchSize, updateAsAdd)
  }
  const batches: Batch[] = []
  const eventOf = (e: EventType): EventType => (updateAsAdd && e === 'update' ? 'add' : e)
  let parts: Span[] = []
  let size = 0
  let event: EventType = 'add'
  let segmentId = ''
  const close = () => {
    if (size > 0) batches.push(spanBatch(event, segmentId, parts, size))
    parts = []
    size = 0
  }
  for (const s of window) {
    const e = eventOf(s.change.event)
    if (size > 0 && (e !== event || s.change.segmentId !== segmentId || !MEMBER_EVENTS.has(e))) close()
    event = e
    segmentId = s.change.segmentId
    if (!MEMBER_EVENTS.has(e)) {
      batches.push(spanBatch(e, segmentId, [s], s.to - s.from))
      continue
    }
    for (let from = s.from; from < s.to;) {
      const take = Math.min(s.to - from, batchSize - size)
      parts.push(from === s.from && take === s.to - s.from ? s : { change: s.change, from, to: from + take })
      size += take
      from += take
      if (size === batchSize) close()
    }
  }
  close()
  return batches
}

/** Batches of compacted events, the last one's checkpoint at the window's end. */
function batchesOf(window: PendingEvent[], survivors: PendingEvent[], batchSize: number, updateAsAdd: boolean): Batch[] {
  const batches: Batch[] = []
  const eventOf = (e: PendingEvent): EventType => (updateAsAdd && e.event === 'update' ? 'add' : e.event)
  for (let i = 0; i < survivors.length;) {
    const first = survivors[i]!
    const event = eventOf(first)
    let j = i + 1
    if (MEMBER_EVENTS.has(event)) {
      const end = Math.min(survivors.length, i + batchSize)
      while (j < end && survivors[j]!.segmentId === first.segmentId && eventOf(survivors[j]!) === event) j++
    }
    const last = survivors[j - 1]!
    batches.push(batchOf(event, first.segmentId, survivors.slice(i, j), { pos: last.pos, ord: last.ord }))
    i = j
  }
  const end = window[window.length - 1]
  if (end) {
    const through = { pos: end.pos, ord: end.ord }
    if (batches.length > 0) batches[batches.length - 1]!.through = through
    else batches.push(batchOf('add', end.segmentId, [], through)) // all compacted away
  }
  return batches
}

// A position as one integer, pos * 2^24 + ord: a change holds at most 10,000 members (the capture
// triggers' chunks), so ord < 2^24, and pos has 40 bits left. Ordered as the positions are.
const ORD_BITS = 24n

/** (pos, ord) as one integer that orders like the positions (ClickHouse's UInt64 versions). */
export function positionVersion(pos: bigint, ord: number): bigint {
  if (ord < 0 || ord >= 1 << Number(ORD_BITS)) throw new Error(`positionVersion: ord ${ord} does not fit in ${ORD_BITS} bits`)
  return (pos << ORD_BITS) + BigInt(ord)
}

/**
 * The `version` a batch renders with: its first event's position. It grows from batch to batch of
 * a subscription in delivery order (each starts after the one before ends), and is the same when
 * the batch is delivered again from the same checkpoint (it starts with the same event). A target
 * without transactions (ClickHouse) keeps the rows of the highest version, so a replay converges.
 */
export function batchVersion(batch: Batch): bigint {
  return batch.first ? positionVersion(batch.first.pos, batch.first.ord) : 0n
}
