// Reading from the home database: pending events of one subscription in position order (streamed
// through pg-cursor), and the member rows a batch renders.
import type pg from 'pg'
import Cursor from 'pg-cursor'
import { MEMBER_EVENTS, type Batch, type Change, type EventType, type PendingEvent, type Span } from './batch.js'
import { typeParser } from './db.js'
import type { Checkpoint, ConsumerRow } from './sinks/index.js'

export interface SubscriptionRow {
  subscription_id: string
  name: string
  state: 'active' | 'paused'
  segment_ids: string[]
  add_sql: string
  remove_sql: string
  clear_sql: string | null
  update_sql: string | null
  segment_upsert_sql: string | null
  segment_delete_sql: string | null
  syntax: 'squirrelly' | 'altcraft'
  batch_size: number
  batch_timeout_ms: number
  audience: string | null
  cursor_pos: string
  cursor_ord: number
  resync_pos: string | null
  sync_key: string
  consumer_id: string
  /** Why the sidecar holds it (see segmenter.hold_subscription); null while it delivers. */
  error: string | null
  /** The consumer row, read with the subscription: a repointed consumer reaches the next round. */
  consumer: ConsumerRow
  /** Whether segmenter.in_flight holds unconfirmed sends of it (journal.ts): when not, no replay read. */
  has_in_flight?: boolean
  /** How long the consumer's receiver still asks to be left alone (its Retry-After, segmenter.retry_after); null if not. */
  retry_after_ms?: number | null
}

/** The subscription row with its consumer; `$1` is the subscription id. */
export const SUBSCRIPTION_SQL = `select s.*, (extract(epoch from s.batch_timeout) * 1000)::float8 as batch_timeout_ms, to_jsonb(c) as consumer,
         exists (select 1 from segmenter.in_flight f where f.subscription_id = s.subscription_id) as has_in_flight,
         (select extract(epoch from r.not_before - clock_timestamp()) * 1000 from segmenter.retry_after r
          where r.consumer_id = s.consumer_id and r.not_before > clock_timestamp())::float8 as retry_after_ms
  from segmenter.subscriptions s join segmenter.consumers c using (consumer_id) where s.subscription_id = $1`

export async function loadSubscription(db: pg.ClientBase | pg.Pool, subscriptionId: string): Promise<SubscriptionRow | null> {
  // Not a prepared statement: `s.*` would make one fail ("cached plan must not change result
  // type") on its connection for good once a migration adds a column to subscriptions.
  const { rows } = await db.query<SubscriptionRow>(SUBSCRIPTION_SQL, [subscriptionId])
  return rows[0] ?? null
}

// Change rows, not members: the read stops at `limit` members, so a window costs what it returns,
// not the whole backlog (unnesting every pending member in SQL to return 10,000 of them took 790
// ms with 1M pending). The ids come as JSON text, kept as it is until a batch of them is rendered
// (Change in batch.ts); V8's JSON.parse reads a 10,000-id array in 3 ms, the text[] parser took 25.
// The JSON is made outside the sorted subquery (OFFSET 0 keeps it apart): only for the rows read.
// Made inside, a sort computed it for every pending change on every read.
// The first change is read alone, with whether another follows it (lead() over the subquery's
// order, which looks at the next row without making its JSON): a round with one change to send,
// the latency case, reads it in one round trip; a cursor would take a second to learn that
// nothing follows, or to close.
const changesSql = (first: boolean) => `
  select c.pos, floor(extract(epoch from clock_timestamp() - c.at) * 1000)::float8 as age_ms,
         c.segment_id, c.event, to_json(c.ids)::text as ids, coalesce(cardinality(c.ids), 0) as members, c.rows${first ? ', c.more' : ''}
  from (select *${first ? ', lead(o.pos) over () is not null as more' : ''}
        from (select * from segmenter.changes c
              where c.pos >= $3 and c.segment_id = any($1::uuid[])
                and (c.subscription_id is null or c.subscription_id = $2)
              order by c.pos offset 0) o${first ? ' limit 1' : ''}) c`
const FIRST_CHANGE_SQL = changesSql(true)
const CHANGES_SQL = changesSql(false)

interface ChangeRow {
  pos: string
  age_ms: number
  segment_id: string
  event: EventType
  ids: string | null
  members: number // how many ids
  rows: Array<Record<string, unknown> | null> | null
}

