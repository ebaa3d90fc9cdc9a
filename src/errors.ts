// The few error kinds Segmenter raises, and the one list of the SQLSTATEs its SQL raises (SQLSTATES
// below). test/error_codes.test.ts ties that list to the SQL: every code raised in db/*.sql is in it
// and every entry is raised where it says, and README's table of codes is this table.
export type ErrorCode =
  | 'CONFIG_INVALID' // bad configuration written through the API (most SQL SG0xx errors map here)
  | 'TEMPLATE_INVALID' // a template that does not compile or references unknown fields
  | 'VALUE_INVALID' // a member value the target cannot represent (e.g. NUL in a Postgres text)
  | 'SINK_UNREACHABLE' // the target could not be reached; retried with backoff
  | 'MIGRATION_FAILED'
  | 'NOT_FOUND'

export interface SqlStateEntry {
  /** What it means, as the README's table says it. */
  readonly meaning: string
  /** The SegmenterError code fromPgError gives it; undefined for a code that is not an error of the SQL API. */
  readonly code: ErrorCode | undefined
  /** Where it is raised: the home's migrations, or (the fence) the statements a sink runs in a target. */
  readonly raisedIn: 'db' | 'src/sinks/postgres.ts'
}

/**
 * Every SQLSTATE Segmenter's SQL raises. Stable: codes are added, never renumbered. The comments
 * in old migration files (db/0001_schema.sql's header) predate this list and are not kept up to date.
 */
export const SQLSTATES = {
  SG001: { meaning: 'unknown segment', code: 'NOT_FOUND', raisedIn: 'db' },
  SG002: { meaning: 'unknown consumer', code: 'NOT_FOUND', raisedIn: 'db' },
  SG003: { meaning: 'segment table lacks a required column or has the wrong type', code: 'CONFIG_INVALID', raisedIn: 'db' },
  SG004: { meaning: 'mandatory template (`add_sql`, `remove_sql`) missing', code: 'CONFIG_INVALID', raisedIn: 'db' },
  SG005: { meaning: '`batch_size` < 1', code: 'CONFIG_INVALID', raisedIn: 'db' },
  SG006: { meaning: 'negative `batch_timeout`', code: 'CONFIG_INVALID', raisedIn: 'db' },
  SG007: { meaning: 'unknown dialect', code: 'CONFIG_INVALID', raisedIn: 'db' },
  SG008: { meaning: 'unknown template syntax', code: 'CONFIG_INVALID', raisedIn: 'db' },
  SG009: { meaning: 'invalid cron expression', code: 'CONFIG_INVALID', raisedIn: 'db' },
  SG010: {
    meaning:
      "template does not compile for the consumer's dialect, or names a member field its segment table lacks; the message starts with the field (`add_sql: …`) and gives the line:column, the hint says how to fix it",
    code: 'TEMPLATE_INVALID',
    raisedIn: 'db',
  },
  SG011: { meaning: 'unknown subscription (`pause`, `resume`, `resync`, `alter_subscription`, …)', code: 'NOT_FOUND', raisedIn: 'db' },
  SG012: {
    meaning: 'invalid argument (an empty name, an unknown kind, a bad consumer option, not at READ COMMITTED, …)',
    code: 'CONFIG_INVALID',
    raisedIn: 'db',
  },
  SG013: { meaning: 'already exists', code: 'CONFIG_INVALID', raisedIn: 'db' },
  SG014: {
    meaning: 'not allowed for this segment kind (a refresher for a manual segment, `add_members` on an auto one, …)',
    code: 'CONFIG_INVALID',
    raisedIn: 'db',
  },
  SG015: {
    meaning: "the refresher's result does not fit the segment table (no `id`, unknown column, duplicate id)",
    code: 'CONFIG_INVALID',
    raisedIn: 'db',
  },
  SGF01: {
    meaning:
      "the checkpoint fence, in a Postgres target: the checkpoint row moved under this sidecar, which starts again from the target's checkpoint (a `FencedError`; MySQL/MariaDB targets raise 1172 for it)",
    code: undefined,
    raisedIn: 'src/sinks/postgres.ts',
  },
} as const satisfies Record<string, SqlStateEntry>

export type SqlState = keyof typeof SQLSTATES

export class SegmenterError extends Error {
  readonly code: ErrorCode
  readonly sqlState: string | undefined
  readonly hint: string | undefined
  constructor(code: ErrorCode, message: string, options: { cause?: unknown; sqlState?: string; hint?: string } = {}) {
    super(message, { cause: options.cause })
    this.name = 'SegmenterError'
    this.code = code
    this.sqlState = options.sqlState
    this.hint = options.hint
  }
}

interface PgLikeError {
  code?: string
  message: string
  hint?: string
  detail?: string
}

/** Wrap a pg error raised by the schema's API functions, keeping its SQLSTATE and hint; other errors pass through. */
export function fromPgError(err: unknown): unknown {
  const e = err as PgLikeError
  if (typeof e?.code !== 'string') return err
  const entry: SqlStateEntry | undefined = Object.hasOwn(SQLSTATES, e.code) ? SQLSTATES[e.code as SqlState] : undefined
  // An SG code this list lacks comes from a schema newer than this code: still a refusal of the API.
  const code = entry ? entry.code : e.code.startsWith('SG') ? 'CONFIG_INVALID' : undefined
  if (code === undefined) return err
  return new SegmenterError(code, e.hint ? `${e.message} (hint: ${e.hint})` : e.message, { cause: err, sqlState: e.code, hint: e.hint })
}
