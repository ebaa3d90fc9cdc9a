// A sink executes rendered statements in an external SQL store, exactly once: the statements and
// the subscription's checkpoint row commit in one target transaction, and every round starts from
// the checkpoint the target holds, so a sidecar killed at any point resumes where the target is.
//
// Fencing: every target transaction first moves the checkpoint row from exactly the position this
// sink started from (or last committed) to the batch's, in the same transaction, and aborts if the
// row says anything else. A zombie transaction of a killed sidecar (its script still waiting on a
// row lock in the target after the client is gone), or a sidecar that lost its advisory lock and
// delivers from what it read before, finds the row moved by whoever took over and commits nothing.
// The row also names the home it was written from: a checkpoint of another home (or one ahead of
// what this home has assigned: a home restored from a backup) is the caller's to refuse.
//
// Lanes: a sink may hold several connections and keep a transaction open on each, so that the
// target executes consecutive batches in parallel, where it has the cores for them. The caller
// commits them strictly in batch order, each with its checkpoint, so what the target shows, and
// where a restart resumes, is always a prefix of the batches.
import type { Dialect } from '../render/index.js'
export interface Checkpoint {
  pos: bigint
  ord: number
}

/**
 * Transactions open at once per subscription unless the consumer's options say otherwise. One:
 * each batch's statements run only after the previous batch committed, whatever they read.
 */
export const DEFAULT_LANES = 1

/** The target's checkpoint row: where the subscription stands, and which home wrote it. */
export interface TargetCheckpoint extends Checkpoint {
  home: string
}

/** The target's checkpoint was not the one this sink started from: another sidecar moved it. */
export class FencedError extends Error {
  readonly code = 'FENCED'
  constructor(syncKey: string, expected: Checkpoint, cause?: unknown) {
    super(
      `checkpoint ${syncKey} in the target is no longer at (${expected.pos}, ${expected.ord}): another sidecar delivered meanwhile; this transaction was rolled back`,
      { cause },
    )
    this.name = 'FencedError'
  }
}
export const isFenced = (err: unknown): err is FencedError => err instanceof FencedError

/**
 * A target's answer that no retry can change, only someone acting on it (an HTTP receiver's 410
 * Gone): the subscription is held with the error and this hint until it is resumed. Nothing is
 * skipped; delivery resumes where it stopped.
 */
export interface HoldsSubscription {
  holdHint(subscription: string): string
}
export const holdsSubscription = (err: unknown): err is Error & HoldsSubscription =>
  err instanceof Error && typeof (err as Partial<HoldsSubscription>).holdHint === 'function'

export const compareCheckpoints = (a: Checkpoint, b: Checkpoint): number => (a.pos === b.pos ? a.ord - b.ord : a.pos < b.pos ? -1 : 1)

