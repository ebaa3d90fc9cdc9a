// Render a subscription's templates for a sample of current members without executing anything:
// what `segmenter preview` prints, and how a template is checked against real rows before use.
import type pg from 'pg'
import { batchOf, positionVersion, type PendingEvent } from './batch.js'
import { fromPgError, SegmenterError } from './errors.js'
import { compileTemplate, type Dialect } from './render/index.js'
import { httpConsumerOptions, maskSecret, parseRequest, requestUrl } from './http-request.js'
import { loadMemberRows, loadSegments, membersOf } from './read.js'

export interface Preview {
  subscription: string
  segment: string
  dialect: Dialect
  members: number
  /** The `version` rendered: the one a batch starting right after the subscription's cursor carries. */
  version: string
  statements: Record<string, string | null>
  /** An http consumer's: each template's request as it would be sent (secrets masked). */
  requests?: Record<string, PreviewRequest | null>
}

export interface PreviewRequest {
  method: string
  url: string
  headers: Record<string, string>
  body: string
}

/**
 * The request an http consumer would send for a rendered template: the URL from the consumer's
 * variable in this environment (else named), extra header values masked, the signature headers
 * described (they are made at send time).
 */
function previewRequest(
  rendered: string,
  consumer: { dsn_env: string; options: Record<string, unknown> },
  env = process.env,
): PreviewRequest {
  const options = httpConsumerOptions(consumer.options)
  const { method, path, body } = parseRequest(rendered, options.method)
  const base = env[consumer.dsn_env]
  const url = base ? requestUrl(base, path) : `$${consumer.dsn_env}${path}`
  const headers: Record<string, string> = { 'content-type': 'application/json', 'idempotency-key': 'msg_… (the batch id)' }
  for (const [name, variable] of Object.entries(options.headers)) {
    const value = env[variable]
    headers[name] = value === undefined ? `(from $${variable}: not set here)` : maskSecret(value)
  }
  if (options.signingSecretEnv !== null) {
    headers['webhook-id'] = 'msg_… (the batch id)'
    headers['webhook-timestamp'] = '(the time of sending)'
    headers['webhook-signature'] = `v1,… (signed with $${options.signingSecretEnv} when sent)`
  }
  return { method, url, headers, body }
}

export async function previewSubscription(pool: pg.Pool, subscription: string, sampleSize = 3): Promise<Preview[]> {
  const { rows } = await pool
    .query(
      `select s.*, c.dialect, c.kind, c.dsn_env, c.options from segmenter.subscriptions s join segmenter.consumers c using (consumer_id) where s.name = $1`,
      [subscription],
    )
    .catch((err: unknown) => {
      throw fromPgError(err)
    })
  const sub = rows[0]
  if (!sub)
    throw new SegmenterError('NOT_FOUND', `unknown subscription ${subscription}`, {
      hint: 'list them with: select name from segmenter.subscriptions',
    })
  const segments = await loadSegments(pool, sub.segment_ids)
  const previews: Preview[] = []
  for (const segment of segments.values()) {
    const sample = await pool.query<{ id: string }>(
      `select id::text as id from ${segment.table_name} where segment_id = $1 and actual_end = 'infinity' and id is not null order by id limit $2`,
      [segment.segment_id, sampleSize],
    )
    const events: PendingEvent[] = sample.rows.map((r, i) => ({
      pos: 0n,
      ord: i + 1,
      ageMs: 0,
      segmentId: segment.segment_id,
      event: 'add',
      memberId: r.id,
      row: null,
    }))
    const sampled = batchOf('add', segment.segment_id, events, { pos: 0n, ord: 0 })
    const batch = membersOf(segment, sampled, await loadMemberRows(pool, segments, [sampled]))
    const version = positionVersion(BigInt(sub.cursor_pos), sub.cursor_ord + 1)
    const ctx = { segment_id: segment.segment_id, segment_name: segment.name, audience: sub.audience, version, batch }
    const statements: Record<string, string | null> = {}
    for (const key of ['add_sql', 'remove_sql', 'update_sql', 'clear_sql', 'segment_upsert_sql', 'segment_delete_sql']) {
      const source: string | null = sub[key]
      statements[key.replace(/_sql$/, '')] = source === null ? null : compileTemplate(source, sub.syntax, sub.dialect).render(ctx)
    }
    const preview: Preview = {
      subscription,
      segment: segment.name,
      dialect: sub.dialect,
      members: batch.length,
      version: version.toString(),
      statements,
    }
    if (sub.kind === 'http')
      preview.requests = Object.fromEntries(Object.entries(statements).map(([k, v]) => [k, v === null ? null : previewRequest(v, sub)]))
    previews.push(preview)
  }
  return previews
}
