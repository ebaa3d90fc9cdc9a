// The sidecar's limits: the retry backoff of an unreachable target is honoured whatever wakes the
// loop (full jitter, reset by a success), and the home pool is sized from SEGMENTER_CONCURRENCY so
// any concurrency from 1 to 64 delivers instead of starving the pool.
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { Writable } from 'node:stream'
import { test } from 'node:test'
import mysql from 'mysql2/promise'
import { pino } from 'pino'
import { loadConfig } from '../src/config.js'
import { createPool, endPool, poolSizeFor } from '../src/db.js'
import { retryDelay, startSidecar } from '../src/sidecar.js'
import type { RoundResult } from '../src/deliver/index.js'
import { freshMariadbServer, freshMysql, freshPg, type FreshPg } from './harness/db.js'
import { deferrer, sleep, until } from './harness/wait.js'
import { startTestSidecar } from './harness/sidecar.js'

const DDL = `create table seg (segment_id uuid not null, id text, actual_begin timestamptz not null default now(),
  actual_end timestamptz not null default 'infinity', processed timestamptz not null default now());
  create index on seg (segment_id, id);`
const addInto = (table: string) => `insert into ${table} (member) values {for $i, $lead = $batch}({$lead.id}){autocomma}{end}`
const removeFrom = (table: string) => `delete from ${table} where member in ({batch_in "id"})`
const CLOSED_PORT_URL = 'mysql://root@127.0.0.1:1/x' // nothing listens on port 1: connection refused

async function subscribe(home: FreshPg, name: string, consumer: string, segment: string, table: string, batchSize = 100) {
  const [{ id }] = await home.query(
    `select segmenter.create_subscription(name => $1, consumer => $2, segments => array[$3], add_sql => $4, remove_sql => $5,
       batch_size => $6, syntax => 'altcraft') as id`,
    [name, consumer, segment, addInto(table), removeFrom(table), batchSize],
  )
  return String(id)
}

/** A pino logger whose lines (parsed, with the moment they were written) land in `lines`. */
function capturingLog(lines: Array<Record<string, any> & { at: number }>) {
  const stream = new Writable({
    write(chunk, _enc, done) {
      const at = performance.now()
      for (const line of String(chunk).split('\n')) if (line) lines.push({ ...JSON.parse(line), at })
      done()
    },
  })
  return pino({ level: 'warn' }, stream)
}

const ceiling = (attempt: number, base: number, cap: number) => Math.min(cap, base * 2 ** (attempt - 1))

test('retryDelay is full jitter: uniform in [0, min(cap, base * 2^(n-1))]', () => {
  const base = 400
  const cap = 1600
  for (const attempt of [1, 2, 3, 4, 10, 60]) {
    const top = ceiling(attempt, base, cap)
    const draws = Array.from({ length: 1000 }, () => retryDelay(attempt, base, cap))
    const min = Math.min(...draws)
    const max = Math.max(...draws)
    const mean = draws.reduce((a, b) => a + b, 0) / draws.length
    assert.ok(
      draws.every((d) => Number.isFinite(d) && d >= 0),
      `attempt ${attempt}: every delay >= 0`,
    )
    assert.ok(max <= top, `attempt ${attempt}: max ${max} <= ceiling ${top}`)
    // The lower half is drawn from too (an upper-half jitter never goes below top / 2).
    assert.ok(min < top / 4, `attempt ${attempt}: min ${min} < ceiling / 4 = ${top / 4}`)
    assert.ok(max > (top * 3) / 4, `attempt ${attempt}: max ${max} > 3/4 of the ceiling`)
    // Uniform: the mean of 1000 draws is within 5 standard errors (top / sqrt(12 * 1000)) of top / 2.
    assert.ok(Math.abs(mean - top / 2) < (5 * top) / Math.sqrt(12_000), `attempt ${attempt}: mean ${mean} near ${top / 2}`)
    const lowerQuarter = draws.filter((d) => d < top / 4).length
    assert.ok(lowerQuarter > 150 && lowerQuarter < 350, `attempt ${attempt}: ${lowerQuarter} of 1000 in the lowest quarter`)
  }
  // The ends of the range, with the random source pinned.
  assert.equal(
    retryDelay(3, base, cap, () => 0),
    0,
  )
  assert.equal(
    retryDelay(3, base, cap, () => 0.999999),
    1600,
  )
  assert.equal(
    retryDelay(1, base, cap, () => 0.5),
    200,
  )
  assert.equal(
    retryDelay(2, 500, 30_000, () => 0.5),
    500,
  )
  assert.equal(
    retryDelay(20, 500, 30_000, () => 0.5),
    15_000,
  )
})

