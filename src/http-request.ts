// What an HTTP consumer sends, decided before the sink touches the network: the request a
// rendered json-dialect template describes (method, URL below the consumer's, body) and the
// consumer's options with their defaults. The sink (src/sinks/http.ts) calls these; the home
// database checks the same options when they are written (db/0012_http.sql).
import { createHmac } from 'node:crypto'
import { Webhook } from 'standardwebhooks'
import { METHODS, splitRequest, TemplateError, type Method } from './render/index.js'

export { METHODS, type Method } from './render/index.js'

export interface HttpRequestParts {
  method: string
  /** The request target from the template's request line ("/path?query" or "?query"), '' when none. */
  path: string
  body: string
}

/**
 * Split a rendered json template into method, path and body. Without a request line the whole
 * text is the body and the method is `defaultMethod` (the consumer's `method` option). Throws
 * TemplateError for a request line that is malformed or would leave the consumer's URL (an
 * absolute URL, `//host`, a dot segment).
 */
export function parseRequest(rendered: string, defaultMethod: string): HttpRequestParts {
  const { method, path, body } = splitRequest(rendered)
  if (method === null && !(METHODS as readonly string[]).includes(defaultMethod))
    throw new TemplateError(`the default method "${defaultMethod}" is not one of ${METHODS.join(', ')}`)
  return { method: method ?? defaultMethod, path, body }
}

/**
 * The URL a request goes to: the consumer's URL with the template's path appended to its path
 * (not resolved against it: "/members" below https://api.example.com/v3/ is /v3/members) and the
 * template's query appended to its query. Always the consumer's origin; anything else is a bug,
 * and throws.
 */
export function requestUrl(consumerUrl: string, path: string): string {
  const base = new URL(consumerUrl)
  if (base.protocol !== 'http:' && base.protocol !== 'https:')
    throw new TypeError(`the consumer URL must be http:// or https://, not ${base.protocol}`)
  if (!path) return base.toString()
  const u = new URL(base.toString())
  u.hash = ''
  const q = path.indexOf('?')
  const p = q < 0 ? path : path.slice(0, q)
  const query = q < 0 ? '' : path.slice(q + 1)
  if (p) u.pathname = u.pathname.replace(/\/+$/, '') + p
  if (query) u.search = u.search ? `${u.search}&${query}` : `?${query}`
  if (u.origin !== base.origin)
    throw new Error(`internal error: the request path ${JSON.stringify(path)} changed the origin of the consumer URL`)
  return u.toString()
}

// ---------------------------------------------------------------------------------------------
// Consumer options (segmenter.consumers.options of a kind 'http' consumer)

export interface HttpConsumerOptions {
  /** Method when a template has no request line. (Default: POST) */
  readonly method: Method
  /** Extra headers: header name → the environment variable holding its value. (Default: none) */
  readonly headers: Readonly<Record<string, string>>
  /** The environment variable holding the Standard Webhooks secret (whsec_…); unsigned when null. (Default: null) */
  readonly signingSecretEnv: string | null
  /** Per request. (Default: 30000) */
  readonly timeoutMs: number
  /** Requests of one subscription in flight at once. (Default: 1) */
  readonly maxInFlight: number
  /** Token bucket, shared by every sidecar through segmenter._take_token. (Default: unlimited) */
  readonly ratePerSecond: number | null
  readonly ratePerMinute: number | null
}

export const HTTP_OPTION_DEFAULTS = {
  method: 'POST',
  headers: {},
  signingSecretEnv: null,
  timeoutMs: 30_000,
  maxInFlight: 1,
  ratePerSecond: null,
  ratePerMinute: null,
} as const satisfies HttpConsumerOptions

/**
 * The options of an http consumer row with defaults applied, frozen. The home already refused
 * malformed ones (db/0012_http.sql); this only guards against a row written around the API.
 */
export function httpConsumerOptions(raw: Record<string, unknown> | null | undefined): HttpConsumerOptions {
  const o = raw ?? {}
  const num = (k: string, ok: (n: number) => boolean): number | null => {
    const v = o[k]
    if (v === undefined || v === null) return null
    if (typeof v !== 'number' || !ok(v)) throw new TypeError(`consumer options.${k}: ${JSON.stringify(v)} is out of range`)
    return v
  }
  const method = o.method ?? HTTP_OPTION_DEFAULTS.method
  if (typeof method !== 'string' || !(METHODS as readonly string[]).includes(method))
    throw new TypeError(`consumer options.method: ${JSON.stringify(method)} is not one of ${METHODS.join(', ')}`)
  const headers = o.headers ?? {}
  if (typeof headers !== 'object' || Array.isArray(headers) || Object.values(headers).some((v) => typeof v !== 'string'))
    throw new TypeError('consumer options.headers: must map header names to environment variable names')
  const signing = o.signing_secret_env ?? null
  if (signing !== null && typeof signing !== 'string') throw new TypeError('consumer options.signing_secret_env: must be a variable name')
  return Object.freeze({
    method: method as Method,
    headers: Object.freeze({ ...(headers as Record<string, string>) }),
    signingSecretEnv: signing,
    timeoutMs: num('timeout_ms', (n) => Number.isInteger(n) && n > 0) ?? HTTP_OPTION_DEFAULTS.timeoutMs,
    maxInFlight: num('max_in_flight', (n) => Number.isInteger(n) && n >= 1 && n <= 64) ?? HTTP_OPTION_DEFAULTS.maxInFlight,
    ratePerSecond: num('rate_per_second', (n) => n > 0),
    ratePerMinute: num('rate_per_minute', (n) => n > 0),
  })
}

/** A secret shown in a preview or a log: its first characters only. */
export function maskSecret(value: string): string {
  return value.length <= 8 ? '****' : `${value.slice(0, 4)}…(${value.length} chars)`
}

/**
 * Standard Webhooks signing (the `standardwebhooks` package: it reads the whsec_ secret, and its
 * verify() accepts what this signs), with the HMAC-SHA256 computed by node:crypto: the package's
 * own sign() hashes in JavaScript, about 60 times slower (0.4 of the sidecar's 2.8 µs per member
 * of a 10,000-member body, 2026-12-01). The same key, the same bytes, the same header value
 * (test/http_render.test.ts compares the two).
 */
export class WebhookSigner extends Webhook {
  private readonly hmacKey: Buffer
  constructor(secret: string) {
    super(secret)
    // The key the package decoded from the secret (a private field of its class).
    this.hmacKey = Buffer.from((this as unknown as { key: Uint8Array }).key)
  }
  override sign(msgId: string, timestamp: Date, payload: string | Buffer): string {
    const seconds = Math.floor(timestamp.getTime() / 1000)
    return `v1,${createHmac('sha256', this.hmacKey).update(`${msgId}.${seconds}.`).update(payload).digest('base64')}`
  }
}
