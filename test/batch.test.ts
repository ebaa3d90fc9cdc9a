// Unit tests of src/batch.ts: what a round flushes (planFlush), how a flushed window is
// net-compacted (compact), and how the survivors are cut into batches with checkpoints (toBatches).
// Pure functions: no servers needed.
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { compact, eventCount, planFlush, spanEvents, toBatches, type EventType, type PendingEvent, type Span } from '../src/batch.js'

const SEG_A = '00000000-0000-0000-0000-00000000000a'
const SEG_B = '00000000-0000-0000-0000-00000000000b'

/** A pending event; positions are given explicitly so checkpoints can be asserted. */
function ev(
  pos: number,
  ord: number,
  event: EventType,
  memberId: string | null,
  opts: { ageMs?: number; segmentId?: string } = {},
): PendingEvent {
  return { pos: BigInt(pos), ord, ageMs: opts.ageMs ?? 0, segmentId: opts.segmentId ?? SEG_A, event, memberId, row: null }
}

/** n add events of one change (one pos, ords 1..n), oldest first. */
function adds(n: number, opts: { pos?: number; ageMs?: number; segmentId?: string; prefix?: string } = {}): PendingEvent[] {
  return Array.from({ length: n }, (_, i) => ev(opts.pos ?? 1, i + 1, 'add', `${opts.prefix ?? 'm'}${i + 1}`, opts))
}

/**
 * The events as the read delivers them: runs of one change (one pos, event and segment, ords in a
 * row) become a span of one change, its ids JSON as Postgres sends them.
 */
function spansOf(events: PendingEvent[]): Span[] {
  const spans: Span[] = []
  for (let i = 0; i < events.length;) {
    const e = events[i]!
    let j = i + 1
    while (
      e.memberId !== null &&
      j < events.length &&
      events[j]!.pos === e.pos &&
      events[j]!.event === e.event &&
      events[j]!.segmentId === e.segmentId &&
      events[j]!.memberId !== null &&
      events[j]!.ord === events[j - 1]!.ord + 1
    )
      j++
    const ids: string[] = new Array(events[j - 1]!.ord).fill('')
    for (let k = i; k < j; k++) ids[events[k]!.ord - 1] = events[k]!.memberId!
    const change = {
      pos: e.pos,
      ageMs: e.ageMs,
      segmentId: e.segmentId,
      event: e.event,
      ids: e.memberId === null ? null : JSON.stringify(ids),
      rows: null,
    }
    spans.push({ change, from: e.ord - 1, to: events[j - 1]!.ord })
    i = j
  }
  return spans
}
const eventsOf = (spans: Span[]) => spans.flatMap((s) => spanEvents(s))

/** planFlush of these events (read as spans), what it flushes as events again. */
function planOf(pending: PendingEvent[], batchSize: number, timeoutMs: number, windowFull: boolean) {
  const plan = planFlush(spansOf(pending), batchSize, timeoutMs, windowFull)
  return { flush: eventsOf(plan.flush), waitMs: plan.waitMs }
}

/** Compact form of events for deepEqual: "event:member@pos.ord". */
const show = (events: PendingEvent[]) => events.map((e) => `${e.event}:${e.memberId ?? '-'}@${e.pos}.${e.ord}`)
const cp = (pos: number, ord: number) => ({ pos: BigInt(pos), ord })