test('an unreachable target is retried after its backoff, not at every NOTIFY or poll', async (t) => {
  const defer = deferrer(t)
  const home = await freshPg()
  defer(() => home.close())
  const up = await freshMysql()
  defer(() => up.close())
  await up.query('create table members (member varchar(64) not null)')
  await home.query(DDL)
  const [{ id: segmentId }] = await home.query(`select segmenter.create_segment('stream', 'seg') as id`)
  await home.query(`select segmenter.create_consumer('down', 'mysql', 'mysql', 'DOWN_URL')`)
  await home.query(`select segmenter.create_consumer('up', 'mysql', 'mysql', 'UP_URL')`)
  const downId = await subscribe(home, 'down_sub', 'down', 'stream', 'members')
  await subscribe(home, 'up_sub', 'up', 'stream', 'members') // a healthy one on the same changes
  const base = 400
  const cap = 1600
  const retries: number[] = [] // when each failed round of down_sub ended
  const lines: Array<Record<string, any> & { at: number }> = []
  const sidecar = await startTestSidecar(
    {
      databaseUrl: home.url,
      pollIntervalMs: 50,
      retryBaseMs: base,
      retryMaxMs: cap,
      log: capturingLog(lines),
      env: { ...process.env, DOWN_URL: CLOSED_PORT_URL, UP_URL: up.url },
      onRound: (id: string, result: RoundResult) => {
        if (id === downId && result.kind === 'retry') retries.push(performance.now())
      },
    },
    defer,
  )
  // A stream of changes: every insert is a NOTIFY and a pg-boss job for both subscriptions, and
  // the sweep finds down_sub pending at every poll.
  const durationMs = 8000
  const started = performance.now()
  let inserted = 0
  while (performance.now() - started < durationMs) {
    inserted++
    await home.query(`insert into seg (segment_id, id) values ($1, $2)`, [segmentId, `m${inserted}`])
    await sleep(100)
  }
  const elapsed = performance.now() - started
  await until('the healthy subscription has every member', async () => {
    const [{ n }] = await up.query('select count(*) as n from members')
    return Number(n) === inserted
  })
  await sidecar.stop()
  const [{ failed }] = await home.query(`select count(*)::int as failed from segmenter.log where subscription_id = $1 and not ok`, [downId])
  const waits = lines.filter((l) => l.msg === 'target unavailable; retrying' && l.subscription === downId)
  const summary = `${retries.length} failed rounds (${failed} failed log rows) in ${Math.round(elapsed)} ms; delays ${waits.map((w) => w.delayMs).join(', ')}`

  // Each wait is full jitter under its attempt's ceiling, attempts counting up from 1.
  assert.equal(waits.length, retries.length, summary)
  waits.forEach((w, i) => {
    assert.equal(w.attempt, i + 1, summary)
    assert.ok(w.delayMs >= 0 && w.delayMs <= ceiling(w.attempt, base, cap), `attempt ${w.attempt}: ${w.delayMs} ms; ${summary}`)
  })
  // Honoured: the next failed round came no earlier than the delay the previous one announced,
  // though NOTIFYs (every 100 ms) and polls (every 50 ms) woke the loop all the while.
  for (let i = 0; i + 1 < retries.length; i++) {
    const gap = retries[i + 1]! - waits[i]!.at
    assert.ok(
      gap >= waits[i]!.delayMs - 5,
      `retry ${i + 2} came ${Math.round(gap)} ms after a backoff of ${waits[i]!.delayMs} ms; ${summary}`,
    )
  }
  // The count: retries' ceilings are 400, 800, then 1600 ms, so the waits average 200, 400, then
  // 800 ms: about 11 rounds in 8 s. 24 or more would need 23 waits (mean 17.4 s, sd 2.1 s) to sum
  // to under 8.5 s, a 4-sigma event. Without the backoff honoured it is a round every ~100 ms.
  for (const [what, n] of [
    ['failed rounds', retries.length],
    ['failed log rows', failed],
  ] as const) {
    assert.ok(n >= 3, `${what}: at least 3; ${summary}`)
    assert.ok(n <= 24, `${what}: at most 24 in ${Math.round(elapsed)} ms; ${summary}`)
  }
  t.diagnostic(summary)
})

