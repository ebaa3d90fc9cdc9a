// HTTP sink: a webhook or any REST API. Each batch is one request, rendered by a json-dialect
// template (src/render/json.ts: an optional request line, then the JSON body). A receiver has no
// transaction to share with a checkpoint, so the checkpoint is kept at home: the subscription's
// cursor, moved when the receiver answered 2xx. The guarantee is at least once, in order per
// subscription: a sidecar killed after a 2xx and before the cursor moved sends the batch again,
// and that replay is byte-identical (deliver/journal.ts records every send before it goes), with
// the same `webhook-id` / `Idempotency-Key`, so a receiver that remembers ids makes it exactly once.
//
// Each recorded request is its id on the first line, then the request as the template rendered it
// (journal.ts withRequestId): the id is the batch's (its extent), the same whether the batch went
// in a group or alone, first or again.
//
// Responses: 2xx delivered; 429, 503 (honouring Retry-After), other 5xx, 408 and timeouts are
// outages, retried here a few times with backoff and jitter (the same bytes, the same id), then
// handed to the sidecar's backoff; 410 holds the subscription (the receiver says the audience is
// gone); any other 4xx rejects the batch, which is split down to the member the receiver refuses,
// dead-lettered with the status and the response body.
import http from 'node:http'
import https from 'node:https'
import type pg from 'pg'
import { SegmenterError } from '../errors.js'
import { httpConsumerOptions, maskSecret, parseRequest, requestUrl, WebhookSigner, type HttpConsumerOptions } from '../http-request.js'
import type { Dialect } from '../render/index.js'
import { utf8 } from '../utf8.js'
import type { Checkpoint, HoldsSubscription, OpenTransaction, Sink, TargetCheckpoint } from './sink.js'

// The response body kept in an error (and so in a dead letter): enough to say why.
const ERROR_BODY_CHARS = 2000
// Retries of one request inside the sink before the round gives up to the sidecar's backoff.
const ATTEMPTS = 5
const BACKOFF_BASE_MS = 200
const BACKOFF_CAP_MS = 5_000
const MAX_ANSWERS_KEPT = 10_000
// A Retry-After longer than this is not slept through here: the round ends and the sidecar waits it.
const RETRY_AFTER_INLINE_MAX_MS = 60_000

/** The receiver's answer other than 2xx, or no answer (status 0: refused, reset, timed out). */
export class HttpError extends Error implements Partial<HoldsSubscription> {
  constructor(
    message: string,
    readonly httpStatus: number,
    /** Worth sending again as it is: an outage, not a rejection (isTransient). */
    readonly httpTransient: boolean,
    /** The receiver's Retry-After, in ms, when it gave one. */
    readonly retryAfterMs: number | null = null,
    cause?: unknown,
  ) {
    super(message, { cause })
    this.name = 'HttpError'
    // 410 Gone: the receiver says this endpoint or audience no longer exists; retrying cannot help.
    if (httpStatus === 410) this.holdHint = goneHint
  }
  holdHint?: (subscription: string) => string
}

const goneHint = (subscription: string) =>
  `the receiver answered 410 Gone: the endpoint or audience no longer exists there. Point the consumer at the right URL (segmenter.create_consumer) or drop the subscription; then select segmenter.resume('${subscription}'). Nothing was skipped: delivery resumes where it stopped`

/** Retry-After as milliseconds: delay-seconds or an HTTP-date (RFC 9110 10.2.3); null if absent or malformed. */
export function retryAfterMs(header: string | null, now = Date.now()): number | null {
  if (header === null) return null
  const v = header.trim()
  if (/^\d+$/.test(v)) return Number(v) * 1000
  const at = Date.parse(v)
  return Number.isNaN(at) ? null : Math.max(0, at - now)
}

export interface HttpSinkContext {
  pool: pg.Pool
  options: Record<string, unknown>
  env: NodeJS.ProcessEnv
  consumerId: string
  consumerName: string
}

