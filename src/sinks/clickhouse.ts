// ClickHouse sink (@clickhouse/client over HTTP). ClickHouse has no multi-statement transactions,
// so this target is effectively once, not exactly once: a batch's statements run in order, one per
// request, and then its checkpoint row is inserted into a ReplacingMergeTree keyed by subscription.
// A sidecar killed in between finds the old checkpoint and runs the batch again, rendered with the
// same `version` (batchVersion): templates that write versioned rows of a ReplacingMergeTree(version)
// table (templates/clickhouse/) converge, however often a batch is replayed.
//
// No fence either: a zombie request of a killed sidecar, or a sidecar that lost its lock and sends
// one more batch, writes rows whose versions are lower than anything delivered after them, and the
// checkpoint read is the highest one written, so neither can move the target back.
//
// One statement per request: ClickHouse 18.16 (Debian 12's) answers 200 to `INSERT … VALUES (…);
// INSERT …` and silently ignores what follows the first statement. A rendered template is split
// where the dialect's lexer sees a `;` in plain SQL (splitStatements), never inside a literal.
import { ClickHouseLogLevel, createClient, type ClickHouseClient, type ClickHouseClientConfigOptions } from '@clickhouse/client'
import { positionVersion } from '../batch.js'
import type { Dialect } from '../render/index.js'
import { literal } from '../render/index.js'
import { splitStatements } from '../render/lexer.js'
import { quoteIdent } from '../render/literals.js'
import { settledWithin } from '../timeout.js'
import { compareCheckpoints, DEFAULT_LANES, type Checkpoint, type OpenTransaction, type Sink, type TargetCheckpoint } from './sink.js'

const CHECKPOINT_TABLE = 'segmenter_checkpoint'
// A statement (an INSERT … SELECT … FINAL of a clear) may take long on a big table; a stopped
// server is noticed from the refused connection long before this.
const REQUEST_TIMEOUT_MS = 120_000

/** An error the ClickHouse server answered with: its numeric code decides retry or rejection (isTransient). */
export class ClickhouseError extends Error {
  constructor(
    message: string,
    readonly clickhouseCode: number,
    cause?: unknown,
  ) {
    super(message, { cause })
    this.name = 'ClickhouseError'
  }
}

/**
 * The server's error with its code. Newer servers' messages are parsed by the client (`code` a
 * numeric string, `type` its name); 18.16 says `Code: 53, e.displayText() = …`, which the client
 * leaves unparsed. The code must not stay in `code`, where isTransient reads SQLSTATEs (53 is
 * TYPE_MISMATCH in ClickHouse, insufficient resources in Postgres).
 */
function serverError(err: unknown): unknown {
  const e = err as { code?: unknown; message?: unknown }
  const message = typeof e?.message === 'string' ? e.message.trim() : ''
  const parsed = typeof e?.code === 'string' && /^\d+$/.test(e.code) ? Number(e.code) : Number(/^Code: (\d+)/.exec(message)?.[1] ?? NaN)
  return Number.isNaN(parsed) ? err : new ClickhouseError(message, parsed, err)
}

/**
 * The client for a consumer URL: `http(s)://user[:password]@host:port/database`, or, for tests and
 * trials, `chdb:/absolute/dir?database=name`, an embedded chDB session in this process (the chdb
 * package, through @clickhouse/client's connection hook; one data directory per process).
 */
