// Shared by the benchmarks: a database to run in (BENCH_DATABASE_URL, or a throwaway server
// started like the tests' one), timing, and the JSON report every benchmark prints.
import pg from 'pg'
import { migrate } from '../src/migrate.js'
import { startPostgres, type PgServer } from '../test/harness/servers.js'

export async function benchDatabase(): Promise<{ url: string; pool: pg.Pool; stop(): Promise<void> }> {
  let server: PgServer | undefined
  let url = process.env.BENCH_DATABASE_URL
  if (!url) {
    server = await startPostgres()
    url = server.url
  }
  await migrate(url)
  const pool = new pg.Pool({ connectionString: url, max: 4 })
  return {
    url,
    pool,
    async stop() {
      await pool.end()
      await server?.destroy()
    },
  }
}

export async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint()
  await fn()
  return Number(process.hrtime.bigint() - t0) / 1e6
}

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
}

export const round = (x: number, digits = 3): number => Number(x.toFixed(digits))
