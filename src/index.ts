// The package's entry point for programs: the SQL API's TS twin, migrations, and the sidecar.
export * from './api.js'
export { migrate } from './migrate.js'
export { startSidecar, type Sidecar, type SidecarOptions } from './sidecar.js'
export { compileTemplate, literal, TemplateError, ValueError, type Dialect, type Syntax } from './render/index.js'
export { previewSubscription } from './preview.js'
export { runDueRefreshes } from './refresh.js'
export { createPool } from './db.js'
export { SegmenterError, type ErrorCode } from './errors.js'