/** A recorded request: its id, then the rendered request (what journal.ts withRequestId made). */
function splitRecorded(statement: string): { id: string; rendered: string } {
  const nl = statement.indexOf('\n')
  if (nl < 0 || !statement.startsWith('msg_')) throw new Error('http sink: a request without its id (a bug in the caller)')
  return { id: statement.slice(0, nl), rendered: statement.slice(nl + 1) }
}

/** The request headers of a consumer: its options' extra headers from the environment, checked at open. */
function extraHeaders(consumer: string, options: HttpConsumerOptions, env: NodeJS.ProcessEnv): Record<string, string> {
  const headers: Record<string, string> = {}
  for (const [name, variable] of Object.entries(options.headers)) {
    const value = env[variable]
    if (value === undefined)
      throw new SegmenterError(
        'CONFIG_INVALID',
        `consumer ${consumer}: header ${name} names environment variable ${variable}, which is not set`,
        {
          hint: `export ${variable}=... in the sidecar's environment and restart it, or change the consumer's options.headers`,
        },
      )
    headers[name] = value
  }
  return headers
}

export async function openHttpSink(url: string, dialect: Dialect, home: string, context: HttpSinkContext): Promise<Sink> {
  let options: HttpConsumerOptions
  try {
    options = httpConsumerOptions(context.options)
    requestUrl(url, '')
  } catch (err) {
    throw new SegmenterError('CONFIG_INVALID', `consumer ${context.consumerName}: ${(err as Error).message}`, {
      hint: "fix it with segmenter.create_consumer (an http consumer's URL is http(s)://host[:port]/path)",
    })
  }
  const headers = extraHeaders(context.consumerName, options, context.env)
  let signer: WebhookSigner | null = null
  if (options.signingSecretEnv !== null) {
    const secret = context.env[options.signingSecretEnv]
    if (!secret?.startsWith('whsec_'))
      throw new SegmenterError(
        'CONFIG_INVALID',
        `consumer ${context.consumerName}: signing_secret_env names ${options.signingSecretEnv}, which is ${secret === undefined ? 'not set' : `not a Standard Webhooks secret (${maskSecret(secret)})`}`,
        { hint: `export ${options.signingSecretEnv}=whsec_<base64 of 24 to 64 random bytes> in the sidecar's environment and restart it` },
      )
    try {
      signer = new WebhookSigner(secret)
    } catch (err) {
      throw new SegmenterError('CONFIG_INVALID', `consumer ${context.consumerName}: the signing secret is not valid base64 after whsec_`, {
        cause: err,
      })
    }
  }
  // Connections kept open between requests, one per request in flight (max_in_flight).
  const agent = new (url.startsWith('https:') ? https.Agent : http.Agent)({ keepAlive: true })
  const limited = options.ratePerSecond !== null || options.ratePerMinute !== null
  // Per subscription, the checkpoint as far as this sink knows: the home cursor it read, or the
  // end of what the receiver last accepted (the cursor follows when the batch is recorded).
  const at = new Map<string, Checkpoint>()
  const inFlight = new Set<AbortController>()
  // Per request id, what the receiver answered it, until the batch's log row takes it (answerTo).
  const answers = new Map<string, { http_status: number; attempts: number }>()

  /** Wait for a token of the consumer's bucket, shared with every sidecar (segmenter._take_token). */
  const takeToken = async () => {
    for (;;) {
      const { rows } = await context.pool.query<{ wait: number }>('select segmenter._take_token($1) as wait', [context.consumerId])
      const wait = rows[0]!.wait
      if (wait <= 0) return
      await sleep(wait)
    }
  }

  /** The receiver's Retry-After, for every sidecar and every subscription of the consumer (segmenter.retry_after). */
  const keepRetryAfter = async (e: HttpError) => {
    await context.pool.query({
      name: 'segmenter:retry_after',
      text: 'select segmenter._retry_after($1, $2, $3)',
      values: [context.consumerId, e.retryAfterMs, e.httpStatus],
    })
  }

  /** One attempt: the status of a 2xx answer, or an HttpError. */
  const attempt = async (id: string, method: string, target: string, body: Buffer | undefined): Promise<number> => {
    if (limited) await takeToken()
    const h: Record<string, string> = { ...headers, 'content-type': 'application/json', 'idempotency-key': id }
    if (signer) {
      const now = new Date()
      h['webhook-id'] = id
      h['webhook-timestamp'] = Math.floor(now.getTime() / 1000).toString()
      h['webhook-signature'] = signer.sign(id, now, body ?? '')
    }
    const abort = new AbortController()
    inFlight.add(abort)
    const timer = setTimeout(() => abort.abort(new Error(`no answer within ${options.timeoutMs} ms`)), options.timeoutMs)
    let response: Answer
    try {
      response = await exchange(agent, target, method, h, body, abort.signal)
    } catch (err) {
      const why = abort.signal.aborted ? String((abort.signal.reason as Error)?.message ?? abort.signal.reason) : (err as Error).message
      const code = (err as NodeJS.ErrnoException).code
      throw new HttpError(`${method} ${target}: ${why}${code && !why.includes(code) ? ` (${code})` : ''}`, 0, true, null, err)
    } finally {
      clearTimeout(timer)
      inFlight.delete(abort)
    }
    const { status, text } = response
    if (status >= 200 && status < 300) return status
    const transient = status === 408 || status === 429 || status >= 500
    const cut = text.length > ERROR_BODY_CHARS ? `${text.slice(0, ERROR_BODY_CHARS)}… (${text.length} chars)` : text
    throw new HttpError(
      `${method} ${target}: HTTP ${status}${response.statusText ? ` ${response.statusText}` : ''}: ${cut}`,
      status,
      transient,
      status === 429 || status === 503 ? retryAfterMs(response.retryAfter) : null,
    )
  }

  /** A request, sent again after an outage (the same bytes, the same id) a few times before giving up. */
  const send = async (statement: string) => {
    const { id, rendered } = splitRecorded(statement)
    const { method, path, body } = parseRequest(rendered, options.method)
    const target = requestUrl(url, path)
    // The body is the statement's end: its bytes are the end of the statement's, encoded once
    // (utf8.ts) for the journal, the signature, the length, the socket and every attempt.
    const head = statement.length - body.length
    const payload = method === 'GET' || body === '' ? undefined : utf8(statement).subarray(Buffer.byteLength(statement.slice(0, head)))
    for (let n = 1; ; n++) {
      try {
        const status = await attempt(id, method, target, payload)
        // Answers whose batch was never logged (its group failed later) must not pile up.
        if (answers.size >= MAX_ANSWERS_KEPT) answers.clear()
        answers.set(id, { http_status: status, attempts: n })
        return
      } catch (err) {
        const e = err as HttpError
        if (!(e instanceof HttpError) || !e.httpTransient) throw err
        // Kept at home first: every round of the consumer's subscriptions, in this sidecar or one
        // that takes over (this one killed while it waits), starts only once it has passed.
        if (e.retryAfterMs !== null) await keepRetryAfter(e)
        if (n >= ATTEMPTS || (e.retryAfterMs !== null && e.retryAfterMs > RETRY_AFTER_INLINE_MAX_MS)) throw err
        // The receiver's Retry-After exactly (no earlier), else exponential backoff with full jitter.
        await sleep(e.retryAfterMs ?? Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (n - 1)))
      }
    }
  }
  const sendAll = async (statements: string[]) => {
    try {
      for (const s of statements) await send(s)
    } catch (err) {
      if (err instanceof HttpError) throw err
      // Not the receiver's answer: a fault here must not pass for a rejection (which would
      // dead-letter every member); the round is retried and the error shown in status.
      throw new HttpError(`http sink: ${(err as Error)?.message ?? err}`, 0, true, null, err)
    }
  }

  const readCheckpoint = async (syncKey: string): Promise<TargetCheckpoint> => {
    const { rows } = await context.pool.query<{ pos: string; ord: number }>(
      'select cursor_pos as pos, cursor_ord as ord from segmenter.subscriptions where sync_key = $1',
      [syncKey],
    )
    if (!rows[0]) throw new Error(`http sink: no subscription with sync key ${syncKey}`)
    const cp = { pos: BigInt(rows[0].pos), ord: rows[0].ord }
    at.set(syncKey, cp)
    return { ...cp, home }
  }

  return {
    dialect,
    // A body of any size is one request; a receiver's own limit answers 413, which splits the batch.
    maxStatementBytes: Number.POSITIVE_INFINITY,
    maxApplyBytes: Number.POSITIVE_INFINITY,
    lanes: options.maxInFlight,
    // The receiver confirms each request on its own; what a checkpoint costs here is a home write,
    // off the critical path.
    groupsBatches: false,
    identifiesRequests: true,
    answerTo(statement) {
      const { id } = splitRecorded(statement)
      const answer = answers.get(id)
      answers.delete(id)
      return answer
    },
    checkpoint: readCheckpoint,
    checkpointAtHome: true,
    startFrom: (syncKey, cursor) => void at.set(syncKey, cursor),
    lastCommitted: (syncKey) => at.get(syncKey) ?? null,
    async apply(statements, syncKey, to) {
      try {
        await sendAll(statements)
      } catch (err) {
        at.delete(syncKey)
        throw err
      }
      at.set(syncKey, to)
    },
    // Sent at once; "committed" in order by the caller, which moves the home cursor.
    begin(statements): OpenTransaction {
      const executed = sendAll(statements)
      executed.catch(() => {})
      return {
        executed,
        async commit(syncKey, to) {
          await executed
          at.set(syncKey, to)
        },
        rollback: () =>
          executed.then(
            () => {},
            () => {},
          ),
      }
    },
    async close() {
      for (const a of inFlight) a.abort(new Error('sink closed'))
      agent.destroy()
    },
  }
}

