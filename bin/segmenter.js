#!/usr/bin/env -S node --max-old-space-size=256 --max-semi-space-size=16
// Runs the TypeScript CLI through tsx's loader, so the package ships its sources as they are.
// The heap flags: left alone, V8 let the heap of a 1M-member resync grow to 330 MB for a live set
// well under 100 MB; capped, it peaks at 182 MB (bench/delivery.ts). The 16 MB young generation
// means fewer collections while delivering. For another cap, start it as
// `node --max-old-space-size=N bin/segmenter.js`.
import { register } from 'tsx/esm/api'
register()
await import('../src/cli.ts')
