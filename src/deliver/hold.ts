// Holding a subscription in an error state (segmenter.hold_subscription) when delivering it cannot
// be right until someone fixes the cause: a template that does not compile, a configuration error,
// or a target checkpoint this home cannot have written (divergence).
import type pg from 'pg'
import type { SubscriptionRow } from '../read.js'
import { templateFor, type DeliveryContext, type RoundResult } from './round.js'

/** Hold the subscription in an error state: nothing is delivered or dead-lettered until its cause is fixed. */
export async function holdSubscription(
  ctx: DeliveryContext,
  sub: SubscriptionRow,
  kind: 'template' | 'configuration' | 'diverged',
  error: string,
  hint?: string,
): Promise<RoundResult> {
  ctx.log.error({ subscription: sub.name, kind, err: error, hint }, 'subscription held until its cause is fixed')
  await ctx.pool.query('select segmenter.hold_subscription($1, $2, $3, $4)', [sub.subscription_id, kind, error, hint ?? null])
  return { kind: 'held', error }
}

/** A template of the subscription that does not compile for the target's dialect: its error. */
export function brokenTemplate(ctx: DeliveryContext, sub: SubscriptionRow): string | null {
  for (const event of ['add', 'update', 'remove', 'clear', 'segment_upsert', 'segment_delete'] as const) {
    try {
      templateFor(ctx, sub, event, sub.consumer.dialect)
    } catch (error) {
      return `${TEMPLATE_FIELDS[event]}: ${(error as Error).message}`
    }
  }
  return null
}
const TEMPLATE_FIELDS = {
  add: 'add_sql',
  update: 'update_sql',
  remove: 'remove_sql',
  clear: 'clear_sql',
  segment_upsert: 'segment_upsert_sql',
  segment_delete: 'segment_delete_sql',
} as const

/** A template that fails for a member with a row: the template's fault, not the member's. */
export class HeldTemplate extends Error {}

export const templateHint = (sub: SubscriptionRow) =>
  `fix the template with select segmenter.alter_subscription('${sub.name}', ...); the cursor and the dead letters are kept`

export interface HomeIdentity {
  identity: string
  lastPos: bigint
}

export async function homeIdentity(pool: pg.Pool): Promise<HomeIdentity> {
  const { rows } = await pool.query<{ identity: string; last_pos: string }>({
    name: 'segmenter:home_identity',
    text: 'select identity, last_pos from segmenter.home_identity()',
  })
  return { identity: rows[0]!.identity, lastPos: BigInt(rows[0]!.last_pos) }
}

/** Why the target's checkpoint cannot be this home's own history, or null if it can. */
export function divergence(sub: SubscriptionRow, target: { pos: bigint; ord: number; home: string }, home: HomeIdentity): string | null {
  if (target.home !== home.identity) {
    return `the target's checkpoint of subscription ${sub.name} was written by another home (${target.home}); this home is ${home.identity}`
  }
  if (target.pos > home.lastPos) {
    return `the target's checkpoint of subscription ${sub.name} is at position ${target.pos}, ahead of the last position this home assigned (${home.lastPos}): the home was restored from a backup (or lost its change log), and changes since it would be skipped`
  }
  return null
}

export const divergedHint = (sub: SubscriptionRow) =>
  `if this home is the restored or moved one, run select segmenter.resync('${sub.name}') to re-export the subscription to the target with a fresh checkpoint; if two homes deliver into one target, give each consumer its own options.checkpoint_table`