export interface Sink {
  readonly dialect: Dialect
  /** Largest statement text the target accepts (MySQL: its max_allowed_packet, less headroom). */
  readonly maxStatementBytes: number
  /**
   * Largest sum of statements one apply() may take, when it is not maxStatementBytes (the SQL sinks
   * send them as one script; ClickHouse sends one request per statement).
   */
  readonly maxApplyBytes?: number
  /**
   * Whether each apply() costs the target a write of its own besides the statements (ClickHouse:
   * the checkpoint row is an INSERT, a part): the pipeline then sends a run's first batches as one
   * group rather than its first batch at once.
   */
  readonly groupsBatches?: boolean
  /**
   * Whether each statement starts with its batch's request id on a line of its own (journal.ts
   * withRequestId): an HTTP receiver gets it as webhook-id and Idempotency-Key.
   */
  readonly identifiesRequests?: boolean
  /**
   * What the target answered to a statement it accepted, for the batch's log row (HTTP: the
   * status and the attempts it took); read once, then forgotten.
   */
  answerTo?(statement: string): Record<string, unknown> | undefined
  /** How many transactions may be open at once (the consumer's `lanes` option). */
  readonly lanes: number
  /**
   * The target's checkpoint for this subscription (created at (0, 0) for this home if it has none
   * yet): the position the next transaction must find, or fail fenced.
   */
  checkpoint(syncKey: string): Promise<TargetCheckpoint>
  /**
   * The checkpoint is the home cursor itself (HTTP: a receiver keeps none): the round takes it
   * from the subscription row it read under its lock, with startFrom() instead of checkpoint(),
   * and skips the divergence check (a cursor cannot be ahead of its own home).
   */
  readonly checkpointAtHome?: boolean
  /** For a sink whose checkpoint is at home: start from this cursor, read by the caller. */
  startFrom?(syncKey: string, cursor: Checkpoint): void
  /**
   * Where the next transaction starts: the checkpoint last read or committed by this sink (null
   * before the first read, and after a fenced or unknown outcome).
   */
  lastCommitted(syncKey: string): Checkpoint | null
  /**
   * Run the statements and move the checkpoint, all in one target transaction, in one round trip,
   * fenced (FencedError when the target's checkpoint is not where this sink left it).
   */
  apply(statements: string[], syncKey: string, to: Checkpoint): Promise<void>
  /** Open a transaction on a free lane and run the statements in it, uncommitted. */
  begin(statements: string[]): OpenTransaction
  close(): Promise<void>
}

export interface OpenTransaction {
  /** Settles when the statements have run; on an error the transaction is already rolled back. */
  readonly executed: Promise<void>
  /** Move the checkpoint and commit. */
  commit(syncKey: string, to: Checkpoint): Promise<void>
  /** Roll back (a no-op once committed or failed); waits for statements still running. */
  rollback(): Promise<void>
}

/** What a target needs to provide; the lanes, scripts and error handling are shared. */
export interface SqlTarget<C> {
  dialect: Dialect
  /** This home's identity, as the checkpoint rows it writes name it. */
  home: string
  maxStatementBytes: number
  lanes: number
  connect(): Promise<C>
  run(conn: C, sql: string): Promise<void>
  /** Read the row, creating it at (0, 0) for this home if it is missing (and adopting a legacy row). */
  readCheckpoint(conn: C, syncKey: string): Promise<TargetCheckpoint>
  /**
   * Statements that move the row from `from` to `to` inside the open transaction, locking it, and
   * fail (isFenceFailure) unless it was at `from` and written by this home.
   */
  checkpointMove(syncKey: string, from: Checkpoint, to: Checkpoint): string
  /** The error the statements of checkpointMove raise when the row was elsewhere. */
  isFenceFailure(err: unknown): boolean
  /** Starts a transaction for apply(): waits for row locks as long as the server's settings say. */
  begin: string
  /**
   * Starts a transaction on a lane while others are open: waits for a row lock only briefly.
   * Two open batches that lock the same rows in the opposite order would otherwise wait for
   * each other unseen by the server (the later one only commits after the earlier one).
   */
  beginShortLockWait: string
  end(conn: C): Promise<void>
}

