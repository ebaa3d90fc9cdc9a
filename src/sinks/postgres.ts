// Postgres sink (pg): one client per lane; pg's simple query protocol takes a batch's statements,
// the checkpoint upsert and COMMIT in one round trip.
import pg from 'pg'
import type { Dialect } from '../render/index.js'
import { literal } from '../render/index.js'
import { settledWithin } from '../timeout.js'
import { DEFAULT_LANES, sqlSink, type Sink } from './sink.js'

// Raised by the checkpoint move when the row is not where this sink left it (class SG: Segmenter's).
const FENCE_SQLSTATE = 'SGF01'

export async function openPostgresSink(
  url: string,
  dialect: Dialect,
  home: string,
  options: { checkpointTable?: string; lanes?: number } = {},
): Promise<Sink> {
  const table = options.checkpointTable ?? 'segmenter_checkpoint'
  const ident = table
    .split('.')
    .map((p) => '"' + p.replaceAll('"', '""') + '"')
    .join('.')
  const connect = async () => {
    const client = new pg.Client({ connectionString: url })
    client.on('error', () => {}) // surfaced by the next query instead of crashing the sidecar
    await client.connect()
    // The renderer writes literals for standard_conforming_strings = on (a backslash is an
    // ordinary character in '...'; E'...' where it escapes). Off (old installations), a member id
    // with a backslash and a quote could end a literal early: the session sets it, whatever the
    // server's, database's or role's default is.
    await client.query('set standard_conforming_strings = on')
    return client
  }
  const first = await connect()
  try {
    await first.query(`create table if not exists ${ident} (
      sync_key text primary key, pos bigint not null, ord int not null, home text, updated_at timestamptz not null default now())`)
    await first.query(`alter table ${ident} add column if not exists home text`) // a table from before the home column
  } catch (err) {
    // Two sinks creating it at the same moment: IF NOT EXISTS does not cover the race, and the
    // loser sees a catalog unique violation (23505), duplicate_table (42P07) or duplicate_object
    // (42710, the row type). Either way the table now exists.
    if (!['23505', '42P07', '42710'].includes((err as { code?: string }).code ?? '')) throw err
  }
  return sqlSink(
    {
      dialect,
      home,
      maxStatementBytes: 512 * 1024 * 1024, // Postgres caps a query message at 1 GB
      lanes: options.lanes ?? DEFAULT_LANES,
      connect,
      async run(client, sql) {
        await client.query(sql)
      },
      async readCheckpoint(client, syncKey) {
        await client.query(`insert into ${ident} (sync_key, pos, ord, home) values ($1, 0, 0, $2) on conflict (sync_key) do nothing`, [
          syncKey,
          home,
        ])
        await client.query(`update ${ident} set home = $2 where sync_key = $1 and home is null`, [syncKey, home])
        const { rows } = await client.query<{ pos: string; ord: number; home: string }>(
          `select pos, ord, home from ${ident} where sync_key = $1`,
          [syncKey],
        )
        const row = rows[0]!
        return { pos: BigInt(row.pos), ord: row.ord, home: row.home }
      },
      // The UPDATE locks the row first, so a transaction that waited for another one's commit sees
      // the row as that one left it; no row means someone else moved it, and the script stops.
      checkpointMove: (syncKey, from, to) =>
        `do $segmenter_fence$ begin
           update ${ident} set pos = ${to.pos}, ord = ${to.ord}, updated_at = now()
           where sync_key = ${literal(syncKey, 'postgres')} and pos = ${from.pos} and ord = ${from.ord} and home = ${literal(home, 'postgres')};
           if not found then
             raise exception 'segmenter fence: checkpoint % is not at (%, %)', ${literal(syncKey, 'postgres')}, ${from.pos}, ${from.ord}
               using errcode = '${FENCE_SQLSTATE}';
           end if;
         end $segmenter_fence$`,
      isFenceFailure: (err) => (err as { code?: string }).code === FENCE_SQLSTATE,
      begin: 'begin',
      beginShortLockWait: "begin;\nset local lock_timeout = '2s'",
      async end(client) {
        // end() waits for the server's goodbye, which a dead connection never sends.
        await settledWithin(client.end(), 1000)
      },
    },
    first,
  )
}