describe('planFlush', () => {
  test('nothing pending: nothing to flush and nothing to wait for', () => {
    assert.deepEqual(planOf([], 10, 1000, false), { flush: [], waitMs: null })
  })

  test('full batches go at once, the partial rest waits for the rest of its timeout', () => {
    const pending = [
      ...adds(10, { pos: 1, ageMs: 400 }),
      ...adds(10, { pos: 2, ageMs: 300, prefix: 'n' }),
      ...adds(5, { pos: 3, ageMs: 250, prefix: 'o' }),
    ]
    const plan = planOf(pending, 10, 1000, false)
    assert.equal(plan.flush.length, 20, 'two whole batches')
    assert.deepEqual(plan.flush, pending.slice(0, 20), 'the oldest events, in order')
    // the rest's oldest event is 250 ms old: it waits the remaining 750 ms
    assert.equal(plan.waitMs, 750)
  })

  test('exactly whole batches: everything goes and nothing waits', () => {
    const pending = adds(30, { ageMs: 5 })
    assert.deepEqual(planOf(pending, 10, 1000, false), { flush: pending, waitMs: null })
  })

  test('a partial batch younger than the timeout waits, measured from its oldest event', () => {
    const pending = [ev(1, 1, 'add', 'a', { ageMs: 300 }), ev(2, 1, 'add', 'b', { ageMs: 100 }), ev(3, 1, 'remove', 'c', { ageMs: 20 })]
    const plan = planOf(pending, 100, 1000, false)
    assert.deepEqual(plan.flush, [])
    assert.equal(plan.waitMs, 700)
  })

  test('once the oldest event waited batch_timeout, everything goes', () => {
    const pending = [ev(1, 1, 'add', 'a', { ageMs: 1000 }), ev(2, 1, 'remove', 'b', { ageMs: 10 })]
    assert.deepEqual(planOf(pending, 100, 1000, false), { flush: pending, waitMs: null })
    const older = [ev(1, 1, 'add', 'a', { ageMs: 5000 }), ...adds(3, { pos: 2, ageMs: 1 })]
    assert.deepEqual(planOf(older, 100, 1000, false), { flush: older, waitMs: null })
  })

  test('batch_timeout 0 flushes a single event at once', () => {
    const pending = [ev(1, 1, 'add', 'a', { ageMs: 0 })]
    assert.deepEqual(planOf(pending, 1000, 0, false), { flush: pending, waitMs: null })
  })

  test('a segment-level event forces everything before it; the member events after it wait', () => {
    const pending = [
      ev(1, 1, 'add', 'a', { ageMs: 50 }),
      ev(2, 1, 'add', 'b', { ageMs: 40 }),
      ev(3, 1, 'clear', null, { ageMs: 30 }),
      ev(4, 1, 'add', 'c', { ageMs: 20 }),
    ]
    const plan = planOf(pending, 100, 1000, false)
    assert.deepEqual(show(plan.flush), ['add:a@1.1', 'add:b@2.1', 'clear:-@3.1'])
    assert.equal(plan.waitMs, 980, 'the tail waits for its own oldest event')
  })

  test('the last segment-level event counts: an earlier one does not hold back the events up to the later one', () => {
    const pending = [
      ev(1, 1, 'segment_upsert', null, { ageMs: 90 }),
      ev(2, 1, 'add', 'a', { ageMs: 80 }),
      ev(3, 1, 'segment_delete', null, { ageMs: 70 }),
      ev(4, 1, 'add', 'b', { ageMs: 60 }),
      ev(4, 2, 'add', 'c', { ageMs: 60 }),
    ]
    const plan = planOf(pending, 100, 1000, false)
    assert.deepEqual(show(plan.flush), ['segment_upsert:-@1.1', 'add:a@2.1', 'segment_delete:-@3.1'])
    assert.equal(plan.waitMs, 940)
  })

  test('a window ending in a segment-level event flushes everything', () => {
    const pending = [ev(1, 1, 'add', 'a', { ageMs: 1 }), ev(2, 1, 'segment_upsert', null, { ageMs: 1 })]
    assert.deepEqual(planOf(pending, 100, 1000, false), { flush: pending, waitMs: null })
  })

  test('whole batches after a segment-level event go with it', () => {
    const pending = [ev(1, 1, 'clear', null, { ageMs: 10 }), ...adds(25, { pos: 2, ageMs: 10 })]
    const plan = planOf(pending, 10, 1000, false)
    assert.equal(plan.flush.length, 21, 'the clear and two whole batches')
    assert.equal(plan.flush[0]!.event, 'clear')
    assert.equal(plan.waitMs, 990)
  })

  test('windowFull: an expired timeout does not flush the partial tail (more events follow it), and nothing waits', () => {
    const pending = adds(25, { ageMs: 5000 })
    const plan = planOf(pending, 10, 1000, true)
    assert.equal(plan.flush.length, 20, 'whole batches only')
    assert.equal(plan.waitMs, null, 'the caller reads on at once instead of waiting')
    const young = planOf(adds(25, { ageMs: 1 }), 10, 1000, true)
    assert.equal(young.flush.length, 20)
    assert.equal(young.waitMs, null)
  })

  test('windowFull with a window smaller than one batch still makes progress (batch_size > read window)', () => {
    // deliver.ts reads at most 100,000 events; with batch_size above that, a full window holds
    // less than one batch. Flushing nothing returns { kind: 'wait' } and the next round reads the
    // same window again: the subscription never advances.
    const pending = adds(100, { ageMs: 60_000 })
    const plan = planOf(pending, 1000, 1000, true)
    assert.ok(plan.flush.length > 0, `a full window must flush something (flushed ${plan.flush.length}, waitMs ${plan.waitMs})`)
  })
})

