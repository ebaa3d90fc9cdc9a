// A sidecar in the test process on a pool of its own, the way every delivery test starts one.
import { pino } from 'pino'
import { createPool, endPool } from '../../src/db.js'
import { startSidecar, type Sidecar, type SidecarOptions } from '../../src/sidecar.js'

/**
 * Start a sidecar on its own pool (silent unless `log` is given). Its stop() may be called any
 * number of times and also ends the pool; `defer`, if given, stops it when the test ends.
 */
export async function startTestSidecar(
  opts: Omit<SidecarOptions, 'pool' | 'log'> & Partial<Pick<SidecarOptions, 'log'>>,
  defer?: (fn: () => Promise<unknown>) => void,
): Promise<Sidecar> {
  const pool = createPool(opts.databaseUrl)
  const sidecar = await startSidecar({ log: pino({ level: 'silent' }), ...opts, pool })
  let stopped: Promise<void> | undefined
  const stop = sidecar.stop
  sidecar.stop = () =>
    (stopped ??= (async () => {
      await stop()
      await endPool(pool)
    })())
  defer?.(() => sidecar.stop())
  return sidecar
}
