// A fake webhook receiver on 127.0.0.1 (node:http) that holds a client to the Standard Webhooks
// contract (https://www.standardwebhooks.com/) and lets a test inject the faults real receivers
// produce. The real services are outside the build machine; this is the one HTTP target tests use.
//
// Contract checked on every request, each breach answered like a strict receiver would and
// recorded in `violations`:
//   - Content-Type application/json and a body that parses (415 / 400);
//   - with a secret: webhook-id, webhook-timestamp (5 minutes' tolerance) and webhook-signature,
//     verified with the `standardwebhooks` package, as receivers do (400 for a bad signature);
//   - a retry (same webhook-id) is byte-identical to the first attempt;
//   - after a 429 with Retry-After: N, the same id does not come back before N seconds.
// Faults (setOptions changes them while running): a fraction of first attempts answered 503, a
// fraction of requests answered 429 with Retry-After, a member id whose requests are rejected with
// 400 and a JSON error body, 410 for everything, and a stall before answering (timeouts).
import { createHash } from 'node:crypto'
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { Webhook } from 'standardwebhooks'

export interface ReceiverOptions {
  /** The Standard Webhooks secret (whsec_…); when set, every request must be signed with it. */
  secret?: string
  /** Fraction (0..1) of webhook-ids whose first attempt is answered 503. (Default: 0) */
  failFirst?: number
  /** Fraction (0..1) of requests answered 429 with `Retry-After: retryAfterSeconds`; at most `rateLimitTimes` per id. (Default: 0) */
  rateLimit?: number
  /** (Default: 2) */
  rateLimitTimes?: number
  /** (Default: 1) */
  retryAfterSeconds?: number
  /** Answer 503 with this Retry-After (seconds) to those first attempts. (Default: none) */
  failRetryAfterSeconds?: number
  /** Requests whose body holds one of these member ids (any JSON string equal to it) get 400 and a JSON error. */
  rejectMembers?: string[]
  /** Answer 410 Gone to everything. (Default: false) */
  gone?: boolean
  /** Hold every request this long before answering; Infinity never answers. (Default: 0) */
  stallMs?: number
  /** Seeds the choice of which ids fail, so a run can be repeated. (Default: 1) */
  seed?: number
}

export interface ReceivedRequest {
  /** webhook-id, else Idempotency-Key, else a hash of the body. */
  id: string
  method: string
  path: string
  /** webhook-timestamp as sent (Unix seconds), if any. */
  timestamp: string | undefined
  headers: IncomingHttpHeaders
  body: string
  /** Arrival, Date.now(). */
  at: number
  /** When the connection it came on was accepted, Date.now(): which client process sent it. */
  connectedAt: number
  /** 1 for the first request with this id. */
  attempt: number
  /** The answer decided (written at once, or after the stall). */
  status: number
  /** Whether the answer was written (false while stalled, or when the client left first). */
  answered: boolean
  /** Why it was not accepted, if it was not. */
  reason?: string
}

export interface Violation {
  kind: 'content-type' | 'json' | 'signature' | 'retry-differs' | 'retry-after'
  id: string
  at: number
  detail: string
}

export interface AcceptedWebhook {
  id: string
  body: string
  /** The first 2xx answer for the id. */
  at: number
}

export interface Receiver {
  url: string
  /** Every request, in arrival order. */
  readonly requests: ReceivedRequest[]
  /** Every breach of the contract by the client, in arrival order. */
  readonly violations: Violation[]
  /**
   * The distinct ids answered 2xx, in the order of their first acceptance: what the receiver
   * applied, also when the client timed out before the answer came (it then sends the id again).
   */
  accepted(): AcceptedWebhook[]
  setOptions(options: Partial<ReceiverOptions>): void
  close(): Promise<void>
}

/** A deterministic number in [0, 1) for a key. */
function chance(seed: number, key: string): number {
  return createHash('sha1').update(`${seed}\0${key}`).digest().readUInt32BE(0) / 2 ** 32
}

function holdsString(v: unknown, wanted: ReadonlySet<string>): string | undefined {
  if (typeof v === 'string') return wanted.has(v) ? v : undefined
  if (Array.isArray(v)) {
    for (const x of v) {
      const hit = holdsString(x, wanted)
      if (hit !== undefined) return hit
    }
  } else if (v && typeof v === 'object')
    for (const x of Object.values(v)) {
      const hit = holdsString(x, wanted)
      if (hit !== undefined) return hit
    }
  return undefined
}

