// db/schema.sql is what the migrations produce: a fresh database migrated with src/migrate.ts and
// dumped as `make schema` dumps it (test/schema-dump.ts) gives the committed file, line for line.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { migrate } from '../src/migrate.js'
import { freshPgPlain } from './harness/db.js'
import { dumpSchema, SCHEMA_FILE, SCHEMA_PG_MAJOR, serverMajor } from './schema-dump.js'

const CONTEXT = 3
const MAX_LINES = 120

/** A unified-diff-like listing of the lines that differ (LCS over the part between the common ends). */
function lineDiff(expected: string, actual: string): string {
  const a = expected.split('\n')
  const b = actual.split('\n')
  let pre = 0
  while (pre < a.length && pre < b.length && a[pre] === b[pre]) pre++
  let suf = 0
  while (suf < a.length - pre && suf < b.length - pre && a[a.length - 1 - suf] === b[b.length - 1 - suf]) suf++
  const am = a.slice(pre, a.length - suf)
  const bm = b.slice(pre, b.length - suf)
  // The common ends contribute only their CONTEXT lines next to the middle.
  const ops: string[] = a.slice(Math.max(0, pre - CONTEXT), pre).map((l) => ` ${l}`)
  const first = Math.max(0, pre - CONTEXT) + 1
  if (am.length * bm.length <= 4_000_000) {
    // lcs[i][j]: length of the longest common subsequence of am[i..] and bm[j..]
    const lcs = Array.from({ length: am.length + 1 }, () => new Uint32Array(bm.length + 1))
    for (let i = am.length - 1; i >= 0; i--)
      for (let j = bm.length - 1; j >= 0; j--)
        lcs[i]![j] = am[i] === bm[j] ? lcs[i + 1]![j + 1]! + 1 : Math.max(lcs[i + 1]![j]!, lcs[i]![j + 1]!)
    let i = 0
    let j = 0
    while (i < am.length || j < bm.length) {
      if (i < am.length && j < bm.length && am[i] === bm[j]) (ops.push(` ${am[i++]}`), j++)
      else if (i < am.length && (j === bm.length || lcs[i + 1]![j]! >= lcs[i]![j + 1]!)) ops.push(`-${am[i++]}`)
      else ops.push(`+${bm[j++]}`)
    }
  } else {
    ops.push(...am.map((l) => `-${l}`), ...bm.map((l) => `+${l}`))
  }
  ops.push(...a.slice(a.length - suf, a.length - suf + CONTEXT).map((l) => ` ${l}`))
  // Keep CONTEXT unchanged lines around each change, like diff -u.
  const near = ops.map((_, k) => ops.slice(Math.max(0, k - CONTEXT), k + CONTEXT + 1).some((o) => o[0] !== ' '))
  const out = [`--- db/schema.sql`, `+++ dump of the migrated database`, `@@ line ${first} @@`]
  ops.forEach((o, k) => {
    if (near[k]) out.push(o)
    else if (near[k - 1]) out.push('@@')
  })
  if (out.length > MAX_LINES) return [...out.slice(0, MAX_LINES), `… ${out.length - MAX_LINES} more lines`].join('\n')
  return out.join('\n')
}

test('db/schema.sql is what the migrations produce (make schema writes it)', async (t) => {
  const db = await freshPgPlain()
  t.after(() => db.close())
  const major = await serverMajor(db.url)
  if (major !== SCHEMA_PG_MAJOR) {
    t.skip(`db/schema.sql is a PostgreSQL ${SCHEMA_PG_MAJOR} dump; this server is ${major}, whose pg_dump writes other text`)
    return
  }
  await migrate(db.url)
  const actual = await dumpSchema(db.url)
  const committed = await readFile(SCHEMA_FILE, 'utf8').catch(() => undefined)
  assert.ok(committed !== undefined, `db/schema.sql is missing: run make schema`)
  if (committed !== actual) {
    assert.fail(`db/schema.sql differs from what the migrations produce: run make schema\n${lineDiff(committed, actual)}`)
  }
})

test('lineDiff shows the changed lines with context', () => {
  const d = lineDiff('a\nb\nc\nd\ne\nf\ng\nh\ni', 'a\nb\nc\nd\nE\nf\ng\nh\ni\nj')
  assert.match(d, /^-e$/m)
  assert.match(d, /^\+E$/m)
  assert.match(d, /^\+j$/m)
  assert.match(d, /^ d$/m)
  assert.doesNotMatch(d, /^ a$/m)
})
