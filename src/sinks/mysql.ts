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
  home: string,
  options: { checkpointTable?: string; lanes?: number } = {},
): Promise<Sink> {
  const tableName = options.checkpointTable ?? CHECKPOINT_TABLE
  const table = '`' + tableName.replaceAll('`', '``') + '`'
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
    sync_key varchar(64) not null primary key, pos bigint not null, ord int not null, home varchar(128),
    updated_at timestamp(3) not null default current_timestamp(3) on update current_timestamp(3)) engine=InnoDB`)
  // A checkpoint table from before the home column (MySQL has no ADD COLUMN IF NOT EXISTS).
  const [columns] = (await first.query(
    `select 1 from information_schema.columns where table_schema = database() and table_name = ${literal(tableName, 'mysql')} and column_name = 'home'`,
  )) as unknown as [unknown[]]
  if (columns.length === 0) await first.query(`alter table ${table} add column home varchar(128)`)
  const key = (syncKey: string) => literal(syncKey, 'mysql')
  const homeLiteral = literal(home, 'mysql')
  return sqlSink(
    {
      dialect,
      home,
      maxStatementBytes: Math.floor(Number(packet) * 0.9) - 1024,
      lanes: options.lanes ?? DEFAULT_LANES,
      connect,
      async run(conn, sql) {
        await conn.query(sql)
      },
      async readCheckpoint(conn, syncKey) {
        const [results] = (await conn.query(
          `insert ignore into ${table} (sync_key, pos, ord, home) values (${key(syncKey)}, 0, 0, ${homeLiteral});
           update ${table} set home = ${homeLiteral} where sync_key = ${key(syncKey)} and home is null;
           select pos, ord, home from ${table} where sync_key = ${key(syncKey)}`,
        )) as unknown as [[unknown, unknown, Array<{ pos: string; ord: number; home: string }>]]
        const row = results[2][0]!
        return { pos: BigInt(row.pos), ord: Number(row.ord), home: row.home }
      },
      // MySQL has no way to raise an error from a plain statement (SIGNAL needs a stored program,
      // MariaDB's BEGIN NOT ATOMIC is not MySQL's), but SELECT ... INTO of two rows fails in both
      // (1172), and the server runs nothing after a failed statement of a script, COMMIT included.
      // The UPDATE locks the row first, so a transaction that waited for another one's commit
      // sees the row as that one left it.
      checkpointMove: (syncKey, from, to) =>
        `update ${table} set pos = ${to.pos}, ord = ${to.ord}
           where sync_key = ${key(syncKey)} and pos = ${from.pos} and ord = ${from.ord} and home = ${homeLiteral};
         set @segmenter_fence = row_count();
         select 'segmenter fence' into @segmenter_fenced from (select 1 union all select 2) two_rows where @segmenter_fence <> 1`,
      isFenceFailure: (err) => (err as { errno?: number }).errno === 1172,
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
