#!/usr/bin/env -S node --max-old-space-size=256 --max-semi-space-size=16 --single-threaded-gc --heap-growing-percent=150
// Runs the CLI built into dist/ (`npm run build`; `npm pack` builds it first): no TypeScript
// loader at run time. The heap flags: left alone, V8 let the heap of a 1M-member resync grow to
// 330 MB for a live set well under 100 MB; capped, it peaks at 182 MB (bench/delivery.ts). The
// 16 MB young generation means fewer collections while delivering. Single-threaded GC: the sidecar
// shares its machine's cores with Postgres and the target, and V8's helper threads cost more CPU in
// all than they save the main thread (6 of 6 alternating drains of 300,000 members used less
// sidecar CPU without them, about 7%). Heap growing 2.5x after each full collection: every batch
// leaves its body and its ids' JSON text (large strings, old space) behind, and V8's own factor
// on a live heap of about 25 MB ran a full collection every 19 batches of 10,000 (16 in 3M
// members of bench/http, 320-370 ms of the main thread); with it 5 (100 ms), for about 30 MB
// more at the peak. The shebang applies them when the file is run directly (or
// through npx); `node bin/segmenter.js` does not read it, so give flags there yourself:
// `node --max-old-space-size=N bin/segmenter.js`.
import { existsSync } from 'node:fs'

const cli = new URL('../dist/cli.js', import.meta.url)
if (!existsSync(cli)) {
  // Only in a checkout: a package always has dist/ (prepack builds it).
  console.error('segmenter: dist/cli.js is missing; build it first with `npm run build` (or `make build`)')
  process.exit(1)
}
await import(cli.href)
