// Prometheus metrics. Counters are fed by the sidecar as batches and refreshes happen; gauges
// that describe state (pending changes, lag) are read from segmenter.status at scrape time, so
// every sidecar reports the same truth.
import type pg from 'pg'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

export function createMetrics(pool: pg.Pool) {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'segmenter_process_' })
  const rows = new Counter({
    name: 'segmenter_rows_delivered_total',
    help: 'Member events delivered to targets',
    labelNames: ['subscription', 'event'],
    registers: [registry],
  })
  const batches = new Counter({
    name: 'segmenter_batches_total',
    help: 'Batches by outcome (ok, failed)',
    labelNames: ['subscription', 'outcome'],
    registers: [registry],
  })
  const batchSeconds = new Histogram({
    name: 'segmenter_batch_duration_seconds',
    help: 'Render + target transaction time per batch',
    labelNames: ['subscription'],
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    registers: [registry],
  })
  const refreshSeconds = new Histogram({
    name: 'segmenter_refresh_duration_seconds',
    help: 'Duration of auto-segment refreshes',
    labelNames: ['segment', 'outcome'],
    buckets: [0.01, 0.1, 0.5, 1, 5, 30, 120, 600],
    registers: [registry],
  })
  const state = async (): Promise<Array<{ subscription: string; pending: string; lag: number | null }>> =>
    (
      await pool.query(
        `select subscription, pending_changes as pending, extract(epoch from oldest_pending_age)::float8 as lag from segmenter.status`,
      )
    ).rows
  new Gauge({
    name: 'segmenter_pending_changes',
    help: 'Member events not yet delivered',
    labelNames: ['subscription'],
    registers: [registry],
    async collect() {
      this.reset()
      for (const r of await state()) this.set({ subscription: r.subscription }, Number(r.pending))
    },
  })
  new Gauge({
    name: 'segmenter_lag_seconds',
    help: 'Age of the oldest undelivered change',
    labelNames: ['subscription'],
    registers: [registry],
    async collect() {
      this.reset()
      for (const r of await state()) this.set({ subscription: r.subscription }, r.lag ?? 0)
    },
  })
  return { registry, rows, batches, batchSeconds, refreshSeconds }
}
export type Metrics = ReturnType<typeof createMetrics>