test('a successful round resets the backoff: the next outage starts again at attempt 1', async (t) => {
  const defer = deferrer(t)
  const home = await freshPg()
  defer(() => home.close())
  const server = await freshMariadbServer()
  defer(() => server.destroy())
  const admin = await mysql.createConnection(server.url)
  await admin.query('create database tgt')
  await admin.query('create table tgt.members (member varchar(64) not null)')
  await admin.end()
  const url = server.url.replace(/\/?$/, '/tgt')
  const count = async () => {
    const c = await mysql.createConnection(url)
    try {
      return Number(((await c.query('select count(*) as n from members')) as any)[0][0].n)
    } finally {
      await c.end()
    }
  }
  await home.query(DDL)
  const [{ id: segmentId }] = await home.query(`select segmenter.create_segment('flaky', 'seg') as id`)
  await home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'TARGET_URL')`)
  const subId = await subscribe(home, 'flaky_sub', 'maria', 'flaky', 'members')
  const lines: Array<Record<string, any> & { at: number }> = []
  await startTestSidecar(
    {
      databaseUrl: home.url,
      pollIntervalMs: 50,
      retryBaseMs: 100,
      retryMaxMs: 400,
      log: capturingLog(lines),
      env: { ...process.env, TARGET_URL: url },
    },
    defer,
  )
  const attempts = () => lines.filter((l) => l.msg === 'target unavailable; retrying' && l.subscription === subId).map((l) => l.attempt)
  const add = (from: number, to: number) =>
    home.query(`insert into seg (segment_id, id) select $1, 'm' || g from generate_series($2::int, $3::int) g`, [segmentId, from, to])

  await add(1, 10)
  await until('first members', async () => (await count()) === 10)
  await server.stop()
  await add(11, 20)
  await until('five failed rounds', async () => attempts().length >= 5, 30_000)
  await server.start()
  await until('caught up after the outage', async () => (await count()) === 20, 30_000)
  const first = attempts()
  assert.deepEqual(
    first,
    first.map((_, i) => i + 1),
    'attempts count up during the outage',
  )
  await server.stop()
  await add(21, 30)
  await until('a failed round after the success', async () => attempts().length > first.length, 30_000)
  assert.equal(attempts()[first.length], 1, `after a success the count starts over: ${attempts().join(', ')}`)
  await server.start()
  await until('caught up after the second outage', async () => (await count()) === 30, 30_000)
})

/** Run `node bin/segmenter.js run` (never npx: see the README) with `env`; stop() ends it. */
function runSidecar(env: NodeJS.ProcessEnv) {
  const child: ChildProcess = spawn(process.execPath, ['bin/segmenter.js', 'run'], {
    env: { ...process.env, SEGMENTER_HTTP_PORT: '0', SEGMENTER_LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let stderr = ''
  child.stderr!.on('data', (d) => {
    stderr += d
  })
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)))
  return {
    exited,
    stderr: () => stderr,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      if ((await Promise.race([exited.then(() => true), sleep(40_000).then(() => false)])) === false) {
        child.kill('SIGKILL')
        await exited
      }
    },
  }
}

const SUBSCRIPTIONS = 12
const MEMBERS = 300

/** 12 subscriptions on one MariaDB target, each into its own table, all due at once. */
async function manySubscriptions(defer: ReturnType<typeof deferrer>) {
  const home = await freshPg()
  defer(() => home.close())
  const target = await freshMysql()
  defer(() => target.close())
  await home.query(DDL)
  const [{ id: segmentId }] = await home.query(`select segmenter.create_segment('wide', 'seg') as id`)
  await home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'TARGET_URL')`)
  for (let i = 1; i <= SUBSCRIPTIONS; i++) {
    await target.query(`create table m${i} (member varchar(64) not null)`) // no unique key: a duplicate would show
    await subscribe(home, `sub${i}`, 'maria', 'wide', `m${i}`, 25)
  }
  const delivered = async () => {
    const counts: Array<{ n: number; d: number }> = []
    for (let i = 1; i <= SUBSCRIPTIONS; i++) {
      const [row] = await target.query(`select count(*) as n, count(distinct member) as d from m${i}`)
      counts.push({ n: Number(row.n), d: Number(row.d) })
    }
    return counts
  }
  // One statement: every subscription has work at the same moment.
  const insert = () => home.query(`insert into seg (segment_id, id) select $1, 'm' || g from generate_series(1, ${MEMBERS}) g`, [segmentId])
  return { home, target, delivered, insert }
}

