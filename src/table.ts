// Query results as psql prints them (aligned, `\x auto`): the CLI's output for a person. Pure, so
// it is tested without a database; the CLI decides the width and which columns are numbers.

export interface Column {
  name: string
  /** Numbers right, text left, as psql aligns them by type. (Default: right when every value is a JS number or bigint) */
  align?: 'left' | 'right'
}

/** Narrowest a long column is cut to before the table turns into records (psql's expanded display). */
const MIN_COLUMN = 8

/** A value as one line of text: NULL empty, jsonb and arrays as compact JSON, pg's own types in their Postgres text form. */
export function formatValue(v: unknown): string {
  let s: string
  if (v === null || v === undefined) s = ''
  else if (typeof v === 'string') s = v
  else if (typeof v === 'boolean') s = v ? 't' : 'f'
  else if (typeof v === 'number' || typeof v === 'bigint') s = String(v)
  else if (v instanceof Date) s = Number.isNaN(v.getTime()) ? 'Invalid Date' : v.toISOString()
  else if (Buffer.isBuffer(v)) s = `\\x${v.toString('hex')}`
  // pg's convention for a value that knows its Postgres text form (an interval, say).
  else if (typeof (v as { toPostgres?: unknown }).toPostgres === 'function') s = String((v as { toPostgres(): unknown }).toPostgres())
  else s = JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x))
  // A newline or tab would break the row's alignment: shown escaped instead.
  return s.replace(/[\x00-\x1f\x7f]/g, (c) => CONTROL[c] ?? `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`)
}
const CONTROL: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' }

const graphemes = new Intl.Segmenter()
// Emoji and East Asian wide characters take two terminal cells.
const WIDE =
  /\p{Emoji_Presentation}|\uFE0F|[\u1100-\u115F\u2E80-\u303E\u3041-\u33FF\u3400-\u4DBF\u4E00-\u9FFF\uA000-\uA4CF\uAC00-\uD7A3\uF900-\uFAFF\uFE30-\uFE4F\uFF00-\uFF60\uFFE0-\uFFE6\u{20000}-\u{3FFFD}]/u

/** Terminal cells a one-line string takes: by grapheme, so a combining accent or an emoji sequence counts once. */
export function displayWidth(s: string): number {
  if (/^[\x20-\x7e]*$/.test(s)) return s.length
  let n = 0
  for (const { segment } of graphemes.segment(s)) n += WIDE.test(segment) ? 2 : 1
  return n
}

/** `s` in at most `width` cells, ending in `…` when cut (never inside a grapheme). */
export function cut(s: string, width: number): string {
  if (displayWidth(s) <= width) return s
  let out = ''
  let n = 0
  for (const { segment } of graphemes.segment(s)) {
    const w = WIDE.test(segment) ? 2 : 1
    if (n + w > width - 1) break
    out += segment
    n += w
  }
  return out + '…'
}

const pad = (s: string, width: number, align: 'left' | 'right' | 'center') => {
  const space = Math.max(0, width - displayWidth(s))
  const left = align === 'right' ? space : align === 'center' ? Math.floor(space / 2) : 0
  return ' '.repeat(left) + s + ' '.repeat(space - left)
}

const footer = (n: number) => `(${n} ${n === 1 ? 'row' : 'rows'})`

/**
 * `rows` as psql's aligned table, the columns in the order given, each line at most `width` cells
 * (Infinity: values in full). Too wide, the widest columns are cut first; when even cut to
 * MIN_COLUMN they would not fit, each row is printed as a record of `column | value` lines.
 */
export function formatTable(rows: readonly Record<string, unknown>[], columns: readonly (string | Column)[], width = Infinity): string {
  const cols = columns.map((c) => (typeof c === 'string' ? { name: c } : c))
  const align = cols.map(
    (c) =>
      c.align ??
      (rows.some((r) => r[c.name] != null) && rows.every((r) => r[c.name] == null || ['number', 'bigint'].includes(typeof r[c.name]))
        ? 'right'
        : 'left'),
  )
  const cells = rows.map((r) => cols.map((c) => formatValue(r[c.name])))
  const natural = cols.map((c, i) => Math.max(displayWidth(c.name), ...cells.map((row) => displayWidth(row[i]!))))

  // psql's border 1: " a | b", under it "---+---": 3 cells between columns, 1 on each side.
  const budget = width - (3 * cols.length - 1)
  const total = (ws: number[]) => ws.reduce((a, b) => a + b, 0)
  let widths = natural
  if (total(natural) > budget) {
    // Lower one ceiling on every column until the line fits, so the widest give way first.
    let cap = Math.max(...natural)
    while (cap > MIN_COLUMN && total(natural.map((w) => Math.min(w, cap))) > budget) cap--
    widths = natural.map((w) => Math.min(w, cap))
    if (total(widths) > budget) return formatRecords(cols, cells, rows.length, width)
    // The cells the integer ceiling left over go to the first columns that were cut.
    let spare = budget - total(widths)
    widths = widths.map((w, i) => (w < natural[i]! && spare > 0 ? (spare--, w + 1) : w))
  }
  const line = (values: string[], how: (i: number) => 'left' | 'right' | 'center') =>
    (' ' + values.map((v, i) => pad(cut(v, widths[i]!), widths[i]!, how(i))).join(' | ')).trimEnd()
  return [
    line(
      cols.map((c) => c.name),
      () => 'center',
    ),
    widths.map((w) => '-'.repeat(w + 2)).join('+'),
    ...cells.map((row) => line(row, (i) => align[i]!)),
    footer(rows.length),
  ].join('\n')
}

/** psql's expanded display (`\x`): one `-[ RECORD n ]` block per row, names left, values cut to the width. */
function formatRecords(cols: { name: string }[], cells: string[][], count: number, width: number): string {
  const nameWidth = Math.max(1, Math.min(Math.max(...cols.map((c) => displayWidth(c.name))), Math.floor((width - 3) / 2)))
  const valueWidth = Math.max(1, Math.min(width - 3 - nameWidth, Math.max(0, ...cells.flatMap((row) => row.map(displayWidth)))))
  const out: string[] = []
  cells.forEach((row, r) => {
    // "-[ RECORD 1 ]--+-----", the + above the | of the lines under it, as long as the widest line.
    const label = `-[ RECORD ${r + 1} ]`
    out.push(
      label.length < nameWidth + 1
        ? label + '-'.repeat(nameWidth + 1 - label.length) + '+' + '-'.repeat(valueWidth + 1)
        : cut(label + '-'.repeat(Math.max(0, nameWidth + valueWidth + 3 - label.length)), width),
    )
    cols.forEach((c, i) => out.push(`${pad(cut(c.name, nameWidth), nameWidth, 'left')} | ${cut(row[i]!, valueWidth)}`.trimEnd()))
  })
  return [...out, footer(count)].join('\n')
}

// int2, int4, int8, oid, float4, float8, money, numeric: right-aligned, as psql aligns them.
const NUMERIC_TYPES = new Set([21, 23, 20, 26, 700, 701, 790, 1700])

/** A pg query result as a table: its columns in order, numbers right-aligned by their Postgres type. */
export function formatResult(
  result: { rows: readonly Record<string, unknown>[]; fields: readonly { name: string; dataTypeID: number }[] },
  width = Infinity,
): string {
  const columns = result.fields.map((f) => ({
    name: f.name,
    align: NUMERIC_TYPES.has(f.dataTypeID) ? ('right' as const) : ('left' as const),
  }))
  return formatTable(result.rows, columns, width)
}
