// The home database pool. Timestamps and dates stay the strings Postgres sent: re-parsing a
// `timestamp without time zone` through JS Date would shift it by the sidecar's time zone.
import pg from 'pg'
import { DEFAULT_SCHEMA, inSchema, installSchema } from './schema.js'
import { settledWithin } from './timeout.js'

const types = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === 1114 || oid === 1184 || oid === 1082) return (v: string) => v
    return pg.types.getTypeParser(oid, format)
  },
}

/** How the pool parses a value of the type `oid` sent as text. */
export const typeParser = (oid: number): ((text: string) => unknown) => types.getTypeParser(oid, 'text')

/**
 * The home pool a sidecar delivering `concurrency` subscriptions at once needs: a delivery round
 * holds one client for its advisory lock for the whole round and uses up to two more at once (the
 * read-ahead of the next window, and the member-row read or the log write of this one); three
 * more serve the work loop's sweep, the refresh tick and the HTTP endpoint (pg-boss and the
 * NOTIFY listener have connections of their own).
 * A pool of 10 for 10 rounds starved: 12 subscriptions took 220 s instead of 4 s, or got stuck.
 */
export function poolSizeFor(concurrency: number): number {
  return 3 * concurrency + 3
}

/**
 * A pg.Client class whose queries name the install's schema: the sources write `segmenter.`, and
 * an install under another name (schema.ts) gets its own objects, for every query of the pool,
 * including cursors. The default install uses pg.Client itself.
 */
function clientClass(schema: string): typeof pg.Client {
  if (schema === DEFAULT_SCHEMA) return pg.Client
  return class InstallClient extends pg.Client {
    override query(...args: unknown[]): never {
      const [first] = args
      if (typeof first === 'string') args[0] = inSchema(first, schema)
      else if (first && typeof (first as { text?: unknown }).text === 'string') {
        // A QueryConfig or a Submittable such as a pg-cursor Cursor: renaming is idempotent, so a
        // config object used twice stays right.
        ;(first as { text: string }).text = inSchema((first as { text: string }).text, schema)
      }
      return (super.query as (...a: unknown[]) => never)(...args)
    }
  }
}

export function createPool(connectionString: string, max = 10, schema = installSchema()): pg.Pool {
  const pool = new pg.Pool({
    Client: clientClass(schema),
    connectionString,
    max,
    types: types as pg.CustomTypesConfig,
    application_name: 'segmenter',
    // The sidecar's queries are short; JIT compiling the member-row lookup of a 10,000-member
    // window (estimated expensive, cheap in fact) took 140 ms for a 60 ms query.
    options: '-c jit=off',
    connectionTimeoutMillis: 10_000, // a server that is restarting: fail and retry, never wait forever
  })
  pool.on('error', () => {}) // an idle client lost with the server; the next checkout reconnects
  // A checked-out client has no listener of the pool's: a server shutdown arriving between two of
  // its queries (the advisory-lock client of a delivery round) would be an uncaught 'error' event
  // and kill the sidecar. Ignored here, it fails the client's next query instead, and the pool
  // drops the client on release.
  pool.on('connect', (client) => client.on('error', () => {}))
  return pool
}

/**
 * End a pool without waiting forever: pool.end() waits for every checked-out client, and a client
 * stuck on a connection that died with its server (seen after a home restart under load) is
 * never given back. Its socket is destroyed with the process.
 */
export async function endPool(pool: pg.Pool, ms = 5000): Promise<void> {
  await settledWithin(pool.end(), ms)
}
