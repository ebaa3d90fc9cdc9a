// Child processes the tests run to completion: the CLI, npm, tar. Output is collected, never shown.
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'

export interface Run {
  code: number | null
  stdout: string
  stderr: string
}

/** Run `cmd` to its exit with `env` on top of this process's environment; a spawn failure is code null. */
export function run(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; baseEnv?: NodeJS.ProcessEnv } = {},
): Promise<Run> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { cwd: opts.cwd, env: { ...(opts.baseEnv ?? process.env), ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    p.stdout.on('data', (d) => (stdout += d))
    p.stderr.on('data', (d) => (stderr += d))
    p.on('error', (err) => resolve({ code: null, stdout, stderr: `${stderr}${err.message}` }))
    p.on('exit', (code) => resolve({ code, stdout, stderr }))
  })
}

/** The CLI of this checkout (or of the one in `checkout`, run from there), never through npx; HTTP on a free port. */
export function cli(args: string[], env: NodeJS.ProcessEnv, checkout = '.'): Promise<Run> {
  return run(process.execPath, ['bin/segmenter.js', ...args], { cwd: checkout, env: { SEGMENTER_HTTP_PORT: '0', ...env } })
}

/**
 * `segmenter run` of this checkout as a child process, the way fault tests kill it (never through
 * npx: a killed npx leaves npm's lock behind); warnings to the test's stderr, HTTP on a free port.
 */
export function sidecarProcess(env: NodeJS.ProcessEnv): ChildProcess {
  return spawn(process.execPath, [fileURLToPath(new URL('../../bin/segmenter.js', import.meta.url)), 'run'], {
    env: { ...process.env, SEGMENTER_LOG_LEVEL: 'warn', SEGMENTER_HTTP_PORT: '0', ...env },
    stdio: ['ignore', 'ignore', 'inherit'],
  })
}
