// The SQL API's TypeScript twin: each function calls the SQL function of the same meaning with
// named arguments and casts, so both sides are one API (README, "SQL API"). Errors raised in SQL
// (SG0xx) come back as SegmenterError with the SQLSTATE kept.
import type pg from 'pg'
import { fromPgError } from './errors.js'

type Db = Pick<pg.Pool, 'query'> | Pick<pg.ClientBase, 'query'>

async function call<T>(db: Db, sql: string, params: unknown[]): Promise<T> {
  try {
    return (await db.query(sql, params)).rows[0]?.result as T
  } catch (err) {
    throw fromPgError(err)
  }
}

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
  call<string>(
    db,
    `select segmenter.create_segment(name => $1::text, table_name => $2::regclass, kind => $3::text, refresh_sql => $4::text,
     refresh_cron => $5::text, sources => $6::regclass[], ready_sql => $7::text) as result`,
    [s.name, s.tableName, s.kind ?? 'manual', s.refreshSql ?? null, s.refreshCron ?? null, s.sources ?? null, s.readySql ?? null],
  )

export const retireSegment = (db: Db, name: string) => call<void>(db, 'select segmenter.retire_segment(name => $1::text) as result', [name])
export const addMembers = async (db: Db, segment: string, ids: string[]) =>
  Number(await call<string>(db, 'select segmenter.add_members(segment => $1::text, ids => $2::text[]) as result', [segment, ids]))
export const removeMembers = async (db: Db, segment: string, ids: string[]) =>
  Number(await call<string>(db, 'select segmenter.remove_members(segment => $1::text, ids => $2::text[]) as result', [segment, ids]))
export const clearSegment = async (db: Db, segment: string) =>
  Number(await call<string>(db, 'select segmenter.clear_segment(segment => $1::text) as result', [segment]))
export const refreshSegment = (db: Db, segment: string) =>
  call<{
    ok: boolean
    added: number
    removed: number
    reentered: number
    updated: number
    unchanged: number
    duration_ms: number
    error?: string
  }>(db, 'select segmenter.refresh(segment => $1::text) as result', [segment])
export const markLoaded = (db: Db, source: string) =>
  call<void>(db, 'select segmenter.mark_loaded(source => $1::regclass) as result', [source])

export interface ConsumerDefinition {
  name: string
  kind: 'mysql' | 'postgres'
  dialect: string
  dsnEnv: string
  options?: Record<string, unknown>
}
export const createConsumer = async (db: Db, c: ConsumerDefinition) =>
  String(
    await call<string>(
      db,
      `select segmenter.create_consumer(name => $1::text, kind => $2::text, dialect => $3::text, dsn_env => $4::text, options => $5::jsonb) as result`,
      [c.name, c.kind, c.dialect, c.dsnEnv, JSON.stringify(c.options ?? {})],
    ),
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
    await call<string>(
      db,
      `select segmenter.create_subscription(name => $1::text, consumer => $2::text, segments => $3::text[], add_sql => $4::text,
     remove_sql => $5::text, clear_sql => $6::text, segment_upsert_sql => $7::text, segment_delete_sql => $8::text,
     batch_size => $9::int, batch_timeout => $10::interval, syntax => $11::text, update_sql => $12::text,
     audience => $13::text, description => $14::text) as result`,
      [
        s.name,
        s.consumer,
        s.segments,
        s.addSql,
        s.removeSql,
        s.clearSql ?? null,
        s.segmentUpsertSql ?? null,
        s.segmentDeleteSql ?? null,
        s.batchSize ?? 1,
        s.batchTimeout ?? '0 s',
        s.syntax ?? 'squirrelly',
        s.updateSql ?? null,
        s.audience ?? null,
        s.description ?? null,
      ],
    ),
  )

export const pause = (db: Db, subscription: string) =>
  call<void>(db, 'select segmenter.pause(subscription => $1::text) as result', [subscription])
export const resume = (db: Db, subscription: string) =>
  call<void>(db, 'select segmenter.resume(subscription => $1::text) as result', [subscription])
export const resync = (db: Db, subscription: string) =>
  call<string>(db, 'select segmenter.resync(subscription => $1::text) as result', [subscription])
export const replayDeadLetters = async (db: Db, subscription: string) =>
  Number(await call<string>(db, 'select segmenter.replay_dead_letters(subscription => $1::text) as result', [subscription]))

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
const ALTER_ARGS: Record<keyof SubscriptionChanges, [string, string]> = {
  addSql: ['add_sql', 'text'],
  removeSql: ['remove_sql', 'text'],
  clearSql: ['clear_sql', 'text'],
  updateSql: ['update_sql', 'text'],
  segmentUpsertSql: ['segment_upsert_sql', 'text'],
  segmentDeleteSql: ['segment_delete_sql', 'text'],
  batchSize: ['batch_size', 'int'],
  batchTimeout: ['batch_timeout', 'interval'],
  description: ['description', 'text'],
  audience: ['audience', 'text'],
}

/** Change a subscription in place (alter_subscription): cursor, sync key and dead letters stay. */
export const alterSubscription = async (db: Db, name: string, changes: SubscriptionChanges = {}) => {
  const args = ['name => $1::text']
  const params: unknown[] = [name]
  for (const [key, [arg, type]] of Object.entries(ALTER_ARGS) as Array<[keyof SubscriptionChanges, [string, string]]>) {
    if (changes[key] === undefined) continue
    params.push(changes[key])
    args.push(`${arg} => $${params.length}::${type}`)
  }
  return String(await call<string>(db, `select segmenter.alter_subscription(${args.join(', ')}) as result`, params))
}
