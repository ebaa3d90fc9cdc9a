// HTTP consumers, before anything is sent: create_consumer's kind/dialect rules and the options it
// checks (db/0012_http.sql), their TS twin with defaults (src/http-request.ts), the shared token
// bucket (segmenter._take_token) under two concurrent connections, and the fake receiver the
// delivery tests use (test/harness/receiver.ts).
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import pg from 'pg'
import { HTTP_OPTION_DEFAULTS, httpConsumerOptions } from '../src/http-request.js'
import { freshPg, type FreshPg } from './harness/db.js'
import { signedHeaders, startReceiver } from './harness/receiver.js'

async function home(t: TestContext): Promise<FreshPg> {
  const db = await freshPg()
  t.after(() => db.close())
  return db
}

async function refused(db: FreshPg, sql: string, params: unknown[], code: string, message: RegExp, hint?: RegExp) {
  await assert.rejects(db.query(sql, params), (e: { code?: string; message: string; hint?: string }) => {
    assert.equal(e.code, code, `${e.code}: ${e.message}`)
    assert.match(e.message, message)
    assert.ok(e.hint && e.hint.length > 5, `a hint for: ${e.message}`)
    if (hint) assert.match(e.hint, hint)
    return true
  })
}

const consumer = `select segmenter.create_consumer('hook', $1, $2, 'HOOK_URL', $3::jsonb)`

