// The few error kinds Segmenter raises. SQL errors raised by the schema carry SQLSTATEs SG001..SG014
// (see db/0001_schema.sql); they keep their code here as `sqlState`.
export type ErrorCode =
  | 'CONFIG_INVALID' // bad configuration written through the API (SQL SG0xx errors map here)
  | 'TEMPLATE_INVALID' // a template that does not compile or references unknown fields
  | 'VALUE_INVALID' // a member value the target cannot represent (e.g. NUL in a Postgres text)
  | 'SINK_UNREACHABLE' // the target could not be reached; retried with backoff
  | 'MIGRATION_FAILED'
  | 'NOT_FOUND'

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

/** Wrap a pg error raised by the schema's API functions, keeping its SQLSTATE and hint. */
export function fromPgError(err: unknown): unknown {
  const e = err as PgLikeError
  if (typeof e?.code === 'string' && e.code.startsWith('SG')) {
    const code: ErrorCode =
      e.code === 'SG010'
        ? 'TEMPLATE_INVALID'
        : e.code === 'SG001' || e.code === 'SG002' || e.code === 'SG011'
          ? 'NOT_FOUND'
          : 'CONFIG_INVALID'
    return new SegmenterError(code, e.hint ? `${e.message} (hint: ${e.hint})` : e.message, { cause: err, sqlState: e.code, hint: e.hint })
  }
  return err
}
