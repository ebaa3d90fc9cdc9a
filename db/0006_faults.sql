-- 0006: the promises under faults.
--   * A subscription can be held in an error state by the sidecar (a template that does not compile,
--     a configuration error, a target whose checkpoint this home cannot have written): nothing is
--     delivered or dead-lettered for it until the cause is fixed; `status` says why and how.
--   * The home has an identity (system_identifier plus an id written at install) and a durable
--     high-water mark of the positions it assigned, so a target checkpoint that is ahead of the home
--     (a home restored from a backup) is detected instead of skipped past.

alter table segmenter.subscriptions
  add column error text,
  add column error_hint text,
  add column error_kind text,
  add column error_at timestamptz,
  add constraint subscriptions_error_kind_check
    check (error_kind in ('template', 'configuration', 'diverged') and error is not null or error_kind is null and error is null);
comment on column segmenter.subscriptions.error is 'Why the sidecar holds this subscription (nothing is delivered until it is cleared by fixing the cause: alter_subscription, create_consumer, resync or resume); null while it delivers.';

-- Called by the sidecar. Logged once (the log row says what and why), not per attempt.
create function segmenter.hold_subscription(subscription_id bigint, kind text, error text, hint text default null)
returns void
language plpgsql as $$
begin
  update segmenter.subscriptions s
  set error = hold_subscription.error, error_hint = hold_subscription.hint, error_kind = hold_subscription.kind, error_at = clock_timestamp()
  where s.subscription_id = hold_subscription.subscription_id
    and (s.error, s.error_kind) is distinct from (hold_subscription.error, hold_subscription.kind);
  if found then
    insert into segmenter.log (kind, subscription_id, ok, error, detail)
    values ('hold', hold_subscription.subscription_id, false, hold_subscription.error,
            jsonb_build_object('kind', hold_subscription.kind, 'hint', hold_subscription.hint));
  end if;
end $$;
comment on function segmenter.hold_subscription is 'Sidecar: hold a subscription in an error state (kind template, configuration or diverged) with the message and a hint; logged once. Cleared by fixing the cause.';

create function segmenter._release_subscription(sub_id bigint) returns void
language sql as $$
  update segmenter.subscriptions set error = null, error_hint = null, error_kind = null, error_at = null
  where subscription_id = sub_id and error is not null;
$$;
comment on function segmenter._release_subscription is 'Private. Clear a subscription''s error state (its cause was fixed).';


-- ---------------------------------------------------------------------------------------------
-- The home's identity and the positions it assigned
-- ---------------------------------------------------------------------------------------------

-- One row. last_pos never goes back, even when prune() deletes every change (positions restarting
-- at 1 would put new changes below every cursor, where they are skipped). A home restored from a
-- backup has the last_pos of the backup: a target checkpoint beyond it was written by a history
-- this home no longer has.
create table segmenter.home (
  singleton boolean primary key default true check (singleton),
  install_id uuid not null default gen_random_uuid(),
  installed_at timestamptz not null default now(),
  last_pos bigint not null default 0
);
insert into segmenter.home (last_pos) select coalesce(max(pos), 0) from segmenter.changes;
comment on table segmenter.home is 'Private. This home''s install id (with the server''s system_identifier it names the home in target checkpoints) and the highest position it ever assigned.';

create function segmenter.home_identity(out identity text, out last_pos bigint)
language plpgsql stable as $$
declare sysid text;
begin
  begin
    select system_identifier::text into sysid from pg_control_system();
  exception when insufficient_privilege then
    sysid := 'any'; -- pg_control_system() is for superusers unless granted: the install id alone
  end;
  select sysid || ':' || h.install_id::text, h.last_pos into identity, last_pos from segmenter.home h;
end $$;
comment on function segmenter.home_identity is 'Sidecar: this home''s identity as written into target checkpoints (system_identifier:install_id) and the highest position it has assigned.';

