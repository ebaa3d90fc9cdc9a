// A sink executes rendered statements in an external SQL store, exactly once: the statements and
// the subscription's checkpoint row commit in one target transaction, and the checkpoint is read
// back before every delivery round, so a sidecar killed at any point resumes where the target is.
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

export const compareCheckpoints = (a: Checkpoint, b: Checkpoint): number => (a.pos === b.pos ? a.ord - b.ord : a.pos < b.pos ? -1 : 1)

export interface Sink {
  readonly dialect: Dialect
  /** Largest statement text the target accepts (MySQL: its max_allowed_packet, less headroom). */
  readonly maxStatementBytes: number
  /** How many transactions may be open at once (the consumer's `lanes` option). */
  readonly lanes: number
  /** The target's checkpoint for this subscription, or null if it has none yet. */
  checkpoint(syncKey: string): Promise<Checkpoint | null>
  /**
   * The checkpoint this sink last committed for the subscription (null if none): what
   * checkpoint() reads, as long as nothing else writes it.
   */
  lastCommitted(syncKey: string): Checkpoint | null
  /** Run the statements and move the checkpoint, all in one target transaction, in one round trip. */
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
  maxStatementBytes: number
  lanes: number
  connect(): Promise<C>
  run(conn: C, sql: string): Promise<void>
  readCheckpoint(conn: C, syncKey: string): Promise<Checkpoint | null>
  checkpointUpsert(syncKey: string, to: Checkpoint): string
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
  const committed = new Map<string, Checkpoint>()
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

  return {
    dialect: target.dialect,
    maxStatementBytes: target.maxStatementBytes,
    lanes: target.lanes,
    async checkpoint(syncKey) {
      const conn = await acquire()
      let ok = false
      try {
        const at = await target.readCheckpoint(conn, syncKey)
        ok = true
        return at
      } finally {
        release(conn, ok)
      }
    },
    lastCommitted: (syncKey) => committed.get(syncKey) ?? null,
    async apply(statements, syncKey, to) {
      const conn = await acquire()
      try {
        await target.run(conn, transactionScript(target.begin, statements, target.checkpointUpsert(syncKey, to)))
      } catch (err) {
        release(conn, await rollbackOn(conn))
        throw err
      }
      committed.set(syncKey, to)
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
          try {
            await target.run(conn!, `${target.checkpointUpsert(syncKey, to)};\ncommit`)
          } catch (err) {
            release(conn!, await rollbackOn(conn!))
            throw err
          }
          committed.set(syncKey, to)
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
 * One round trip: begin, the batch's statements, the checkpoint upsert, commit. If any statement
 * fails the server runs none after it, and the caller rolls back.
 */
export function transactionScript(begin: string, statements: string[], checkpointUpsert: string): string {
  return [begin, ...body(statements), checkpointUpsert, 'commit'].join(';\n')
}

/**
 * Errors worth retrying as-is: the connection, the server's availability, lock conflicts.
 * Anything else is the target rejecting the statement: the batch is split to isolate the row.
 */
export function isTransient(err: unknown): boolean {
  const e = err as { code?: string; errno?: number; fatal?: boolean }
  if (e?.fatal) return true
  const code = e?.code ?? ''
  if (/^(ECONN|EPIPE|ETIMEDOUT|EHOSTUNREACH|ENOTFOUND|EAI_AGAIN|PROTOCOL_|ER_CON_COUNT|ER_SERVER_SHUTDOWN)/.test(code)) return true
  // MySQL: lock wait timeout, deadlock, too many connections, server gone / lost.
  if (e?.errno !== undefined && [1205, 1213, 1040, 1053, 2002, 2003, 2006, 2013, 1927].includes(e.errno)) return true
  // Postgres: connection exceptions, serialization / deadlock, insufficient resources, admin shutdown.
  if (/^(08|40|53|57P)/.test(code)) return true
  return /Connection terminated|connection is closed|not queryable|Cannot enqueue|socket hang up/i.test(String((err as Error)?.message))
}

/** Two open transactions wanted the same rows (lock wait timeout or deadlock, either server). */
export function isLockConflict(err: unknown): boolean {
  const e = err as { code?: string; errno?: number }
  return e?.errno === 1205 || e?.errno === 1213 || e?.code === '55P03' || e?.code === '40P01'
}