/**
 * The span of one change after `from`, appended to `spans` while they hold fewer than `limit`
 * events; returns how many events it added. The age is whole milliseconds (floor() above): a small
 * integer, where a fraction would take a heap number of its own.
 */
function addChange(c: ChangeRow, sub: SubscriptionRow, from: Checkpoint, spans: Span[], room: number): number {
  const pos = BigInt(c.pos)
  const skip = pos === from.pos ? from.ord : 0
  const change = (event: EventType, ids: string | null): Change => ({
    pos,
    ageMs: c.age_ms,
    segmentId: c.segment_id,
    event,
    ids,
    rows: ids === null ? null : c.rows,
  })
  // A change that names no member, or a clear the clear template sends whole: one event, at the
  // ord of its last member (so a checkpoint inside it passes it).
  const whole = c.ids === null || (c.event === 'clear' && sub.clear_sql !== null)
  const last = c.ids === null ? 1 : c.members
  if (whole) {
    if (skip >= last || room < 1) return 0
    spans.push({ change: change(c.event, null), from: last - 1, to: last })
    return 1
  }
  // Without a clear template, the clear is delivered as removes of the members it cleared.
  const to = Math.min(c.members, skip + room)
  if (to <= skip) return 0
  spans.push({ change: change(c.event === 'clear' ? 'remove' : c.event, c.ids), from: skip, to })
  return to - skip
}

/** Up to `limit` events after `from`, in position order, as spans of changes: the first change, then a cursor a few changes at a time. */
export async function readPending(client: pg.ClientBase, sub: SubscriptionRow, from: Checkpoint, limit: number): Promise<Span[]> {
  const spans: Span[] = []
  const first = (
    await client.query<ChangeRow & { more: boolean }>(FIRST_CHANGE_SQL, [sub.segment_ids, sub.subscription_id, from.pos.toString()])
  ).rows[0]
  if (!first) return spans
  let count = addChange(first, sub, from, spans, limit)
  if (!first.more || count >= limit) return spans
  // Positions are whole numbers: the rest starts after the first change's.
  const rest = (BigInt(first.pos) + 1n).toString()
  const cursor = client.query(new Cursor<ChangeRow>(CHANGES_SQL, [sub.segment_ids, sub.subscription_id, rest]))
  let failed = false
  try {
    // One change can hold 10,000 members: fetching more than needed reads ids only to drop
    // them. Fetch about as many changes as the window still needs, judged by the page just read,
    // but at most twice as many as that page: a page of one small change (a resync's
    // segment_upsert) said "1 member per change" and the next page of 1,000 changes of 10,000
    // members read the whole backlog at once (3M ids, 130 MB of heap, in a 3M-member resync).
    let last: ChangeRow[] = [first]
    for (let pageSize = 1; ;) {
      const perChange = Math.max(1, ...last.map((c) => c.members))
      pageSize = Math.min(1000, 2 * pageSize, Math.max(1, Math.ceil((limit - count) / perChange)))
      const page = await cursor.read(pageSize)
      for (const c of page) {
        count += addChange(c, sub, from, spans, limit - count)
        if (count >= limit) return spans
      }
      if (page.length < pageSize) return spans
      last = page
    }
  } catch (error) {
    failed = true
    throw error
  } finally {
    await closeCursor(cursor, failed)
  }
}

/**
 * pg-cursor's close() waits for the server's ReadyForQuery, which never comes on a connection
 * that died mid-read (a home restart): a round hung there for good. After a failed read the
 * connection is not waited for (its client is released with the error and discarded); otherwise
 * the wait is bounded, and running out of it fails like a lost connection.
 */
async function closeCursor(cursor: Cursor<ChangeRow>, failed: boolean): Promise<void> {
  if (failed) {
    cursor.close().catch(() => {})
    return
  }
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('Connection terminated: closing the change cursor timed out')), CURSOR_CLOSE_TIMEOUT_MS)
  })
  try {
    await Promise.race([cursor.close(), timeout])
  } finally {
    clearTimeout(timer)
  }
}
const CURSOR_CLOSE_TIMEOUT_MS = 10_000

export interface SegmentInfo {
  segment_id: string
  name: string
  table_name: string
  id_type: string
  columns: string[] // of the segment table, in order
  column_types: number[] // their type OIDs, a domain's base type's (as Postgres describes a row's columns)
}

