// Compiler for the Altcraft template syntax, accepted verbatim from their documentation:
//   {segment_id} {segment_name} {audience} {version}
//   {for $index, $lead = $batch} … {$lead.Field} … {$index} … {autocomma} … {end}
//   {batch_in "Field"}
// For the json dialect (HTTP bodies, json.ts) the same tags write JSON values, and
// {batch_in "Field"} the inside of a JSON array: "ids": [{batch_in "id"}].
// A "{" followed by "$" or a letter and closed by "}" on the same line is a tag; any other
// "{" is SQL text, so JSON literals like '{"a": 1}' need no escaping.
//
// {for} and {end} alone on their line take the whole line with them (like Mustache
// standalone tags), so the documented layout renders one row per line with no blank lines.
//
// db/0007_templates.sql ports this compiler's checks to plpgsql (segmenter._altcraft_fields), so
// create_subscription refuses what it refuses: change both together; test/template_check.test.ts
// fails when they disagree.
import { analyzeJson } from './json.js'
import { analyze, endsWord, type Piece } from './lexer.js'
import {
  fieldValue,
  JSON_CARE,
  renderSlot,
  SqlFragment,
  templateError,
  type RenderContext,
  type SlotContext,
  type TemplateDialect,
} from './literals.js'

type Tag =
  | { t: 'var'; name: 'segment_id' | 'segment_name' | 'audience' | 'version' }
  | { t: 'field'; v: string; field: string }
  | { t: 'index'; v: string }
  | { t: 'for'; index?: string; lead: string }
  | { t: 'end' }
  | { t: 'autocomma' }
  | { t: 'batch_in'; field: string }
type Tok = { kind: 'text'; text: string; at: number } | { kind: 'tag'; tag: Tag; raw: string; at: number }
type Node =
  | { k: 'text'; piece: number }
  | {
      k: 'slot'
      slot: number
      what: string
      value: (ctx: RenderContext, lead: Record<string, unknown> | undefined, index: number) => unknown
      /** The member's column it reads ({$lead.field}), for the json render's fast path. */
      field?: string
    }
  | { k: 'loop'; body: Node[] }
  | { k: 'comma' }

const SPACED: SlotContext = { kind: 'bare', space: true }
const GLUED: SlotContext = { kind: 'bare', space: false }

const KNOWN =
  '{segment_id}, {segment_name}, {audience}, {version}, {for $index, $lead = $batch}, {$lead.Field}, {$index}, {autocomma}, {end}, {batch_in "Field"}'
const TAG = /\{([$A-Za-z][^{}\n]*)\}/g

