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
 * so nothing depends on what was written before. 0.11 µs per member of the default add template
 * against the walk's 0.8 (2026-12-01), and the same text (test/http_render.test.ts).
 */
function generateJson(root: Node[], texts: string[], contexts: SlotContext[]): (ctx: RenderContext) => string {
  const slots: Array<Extract<Node, { k: 'slot' }>> = []
  const code = (nodes: Node[], lead: string, index: string): string =>
    nodes
      .map((n) => {
        if (n.k === 'text') return texts[n.piece] ? `out += ${JSON.stringify(texts[n.piece])};` : ''
        if (n.k === 'comma') return `if (!last) out += ',';`
        if (n.k === 'loop')
          return `{ const batch = ctx.batch; for (let i = 0; i < batch.length; i++) { const lead = batch[i], last = i === batch.length - 1; ${code(n.body, 'lead', 'i')} } }`
        slots.push(n)
        const k = slots.length - 1
        // A member's text column that needs no escape goes in as it is, between quotes: what
        // fieldValue and jsonString would make of it, without their calls (they took half the
        // render of an id-only body). A string read off a member is its own column's: no string
        // is inherited from Object.prototype. Anything else takes the full path.
        if (n.field !== undefined && contexts[n.slot]!.kind === 'json')
          return `{ const v = ${lead}[${JSON.stringify(n.field)}]; out += typeof v === 'string' && !care.test(v) ? '"' + v + '"' : slot(${k}, ctx, ${lead}, ${index}); }`
        return `out += slot(${k}, ctx, ${lead}, ${index});`
      })
      .join('\n')
  const body = code(root, 'undefined', '0')
  const slot = (k: number, ctx: RenderContext, lead: Record<string, unknown> | undefined, index: number) => {
    const n = slots[k]!
    return renderSlot(n.value(ctx, lead, index), contexts[n.slot]!, 'json', n.what)
  }
  return new Function('slot', 'care', `return function render(ctx) { let out = ''; const last = true; ${body} return out }`)(
    slot,
    JSON_CARE,
  )
}
