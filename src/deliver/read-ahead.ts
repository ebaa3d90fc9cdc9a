// Planning a window, and reading the next one ahead while the current one is applied.
import type pg from 'pg'
import { eventCount, planFlush, toBatches, type Batch, type FlushPlan, type Span } from '../batch.js'
import { loadMemberRows, loadSegments, readPending, type MemberRows, type SegmentInfo, type SubscriptionRow } from '../read.js'
import { compactsWindows, type Checkpoint } from '../sinks/index.js'

// A read ahead takes ~100 ms for 10,000 members; one that takes this long is given up on.
const READ_AHEAD_TIMEOUT_MS = 30_000
export const READ_AHEAD_MAX_EVENTS = 20_000

/** A window read ahead: the pending events from `from` and everything needed to render them. */
export interface Window {
  from: Checkpoint
  size: number
  scope: string // what of the subscription it was read and planned for (scopeOf)
  pending: Span[]
  /** How many events `pending` holds. */
  count: number
  /** A full window's batches, cut while the previous window was applied; null for a partial one. */
  planned: ReturnType<typeof planWindow> | null
  segments: Map<string, SegmentInfo>
  members: MemberRows
}

/** What a read-ahead's events, window size and batches depend on besides its start. */
export const scopeOf = (sub: SubscriptionRow) =>
  `${sub.segment_ids.join()}/${sub.batch_size}/${sub.update_sql === null}/${compactsWindows(sub.consumer)}`

/** What of a window goes now, cut into batches. */
export function planWindow(sub: SubscriptionRow, pending: Span[], count: number, window: number): { plan: FlushPlan; batches: Batch[] } {
  const plan = planFlush(pending, sub.batch_size, sub.batch_timeout_ms, count === window)
  return { plan, batches: toBatches(plan.flush, sub.batch_size, sub.update_sql === null, compactsWindows(sub.consumer)) }
}

/**
 * Read a window on its own connection. Never rejects and never hangs for long: a failed or slow
 * read ahead (the home database restarting) is null, and the window is read again in order.
 */
export async function readWindow(
  pool: pg.Pool,
  sub: SubscriptionRow,
  from: Checkpoint,
  size: number,
  columnsOf: (segment: SegmentInfo) => string[] | null,
): Promise<Window | null> {
  const read = async (): Promise<Window> => {
    const client = await pool.connect()
    let pending: Span[]
    try {
      pending = await readPending(client, sub, from, size)
      client.release()
    } catch (error) {
      client.release(error as Error)
      throw error
    }
    const segments = await loadSegments(pool, [...new Set(pending.map((s) => s.change.segmentId))])
    const count = eventCount(pending)
    // A partial window's plan depends on its events' age when it is used; a full one's does not.
    const planned = count === size ? planWindow(sub, pending, count, size) : null
    // The member rows of what a full window sends (its batches); of all a partial one holds, as
    // what of it goes, and so what compaction leaves, is known only when it is used.
    const batches = planned?.batches ?? toBatches(pending, sub.batch_size, sub.update_sql === null, false)
    const members = await loadMemberRows(pool, segments, batches, columnsOf)
    return { from, size, scope: scopeOf(sub), pending, count, planned, segments, members }
  }
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), READ_AHEAD_TIMEOUT_MS)))
  try {
    return await Promise.race([read().catch(() => null), timeout])
  } finally {
    clearTimeout(timer)
  }
}
