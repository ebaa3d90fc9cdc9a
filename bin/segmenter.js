#!/usr/bin/env -S node --max-old-space-size=256 --max-semi-space-size=16 --single-threaded-gc
// Runs the TypeScript CLI through tsx's loader, so the package ships its sources as they are.
// The heap flags: left alone, V8 let the heap of a 1M-member resync grow to 330 MB for a live set
// well under 100 MB; capped, it peaks at 182 MB (bench/delivery.ts). The 16 MB young generation
// means fewer collections while delivering. Single-threaded GC: the sidecar shares its machine's
// cores with Postgres and the target, and V8's helper threads cost more CPU in all than they save
// the main thread (6 of 6 alternating drains of 300,000 members used less sidecar CPU without
// them, about 7%). For other flags, start it as `node --max-old-space-size=N bin/segmenter.js`.
import { register } from 'tsx/esm/api'
register()
await import('../src/cli.ts')
