// Small helpers every end-to-end test uses: waiting for an eventually-true condition, and cleanups
// that run in reverse order of registration.
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/**
 * Poll `fn` until it returns something truthy and return that. A throw counts as "not yet" (a
 * server may be restarting); the last one is reported if time runs out.
 */
export async function until<T>(what: string, fn: () => Promise<T | undefined | false | null>, timeoutMs = 60_000): Promise<T> {
  const end = Date.now() + timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      const v = await fn()
      if (v) return v
    } catch (err) {
      lastError = err
    }
    if (Date.now() > end)
      throw new Error(`timed out waiting for ${what}${lastError ? ` (last error: ${(lastError as Error).message})` : ''}`)
    await sleep(50)
  }
}

/** Cleanups run last-in first-out (node's t.after runs hooks first-in first-out). */
export function deferrer(t: { after(fn: () => Promise<void>): void }) {
  const fns: Array<() => Promise<unknown> | unknown> = []
  t.after(async () => {
    for (const f of fns.reverse()) await f()
  })
  return (fn: () => Promise<unknown> | unknown) => {
    fns.push(fn)
  }
}

/**
 * Wait until every active subscription's home cursor has caught up. A batch's log row and the home
 * cursor are written right after the target commits it, so a test that saw the target's state
 * waits for this before reading segmenter.log.
 */
export async function homeCaughtUp(query: (sql: string) => Promise<Array<{ n: number }>>, timeoutMs = 30_000): Promise<void> {
  await until(
    'the home cursors to catch up',
    async () =>
      (await query(`select coalesce(sum(pending_changes), 0)::int as n from segmenter.status where state = 'active'`))[0]?.n === 0,
    timeoutMs,
  )
}
