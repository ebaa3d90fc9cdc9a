// The refresh scheduler: which auto segments are due (cron math, here), whether they are ready and
// the refresh itself (in SQL: segmenter.refresh_schedule, claim_refresh, refresh; db/0003_refresh.sql).
// The sidecar calls runDueRefreshes every ~10 s; several sidecars may call it at once.
import type pg from 'pg'
import { CronExpressionParser } from 'cron-parser'

export interface RefreshResult {
  segment: string
  outcome: 'refreshed' | 'waiting' | 'failed' | 'not_due'
  counts?: object
  reason?: string
}

export interface RunOptions {
  now?: Date
  log?: (msg: string, data?: object) => void
  /** Time zone the cron expressions are read in (default: the process's, i.e. TZ). */
  tz?: string
}

/** The most recent tick of `cron` at or before `now` (cron-parser's prev() is strictly before). */
export function lastTick(cron: string, now: Date, tz?: string): Date {
  return CronExpressionParser.parse(cron, { currentDate: new Date(now.getTime() + 1), tz })
    .prev()
    .toDate()
}

/** The first tick of `cron` strictly after `after`. */
export function nextRun(cron: string, after: Date, tz?: string): Date {
  return CronExpressionParser.parse(cron, { currentDate: after, tz }).next().toDate()
}

/**
 * Due when the latest tick at or before `now` came after the last refresh start. Only the latest
 * tick counts, so after downtime a missed schedule runs once, not once per missed tick. A segment
 * never refreshed is due at once.
 */
export function isDue(cron: string, lastStartedAt: Date | null, now: Date, tz?: string): boolean {
  return lastStartedAt === null || lastTick(cron, now, tz) > lastStartedAt
}

interface ScheduleRow {
  segment: string
  refresh_cron: string | null
  last_started_at: Date | null
  ready: boolean
  reason: string | null
}

/**
 * Refresh every due and ready auto segment, one at a time. Due but not ready: outcome 'waiting'
 * (logged once per tick as kind 'refresh_wait'), retried on the next call. The claim
 * (segmenter.claim_refresh: a non-blocking advisory lock plus a re-check of the last start) and the
 * refresh share one transaction, so two sidecars never refresh a segment twice for one tick, and a
 * sidecar that dies mid-refresh leaves the tick unclaimed.
 */
export async function runDueRefreshes(pool: pg.Pool, opts: RunOptions = {}): Promise<RefreshResult[]> {
  const now = opts.now ?? new Date()
  const log = opts.log ?? (() => {})
  const { rows } = await pool.query<ScheduleRow>(
    'select segment, refresh_cron, last_started_at, ready, reason from segmenter.refresh_schedule order by segment',
  )
  const results: RefreshResult[] = []
  for (const row of rows) {
    const result = await refreshIfDue(pool, row, now, opts.tz)
    if (result.outcome !== 'not_due') log(`refresh ${result.outcome}: ${row.segment}`, result)
    results.push(result)
  }
  return results
}

async function refreshIfDue(pool: pg.Pool, row: ScheduleRow, now: Date, tz?: string): Promise<RefreshResult> {
  const segment = row.segment
  if (!row.refresh_cron) return { segment, outcome: 'not_due', reason: 'no refresh_cron: refreshed only by segmenter.refresh()' }
  let tick: Date
  try {
    tick = lastTick(row.refresh_cron, now, tz)
  } catch (e) {
    return { segment, outcome: 'failed', reason: `refresh_cron ${JSON.stringify(row.refresh_cron)}: ${(e as Error).message}` }
  }
  if (row.last_started_at !== null && !(tick > row.last_started_at)) return { segment, outcome: 'not_due' }
  if (!row.ready) {
    await pool.query('select segmenter.record_refresh_wait($1, $2, $3)', [segment, tick, row.reason])
    return { segment, outcome: 'waiting', reason: row.reason ?? 'not ready' }
  }
  const client = await pool.connect()
  let broken: Error | undefined
  try {
    await client.query('begin')
    const claim = await client.query<{ claimed: boolean }>('select segmenter.claim_refresh($1, $2) as claimed', [segment, tick])
    if (!claim.rows[0]?.claimed) {
      await client.query('rollback')
      return { segment, outcome: 'not_due', reason: 'refreshed or being refreshed by another session for this tick' }
    }
    const res = await client.query<{ r: { ok: boolean; error?: string } & object }>('select segmenter.refresh(segment => $1) as r', [
      segment,
    ])
    await client.query('commit')
    const r = res.rows[0]!.r
    return r.ok ? { segment, outcome: 'refreshed', counts: r } : { segment, outcome: 'failed', counts: r, reason: r.error }
  } catch (e) {
    // A connection that cannot even roll back is discarded rather than returned to the pool.
    await client.query('rollback').catch((err: Error) => {
      broken = err
    })
    return { segment, outcome: 'failed', reason: (e as Error).message }
  } finally {
    client.release(broken)
  }
}
