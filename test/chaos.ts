// `make chaos`: the fault tests, several runs each, against fresh servers every run, and a table of
// what happened. A fault test passes only if the target, without a unique key, ends equal to the
// segment row for row. Usage: node --import tsx test/chaos.ts [runs] (Default: CHAOS_RUNS or 3).
import { spawn } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const runs = Number(process.argv[2] ?? process.env.CHAOS_RUNS ?? 3)

// Each fault, and the tests that inject it (names as in the test files, matched as regexes).
const FAULTS: Array<{ fault: string; test: RegExp }> = [
  { fault: 'kill -9 mid-delivery (lanes 1)', test: /^kill -9 of the sidecar during a 200,000-member delivery.*lanes 1/ },
  { fault: 'kill -9 mid-delivery (lanes 2)', test: /^kill -9 of the sidecar during a 200,000-member delivery.*lanes 2/ },
  { fault: 'zombie transaction (lanes 1)', test: /^a zombie transaction.*lanes 1/ },
  { fault: 'zombie transaction (lanes 2)', test: /^a zombie transaction.*lanes 2/ },
  { fault: 'lost lock, two sidecars (lanes 1, MariaDB)', test: /^two sidecars, the lock holder's home session terminated.*lanes 1, mysql/ },
  { fault: 'lost lock, two sidecars (lanes 2, MariaDB)', test: /^two sidecars, the lock holder's home session terminated.*lanes 2, mysql/ },
  {
    fault: 'lost lock, two sidecars (lanes 1, Postgres)',
    test: /^two sidecars, the lock holder's home session terminated.*lanes 1, postgres/,
  },
  {
    fault: 'lost lock, two sidecars (lanes 2, Postgres)',
    test: /^two sidecars, the lock holder's home session terminated.*lanes 2, postgres/,
  },
  { fault: 'standby takeover after kill -9', test: /^a standby sidecar takes over/ },
  { fault: 'two sidecars at once', test: /^two sidecars at once/ },
  { fault: 'home restored from a backup', test: /^a home restored from a backup/ },
  { fault: 'target killed and restarted', test: /^target down for 30 s/ },
  { fault: 'home restarted', test: /^survives a restart of the home Postgres/ },
  { fault: 'read-only target', test: /^a read-only target/ },
  { fault: 'SIGTERM mid-delivery', test: /^graceful stop mid-delivery/ },
  { fault: 'ClickHouse: kill -9 ×4 (effectively once)', test: /^kill -9 of the sidecar four times during a 100,000-member delivery/ },
  { fault: 'ClickHouse: kill -9, replays as recorded', test: /^kill -9 while batches are unconfirmed/ },
  { fault: 'ClickHouse stopped for 30 s', test: /^ClickHouse stopped for 30 s/ },
  { fault: 'HTTP: kill -9 ×3 through 503s and 429s', test: /^kill -9 of the sidecar three times during that delivery/ },
]
const FILES = [
  'test/resilience.test.ts',
  'test/faults.test.ts',
  'test/delivery_restart.test.ts',
  'test/clickhouse_faults.test.ts',
  'test/http.test.ts',
]

interface Outcome {
  ok: boolean
  ms: number
  error?: string
}
const outcomes = new Map<string, Outcome[]>(FAULTS.map((f) => [f.fault, []]))

/** One run of every fault test on fresh servers; the TAP lines say what passed. */
async function runOnce(run: number): Promise<void> {
  const pattern = FAULTS.map((f) => f.test.source).join('|')
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/run.ts', ...FILES], {
    cwd: repo,
    env: { ...process.env, SEGMENTER_TEST_NAME: pattern },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let out = ''
  child.stdout.on('data', (d: Buffer) => (out += d.toString()))
  await new Promise((r) => child.on('exit', r))
  // The whole TAP output, sidecar logs included (a test's stderr reaches it as comments).
  mkdirSync(`${repo}/.test-servers`, { recursive: true })
  writeFileSync(`${repo}/.test-servers/chaos-run-${run}.tap`, out)
  // "ok 3 - name" or "not ok 3 - name", then its YAML block with duration_ms and error.
  const blocks = out.split(/\n(?=(?:not )?ok \d+ - )/)
  for (const block of blocks) {
    const head = /^(not )?ok \d+ - (.*)$/m.exec(block)
    if (!head || /# SKIP/.test(head[2]!)) continue
    const fault = FAULTS.find((f) => f.test.test(head[2]!))
    if (!fault) continue
    const ms = Number(/duration_ms: ([\d.]+)/.exec(block)?.[1] ?? NaN)
    const error = /error: (.*)/.exec(block)?.[1]
    outcomes.get(fault.fault)!.push({ ok: !head[1], ms, error })
  }
}

for (let i = 1; i <= runs; i++) {
  console.error(`=== chaos run ${i} of ${runs}`)
  await runOnce(i)
}

const rows = FAULTS.map(({ fault }) => {
  const o = outcomes.get(fault)!
  const passed = o.filter((x) => x.ok).length
  const seconds = o.map((x) => x.ms / 1000).sort((a, b) => a - b)
  const median = seconds.length ? seconds[Math.floor(seconds.length / 2)]!.toFixed(1) : '-'
  const failures = o.filter((x) => !x.ok).map((x) => x.error ?? 'failed')
  return {
    fault,
    runs: o.length,
    passed,
    median,
    outcome: o.length === 0 ? 'not run' : failures.length === 0 ? 'exact every run' : failures[0]!,
  }
})
console.log('| fault | runs | passed | median s | outcome |')
console.log('|---|---|---|---|---|')
for (const r of rows) console.log(`| ${r.fault} | ${r.runs} | ${r.passed} | ${r.median} | ${r.outcome} |`)
const bad = rows.filter((r) => r.passed !== runs)
if (bad.length > 0) console.error(`the runs' TAP output, with the sidecars' logs: .test-servers/chaos-run-*.tap`)
process.exit(bad.length === 0 ? 0 : 1)
