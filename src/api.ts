// The SQL API's TypeScript twin: each function calls the SQL function of the same name (camelCase)
// with named arguments and casts, and each view has a function that reads it, so both sides are
// one API (README, "SQL API"). Only the arguments the caller gives are passed: a default lives in
// the SQL function alone. Errors raised in SQL (SG0xx) come back as SegmenterError with the
// SQLSTATE kept. The functions only the sidecar calls (comments starting "Sidecar:", such as
// record_batch and hold_subscription) have their twins where the sidecar calls them: src/deliver/
// and src/refresh.ts.
import type pg from 'pg'
import { fromPgError } from './errors.js'
import { inSchema, installSchema } from './schema.js'

type Db = Pick<pg.Pool, 'query'> | Pick<pg.ClientBase, 'query'>

/** Named arguments of a SQL function: each SQL name with its value and the cast it gets. */
type Args = Record<string, readonly [value: unknown, type: string]>

/** `name => $n::type` for each argument that was given (not undefined), and their values. */
/** The defined ones of `args` as `name <op> $n::type` terms (`=>`: named arguments; `=`: filters), with their values. */
function bind(args: Args, op: '=>' | '='): { terms: string[]; params: unknown[] } {
  const terms: string[] = []
  const params: unknown[] = []
  for (const [name, [value, type]] of Object.entries(args)) {
    if (value === undefined) continue
    params.push(value)
    terms.push(`${name} ${op} $${params.length}::${type}`)
  }
  return { terms, params }
}

// On the caller's connection, so the install's schema is named here (the home pool would rename it too).
async function query<T>(db: Db, sql: string, params: unknown[]): Promise<T[]> {
  try {
    return (await db.query(inSchema(sql, installSchema()), params)).rows as T[]
  } catch (err) {
    throw fromPgError(err)
  }
}

/** The value a SQL function returns. */
async function scalar<T>(db: Db, fn: string, args: Args): Promise<T> {
  const { terms, params } = bind(args, '=>')
  return (await query<{ result: T }>(db, `select segmenter.${fn}(${terms.join(', ')}) as result`, params))[0]?.result as T
}

/** The rows a set-returning SQL function returns. */
async function rows<T>(db: Db, fn: string, args: Args): Promise<T[]> {
  const { terms, params } = bind(args, '=>')
  return query<T>(db, `select * from segmenter.${fn}(${terms.join(', ')})`, params)
}

/** A view's rows, those whose columns equal the filters given, in `order`. */
async function view<T>(db: Db, name: string, filters: Args, order: string): Promise<T[]> {
  const { terms: where, params } = bind(filters, '=')
  return query<T>(db, `select * from segmenter.${name}${where.length ? ` where ${where.join(' and ')}` : ''} order by ${order}`, params)
}

// ---------------------------------------------------------------------------------------------
// Segments

export interface SegmentDefinition {
  name: string
  tableName: string
  kind?: 'manual' | 'auto'
  refreshSql?: string | null
  refreshCron?: string | null
  sources?: string[] | null
  readySql?: string | null
}

export const createSegment = (db: Db, s: SegmentDefinition) =>
  scalar<string>(db, 'create_segment', {
    name: [s.name, 'text'],
    table_name: [s.tableName, 'regclass'],
    kind: [s.kind, 'text'],
    refresh_sql: [s.refreshSql, 'text'],
    refresh_cron: [s.refreshCron, 'text'],
    sources: [s.sources, 'regclass[]'],
    ready_sql: [s.readySql, 'text'],
  })

export const retireSegment = (db: Db, name: string) => scalar<void>(db, 'retire_segment', { name: [name, 'text'] })
export const addMembers = async (db: Db, segment: string, ids: string[]) =>
  Number(await scalar<string>(db, 'add_members', { segment: [segment, 'text'], ids: [ids, 'text[]'] }))
export const removeMembers = async (db: Db, segment: string, ids: string[]) =>
  Number(await scalar<string>(db, 'remove_members', { segment: [segment, 'text'], ids: [ids, 'text[]'] }))
export const clearSegment = async (db: Db, segment: string) =>
  Number(await scalar<string>(db, 'clear_segment', { segment: [segment, 'text'] }))

/** What segmenter.refresh returns: the merge's counts, or ok false and the error (nothing changed). */
export interface RefreshCounts {
  ok: boolean
  added: number
  removed: number
  reentered: number
  updated: number
  unchanged: number
  duration_ms: number
  error?: string
}
export const refresh = (db: Db, segment: string) => scalar<RefreshCounts>(db, 'refresh', { segment: [segment, 'text'] })