async function connect(url: string): Promise<ClickHouseClient> {
  const log = { level: ClickHouseLogLevel.OFF } // errors are the sink's to report, with the batch
  if (!url.startsWith('chdb:')) {
    return createClient({ url, log, request_timeout: REQUEST_TIMEOUT_MS, compression: { request: false, response: false } })
  }
  const u = new URL(url)
  let chdb: typeof import('chdb/connection')
  try {
    chdb = await import('chdb/connection')
  } catch (err) {
    throw new Error(`a chdb: URL needs the chdb package (npm install chdb): ${(err as Error).message}`, { cause: err })
  }
  // chdb types the hook with @clickhouse/client-common's copy of the client's connection types.
  const connection = chdb.createChdbConnection({
    path: decodeURIComponent(u.pathname),
  }) as unknown as ClickHouseClientConfigOptions['connection']
  const client = createClient({ connection, log })
  const database = u.searchParams.get('database')
  // The connection keeps its current database; chDB ignores the client's `database` setting.
  if (database) await client.command({ query: `USE ${quoteIdent(database, '`', 'clickhouse')}` })
  return client
}

/** A rendered template's statements, one per request; most are one statement, without a lexer pass. */
export function statementsOf(sql: string): string[] {
  const s = sql.trim()
  const semi = s.indexOf(';')
  if (semi < 0) return s ? [s] : []
  // The only ";" is the last character: a terminator (inside a literal, a closing quote would follow).
  if (semi === s.length - 1) return [s.slice(0, -1).trimEnd()]
  return splitStatements(s, 'clickhouse')
}

export async function openClickhouseSink(
  url: string,
  dialect: Dialect,
  home: string,
  options: { checkpointTable?: string; lanes?: number } = {},
): Promise<Sink> {
  const client = await connect(url)
  const run = async (query: string) => {
    try {
      await client.command({ query })
    } catch (err) {
      throw serverError(err)
    }
  }
  const select = async <T>(query: string): Promise<T[]> => {
    try {
      return await (await client.query({ query, format: 'JSONEachRow' })).json<T>()
    } catch (err) {
      throw serverError(err)
    }
  }
  const table = (options.checkpointTable ?? CHECKPOINT_TABLE)
    .split('.')
    .map((p) => quoteIdent(p, '`', 'clickhouse'))
    .join('.')
  let maxQuerySize: number
  try {
    // Everything but an INSERT's VALUES must fit in max_query_size (Syntax error … Max query size
    // exceeded): batches are sized from the server's setting for this user.
    const [row] = await select<{ value: string }>(`SELECT value FROM system.settings WHERE name = 'max_query_size'`)
    maxQuerySize = Number(row?.value ?? 262_144)
    // 18.16 has no DateTime64 and no lightweight DELETE: the table uses what both it and current
    // servers have. One row per checkpoint written; the highest version is the checkpoint.
    await run(`CREATE TABLE IF NOT EXISTS ${table} (
      sync_key String, pos UInt64, ord UInt32, home String, version UInt64, updated_at DateTime DEFAULT now()
    ) ENGINE = ReplacingMergeTree(version) ORDER BY sync_key`)
  } catch (err) {
    await settledWithin(client.close(), 1000).catch(() => {})
    throw err
  }
  const at = new Map<string, Checkpoint>()
  const key = (syncKey: string) => literal(syncKey, 'clickhouse')
  const write = (syncKey: string, to: Checkpoint) =>
    run(
      `INSERT INTO ${table} (sync_key, pos, ord, home, version) VALUES (${key(syncKey)}, ${to.pos}, ${to.ord}, ${literal(home, 'clickhouse')}, ${positionVersion(to.pos, to.ord)})`,
    )
  const readCheckpoint = async (syncKey: string): Promise<TargetCheckpoint> => {
    const rows = await select<{ pos: string | number; ord: number; home: string }>(
      `SELECT pos, ord, home FROM ${table} WHERE sync_key = ${key(syncKey)} ORDER BY version DESC LIMIT 1`,
    )
    let cp: TargetCheckpoint
    if (rows[0]) cp = { pos: BigInt(rows[0].pos), ord: Number(rows[0].ord), home: rows[0].home }
    else {
      cp = { pos: 0n, ord: 0, home }
      await write(syncKey, cp)
    }
    at.set(syncKey, { pos: cp.pos, ord: cp.ord })
    return cp
  }
  /** The statements, in order, one request each. Whatever ran stays: a replay must converge. */
  const execute = async (statements: string[]) => {
    for (const sql of statements) for (const statement of statementsOf(sql)) await run(statement)
  }
  /** After the statements: the checkpoint. An unknown outcome is read again next time. */
  const commit = async (syncKey: string, to: Checkpoint) => {
    const from = at.get(syncKey)
    if (from && compareCheckpoints(to, from) <= 0)
      throw new Error(`sink: checkpoint ${syncKey} would not move forward (a bug in the caller)`)
    at.delete(syncKey)
    await write(syncKey, to)
    at.set(syncKey, to)
  }
  const forgetOnError = async <T>(syncKey: string | null, p: Promise<T>): Promise<T> => {
    try {
      return await p
    } catch (err) {
      if (syncKey !== null) at.delete(syncKey)
      throw err
    }
  }

  return {
    dialect,
    maxStatementBytes: maxQuerySize - 1024,
    // One request per statement: a group of batches is not one query. Each INSERT makes a part (a
    // 1-row INSERT took 16 ms on 18.16, as long as one of 1,000 rows): fewer checkpoint rows pay.
    maxApplyBytes: Number.POSITIVE_INFINITY,
    groupsBatches: true,
    lanes: options.lanes ?? DEFAULT_LANES,
    checkpoint: readCheckpoint,
    lastCommitted: (syncKey) => at.get(syncKey) ?? null,
    async apply(statements, syncKey, to) {
      if (!at.has(syncKey)) await readCheckpoint(syncKey)
      await forgetOnError(syncKey, execute(statements))
      await forgetOnError(syncKey, commit(syncKey, to))
    },
    // No transaction to hold open: the statements run now, the checkpoint follows on commit (the
    // caller commits in batch order), and a rollback leaves what ran, which a replay rewrites.
    begin(statements): OpenTransaction {
      const executed = execute(statements)
      executed.catch(() => {})
      return {
        executed,
        async commit(syncKey, to) {
          await executed
          await forgetOnError(syncKey, commit(syncKey, to))
        },
        rollback: () =>
          executed.then(
            () => {},
            () => {},
          ),
      }
    },
    async close() {
      await settledWithin(client.close(), 2000).catch(() => {})
    },
  }
}
