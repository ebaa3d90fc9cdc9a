-- 0005: parallel lanes. Consumer options are checked when written, and the sidecar records the
-- batches of a lane run together. Known consumer options:
--   lanes             how many target transactions one subscription may have open at once
--                     (1–16, default 1): consecutive batches of one event execute in parallel and
--                     commit in order, each with its checkpoint. For templates that only write
--                     the batch's own members' rows; see the README.
--   checkpoint_table  the target table that holds the checkpoints (default segmenter_checkpoint).
create or replace function segmenter._check_consumer_options(options jsonb) returns void
language plpgsql as $$
declare k text;
begin
  if options is null or jsonb_typeof(options) <> 'object' then
    perform segmenter._fail('SG012', 'options: must be a JSON object', 'pass options => ''{}''::jsonb');
  end if;
  for k in select jsonb_object_keys(options) loop
    if k not in ('lanes', 'checkpoint_table') then
      perform segmenter._fail('SG012', format('options: %L is not a consumer option', k),
        'known options: lanes (1-16), checkpoint_table (a table name)');
    end if;
  end loop;
  if options ? 'lanes' and (jsonb_typeof(options->'lanes') <> 'number' or (options->>'lanes') !~ '^\d+$'
                            or (options->>'lanes')::numeric not between 1 and 16) then
    perform segmenter._fail('SG012', format('options.lanes: %s is not a whole number from 1 to 16', options->'lanes'),
      'pass options => ''{"lanes": 2}''; 1 applies one batch at a time');
  end if;
  if options ? 'checkpoint_table' and (jsonb_typeof(options->'checkpoint_table') <> 'string'
                                       or btrim(options->>'checkpoint_table') = '' or length(options->>'checkpoint_table') > 63) then
    perform segmenter._fail('SG012', format('options.checkpoint_table: %s is not a table name', options->'checkpoint_table'),
      'pass options => ''{"checkpoint_table": "segmenter_checkpoint"}''');
  end if;
end $$;
comment on function segmenter._check_consumer_options is 'Private. Refuses unknown or malformed consumer options (SG012).';

create or replace function segmenter.create_consumer(name text, kind text, dialect text, dsn_env text, options jsonb default '{}')
returns bigint
language plpgsql as $$
declare id bigint;
begin
  if name is null or btrim(name) = '' then
    perform segmenter._fail('SG012', 'name: a consumer needs a non-empty name', 'pass name => ''warehouse''');
  end if;
  if kind is null or kind not in ('mysql', 'postgres') then
    perform segmenter._fail('SG012', format('kind: %L is not a consumer kind', kind), 'use kind => ''mysql'' (MySQL/MariaDB) or ''postgres''');
  end if;
  if dialect is null or dialect not in ('mysql', 'postgres', 'mssql', 'oracle', 'bigquery', 'clickhouse') then
    perform segmenter._fail('SG007', format('dialect: %L is not a known SQL dialect', dialect),
      'use one of mysql, postgres, mssql, oracle, bigquery, clickhouse');
  end if;
  if dsn_env is null or dsn_env !~ '^[A-Za-z_][A-Za-z0-9_]*$' then
    perform segmenter._fail('SG012', format('dsn_env: %L is not an environment variable name', dsn_env),
      'name the variable that holds the connection URL, e.g. dsn_env => ''WAREHOUSE_URL''; passwords are never stored in tables');
  end if;
  perform segmenter._check_consumer_options(options);
  insert into segmenter.consumers as c (name, kind, dialect, dsn_env, options)
  values (name, kind, dialect, dsn_env, options)
  on conflict on constraint consumers_name_key do update
    set kind = excluded.kind, dialect = excluded.dialect, dsn_env = excluded.dsn_env, options = excluded.options
  returning consumer_id into id;
  return id;
end $$;
comment on function segmenter.create_consumer is 'Create or update a consumer (an external system). dsn_env names the environment variable with its connection URL; options: lanes (1-16, default 1), checkpoint_table. Returns consumer_id.';

-- Several delivered batches at once (one call instead of one per batch: with lanes the home
-- bookkeeping sat between two target commits). The arrays are parallel, one element per batch.
create function segmenter.record_batches(
  subscription_id bigint, cursor_pos bigint, cursor_ord int, segment_ids uuid[], events segmenter.event[],
  statements int[], rows bigint[], duration_ms double precision[]
) returns void
language plpgsql as $$
begin
  update segmenter.subscriptions s set cursor_pos = record_batches.cursor_pos, cursor_ord = record_batches.cursor_ord
  where s.subscription_id = record_batches.subscription_id
    and (s.cursor_pos, s.cursor_ord) < (record_batches.cursor_pos, record_batches.cursor_ord);
  insert into segmenter.log (kind, subscription_id, segment_id, event, statements, rows, duration_ms, ok)
  select 'batch', record_batches.subscription_id, b.segment_id, b.event, b.statements, b.rows, b.duration_ms, true
  from unnest(segment_ids, events, statements, rows, duration_ms) as b (segment_id, event, statements, rows, duration_ms);
end $$;
comment on function segmenter.record_batches is 'Sidecar: record several delivered batches in segmenter.log (arrays, one element per batch) and advance the subscription''s cursor.';

insert into segmenter.migrations (id, name) values (5, '0005_lanes');