for (const concurrency of [10, 64]) {
  test(`SEGMENTER_CONCURRENCY=${concurrency}: ${SUBSCRIPTIONS} subscriptions on one target all delivered exactly, without starving the home pool`, async (t) => {
    const defer = deferrer(t)
    const { home, target, delivered, insert } = await manySubscriptions(defer)
    // Before the sidecar starts: its first sweep finds every subscription due at once.
    await insert()
    const started = performance.now()
    const sidecar = runSidecar({
      DATABASE_URL: home.url,
      TARGET_URL: target.url,
      SEGMENTER_CONCURRENCY: String(concurrency),
      SEGMENTER_POLL_INTERVAL_MS: '100',
    })
    defer(() => sidecar.stop())
    const done = await Promise.race([
      until('every subscription delivered', async () => (await delivered()).every((c) => c.n >= MEMBERS), 60_000).then(
        () => true,
        () => false,
      ),
      sidecar.exited.then(() => false),
    ])
    const ms = performance.now() - started
    const counts = await delivered()
    assert.ok(
      done,
      `all delivered within 60 s of the start: ${JSON.stringify(counts)} after ${Math.round(ms)} ms; stderr: ${sidecar.stderr().slice(-2000)}`,
    )
    // Starved, a round's queries wait out the pool's 10 s checkout timeout and the round fails.
    assert.doesNotMatch(sidecar.stderr(), /timeout exceeded when trying to connect/)
    // A pool the server cannot hold is warned about at the start (64: 195 + 3 connections).
    const [{ allows }] = await home.query(
      `select current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int as allows`,
    )
    assert.equal(
      /more connections than the server allows/.test(sidecar.stderr()),
      poolSizeFor(concurrency) + 3 > allows,
      `the max_connections warning (server allows ${allows})`,
    )
    await sleep(500) // nothing more arrives
    assert.deepEqual(
      await delivered(),
      Array.from({ length: SUBSCRIPTIONS }, () => ({ n: MEMBERS, d: MEMBERS })),
      'each target table has every member exactly once',
    )
    t.diagnostic(`${SUBSCRIPTIONS} subscriptions delivered in ${Math.round(ms)} ms at concurrency ${concurrency}`)
  })
}

test('a sidecar given a pool smaller than its concurrency needs runs fewer rounds at once instead of starving', async (t) => {
  const defer = deferrer(t)
  const { home, target, delivered, insert } = await manySubscriptions(defer)
  const pool = createPool(home.url, 10) // what the CLI used for any concurrency before
  defer(() => endPool(pool))
  const lines: Array<Record<string, any> & { at: number }> = []
  const sidecar = await startSidecar({
    databaseUrl: home.url,
    pool,
    log: capturingLog(lines),
    pollIntervalMs: 100,
    concurrency: 10,
    env: { ...process.env, TARGET_URL: target.url },
  })
  defer(() => sidecar.stop())
  const started = performance.now()
  await insert()
  await until('every subscription delivered', async () => (await delivered()).every((c) => c.n >= MEMBERS), 60_000)
  const ms = performance.now() - started
  assert.ok(
    lines.some((l) => /pool too small/.test(l.msg)),
    'a warning says the pool is too small',
  )
  // Starved, rounds fail after waiting out the pool's 10 s checkout timeout (and are retried).
  const failed = lines.filter((l) => l.msg === 'delivery failed')
  assert.deepEqual(
    failed.map((l) => l.err?.message ?? l.err),
    [],
    'no round failed',
  )
  await sleep(500)
  assert.deepEqual(
    await delivered(),
    Array.from({ length: SUBSCRIPTIONS }, () => ({ n: MEMBERS, d: MEMBERS })),
    `each target table has every member exactly once (${Math.round(ms)} ms)`,
  )
})

test('SEGMENTER_CONCURRENCY outside 1-64 is a configuration error naming the variable and the range (exit 2)', async () => {
  assert.equal(poolSizeFor(1), 6)
  assert.equal(poolSizeFor(10), 33)
  assert.equal(poolSizeFor(64), 195)
  for (const ok of ['1', '4', '64']) assert.equal(loadConfig({ SEGMENTER_CONCURRENCY: ok }).concurrency, Number(ok))
  assert.equal(loadConfig({}).concurrency, 4)
  for (const bad of ['0', '65', '-1', '2.5', 'ten', '1e3']) {
    assert.throws(() => loadConfig({ SEGMENTER_CONCURRENCY: bad }), /SEGMENTER_CONCURRENCY must be an integer from 1 to 64/, bad)
  }
  // The CLI: refused before it connects anywhere (nothing listens at this DATABASE_URL).
  for (const bad of ['0', '65', 'ten']) {
    const run = runSidecar({ DATABASE_URL: 'postgres://postgres@127.0.0.1:1/none', SEGMENTER_CONCURRENCY: bad })
    const code = await Promise.race([run.exited, sleep(30_000).then(() => 'still running')])
    await run.stop()
    assert.equal(code, 2, `SEGMENTER_CONCURRENCY=${bad}: exit code; stderr: ${run.stderr()}`)
    assert.match(run.stderr(), new RegExp(`SEGMENTER_CONCURRENCY must be an integer from 1 to 64 \\(got ${bad}\\)`))
  }
})