export const markLoaded = (db: Db, source: string) => scalar<void>(db, 'mark_loaded', { source: [source, 'regclass'] })
export const readiness = async (db: Db, segment: string) =>
  (await rows<{ ready: boolean; reason: string | null }>(db, 'readiness', { segment: [segment, 'text'] }))[0]!
export const isReady = (db: Db, segment: string) => scalar<boolean>(db, 'is_ready', { segment: [segment, 'text'] })

// ---------------------------------------------------------------------------------------------
// Consumers and subscriptions

export interface ConsumerDefinition {
  name: string
  kind: 'mysql' | 'postgres'
  dialect: string
  dsnEnv: string
  options?: Record<string, unknown>
}
export const createConsumer = async (db: Db, c: ConsumerDefinition) =>
  String(
    await scalar<string>(db, 'create_consumer', {
      name: [c.name, 'text'],
      kind: [c.kind, 'text'],
      dialect: [c.dialect, 'text'],
      dsn_env: [c.dsnEnv, 'text'],
      options: [c.options === undefined ? undefined : JSON.stringify(c.options), 'jsonb'],
    }),
  )

export interface SubscriptionDefinition {
  name: string
  consumer: string
  segments: string[]
  addSql: string
  removeSql: string
  clearSql?: string | null
  updateSql?: string | null
  segmentUpsertSql?: string | null
  segmentDeleteSql?: string | null
  batchSize?: number
  /** A Postgres interval, e.g. '2 s'. */
  batchTimeout?: string
  syntax?: 'squirrelly' | 'altcraft'
  audience?: string | null
  description?: string | null
}
export const createSubscription = async (db: Db, s: SubscriptionDefinition) =>
  String(
    await scalar<string>(db, 'create_subscription', {
      name: [s.name, 'text'],
      consumer: [s.consumer, 'text'],
      segments: [s.segments, 'text[]'],
      add_sql: [s.addSql, 'text'],
      remove_sql: [s.removeSql, 'text'],
      clear_sql: [s.clearSql, 'text'],
      segment_upsert_sql: [s.segmentUpsertSql, 'text'],
      segment_delete_sql: [s.segmentDeleteSql, 'text'],
      batch_size: [s.batchSize, 'int'],
      batch_timeout: [s.batchTimeout, 'interval'],
      syntax: [s.syntax, 'text'],
      update_sql: [s.updateSql, 'text'],
      audience: [s.audience, 'text'],
      description: [s.description, 'text'],
    }),
  )

/**
 * What alter_subscription changes. A key left out (undefined) is not passed, so the value stays;
 * an empty string removes an optional template, the description or the audience.
 */
export interface SubscriptionChanges {
  addSql?: string
  removeSql?: string
  clearSql?: string
  updateSql?: string
  segmentUpsertSql?: string
  segmentDeleteSql?: string
  batchSize?: number
  /** A Postgres interval, e.g. '2 s'. */
  batchTimeout?: string
  description?: string
  audience?: string
}

/** Change a subscription in place (alter_subscription): cursor, sync key and dead letters stay. */
export const alterSubscription = async (db: Db, name: string, changes: SubscriptionChanges = {}) =>
  String(
    await scalar<string>(db, 'alter_subscription', {
      name: [name, 'text'],
      add_sql: [changes.addSql, 'text'],
      remove_sql: [changes.removeSql, 'text'],
      clear_sql: [changes.clearSql, 'text'],
      update_sql: [changes.updateSql, 'text'],
      segment_upsert_sql: [changes.segmentUpsertSql, 'text'],
      segment_delete_sql: [changes.segmentDeleteSql, 'text'],
      batch_size: [changes.batchSize, 'int'],
      batch_timeout: [changes.batchTimeout, 'interval'],
      description: [changes.description, 'text'],
      audience: [changes.audience, 'text'],
    }),
  )

export const dropSubscription = (db: Db, name: string) => scalar<void>(db, 'drop_subscription', { name: [name, 'text'] })
export const pause = (db: Db, subscription: string) => scalar<void>(db, 'pause', { subscription: [subscription, 'text'] })
export const resume = (db: Db, subscription: string) => scalar<void>(db, 'resume', { subscription: [subscription, 'text'] })
export const resync = (db: Db, subscription: string) => scalar<string>(db, 'resync', { subscription: [subscription, 'text'] })
export const replayDeadLetters = async (db: Db, subscription: string) =>
  Number(await scalar<string>(db, 'replay_dead_letters', { subscription: [subscription, 'text'] }))