function parseTag(body: string): Tag | undefined {
  const b = body.trim()
  let m: RegExpMatchArray | null
  if (b === 'segment_id' || b === 'segment_name' || b === 'audience' || b === 'version') return { t: 'var', name: b }
  if (b === 'end') return { t: 'end' }
  if (b === 'autocomma') return { t: 'autocomma' }
  if ((m = /^for\s+(?:\$(\w+)\s*,\s*)?\$(\w+)\s*=\s*\$batch$/.exec(b))) return { t: 'for', index: m[1], lead: m[2]! }
  if ((m = /^batch_in\s+(?:"([^"]+)"|'([^']+)'|([\w$]+))$/.exec(b))) return { t: 'batch_in', field: (m[1] ?? m[2] ?? m[3])! }
  if ((m = /^\$(\w+)\.([\w$]+)$/.exec(b))) return { t: 'field', v: m[1]!, field: m[2]! }
  if ((m = /^\$(\w+)$/.exec(b))) return { t: 'index', v: m[1]! }
  return undefined
}

function tokenize(source: string): Tok[] {
  const toks: Tok[] = []
  let last = 0
  for (const m of source.matchAll(TAG)) {
    const tag = parseTag(m[1]!)
    if (!tag) throw templateError(source, m.index, `unknown tag ${m[0]}`, `Known tags: ${KNOWN}. A "{" followed by a space is plain text.`)
    toks.push({ kind: 'text', text: source.slice(last, m.index), at: last }, { kind: 'tag', tag, raw: m[0], at: m.index })
    last = m.index + m[0].length
  }
  toks.push({ kind: 'text', text: source.slice(last), at: last })
  // Standalone {for}/{end} lines vanish entirely; decided on the untrimmed text first so
  // two consecutive standalone lines both qualify.
  const standalone = toks.map((tok, i) => {
    if (tok.kind !== 'tag' || (tok.tag.t !== 'for' && tok.tag.t !== 'end')) return false
    const before = (toks[i - 1] as { text: string }).text
    const after = (toks[i + 1] as { text: string }).text
    return (
      (/\n[ \t]*$/.test(before) || (i === 1 && /^[ \t]*$/.test(before))) &&
      (/^[ \t]*\r?\n/.test(after) || (i === toks.length - 2 && /^[ \t]*$/.test(after)))
    )
  })
  standalone.forEach((yes, i) => {
    if (!yes) return
    const before = toks[i - 1] as { text: string }
    const after = toks[i + 1] as { text: string; at: number }
    before.text = before.text.replace(/[ \t]*$/, '')
    const cut = /^[ \t]*(\r?\n)?/.exec(after.text)![0].length
    after.text = after.text.slice(cut)
    after.at += cut
  })
  return toks
}

export function compileAltcraft(source: string, dialect: TemplateDialect): { fields: string[]; render(ctx: RenderContext): string } {
  const toks = tokenize(source)
  const pieces: Piece[] = []
  const fields = new Set<string>()
  const batchIn: Array<{ slot: number; at: number; raw: string }> = []
  const root: Node[] = []
  let body = root
  let loop: { index?: string; lead: string; at: number } | undefined
  let slots = 0
  const fail = (at: number, problem: string, fix: string): never => {
    throw templateError(source, at, problem, fix)
  }
  const slot = (tok: Tok & { kind: 'tag' }, value: Extract<Node, { k: 'slot' }>['value'], what = tok.raw, field?: string) => {
    pieces.push({ kind: 'slot', at: tok.at, name: tok.raw })
    body.push({ k: 'slot', slot: slots++, what, value, field })
  }

  for (const tok of toks) {
    if (tok.kind === 'text') {
      body.push({ k: 'text', piece: pieces.length })
      pieces.push(tok)
      continue
    }
    const tag = tok.tag
    switch (tag.t) {
      case 'var': {
        const name = tag.name
        slot(tok, (ctx) => ctx[name])
        break
      }
      case 'for': {
        if (loop) fail(tok.at, 'nested {for} loops are not supported', 'close the first loop with {end} before starting another')
        if (tag.index === tag.lead)
          fail(
            tok.at,
            `${tok.raw} uses $${tag.lead} for both the index and the member`,
            'give them different names, e.g. {for $index, $lead = $batch}',
          )
        loop = { index: tag.index, lead: tag.lead, at: tok.at }
        pieces.push({ kind: 'ctl', at: tok.at, name: tok.raw })
        const node: Node = { k: 'loop', body: [] }
        body.push(node)
        body = node.body
        break
      }
      case 'end':
        if (!loop) fail(tok.at, '{end} without a matching {for}', 'remove it, or open the loop with {for $index, $lead = $batch}')
        pieces.push({ kind: 'ctl', at: tok.at, name: tok.raw })
        loop = undefined
        body = root
        break
      case 'autocomma':
        if (!loop)
          fail(
            tok.at,
            '{autocomma} outside a {for} loop',
            'use it inside {for $index, $lead = $batch} … {end}, where it separates the rows',
          )
        pieces.push({ kind: 'fixed', at: tok.at })
        body.push({ k: 'comma' })
        break
      case 'field': {
        if (!loop)
          fail(
            tok.at,
            `${tok.raw} outside a {for} loop`,
            `use it between {for $index, $lead = $batch} and {end}, or {batch_in "${tag.field}"} for a list`,
          )
        if (tag.v !== loop!.lead)
          fail(
            tok.at,
            `unknown variable $${tag.v} in ${tok.raw}`,
            `the loop names its member $${loop!.lead}: write {$${loop!.lead}.${tag.field}}`,
          )
        const field = tag.field
        fields.add(field)
        slot(tok, (_ctx, lead) => fieldValue(lead!, field), field, field)
        break
      }
      case 'index':
        if (!loop) fail(tok.at, `${tok.raw} outside a {for} loop`, 'use it between {for $index, $lead = $batch} and {end}')
        if (tag.v !== loop!.index && tag.v !== loop!.lead) fail(tok.at, `unknown variable ${tok.raw}`, `Known tags: ${KNOWN}`)
        if (tag.v === loop!.lead) fail(tok.at, `${tok.raw} is a whole row`, `write {$${tag.v}.Field} to use one of its columns`)
        slot(tok, (_ctx, _lead, index) => index)
        break
      case 'batch_in': {
        const field = tag.field
        fields.add(field)
        batchIn.push({ slot: slots, at: tok.at, raw: tok.raw })
        // In SQL, IN (NULL) is valid and matches nothing, so an empty batch stays harmless; in
        // JSON the list is the inside of an array, [] when empty.
        const item: SlotContext = dialect === 'json' ? { kind: 'json' } : { kind: 'bare', space: false }
        const empty = dialect === 'json' ? '' : 'NULL'
        slot(tok, (ctx) => {
          const items = ctx.batch.map((m) => renderSlot(fieldValue(m, field), item, dialect, field))
          return new SqlFragment(items.length ? items.join(', ') : empty)
        })
        break
      }
    }
  }
  if (loop) fail(loop.at, '{for} is never closed', 'add {end} after the loop body')

  const { contexts, texts } =
    dialect === 'json'
      ? { contexts: analyzeJson(pieces, source), texts: pieces.map((p) => (p.kind === 'text' ? p.text : '')) }
      : analyze(pieces, dialect, source)
  for (const b of batchIn) {
    const kind = contexts[b.slot]!.kind
    if (kind === 'path')
      fail(b.at, `${b.raw} produces a list of values and cannot stand in the request line`, 'use it in the body: "ids": [' + b.raw + ']')
    if (kind !== 'bare' && kind !== 'json')
      fail(b.at, `${b.raw} produces a list of literals and cannot stand inside quotes`, `write IN (${b.raw}) without quotes`)
  }

  // Output is collected in pieces and joined once, because reading the end of a growing
  // concatenated string flattens it each time (quadratic: a 5,000-member batch took 1.2 s instead
  // of 26 ms). The last non-empty piece tells what the output ends with.
  interface Out {
    parts: string[]
    last: string
  }
  const write = (out: Out, piece: string) => {
    if (piece.length === 0) return
    out.parts.push(piece)
    out.last = piece
  }
  const emit = (nodes: Node[], ctx: RenderContext, out: Out, lead?: Record<string, unknown>, index = 0, last = true) => {
    for (let k = 0; k < nodes.length; k++) {
      const n = nodes[k]!
      if (n.k === 'text') write(out, texts[n.piece]!)
      else if (n.k === 'comma') write(out, last ? '' : ',')
      else if (n.k === 'loop') {
        const batch = ctx.batch
        for (let i = 0; i < batch.length; i++) emit(n.body, ctx, out, batch[i], i, i === batch.length - 1)
      } else {
        let c: SlotContext = contexts[n.slot]!
        // Decided on the actual output: a literal glued to a word (E'…', N'…', _charset'…')
        // would change how the server reads it.
        if (c.kind === 'bare') c = endsWord(out.last) ? SPACED : GLUED
        write(out, renderSlot(n.value(ctx, lead, index), c, dialect, n.what))
      }
    }
  }
  const generated = dialect === 'json' ? generateJson(root, texts, contexts) : null
  return {
    fields: [...fields],
    render(ctx) {
      if (generated) return generated(ctx)
      const out: Out = { parts: [], last: '' }
      emit(root, ctx, out)
      return out.parts.join('')
    },
  }
}

/**
 * A json template as one generated function: the texts become string literals (JSON.stringify:
 * template text is data in it, never code), the loop a `for`, the output one `+=` chain. In the
 * json dialect every slot's context is known at compile time (no SQL word to glue a literal to),
 * so nothing depends on what was written before. The same text as the walk
 * (test/http_render.test.ts).
 *
 * Per member, the output grows by few and large pieces: each `+=` is a node of the rope that the
 * body becomes (32 bytes, and a step of its flattening), and a body of 10,000 ids was 70,000 of
 * them. So in the loop the text between two slots, with its {autocomma}, is one constant chosen
 * by `last`; and a member's text column that needs no escape goes in as it is, its quotes ending
 * and starting the constants around it (what fieldValue and jsonString would make of it, without
 * their calls). A string read off a member is its own column's: no string is inherited from
 * Object.prototype. Anything else takes the full path (slot). The default add template, 10,000
 * ids (2026-12-02): render 1.65 ms with a call per slot and a piece per text, 0.57 with the
 * shortcut, 0.49 with the constants, whose rope also flattens in 0.29 ms instead of 0.43.
 */
function generateJson(root: Node[], texts: string[], contexts: SlotContext[]): (ctx: RenderContext) => string {
  const slots: Array<Extract<Node, { k: 'slot' }>> = []
  // The loop's runs: runs[j][variant], variant = quote after the slot before (1) | quote before
  // the slot after (2) | last member (4).
  const runs: string[][] = []
  const slotCall = (n: Extract<Node, { k: 'slot' }>, lead: string, index: string) => {
    slots.push(n)
    return `slot(${slots.length - 1}, ctx, ${lead}, ${index})`
  }
  const fastField = (n: Node): n is Extract<Node, { k: 'slot' }> & { field: string } =>
    n.k === 'slot' && n.field !== undefined && contexts[n.slot]!.kind === 'json'
  const top = (nodes: Node[]): string =>
    nodes
      .map((n) => {
        if (n.k === 'text') return texts[n.piece] ? `out += ${JSON.stringify(texts[n.piece])};` : ''
        if (n.k === 'comma') return '' // outside a loop: always the last
        if (n.k === 'loop')
          return `{ const batch = ctx.batch; for (let i = 0; i < batch.length; i++) { const lead = batch[i], last = i === batch.length - 1; ${loopBody(n.body)} } }`
        return `out += ${slotCall(n, 'undefined', '0')};`
      })
      .join('\n')
  const loopBody = (nodes: Node[]): string => {
    // runs and slots alternate: run, slot, run, …, slot, run (a run may be empty)
    const parts: Array<{ text: string[]; last: string[] } | Extract<Node, { k: 'slot' }>> = [{ text: [], last: [] }]
    for (const n of nodes) {
      const run = parts[parts.length - 1]!
      if (n.k === 'slot') parts.push(n, { text: [], last: [] })
      else if ('text' in run) {
        const piece = n.k === 'text' ? texts[n.piece]! : n.k === 'comma' ? ',' : ''
        run.text.push(piece)
        run.last.push(n.k === 'comma' ? '' : piece)
      }
    }
    const values: string[] = [] // the shortcut's values and flags, first: reads without effects
    const lines: string[] = []
    const flag = (k: number) => {
      const part = parts[k]
      return part && !('text' in part) && fastField(part) ? `f${k}` : null
    }
    for (let k = 0; k < parts.length; k++) {
      const part = parts[k]!
      if ('text' in part) {
        const before = flag(k - 1)
        const after = flag(k + 1)
        const variants = Array.from({ length: 8 }, (_, v) => {
          const text = (v & 4 ? part.last : part.text).join('')
          return (v & 1 ? '"' : '') + text + (v & 2 ? '"' : '')
        })
        if (variants.every((v) => v === '')) continue
        runs.push(variants)
        const index = [before && `(${before} ? 1 : 0)`, after && `(${after} ? 2 : 0)`, '(last ? 4 : 0)'].filter(Boolean).join(' | ')
        lines.push(`out += runs[${runs.length - 1}][${index}];`)
      } else if (fastField(part)) {
        values.push(`const v${k} = lead[${JSON.stringify(part.field)}], f${k} = typeof v${k} === 'string' && !care.test(v${k});`)
        lines.push(`out += f${k} ? v${k} : ${slotCall(part, 'lead', 'i')};`)
      } else lines.push(`out += ${slotCall(part, 'lead', 'i')};`)
    }
    return [...values, ...lines].join('\n')
  }
  const body = top(root)
  const slot = (k: number, ctx: RenderContext, lead: Record<string, unknown> | undefined, index: number) => {
    const n = slots[k]!
    return renderSlot(n.value(ctx, lead, index), contexts[n.slot]!, 'json', n.what)
  }
  return new Function('slot', 'care', 'runs', `return function render(ctx) { let out = ''; ${body} return out }`)(slot, JSON_CARE, runs)
}