export async function loadSegments(db: pg.Pool, segmentIds: string[]): Promise<Map<string, SegmentInfo>> {
  // The latest definition, current or retired: a retired segment's last events still render.
  const { rows } = await db.query<SegmentInfo>({
    name: 'segmenter:load_segments',
    text: `select distinct on (segment_id) segment_id, name, table_name::text as table_name, segmenter._id_type(table_name) as id_type,
            c.columns, c.column_types
     from segmenter.segments
     cross join lateral (
       select array_agg(a.attname::text order by a.attnum) as columns,
              array_agg((with recursive d (t, base) as (
                           select a.atttypid, y.typbasetype from pg_type y where y.oid = a.atttypid
                           union all select d.base, y.typbasetype from d join pg_type y on y.oid = d.base where d.base <> 0)
                         select t::int from d where base = 0) order by a.attnum) as column_types
       from pg_attribute a where a.attrelid = table_name and a.attnum > 0 and not a.attisdropped) c
     where segment_id = any($1::uuid[]) order by segment_id, actual_end desc`,
    values: [segmentIds],
  })
  return new Map(rows.map((r) => [r.segment_id, r]))
}

/** Member rows by segment id, then member id. */
export type MemberRows = Map<string, Map<string, Record<string, unknown>>>

/**
 * The latest row of every member the batches name, one query per segment for a whole window
 * (a query per batch was a third of delivery time), keyed by segment id, then member id.
 * Members removed by DELETE carry their row in the event and are not looked up.
 */
