import { SegmenterError } from '../errors.js'
import type { Dialect } from '../render/index.js'
import { openMysqlSink } from './mysql.js'
import { openPostgresSink } from './postgres.js'
import type { Sink } from './sink.js'

export type { Checkpoint, OpenTransaction, Sink } from './sink.js'
export { compareCheckpoints, DEFAULT_LANES, isLockConflict, isTransient } from './sink.js'

export interface ConsumerRow {
  consumer_id: string
  name: string
  kind: string
  dialect: Dialect
  dsn_env: string
  options: Record<string, unknown>
}

/** Open the sink a consumer row describes; its URL comes from the environment variable it names. */
export async function openSink(consumer: ConsumerRow, env: NodeJS.ProcessEnv = process.env): Promise<Sink> {
  const url = env[consumer.dsn_env]
  if (!url) {
    throw new SegmenterError('SINK_UNREACHABLE', `consumer ${consumer.name}: environment variable ${consumer.dsn_env} is not set`, {
      hint: `export ${consumer.dsn_env}=mysql://user:password@host:3306/db (or postgres://...) before starting the sidecar`,
    })
  }
  const options = {
    checkpointTable: consumer.options.checkpoint_table as string | undefined,
    lanes: consumer.options.lanes as number | undefined, // the sink's default when absent
  }
  try {
    if (consumer.kind === 'mysql') return await openMysqlSink(url, consumer.dialect, options)
    if (consumer.kind === 'postgres') return await openPostgresSink(url, consumer.dialect, options)
  } catch (err) {
    throw new SegmenterError('SINK_UNREACHABLE', `consumer ${consumer.name}: cannot connect: ${(err as Error).message}`, { cause: err })
  }
  throw new SegmenterError('CONFIG_INVALID', `consumer ${consumer.name}: unknown kind ${consumer.kind}`)
}
