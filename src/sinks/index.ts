import { SegmenterError } from '../errors.js'
import type { Dialect } from '../render/index.js'
import { openMysqlSink } from './mysql.js'
import { openPostgresSink } from './postgres.js'
import type { Sink } from './sink.js'

export type { Checkpoint, OpenTransaction, Sink, TargetCheckpoint } from './sink.js'
export { compareCheckpoints, DEFAULT_LANES, FencedError, isFenced, isLockConflict, isTransient } from './sink.js'

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
export async function openSink(consumer: ConsumerRow, home: string, env: NodeJS.ProcessEnv = process.env): Promise<Sink> {
  const url = env[consumer.dsn_env]
  if (!url) {
    // Not an outage: retrying cannot help until the sidecar's environment has it.
    throw new SegmenterError('CONFIG_INVALID', `consumer ${consumer.name}: environment variable ${consumer.dsn_env} is not set`, {
      hint: `export ${consumer.dsn_env}=mysql://user:password@host:3306/db (or postgres://...) in the sidecar's environment and restart it, or point the consumer at another variable with segmenter.create_consumer`,
    })
  }
  const options = {
    checkpointTable: consumer.options.checkpoint_table as string | undefined,
    lanes: consumer.options.lanes as number | undefined, // the sink's default when absent
  }
  try {
    if (consumer.kind === 'mysql') return await openMysqlSink(url, consumer.dialect, home, options)
    if (consumer.kind === 'postgres') return await openPostgresSink(url, consumer.dialect, home, options)
  } catch (err) {
    throw new SegmenterError('SINK_UNREACHABLE', `consumer ${consumer.name}: cannot connect: ${(err as Error).message}`, { cause: err })
  }
  throw new SegmenterError('CONFIG_INVALID', `consumer ${consumer.name}: unknown kind ${consumer.kind}`)
}
