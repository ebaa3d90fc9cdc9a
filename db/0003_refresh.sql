-- 0003: auto-refreshed segments: load markers and readiness, segmenter.refresh (a set-based merge of
-- the refresher's result into the segment table), refresh state, and the schedule view the sidecar
-- reads. Cron math lives in the sidecar (src/refresh.ts, cron-parser); everything else is here.
--
-- Readiness convention
--   Loaders call segmenter.mark_loaded('schema.table') when a source table has been loaded, in the
--   loading transaction or after it committed. An auto segment is ready when
--     1. every table in its `sources` has a load marker that the segment's last successful refresh
--        did not see (before the first successful refresh, any marker counts), and
--     2. its `ready_sql`, if set, returns true (false, null, no row or an error mean "not ready").
--   A segment with neither is always ready. "Did not see" is decided by transaction visibility,
--   not by comparing timestamps: a refresh records its snapshot, and a marker is new when its
--   transaction was not committed in that snapshot. (A loader that started before a refresh and
--   committed after it has an older loaded_at, yet the refresh did not see its data.)
--   Readiness gates the scheduler only: segmenter.refresh() called by hand runs regardless.
--
-- Refresh semantics (segmenter.refresh)
--   The refresher query returns `id` plus any of the segment table's attribute columns (values are
--   cast to the table's column types; rows with a null id are ignored; an id returned twice is an
--   error). In one transaction: current members not returned get actual_end = now(); returned ids
--   without a current row reopen their latest closed row (UPDATE: actual_end = infinity,
--   actual_begin = now()) or, having none, are inserted; current members whose returned attributes
--   differ are updated; columns the query does not return are left alone. Unchanged members are
--   not written at all, so `processed` marks the last refresh that changed the row, not the last
--   refresh. Refreshes of one segment are serialized by an advisory lock on its segment_id; the
--   second waits and then merges against the first's result.
--
-- Failure handling
--   The merge runs in an inner block (a subtransaction). If it fails, the block is rolled back (the
--   segment table and the change log are untouched) and the error is recorded in segmenter.log and
--   segmenter.refresh_state by the outer block, which then RETURNS {"ok": false, "error": ...} with a
--   WARNING instead of raising: raising would roll the log row back with everything else. Callers
--   check `ok` (runDueRefreshes reports outcome 'failed'). Misuse (unknown segment SG001, manual
--   segment SG014, wrong isolation level SG012) raises as usual and is not logged.
--
-- New error code: SG015 the refresher's result does not fit the segment table (no id column, a
-- column the table lacks or may not be written, an id returned twice).

create table segmenter.source_loads (
  load_id bigint generated always as identity primary key,
  source regclass not null,
  loaded_at timestamptz not null default now(),
  loaded_xid xid8 not null default pg_current_xact_id()
);
create index source_loads_source on segmenter.source_loads (source, loaded_xid);
comment on table segmenter.source_loads is 'Load markers: one row per completed load of a source table, written by loaders through segmenter.mark_loaded(source). An auto segment with sources is ready when every source has a marker its last successful refresh did not see. loaded_xid (the loading transaction) decides "did not see"; loaded_at is for people.';

create function segmenter.mark_loaded(source regclass) returns void
language sql as $$
  insert into segmenter.source_loads (source) values (mark_loaded.source);
$$;
comment on function segmenter.mark_loaded is 'Loaders: record that a source table has been loaded (call it in the loading transaction or after it committed). Auto segments listing this table in `sources` become ready once all their sources are marked.';

create table segmenter.refresh_state (
  segment_id uuid primary key,
  last_started_at timestamptz,
  last_finished_at timestamptz,
  last_ok_at timestamptz,
  last_ok_snapshot pg_snapshot,
  last_error text,
  last_counts jsonb,
  waiting_tick timestamptz
);
comment on table segmenter.refresh_state is 'Per auto segment: when the last refresh started and finished, the last success (time and the snapshot its data came from; load markers after it make the segment ready again), the last run''s error (null after a success) and counts, and the cron tick for which a wait was last logged. Whether a refresh is running right now is in segmenter.refresh_schedule (from pg_locks: an uncommitted flag would be invisible to others).';