describe('compact', () => {
  test('add then remove of the same member cancel', () => {
    assert.deepEqual(compact([ev(1, 1, 'add', 'a'), ev(2, 1, 'remove', 'a')]), [])
  })

  test("only the member's own events cancel; other members and the order of survivors are kept", () => {
    const events = [ev(1, 1, 'add', 'a'), ev(1, 2, 'add', 'b'), ev(2, 1, 'remove', 'a'), ev(2, 2, 'remove', 'c'), ev(3, 1, 'add', 'd')]
    assert.deepEqual(show(compact(events)), ['add:b@1.2', 'remove:c@2.2', 'add:d@3.1'])
  })

  test('the same member id in two segments is two members', () => {
    const events = [ev(1, 1, 'add', 'a', { segmentId: SEG_A }), ev(2, 1, 'remove', 'a', { segmentId: SEG_B })]
    assert.deepEqual(compact(events), events)
  })

  test('remove, add, remove → remove (the first remove survives)', () => {
    const out = compact([ev(1, 1, 'remove', 'a'), ev(2, 1, 'add', 'a'), ev(3, 1, 'remove', 'a')])
    assert.deepEqual(show(out), ['remove:a@1.1'])
  })

  test('remove then add both survive (re-entry), in order', () => {
    assert.deepEqual(show(compact([ev(1, 1, 'remove', 'a'), ev(2, 1, 'add', 'a')])), ['remove:a@1.1', 'add:a@2.1'])
  })

  test('add then update → add', () => {
    assert.deepEqual(show(compact([ev(1, 1, 'add', 'a'), ev(2, 1, 'update', 'a'), ev(3, 1, 'update', 'a')])), ['add:a@1.1'])
  })

  test('update then update → one update', () => {
    assert.deepEqual(show(compact([ev(1, 1, 'update', 'a'), ev(2, 1, 'update', 'a')])), ['update:a@1.1'])
  })

  test('update then remove → remove', () => {
    assert.deepEqual(show(compact([ev(1, 1, 'update', 'a'), ev(2, 1, 'remove', 'a')])), ['remove:a@2.1'])
  })

  test('add, update, remove → nothing', () => {
    assert.deepEqual(compact([ev(1, 1, 'add', 'a'), ev(2, 1, 'update', 'a'), ev(3, 1, 'remove', 'a')]), [])
  })

  test('a clear is a barrier: an add before it and a remove after it both survive', () => {
    const events = [ev(1, 1, 'add', 'a'), ev(2, 1, 'clear', null), ev(3, 1, 'remove', 'a')]
    assert.deepEqual(show(compact(events)), ['add:a@1.1', 'clear:-@2.1', 'remove:a@3.1'])
  })

  test('a segment_delete is a barrier too; an update after a barrier does not fold into an add before it', () => {
    const events = [ev(1, 1, 'add', 'a'), ev(2, 1, 'segment_delete', null), ev(3, 1, 'update', 'a')]
    assert.deepEqual(show(compact(events)), ['add:a@1.1', 'segment_delete:-@2.1', 'update:a@3.1'])
  })

  test('a clear of another segment is no barrier for this one', () => {
    const events = [ev(1, 1, 'add', 'a'), ev(2, 1, 'clear', null, { segmentId: SEG_B }), ev(3, 1, 'remove', 'a')]
    assert.deepEqual(show(compact(events)), ['clear:-@2.1'])
  })

  test('segment_upsert is not a barrier', () => {
    const events = [ev(1, 1, 'add', 'a'), ev(2, 1, 'segment_upsert', null), ev(3, 1, 'remove', 'a')]
    assert.deepEqual(show(compact(events)), ['segment_upsert:-@2.1'])
  })
})