-- The last position this home assigned: where the next ones start (sequence_changes, _start_sync).
create function segmenter._assigned_through() returns bigint
language sql stable as $$
  select greatest((select coalesce(max(pos), 0) from segmenter.changes where pos is not null),
                  (select h.last_pos from segmenter.home h))
$$;
comment on function segmenter._assigned_through is 'Private. The highest position this home has assigned (the change log''s, or the high-water mark once prune() deleted it).';

create or replace function segmenter.sequence_changes() returns bigint
language plpgsql as $$
declare
  assigned bigint;
begin
  if current_setting('transaction_isolation') <> 'read committed' then
    perform segmenter._fail('SG012', 'sequence_changes() must run at READ COMMITTED',
      'call it outside an explicit REPEATABLE READ / SERIALIZABLE transaction');
  end if;
  lock table segmenter.sequencer_lock in exclusive mode;
  with base as (select segmenter._assigned_through() as p),
       todo as (select seq, row_number() over (order by seq) as rn from segmenter.changes where pos is null)
  update segmenter.changes c set pos = base.p + todo.rn
  from base, todo where c.seq = todo.seq;
  get diagnostics assigned = row_count;
  if assigned > 0 then
    update segmenter.home set last_pos = (select max(pos) from segmenter.changes where pos is not null);
  end if;
  return assigned;
end $$;

-- ---------------------------------------------------------------------------------------------
-- A clear names the members it clears
-- ---------------------------------------------------------------------------------------------

-- A subscription without a clear template gets a clear as removes of every member that was
-- current just before it; so a clear change carries their ids (in chunks of 10,000, like every
-- change) when some subscription of the segment has no clear template. Otherwise one id-less clear.
create function segmenter._clear_needs_members(segment uuid) returns boolean
language sql stable as $$
  select exists (select 1 from segmenter.subscriptions s where s.segment_ids @> array[segment] and s.clear_sql is null)
$$;
comment on function segmenter._clear_needs_members is 'Private. Does a clear of this segment have to name its members (a subscription without clear_sql delivers it as removes)?';

-- UPDATE: as in 0001, and a clear_segment's clear carries the members it closed.
create or replace function segmenter.tg_segment_table__capture_update() returns trigger
language plpgsql set work_mem = '64MB' as $$
declare
  touched uuid[];
  clearing uuid := nullif(current_setting('segmenter.clearing', true), '')::uuid;
  cleared bigint := 0;
begin
  if not exists (select 1 from new_rows where actual_end = 'infinity' and id is not null) then
    with ins as (
      insert into segmenter.changes (segment_id, event, ids, members)
      select segment_id, 'remove', array_agg(member), count(*)
      from (select segment_id, id::text as member, (row_number() over () - 1) / 10000 as chunk
            from old_rows where actual_end = 'infinity' and id is not null
              and segment_id is distinct from clearing) r
      group by segment_id, chunk
      having segment_id in (select g.segment_id from segmenter.segments g where g.actual_end = 'infinity')
      order by segment_id, chunk
      returning segment_id)
    select array_agg(distinct segment_id) into touched from ins;
  else
    with o as (select segment_id, id from old_rows where actual_end = 'infinity' and id is not null),
         n as (select segment_id, id from new_rows where actual_end = 'infinity' and id is not null),
         e as (
           select coalesce(n.segment_id, o.segment_id) as segment_id, coalesce(n.id, o.id)::text as member,
                  case when n.id is null then 'remove' else 'add' end::segmenter.event as event
           from o full join n on n.segment_id = o.segment_id and n.id = o.id
           where o.id is null or n.id is null
           union all
           select nr.segment_id, nr.id::text, 'update'
           from old_rows orow join new_rows nr on nr.segment_id = orow.segment_id and nr.id = orow.id
           where orow.actual_end = 'infinity' and nr.actual_end = 'infinity'
             and segmenter._attributes(to_jsonb(orow)) is distinct from segmenter._attributes(to_jsonb(nr))),
         ins as (
           insert into segmenter.changes (segment_id, event, ids, members)
           select segment_id, event, array_agg(member), count(*)
           from (select e.*, (row_number() over () - 1) / 10000 as chunk from e
                 where not (e.event = 'remove' and e.segment_id is not distinct from clearing)) r
           group by segment_id, event, chunk
           having segment_id in (select g.segment_id from segmenter.segments g where g.actual_end = 'infinity')
           order by event, segment_id, chunk
           returning segment_id)
    select array_agg(distinct segment_id) into touched from ins;
  end if;
  if clearing is not null then
    if segmenter._clear_needs_members(clearing) then
      insert into segmenter.changes (segment_id, event, ids, members)
      select clearing, 'clear', array_agg(member), count(*)
      from (select id::text as member, (row_number() over () - 1) / 10000 as chunk
            from old_rows where actual_end = 'infinity' and id is not null and segment_id = clearing) r
      group by chunk order by chunk;
      get diagnostics cleared = row_count;
    end if;
    if cleared = 0 then
      insert into segmenter.changes (segment_id, event) values (clearing, 'clear');
    end if;
    touched := array_append(touched, clearing);
  end if;
  perform segmenter._wake(touched);
  return null;