export function sqlSink<C>(target: SqlTarget<C>, first: C): Sink {
  const free: C[] = [first]
  // Per subscription, where the target's checkpoint stands as far as this sink knows: what the next
  // transaction must find there. Forgotten on a fence or an unknown outcome, so it is read again.
  const at = new Map<string, Checkpoint>()
  let opened = 1
  const all = new Set<C>([first])

  const acquire = async (): Promise<C> => {
    const conn = free.pop()
    if (conn !== undefined) return conn
    if (opened >= target.lanes) throw new Error('sink: more transactions opened than it has lanes (a bug in the caller)')
    opened++
    try {
      const c = await target.connect()
      all.add(c)
      return c
    } catch (err) {
      opened--
      throw err
    }
  }
  // A connection whose transaction may still be open after an error is closed, not reused.
  const release = (conn: C, ok: boolean) => {
    if (ok) free.push(conn)
    else {
      all.delete(conn)
      opened--
      void target.end(conn).catch(() => {})
    }
  }
  const rollbackOn = async (conn: C): Promise<boolean> => {
    try {
      await target.run(conn, 'rollback')
      return true
    } catch {
      return false
    }
  }
  const readCheckpoint = async (syncKey: string): Promise<TargetCheckpoint> => {
    const conn = await acquire()
    let ok = false
    try {
      const row = await target.readCheckpoint(conn, syncKey)
      ok = true
      at.set(syncKey, { pos: row.pos, ord: row.ord })
      return row
    } finally {
      release(conn, ok)
    }
  }
  /** Where the transaction moving `syncKey` must find the checkpoint. */
  const fenceFrom = async (syncKey: string): Promise<Checkpoint> => at.get(syncKey) ?? (await readCheckpoint(syncKey))
  /**
   * After a failed transaction: a fence failure is a FencedError, and what it found is read again.
   * The error a fence raises may also come from a template's own statement (MySQL's 1172 is any
   * SELECT ... INTO of two rows): only a checkpoint that really moved makes it a fence.
   */
  const failed = async (syncKey: string, from: Checkpoint, err: unknown): Promise<unknown> => {
    if (!target.isFenceFailure(err)) {
      // A lost connection may have lost the answer to a COMMIT that happened: read it again.
      if (isTransient(err)) at.delete(syncKey)
      return err
    }
    at.delete(syncKey)
    const now = await readCheckpoint(syncKey).catch(() => null)
    if (now && now.home === target.home && compareCheckpoints(now, from) === 0) return err
    return new FencedError(syncKey, from, err)
  }

  return {
    dialect: target.dialect,
    maxStatementBytes: target.maxStatementBytes,
    lanes: target.lanes,
    checkpoint: readCheckpoint,
    lastCommitted: (syncKey) => at.get(syncKey) ?? null,
    async apply(statements, syncKey, to) {
      const from = await fenceFrom(syncKey)
      if (compareCheckpoints(to, from) <= 0) throw new Error(`sink: checkpoint ${syncKey} would not move forward (a bug in the caller)`)
      const conn = await acquire()
      try {
        await target.run(conn, [target.begin, target.checkpointMove(syncKey, from, to), ...body(statements), 'commit'].join(';\n'))
      } catch (err) {
        release(conn, await rollbackOn(conn))
        throw await failed(syncKey, from, err)
      }
      at.set(syncKey, to)
      release(conn, true)
    },
    begin(statements) {
      let conn: C | undefined
      let state: 'running' | 'open' | 'done' = 'running'
      const executed = (async () => {
        conn = await acquire()
        try {
          await target.run(conn, [target.beginShortLockWait, ...body(statements)].join(';\n'))
          state = 'open'
        } catch (err) {
          state = 'done'
          release(conn, await rollbackOn(conn))
          throw err
        }
      })()
      return {
        executed,
        async commit(syncKey, to) {
          await executed
          if (state !== 'open') throw new Error('sink: commit of a transaction that is not open')
          state = 'done'
          // Open transactions commit in order: this one's checkpoint moves from the previous one's.
          let from: Checkpoint
          try {
            // Read on this lane's own connection if it must be (the others may all be open).
            from = at.get(syncKey) ?? (await target.readCheckpoint(conn!, syncKey))
          } catch (err) {
            release(conn!, await rollbackOn(conn!))
            throw err
          }
          try {
            await target.run(conn!, `${target.checkpointMove(syncKey, from, to)};\ncommit`)
          } catch (err) {
            release(conn!, await rollbackOn(conn!))
            throw await failed(syncKey, from, err)
          }
          at.set(syncKey, to)
          release(conn!, true)
        },
        async rollback() {
          await executed.catch(() => {})
          if (state !== 'open') return
          state = 'done'
          release(conn!, await rollbackOn(conn!))
        },
      }
    },
    async close() {
      await Promise.all([...all].map((c) => target.end(c).catch(() => {})))
      all.clear()
      free.length = 0
    },
  }
}

