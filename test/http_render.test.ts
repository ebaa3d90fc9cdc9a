// The json dialect (src/render/json.ts): values become JSON values that parse back to themselves,
// a placeholder inside a JSON string and a body that does not parse are refused at compile, the
// request line is percent-encoded and cannot leave the consumer's URL (parseRequest, requestUrl),
// and the default templates in templates/http/ render JSON. No database needed.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Webhook } from 'standardwebhooks'
import { parseRequest, requestUrl, WebhookSigner } from '../src/http-request.js'
import { compileTemplate, jsonValue, TemplateError, ValueError, type RenderContext, type Syntax } from '../src/render/index.js'

const TEMPLATES = join(resolve(dirname(fileURLToPath(import.meta.url)), '..'), 'templates', 'http')

const HOSTILE = [
  '',
  "it's",
  'say "hi"',
  'back\\slash',
  '\\"',
  'a\nb\r\nc\td',
  '\0nul',
  '\x01\x1f\x7f',
  '</script><script>alert(1)</script>',
  '<!-- & -->',
  '\u2028\u2029',
  '🙂 emoji, Ünïcødé, 漢字',
  '{segment_id} {$lead.id} {{ it.segment_id }} {for $i, $l = $batch}',
  '"}, {"id": "injected',
  '\\u0041',
]

const ctx = (over: Partial<RenderContext> = {}): RenderContext => ({
  segment_id: '7a0c8f8e-3c1e-4c53-9a51-3c0d7b0b8a11',
  segment_name: 'VIP',
  audience: 'crm',
  version: 42n,
  batch: [{ id: 'a' }, { id: 'b' }],
  ...over,
})

const render = (src: string, syntax: Syntax, c = ctx()) => compileTemplate(src, syntax, 'json').render(c)

const MEMBERS: Record<Syntax, string> = {
  altcraft: '{"members": [{for $i, $m = $batch}{"id": {$m.id}, "v": {$m.v}}{autocomma}{end}], "name": {segment_name}}',
  squirrelly: '{"members": [{{@rows(it.batch) => m}}{"id": {{ m.id }}, "v": {{ m.v }}}{{/rows}}], "name": {{ it.segment_name }}}',
}

for (const syntax of ['altcraft', 'squirrelly'] as const)
  test(`${syntax}: hostile strings arrive as the exact JSON strings, with <, >, &, U+2028/9 escaped`, () => {
    const batch = HOSTILE.map((v, i) => ({ id: String(i), v }))
    for (const v of HOSTILE) {
      const out = render(MEMBERS[syntax], syntax, ctx({ segment_name: v, batch }))
      assert.deepEqual(JSON.parse(out), { members: batch, name: v }, JSON.stringify(v))
      assert.ok(!/[<>&\u2028\u2029]/.test(out), `nothing to trip an HTML or script context: ${out}`)
    }
  })

test('values: numbers, bigint, null, booleans, dates, jsonb; what JSON cannot hold is a ValueError', () => {
  const v = { n: 1.5, neg: -3, big: 12345678901234567890n, nul: null, t: true, f: false, d: new Date(Date.UTC(2024, 1, 29, 3, 4, 5, 6)) }
  const obj = { tags: ['x', 1, null, { deep: "it's </b>" }], n: 2n }
  const src =
    '[{for $i, $m = $batch}{"n": {$m.n}, "neg": {$m.neg}, "big": {$m.big}, "nul": {$m.nul}, "t": {$m.t}, "f": {$m.f}, "d": {$m.d}, "o": {$m.o}, "u": {$m.u}}{autocomma}{end}]'
  const out = render(src, 'altcraft', ctx({ batch: [{ ...v, o: obj, u: undefined }] }))
  assert.equal(
    out,
    '[{"n": 1.5, "neg": -3, "big": 12345678901234567890, "nul": null, "t": true, "f": false, "d": "2024-02-29T03:04:05.006Z", ' +
      '"o": {"tags":["x",1,null,{"deep":"it\'s \\u003c/b\\u003e"}],"n":2}, "u": null}]',
  )
  assert.equal(jsonValue(-0), '0')
  assert.equal(render('{"v": {version}}', 'altcraft'), '{"v": 42}')
  assert.equal(render('{"v": {{ it.version }}}', 'squirrelly'), '{"v": 42}')
  for (const bad of [NaN, Infinity, -Infinity, new Date(NaN), Buffer.from('x'), '\ud800', { x: [NaN] }, () => 1])
    assert.throws(
      () => render('[{for $i, $m = $batch}{$m.x}{autocomma}{end}]', 'altcraft', ctx({ batch: [{ x: bad }] })),
      (e: unknown) => e instanceof ValueError && e.code === 'VALUE_INVALID' && e.field === 'x',
      String(bad),
    )
})