end $$;

-- INSERT and DELETE: only current segments are captured: a retired segment's segment_delete is
-- its last event (re-creating it under its name revives it, see create_segment). The check is on
-- the grouped chunks (HAVING), a few per statement, not on every row: per row it took bench/capture's
-- 1M-row UPDATE to 1.51x the uncaptured one, per chunk 1.29x (INSERT 1.20x and 1.03x).
create or replace function segmenter.tg_segment_table__capture_insert() returns trigger
language plpgsql set work_mem = '64MB' as $$
declare touched uuid[];
begin
  with ins as (
    insert into segmenter.changes (segment_id, event, ids, members)
    select segment_id, 'add', array_agg(member), count(*)
    from (select segment_id, id::text as member, (row_number() over () - 1) / 10000 as chunk
          from new_rows where actual_end = 'infinity' and id is not null) r
    group by segment_id, chunk
    having segment_id in (select g.segment_id from segmenter.segments g where g.actual_end = 'infinity')
    order by segment_id, chunk
    returning segment_id)
  select array_agg(distinct segment_id) into touched from ins;
  perform segmenter._wake(touched);
  return null;
end $$;

create or replace function segmenter.tg_segment_table__capture_delete() returns trigger
language plpgsql set work_mem = '64MB' as $$
declare touched uuid[];
begin
  with ins as (
    insert into segmenter.changes (segment_id, event, ids, members, rows)
    select segment_id, 'remove', array_agg(member), count(*), jsonb_agg(row)
    from (select segment_id, id::text as member, to_jsonb(r) as row, (row_number() over () - 1) / 10000 as chunk
          from old_rows r where actual_end = 'infinity' and id is not null) d
    group by segment_id, chunk
    having segment_id in (select g.segment_id from segmenter.segments g where g.actual_end = 'infinity')
    order by segment_id, chunk
    returning segment_id)
  select array_agg(distinct segment_id) into touched from ins;
  perform segmenter._wake(touched);
  return null;
end $$;

-- TRUNCATE takes the rows with it, so the clear is captured BEFORE it runs: each current segment
-- stored in the table gets its clear, with the members (and their rows, as for a DELETE) where a
-- subscription delivers it as removes. A failed TRUNCATE rolls it back with everything else.
create or replace function segmenter.tg_segment_table__capture_truncate() returns trigger
language plpgsql set work_mem = '64MB' as $$
declare
  g record;
  touched uuid[];
  n bigint;
