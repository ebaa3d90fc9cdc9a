// Waiting with a limit, for steps that would otherwise wait forever on a connection that died
// with its server (a QUIT nobody answers, a pool's end() waiting for a stuck client).

/** Whether `p` settled, either way, within `ms`. Never rejects; the timer does not keep the process alive. */
export async function settledWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms)
    timer.unref()
  })
  try {
    return await Promise.race([
      p.then(
        () => true,
        () => true,
      ),
      late,
    ])
  } finally {
    clearTimeout(timer)
  }
}