export async function startReceiver(initial: ReceiverOptions = {}): Promise<Receiver> {
  let options: ReceiverOptions = { ...initial }
  let verifier = options.secret ? new Webhook(options.secret) : undefined
  const requests: ReceivedRequest[] = []
  const violations: Violation[] = []
  const firstBody = new Map<string, string>()
  const attempts = new Map<string, number>()
  const limited = new Map<string, number>() // 429s given per id
  const notBefore = new Map<string, number>() // id → when Retry-After allows it back
  const accepted = new Map<string, AcceptedWebhook>()
  const sockets = new Set<Socket>()
  const connectedAt = new WeakMap<Socket, number>()
  const stalled = new Set<ServerResponse>()

  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const at = Date.now()
      const body = Buffer.concat(chunks).toString('utf8')
      const h = req.headers
      const header = (n: string) => (Array.isArray(h[n]) ? (h[n] as string[])[0] : (h[n] as string | undefined))
      const id = header('webhook-id') ?? header('idempotency-key') ?? 'sha256:' + createHash('sha256').update(body).digest('hex')
      const attempt = (attempts.get(id) ?? 0) + 1
      attempts.set(id, attempt)
      const rec: ReceivedRequest = {
        id,
        method: req.method ?? '',
        path: req.url ?? '',
        timestamp: header('webhook-timestamp'),
        headers: h,
        body,
        at,
        connectedAt: connectedAt.get(req.socket) ?? at,
        attempt,
        status: 0,
        answered: false,
      }
      requests.push(rec)
      const violation = (kind: Violation['kind'], detail: string) => violations.push({ kind, id, at, detail })

      // Checked on every attempt, whatever the answer: these are the client's promises.
      const first = firstBody.get(id)
      if (first === undefined) firstBody.set(id, body)
      else if (first !== body)
        violation('retry-differs', `attempt ${attempt} of ${id} differs from the first (${first.length} vs ${body.length} bytes)`)
      const allowed = notBefore.get(id)
      if (allowed !== undefined && at < allowed)
        violation('retry-after', `${id} came back ${allowed - at} ms before its Retry-After elapsed`)

      const answer = (status: number, payload: unknown, reason?: string, extra: Record<string, string> = {}) => {
        rec.status = status
        rec.reason = reason
        if (status >= 200 && status < 300 && !accepted.has(id)) accepted.set(id, { id, body, at })
        const send = () => {
          stalled.delete(res)
          if (res.destroyed) return
          res.writeHead(status, { 'content-type': 'application/json', ...extra })
          res.end(JSON.stringify(payload))
          rec.answered = true
        }
        const stall = options.stallMs ?? 0
        if (stall <= 0) return send()
        stalled.add(res)
        if (Number.isFinite(stall)) setTimeout(send, stall)
      }

      if (options.gone) return answer(410, { error: 'gone' }, 'gone')
      const type = header('content-type') ?? ''
      if (!/^application\/json\s*(;|$)/i.test(type)) {
        violation('content-type', `Content-Type ${JSON.stringify(type)}`)
        return answer(415, { error: 'Content-Type must be application/json' }, 'content-type')
      }
      let parsed: unknown
      try {
        parsed = JSON.parse(body)
      } catch (e) {
        violation('json', (e as Error).message)
        return answer(400, { error: `the body is not JSON: ${(e as Error).message}` }, 'json')
      }
      if (verifier) {
        try {
          verifier.verify(body, {
            'webhook-id': header('webhook-id') ?? '',
            'webhook-timestamp': header('webhook-timestamp') ?? '',
            'webhook-signature': header('webhook-signature') ?? '',
          })
        } catch (e) {
          violation('signature', (e as Error).message)
          return answer(400, { error: `signature: ${(e as Error).message}` }, 'signature')
        }
      }
      const seed = options.seed ?? 1
      if (
        (options.rateLimit ?? 0) > 0 &&
        (limited.get(id) ?? 0) < (options.rateLimitTimes ?? 2) &&
        chance(seed, `429\0${id}\0${attempt}`) < options.rateLimit!
      ) {
        const s = options.retryAfterSeconds ?? 1
        limited.set(id, (limited.get(id) ?? 0) + 1)
        notBefore.set(id, at + s * 1000)
        return answer(429, { error: 'slow down' }, 'rate-limited', { 'retry-after': String(s) })
      }
      if (attempt === 1 && (options.failFirst ?? 0) > 0 && chance(seed, `503\0${id}`) < options.failFirst!) {
        const s = options.failRetryAfterSeconds
        if (s !== undefined) notBefore.set(id, at + s * 1000)
        return answer(503, { error: 'unavailable' }, 'unavailable', s === undefined ? {} : { 'retry-after': String(s) })
      }
      const rejected = options.rejectMembers?.length ? holdsString(parsed, new Set(options.rejectMembers)) : undefined
      if (rejected !== undefined) return answer(400, { error: `member ${rejected} is rejected`, member: rejected }, 'rejected')
      answer(200, { ok: true })
    })
  })
  server.on('connection', (s: Socket) => {
    sockets.add(s)
    connectedAt.set(s, Date.now())
    s.on('close', () => sockets.delete(s))
  })
  server.keepAliveTimeout = 30_000
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const { port } = server.address() as AddressInfo

  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    violations,
    accepted: () => [...accepted.values()],
    setOptions(o) {
      options = { ...options, ...o }
      if ('secret' in o) verifier = options.secret ? new Webhook(options.secret) : undefined
    },
    async close() {
      for (const r of stalled) r.destroy()
      const closed = new Promise<void>((resolve) => server.close(() => resolve()))
      for (const s of sockets) s.destroy()
      await closed
    },
  }
}

/** The Standard Webhooks headers for a body, as a correct sender writes them (for tests of the receiver itself). */
export function signedHeaders(secret: string, id: string, body: string, when = new Date()): Record<string, string> {
  return {
    'webhook-id': id,
    'webhook-timestamp': String(Math.floor(when.getTime() / 1000)),
    'webhook-signature': new Webhook(secret).sign(id, when, body),
  }
}