begin
  for g in select distinct segment_id from segmenter.segments where table_name = tg_relid and actual_end = 'infinity' loop
    n := 0;
    if segmenter._clear_needs_members(g.segment_id) then
      execute format($q$
        insert into segmenter.changes (segment_id, event, ids, members, rows)
        select $1, 'clear', array_agg(member), count(*), jsonb_agg(row)
        from (select t.id::text as member, to_jsonb(t) as row, (row_number() over () - 1) / 10000 as chunk
              from %s t where t.segment_id = $1 and t.actual_end = 'infinity' and t.id is not null) d
        group by chunk order by chunk$q$, tg_relid::regclass)
      using g.segment_id;
      get diagnostics n = row_count;
    end if;
    if n = 0 then
      insert into segmenter.changes (segment_id, event) values (g.segment_id, 'clear');
    end if;
    touched := array_append(touched, g.segment_id);
  end loop;
  perform segmenter._wake(touched);
  return null;
end $$;

-- Tables registered before this migration have the TRUNCATE trigger AFTER the rows are gone.
do $$
declare t regclass;
begin
  for t in select distinct table_name from segmenter.segments loop
    if exists (select 1 from pg_trigger where tgrelid = t and tgname = '_100_segmenter_capture_truncate') then
      execute format('drop trigger _100_segmenter_capture_truncate on %s', t);
      execute format('create trigger _100_segmenter_capture_truncate before truncate on %s for each statement execute function segmenter.tg_segment_table__capture_truncate()', t);
    end if;
  end loop;
end $$;

create or replace function segmenter._register_table(table_name regclass) returns void
language plpgsql as $$
declare
  col record;
  missing text[] := '{}';
  wrong text[] := '{}';
  required constant text[] := array['segment_id', 'id', 'actual_begin', 'actual_end', 'processed'];
begin
  for col in
    select r.name, format_type(a.atttypid, a.atttypmod) as type
    from unnest(required) as r(name)
    left join pg_attribute a on a.attrelid = table_name and a.attname = r.name and not a.attisdropped and a.attnum > 0
  loop
    if col.type is null then
      missing := missing || col.name;
    elsif col.name = 'segment_id' and col.type <> 'uuid' then
      wrong := wrong || format('segment_id is %s, must be uuid', col.type);
    elsif col.name in ('actual_begin', 'actual_end', 'processed')
          and col.type not in ('timestamp without time zone', 'timestamp with time zone') then
      wrong := wrong || format('%s is %s, must be timestamp or timestamptz', col.name, col.type);
    end if;
  end loop;
  if cardinality(missing) > 0 then
    perform segmenter._fail('SG003',
      format('table_name: table %s lacks required column(s) %s', table_name, array_to_string(missing, ', ')),
      'a segment table needs segment_id uuid, id, actual_begin timestamp, actual_end timestamp default ''infinity'', processed timestamp; see the seed DDL in the README');
  end if;
  if cardinality(wrong) > 0 then
    perform segmenter._fail('SG003', format('table_name: table %s: %s', table_name, array_to_string(wrong, '; ')),
      'alter the column type(s) to match the segment table contract');
  end if;

  if exists (select 1 from pg_trigger where tgrelid = table_name and tgname = '_100_segmenter_capture_insert') then
    return;
  end if;
  execute format('create trigger _100_segmenter_capture_insert after insert on %s referencing new table as new_rows for each statement execute function segmenter.tg_segment_table__capture_insert()', table_name);
  execute format('create trigger _100_segmenter_capture_update after update on %s referencing old table as old_rows new table as new_rows for each statement execute function segmenter.tg_segment_table__capture_update()', table_name);
  execute format('create trigger _100_segmenter_capture_delete after delete on %s referencing old table as old_rows for each statement execute function segmenter.tg_segment_table__capture_delete()', table_name);
  execute format('create trigger _100_segmenter_capture_truncate before truncate on %s for each statement execute function segmenter.tg_segment_table__capture_truncate()', table_name);
end $$;

-- ---------------------------------------------------------------------------------------------
-- Resync: also right without a clear template
-- ---------------------------------------------------------------------------------------------