export async function loadMemberRows(
  db: pg.Pool,
  segments: Map<string, SegmentInfo>,
  batches: Batch[],
  columnsOf: (segment: SegmentInfo) => string[] | null = () => null,
): Promise<MemberRows> {
  // Ids as they come, repeats included (Postgres returns a repeated id's row twice and the Map
  // keeps one): a Set per member cost more than the rare repeat.
  // A segment whose templates print only the id, captured as it is stored, needs no read at all
  // (the events name the members): its batches' events are not even made.
  const needsRead = new Map<string, boolean>()
  const result = new Map<string, Map<string, Record<string, unknown>>>()
  const wanted = new Map<string, string[]>()
  for (const batch of batches) {
    let read = needsRead.get(batch.segmentId)
    if (read === undefined) {
      const segment = segments.get(batch.segmentId)
      read = segment !== undefined && !(idOnly(columnsOf(segment)) && ID_AS_CAPTURED.test(segment.id_type))
      needsRead.set(batch.segmentId, read)
      result.set(batch.segmentId, new Map())
    }
    if (!read || !MEMBER_EVENTS.has(batch.event)) continue
    let ids = wanted.get(batch.segmentId)
    if (!ids) wanted.set(batch.segmentId, (ids = []))
    for (const e of batch.makeEvents()) if (e.memberId !== null && e.row === null) ids.push(e.memberId)
  }
  if (wanted.size === 0) return result
  const client = await db.connect()
  try {
    // Right after a bulk load the table has no statistics, and the probes below were planned as a
    // scan of every member of the segment (200-500 ms a window at 1M members instead of 50) or as
    // bitmap scans, which build a bitmap for the few rows they find. Off, the planner takes the
    // (segment_id, id) index. Transaction-local, so the pooled connection keeps its settings.
    // Nested loops off too: the range read below joins its rows to the ids by hash (a nested loop
    // would probe the index per id again); the probe of closed rows is a lateral join and stays one.
    await client.query('begin; set local enable_seqscan = off; set local enable_bitmapscan = off; set local enable_nestloop = off')
    for (const [segmentId, ids] of wanted) {
      const segment = segments.get(segmentId)!
      const byId = result.get(segmentId)!
      const columns = columnsOf(segment) ?? segment.columns
      const list = columns.map((c) => 't.' + quoteIdent(c)).join(', ')
      // The ids go as one JSON text: pg would escape each into an array literal, a tenth of the
      // sidecar's CPU per member.
      const wantedIds = `select value::${segment.id_type} as id from json_array_elements_text($2::json)`
      // The current rows of the whole window in one index scan: a quarter less Postgres CPU per
      // member than a probe per member, whose nested loop restarts two plans each (one-off
      // measurement, 1M members in windows of 10,000: 2.4 s of Postgres CPU instead of 3.2 s).
      // They come as one row of a JSON array per column (columnar): pg's parsing of one protocol
      // message and one object per row was a third of what the sidecar allocated per member.
      // Keyed by id::text, as capture names members: the value pg parses is not always that text
      // (char(n) keeps its padding, numeric its scale in neither, an integer is a number).
      // `= any(array)` descends the index once per id (PostgreSQL 15), and a descent costs one
      // buffer more per level of the index: 30,144 buffers for 10,000 members at 1M, 39,880 at
      // 5M. When a window's ids lie close together in the index (a bulk INSERT of ids in index
      // order: capture keeps a statement's order), one range scan from the smallest to the
      // largest, joined to the ids, reads the same rows in about 2,300 buffers at any N. Whether
      // they do is checked with index-only scans bounded by LIMIT: the range of the window's first
      // 100 ids (dense(), below), then in the same statement the whole range, must each hold fewer
      // than twice as many index entries as ids; otherwise (ids spread over the index, e.g. a
      // refresh's) the descents as before. Ids the range misses are read by the probe below.
      const aggs = `${columns.map((c, i) => `${columnAgg(segment, c)} as c${i}`).join(', ')}, json_agg(t.id::text) as keys`
      const current = await client.query(
        (await dense(client, segment, ids))
          ? `with w as materialized (${wantedIds}),
               b as materialized (select (select id from w order by id limit 1) as lo, (select id from w order by id desc limit 1) as hi,
                                         (select count(*) from w) as n),
               d as materialized (
                 select (select count(*) from (select from ${segment.table_name} t where t.segment_id = $1
                                                 and t.id >= b.lo and t.id <= b.hi limit 2 * b.n) x) < 2 * b.n as dense, b.lo, b.hi
                 from b)
             select ${aggs} from (
               select t.* from ${segment.table_name} t join w on w.id = t.id
               where (select dense from d) and t.segment_id = $1 and t.actual_end = 'infinity'
                 and t.id >= (select lo from d) and t.id <= (select hi from d)
               union all
               select t.* from ${segment.table_name} t
               where not (select dense from d) and t.segment_id = $1 and t.actual_end = 'infinity' and t.id = any(array(select id from w))) t`
          : `select ${aggs} from ${segment.table_name} t
             where t.segment_id = $1 and t.actual_end = 'infinity' and t.id = any(array(${wantedIds}))`,
        [segmentId, JSON.stringify(ids)],
      )
      const keys = (current.rows[0]!.keys ?? []) as string[]
      rowsOf(segment, columns, current.rows[0]!).forEach((r, k) => byId.set(keys[k]!, r))
      // Members without a current row (they left) get their latest closed one: one probe each,
      // sorted by actual_end.
      const left = ids.filter((id) => !byId.has(id))
      if (left.length === 0) continue
      const latest = await client.query(
        `select r.* from (${wantedIds}) as wanted
         cross join lateral (select ${list}, t.id::text as ${MEMBER_KEY} from ${segment.table_name} t
                             where t.segment_id = $1 and t.id = wanted.id order by t.actual_end desc limit 1) r`,
        [segmentId, JSON.stringify(left)],
      )
      for (const r of latest.rows) {
        byId.set(r[MEMBER_KEY], r)
        delete r[MEMBER_KEY]
      }
    }
    await client.query('commit')
    client.release()
  } catch (error) {
    // The connection may be dead or mid-transaction: discarded, not pooled.
    client.release(error as Error)
    throw error
  }
  return result
}

// The range read of a window (above) for windows of at least this many ids (a smaller one costs a
// few buffers either way), and only for id types with the ordering a B-tree range needs.
const RANGE_MIN_IDS = 1000
const RANGE_ID_TYPES = /^(text|uuid|bigint|integer|smallint|numeric|character varying(\(\d+\))?)$/
const RANGE_SAMPLE = 100

/**
 * Whether the window's first ids lie close together in the index: the range from the smallest to
 * the largest of the first 100 holds fewer than 200 entries (an index-only scan of at most 200, a
 * few buffers). A window of ids spread over the index costs this one small query more, no more.
 */
async function dense(client: pg.PoolClient, segment: SegmentInfo, ids: string[]): Promise<boolean> {
  if (ids.length < RANGE_MIN_IDS || !RANGE_ID_TYPES.test(segment.id_type)) return false
  const sample = ids.slice(0, RANGE_SAMPLE)
  const { rows } = await client.query(
    `with w as materialized (select value::${segment.id_type} as id from json_array_elements_text($2::json))
     select count(*) < 2 * $3::int as dense
     from (select from ${segment.table_name} t where t.segment_id = $1
             and t.id >= (select id from w order by id limit 1) and t.id <= (select id from w order by id desc limit 1)
           limit 2 * $3::int) x`,
    [segment.segment_id, JSON.stringify(sample), sample.length],
  )
  return rows[0]!.dense === true
}

