// What an operator meets: `segmenter run` as a process with its HTTP endpoint (health, readiness,
// Prometheus metrics) and the status page, checked in a real headless Chromium.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtemp, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { chromium } from 'playwright-core'
import { freshMysql, freshPg } from './harness/db.js'
import { until } from './harness/wait.js'

test('segmenter run serves health, readiness, metrics and a status page with the sync chart', async (t) => {
  const home = await freshPg()
  const target = await freshMysql()
  const cleanups: Array<() => Promise<unknown> | unknown> = [() => home.close(), () => target.close()]
  t.after(async () => {
    for (const f of cleanups.reverse()) await f()
  })
  await target.query('create table members (member varchar(64) not null)')
  await home.query(`create table seg (segment_id uuid not null, id text, actual_begin timestamptz not null default now(),
    actual_end timestamptz not null default 'infinity', processed timestamptz not null default now())`)
  const [{ id }] = await home.query(`select segmenter.create_segment('ops', 'seg') as id`)
  await home.query(`select segmenter.create_consumer('maria', 'mysql', 'mysql', 'TARGET_URL')`)
  await home.query(`select segmenter.create_subscription(name => 'ops_sub', consumer => 'maria', segments => array['ops'], batch_size => 100, syntax => 'altcraft',
    add_sql => 'insert into members values {for $i, $lead = $batch}({$lead.id}){autocomma}{end}', remove_sql => 'delete from members where member in ({batch_in "id"})')`)
  await home.query(`select segmenter.create_consumer('down', 'mysql', 'mysql', 'DOWN_URL')`)
  await home.query(`select segmenter.create_subscription(name => 'broken_sub', consumer => 'down', segments => array['ops'], syntax => 'altcraft',
    add_sql => 'insert into members values {for $i, $lead = $batch}({$lead.id}){autocomma}{end}', remove_sql => 'delete from members where member in ({batch_in "id"})')`)

  const child = spawn(process.execPath, ['bin/segmenter.js', 'run'], {
    env: {
      ...process.env,
      DATABASE_URL: home.url,
      TARGET_URL: target.url,
      DOWN_URL: 'mysql://root@127.0.0.1:1/none',
      SEGMENTER_HTTP_PORT: '0',
      SEGMENTER_POLL_INTERVAL_MS: '200',
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  const exited = new Promise<number | null>((r) => child.once('exit', r))
  cleanups.push(async () => {
    if (child.exitCode === null) {
      child.kill('SIGKILL')
      await exited
    }
  })
  let stderr = ''
  child.stderr!.on('data', (d) => {
    stderr += d
  })
  const base = await until('the HTTP endpoint', async () => stderr.match(/"http":"(http:\/\/[^"]+)"/)?.[1])

  assert.equal(await (await fetch(`${base}/healthz`)).text(), 'ok\n')
  assert.equal((await fetch(`${base}/readyz`)).status, 200)
  assert.equal((await fetch(`${base}/nope`)).status, 404)

  await home.query(`insert into seg (segment_id, id) select $1, 'm' || g from generate_series(1, 250) g`, [id])
  await until('delivery', async () => Number((await target.query('select count(*) as n from members'))[0].n) === 250)
  const metrics = await until('metrics', async () => {
    const text = await (await fetch(`${base}/metrics`)).text()
    return /segmenter_rows_delivered_total\{subscription="ops_sub",event="add"\} 250/.test(text) && text
  })
  assert.match(metrics, /segmenter_batches_total\{subscription="ops_sub",outcome="ok"\} [3-9]/)
  assert.match(metrics, /segmenter_pending_changes\{subscription="ops_sub"\} 0/)
  assert.match(metrics, /segmenter_pending_changes\{subscription="broken_sub"\} 2(5[0-9]|6[0-9])/) // its initial sync + 250
  assert.match(metrics, /segmenter_lag_seconds\{subscription="broken_sub"\} [0-9.]+/)
  assert.match(metrics, /# TYPE segmenter_batch_duration_seconds histogram/)

  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  })
  cleanups.push(() => browser.close())
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } })
  await page.goto(base)
  const okRow = page.locator('tr[data-subscription="ops_sub"]')
  await okRow.waitFor()
  assert.match(await okRow.innerText(), /ops_sub\s+active\s+maria\s+0/)
  const broken = await page.locator('tr[data-subscription="broken_sub"]').innerText()
  assert.match(broken, /ECONNREFUSED/)
  assert.ok((await page.locator('#chart polyline.series-ok').count()) === 1, 'the chart draws successful queries')
  assert.ok((await page.locator('#chart .series-errors-point').count()) >= 1, 'and errors')
  const shot = join(await mkdtemp(join(tmpdir(), 'segmenter-shot-')), 'status.png')
  await page.screenshot({ path: shot, fullPage: true })
  const png = await readFile(shot)
  assert.equal(png.subarray(1, 4).toString(), 'PNG')
  assert.ok(png.length > 10_000, `a real screenshot (${png.length} bytes)`)
  if (process.env.SEGMENTER_TEST_KEEP === '1') console.log(`status page screenshot: ${shot}`)

  child.kill('SIGTERM')
  assert.equal(await exited, 0, 'SIGTERM stops it cleanly')
  assert.match(stderr, /sidecar stopped/)
})
