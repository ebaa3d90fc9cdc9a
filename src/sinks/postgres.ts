// Postgres sink (pg). Statements and the checkpoint upsert run in one transaction; pg's simple
// query protocol accepts several statements in one round trip.
import pg from 'pg'
import type { Dialect } from '../render/index.js'
import { literal } from '../render/index.js'
import { transactionScript, type Checkpoint, type Sink } from './sink.js'

export async function openPostgresSink(url: string, dialect: Dialect, options: { checkpointTable?: string } = {}): Promise<Sink> {
  const table = options.checkpointTable ?? 'segmenter_checkpoint'
  const ident = table
    .split('.')
    .map((p) => '"' + p.replaceAll('"', '""') + '"')
    .join('.')
  const client = new pg.Client({ connectionString: url })
  client.on('error', () => {}) // surfaced by the next query instead of crashing the sidecar
  await client.connect()
  try {
    await client.query(`create table if not exists ${ident} (
      sync_key text primary key, pos bigint not null, ord int not null, updated_at timestamptz not null default now())`)
  } catch (err) {
    // Two sinks creating it at the same moment: IF NOT EXISTS does not cover the race, and the
    // loser sees a catalog unique violation (23505), duplicate_table (42P07) or duplicate_object
    // (42710, the row type). Either way the table now exists.
    if (!['23505', '42P07', '42710'].includes((err as { code?: string }).code ?? '')) throw err
  }
  return {
    dialect,
    maxStatementBytes: 512 * 1024 * 1024, // Postgres caps a query message at 1 GB
    async checkpoint(syncKey) {
      const { rows } = await client.query<{ pos: string; ord: number }>(`select pos, ord from ${ident} where sync_key = $1`, [syncKey])
      const row = rows[0]
      return row ? { pos: BigInt(row.pos), ord: row.ord } : null
    },
    async apply(statements, syncKey, to: Checkpoint) {
      const upsert = `insert into ${ident} (sync_key, pos, ord) values (${literal(syncKey, 'postgres')}, ${to.pos}, ${to.ord})
        on conflict (sync_key) do update set pos = excluded.pos, ord = excluded.ord, updated_at = now()`
      try {
        await client.query(transactionScript('begin', statements, upsert))
      } catch (err) {
        await client.query('rollback').catch(() => {})
        throw err
      }
    },
    async close() {
      // end() waits for the server's goodbye, which a dead connection never sends.
      await Promise.race([client.end().catch(() => {}), new Promise((resolve) => setTimeout(resolve, 1000).unref())])
    },
  }
}