// The member's id as capture wrote it, read along with a closed row (and dropped from it).
const MEMBER_KEY = '__segmenter_member_key'

/**
 * One column of the current rows as a JSON array, every value exactly as Postgres would send it in
 * a row: strings as they are; anything else as its output function writes it (format's %s, which,
 * unlike a cast to text, keeps a bool 't' and an inet without its /32), parsed in rowsOf by the
 * parser pg would have used.
 */
function columnAgg(segment: SegmentInfo, column: string): string {
  const c = 't.' + quoteIdent(column)
  return AS_JSON_STRING.has(columnType(segment, column))
    ? `json_agg(${c})`
    : `json_agg(case when ${c} is null then null else format('%s', ${c}) end)`
}
// text, varchar, bpchar (padded, as sent), name, uuid: JSON strings equal to their output.
const AS_JSON_STRING: ReadonlySet<number> = new Set([25, 1043, 1042, 19, 2950])
const columnType = (segment: SegmentInfo, column: string) => segment.column_types[segment.columns.indexOf(column)]!

/** The member rows of one columnar result row (null arrays when no member matched). */
function rowsOf(segment: SegmentInfo, columns: string[], result: Record<string, unknown[] | null>): Array<Record<string, unknown>> {
  const values = columns.map((_, i) => result[`c${i}`] ?? [])
  const parsers = columns.map((c) => {
    const oid = columnType(segment, c)
    return AS_JSON_STRING.has(oid) ? null : typeParser(oid)
  })
  const rows: Array<Record<string, unknown>> = []
  for (let k = 0; k < values[0]!.length; k++) {
    const row: Record<string, unknown> = {}
    for (let i = 0; i < columns.length; i++) {
      const v = values[i]![k]
      const parse = parsers[i]
      row[columns[i]!] = v === null || !parse ? v : parse(v as string)
    }
    rows.push(row)
  }
  return rows
}

/**
 * Templates that print nothing of a member but its id (and the segment's) need no row: the change
 * log has the id, as `id::text`, which is also how pg returns these types (not an integer, which
 * pg returns as a number, nor char(n), whose padding the cast drops). membersOf makes the same
 * { segment_id, id } a member without a row gets, and Postgres does no probe for it.
 */
const idOnly = (columns: string[] | null) => columns !== null && columns.every((c) => c === 'id' || c === 'segment_id')
const ID_AS_CAPTURED = /^(text|uuid|bigint|character varying(\(\d+\))?)$/

const quoteIdent = (name: string) => '"' + name.replaceAll('"', '""') + '"'

/**
 * The columns of `segment` that templates naming `fields` read (matched like fieldValue: exact,
 * else the one case-insensitive match), with id; null if one is not there, so
 * that rendering reports it as before. Fetching only these skips, for instance, formatting and
 * parsing three timestamps per member that no template prints.
 */
export function columnsFor(segment: SegmentInfo, fields: Iterable<string>): string[] | null {
  const chosen = new Set(['id']) // the key; segment_id only if a template names it ({segment_id} is the batch's)
  for (const field of fields) {
    if (segment.columns.includes(field)) {
      chosen.add(field)
      continue
    }
    const matches = segment.columns.filter((c) => c.toLowerCase() === field.toLowerCase())
    if (matches.length !== 1) return null
    chosen.add(matches[0]!)
  }
  return [...chosen]
}

/**
 * A batch's members in batch order: the looked-up row, the row captured at DELETE, or just the
 * keys. Made from the batch's ids as read, without an event object per member (a fifth of what
 * the sidecar allocated per member of bench/http).
 */
export function membersOf(segment: SegmentInfo, batch: Batch, rows: MemberRows): Array<Record<string, unknown>> {
  const byId = rows.get(segment.segment_id)
  const segmentId = segment.segment_id
  const members: Array<Record<string, unknown>> = new Array(batch.size)
  // No rows read (templates that print only ids): no lookup per member, whose hashing of each id
  // was most of the time here.
  if (byId === undefined || byId.size === 0) batch.visit((id, row, i) => (members[i] = row ?? { segment_id: segmentId, id }))
  else batch.visit((id, row, i) => (members[i] = row ?? byId.get(id!) ?? { segment_id: segmentId, id }))
  return members
}
