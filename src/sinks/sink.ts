// A sink executes rendered statements in an external SQL store, exactly once: the statements and
// the subscription's checkpoint row commit in one target transaction, and the checkpoint is read
// back before every delivery round, so a sidecar killed at any point resumes where the target is.
import type { Dialect } from '../render/index.js'

export interface Checkpoint {
  pos: bigint
  ord: number
}

export const compareCheckpoints = (a: Checkpoint, b: Checkpoint): number => (a.pos === b.pos ? a.ord - b.ord : a.pos < b.pos ? -1 : 1)

export interface Sink {
  readonly dialect: Dialect
  /** Largest statement text the target accepts (MySQL: its max_allowed_packet, less headroom). */
  readonly maxStatementBytes: number
  /** The target's checkpoint for this subscription, or null if it has none yet. */
  checkpoint(syncKey: string): Promise<Checkpoint | null>
  /** Run the statements and move the checkpoint, all in one target transaction. */
  apply(statements: string[], syncKey: string, to: Checkpoint): Promise<void>
  close(): Promise<void>
}

/**
 * One round trip: begin, the batch's statements, the checkpoint upsert, commit. If any statement
 * fails the server runs none after it, and the caller rolls back.
 */
export function transactionScript(begin: string, statements: string[], checkpointUpsert: string): string {
  const body = statements.map((s) => s.trim().replace(/;\s*$/, '')).filter((s) => s.length > 0)
  return [begin, ...body, checkpointUpsert, 'commit'].join(';\n')
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
  return /Connection terminated|connection is closed|Cannot enqueue|socket hang up/i.test(String((err as Error)?.message))
}
