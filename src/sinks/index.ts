import type pg from 'pg'
import { SegmenterError } from '../errors.js'
import type { Dialect } from '../render/index.js'
import { openClickhouseSink } from './clickhouse.js'
import { openHttpSink } from './http.js'
import { openMysqlSink } from './mysql.js'
import { openPostgresSink } from './postgres.js'
import type { Sink } from './sink.js'

/** What a sink may need besides its URL: the consumer, the sidecar's environment and the home pool. */
export interface OpenContext {
  consumer: ConsumerRow
  env: NodeJS.ProcessEnv
  pool: pg.Pool
}

type Open = (
  url: string,
  dialect: Dialect,
  home: string,
  options: { checkpointTable?: string; lanes?: number },
  context: OpenContext,
) => Promise<Sink>

/**
 * The consumer kinds. `transactional`: a batch's statements and its checkpoint commit together, so
 * nothing of a batch the target did not confirm is there. ClickHouse has no such transactions: a
 * batch may have been applied without its checkpoint and is then delivered again (with the same
 * version), so its windows are not compacted (compactsWindows).
 */
const KINDS: Record<string, { open: Open; transactional: boolean }> = {
  mysql: { open: openMysqlSink, transactional: true },
  postgres: { open: openPostgresSink, transactional: true },
  clickhouse: { open: openClickhouseSink, transactional: false },
  http: {
    open: (url, dialect, home, _, { consumer, env, pool }) =>
      openHttpSink(url, dialect, home, {
        pool,
        env,
        options: consumer.options,
        consumerId: consumer.consumer_id,
        consumerName: consumer.name,
      }),
    transactional: false,
  },
}

/**
 * Whether a window's add+remove pairs may cancel out (batch.ts compact). Not for a target that may
 * already hold an add from an attempt whose checkpoint it never confirmed: the replay, read as a
 * longer window, could cancel that add against a later remove and leave the target's row behind.
 */
export const compactsWindows = (consumer: Pick<ConsumerRow, 'kind'>): boolean => isTransactional(consumer)

/**
 * Whether a batch and its checkpoint commit together in the target. Where they do not, what is sent
 * is recorded at home before it is sent, and replayed as it was (deliver/journal.ts).
 */
export const isTransactional = (consumer: Pick<ConsumerRow, 'kind'>): boolean => KINDS[consumer.kind]?.transactional ?? true

export type { Checkpoint, HoldsSubscription, OpenTransaction, Sink, TargetCheckpoint } from './sink.js'
export { compareCheckpoints, DEFAULT_LANES, FencedError, holdsSubscription, isFenced, isLockConflict, isTransient } from './sink.js'

export interface ConsumerRow {
  consumer_id: string
  name: string
  kind: string
  dialect: Dialect
  dsn_env: string
  options: Record<string, unknown>
}

/**
 * What of a consumer (and of the environment) its open sink was made from: a running sidecar
 * compares it each round and reopens the sink when the consumer was repointed.
 */
export const consumerFingerprint = (consumer: ConsumerRow, env: NodeJS.ProcessEnv = process.env): string =>
  JSON.stringify([consumer.kind, consumer.dialect, consumer.dsn_env, consumer.options, env[consumer.dsn_env] ?? null])

/**
 * Open the sink a consumer row describes; its URL comes from the environment variable it names.
 * `home` names the home database in the target's checkpoint rows.
 */
export async function openSink(consumer: ConsumerRow, home: string, env: NodeJS.ProcessEnv, pool: pg.Pool): Promise<Sink> {
  const url = env[consumer.dsn_env]
  if (!url) {
    // Not an outage: retrying cannot help until the sidecar's environment has it.
    throw new SegmenterError('CONFIG_INVALID', `consumer ${consumer.name}: environment variable ${consumer.dsn_env} is not set`, {
      hint: `export ${consumer.dsn_env}=mysql://user:password@host:3306/db (or postgres://..., http://user:password@host:8123/db for ClickHouse, https://host/path for an http consumer) in the sidecar's environment and restart it, or point the consumer at another variable with segmenter.create_consumer`,
    })
  }
  const options = {
    checkpointTable: consumer.options.checkpoint_table as string | undefined,
    lanes: consumer.options.lanes as number | undefined, // the sink's default when absent
  }
  const kind = KINDS[consumer.kind]
  if (!kind) throw new SegmenterError('CONFIG_INVALID', `consumer ${consumer.name}: unknown kind ${consumer.kind}`)
  try {
    return await kind.open(url, consumer.dialect, home, options, { consumer, env, pool })
  } catch (err) {
    if (err instanceof SegmenterError && err.code === 'CONFIG_INVALID') throw err
    throw new SegmenterError('SINK_UNREACHABLE', `consumer ${consumer.name}: cannot connect: ${(err as Error).message}`, { cause: err })
  }
}
