// The schema Segmenter is installed in. The SQL in db/ and in the TypeScript sources names it
// `segmenter`, so applying db/*.sql with psql gives the default install. Another name
// (SEGMENTER_SCHEMA, or `segmenter --schema NAME`) gets the same objects under that name: the
// migrations are applied through inSchema(), and the home pool (db.ts) passes every query through
// it too. Each install has its own tables, pg-boss queues, NOTIFY channel and advisory lock
// classes, so two installs in one database never see each other's changes.
import { SegmenterError } from './errors.js'

export const DEFAULT_SCHEMA = 'segmenter'

// A plain lower-case identifier: it needs no quoting anywhere (SQL, a NOTIFY channel, a queue
// name), and at most 54 bytes leaves room for the `_deliver`/`_refresh` suffixes of its queues.
const NAME = /^[a-z_][a-z0-9_]{0,53}$/

/** The schema name, or a CONFIG_INVALID error that says what a valid one looks like. */
export function checkSchemaName(name: string): string {
  if (!NAME.test(name) || name.startsWith('pg_') || name === 'pgboss' || name === 'public') {
    throw new SegmenterError('CONFIG_INVALID', `SEGMENTER_SCHEMA ${JSON.stringify(name)} is not a valid schema name for an install`, {
      hint: 'use a lower-case identifier of letters, digits and _ (at most 54 characters, not pg_*, public or pgboss), e.g. SEGMENTER_SCHEMA=segmenter_eu',
    })
  }
  return name
}

/** The install this process works on: SEGMENTER_SCHEMA, or `segmenter`. */
export function installSchema(env: NodeJS.ProcessEnv = process.env): string {
  return checkSchemaName(env.SEGMENTER_SCHEMA || DEFAULT_SCHEMA)
}

// The schema's name where SQL uses it: `segmenter.` before an object, `schema segmenter`,
// the NOTIFY channel 'segmenter', and the queue names segmenter_deliver / segmenter_refresh.
// Lower-case and whole-word only, so "Segmenter" in prose and segmenter_checkpoint (a table in
// the targets) are left alone.
const SCHEMA_REF = /(?<![\w$])segmenter(?=[.'\s;]|_deliver\b|_refresh\b)/g

/** `sql` with the schema `segmenter` renamed to `schema` (unchanged for the default install). */
export function inSchema(sql: string, schema: string): string {
  return schema === DEFAULT_SCHEMA ? sql : sql.replace(SCHEMA_REF, schema)
}

/** The pg-boss queues of an install. */
export const queues = (schema: string) => ({ deliver: `${schema}_deliver`, refresh: `${schema}_refresh` })