-- As in 0001, plus: without a clear template a resync's clear is delivered as removes of every
-- member the target may hold (every id the segment table has for the segment, and the ids of
-- undelivered removes and clears), before the adds of the current members.
-- A subscription held because its target checkpoint does not fit this home (diverged) takes the
-- target over: a new sync_key, so the snapshot is delivered from a fresh checkpoint row.
create or replace function segmenter._start_sync(sub_id bigint, with_clear boolean) returns bigint
language plpgsql as $$
declare
  s segmenter.subscriptions;
  members text;
  former text;
  first_pos bigint;
  as_removes boolean;
begin
  select * into s from segmenter.subscriptions where subscription_id = sub_id for update;
  lock table segmenter.sequencer_lock in exclusive mode;
  as_removes := with_clear and s.clear_sql is null;
  delete from segmenter.changes where subscription_id = sub_id and (pos is null or pos > s.cursor_pos);
  select string_agg(format(
           $q$select %L::uuid as segment_id, id::text as member from %s where segment_id = %L and actual_end = 'infinity' and id is not null$q$,
           g.segment_id, g.table_name, g.segment_id), ' union all '),
         string_agg(format(
           $q$select distinct %L::uuid as segment_id, id::text as member, null::jsonb as row from %s where segment_id = %L and id is not null$q$,
           g.segment_id, g.table_name, g.segment_id), ' union all ')
    into members, former
  from segmenter.segments g where g.segment_id = any(s.segment_ids) and g.actual_end = 'infinity';
  -- Members whose remove or clear has not reached the target yet, with the rows a DELETE or a
  -- TRUNCATE took from the table.
  former := coalesce(former || ' union all ', '') || format($q$
    select c.segment_id, m.id, m.row from segmenter.changes c
    cross join lateral unnest(c.ids, array(select jsonb_array_elements(c.rows))) as m(id, row)
    where c.event in ('remove', 'clear') and c.ids is not null and c.segment_id = any(%L::uuid[])
      and (c.subscription_id is null or c.subscription_id = %s)
      and (c.pos is null or c.pos > %s or (c.pos = %s and c.members > %s))$q$,
    s.segment_ids, sub_id, s.cursor_pos, s.cursor_pos, s.cursor_ord);
  execute format($q$
    with base as (select segmenter._assigned_through() as p),
         todo as (select seq, row_number() over (order by seq) as rn from segmenter.changes where pos is null),
         sequenced as (update segmenter.changes c set pos = base.p + todo.rn from base, todo where c.seq = todo.seq returning 1),
         gone as (select distinct on (segment_id, member) segment_id, member, row from (%s) f where $4
                  order by segment_id, member, row nulls last),
         snapshot_rows as (
           select segment_id, 'segment_upsert'::segmenter.event as event, null::text[] as ids, null::jsonb as rows, 0 as k, 0::bigint as chunk
             from unnest($1::uuid[]) segment_id
           union all
           select segment_id, 'clear', null, null, 1, 0 from unnest($1::uuid[]) segment_id where $2 and not $4
           union all
           select segment_id, 'remove', array_agg(member order by member), case when bool_or(row is not null) then jsonb_agg(row order by member) end, 2, chunk
             from (select gg.*, (row_number() over (order by segment_id, member) - 1) / 10000 as chunk from gone gg) gc
             group by segment_id, chunk
           union all
           select segment_id, 'add', array_agg(member), null, 3, chunk
             from (select m.*, (row_number() over () - 1) / 10000 as chunk from (%s) m) mm
             group by segment_id, chunk),
         numbered as (select r.*, row_number() over (order by k, segment_id, chunk) as rn from snapshot_rows r)
    insert into segmenter.changes (pos, segment_id, event, ids, members, rows, subscription_id)
    select (select p from base) + (select count(*) from sequenced) + rn, segment_id, event, ids, coalesce(cardinality(ids), 1), rows, $3
    from numbered order by rn
    returning pos$q$,
    former,
    coalesce(members, 'select null::uuid, null::text where false'))
  using s.segment_ids, with_clear, sub_id, as_removes;
  select min(pos) into first_pos from segmenter.changes where subscription_id = sub_id and pos is not null and pos > s.cursor_pos;
  update segmenter.home set last_pos = greatest(last_pos, (select max(pos) from segmenter.changes where pos is not null));
  update segmenter.subscriptions
  set resync_pos = first_pos,
      sync_key = case when s.error_kind = 'diverged' then gen_random_uuid() else s.sync_key end
  where subscription_id = sub_id;
  perform segmenter._release_subscription(sub_id);
  perform segmenter._wake(s.segment_ids);
  return first_pos;
