// The CLI's psql-style tables (src/table.ts), without a database.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { cut, displayWidth, formatTable, formatValue } from '../src/table.js'

const lines = (s: string) => s.split('\n')

test('aligned like psql: centred header, ---+--- separator, numbers right, text left, NULL empty, a row count', () => {
  const rows = [
    { subscription: 'crm_big_spenders', pending: 0, last_error: null, dead_letters: '0' },
    { subscription: 'vip', pending: 12345, last_error: 'boom', dead_letters: '17' },
  ]
  const cols = ['subscription', 'pending', 'last_error', { name: 'dead_letters', align: 'right' as const }]
  assert.equal(
    formatTable(rows, cols),
    [
      '   subscription   | pending | last_error | dead_letters',
      '------------------+---------+------------+--------------',
      ' crm_big_spenders |       0 |            |            0',
      ' vip              |   12345 | boom       |           17',
      '(2 rows)',
    ].join('\n'),
  )
  assert.equal(formatTable([rows[1]!], ['subscription']), ' subscription\n--------------\n vip\n(1 row)')
})

test('columns in the order given; strings are not right-aligned unless the column says so', () => {
  const out = lines(formatTable([{ a: '1', b: 'x' }], ['b', 'a']))
  assert.equal(out[0], ' b | a')
  assert.equal(out[2], ' x | 1')
  assert.equal(
    lines(
      formatTable(
        [
          { n: 'long', m: 1 },
          { n: null, m: 100 },
        ],
        ['m'],
      ),
    )[2],
    '   1',
  )
})

test('zero rows: the header and (0 rows)', () => {
  assert.equal(formatTable([], ['subscription', 'state']), ' subscription | state\n--------------+-------\n(0 rows)')
})

test('values: jsonb and arrays as compact JSON, booleans t/f, Dates ISO-8601, intervals in their Postgres form, no quotes', () => {
  assert.equal(formatValue({ a: [1, 'x'], b: null }), '{"a":[1,"x"],"b":null}')
  assert.equal(formatValue(['x', 'y']), '["x","y"]')
  assert.equal(formatValue(true) + formatValue(false), 'tf')
  assert.equal(formatValue(new Date('2026-11-23T17:58:20.618Z')), '2026-11-23T17:58:20.618Z')
  assert.equal(formatValue({ toPostgres: () => '3 minutes 2.5 seconds' }), '3 minutes 2.5 seconds')
  assert.equal(formatValue(12n), '12')
  assert.equal(formatValue(undefined), '')
  assert.equal(formatValue(Buffer.from([1, 255])), '\\x01ff')
})

test('a multi-line value stays on its row, its newlines and tabs shown escaped', () => {
  assert.equal(formatValue('insert into t\nvalues (1)\r\n\tx\x01'), 'insert into t\\nvalues (1)\\r\\n\\tx\\x01')
  const out = lines(formatTable([{ sql: 'a\nb', n: 1 }], ['sql', 'n']))
  assert.deepEqual(out, [' sql  | n', '------+---', ' a\\nb | 1', '(1 row)'])
})

test('width is counted in terminal cells: combining accents once, emoji and CJK twice', () => {
  assert.equal(displayWidth('abc'), 3)
  assert.equal(displayWidth('e\u0301t\u00e9'), 3) // é as e + combining accent, then a precomposed é
  assert.equal(displayWidth('👍'), 2)
  assert.equal(displayWidth('👨‍👩‍👧'), 2) // one grapheme of five code points
  assert.equal(displayWidth('日本'), 4)
  const out = lines(formatTable([{ name: '日本👍' }, { name: 'abcdef' }], ['name']))
  assert.deepEqual(out.slice(2, 4), [' 日本👍', ' abcdef'])
  assert.equal(
    lines(
      formatTable(
        [
          { name: '日本👍', n: 1 },
          { name: 'abcdef', n: 2 },
        ],
        ['name', 'n'],
      ),
    )[2],
    ' 日本👍 | 1',
  )
})

test('cut: at most the width, with an ellipsis, never inside a grapheme', () => {
  assert.equal(cut('abcdef', 6), 'abcdef')
  assert.equal(cut('abcdefg', 6), 'abcde…')
  assert.equal(cut('日本語です', 6), '日本…') // a wide character that would pass the width is left out whole
  assert.equal(cut('e\u0301e\u0301e\u0301', 2), 'e\u0301…')
  assert.equal(displayWidth(cut('👍👍👍👍', 5)), 5)
})

test('too wide for the width: the widest columns are cut first, with an ellipsis, and every line fits', () => {
  const rows = [
    { id: 1, name: 'short', error: 'x'.repeat(200), sql: 'select '.repeat(30) },
    { id: 22, name: 'a bit longer name', error: null, sql: 'y' },
  ]
  const out = lines(formatTable(rows, ['id', 'name', 'error', 'sql'], 80))
  for (const l of out) assert.ok(displayWidth(l) <= 80, `${displayWidth(l)}: ${l}`)
  assert.equal(displayWidth(out[1]!), 80, 'the separator uses the whole width')
  assert.match(out[2]!, /^ {2}1 \| short {13}\| x+… \| (select )+\S*…$/)
  assert.ok(out[3]!.includes(' a bit longer name '), 'a column narrower than the others is kept whole')
  assert.equal(out[4], '(2 rows)')
  // Into a pipe (no width): values in full.
  assert.ok(formatTable(rows, ['error']).includes('x'.repeat(200)))
})

test("too many columns to cut: one record per row, like psql's expanded display, still within the width", () => {
  const row = Object.fromEntries(Array.from({ length: 12 }, (_, i) => [`column_${i}`, `value ${i} `.repeat(8)]))
  const out = lines(formatTable([row, row], Object.keys(row), 40))
  for (const l of out) assert.ok(displayWidth(l) <= 40, `${displayWidth(l)}: ${l}`)
  assert.equal(out[0], '-[ RECORD 1 ]' + '-'.repeat(27))
  assert.equal(out[1], 'column_0  | value 0 value 0 value 0 val…')
  assert.equal(out[13], '-[ RECORD 2 ]' + '-'.repeat(27))
  assert.equal(out.at(-1), '(2 rows)')
  assert.equal(formatTable([], Object.keys(row), 40), '(0 rows)')
})
