-- 0005: parallel lanes. Consumer options are checked when written, and the sidecar records the
-- batches of a lane run together. Known consumer options:
--   lanes             how many target transactions one subscription may have open at once
--                     (1–16, default 1): consecutive batches of one event execute in parallel and
--                     commit in order, each with its checkpoint. For templates that only write
--                     the batch's own members' rows; see the README.
--   checkpoint_table  the target table that holds the checkpoints (default segmenter_checkpoint).
create function segmenter._consumer_options_valid(options jsonb) returns boolean
language plpgsql immutable as $$
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
  return true;
end $$;
comment on function segmenter._consumer_options_valid is 'Private. True for valid consumer options; refuses unknown or malformed ones (SG012) with a hint.';

-- A constraint rather than a check inside create_consumer: it also covers a direct UPDATE of the
-- table. NOT VALID: rows written before this migration are not re-checked, so an upgrade cannot fail.
alter table segmenter.consumers add constraint consumers_options_valid check (segmenter._consumer_options_valid(options)) not valid;
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