end $$;

comment on function segmenter.resync is 'Re-export a subscription from one consistent snapshot: segment_upsert, then clear (with a clear template) or removes of every member the target may hold (without one), then add for every current member; changes before the snapshot are skipped, changes after it follow. A subscription held as diverged (its target checkpoint came from another home or is ahead of this one) takes the target over with a fresh checkpoint. Returns the snapshot''s first position.';

-- ---------------------------------------------------------------------------------------------
-- Retired and re-created segments
-- ---------------------------------------------------------------------------------------------

-- As in 0001, except that a name whose segment was retired revives that segment (same
-- segment_id), so the subscriptions naming it follow it again; they are resynced, as the members
-- changed while it was retired were not captured.
create or replace function segmenter.create_segment(
  name text,
  table_name regclass,
  kind text default 'manual',
  refresh_sql text default null,
  refresh_cron text default null,
  sources regclass[] default null,
  ready_sql text default null
) returns uuid
language plpgsql as $$
declare
  cur segmenter.segments;
  new_id uuid;
  revived boolean := false;
  sub_id bigint;
begin
  if name is null or btrim(name) = '' then
    perform segmenter._fail('SG012', 'name: a segment needs a non-empty name', 'pass name => ''my_segment''');
  end if;
  if table_name is null then
    perform segmenter._fail('SG012', 'table_name: a segment needs a table', 'pass table_name => ''public.my_segment''');
  end if;
  if kind is null or kind not in ('auto', 'manual') then
    perform segmenter._fail('SG012', format('kind: %L is not a segment kind', kind), 'use kind => ''manual'' (changed by DML or add_members) or ''auto'' (refreshed by refresh_sql on refresh_cron)');
  end if;
  if kind = 'auto' and (refresh_sql is null or btrim(refresh_sql) = '') then
    perform segmenter._fail('SG012', 'refresh_sql: an auto segment needs a refresher query', 'pass refresh_sql => ''select id, ... from ...'' returning id and attribute columns');
  end if;
  if kind = 'manual' and (refresh_sql is not null or refresh_cron is not null) then
    perform segmenter._fail('SG014', 'refresh_sql/refresh_cron: a manual segment is not refreshed', 'use kind => ''auto'' to refresh it from a query');
  end if;
  perform segmenter._check_cron(refresh_cron);
  perform segmenter._register_table(table_name);

  select * into cur from segmenter.segments s where s.name = create_segment.name and s.actual_end = 'infinity' for update;
  if found then
    if cur.table_name <> create_segment.table_name then
      perform segmenter._fail('SG013', format('table_name: segment %L already lives in %s', name, cur.table_name),
        'retire it first (segmenter.retire_segment) or pick another name');
    end if;
    if (cur.kind, cur.refresh_sql, cur.refresh_cron, cur.sources, cur.ready_sql)
       is not distinct from (kind, refresh_sql, refresh_cron, sources, ready_sql) then
      return cur.segment_id; -- unchanged: no new version, no event
    end if;
    update segmenter.segments set actual_end = clock_timestamp() where version_id = cur.version_id;
    new_id := cur.segment_id;
  else
    select s.segment_id into new_id from segmenter.segments s where s.name = create_segment.name
    order by s.actual_end desc limit 1;
    revived := new_id is not null;
    new_id := coalesce(new_id, gen_random_uuid());
  end if;
  insert into segmenter.segments (segment_id, name, table_name, kind, refresh_sql, refresh_cron, sources, ready_sql)
  values (new_id, name, table_name, kind, refresh_sql, refresh_cron, sources, ready_sql);
  insert into segmenter.changes (segment_id, event) values (new_id, 'segment_upsert');
  if revived then
    for sub_id in select s.subscription_id from segmenter.subscriptions s where s.segment_ids @> array[new_id] order by 1 loop
      perform segmenter._start_sync(sub_id, true);
    end loop;
  end if;
  perform segmenter._wake(array[new_id]);
  return new_id;