/** A template's statements without empty ones or a trailing semicolon, ready to join with `;`. */
function body(statements: string[]): string[] {
  const out: string[] = []
  for (let s of statements) {
    s = s.trim()
    if (s.endsWith(';')) s = s.slice(0, -1).trimEnd()
    if (s.length > 0) out.push(s)
  }
  return out
}

/**
 * Errors worth retrying as-is: the connection, the server's availability, lock conflicts.
 * Anything else is the target rejecting the statement: the batch is split to isolate the row.
 */
export function isTransient(err: unknown): boolean {
  const e = err as { code?: string; errno?: number; fatal?: boolean; clickhouseCode?: number; httpTransient?: boolean }
  if (e?.fatal) return true
  // HTTP (http.ts HttpError): no answer, 408, 429, 5xx.
  if (typeof e?.httpTransient === 'boolean') return e.httpTransient
  // ClickHouse (clickhouse.ts ClickhouseError): the server's overload and availability codes.
  if (typeof e?.clickhouseCode === 'number') return CLICKHOUSE_TRANSIENT.has(e.clickhouseCode)
  const code = e?.code ?? ''
  if (/^(ECONN|EPIPE|ETIMEDOUT|EHOSTUNREACH|ENOTFOUND|EAI_AGAIN|PROTOCOL_|ER_CON_COUNT|ER_SERVER_SHUTDOWN)/.test(code)) return true
  // MySQL: lock wait timeout, deadlock, too many connections, server gone / lost; read-only
  // (--read-only, a read-only transaction, FLUSH TABLES WITH READ LOCK): an outage, not a
  // rejection, so it is retried and never dead-lettered.
  if (e?.errno !== undefined && MYSQL_TRANSIENT.has(e.errno)) return true
  // Postgres: connection exceptions, read-only transaction (a standby, default_transaction_read_only),
  // serialization / deadlock, insufficient resources, lock not available, query canceled, admin shutdown.
  if (/^(08|25006|40|53|55P03|57014|57P)/.test(code)) return true
  return /Connection terminated|connection is closed|not queryable|Cannot enqueue|socket hang up|^Timeout error/i.test(
    String((err as Error)?.message),
  )
}

const MYSQL_TRANSIENT: ReadonlySet<number> = new Set([1205, 1213, 1040, 1053, 2002, 2003, 2006, 2013, 1927, 1290, 1792, 1836, 1223])

// TIMEOUT_EXCEEDED, READONLY, QUOTA_EXCEEDED, TOO_MANY_SIMULTANEOUS_QUERIES, NO_FREE_CONNECTION,
// SOCKET_TIMEOUT, NETWORK_ERROR, ABORTED, MEMORY_LIMIT_EXCEEDED, TABLE_IS_READ_ONLY,
// NOT_ENOUGH_SPACE, TOO_MANY_PARTS, TOO_FEW_LIVE_REPLICAS, UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE,
// UNKNOWN_STATUS_OF_INSERT, QUERY_WAS_CANCELLED, SYSTEM_ERROR, CANNOT_SCHEDULE_TASK, KEEPER_EXCEPTION.
const CLICKHOUSE_TRANSIENT: ReadonlySet<number> = new Set([
  159, 164, 201, 202, 203, 209, 210, 236, 241, 242, 243, 252, 285, 286, 319, 394, 425, 439, 999,
])

/** Two open transactions wanted the same rows (lock wait timeout or deadlock, either server). */
export function isLockConflict(err: unknown): boolean {
  const e = err as { code?: string; errno?: number }
  return e?.errno === 1205 || e?.errno === 1213 || e?.code === '55P03' || e?.code === '40P01'
}