test('loops, {autocomma}, batch_in and the squirrelly helpers build JSON arrays', () => {
  const batch = [
    { id: 'a', email: 'a@x' },
    { id: 'b', email: null },
    { id: 'c', email: 'c@x' },
  ]
  const alt =
    '{"members": [{for $index, $m = $batch}{"i": {$index}, "id": {$m.id}, "email": {$m.email}}{autocomma}{end}], "ids": [{batch_in "id"}]}'
  const want = {
    members: batch.map((m, i) => ({ i, ...m })),
    ids: ['a', 'b', 'c'],
  }
  assert.deepEqual(JSON.parse(render(alt, 'altcraft', ctx({ batch }))), want)
  const sq =
    '{"members": [{{@rows(it.batch) => m, i}}{"i": {{ i }}, "id": {{ m.id }}, "email": {{ m.email }}}{{/rows}}], "ids": [{{ it.batch | in("id") }}]}'
  assert.deepEqual(JSON.parse(render(sq, 'squirrelly', ctx({ batch }))), want)
  // Whole members and the whole batch are JSON objects too.
  assert.deepEqual(JSON.parse(render('{"all": {{ it.batch }}}', 'squirrelly', ctx({ batch }))), { all: batch })
  assert.deepEqual(
    JSON.parse(render('[{{@each(it.batch) => m, i}}{{@if(i > 0)}},{{/if}}{{ m }}{{/each}}]', 'squirrelly', ctx({ batch }))),
    batch,
  )
  // An empty batch: [] rather than SQL's NULL.
  assert.deepEqual(JSON.parse(render(alt, 'altcraft', ctx({ batch: [] }))), { members: [], ids: [] })
  assert.deepEqual(JSON.parse(render(sq, 'squirrelly', ctx({ batch: [] }))), { members: [], ids: [] })
  // A column named in another case (Postgres folds names) and one that is not text take the full
  // path beside a plain text column's shortcut; all three give what JSON.parse reads back.
  const mixed = [{ id: 'plain', email: 'a"b', score: 7 }]
  assert.deepEqual(
    JSON.parse(render('[{for $i, $m = $batch}[{$m.id}, {$m.EMAIL}, {$m.score}]{autocomma}{end}]', 'altcraft', ctx({ batch: mixed }))),
    [['plain', 'a"b', 7]],
  )
  // The documented layout: one member per line, no blank lines.
  assert.equal(render('[\n{for $i, $m = $batch}\n  {$m.id}{autocomma}\n{end}\n]', 'altcraft'), '[\n  "a",\n  "b"\n]')
})

test('a placeholder inside a JSON string is refused at compile: values are JSON values', () => {
  const cases: Array<[string, Syntax]> = [
    ['{"name": "{segment_name}"}', 'altcraft'],
    ['{"name": "VIP: {segment_name}"}', 'altcraft'],
    ['{"m": [{for $i, $m = $batch}"{$m.id}"{autocomma}{end}]}', 'altcraft'],
    ['{"name": "{{ it.segment_name }}"}', 'squirrelly'],
    ['{"a": "x\\"{segment_id}"}', 'altcraft'],
  ]
  for (const [src, syntax] of cases)
    assert.throws(
      () => compileTemplate(src, syntax, 'json'),
      (e: unknown) =>
        e instanceof TemplateError && /inside a JSON string/.test(e.message) && /remove the quotes/.test(e.message) && !!e.line,
      src,
    )
  assert.throws(() => compileTemplate('{"a": "{for $i, $m = $batch}x{end}"}', 'altcraft', 'json'), /inside a JSON string/)
  // An escaped quote does not end the string; a backslash-backslash does.
  assert.doesNotThrow(() => compileTemplate('{"a": "x\\\\", "b": {segment_id}}', 'altcraft', 'json'))
})

