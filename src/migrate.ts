// Applies db/NNNN_name.sql files in order, each once. Every file records itself in
// segmenter.migrations (so applying the files with psql is equivalent); the runner only decides
// which to apply. Two runners at once serialize on an advisory lock and the second applies nothing.
// An install in another schema gets the same files with the schema renamed (schema.ts inSchema).
import { readdir, readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { SegmenterError } from './errors.js'
import { checkSchemaName, DEFAULT_SCHEMA, inSchema } from './schema.js'

export const MIGRATIONS_DIR = fileURLToPath(new URL('../db/', import.meta.url))
// Any 64-bit constant works; this one is 'segmenter' hashed, to stay clear of other tools' locks.
const MIGRATION_LOCK = 7_433_690_361_245_114_413n

export interface Migration {
  id: number
  name: string
  sql: string
}

export async function listMigrations(): Promise<Migration[]> {
  const files = (await readdir(MIGRATIONS_DIR)).filter((f) => /^\d{4}_[\w-]+\.sql$/.test(f)).sort()
  return Promise.all(
    files.map(async (file) => ({
      id: Number(file.slice(0, 4)),
      name: file.replace(/\.sql$/, ''),
      sql: await readFile(MIGRATIONS_DIR + file, 'utf8'),
    })),
  )
}

export async function migrate(databaseUrl: string, schema: string = DEFAULT_SCHEMA): Promise<{ applied: string[] }> {
  checkSchemaName(schema)
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  const applied: string[] = []
  try {
    await client.query('select pg_advisory_lock($1)', [MIGRATION_LOCK.toString()])
    const done = new Set<number>()
    const { rows } = await client.query<{ exists: boolean }>(`select to_regclass($1) is not null as exists`, [`${schema}.migrations`])
    if (rows[0]?.exists) {
      for (const r of (await client.query<{ id: number }>(`select id from ${schema}.migrations`)).rows) done.add(r.id)
    }
    for (const m of await listMigrations()) {
      if (done.has(m.id)) continue
      try {
        await client.query('begin')
        await client.query(inSchema(m.sql, schema))
        // Each file records itself (so psql -f is the same as this runner); one that does not would
        // be applied again by every run.
        const recorded = await client.query(`select 1 from ${schema}.migrations where id = $1`, [m.id])
        if (recorded.rowCount === 0) throw new Error(`it does not insert its own row (${m.id}, '${m.name}') into segmenter.migrations`)
        await client.query('commit')
      } catch (err) {
        await client.query('rollback')
        throw new SegmenterError(
          'MIGRATION_FAILED',
          `migration ${m.name}${schema === DEFAULT_SCHEMA ? '' : ` (schema ${schema})`} failed: ${(err as Error).message}`,
          { cause: err },
        )
      }
      applied.push(m.name)
    }
  } finally {
    await client.query('select pg_advisory_unlock($1)', [MIGRATION_LOCK.toString()]).catch(() => {})
    await client.end()
  }
  return { applied }
}

/** Refuse to work on a database (or schema) where Segmenter is not installed, saying how to install it. */
export async function assertInstalled(db: Pick<pg.Pool, 'query'>, schema: string): Promise<void> {
  const { rows } = await db.query<{ installed: boolean }>('select to_regclass($1) is not null as installed', [`${schema}.migrations`])
  if (!rows[0]?.installed) {
    const flag = schema === DEFAULT_SCHEMA ? '' : ` --schema ${schema}`
    throw new SegmenterError('CONFIG_INVALID', `no Segmenter install in schema ${schema} of this database`, {
      hint: `install it with: segmenter${flag} migrate (or check DATABASE_URL${flag ? ' and the schema name' : ''})`,
    })
  }
}