/** What the receiver answered: the status, and enough of the body to say why when it is not 2xx. */
interface Answer {
  status: number
  statusText: string
  retryAfter: string | null
  text: string
}

// The body of an answer is read whole (so the connection can be reused) but kept only this far.
const ANSWER_KEPT_BYTES = 64 * 1024

/**
 * One request with node:http(s) over the sink's kept-alive connections. Not fetch(): its WHATWG
 * streams and header objects cost about 1 ms more per request on loopback (2.2 vs 1.0 ms p50,
 * 2026-12-01), which is most of a one-member batch's time at the receiver.
 */
function exchange(
  agent: http.Agent,
  target: string,
  method: string,
  headers: Record<string, string>,
  body: Buffer | undefined,
  signal: AbortSignal,
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const send = target.startsWith('https:') ? https.request : http.request
    const withLength = body === undefined ? headers : { ...headers, 'content-length': String(body.length) }
    const req = send(target, { method, headers: withLength, agent, signal }, (res) => {
      const chunks: Buffer[] = []
      let kept = 0
      res.on('data', (chunk: Buffer) => {
        if (kept < ANSWER_KEPT_BYTES) chunks.push(chunk)
        kept += chunk.length
      })
      res.on('error', reject)
      res.on('end', () => {
        const retryAfter = res.headers['retry-after']
        resolve({
          status: res.statusCode ?? 0,
          statusText: res.statusMessage ?? '',
          retryAfter: typeof retryAfter === 'string' ? retryAfter : null,
          text: Buffer.concat(chunks).toString('utf8'),
        })
      })
    })
    req.on('error', reject)
    req.end(body)
  })
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