describe('toBatches', () => {
  test('runs of one event type and segment become one batch each, in order', () => {
    const events = [
      ev(1, 1, 'add', 'a'),
      ev(1, 2, 'add', 'b'),
      ev(2, 1, 'remove', 'c'),
      ev(3, 1, 'add', 'd'),
      ev(4, 1, 'add', 'e', { segmentId: SEG_B }),
      ev(5, 1, 'add', 'f'),
    ]
    const batches = toBatches(spansOf(events), 100, true, false)
    assert.deepEqual(
      batches.map((b) => [b.event, b.segmentId, b.makeEvents().map((e) => e.memberId)]),
      [
        ['add', SEG_A, ['a', 'b']],
        ['remove', SEG_A, ['c']],
        ['add', SEG_A, ['d']],
        ['add', SEG_B, ['e']],
        ['add', SEG_A, ['f']],
      ],
    )
    assert.deepEqual(
      batches.map((b) => b.through),
      [cp(1, 2), cp(2, 1), cp(3, 1), cp(4, 1), cp(5, 1)],
    )
  })

  test("at most batchSize members per batch; each batch's checkpoint is its last event", () => {
    const events = adds(25)
    const batches = toBatches(spansOf(events), 10, true, false)
    assert.deepEqual(
      batches.map((b) => b.size),
      [10, 10, 5],
    )
    assert.deepEqual(
      batches.map((b) => b.through),
      [cp(1, 10), cp(1, 20), cp(1, 25)],
    )
    assert.deepEqual(
      batches.flatMap((b) => b.makeEvents()),
      events,
      'every event once, in order',
    )
  })

  test('a batch takes members of consecutive changes; a change is cut where a batch is full', () => {
    const events = [...adds(5, { pos: 1 }), ...adds(8, { pos: 2, prefix: 'n' }), ...adds(12, { pos: 3, prefix: 'o' })]
    const batches = toBatches(spansOf(events), 10, true, false)
    assert.deepEqual(
      batches.map((b) => [b.size, b.first, b.through]),
      [
        [10, cp(1, 1), cp(2, 5)],
        [10, cp(2, 6), cp(3, 7)],
        [5, cp(3, 8), cp(3, 12)],
      ],
    )
    assert.deepEqual(
      batches.flatMap((b) => b.makeEvents()),
      events,
      'every event once, in order, made again from the ids as read',
    )
    for (const b of batches) {
      const visited: Array<[string | null, number]> = []
      b.visit((id, row, i) => visited.push([id, i]))
      assert.deepEqual(
        visited,
        b.makeEvents().map((e, i) => [e.memberId, i]),
        'visit names the members makeEvents makes, in order',
      )
    }
  })

  test('a window that starts inside a change (a checkpoint mid-change) starts at the ord after it', () => {
    const window = spansOf(adds(10, { pos: 4 })).map((s) => ({ ...s, from: 6 }))
    const [batch] = toBatches(window, 100, true, false)
    assert.deepEqual(batch!.first, cp(4, 7))
    assert.deepEqual(
      batch!.makeEvents().map((e) => e.memberId),
      ['m7', 'm8', 'm9', 'm10'],
    )
    assert.equal(eventCount(window), 4)
  })

  test('segment-level events stand alone, also two in a row', () => {
    const events = [ev(1, 1, 'segment_upsert', null), ev(2, 1, 'clear', null), ev(3, 1, 'clear', null), ev(4, 1, 'add', 'a')]
    const batches = toBatches(spansOf(events), 100, true, false)
    assert.deepEqual(
      batches.map((b) => [b.event, b.size]),
      [
        ['segment_upsert', 1],
        ['clear', 1],
        ['clear', 1],
        ['add', 1],
      ],
    )
  })

  test('without an update template, updates ride with adds (as adds)', () => {
    const events = [ev(1, 1, 'add', 'a'), ev(2, 1, 'update', 'b'), ev(3, 1, 'add', 'c')]
    const batches = toBatches(spansOf(events), 100, true, false)
    assert.equal(batches.length, 1)
    assert.equal(batches[0]!.event, 'add')
    assert.deepEqual(
      batches[0]!.makeEvents().map((e) => e.memberId),
      ['a', 'b', 'c'],
    )
  })

  test('with an update template, updates are batches of their own', () => {
    const events = [ev(1, 1, 'add', 'a'), ev(2, 1, 'update', 'b'), ev(2, 2, 'update', 'c'), ev(3, 1, 'add', 'd')]
    const batches = toBatches(spansOf(events), 100, false, false)
    assert.deepEqual(
      batches.map((b) => [b.event, b.makeEvents().map((e) => e.memberId)]),
      [
        ['add', ['a']],
        ['update', ['b', 'c']],
        ['add', ['d']],
      ],
    )
  })

  test("the last batch's checkpoint covers events compacted away after it", () => {
    const window = [ev(1, 1, 'add', 'a'), ev(2, 1, 'add', 'b'), ev(3, 1, 'remove', 'b'), ev(4, 1, 'add', 'c'), ev(5, 1, 'remove', 'c')]
    const survivors = compact(window)
    assert.deepEqual(show(survivors), ['add:a@1.1'])
    const batches = toBatches(spansOf(window), 100, true, true)
    assert.equal(batches.length, 1)
    assert.deepEqual(
      batches[0]!.makeEvents().map((e) => e.memberId),
      ['a'],
    )
    assert.deepEqual(batches[0]!.through, cp(5, 1), "the window's end, not the last survivor")
  })

  test('earlier batches keep their own checkpoints when the last one is extended', () => {
    const window = [
      ev(1, 1, 'add', 'a'),
      ev(2, 1, 'remove', 'z'),
      ev(3, 1, 'add', 'x'),
      ev(3, 2, 'add', 'y'),
      ev(4, 1, 'remove', 'x'),
      ev(4, 2, 'remove', 'y'),
    ]
    const batches = toBatches(spansOf(window), 100, true, true)
    assert.deepEqual(
      batches.map((b) => [b.event, b.makeEvents().map((e) => e.memberId), b.through]),
      [
        ['add', ['a'], cp(1, 1)],
        ['remove', ['z'], cp(4, 2)],
      ],
    )
  })

  test('an all-compacted window yields one empty, checkpoint-only batch', () => {
    const window = [ev(7, 1, 'add', 'a'), ev(7, 2, 'add', 'b'), ev(8, 1, 'remove', 'a'), ev(8, 2, 'remove', 'b')]
    const survivors = compact(window)
    assert.deepEqual(survivors, [])
    const batches = toBatches(spansOf(window), 10, true, true)
    assert.equal(batches.length, 1)
    assert.deepEqual(batches[0]!.makeEvents(), [])
    assert.deepEqual(batches[0]!.through, cp(8, 2))
  })

  test('an empty window yields no batch', () => {
    assert.deepEqual(toBatches([], 10, true, true), [])
  })
})
