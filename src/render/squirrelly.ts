// Squirrelly 8 templates whose every interpolation is written as an SQL literal (or, for the json
// dialect, as a JSON value: json.ts).
//
// Data: it = { segment_id, segment_name, audience, version (a BigInt), batch }. Batch members resolve properties
// like altcraft fields: exact column name first, then a unique case-insensitive match, and
// a column that does not exist is a render error rather than a silent NULL.
//
// Helpers (the only ones registered; include/extends/block are not, since `block` splices
// data unescaped):
//   {{@rows(it.batch) => lead, i}}({{ lead.id }}, NOW()){{/rows}}   bodies joined with ",\n"
//   {{@rows(it.batch) => lead}}SELECT {{ lead.id }}{{#sep}} UNION ALL {{/rows}}
//                                     the {{#sep}} block's text replaces ",\n"
//   {{@each(arr) => x, i}}…{{/each}}  {{@foreach(obj) => k, v}}…{{/foreach}}
//   {{@if(cond)}}…{{#elif(cond)}}…{{#else}}…{{/if}}  {{@try}}…{{#catch => e}}…{{/try}}
// Filters:
//   {{ it.batch | in("hash_email") }}   'a', 'b', 'c' for IN (…); NULL for an empty batch
//   {{ it.some_array | in }}            the array's items as literals
// In the json dialect the same filter gives the inside of a JSON array ("ids": [{{ it.batch |
// in("id") }}], [] when empty), and {{ lead }} or {{ it.batch }} whole members as JSON objects.
//
// How values stay literals: before Squirrelly sees the template, every {{ … }} gets a final
// hidden filter `| __sql(n)`, n naming the placeholder's SQL context (bare, a whole quoted
// literal whose quotes are removed, or part of a larger string). An AST plugin then checks
// that each interpolation ends in exactly that filter. Raw output ({{* x }}, `| safe`) and
// execute tags ({{! … }}) are refused because they would splice text unescaped.
// Squirrelly templates are JavaScript and run in-process: only trusted users may write them.
import * as Sqrl from 'squirrelly'
import { analyzeJson } from './json.js'
import { analyze, type Piece } from './lexer.js'
import {
  fieldValue,
  renderSlot,
  SqlFragment,
  TemplateError,
  templateError,
  ValueError,
  type RenderContext,
  type SlotContext,
  type TemplateDialect,
} from './literals.js'

type SqrlConfig = ReturnType<typeof Sqrl.getConfig>
type AstNode = ReturnType<typeof Sqrl.parse>[number]
type HelperContent = { exec: (...args: unknown[]) => string; params: unknown[]; name?: string }

