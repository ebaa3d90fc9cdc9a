// MySQL / MariaDB sink (mysql2): one connection per lane; a batch's statements, the checkpoint
// upsert and COMMIT go in one multi-statement round trip.
import mysql from 'mysql2/promise'
import type { Dialect } from '../render/index.js'
import { literal } from '../render/index.js'
import { settledWithin } from '../timeout.js'
import { DEFAULT_LANES, sqlSink, type Sink } from './sink.js'

const CHECKPOINT_TABLE = 'segmenter_checkpoint'

// The renderer writes literals for the server's default quoting rules: a backslash escapes, and
// "..." is a string. NO_BACKSLASH_ESCAPES would make a rendered `\'` end the string early, and
// ANSI_QUOTES (also part of ANSI) would turn a template's "{$lead.X}" into an identifier; the
// session drops both, whatever the server's or the account's defaults are. Every other mode
// (strictness, PIPES_AS_CONCAT, ...) stays as configured.
const QUOTING_MODES_DROPPED = new Set(['NO_BACKSLASH_ESCAPES', 'ANSI_QUOTES', 'ANSI'])

async function setQuotingModes(conn: mysql.Connection): Promise<void> {
  const [[{ mode }]] = (await conn.query('select @@session.sql_mode as mode')) as unknown as [[{ mode: string }]]
  const kept = mode.split(',').filter((m) => m !== '' && !QUOTING_MODES_DROPPED.has(m))
  await conn.query(`set session sql_mode = ${literal(kept.join(','), 'mysql')}`)
}

export async function openMysqlSink(
  url: string,
  dialect: Dialect,
  options: { checkpointTable?: string; lanes?: number } = {},
): Promise<Sink> {
  const table = '`' + (options.checkpointTable ?? CHECKPOINT_TABLE).replaceAll('`', '``') + '`'
  const connect = async () => {
    const conn = await mysql.createConnection({
      uri: url,
      multipleStatements: true, // templates may hold several statements; values are always literals
      supportBigNumbers: true,
      bigNumberStrings: true,
      charset: 'utf8mb4',
      dateStrings: true,
      // Every value is already a literal (rendered, or literal() below), so there are no `?`
      // placeholders to fill; mysql2 would otherwise scan each 100 kB statement for them.
      queryFormat: (sql: string) => sql,
    })
    conn.on('error', () => {}) // a dropped idle connection; the next query fails and is retried
    await setQuotingModes(conn)
    return conn
  }
  const first = await connect()
  // A statement larger than max_allowed_packet surfaces as ECONNRESET rather than an SQL error,
  // so batches are sized from the server's actual limit.
  const [[{ packet }]] = (await first.query('select @@max_allowed_packet as packet')) as unknown as [[{ packet: string }]]
  await first.query(`create table if not exists ${table} (
    sync_key varchar(64) not null primary key, pos bigint not null, ord int not null,
    updated_at timestamp(3) not null default current_timestamp(3) on update current_timestamp(3)) engine=InnoDB`)
  return sqlSink(
    {
      dialect,
      maxStatementBytes: Math.floor(Number(packet) * 0.9) - 1024,
      lanes: options.lanes ?? DEFAULT_LANES,
      connect,
      async run(conn, sql) {
        await conn.query(sql)
      },
      async readCheckpoint(conn, syncKey) {
        const [rows] = (await conn.query(`select pos, ord from ${table} where sync_key = ${literal(syncKey, 'mysql')}`)) as unknown as [
          Array<{ pos: string; ord: number }>,
        ]
        const row = rows[0]
        return row ? { pos: BigInt(row.pos), ord: Number(row.ord) } : null
      },
      checkpointUpsert: (syncKey, to) =>
        `insert into ${table} (sync_key, pos, ord) values (${literal(syncKey, 'mysql')}, ${to.pos}, ${to.ord}) on duplicate key update pos = values(pos), ord = values(ord)`,
      begin: 'set session innodb_lock_wait_timeout = default;\nstart transaction',
      beginShortLockWait: 'set session innodb_lock_wait_timeout = 2;\nstart transaction',
      async end(conn) {
        // end() waits for the server to answer QUIT, which a dead server never does.
        await settledWithin(conn.end(), 1000)
        conn.destroy()
      },
    },
    first,
  )
}
