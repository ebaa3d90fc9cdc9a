// Proves the test harness itself: template copies, plain databases, MariaDB
// utf8mb4, and private servers that survive a stop/start with their data.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import mysql from 'mysql2/promise'
import pg from 'pg'
import { freshMariadbServer, freshMysql, freshPg, freshPgPlain, freshPgServer } from './harness/db.js'

const hasSegmenterSchema = `select count(*)::int as n from pg_namespace where nspname = 'segmenter'`

test('freshPg copies the migrated template, freshPgPlain is empty', async (t) => {
  const [migrated, plain] = await Promise.all([freshPg(), freshPgPlain()])
  t.after(() => Promise.all([migrated.close(), plain.close()]))
  assert.equal((await migrated.query(hasSegmenterSchema))[0]!.n, 1)
  assert.equal((await plain.query(hasSegmenterSchema))[0]!.n, 0)
})

test('two freshPg calls give different databases', async (t) => {
  const [a, b] = await Promise.all([freshPg(), freshPg()])
  t.after(() => Promise.all([a.close(), b.close()]))
  assert.notEqual(a.url, b.url)
  const [ra, rb] = await Promise.all([a.query('select current_database() as d'), b.query('select current_database() as d')])
  assert.equal(ra[0]!.d, a.database)
  assert.equal(rb[0]!.d, b.database)
})

test('freshMysql round-trips a 4-byte emoji', async (t) => {
  const db = await freshMysql()
  t.after(() => db.close())
  await db.query('create table t (id bigint primary key, s varchar(50) not null)')
  await db.query('insert into t values (?, ?)', ['9007199254740993', 'hi 🦄 there'])
  const rows = await db.query<{ id: string; s: string }>('select id, s from t')
  assert.deepEqual(
    rows.map((r) => ({ ...r })),
    [{ id: '9007199254740993', s: 'hi 🦄 there' }],
  )
})

test('private MariaDB server stops and starts keeping data', async (t) => {
  const server = await freshMariadbServer()
  t.after(() => server.destroy())
  const connect = () => mysql.createConnection({ host: '127.0.0.1', port: server.port, user: 'root', charset: 'utf8mb4' })
  let c = await connect()
  await c.query('create database keep_me')
  await c.query('create table keep_me.t (s varchar(10))')
  await c.query(`insert into keep_me.t values ('kept')`)
  await c.end()
  await server.stop()
  assert.equal(server.running, false)
  await assert.rejects(connect())
  await server.start()
  c = await connect()
  const [rows] = await c.query('select s from keep_me.t')
  await c.end()
  assert.deepEqual(
    (rows as { s: string }[]).map((r) => r.s),
    ['kept'],
  )
})

test('private Postgres server stops and starts keeping data', async (t) => {
  const server = await freshPgServer()
  t.after(() => server.destroy())
  const q = async (sql: string) => {
    const c = new pg.Client({ connectionString: server.url })
    await c.connect()
    try {
      return (await c.query(sql)).rows
    } finally {
      await c.end()
    }
  }
  await q(`create table kept as select 'kept'::text as s`)
  await server.stop()
  await assert.rejects(q('select 1'))
  await server.start()
  assert.deepEqual(await q('select s from kept'), [{ s: 'kept' }])
})