// ---------------------------------------------------------------------------------------------
// Operations

/** Give commit-order positions to captured changes; how many. */
export const sequenceChanges = async (db: Db) => Number(await scalar<string>(db, 'sequence_changes', {}))

/** Intervals as Postgres writes them, e.g. '1 day', '12 hours'. */
export interface PruneOptions {
  changesKeep?: string
  logKeep?: string
}
/** Delete what every subscription has delivered and old log rows; how many rows of each went. */
export const prune = async (db: Db, o: PruneOptions = {}) => {
  const [r] = await rows<{ changes: string; log: string; dead_letters: string }>(db, 'prune', {
    changes_keep: [o.changesKeep, 'interval'],
    log_keep: [o.logKeep, 'interval'],
  })
  return { changes: Number(r!.changes), log: Number(r!.log), dead_letters: Number(r!.dead_letters) }
}

// ---------------------------------------------------------------------------------------------
// Views. Rows keep the views' column names; bigints and numerics come as strings, timestamps as
// the pool parses them (createPool keeps Postgres's text, a plain pg pool makes a Date).

type Timestamp = string | Date
/** An interval as pg parses it (postgres-interval): only the units that are not zero. */
type Interval = Partial<Record<'years' | 'months' | 'days' | 'hours' | 'minutes' | 'seconds' | 'milliseconds', number>>

export interface StatusRow {
  subscription: string
  subscription_id: string
  state: 'active' | 'paused' | 'error'
  consumer: string
  pending_changes: string
  oldest_pending_age: Interval | null
  last_success: Timestamp | null
  last_error_at: Timestamp | null
  last_error: string | null
  dead_letters: string
  cursor_pos: string
  cursor_ord: number
  error_kind: 'template' | 'configuration' | 'diverged' | null
  error_hint: string | null
  retired_segments: string[]
  current_segments: number
}
/** segmenter.status: where each subscription (or the one named) stands. */
export const status = (db: Db, subscription?: string) =>
  view<StatusRow>(db, 'status', { subscription: [subscription, 'text'] }, 'subscription')

export interface SyncStatsRow {
  subscription: string
  subscription_id: string
  bucket: Timestamp
  successful_queries: string
  rows: string
  errors: string
  avg_ms: string | null
}
/** segmenter.sync_stats: per subscription (or the one named) and minute, newest first. */
export const syncStats = (db: Db, subscription?: string) =>
  view<SyncStatsRow>(db, 'sync_stats', { subscription: [subscription, 'text'] }, 'bucket desc, subscription')

export interface ShowcaseRow {
  segment_id: string
  segment: string
  kind: 'manual' | 'auto'
  member_id: string
  attributes: Record<string, unknown>
  actual_begin: Timestamp
  processed: Timestamp
}
/** segmenter.showcase: the current members of every current segment (or the one named). */
export const showcase = (db: Db, segment?: string) =>
  view<ShowcaseRow>(db, 'showcase', { segment: [segment, 'text'] }, 'segment, member_id')

export interface EventRow {
  pos: string | null
  ord: number | null
  seq: string
  at: Timestamp
  segment_id: string
  segment: string | null
  event: 'add' | 'remove' | 'update' | 'clear' | 'segment_upsert' | 'segment_delete'
  member_id: string | null
  subscription_id: string | null
}
/** segmenter.events: every captured event of every segment (or the one named), in delivery order. */
export const events = (db: Db, segment?: string) =>
  view<EventRow>(db, 'events', { segment: [segment, 'text'] }, 'pos nulls last, seq, ord nulls first')

export interface RefreshScheduleRow {
  segment: string
  segment_id: string
  version_id: string
  table_name: string
  refresh_cron: string | null
  /** As Postgres writes a regclass[] (pg has no parser for it), e.g. '{public.orders}'. */
  sources: string | null
  ready_sql: string | null
  last_started_at: Timestamp | null
  last_finished_at: Timestamp | null
  last_ok_at: Timestamp | null
  last_error: string | null
  last_counts: Record<string, unknown> | null
  waiting_tick: Timestamp | null
  ready: boolean
  reason: string | null
  running: boolean
}
/** segmenter.refresh_schedule: the current auto segments, their cron, last runs and readiness. */
export const refreshSchedule = (db: Db) => view<RefreshScheduleRow>(db, 'refresh_schedule', {}, 'segment')