-- The advisory lock that serializes refreshes of one segment (segmenter.refresh waits on it,
-- segmenter.claim_refresh tries it).
create function segmenter._refresh_lock(segment_id uuid) returns bigint
language sql immutable parallel safe as $$
  select hashtextextended('segmenter.refresh ' || segment_id::text, 0)
$$;
comment on function segmenter._refresh_lock is 'Private. The advisory lock key of a segment''s refresh.';

create function segmenter._readiness(s segmenter.segments, out ready boolean, out reason text)
language plpgsql as $$
declare
  snap pg_snapshot;
  missing text;
begin
  if s.kind <> 'auto' then
    ready := false; reason := 'manual segment: it is not refreshed'; return;
  end if;
  select st.last_ok_snapshot into snap from segmenter.refresh_state st where st.segment_id = s.segment_id;
  select string_agg(u.src::text, ', ' order by u.ord) into missing
  from unnest(s.sources) with ordinality u(src, ord)
  where not exists (
    select 1 from segmenter.source_loads l
    where l.source = u.src
      and (snap is null or (l.loaded_xid >= pg_snapshot_xmin(snap) and not pg_visible_in_snapshot(l.loaded_xid, snap))));
  if missing is not null then
    ready := false;
    reason := case when snap is null then format('sources not loaded yet: %s (loaders call segmenter.mark_loaded)', missing)
                   else format('sources not loaded since the last successful refresh: %s', missing) end;
    return;
  end if;
  if s.ready_sql is not null then
    begin
      execute s.ready_sql into ready;
    exception when others then
      ready := false; reason := 'ready_sql failed: ' || sqlerrm; return;
    end;
    if ready is not true then
      reason := format('ready_sql returned %s', coalesce(ready::text, 'null')); ready := false; return;
    end if;
  end if;
  ready := true;
end $$;
comment on function segmenter._readiness is 'Private. Readiness of a segment definition (see segmenter.readiness).';

create function segmenter.readiness(segment text) returns table (ready boolean, reason text)
language sql as $$
  select r.ready, r.reason from segmenter._readiness(segmenter._segment(segment)) r
$$;
comment on function segmenter.readiness is 'Is an auto segment ready to refresh, and if not, why: every source has a load marker (segmenter.mark_loaded) its last successful refresh did not see, and ready_sql (if set) returns true.';

create function segmenter.is_ready(segment text) returns boolean
language sql as $$
  select r.ready from segmenter.readiness(segment) r
$$;
comment on function segmenter.is_ready is 'True when an auto segment''s sources are loaded and its ready_sql holds (reasons: segmenter.readiness).';

-- The merge. Called only by segmenter.refresh, inside its subtransaction and under its lock.
-- Two temp tables: the refresher's result (cast to the table's types) and the diff against the
-- current members (changed rows only, churn-sized); then one statement per kind of change that
-- finds its rows by `ctid = any(<ctids from the diff>)`: a TID scan for a few rows, never worse than
-- one pass. A join on ctid would be planned as a hash of the whole segment table per statement.
create function segmenter._merge(s segmenter.segments) returns jsonb
language plpgsql as $$
declare
  tbl text := s.table_name::text;
  -- Embedded as a subquery: drop a trailing semicolon, and end with a newline so that a trailing
  -- line comment cannot swallow the closing parenthesis.
  query text := regexp_replace(s.refresh_sql, '[\s;]+$', '') || E'\n';
  cols text[];                  -- attribute columns the refresher returns
  col_list text; n_list text; set_list text; casts text; cmp text;
  bad text;
  to_close tid[]; to_update tid[]; to_reopen tid[];
  n_rows bigint; n_added bigint; n_removed bigint; n_reentered bigint; n_updated bigint; n_enter bigint;