test('a body that does not parse for a sample batch is refused at compile, naming the position', () => {
  const bad: Array<[string, Syntax, RegExp]> = [
    ['{"members": [{for $i, $m = $batch}{"id": {$m.id}}{end}]}', 'altcraft', /expected "," or "\]" in the array, found "\{" at line 1:\d+/],
    ['{"a": {segment_id}', 'altcraft', /expected "," or "\}" in the object, found the end of the body/],
    ['{"a": {segment_id},}', 'altcraft', /expected a member name/],
    ['{"a" 1}', 'altcraft', /expected ":" after the member name/],
    ["{'a': 1}", 'altcraft', /expected a member name/],
    ['{"a": 01}', 'altcraft', /unexpected "1" after 0/],
    ['{"a": "x\ny"}', 'altcraft', /control character/],
    ['', 'altcraft', /expected a JSON value, found the end of the body/],
    ['{"a": 1} {"b": 2}', 'altcraft', /after the JSON value/],
    ['{"m": [{{@each(it.batch) => m}}{{ m.id }}{{/each}}]}', 'squirrelly', /in the array/],
  ]
  for (const [src, syntax, problem] of bad)
    assert.throws(
      () => compileTemplate(src, syntax, 'json'),
      (e: unknown) =>
        e instanceof TemplateError && /^the body is not JSON when rendered for a sample batch: /.test(e.message) && problem.test(e.message),
      src,
    )
  // Squirrelly JavaScript that fails on the sample's text values is left to the real render.
  assert.doesNotThrow(() => compileTemplate('{"n": {{ it.batch.length }}, "x": {{ it.batch[0].tags.join(",") }}}', 'squirrelly', 'json'))
})

test('the request line: method and path, values percent-encoded; parseRequest and requestUrl', () => {
  const src = 'PUT /lists/{audience}/members?segment={segment_name}&v={version}\n\n{"ids": [{batch_in "id"}]}'
  const out = render(src, 'altcraft', ctx({ audience: 'a/b?c#d e', segment_name: 'x&y=z' }))
  assert.equal(out, 'PUT /lists/a%2Fb%3Fc%23d%20e/members?segment=x%26y%3Dz&v=42\n\n{"ids": ["a", "b"]}')
  assert.deepEqual(parseRequest(out, 'POST'), {
    method: 'PUT',
    path: '/lists/a%2Fb%3Fc%23d%20e/members?segment=x%26y%3Dz&v=42',
    body: '{"ids": ["a", "b"]}',
  })
  assert.deepEqual(parseRequest('{"a": 1}', 'POST'), { method: 'POST', path: '', body: '{"a": 1}' })
  assert.deepEqual(parseRequest('DELETE /x\r\n\r\n', 'POST'), { method: 'DELETE', path: '/x', body: '' })
  assert.equal(render('DELETE /lists/{audience}\n\n', 'altcraft'), 'DELETE /lists/crm\n\n', 'no body with a request line')
  assert.equal(render('POST /x/{{ it.audience }}\n\n{}', 'squirrelly', ctx({ audience: '../admin' })), 'POST /x/..%2Fadmin\n\n{}')

  // Values cannot make a dot segment or be NULL in the path.
  for (const audience of ['..', '.', null])
    assert.throws(() => render('POST /lists/{audience}\n\n{}', 'altcraft', ctx({ audience })), ValueError, String(audience))

  // What the template itself writes there is checked at compile.
  const refused: Array<[string, RegExp]> = [
    ['POST https://evil.example/x\n\n{}', /does not start its path with "\/" or "\?"/],
    ['POST //evil.example/x\n\n{}', /names another host/],
    ['POST /\\evil.example\n\n{}', /a character a request path cannot/],
    ['POST /a b\n\n{}', /a character a request path cannot/],
    ['POST /a#frag\n\n{}', /a character a request path cannot/],
    ['POST /a/%zz\n\n{}', /a character a request path cannot/],
    ['POST /a/../b\n\n{}', /dot segment/],
    ['POST /a/%2E%2e/b\n\n{}', /dot segment/],
    ['POST {audience}\n\n{}', /does not start its path/],
    ['POST /x\n{}', /not followed by an empty line/],
    ['POST /x', /not followed by an empty line/],
    ['FETCH /x\n\n{}', /"FETCH", which is not an HTTP method/],
    ['POST /x/{batch_in "id"}\n\n{}', /cannot stand in the request line/],
    ['POST /x{for $i, $m = $batch}{$m.id}{end}\n\n{}', /is in the request line/],
    ['POST /x/{{ it.batch | in("id") }}\n\n{}', /cannot stand in the request line/],
  ]
  for (const [src, problem] of refused) {
    const syntax: Syntax = src.includes('{{') ? 'squirrelly' : 'altcraft'
    assert.throws(
      () => compileTemplate(src, syntax, 'json'),
      (e: unknown) => e instanceof TemplateError && problem.test(e.message),
      src,
    )
  }
  assert.throws(() => parseRequest('POST //evil.example\n\n{}', 'POST'), TemplateError)
  assert.throws(() => parseRequest('{}', 'FETCH'), TemplateError)

  // Appended below the consumer's URL, never resolved against it.
  assert.equal(requestUrl('https://api.example.com/v3/', '/lists/7/members?x=1'), 'https://api.example.com/v3/lists/7/members?x=1')
  assert.equal(requestUrl('https://api.example.com/v3?key=k', '/m?x=1'), 'https://api.example.com/v3/m?key=k&x=1')
  assert.equal(requestUrl('https://api.example.com/hook', '?event=add'), 'https://api.example.com/hook?event=add')
  assert.equal(requestUrl('https://api.example.com/hook', ''), 'https://api.example.com/hook')
  assert.equal(new URL(requestUrl('http://127.0.0.1:9/a', '//evil.example/x')).host, '127.0.0.1:9')
  assert.throws(() => requestUrl('ftp://x/', '/a'), /http/)
})