end $$;
comment on function segmenter.create_segment is 'Create a segment stored in table_name (capture triggers are attached), or change its definition (the old one is kept as history). Re-creating a retired segment''s name revives it (same segment_id) and resyncs the subscriptions that name it. Emits segment_upsert. Returns the segment_id.';

comment on function segmenter.retire_segment is 'Retire a segment: its definition gets actual_end = now() and subscriptions receive segment_delete, its last event (member changes after it are not captured). Its members stay readable in its table; create_segment with its name revives it.';

-- ---------------------------------------------------------------------------------------------
-- Dead letters: a replay never duplicates
-- ---------------------------------------------------------------------------------------------

-- As in 0001, except that a dead letter with a later change of its member (delivered or pending) is
-- superseded: that change carries the member's state, and re-emitting it would deliver it twice.
create or replace function segmenter.replay_dead_letters(subscription text) returns bigint
language plpgsql as $$
declare
  s segmenter.subscriptions := segmenter._subscription(subscription);
  d record;
  n bigint := 0;
  is_member boolean;
begin
  for d in select dl.*, g.table_name from segmenter.dead_letters dl
           left join segmenter.segments g on g.segment_id = dl.segment_id and g.actual_end = 'infinity'
           where dl.subscription_id = s.subscription_id and dl.replayed_at is null order by dl.pos, dl.ord for update of dl
  loop
    if d.member_id is not null and exists (
         select 1 from segmenter.changes c
         where c.segment_id = d.segment_id and (c.pos > d.pos or c.pos is null) and c.ids @> array[d.member_id]
           and (c.subscription_id is null or c.subscription_id = s.subscription_id)) then
      update segmenter.dead_letters set replayed_at = clock_timestamp(), error = error || ' (superseded by a later change of the member)'
      where dead_letter_id = d.dead_letter_id;
      continue;
    end if;
    if d.member_id is null then
      insert into segmenter.changes (segment_id, event, subscription_id) values (d.segment_id, d.event, s.subscription_id);
    else
      is_member := false;
      if d.table_name is not null then
        execute format('select exists (select 1 from %s where segment_id = $1 and id::text = $2 and actual_end = ''infinity'')', d.table_name)
          into is_member using d.segment_id, d.member_id;
      end if;
      insert into segmenter.changes (segment_id, event, ids, subscription_id)
      values (d.segment_id, case when is_member then (case when d.event = 'update' then 'update' else 'add' end) else 'remove' end::segmenter.event,
              array[d.member_id], s.subscription_id);
    end if;
    update segmenter.dead_letters set replayed_at = clock_timestamp() where dead_letter_id = d.dead_letter_id;
    n := n + 1;
  end loop;
  perform segmenter._wake(s.segment_ids);
  return n;
end $$;
comment on function segmenter.replay_dead_letters is 'Deliver a subscription''s dead letters again (after the target was fixed), as each member''s state now; a dead letter whose member changed again later is superseded, not replayed. Returns how many were re-queued.';

-- ---------------------------------------------------------------------------------------------
-- Clearing a hold
-- ---------------------------------------------------------------------------------------------