begin
  execute format('create temp table _segmenter_shape on commit drop as select * from (%s) q limit 0', query);
  select array_agg(a.attname::text order by a.attnum) filter (where a.attname <> 'id'),
         string_agg(a.attname::text, ', ') filter (where a.attname <> 'id' and (t.attname is null or t.attname in ('segment_id', 'actual_begin', 'actual_end', 'processed')))
    into cols, bad
  from pg_attribute a
  left join pg_attribute t on t.attrelid = s.table_name and t.attname = a.attname and t.attnum > 0 and not t.attisdropped
  where a.attrelid = 'pg_temp._segmenter_shape'::regclass and a.attnum > 0 and not a.attisdropped;
  if not exists (select 1 from pg_attribute where attrelid = 'pg_temp._segmenter_shape'::regclass and attname = 'id') then
    perform segmenter._fail('SG015', format('refresh_sql of segment %L returns no id column', s.name), 'return the member key as "id", e.g. select customer_id as id, ...');
  end if;
  if bad is not null then
    perform segmenter._fail('SG015', format('refresh_sql of segment %L returns column(s) %s that %s has no attribute column for', s.name, bad, tbl),
      'return only id and attribute columns of the segment table (segment_id, actual_begin, actual_end and processed are set by refresh)');
  end if;
  cols := coalesce(cols, '{}');

  select coalesce(string_agg(format(', %I', c), ''), ''),
         coalesce(string_agg(format(', n.%I', c), ''), ''),
         coalesce(string_agg(format(', %1$I = d.%1$I', c), ''), ''),
         coalesce(string_agg(format(', q.%1$I::%2$s as %1$I', c, format_type(t.atttypid, t.atttypmod)), ''), ''),
         -- json has no equality operator: compare its text
         coalesce('(' || string_agg(format('c.%1$I%2$s', c, case when t.atttypid = 'json'::regtype then '::text' else '' end), ', ') || ')'
                  || ' is distinct from (' || string_agg(format('n.%1$I%2$s', c, case when t.atttypid = 'json'::regtype then '::text' else '' end), ', ') || ')', 'false')
    into col_list, n_list, set_list, casts, cmp
  from unnest(cols) c join pg_attribute t on t.attrelid = s.table_name and t.attname = c;

  execute format('create temp table _segmenter_result on commit drop as select q.id::%s as id%s from (%s) q where q.id is not null',
    segmenter._id_type(s.table_name), casts, query);
  get diagnostics n_rows = row_count;
  -- Ids must be unique; building this index checks it faster than a GROUP BY (1M rows: 0.3 s vs 0.9 s).
  begin
    create unique index on pg_temp._segmenter_result (id);
  exception when unique_violation then
    get stacked diagnostics bad = pg_exception_detail;
    perform segmenter._fail('SG015', format('refresh_sql of segment %L returns an id more than once: %s', s.name, bad),
      'make the refresher return one row per member (group by id, or distinct on (id))');
  end;

  -- One row per member that changes: enter (no current row), leave (not returned), change (attributes differ).
  execute format($q$
    create temp table _segmenter_diff on commit drop as
    select coalesce(n.id, c.id) as id%1$s, c.ctid as _cur, null::tid as _old,
           case when c.ctid is null then 'enter' when n.id is null then 'leave' else 'change' end as _kind
    from (select ctid, * from %2$s where segment_id = $1 and actual_end = 'infinity') c
    full join _segmenter_result n on n.id = c.id
    where c.ctid is null or n.id is null or %3$s$q$, n_list, tbl, cmp)
  using s.segment_id;
  select count(*) filter (where _kind = 'enter'), array_agg(_cur) filter (where _kind = 'leave'), array_agg(_cur) filter (where _kind = 'change')
    into n_enter, to_close, to_update from _segmenter_diff;

  -- Entering ids: the latest closed row, if any, is reopened rather than a new row inserted
  -- (tables like the seed's test_segment allow one row per id).
  if n_enter > 0 then
    execute format($q$
      update _segmenter_diff d set _old = l.ctid
      from (select distinct on (t.id) t.id, t.ctid from %s t join _segmenter_diff e on e.id = t.id and e._kind = 'enter'
            where t.segment_id = $1 order by t.id, t.actual_end desc) l
      where d.id = l.id and d._kind = 'enter'$q$, tbl)
    using s.segment_id;
    select array_agg(_old) into to_reopen from _segmenter_diff where _kind = 'enter' and _old is not null;
  end if;
  n_removed := coalesce(cardinality(to_close), 0);
  n_updated := coalesce(cardinality(to_update), 0);
  n_reentered := coalesce(cardinality(to_reopen), 0);
  n_added := n_enter - n_reentered;

  if n_removed > 0 then
    execute format('update %s set actual_end = now(), processed = now() where ctid = any($1)', tbl) using to_close;
  end if;
  if n_updated > 0 then
    execute format($q$update %s t set processed = now()%s from _segmenter_diff d
      where t.ctid = any($1) and d._kind = 'change' and d._cur = t.ctid$q$, tbl, set_list) using to_update;
  end if;
  if n_reentered > 0 then
    execute format($q$update %s t set actual_begin = now(), actual_end = 'infinity', processed = now()%s from _segmenter_diff d
      where t.ctid = any($1) and d._kind = 'enter' and d._old = t.ctid$q$, tbl, set_list) using to_reopen;
  end if;
  if n_added > 0 then
    execute format($q$insert into %1$s (segment_id, id%2$s, actual_begin, actual_end, processed)
      select $1, id%2$s, now(), 'infinity', now() from _segmenter_diff where _kind = 'enter' and _old is null$q$, tbl, col_list)
    using s.segment_id;
  end if;
  drop table pg_temp._segmenter_shape, pg_temp._segmenter_result, pg_temp._segmenter_diff;
  return jsonb_build_object('added', n_added, 'removed', n_removed, 'reentered', n_reentered, 'updated', n_updated,
    'unchanged', n_rows - n_enter - n_updated, 'rows', n_rows, 'version_id', s.version_id);
end $$;
comment on function segmenter._merge is 'Private. The refresh merge (see segmenter.refresh).';

create function segmenter.refresh(segment text) returns jsonb
language plpgsql set work_mem = '64MB' as $$
declare
  s segmenter.segments := segmenter._segment(segment);
  t0 timestamptz;
  snap pg_snapshot;
  counts jsonb;
  err text; err_state text;
  ms double precision;
begin
  if s.kind <> 'auto' then
    perform segmenter._fail('SG014', format('segment %L is manual: it is changed by DML or add_members, not refreshed', segment),
      'recreate it with kind => ''auto'' and a refresh_sql to refresh it from a query');
  end if;
  if current_setting('transaction_isolation') <> 'read committed' then
    perform segmenter._fail('SG012', 'refresh() must run at READ COMMITTED',
      'a refresh waits for a concurrent one and must then see its result; call it outside REPEATABLE READ / SERIALIZABLE transactions');
  end if;
  perform pg_advisory_xact_lock(segmenter._refresh_lock(s.segment_id));
  -- After the lock every statement sees what a refresh we waited for committed, including a
  -- definition changed meanwhile: re-read it, so only the current definition is ever used.
  s := segmenter._segment(segment);
  if s.kind <> 'auto' then
    perform segmenter._fail('SG014', format('segment %L is manual: it is changed by DML or add_members, not refreshed', segment), 'recreate it with kind => ''auto''');
  end if;
  t0 := clock_timestamp();
  insert into segmenter.refresh_state as st (segment_id, last_started_at) values (s.segment_id, t0)
  on conflict (segment_id) do update set last_started_at = excluded.last_started_at;
  -- Taken before the refresher runs, so a marker committed in between counts as unseen: at worst
  -- one extra refresh, never a missed load.
  snap := pg_current_snapshot();
  begin
    counts := segmenter._merge(s);
  exception when others then
    get stacked diagnostics err = message_text, err_state = returned_sqlstate;
  end;
  ms := round(extract(epoch from clock_timestamp() - t0)::numeric * 1000, 3);
  if err is null then
    counts := counts || jsonb_build_object('ok', true, 'duration_ms', ms);
    update segmenter.refresh_state set last_finished_at = clock_timestamp(), last_ok_at = clock_timestamp(),
      last_ok_snapshot = snap, last_error = null, last_counts = counts
    where segment_id = s.segment_id;
    insert into segmenter.log (kind, segment_id, rows, duration_ms, ok, detail)
    values ('refresh', s.segment_id, (counts->>'rows')::bigint, ms, true, counts);
  else
    counts := jsonb_build_object('ok', false, 'error', err, 'sqlstate', err_state, 'duration_ms', ms, 'version_id', s.version_id);
    update segmenter.refresh_state set last_finished_at = clock_timestamp(), last_error = err, last_counts = counts
    where segment_id = s.segment_id;
    insert into segmenter.log (kind, segment_id, duration_ms, ok, error, detail)
    values ('refresh', s.segment_id, ms, false, err, counts);
    raise warning 'refresh of segment % failed (nothing changed): %', segment, err;
  end if;
  return counts;
end $$;
comment on function segmenter.refresh is 'Run an auto segment''s refresher now and merge its result in one transaction (leavers closed, newcomers inserted, returning members reopened, changed attributes updated, unchanged members not written). Returns {"ok", "added", "removed", "reentered", "updated", "unchanged", "rows", "duration_ms", "version_id"}; on failure nothing changes and it returns {"ok": false, "error", "sqlstate"} (logged in segmenter.log, with a WARNING) instead of raising. Waits for a concurrent refresh of the same segment. Ignores readiness.';

-- Sidecar: claim a segment's refresh for one cron tick. Holds the refresh lock (released at the
-- end of the caller's transaction) and confirms nobody started a refresh at or after the tick;
-- then the caller runs segmenter.refresh in the same transaction. Two sidecars cannot both win.
create function segmenter.claim_refresh(segment text, tick timestamptz) returns boolean
language plpgsql as $$
declare
  s segmenter.segments := segmenter._segment(segment);
  started timestamptz;
begin
  if not pg_try_advisory_xact_lock(segmenter._refresh_lock(s.segment_id)) then
    return false;
  end if;
  -- A new statement, so a new snapshot: a refresh that committed while we took the lock is seen.
  select st.last_started_at into started from segmenter.refresh_state st where st.segment_id = s.segment_id;
  return started is null or coalesce(started < tick, false);
end $$;
comment on function segmenter.claim_refresh is 'Sidecar: take the refresh lock of a segment without waiting and check that no refresh started at or after the given cron tick. True means: call segmenter.refresh in this same transaction.';

-- Sidecar: log a wait at most once per tick (the conditional upsert is the dedup, also across sidecars).
create function segmenter.record_refresh_wait(segment text, tick timestamptz, reason text) returns boolean
language sql as $$
  with s as (select * from segmenter._segment(segment)),
  up as (
    insert into segmenter.refresh_state as st (segment_id, waiting_tick)
    select segment_id, tick from s
    on conflict (segment_id) do update set waiting_tick = excluded.waiting_tick
    where st.waiting_tick is distinct from excluded.waiting_tick
    returning st.segment_id),
  ins as (
    insert into segmenter.log (kind, segment_id, ok, detail)
    select 'refresh_wait', up.segment_id, true, jsonb_build_object('tick', tick, 'reason', reason) from up
    returning 1)
  select exists (select 1 from ins)
$$;
comment on function segmenter.record_refresh_wait is 'Sidecar: record that a due segment waits for its sources (a segmenter.log row of kind refresh_wait, once per cron tick). Returns whether a row was written.';

create view segmenter.refresh_schedule as
select s.name as segment, s.segment_id, s.version_id, s.table_name, s.refresh_cron, s.sources, s.ready_sql,
       st.last_started_at, st.last_finished_at, st.last_ok_at, st.last_error, st.last_counts, st.waiting_tick,
       r.ready, r.reason,
       exists (select 1 from pg_locks l
               where l.locktype = 'advisory' and l.granted and l.objsubid = 1
                 and l.database = (select oid from pg_database where datname = current_database())
                 and l.classid = ((segmenter._refresh_lock(s.segment_id) >> 32) & 4294967295)::oid
                 and l.objid = (segmenter._refresh_lock(s.segment_id) & 4294967295)::oid) as running
from segmenter.segments s
left join segmenter.refresh_state st on st.segment_id = s.segment_id
cross join lateral segmenter._readiness(s) r
where s.actual_end = 'infinity' and s.kind = 'auto';
comment on view segmenter.refresh_schedule is 'Current auto segments: cron, last start / finish / success / error, readiness (ready, reason; evaluates ready_sql), and whether a refresh holds the segment''s lock now. The sidecar decides from it which segments are due (cron math in src/refresh.ts).';

insert into segmenter.migrations (id, name) values (3, '0003_refresh');