test('templates/http: the defaults compile for json and render the documented bodies', () => {
  const read = (f: string) => readFileSync(join(TEMPLATES, f), 'utf8')
  const c = ctx({ batch: [{ id: 'a"1' }, { id: '</script>' }] })
  const body = (f: string) => JSON.parse(compileTemplate(read(f), 'altcraft', 'json').render(c))
  const head = { audience: 'crm', segment_id: c.segment_id, version: 42 }
  assert.deepEqual(body('add.json'), { ...head, event: 'add', members: [{ id: 'a"1' }, { id: '</script>' }] })
  assert.deepEqual(body('remove.json'), { ...head, event: 'remove', members: [{ id: 'a"1' }, { id: '</script>' }] })
  assert.deepEqual(body('clear.json'), { ...head, event: 'clear', members: [] })
  assert.deepEqual(body('segment_upsert.json'), { ...head, event: 'segment_upsert', segment_name: 'VIP' })
  assert.deepEqual(body('segment_delete.json'), { ...head, event: 'segment_delete' })
  // One member per line.
  assert.equal(compileTemplate(read('add.json'), 'altcraft', 'json').render(c).trimEnd().split('\n').length, 4)
})

test('a loop body renders byte for byte what its values make, whichever way each value goes', () => {
  // Plain text columns take the shortcut, the rest the full path; each member's text is spelled
  // out here from jsonValue, for every batch size and every mix of the two.
  const src = '[{for $i, $m = $batch}\n  {"i": {$i}, "id": {$m.id}, "n": {$m.n}, "name": {$m.name}}{autocomma}{end}\n]'
  const values = ['plain', 'x'.repeat(40), ...HOSTILE]
  const template = compileTemplate(src, 'altcraft', 'json')
  for (let size = 0; size <= 5; size++)
    for (let shift = 0; shift < values.length; shift++) {
      const batch = Array.from({ length: size }, (_, i) => ({
        id: values[(shift + i) % values.length]!,
        n: i % 2 ? i : null,
        name: values[(shift + 3 * i + 1) % values.length]!,
      }))
      const want =
        '[' +
        batch.map((m, i) => `\n  {"i": ${i}, "id": ${jsonValue(m.id)}, "n": ${jsonValue(m.n)}, "name": ${jsonValue(m.name)}}`).join(',') +
        '\n]'
      assert.equal(template.render(ctx({ batch })), want, `size ${size}, shift ${shift}`)
    }
})

test('WebhookSigner signs as the standardwebhooks package does, and the package verifies it', () => {
  for (const secret of ['whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'whsec_' + Buffer.from('k'.repeat(64)).toString('base64')]) {
    const ours = new WebhookSigner(secret)
    const theirs = new Webhook(secret)
    for (const payload of ['', '{"a":1}', ...HOSTILE.map((h) => JSON.stringify({ s: h })), JSON.stringify({ m: 'x'.repeat(300_000) })]) {
      const at = new Date(1_796_000_000_123)
      const signature = ours.sign('msg_1', at, payload)
      assert.equal(signature, theirs.sign('msg_1', at, payload))
      const headers = { 'webhook-id': 'msg_1', 'webhook-timestamp': String(Math.floor(Date.now() / 1000)), 'webhook-signature': '' }
      headers['webhook-signature'] = ours.sign('msg_1', new Date(Number(headers['webhook-timestamp']) * 1000), payload)
      assert.doesNotThrow(() => theirs.verify(payload, headers), `verifies ${JSON.stringify(payload).slice(0, 40)}`)
    }
  }
})
