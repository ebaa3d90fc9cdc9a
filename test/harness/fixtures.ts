// Set-up the delivery tests share: the seed's segment table, a MariaDB target table `members` with
// altcraft templates for it, a home and target per test, and checks of where delivery stands.
import mysql from 'mysql2/promise'
import type { Sidecar } from '../../src/sidecar.js'
import { freshMariadbServer, freshMysql, freshPg, type FreshMysql, type FreshPg } from './db.js'
import { startTestSidecar } from './sidecar.js'
import type { deferrer } from './wait.js'

export const SEGMENT_DDL = `
  create table public.test_segment (
    segment_id uuid not null, id varchar null, customid varchar null, hash_email varchar null,
    actual_begin timestamp not null default now(), actual_end timestamp not null default 'infinity',
    processed timestamp not null default now(), constraint test_segment_id_key unique (id));
  create index on test_segment using btree(id);`

// A target table without a unique key: a member delivered twice shows as two rows.
export const MEMBERS_DDL = 'create table members (seg varchar(36) not null, member varchar(255) not null)'
export const T = {
  add: `insert into members (seg, member) values {for $i, $lead = $batch}({segment_id}, {$lead.id}){autocomma}{end}`,
  remove: `delete from members where seg = {segment_id} and member in ({batch_in "id"})`,
  clear: `delete from members where seg = {segment_id}`,
}

export interface Home {
  home: FreshPg
  target: FreshMysql
  env: NodeJS.ProcessEnv
  start(opts?: { pollIntervalMs?: number }): Promise<Sidecar>
}
/** A fresh home database with the seed's segment table, a fresh MariaDB target, and a way to start sidecars. */
export async function setup(defer: ReturnType<typeof deferrer>): Promise<Home> {
  const home = await freshPg()
  defer(() => home.close())
  const target = await freshMysql()
  defer(() => target.close())
  await home.query(SEGMENT_DDL)
  await target.query(MEMBERS_DDL)
  const env = { ...process.env, TARGET_URL: target.url }
  return {
    home,
    target,
    env,
    start: (opts = {}) => startTestSidecar({ databaseUrl: home.url, pollIntervalMs: opts.pollIntervalMs ?? 200, env }, defer),
  }
}

export const count = async (db: FreshMysql, where = '1 = 1') =>
  Number((await db.query(`select count(*) as n from members where ${where}`))[0].n)
export const currentIds = async (home: FreshPg, segmentId: string): Promise<string[]> =>
  (await home.query(`select id from test_segment where segment_id = $1 and actual_end = 'infinity' order by id`, [segmentId])).map(
    (r) => r.id,
  )
export const targetIds = async (target: FreshMysql, segmentId: string): Promise<string[]> =>
  (await target.query('select member from members where seg = ? order by member', [segmentId])).map((r: { member: string }) => r.member)
/** The target holds exactly the segment's current members, each once (both sides sorted by the same binary order). */
export async function converged(home: FreshPg, target: FreshMysql, segmentId: string): Promise<boolean> {
  const [want, got] = await Promise.all([currentIds(home, segmentId), targetIds(target, segmentId)])
  return want.length === got.length && want.every((id, i) => id === got[i])
}
/**
 * Segment `segment` on `table`, the MariaDB consumer 'maria' (TARGET_URL), and an altcraft
 * subscription `name` on the segment with create_subscription's other named arguments `args`.
 * Returns the segment's id.
 */
export async function subscribe(
  home: FreshPg,
  o: { segment: string; table?: string; name?: string; args: Record<string, string | number> },
): Promise<string> {
  const [{ id }] = await home.query(`select segmenter.create_segment($1, $2::regclass) as id`, [
    o.segment,
    o.table ?? 'public.test_segment',
  ])
  await home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'TARGET_URL')`)
  const named = Object.keys(o.args).map((arg, i) => `${arg} => $${i + 3}`)
  await home.query(
    `select segmenter.create_subscription(name => $1, consumer => 'maria', segments => array[$2], syntax => 'altcraft', ${named.join(', ')})`,
    [o.name ?? 'sub', o.segment, ...Object.values(o.args)],
  )
  return id
}

/**
 * A fresh home with the seed's segment table and a private MariaDB server (its global settings
 * and counters are the test's own) with a database `tgt` holding `members (membersColumns)`.
 * `url` is the target's URL for the consumer's TARGET_URL.
 */
export async function privateTarget(defer: ReturnType<typeof deferrer>, membersColumns: string) {
  const home = await freshPg()
  defer(() => home.close())
  const server = await freshMariadbServer()
  defer(() => server.destroy())
  const admin = await mysql.createConnection(server.url)
  defer(() => admin.end())
  await admin.query('create database tgt')
  await admin.query(`create table tgt.members (${membersColumns})`)
  await home.query(SEGMENT_DDL)
  return { home, admin, url: server.url.replace(/\/?$/, '/tgt') }
}

/** The subscription's snapshot (or any resync) was delivered: the home cursor passed resync_pos. */
export async function initialSyncDone(home: FreshPg, sub: string): Promise<boolean> {
  const [r] = await home.query(
    `select resync_pos is not null and cursor_pos >= resync_pos as done from segmenter.subscriptions where name = $1`,
    [sub],
  )
  return !!r?.done
}