-- resume() also releases a hold: the operator says the cause is fixed (a configuration error the
-- sidecar's environment now covers); a cause that is still there holds it again at once.
create or replace function segmenter.resume(subscription text) returns void
language plpgsql as $$
declare s segmenter.subscriptions := segmenter._subscription(subscription);
begin
  update segmenter.subscriptions set state = 'active' where subscription_id = s.subscription_id;
  perform segmenter._release_subscription(s.subscription_id);
  perform segmenter._wake(s.segment_ids);
end $$;
comment on function segmenter.resume is 'Resume a paused subscription (it catches up on everything that accumulated), or release one the sidecar held in an error state once its cause is fixed.';

-- Repointing a consumer releases the configuration holds of its subscriptions.
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
  if options is null or jsonb_typeof(options) <> 'object' then
    perform segmenter._fail('SG012', 'options: must be a JSON object', 'pass options => ''{}''::jsonb');
  end if;
  insert into segmenter.consumers as c (name, kind, dialect, dsn_env, options)
  values (name, kind, dialect, dsn_env, options)
  on conflict on constraint consumers_name_key do update
    set kind = excluded.kind, dialect = excluded.dialect, dsn_env = excluded.dsn_env, options = excluded.options
  returning consumer_id into id;
  perform segmenter._release_subscription(s.subscription_id) from segmenter.subscriptions s
  where s.consumer_id = id and s.error_kind = 'configuration';
  perform segmenter._wake(array(select distinct unnest(s.segment_ids) from segmenter.subscriptions s where s.consumer_id = id));
  return id;
end $$;

-- ---------------------------------------------------------------------------------------------
-- Status: holds and scopes
-- ---------------------------------------------------------------------------------------------

create or replace view segmenter.status as
select s.name as subscription, s.subscription_id,
       case when s.error is not null then 'error' else s.state end as state,
       c.name as consumer,
       coalesce(p.pending, 0) as pending_changes,
       now() - p.oldest as oldest_pending_age,
       (select max(at) from segmenter.log l where l.subscription_id = s.subscription_id and l.kind = 'batch' and l.ok) as last_success,
       e.at as last_error_at, coalesce(s.error, e.error) as last_error,
       (select count(*) from segmenter.dead_letters d where d.subscription_id = s.subscription_id and d.replayed_at is null) as dead_letters,
       s.cursor_pos, s.cursor_ord,
       s.error_kind, s.error_hint,
       g.retired as retired_segments,
       cardinality(s.segment_ids) - cardinality(g.retired) as current_segments
from segmenter.subscriptions s
join segmenter.consumers c using (consumer_id)
left join lateral (
  select sum(ch.members - case when ch.pos = s.cursor_pos then s.cursor_ord else 0 end) as pending, min(ch.at) as oldest
  from segmenter.changes ch
  where ch.segment_id = any(s.segment_ids)
    and (ch.subscription_id is null or ch.subscription_id = s.subscription_id)
    and (ch.pos is null or ch.pos > s.cursor_pos or (ch.pos = s.cursor_pos and ch.members > s.cursor_ord))
    and (s.resync_pos is null or ch.pos is null or ch.pos >= s.resync_pos or s.cursor_pos >= s.resync_pos)
) p on true
left join lateral (
  select l.at, l.error from segmenter.log l
  where l.subscription_id = s.subscription_id and l.kind in ('batch', 'hold') and not l.ok order by l.at desc limit 1
) e on true
cross join lateral (
  select coalesce(array_agg(x.name order by x.name) filter (where x.actual_end <> 'infinity'), '{}') as retired
  from (select distinct on (segment_id) segment_id, name, actual_end from segmenter.segments
        where segment_id = any(s.segment_ids) order by segment_id, actual_end desc) x
) g;
comment on view segmenter.status is 'Per subscription: state (active, paused, or error while the sidecar holds it: error_kind, last_error and error_hint say why and how to fix it), pending member events, age of the oldest pending change, last success, last error, open dead letters, cursor, and the scope: retired_segments (names in the scope that are retired: they deliver nothing more) and current_segments (0: the subscription points at nothing current).';

insert into segmenter.migrations (id, name) values (6, '0006_faults');