// Squirrelly's own tag-boundary rules (src/parse.ts), copied so our split of the template
// matches the one Squirrelly makes.
const templateLitReg = /`(?:\\[\s\S]|\${(?:[^{}]|{(?:[^{}]|{[^}]*})*})*}|(?!\${)[^\\`])*`/g
const singleQuoteReg = /'(?:\\[\s\w"'\\`]|[^\n\r'\\])*?'/g
const doubleQuoteReg = /"(?:\\[\s\w"'\\`]|[^\n\r"\\])*?"/g
const OPEN = /\{\{(-|_)?\s*(@|#|\*|\/|!)?\s*/g
const CLOSE = /([|()]|=>)|('|"|`|\/\*)|\s*((\/)?(-|_)?\}\})/g

interface Tag {
  start: number
  body: number // where the tag's content starts
  close: number // where `}}` (with its whitespace and trim marker) starts
  end: number
  prefix: string
  trimBefore?: string // `-` or `_` right after `{{`: trims the text before the tag
  trimAfter?: string // `-` or `_` right before `}}`: trims the text after the tag
  selfClosing: boolean // `/}}`: a self-closing helper
}

function scanTags(src: string): Tag[] {
  const tags: Tag[] = []
  let m: RegExpExecArray | null
  OPEN.lastIndex = 0
  while ((m = OPEN.exec(src))) {
    const body = m.index + m[0].length
    CLOSE.lastIndex = body
    let c: RegExpExecArray | null
    let tag: Tag | undefined
    while (!tag && (c = CLOSE.exec(src))) {
      let skipTo = 0
      if (c[2] === '/*') skipTo = src.indexOf('*/', CLOSE.lastIndex) + 2
      else if (c[2]) {
        const r = c[2] === "'" ? singleQuoteReg : c[2] === '"' ? doubleQuoteReg : templateLitReg
        r.lastIndex = c.index
        skipTo = r.exec(src) ? r.lastIndex : 1
      } else if (c[3])
        tag = {
          start: m.index,
          body,
          close: c.index,
          end: CLOSE.lastIndex,
          prefix: m[2] ?? '',
          trimBefore: m[1],
          trimAfter: c[5],
          selfClosing: !!c[4],
        }
      if (skipTo === 1) break // unclosed string or comment: parse() has already reported it
      if (skipTo) CLOSE.lastIndex = skipTo
    }
    if (!tag) throw new TemplateError('Squirrelly tag is never closed')
    tags.push(tag)
    OPEN.lastIndex = tag.end
  }
  return tags
}

// Squirrelly's whitespace control (trimWS in its source) for `-` and `_` markers.
function trim(text: string, start?: string, end?: string): { text: string; cut: number } {
  let t = text
  let cut = 0
  if (start === '_') t = t.trimStart()
  else if (start === '-') t = t.replace(/^(?:\n|\r|\r\n)/, '')
  cut = text.length - t.length
  if (end === '_') t = t.trimEnd()
  else if (end === '-') t = t.replace(/(?:\n|\r|\r\n)$/, '')
  return { text: t, cut }
}

const cacher = <T>(items: Record<string, T>) => ({
  get: (k: string): T | undefined => (Object.prototype.hasOwnProperty.call(items, k) ? items[k] : undefined),
  define() {},
  remove() {},
  reset() {},
  load() {},
})

const HELPERS: Record<string, unknown> = {
  rows(content: HelperContent, blocks: HelperContent[]) {
    const arr = content.params[0]
    if (!Array.isArray(arr)) throw new TemplateError('@rows(…) expects an array, such as it.batch')
    const other = blocks.find((b) => b.name !== 'sep')
    if (other) throw new TemplateError(`@rows accepts only a {{#sep}} block, not {{#${other.name}}}`)
    return arr.map((x, i) => content.exec(x, i)).join(blocks[0] ? blocks[0].exec() : ',\n')
  },
  each: Sqrl.helpers.get('each'),
  foreach: Sqrl.helpers.get('foreach'),
}
const NATIVE: Record<string, unknown> = { if: Sqrl.nativeHelpers.get('if'), try: Sqrl.nativeHelpers.get('try') }
const HELPER_NAMES = [...Object.keys(HELPERS), ...Object.keys(NATIVE)]
/** The {{#block}} names each helper takes (Squirrelly drops the others' content, or fails at render). */
const HELPER_BLOCKS: Record<string, string[]> = { rows: ['sep'], each: [], foreach: [], if: ['elif', 'else'], try: ['catch'] }
/** Filters an author may write; `__sql` is the hidden one every interpolation ends in. */
const FILTER_NAMES = ['in']

// Everything below is decided from Squirrelly's own parse of the template, so what it refuses is
// exactly what db/0007_templates.sql (segmenter._template_fields, a port of this file's checks
// and of Squirrelly's parser) refuses when a subscription is written. Change both together;
// test/template_check.test.ts fails when they disagree.

/**
 * Refuse what Squirrelly would parse but not compile or render: unknown helpers, filters other
 * than `in` (a missing filter is only found while rendering), filters on helpers, blocks a helper
 * does not take (their text would silently vanish), self-closing helpers.
 */
function checkAst(ast: AstNode[], tags: Tag[], fail: (at: number, problem: string, fix: string) => never): void {
  // Squirrelly's nodes, walked depth first with each helper's blocks after its body, come in the
  // order of the tags that open them (closing tags make no node).
  const opening = tags.filter((t) => t.prefix !== '/')
  let k = 0
  const where = () => opening[k++]?.start ?? 0
  const filters = (node: Exclude<AstNode, string>, at: number, what: string) => {
    for (const [name] of node.f ?? []) {
      if (node.t !== 'i')
        fail(at, `${what} has a filter (| ${name}); filters apply to {{ value }} interpolations only`, 'remove the filter')
      if (!FILTER_NAMES.includes(name))
        fail(
          at,
          `unknown filter "${name}"`,
          `available filters: ${FILTER_NAMES.map((f) => `| ${f}`).join(', ')} (e.g. {{ it.batch | in("id") }}); compute anything else in the expression itself`,
        )
    }
  }
  const walk = (nodes: AstNode[]) => {
    for (const node of nodes) {
      if (typeof node === 'string') continue
      const at = where()
      if (node.t === 's')
        fail(at, `self-closing helper {{@${node.n ?? ''} /}} is not supported`, `write {{@${node.n ?? ''}(…) => x}}…{{/${node.n ?? ''}}}`)
      if (node.t === 'h' && !HELPER_NAMES.includes(node.n ?? ''))
        fail(at, `unknown helper @${node.n ?? ''}`, `available helpers: ${HELPER_NAMES.map((h) => '@' + h).join(', ')}`)
      filters(node, at, node.t === 'h' ? `helper @${node.n}` : 'the tag')
      if (node.d) walk(node.d)
      const allowed = HELPER_BLOCKS[node.n ?? ''] ?? []
      for (const b of node.b ?? []) {
        const bat = where()
        if (!allowed.includes(b.n ?? ''))
          fail(
            bat,
            `@${node.n} does not take a {{#${b.n ?? ''}}} block`,
            allowed.length ? `blocks of @${node.n}: ${allowed.map((a) => `{{#${a}}}`).join(', ')}` : `remove the block`,
          )
        filters(b, bat, `block {{#${b.n}}}`)
        walk(b.d)
      }
      if (node.t === 'h' && node.n === 'try' && node.b?.length !== 1)
        fail(at, '@try takes exactly one {{#catch}} block', 'write {{@try}}…{{#catch => e}}…{{/try}}')
    }
  }
  walk(ast)
}

function leadView(member: Record<string, unknown>): Record<string, unknown> {
  return new Proxy(member, {
    get: (t, k, r) => (typeof k !== 'string' || k in t || k === 'toJSON' || k === 'then' ? Reflect.get(t, k, r) : fieldValue(t, k)),
  })
}

function fromSqrl(e: unknown): TemplateError {
  if (e instanceof TemplateError) return e
  const msg = e instanceof Error ? e.message : String(e)
  // Drop the generated-code dump Squirrelly appends to JavaScript syntax errors.
  const head = msg.split(/\n=+\n/)[0]!.trim()
  const pos = /at line (\d+) col (\d+)/.exec(head)
  return new TemplateError(
    `Squirrelly cannot compile the template: ${head}`,
    pos ? Number(pos[1]) : undefined,
    pos ? Number(pos[2]) : undefined,
  )
}

export function compileSquirrelly(source: string, dialect: TemplateDialect): { fields: string[]; render(ctx: RenderContext): string } {
  const fail = (at: number, problem: string, fix: string): never => {
    throw templateError(source, at, problem, fix)
  }
  let contexts: SlotContext[] = []
  const labels: string[] = []
  const sql = (value: unknown, n: number) => renderSlot(value, contexts[n]!, dialect, labels[n]!)
  const inList = (arr: unknown, field?: unknown) => {
    if (!Array.isArray(arr)) throw new TemplateError('in(…) expects an array, such as it.batch')
    if (field !== undefined && typeof field !== 'string') throw new TemplateError('in(…) takes a column name string, e.g. in("email")')
    const item: SlotContext = dialect === 'json' ? { kind: 'json' } : { kind: 'bare', space: false }
    const items = arr.map((m: Record<string, unknown>) =>
      renderSlot(field === undefined ? m : fieldValue(m, field), item, dialect, field ?? 'in()'),
    )
    return new SqlFragment(items.length ? items.join(', ') : dialect === 'json' ? '' : 'NULL')
  }
  let interps = 0
  const verify = (nodes: AstNode[]) => {
    for (const node of nodes) {
      if (typeof node === 'string') continue
      if (node.t === 'i') {
        const f = node.f
        const ok =
          !node.raw &&
          f[f.length - 1]?.[0] === '__sql' &&
          f[f.length - 1]?.[1] === String(interps) &&
          f.filter((x) => x[0] === '__sql').length === 1
        if (!ok)
          throw new TemplateError(
            'an interpolation would be written without SQL escaping (raw output is not allowed); use {{ value }} with no "*" or "| safe"',
          )
        interps++
      } else if (node.t === 'e')
        throw new TemplateError('execute tags {{! … }} are not allowed; compute values in the interpolation itself')
      if (node.d) verify(node.d)
      node.b?.forEach((b) => verify(b.d))
    }
  }
  const config: SqrlConfig = Sqrl.getConfig({
    autoEscape: false,
    autoTrim: false,
    storage: {
      helpers: cacher(HELPERS),
      nativeHelpers: cacher(NATIVE),
      filters: cacher<unknown>({ __sql: sql, in: inList }),
      templates: cacher({}),
    } as unknown as SqrlConfig['storage'],
    plugins: [],
  })

  // 1. Squirrelly's own syntax check first, so its positions refer to the author's text.
  let ast: AstNode[]
  try {
    ast = Sqrl.parse(source, config)
  } catch (e) {
    throw fromSqrl(e)
  }

  // 2. Split into SQL text and tags; interpolations are the placeholders.
  const tags = scanTags(source)
  const pieces: Piece[] = []
  const listSlots: Array<{ slot: number; at: number; text: string }> = []
  const boundNames = new Set(['lead'])
  // The scanner must see the text exactly as Squirrelly will emit it, so the trim markers
  // are applied here and removed from the tags handed to Squirrelly.
  const textPiece = (from: number, to: number, start?: string, end?: string): Piece => {
    const { text, cut } = trim(source.slice(from, to), start, end)
    return { kind: 'text', text, at: from + cut }
  }
  let last = 0
  let open = 0 // helpers open around the tag
  tags.forEach((t, k) => {
    pieces.push(textPiece(last, t.start, tags[k - 1]?.trimAfter, t.trimBefore))
    const content = source.slice(t.body, t.close)
    const text = source.slice(t.start, t.end)
    if (t.prefix === '*') fail(t.start, `raw output ${text} is not allowed`, 'use {{ value }}; it is written as an SQL literal')
    if (t.prefix === '!') fail(t.start, `execute tag ${text} is not allowed`, 'compute the value inside {{ … }} or with {{@if}}')
    if (/__sql/.test(content)) fail(t.start, `${text} uses the reserved name __sql`, 'rename it')
    if (t.prefix === '') {
      if (/\|\s*safe\b/.test(content))
        fail(t.start, `${text} asks for raw output with "| safe"`, 'remove "| safe"; values are always written as SQL literals')
      if (/\|\s*in\b/.test(content)) listSlots.push({ slot: labels.length, at: t.start, text })
      labels.push(text)
      pieces.push({ kind: 'slot', at: t.start, name: text })
    } else {
      if (t.prefix === '@') {
        const name = /^[\w$]*/.exec(content)![0]
        if (!HELPER_NAMES.includes(name))
          fail(t.start, `unknown helper @${name}`, `available helpers: ${HELPER_NAMES.map((h) => '@' + h).join(', ')}`)
        for (const m of content.matchAll(/=>\s*\(?\s*([A-Za-z_$][\w$]*)/g)) boundNames.add(m[1]!)
        if (!t.selfClosing) open++
      } else if (t.prefix === '/') open--
      else if (t.prefix === '#' && open === 0)
        fail(
          t.start,
          `${text} is outside a helper`,
          'blocks belong inside one: {{@if(…)}}…{{#else}}…{{/if}}, {{@rows(…) => x}}…{{#sep}}…{{/rows}}',
        )
      pieces.push({ kind: 'ctl', at: t.start, name: text })
    }
    last = t.end
  })
  pieces.push(textPiece(last, source.length, tags[tags.length - 1]?.trimAfter))

  checkAst(ast, tags, fail)

  // 3. Decide each placeholder's SQL context, then rewrite the template accordingly.
  const analysis =
    dialect === 'json'
      ? { contexts: analyzeJson(pieces, source), texts: pieces.map((p) => (p.kind === 'text' ? p.text : '')) }
      : analyze(pieces, dialect, source)
  contexts = analysis.contexts
  for (const l of listSlots) {
    if (contexts[l.slot]!.kind === 'path')
      fail(
        l.at,
        `${l.text} produces a list of values and cannot stand in the request line`,
        'use it in the body: "ids": [{{ it.batch | in("id") }}]',
      )
    if (contexts[l.slot]!.kind !== 'bare' && contexts[l.slot]!.kind !== 'json')
      fail(
        l.at,
        `${l.text} produces a list of literals and cannot stand inside quotes`,
        'write IN ({{ it.batch | in("column") }}) without quotes',
      )
  }
  let rewritten = ''
  let slot = 0
  pieces.forEach((p, i) => {
    if (p.kind === 'text') rewritten += analysis.texts[i]!
    else {
      const t = tags[(i - 1) / 2]!
      let head = source.slice(t.start, t.close)
      let tail = source.slice(t.close, t.end)
      if (t.trimBefore) head = '{{' + head.slice(3)
      if (t.trimAfter) tail = tail.slice(0, -3) + '}}'
      rewritten += p.kind === 'slot' ? `${head} | __sql(${slot++})${tail}` : head + tail
    }
  })

  // Squirrelly parses a second time to build its message for JavaScript syntax errors, hence
  // the counter reset.
  let fn: ReturnType<typeof Sqrl.compile>
  try {
    fn = Sqrl.compile(rewritten, { ...config, plugins: [{ processAST: (ast: AstNode[]) => ((interps = 0), verify(ast), ast) }] })
  } catch (e) {
    throw fromSqrl(e)
  }
  if (interps !== labels.length)
    throw new TemplateError('internal error: Squirrelly found a different set of interpolations than the SQL scanner')

  const fields = new Set<string>()
  const names = [...boundNames].map((n) => n.replaceAll('$', '\\$')).join('|')
  for (const t of tags) {
    const content = source.slice(t.body, t.close)
    for (const m of content.matchAll(
      new RegExp(`(?<![\\w$.])(?:${names})(?:\\.([A-Za-z_$][\\w$]*)|\\[\\s*(?:"([^"]+)"|'([^']+)')\\s*\\])`, 'g'),
    ))
      fields.add((m[1] ?? m[2] ?? m[3])!)
    for (const m of content.matchAll(/\|\s*in\s*\(\s*(?:"([^"]+)"|'([^']+)')/g)) fields.add((m[1] ?? m[2])!)
  }

  return {
    fields: [...fields],
    render(ctx) {
      const it = {
        segment_id: ctx.segment_id,
        segment_name: ctx.segment_name,
        audience: ctx.audience,
        version: ctx.version,
        batch: ctx.batch.map(leadView),
      }
      try {
        return fn(it, config)
      } catch (e) {
        if (e instanceof TemplateError || e instanceof ValueError) throw e
        throw new TemplateError(`the Squirrelly template failed while rendering: ${e instanceof Error ? e.message : String(e)}`)
      }
    },
  }
}
