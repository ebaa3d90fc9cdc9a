// The operations endpoint: /healthz (the process is up), /readyz (the home database answers),
// /metrics (Prometheus), /api/status and /api/stats (JSON from the views), and / (the status page).
import { readFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import type pg from 'pg'
import type { Metrics } from './metrics.js'

const PAGE = new URL('./status-page.html', import.meta.url)

export async function startHttp(pool: pg.Pool, metrics: Metrics, port: number, host = '127.0.0.1'): Promise<Server & { url: string }> {
  const page = await readFile(PAGE, 'utf8')
  const json = (body: unknown) => JSON.stringify(body, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))
  const server = createServer(async (req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    try {
      if (path === '/healthz') return void res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n')
      if (path === '/readyz') {
        await pool.query('select 1 from segmenter.migrations limit 1')
        return void res.writeHead(200, { 'content-type': 'text/plain' }).end('ready\n')
      }
      if (path === '/metrics')
        return void res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(await metrics.registry.metrics())
      if (path === '/api/status') {
        const { rows } =
          await pool.query(`select subscription, state, consumer, pending_changes, extract(epoch from oldest_pending_age)::float8 as lag_seconds,
          last_success, last_error_at, last_error, dead_letters from segmenter.status order by subscription`)
        return void res.writeHead(200, { 'content-type': 'application/json' }).end(json(rows))
      }
      if (path === '/api/stats') {
        const { rows } = await pool.query(`select subscription, bucket, successful_queries, rows, errors from segmenter.sync_stats
          where bucket > now() - interval '6 hours' order by bucket`)
        return void res.writeHead(200, { 'content-type': 'application/json' }).end(json(rows))
      }
      if (path === '/') return void res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(page)
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n')
    } catch (err) {
      res.writeHead(503, { 'content-type': 'text/plain' }).end(`unavailable: ${(err as Error).message}\n`)
    }
  })
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, host, () => resolve()))
  const address = server.address()
  const actualPort = typeof address === 'object' && address ? address.port : port
  return Object.assign(server, { url: `http://${host}:${actualPort}` })
}
