// src/errors.ts's SQLSTATES is the one list of the codes Segmenter's SQL raises: every code raised
// in the migrations (db/NNNN_*.sql, including ones added later) is in it, every entry is raised
// where it says, and README's table of codes is the same table. No database needed.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { fromPgError, SegmenterError, SQLSTATES, type SqlStateEntry } from '../src/errors.js'

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const table: Record<string, SqlStateEntry> = SQLSTATES
const read = (p: string) => readFileSync(join(repo, p), 'utf8')

function filesUnder(dir: string, re: RegExp): string[] {
  return readdirSync(join(repo, dir), { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? filesUnder(join(dir, e.name), re) : e.isFile() && re.test(e.name) ? [join(dir, e.name)] : []))
    .sort()
}

// The migrations, not db/schema.sql (a dump of them, which repeats their codes).
const migrations = filesUnder('db', /^\d{4}_[\w-]+\.sql$/)

/**
 * The SQLSTATEs a SQL or TS text raises or tests for: the code given to segmenter._fail, to
 * `errcode =` or `sqlstate`, and any quoted SG code, outside `--` comment lines.
 */
function codesIn(text: string): Map<string, number> {
  const found = new Map<string, number>()
  text.split('\n').forEach((line, i) => {
    if (/^\s*(--|\/\/|\*)/.test(line)) return
    const res = [
      /_fail\(\s*'([0-9A-Z]{5})'/g,
      /errcode\s*=\s*'([0-9A-Z]{5})'/gi,
      /sqlstate\s+'([0-9A-Z]{5})'/gi,
      /['"`](SG[0-9A-Z]{3})['"`]/g,
    ]
    for (const re of res) for (const m of line.matchAll(re)) if (!found.has(m[1]!)) found.set(m[1]!, i + 1)
  })
  return found
}

test('the migrations exist and raise coded errors (the scan finds them)', () => {
  assert.ok(migrations.length >= 7, `expected the migrations in db/, found ${migrations.join(', ')}`)
  assert.ok(migrations.some((f) => codesIn(read(f)).has('SG001')))
})

test('every SQLSTATE raised in db/NNNN_*.sql is in src/errors.ts SQLSTATES', () => {
  const missing: string[] = []
  for (const f of migrations) {
    for (const [code, line] of codesIn(read(f))) if (!(code in table)) missing.push(`${code} (${f}:${line})`)
  }
  assert.deepEqual(missing, [], `add these codes to SQLSTATES in src/errors.ts (meaning, ErrorCode): ${missing.join(', ')}`)
})

test('every code in SQLSTATES is raised where it says', () => {
  const inDb = new Set(migrations.flatMap((f) => [...codesIn(read(f)).keys()]))
  for (const [code, entry] of Object.entries(table)) {
    if (entry.raisedIn === 'db')
      assert.ok(inDb.has(code), `${code} is in SQLSTATES but no migration in db/ raises it: remove it or fix raisedIn`)
    else assert.ok(read(entry.raisedIn).includes(`'${code}'`), `${code}: ${entry.raisedIn} does not raise it`)
  }
})

test('SQLSTATE literals in src/ are in SQLSTATES', () => {
  for (const f of filesUnder('src', /\.ts$/).filter((f) => f !== join('src', 'errors.ts'))) {
    for (const [code, line] of codesIn(read(f))) {
      if (code.startsWith('SG')) assert.ok(code in table, `${f}:${line} uses ${code}, which SQLSTATES in src/errors.ts lacks`)
    }
  }
})

test("README's table of SQLSTATEs is SQLSTATES", () => {
  const rows = [...read('README.md').matchAll(/^\| `?(SG[0-9A-Z]{3})`? \|(.*)\|\s*$/gm)].map((m) => ({
    code: m[1]!,
    cells: m[2]!.split(' | ').map((c) => c.trim()),
  }))
  if (rows.length === 0) return // the README points to src/errors.ts instead of listing the codes
  assert.deepEqual(
    rows.map((r) => r.code),
    Object.keys(table),
    'README.md lists other SQLSTATEs than src/errors.ts, or in another order',
  )
  for (const { code, cells } of rows) {
    const entry = table[code]!
    const meaning = cells.at(-1)
    assert.equal(meaning, entry.meaning, `README.md's meaning of ${code} differs from src/errors.ts`)
    if (cells.length > 1)
      assert.equal(cells[0]!.replace(/`/g, ''), entry.code ?? '—', `README.md's TS code of ${code} differs from src/errors.ts`)
  }
})

test('fromPgError maps each SQLSTATE through the table and keeps it', () => {
  for (const [code, entry] of Object.entries(table)) {
    const pgErr = Object.assign(new Error('m'), { code, hint: 'h' })
    const e = fromPgError(pgErr)
    if (entry.code === undefined) {
      assert.equal(e, pgErr, `${code} is not an error of the SQL API: passed through`)
      continue
    }
    assert.ok(e instanceof SegmenterError, code)
    assert.equal(e.code, entry.code)
    assert.equal(e.sqlState, code)
    assert.equal(e.hint, 'h')
    assert.equal(e.message, 'm (hint: h)')
    assert.equal(e.cause, pgErr)
  }
  const other = Object.assign(new Error('x'), { code: '23505' })
  assert.equal(fromPgError(other), other, 'a Postgres error of its own passes through')
  const newer = fromPgError(Object.assign(new Error('y'), { code: 'SG999' }))
  assert.ok(newer instanceof SegmenterError && newer.code === 'CONFIG_INVALID', 'an SG code from a newer schema is still a refusal')
})