test('create_consumer: kind http takes dialect json, and json is only for http', async (t) => {
  const db = await home(t)
  await db.query(consumer, ['http', 'json', '{}'])
  const [row] = await db.query(`select kind, dialect, dsn_env, options from segmenter.consumers where name = 'hook'`)
  assert.deepEqual(row, { kind: 'http', dialect: 'json', dsn_env: 'HOOK_URL', options: {} })
  await refused(db, consumer, ['http', 'mysql', '{}'], 'SG012', /^dialect: an http consumer's templates render JSON/, /dialect => 'json'/)
  await refused(db, consumer, ['mysql', 'json', '{}'], 'SG012', /^dialect: json is the dialect of http consumers/, /dialect => 'mysql'/)
  await refused(db, consumer, ['clickhouse', 'json', '{}'], 'SG012', /^dialect: json/, /dialect => 'clickhouse'/)
  await refused(db, consumer, ['postgres', 'json', '{}'], 'SG012', /^dialect: json/)
  await refused(db, consumer, ['http', 'xml', '{}'], 'SG007', /^dialect: 'xml' is not a known dialect/, /json/)
  await refused(db, consumer, ['webhook', 'json', '{}'], 'SG012', /^kind: 'webhook'/, /'http'/)
  await refused(db, `select segmenter.create_consumer('hook', 'http', 'json', 'https://x.example/hook')`, [], 'SG012', /^dsn_env: /, /URL/)
})

test('http consumer options: valid ones are stored, each bad one is refused naming the option and the fix', async (t) => {
  const db = await home(t)
  const good = {
    method: 'PUT',
    headers: { Authorization: 'CRM_AUTH', 'X-Api-Key': 'CRM_KEY' },
    signing_secret_env: 'CRM_WEBHOOK_SECRET',
    timeout_ms: 5000,
    max_in_flight: 4,
    rate_per_second: 2.5,
    rate_per_minute: 100,
  }
  await db.query(consumer, ['http', 'json', JSON.stringify(good)])
  const [{ options }] = await db.query(`select options from segmenter.consumers where name = 'hook'`)
  assert.deepEqual(options, good)
  assert.deepEqual(httpConsumerOptions(options), {
    method: 'PUT',
    headers: good.headers,
    signingSecretEnv: 'CRM_WEBHOOK_SECRET',
    timeoutMs: 5000,
    maxInFlight: 4,
    ratePerSecond: 2.5,
    ratePerMinute: 100,
  })
  assert.ok(Object.isFrozen(httpConsumerOptions({})))
  assert.deepEqual(httpConsumerOptions({}), HTTP_OPTION_DEFAULTS)
  assert.equal(HTTP_OPTION_DEFAULTS.method, 'POST')
  assert.equal(HTTP_OPTION_DEFAULTS.timeoutMs, 30000)
  assert.equal(HTTP_OPTION_DEFAULTS.maxInFlight, 1)

  const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
  const bad: Array<[unknown, RegExp, RegExp?]> = [
    [{ method: 'post' }, /^options\.method: "post" is not an HTTP method/, /capitals/],
    [{ method: 'TRACE' }, /^options\.method/],
    [{ method: 1 }, /^options\.method/],
    [{ headers: ['A'] }, /^options\.headers: must be an object/],
    [{ headers: { 'Bad Header': 'X' } }, /^options\.headers: 'Bad Header' is not an HTTP header name/],
    [{ headers: { 'Content-Type': 'X' } }, /^options\.headers: Content-Type is set by the sidecar/],
    [{ headers: { 'Webhook-Signature': 'X' } }, /set by the sidecar/],
    [{ headers: { A: 'X', a: 'Y' } }, /given twice/],
    [
      { headers: { Authorization: 'Bearer abc.def' } },
      /^options\.headers\.Authorization: 'Bear…' is not the name of an environment variable; it looks like a secret value/,
    ],
    [{ headers: { Authorization: 7 } }, /^options\.headers\.Authorization: must be the name of an environment variable/],
    [{ headers: { 'X-Key': 'sk_live_51HxYz' } }, /looks like a secret/],
    [{ headers: { 'X-Key': '9f86d081884c7d659a2feaa0c55ad015' } }, /looks like a secret/],
    [
      { signing_secret_env: SECRET },
      /^options\.signing_secret_env: 'whse…' is not the name of an environment variable; it looks like a secret/,
      /whsec_/,
    ],
    [{ signing_secret_env: 'my secret' }, /^options\.signing_secret_env/],
    [{ timeout_ms: 0 }, /^options\.timeout_ms: 0 is not a positive whole number/],
    [{ timeout_ms: 1.5 }, /^options\.timeout_ms/],
    [{ timeout_ms: '100' }, /^options\.timeout_ms/],
    [{ max_in_flight: 0 }, /^options\.max_in_flight: 0 is not a whole number from 1 to 64/],
    [{ max_in_flight: 65 }, /^options\.max_in_flight/],
    [{ rate_per_second: 0 }, /^options\.rate_per_second: 0 is not a positive number/],
    [{ rate_per_minute: -1 }, /^options\.rate_per_minute/],
    [{ rate_per_minute: 'fast' }, /^options\.rate_per_minute/],
    [{ lanes: 2 }, /^options: 'lanes' is not an option of an http consumer/, /for SQL consumers/],
    [{ retries: 2 }, /^options: 'retries' is not an option of an http consumer/, /signing_secret_env/],
  ]
  for (const [o, message, hint] of bad) {
    await refused(db, consumer, ['http', 'json', JSON.stringify(o)], 'SG012', message, hint)
    // The secret itself never appears in the error.
    await db.query(consumer, ['http', 'json', JSON.stringify(o)]).catch((e: Error & { hint?: string; detail?: string }) => {
      assert.ok(!`${e.message} ${e.hint} ${e.detail}`.includes(SECRET.slice(8)), e.message)
    })
  }
  // The options of one kind are not another's; a direct UPDATE is refused too (the constraint).
  await refused(
    db,
    `select segmenter.create_consumer('db', 'mysql', 'mysql', 'DB_URL', '{"method": "POST"}')`,
    [],
    'SG012',
    /'method' is an option of http consumers/,
  )
  await db.query(`select segmenter.create_consumer('db', 'mysql', 'mysql', 'DB_URL', '{"lanes": 2}')`)
  await refused(db, `update segmenter.consumers set options = '{"max_in_flight": 100}' where name = 'hook'`, [], 'SG012', /max_in_flight/)
  await refused(db, `update segmenter.consumers set options = '{"lanes": 99}' where name = 'db'`, [], 'SG012', /lanes/)
})

test('subscriptions of an http consumer: templates are checked for json when written', async (t) => {
  const db = await home(t)
  await db.query(`create table public.members (segment_id uuid not null, id varchar, email varchar,
    actual_begin timestamp not null default now(), actual_end timestamp not null default 'infinity', processed timestamp not null default now())`)
  await db.query(`select segmenter.create_segment('vip', 'public.members')`)
  await db.query(consumer, ['http', 'json', '{}'])
  const sub = `select segmenter.create_subscription(name => 's', consumer => 'hook', segments => array['vip'], syntax => 'altcraft', add_sql => $1, remove_sql => $2)`
  const add = '{"members": [{for $i, $m = $batch}{"id": {$m.id}, "email": {$m.email}}{autocomma}{end}]}'
  await db.query('begin')
  await db.query(sub, [add, 'DELETE /lists/{audience}/members\n\n{"ids": [{batch_in "id"}]}'])
  await db.query('rollback')
  await refused(
    db,
    sub,
    ['{"name": "{segment_name}"}', add],
    'SG010',
    /^add_sql: \{segment_name\} is inside a JSON string/,
    /remove the quotes/,
  )
  await refused(
    db,
    sub,
    [add, '{"members": [{for $i, $m = $batch}{"id": {$m.id}}{end}]}'],
    'SG010',
    /^remove_sql: the body is not JSON when rendered for a sample batch/,
  )
  await refused(
    db,
    sub,
    [add, 'POST https://evil.example/x\n\n{}'],
    'SG010',
    /^remove_sql: the request line "POST https:\/\/evil.example\/x" does not start its path/,
  )
  await refused(db, sub, [add, '{"m": [{for $i, $m = $batch}{"x": {$m.nosuch}}{autocomma}{end}]}'], 'SG010', /member field 'nosuch'/)
})

// ---------------------------------------------------------------------------------------------
// The token bucket

test('_take_token: no limit is free; per-second and per-minute buckets; 0 or the wait in ms', async (t) => {
  const db = await home(t)
  const [{ id }] = await db.query(`select segmenter.create_consumer('hook', 'http', 'json', 'HOOK_URL') as id`)
  const take = async () => Number((await db.query(`select segmenter._take_token(consumer_id => $1::bigint) as w`, [id]))[0].w)
  for (let i = 0; i < 50; i++) assert.equal(await take(), 0)
  assert.deepEqual(await db.query('select * from segmenter.rate_buckets'), [], 'no bucket without a limit')

  await db.query(`select segmenter.create_consumer('hook', 'http', 'json', 'HOOK_URL', '{"rate_per_minute": 5}')`)
  const waits: number[] = []
  for (let i = 0; i < 7; i++) waits.push(await take())
  assert.equal(waits[0], 0, 'the first goes at once')
  // No burst: requests are spaced 60 s / 5 apart, so no minute ever sees more than 5.
  for (const w of waits.slice(1)) assert.ok(w > 11_000 && w <= 12_000, `then about 12 s for the next token: ${waits}`)

  await db.query(
    `select segmenter.create_consumer('hook', 'http', 'json', 'HOOK_URL', '{"rate_per_second": 100000, "rate_per_minute": 6000000}')`,
  )
  await db.query('delete from segmenter.rate_buckets')
  let granted = 0
  for (let i = 0; i < 300; i++) if ((await take()) === 0) granted++
  assert.ok(granted >= 290, `a high limit does not get in the way: ${granted}/300`)
})

test('_take_token holds across two concurrent connections: over 3 s at 20/s, at most 20*3 + 1 granted', async (t) => {
  const db = await home(t)
  const [{ id }] = await db.query(`select segmenter.create_consumer('hook', 'http', 'json', 'HOOK_URL', '{"rate_per_second": 20}') as id`)
  const clients = [new pg.Client({ connectionString: db.url }), new pg.Client({ connectionString: db.url })]
  for (const c of clients) await c.connect()
  const end = Date.now() + 3000
  const grants: number[] = [0, 0]
  try {
    await Promise.all(
      clients.map(async (c, k) => {
        while (Date.now() < end) {
          const { rows } = await c.query(`select segmenter._take_token(consumer_id => $1::bigint) as w`, [id])
          const w = Number(rows[0].w)
          if (w === 0) grants[k]!++
          else await new Promise((r) => setTimeout(r, Math.min(w, Math.max(0, end - Date.now()))))
        }
      }),
    )
  } finally {
    await Promise.all(clients.map((c) => c.end())) // before the database is dropped
  }
  const total = grants[0]! + grants[1]!
  assert.ok(total <= 20 * 3 + 1, `granted ${total} (${grants.join(' + ')})`)
  assert.ok(total >= 20 * 3 - 5, `and the rate is reached: ${total}`)
  assert.ok(grants[0]! > 10 && grants[1]! > 10, `both connections got tokens: ${grants.join(', ')}`)
})

// ---------------------------------------------------------------------------------------------
// The receiver

const SECRET = 'whsec_' + Buffer.from('0123456789abcdef0123456789abcdef').toString('base64')

async function post(url: string, body: string, headers: Record<string, string> = {}, signal?: AbortSignal) {
  const r = await fetch(url + '/hook', { method: 'POST', body, headers: { 'content-type': 'application/json', ...headers }, signal })
  return { status: r.status, body: await r.text(), retryAfter: r.headers.get('retry-after') }
}

test('receiver: verifies Standard Webhooks signatures and records every request', async (t) => {
  const rx = await startReceiver({ secret: SECRET })
  t.after(() => rx.close())
  const body = '{"members": [{"id": "a"}]}'
  assert.equal((await post(rx.url, body, signedHeaders(SECRET, 'msg_1', body))).status, 200)
  assert.equal((await post(rx.url, body, signedHeaders(SECRET, 'msg_1', body))).status, 200, 'a duplicate is fine')
  const forged = { ...signedHeaders(SECRET, 'msg_2', body), 'webhook-signature': 'v1,' + Buffer.alloc(32).toString('base64') }
  const bad = await post(rx.url, body, forged)
  assert.equal(bad.status, 400)
  assert.match(JSON.parse(bad.body).error, /signature/)
  const old = await post(rx.url, body, signedHeaders(SECRET, 'msg_3', body, new Date(Date.now() - 6 * 60_000)))
  assert.equal(old.status, 400, 'timestamps older than 5 minutes are refused')
  assert.equal((await post(rx.url, body)).status, 400, 'unsigned')
  assert.equal((await post(rx.url, body, { ...signedHeaders(SECRET, 'msg_4', body), 'content-type': 'text/plain' })).status, 415)
  assert.equal((await post(rx.url, '{"a":', signedHeaders(SECRET, 'msg_5', '{"a":'))).status, 400)
  assert.deepEqual(
    rx.accepted().map((a) => [a.id, a.body]),
    [['msg_1', body]],
  )
  assert.deepEqual(
    rx.requests.map((r) => [r.id, r.attempt, r.status]),
    [
      ['msg_1', 1, 200],
      ['msg_1', 2, 200],
      ['msg_2', 1, 400],
      ['msg_3', 1, 400],
      [rx.requests[4]!.id, 1, 400],
      ['msg_4', 1, 415],
      ['msg_5', 1, 400],
    ],
  )
  assert.match(rx.requests[0]!.timestamp ?? '', /^\d+$/)
  assert.equal(rx.requests[0]!.body, body)
  assert.equal(rx.requests[0]!.headers['webhook-id'], 'msg_1')
  assert.deepEqual(
    rx.violations.map((v) => v.kind),
    ['signature', 'signature', 'signature', 'content-type', 'json'],
  )
})

test('receiver: fault knobs (503 on first attempts, 429 + Retry-After kept or not, a rejected member, 410, a stall)', async (t) => {
  const rx = await startReceiver({ failFirst: 1 })
  t.after(() => rx.close())
  const body = (id: string) => JSON.stringify({ members: [{ id }] })
  assert.equal((await post(rx.url, body('a'), { 'idempotency-key': 'k1' })).status, 503)
  assert.equal((await post(rx.url, body('a'), { 'idempotency-key': 'k1' })).status, 200, 'only the first attempt fails')
  assert.equal((await post(rx.url, body('b'), { 'idempotency-key': 'k1' })).status, 200)
  assert.deepEqual(
    rx.violations.map((v) => v.kind),
    ['retry-differs'],
    'a retry must be byte-identical',
  )

  rx.setOptions({ failFirst: 0, rateLimit: 1, retryAfterSeconds: 1 })
  const limited = await post(rx.url, body('c'), { 'idempotency-key': 'k2' })
  assert.deepEqual([limited.status, limited.retryAfter], [429, '1'])
  assert.equal((await post(rx.url, body('c'), { 'idempotency-key': 'k2' })).status, 429, 'too early: a violation')
  assert.equal(rx.violations.at(-1)!.kind, 'retry-after')
  await new Promise((r) => setTimeout(r, 1050))
  assert.equal((await post(rx.url, body('c'), { 'idempotency-key': 'k2' })).status, 200, 'at most two 429s per id')
  assert.equal(rx.violations.length, 2, 'kept this time')

  rx.setOptions({ rateLimit: 0, rejectMembers: ['bad'] })
  const rejected = await post(rx.url, JSON.stringify({ members: [{ id: 'ok' }, { id: 'bad' }] }), { 'idempotency-key': 'k3' })
  assert.equal(rejected.status, 400)
  assert.deepEqual(JSON.parse(rejected.body), { error: 'member bad is rejected', member: 'bad' })
  assert.equal((await post(rx.url, body('ok'), { 'idempotency-key': 'k4' })).status, 200)

  rx.setOptions({ gone: true })
  assert.equal((await post(rx.url, body('z'), { 'idempotency-key': 'k5' })).status, 410)
  rx.setOptions({ gone: false, stallMs: Infinity })
  await assert.rejects(post(rx.url, body('s'), { 'idempotency-key': 'k6' }, AbortSignal.timeout(300)), /abort|timeout/i)
  rx.setOptions({ stallMs: 0 })
  const stalled = rx.requests.at(-1)!
  assert.deepEqual([stalled.id, stalled.status, stalled.answered], ['k6', 200, false])
  // k6 was applied; its answer never came, so a client sends it again (and it is a duplicate).
  assert.deepEqual(
    rx.accepted().map((a) => a.id),
    ['k1', 'k2', 'k4', 'k6'],
  )
})
