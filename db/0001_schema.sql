-- 0001: schema `segmenter`: configuration (segments, consumers, subscriptions), the change log,
-- the run log, and the helpers the capture triggers and the SQL API share.
--
-- Forward-only. `segmenter migrate` applies each file once under an advisory lock; applying the
-- files in order with psql works too (each file records itself in segmenter.migrations).
-- Error codes raised here are stable. The one list of them, with their meanings, is SQLSTATES in
-- src/errors.ts (test/error_codes.test.ts checks it against every file here).

create schema segmenter;
comment on schema segmenter is 'Segmenter: customer segments in Postgres, kept in sync with external systems. Public surface: functions and views; tables are read-only for users.';

create table segmenter.migrations (
  id int primary key,
  name text not null,
  applied_at timestamptz not null default now()
);
comment on table segmenter.migrations is 'Private. Which db/ migration files have been applied.';

-- Segment definitions. A definition has history like the seed's segment tables: changing it closes
-- the current row (actual_end = now()) and opens a new one with the same segment_id.
create table segmenter.segments (
  version_id bigint generated always as identity primary key,
  segment_id uuid not null default gen_random_uuid(),
  name text not null,
  table_name regclass not null,
  kind text not null,
  refresh_sql text,
  refresh_cron text,
  sources regclass[],
  ready_sql text,
  actual_begin timestamptz not null default clock_timestamp(),
  actual_end timestamptz not null default 'infinity',
  constraint segments_kind_check check (kind in ('auto', 'manual'))
);
create unique index segments_current_name on segmenter.segments (name) where actual_end = 'infinity';
create unique index segments_current_id on segmenter.segments (segment_id) where actual_end = 'infinity';
create index segments_table on segmenter.segments (table_name);
comment on table segmenter.segments is 'Segment definitions with history (the seed''s segmenter_segments). A segment is current while actual_end = ''infinity''. Write through create_segment / retire_segment.';

create table segmenter.consumers (
  consumer_id bigint generated always as identity primary key,
  name text not null unique,
  kind text not null,
  dialect text not null,
  dsn_env text not null,
  options jsonb not null default '{}',
  created_at timestamptz not null default now()
);
comment on table segmenter.consumers is 'External systems (the seed''s segmenter_consumers, "connectors"). Credentials never live here: dsn_env names the environment variable holding the connection URL. Write through create_consumer.';

create table segmenter.subscriptions (
  subscription_id bigint generated always as identity primary key,
  name text not null unique,
  description text,
  consumer_id bigint not null references segmenter.consumers,
  segment_ids uuid[] not null,
  add_sql text not null,
  remove_sql text not null,
  clear_sql text,
  update_sql text,
  segment_upsert_sql text,
  segment_delete_sql text,
  syntax text not null,
  batch_size int not null,
  batch_timeout interval not null,
  audience text,
  state text not null default 'active',
  -- Delivery cursor: every member event at or before (cursor_pos, cursor_ord) has been delivered.
  -- The target's own checkpoint row is the truth for SQL sinks; this copy is written after the
  -- target commits and reconciled from the target on start.
  cursor_pos bigint not null default 0,
  cursor_ord int not null default 0,
  -- A resync (or the initial sync) supersedes every change before this position.
  resync_pos bigint,
  -- Names this subscription's checkpoint row in the target; unique even if a name is reused.
  sync_key uuid not null default gen_random_uuid(),
  created_at timestamptz not null default now(),
  constraint subscriptions_state_check check (state in ('active', 'paused')),
  constraint subscriptions_batch_size_check check (batch_size >= 1),
  constraint subscriptions_batch_timeout_check check (batch_timeout >= interval '0')
);
create index subscriptions_segments on segmenter.subscriptions using gin (segment_ids);
comment on table segmenter.subscriptions is 'Integrations (the seed''s segmenter_subscriptions): which segments go to which consumer, with which templates, batch size and timeout, and where delivery stands. Write through create_subscription / pause / resume / resync.';

create type segmenter.event as enum ('add', 'remove', 'update', 'clear', 'segment_upsert', 'segment_delete');
comment on type segmenter.event is 'Membership and segment events, in the order a statement emits them when it emits several.';

-- The change log. Narrow on purpose: one row per (statement, segment, event, chunk of up to 10,000
-- members), the members as a text[] of ids. Attributes are read from the segment table at delivery
-- time; only DELETE stores the gone rows (`rows`). A per-row log measured 1.9x insert cost; this
-- one measures in bench/capture.
create table segmenter.changes (
  seq bigint generated always as identity primary key,
  -- Commit-order position, assigned by segmenter.sequence_changes(). seq is assigned at insert
  -- time, which is not commit order, so readers follow pos, never seq.
  pos bigint,
  segment_id uuid not null,
  event segmenter.event not null,
  ids text[],
  -- cardinality(ids), or 1 for a segment-level event: counting pending members must not detoast
  -- every array (status and metrics read it constantly).
  members int not null default 1,
  rows jsonb,
  -- Set for changes that belong to one subscription only (the rows a resync emits).
  subscription_id bigint,
  at timestamptz not null default clock_timestamp()
);
alter table segmenter.changes alter column ids set storage external; -- ids compress poorly; skip pglz
create unique index changes_pos on segmenter.changes (pos) where pos is not null;
create index changes_unsequenced on segmenter.changes (seq) where pos is null;
comment on table segmenter.changes is 'Private. The change log written by capture triggers. Read it through segmenter.events.';

-- The sequencer's mutex. A table lock (not an advisory lock) because LOCK TABLE takes no snapshot:
-- a REPEATABLE READ transaction can lock first and then see every sequenced change.
create table segmenter.sequencer_lock ();
comment on table segmenter.sequencer_lock is 'Private. Locked in EXCLUSIVE mode while positions are assigned.';

create table segmenter.log (
  log_id bigint generated always as identity primary key,
  at timestamptz not null default clock_timestamp(),
  kind text not null,                 -- 'refresh' | 'batch' | 'resync' | ...
  segment_id uuid,
  subscription_id bigint,
  event segmenter.event,
  statements int,
  rows bigint,
  duration_ms double precision,
  ok boolean not null,
  error text,
  detail jsonb
);
create index log_subscription_at on segmenter.log (subscription_id, at) where subscription_id is not null;
create index log_segment_at on segmenter.log (segment_id, at) where segment_id is not null;
create table segmenter.dead_letters (
  dead_letter_id bigint generated always as identity primary key,
  at timestamptz not null default clock_timestamp(),
  subscription_id bigint not null references segmenter.subscriptions on delete cascade,
  pos bigint not null,
  ord int not null,
  segment_id uuid not null,
  event segmenter.event not null,
  member_id text,
  statement text,
  error text not null,
  replayed_at timestamptz
);
-- Unique: a dead letter is recorded before the target's checkpoint passes it; a sidecar that dies
-- in between finds the same event rejected again and must not record it twice.
create unique index dead_letters_open on segmenter.dead_letters (subscription_id, pos, ord) where replayed_at is null;
comment on table segmenter.dead_letters is 'Events a target rejected, isolated from their batch with the target''s error and the statement that failed. Replay with segmenter.replay_dead_letters.';

comment on table segmenter.log is 'Refresh runs and delivery batches (the seed''s segmenter_log): when, what, how many rows, how long, ok or the error.';

-- ---------------------------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------------------------

create function segmenter._fail(code text, message text, hint text default null, detail text default null)
returns void language plpgsql as $$
begin
  raise exception using errcode = code, message = message, hint = coalesce(hint, ''), detail = coalesce(detail, '');
end $$;
comment on function segmenter._fail is 'Private. Raise a coded error with a hint.';

create function segmenter._segment(segment text) returns segmenter.segments
language plpgsql stable as $$
declare s segmenter.segments;
begin
  select * into s from segmenter.segments where name = segment and actual_end = 'infinity';
  if not found then
    perform segmenter._fail('SG001', format('unknown segment %L', segment),
      'list segments with: select name from segmenter.segments where actual_end = ''infinity''; create one with segmenter.create_segment(...)');
  end if;
  return s;
end $$;
comment on function segmenter._segment is 'Private. The current definition of a segment, or error SG001.';

create function segmenter._subscription(subscription text) returns segmenter.subscriptions
language plpgsql stable as $$
declare s segmenter.subscriptions;
begin
  select * into s from segmenter.subscriptions where name = subscription;
  if not found then
    perform segmenter._fail('SG011', format('unknown subscription %L', subscription),
      'list subscriptions with: select name from segmenter.subscriptions');
  end if;
  return s;
end $$;
comment on function segmenter._subscription is 'Private. A subscription by name, or error SG011.';

-- Wake delivery for every active subscription that covers one of the given segments: one pg-boss
-- job per subscription (deduplicated by the queue's 'short' policy while one is pending) and one
-- NOTIFY (a latency hint: Postgres folds identical notifications of a transaction into one).
create function segmenter._wake(segment_ids uuid[]) returns void
language plpgsql as $$
begin
  if segment_ids is null or cardinality(segment_ids) = 0 then
    return;
  end if;
  -- Only one open transaction per subscription enqueues (a try-lock, never a wait): otherwise a
  -- second writer's ON CONFLICT waits for the first one's uncommitted job, blocking writers of
  -- unrelated rows until it commits and deadlocking two transactions that write two segments in
  -- opposite orders. A writer that skips is covered by that job or by the sidecar's sweep.
  insert into pgboss.job (name, singleton_key, data, policy, retry_limit, expire_in, keep_until)
  select 'segmenter_deliver', s.subscription_id::text, jsonb_build_object('subscription_id', s.subscription_id),
         'short', 0, interval '15 minutes', now() + interval '1 hour'
  from (select s.subscription_id from segmenter.subscriptions s
        where s.state = 'active' and s.segment_ids && _wake.segment_ids offset 0) s
  where pg_try_advisory_xact_lock(1936025453, (s.subscription_id & 2147483647)::int) -- 1936025453 = 'segm'
  on conflict do nothing;
  perform pg_notify('segmenter', 'changes'); -- also when the job was skipped: wake the sidecar anyway
end $$;
comment on function segmenter._wake is 'Private. Enqueue one delivery job per affected active subscription and NOTIFY once.';

-- The attributes of a segment-table row: everything but the bookkeeping columns.
create function segmenter._attributes(r jsonb) returns jsonb
language sql immutable parallel safe as $$
  select r - array['segment_id', 'id', 'actual_begin', 'actual_end', 'processed']
$$;
comment on function segmenter._attributes is 'Private. A member row as jsonb without its bookkeeping columns.';

-- ---------------------------------------------------------------------------------------------
-- Change capture: statement-level triggers with transition tables, one INSERT ... SELECT each.
-- The functions are generic: PL/pgSQL compiles and caches a trigger function per table, so the
-- static SQL below is planned once per segment table.
-- ---------------------------------------------------------------------------------------------

create function segmenter.tg_segment_table__capture_insert() returns trigger
language plpgsql set work_mem = '64MB' as $$
declare touched uuid[];
begin
  with ins as (
    insert into segmenter.changes (segment_id, event, ids, members)
    select segment_id, 'add', array_agg(member), count(*)
    from (select segment_id, id::text as member, (row_number() over () - 1) / 10000 as chunk
          from new_rows where actual_end = 'infinity' and id is not null) r
    group by segment_id, chunk
    order by segment_id, chunk
    returning segment_id)
  select array_agg(distinct segment_id) into touched from ins;
  perform segmenter._wake(touched);
  return null;
end $$;

-- UPDATE: compare each member's current row before and after, per (segment_id, id). A member with
-- a current row only before left (remove), only after entered or re-entered (add), in both with
-- different attributes changed (update). Rows that did not change membership or attributes
-- (a refresh stamping `processed`) produce nothing. clear_segment() sets segmenter.clearing so its
-- UPDATE emits one 'clear' instead of a remove per member.
-- Transition tables alone cost about 1.3x on a 1M-row UPDATE (bench/capture), so the common bulk
-- case, a statement that leaves no current row behind (closing members), skips the join.
create function segmenter.tg_segment_table__capture_update() returns trigger
language plpgsql set work_mem = '64MB' as $$
declare
  touched uuid[];
  clearing uuid := nullif(current_setting('segmenter.clearing', true), '')::uuid;
begin
  if not exists (select 1 from new_rows where actual_end = 'infinity' and id is not null) then
    with ins as (
      insert into segmenter.changes (segment_id, event, ids, members)
      select segment_id, 'remove', array_agg(member), count(*)
      from (select segment_id, id::text as member, (row_number() over () - 1) / 10000 as chunk
            from old_rows where actual_end = 'infinity' and id is not null
              and segment_id is distinct from clearing) r
      group by segment_id, chunk
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
           order by event, segment_id, chunk
           returning segment_id)
    select array_agg(distinct segment_id) into touched from ins;
  end if;
  if clearing is not null then
    insert into segmenter.changes (segment_id, event) values (clearing, 'clear');
    touched := array_append(touched, clearing);
  end if;
  perform segmenter._wake(touched);
  return null;
end $$;

-- DELETE: the rows are gone, so the change keeps them (aligned with ids) for templates that need
-- a member's attributes in its remove statement.
create function segmenter.tg_segment_table__capture_delete() returns trigger
language plpgsql set work_mem = '64MB' as $$
declare touched uuid[];
begin
  with ins as (
    insert into segmenter.changes (segment_id, event, ids, members, rows)
    select segment_id, 'remove', array_agg(member), count(*), jsonb_agg(row)
    from (select segment_id, id::text as member, to_jsonb(r) as row, (row_number() over () - 1) / 10000 as chunk
          from old_rows r where actual_end = 'infinity' and id is not null) d
    group by segment_id, chunk
    order by segment_id, chunk
    returning segment_id)
  select array_agg(distinct segment_id) into touched from ins;
  perform segmenter._wake(touched);
  return null;
end $$;

-- TRUNCATE has no transition table: every segment stored in the table is cleared.
create function segmenter.tg_segment_table__capture_truncate() returns trigger
language plpgsql as $$
declare touched uuid[];
begin
  with ins as (
    insert into segmenter.changes (segment_id, event)
    select distinct segment_id, 'clear'::segmenter.event from segmenter.segments
    where table_name = tg_relid and actual_end = 'infinity'
    returning segment_id)
  select array_agg(segment_id) into touched from ins;
  perform segmenter._wake(touched);
  return null;
end $$;

-- Check a table has the columns of a segment table; attach the capture triggers (idempotent).
create function segmenter._register_table(table_name regclass) returns void
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
  execute format('create trigger _100_segmenter_capture_truncate after truncate on %s for each statement execute function segmenter.tg_segment_table__capture_truncate()', table_name);
end $$;
comment on function segmenter._register_table is 'Private. Validate a segment table''s columns and attach the statement-level capture triggers.';

-- ---------------------------------------------------------------------------------------------
-- Sequencing: commit-order positions for the change log.
-- ---------------------------------------------------------------------------------------------

-- Assign positions to every committed change that has none, in seq order, after all positions
-- already given. The set a statement can see is closed under commit order (if T2 wrote after T1
-- committed and T2 is visible, T1 is too), so a member's changes always get positions in the order
-- they happened, whatever order transactions committed in.
create function segmenter.sequence_changes() returns bigint
language plpgsql as $$
declare
  assigned bigint;
begin
  if current_setting('transaction_isolation') <> 'read committed' then
    perform segmenter._fail('SG012', 'sequence_changes() must run at READ COMMITTED',
      'call it outside an explicit REPEATABLE READ / SERIALIZABLE transaction');
  end if;
  lock table segmenter.sequencer_lock in exclusive mode;
  with base as (select coalesce(max(pos), 0) as p from segmenter.changes where pos is not null),
       todo as (select seq, row_number() over (order by seq) as rn from segmenter.changes where pos is null)
  update segmenter.changes c set pos = base.p + todo.rn
  from base, todo where c.seq = todo.seq;
  get diagnostics assigned = row_count;
  return assigned;
end $$;
comment on function segmenter.sequence_changes() is 'Give commit-order positions to captured changes; returns how many. The sidecar calls it before reading; safe to call from anywhere at READ COMMITTED.';

create view segmenter.events as
select c.pos, m.ord::int as ord, c.seq, c.at, c.segment_id, s.name as segment, c.event, m.id as member_id,
       c.subscription_id
from segmenter.changes c
left join lateral unnest(c.ids) with ordinality as m(id, ord) on true
left join (select distinct on (segment_id) segment_id, name from segmenter.segments order by segment_id, actual_end desc) s
  on s.segment_id = c.segment_id; -- the latest version, so a retired segment's events keep its name
comment on view segmenter.events is 'Every captured event, one row per member: pos (commit order; null until sequenced), ord within the change, event, member id.';

-- ---------------------------------------------------------------------------------------------
-- SQL API: segments
-- ---------------------------------------------------------------------------------------------

create function segmenter._check_cron(expr text) returns void
language plpgsql immutable as $$
declare
  fields text[];
  names constant text[] := array['minute', 'hour', 'day of month', 'month', 'day of week'];
  lo constant int[] := array[0, 0, 1, 1, 0];
  hi constant int[] := array[59, 23, 31, 12, 7];
  f text; part text; m text[]; a int; b int; i int;
begin
  if expr is null then return; end if;
  fields := regexp_split_to_array(btrim(expr), '\s+');
  if cardinality(fields) = 1 and fields[1] in ('@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly') then
    return;
  end if;
  if cardinality(fields) <> 5 then
    perform segmenter._fail('SG009', format('refresh_cron: %L has %s field(s), expected 5 (minute hour day-of-month month day-of-week)', expr, cardinality(fields)),
      'example: ''0 3 * * *'' runs daily at 03:00; ''*/15 * * * *'' every 15 minutes');
  end if;
  for i in 1..5 loop
    f := lower(fields[i]);
    if i = 4 then f := translate(replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(f,
      'jan','1'),'feb','2'),'mar','3'),'apr','4'),'may','5'),'jun','6'),'jul','7'),'aug','8'),'sep','9'),'oct','10'),'nov','11'),'dec','12'), '', ''); end if;
    if i = 5 then f := replace(replace(replace(replace(replace(replace(replace(f,
      'sun','0'),'mon','1'),'tue','2'),'wed','3'),'thu','4'),'fri','5'),'sat','6'); end if;
    foreach part in array string_to_array(f, ',') loop
      m := regexp_match(part, '^(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?$');
      if m is null or (m[4] is not null and m[4]::int < 1) then
        perform segmenter._fail('SG009', format('refresh_cron: %L: %s field %L is not valid', expr, names[i], fields[i]),
          'use *, a number, a range a-b, a list a,b or a step */n or a-b/n');
      end if;
      if m[2] is not null then
        a := m[2]::int; b := coalesce(m[3]::int, a);
        if a < lo[i] or b > hi[i] or a > b then
          perform segmenter._fail('SG009', format('refresh_cron: %L: %s field %L is out of range %s-%s', expr, names[i], fields[i], lo[i], hi[i]),
            'use values within the range');
        end if;
      end if;
    end loop;
  end loop;
end $$;
comment on function segmenter._check_cron is 'Private. Validate a 5-field cron expression (or @daily etc.), raising SG009 with the bad field.';

create function segmenter.create_segment(
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
    new_id := gen_random_uuid();
  end if;
  insert into segmenter.segments (segment_id, name, table_name, kind, refresh_sql, refresh_cron, sources, ready_sql)
  values (new_id, name, table_name, kind, refresh_sql, refresh_cron, sources, ready_sql);
  insert into segmenter.changes (segment_id, event) values (new_id, 'segment_upsert');
  perform segmenter._wake(array[new_id]);
  return new_id;
end $$;
comment on function segmenter.create_segment is 'Create a segment stored in table_name (capture triggers are attached), or change its definition (the old one is kept as history). Emits segment_upsert. Returns the segment_id.';

create function segmenter.retire_segment(name text) returns void
language plpgsql as $$
declare s segmenter.segments := segmenter._segment(name);
begin
  update segmenter.segments set actual_end = clock_timestamp() where version_id = s.version_id;
  insert into segmenter.changes (segment_id, event) values (s.segment_id, 'segment_delete');
  perform segmenter._wake(array[s.segment_id]);
end $$;
comment on function segmenter.retire_segment is 'Retire a segment: its definition gets actual_end = now() and subscriptions receive segment_delete. Its members stay readable in its table.';

-- Type of the id column, so member lookups compare in the column's own type and use its index.
create function segmenter._id_type(table_name regclass) returns text
language sql stable as $$
  select format_type(atttypid, atttypmod) from pg_attribute where attrelid = table_name and attname = 'id'
$$;

create function segmenter.add_members(segment text, ids text[]) returns bigint
language plpgsql as $$
declare
  s segmenter.segments := segmenter._segment(segment);
  reopened bigint; inserted bigint;
begin
  if s.kind <> 'manual' then
    perform segmenter._fail('SG014', format('segment %L is refreshed automatically', segment), 'change its refresher, or use a manual segment');
  end if;
  -- Reopen members that have a closed row and no current one (the seed's DDL keeps one row per id).
  execute format($q$
    with wanted as (select distinct x::%2$s as id from unnest($2::text[]) x where x is not null),
         latest as (select distinct on (t.id) t.ctid as row_ctid, t.id, t.actual_end
                    from %1$s t join wanted w on t.id = w.id where t.segment_id = $1
                    order by t.id, t.actual_end desc)
    update %1$s t set actual_end = 'infinity', actual_begin = now(), processed = now()
    from latest l where t.ctid = l.row_ctid and l.actual_end <> 'infinity'$q$, s.table_name, segmenter._id_type(s.table_name))
  using s.segment_id, ids;
  get diagnostics reopened = row_count;
  execute format($q$
    insert into %1$s (segment_id, id)
    select $1, w.id from (select distinct x::%2$s as id from unnest($2::text[]) x where x is not null) w
    where not exists (select 1 from %1$s t where t.segment_id = $1 and t.id = w.id)$q$, s.table_name, segmenter._id_type(s.table_name))
  using s.segment_id, ids;
  get diagnostics inserted = row_count;
  return reopened + inserted;
end $$;
comment on function segmenter.add_members is 'Add members to a manual segment (new rows, or reopened rows for returning members). Returns how many became members. Plain INSERT/UPDATE on the table works too.';

create function segmenter.remove_members(segment text, ids text[]) returns bigint
language plpgsql as $$
declare
  s segmenter.segments := segmenter._segment(segment);
  removed bigint;
begin
  if s.kind <> 'manual' then
    perform segmenter._fail('SG014', format('segment %L is refreshed automatically', segment), 'change its refresher, or use a manual segment');
  end if;
  execute format($q$update %1$s set actual_end = now(), processed = now()
    where segment_id = $1 and actual_end = 'infinity' and id = any($2::%2$s[])$q$, s.table_name, segmenter._id_type(s.table_name))
  using s.segment_id, ids;
  get diagnostics removed = row_count;
  return removed;
end $$;
comment on function segmenter.remove_members is 'Remove members from a manual segment (their rows get actual_end = now()). Returns how many left.';

create function segmenter.clear_segment(segment text) returns bigint
language plpgsql as $$
declare
  s segmenter.segments := segmenter._segment(segment);
  removed bigint;
begin
  if s.kind <> 'manual' then
    perform segmenter._fail('SG014', format('segment %L is refreshed automatically', segment), 'change its refresher, or use a manual segment');
  end if;
  perform set_config('segmenter.clearing', s.segment_id::text, true);
  execute format($q$update %s set actual_end = now(), processed = now()
    where segment_id = $1 and actual_end = 'infinity'$q$, s.table_name)
  using s.segment_id;
  get diagnostics removed = row_count;
  perform set_config('segmenter.clearing', '', true);
  if removed = 0 then
    -- Nothing to close, but the target may still hold members (for example after a failed
    -- delivery was skipped): emit the clear anyway.
    insert into segmenter.changes (segment_id, event) values (s.segment_id, 'clear');
    perform segmenter._wake(array[s.segment_id]);
  end if;
  return removed;
end $$;
comment on function segmenter.clear_segment is 'Remove every member of a manual segment. Subscriptions receive one clear event (their clear template), not one remove per member.';

-- ---------------------------------------------------------------------------------------------
-- SQL API: consumers and subscriptions
-- ---------------------------------------------------------------------------------------------

create function segmenter.create_consumer(name text, kind text, dialect text, dsn_env text, options jsonb default '{}')
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
  return id;
end $$;
comment on function segmenter.create_consumer is 'Create or update a consumer (an external system). dsn_env names the environment variable with its connection URL. Returns consumer_id.';

-- Structural check of a template, so a broken one is refused when written. The sidecar compiles
-- templates fully (and the TS API compiles before writing); this catches what SQL can see.
create function segmenter._check_template(field text, source text, syntax text) returns void
language plpgsql immutable as $$
declare
  tag text; depth int := 0; m text[];
begin
  if source is null then return; end if;
  if syntax = 'altcraft' then
    for m in select regexp_matches(source, '\{(\$[^{}]*|[A-Za-z_][^{}]*)\}', 'g') loop
      tag := m[1];
      if tag ~ '^for\M' then
        if tag !~ '^for\s+\$\w+\s*,\s*\$\w+\s*=\s*\$batch\s*$' then
          perform segmenter._fail('SG010', format('%s: malformed loop {%s}', field, tag), 'write {for $index, $lead = $batch} ... {end}');
        end if;
        if depth > 0 then
          perform segmenter._fail('SG010', format('%s: nested {for} loops are not supported', field), 'close the first loop with {end} before opening another');
        end if;
        depth := depth + 1;
      elsif tag = 'end' then
        if depth = 0 then
          perform segmenter._fail('SG010', format('%s: {end} without {for}', field), 'remove the {end} or open a loop with {for $index, $lead = $batch}');
        end if;
        depth := depth - 1;
      elsif tag = 'autocomma' then
        if depth = 0 then
          perform segmenter._fail('SG010', format('%s: {autocomma} outside a {for} loop', field), 'use {autocomma} inside {for ...} ... {end}');
        end if;
      elsif tag ~ '^\$\w+\.\w+$' then
        if depth = 0 then
          perform segmenter._fail('SG010', format('%s: {%s} outside a {for} loop', field, tag), 'member fields exist only inside {for $index, $lead = $batch} ... {end}; use {batch_in "Field"} outside');
        end if;
      elsif tag ~ '^\$\w+$' then
        if depth = 0 then
          perform segmenter._fail('SG010', format('%s: {%s} outside a {for} loop', field, tag), 'loop variables exist only inside {for ...} ... {end}');
        end if;
      elsif tag ~ '^batch_in\s' then
        if tag !~ '^batch_in\s+"[^"]+"\s*$' then
          perform segmenter._fail('SG010', format('%s: malformed {%s}', field, tag), 'write {batch_in "Field"}');
        end if;
      elsif tag not in ('segment_id', 'segment_name', 'audience') then
        perform segmenter._fail('SG010', format('%s: unknown tag {%s}', field, tag),
          'known tags: {segment_id} {segment_name} {audience} {for $index, $lead = $batch} {$lead.Field} {autocomma} {end} {batch_in "Field"}');
      end if;
    end loop;
    if depth <> 0 then
      perform segmenter._fail('SG010', format('%s: {for} without {end}', field), 'close the loop with {end}');
    end if;
  elsif syntax = 'squirrelly' then
    if (length(source) - length(replace(source, '{{', ''))) <> (length(source) - length(replace(source, '}}', ''))) then
      perform segmenter._fail('SG010', format('%s: unbalanced {{ and }}', field), 'every {{ needs a matching }}');
    end if;
    if (select count(*) from regexp_matches(source, '\{\{\s*@\w+', 'g')) <> (select count(*) from regexp_matches(source, '\{\{\s*/\w+', 'g')) then
      perform segmenter._fail('SG010', format('%s: a {{@helper}} block is not closed', field), 'close each {{@each(...) => x}} with {{/each}}');
    end if;
  end if;
end $$;
comment on function segmenter._check_template is 'Private. Structural template check raising SG010.';

-- Every member field a template names must be a column of every segment table in its scope
-- (matched case-insensitively, as the renderer does), so a typo is refused now, not dead-lettered
-- member by member later.
create function segmenter._check_template_fields(field text, source text, syntax text, segment_ids uuid[]) returns void
language plpgsql stable as $$
declare
  f text; t regclass;
begin
  if source is null then return; end if;
  for f in
    select distinct m[1] from regexp_matches(source,
      case when syntax = 'altcraft' then '\{\$\w+\.(\w+)\}|\{batch_in\s+"([^"]+)"' else '\mlead\.(\w+)' end, 'g') as r(m0)
      cross join lateral (select array[coalesce(m0[1], m0[2])]) as x(m)
    where coalesce(m0[1], m0[2]) is not null
  loop
    for t in select g.table_name from segmenter.segments g where g.segment_id = any(segment_ids) and g.actual_end = 'infinity' loop
      if not exists (select 1 from pg_attribute a where a.attrelid = t and a.attnum > 0 and not a.attisdropped and lower(a.attname) = lower(f)) then
        perform segmenter._fail('SG010', format('%s: the template uses member field %L, which table %s does not have', field, f, t),
          format('use one of the columns of %s: %s', t, (select string_agg(attname, ', ' order by attnum) from pg_attribute where attrelid = t and attnum > 0 and not attisdropped)));
      end if;
    end loop;
  end loop;
end $$;
comment on function segmenter._check_template_fields is 'Private. Refuse a template naming a member field its segment tables lack (SG010).';

create function segmenter.create_subscription(
  name text,
  consumer text,
  segments text[],
  add_sql text,
  remove_sql text,
  clear_sql text default null,
  segment_upsert_sql text default null,
  segment_delete_sql text default null,
  batch_size int default 1,
  batch_timeout interval default '0 s',
  syntax text default 'squirrelly',
  update_sql text default null,
  audience text default null,
  description text default null
) returns bigint
language plpgsql as $$
declare
  c segmenter.consumers;
  seg_ids uuid[] := '{}';
  seg text;
  sub_id bigint;
begin
  if name is null or btrim(name) = '' then
    perform segmenter._fail('SG012', 'name: a subscription needs a non-empty name', 'pass name => ''crm_sync''');
  end if;
  if exists (select 1 from segmenter.subscriptions s where s.name = create_subscription.name) then
    perform segmenter._fail('SG013', format('name: subscription %L already exists', name), 'pick another name, or drop it first with segmenter.drop_subscription');
  end if;
  select * into c from segmenter.consumers where consumers.name = consumer;
  if not found then
    perform segmenter._fail('SG002', format('consumer: unknown consumer %L', consumer),
      'create it first with segmenter.create_consumer(name, kind, dialect, dsn_env)');
  end if;
  if segments is null or cardinality(segments) = 0 then
    perform segmenter._fail('SG012', 'segments: a subscription needs at least one segment', 'pass segments => array[''my_segment'']');
  end if;
  foreach seg in array segments loop
    seg_ids := seg_ids || (segmenter._segment(seg)).segment_id;
  end loop;
  if add_sql is null or btrim(add_sql) = '' then
    perform segmenter._fail('SG004', 'add_sql: the add template is mandatory', 'pass add_sql => ''insert into ... values ...''');
  end if;
  if remove_sql is null or btrim(remove_sql) = '' then
    perform segmenter._fail('SG004', 'remove_sql: the remove template is mandatory', 'pass remove_sql => ''delete from ... where ...''');
  end if;
  if batch_size is null or batch_size < 1 then
    perform segmenter._fail('SG005', format('batch_size: must be at least 1 (got %s)', coalesce(batch_size::text, 'null')), 'pass batch_size => 1 for one member per statement, or more to batch');
  end if;
  if batch_timeout is null or batch_timeout < interval '0' then
    perform segmenter._fail('SG006', format('batch_timeout: must not be negative (got %s)', coalesce(batch_timeout::text, 'null')), 'pass batch_timeout => ''0 s'' to flush at once, or e.g. ''2 s''');
  end if;
  if syntax is null or syntax not in ('squirrelly', 'altcraft') then
    perform segmenter._fail('SG008', format('syntax: %L is not a template syntax', syntax), 'use syntax => ''squirrelly'' ({{ it.segment_id }}) or ''altcraft'' ({segment_id}, {for $index, $lead = $batch} ... {end})');
  end if;
  perform segmenter._check_template('add_sql', add_sql, syntax);
  perform segmenter._check_template('remove_sql', remove_sql, syntax);
  perform segmenter._check_template('clear_sql', clear_sql, syntax);
  perform segmenter._check_template('update_sql', update_sql, syntax);
  perform segmenter._check_template('segment_upsert_sql', segment_upsert_sql, syntax);
  perform segmenter._check_template('segment_delete_sql', segment_delete_sql, syntax);
  perform segmenter._check_template_fields('add_sql', add_sql, syntax, seg_ids);
  perform segmenter._check_template_fields('remove_sql', remove_sql, syntax, seg_ids);
  perform segmenter._check_template_fields('update_sql', update_sql, syntax, seg_ids);

  insert into segmenter.subscriptions (name, description, consumer_id, segment_ids, add_sql, remove_sql, clear_sql,
    update_sql, segment_upsert_sql, segment_delete_sql, syntax, batch_size, batch_timeout, audience)
  values (name, description, c.consumer_id, seg_ids, add_sql, remove_sql, clear_sql,
    update_sql, segment_upsert_sql, segment_delete_sql, syntax, batch_size, batch_timeout, audience)
  returning subscription_id into sub_id;
  -- A new subscription starts like a resync (without the clear): every segment and all current
  -- members, then the changes after that snapshot.
  perform segmenter._start_sync(sub_id, false);
  return sub_id;
end $$;
comment on function segmenter.create_subscription is 'Create a subscription: deliver the given segments to a consumer with these templates. Templates are checked now; delivery starts with segment_upsert and every current member, then follows the changes. Returns subscription_id.';

create function segmenter.drop_subscription(name text) returns void
language plpgsql as $$
declare s segmenter.subscriptions := segmenter._subscription(name);
begin
  delete from segmenter.subscriptions where subscription_id = s.subscription_id;
  delete from segmenter.changes where subscription_id = s.subscription_id;
end $$;
comment on function segmenter.drop_subscription is 'Delete a subscription and its pending resync rows. The target is not touched.';

-- Emit, for one subscription, a full snapshot: segment_upsert per segment, clear (when with_clear),
-- and add for every current member, with positions right after every change the snapshot saw.
-- Sequencing and the member read happen in ONE statement, so they share one snapshot: a change
-- is either in the snapshot (and superseded: the cursor skips it) or after it (and delivered).
create function segmenter._start_sync(sub_id bigint, with_clear boolean) returns bigint
language plpgsql as $$
declare
  s segmenter.subscriptions;
  members text;
  first_pos bigint;
begin
  select * into s from segmenter.subscriptions where subscription_id = sub_id for update;
  lock table segmenter.sequencer_lock in exclusive mode;
  delete from segmenter.changes where subscription_id = sub_id and (pos is null or pos > s.cursor_pos);
  select string_agg(format(
           $q$select %L::uuid as segment_id, id::text as member from %s where segment_id = %L and actual_end = 'infinity' and id is not null$q$,
           g.segment_id, g.table_name, g.segment_id), ' union all ')
    into members
  from segmenter.segments g where g.segment_id = any(s.segment_ids) and g.actual_end = 'infinity';
  execute format($q$
    with base as (select coalesce(max(pos), 0) as p from segmenter.changes where pos is not null),
         todo as (select seq, row_number() over (order by seq) as rn from segmenter.changes where pos is null),
         sequenced as (update segmenter.changes c set pos = base.p + todo.rn from base, todo where c.seq = todo.seq returning 1),
         snapshot_rows as (
           select segment_id, 'segment_upsert'::segmenter.event as event, null::text[] as ids, 0 as k, 0::bigint as chunk
             from unnest($1::uuid[]) segment_id
           union all
           select segment_id, 'clear', null, 1, 0 from unnest($1::uuid[]) segment_id where $2
           union all
           select segment_id, 'add', array_agg(member), 2, chunk
             from (select m.*, (row_number() over () - 1) / 10000 as chunk from (%s) m) mm
             group by segment_id, chunk),
         numbered as (select r.*, row_number() over (order by k, segment_id, chunk) as rn from snapshot_rows r)
    insert into segmenter.changes (pos, segment_id, event, ids, members, subscription_id)
    select (select p from base) + (select count(*) from sequenced) + rn, segment_id, event, ids, coalesce(cardinality(ids), 1), $3
    from numbered order by rn
    returning pos$q$, coalesce(members, 'select null::uuid, null::text where false'))
  using s.segment_ids, with_clear, sub_id;
  select min(pos) into first_pos from segmenter.changes where subscription_id = sub_id and pos is not null and pos > s.cursor_pos;
  update segmenter.subscriptions set resync_pos = first_pos where subscription_id = sub_id;
  perform segmenter._wake(s.segment_ids);
  return first_pos;
end $$;
comment on function segmenter._start_sync is 'Private. Emit a subscription''s full snapshot into the change log (see resync).';

create function segmenter.resync(subscription text) returns bigint
language plpgsql as $$
declare s segmenter.subscriptions := segmenter._subscription(subscription);
begin
  return segmenter._start_sync(s.subscription_id, true);
end $$;
comment on function segmenter.resync is 'Re-export a subscription from one consistent snapshot: segment_upsert, clear (if it has a clear template), then add for every current member; changes before the snapshot are skipped, changes after it follow. Returns the snapshot''s first position.';

create function segmenter.pause(subscription text) returns void
language plpgsql as $$
declare s segmenter.subscriptions := segmenter._subscription(subscription);
begin
  update segmenter.subscriptions set state = 'paused' where subscription_id = s.subscription_id;
end $$;
comment on function segmenter.pause is 'Pause a subscription: changes accumulate and are delivered after resume.';

create function segmenter.resume(subscription text) returns void
language plpgsql as $$
declare s segmenter.subscriptions := segmenter._subscription(subscription);
begin
  update segmenter.subscriptions set state = 'active' where subscription_id = s.subscription_id;
  perform segmenter._wake(s.segment_ids);
end $$;
comment on function segmenter.resume is 'Resume a paused subscription; it catches up on everything that accumulated.';

-- ---------------------------------------------------------------------------------------------
-- Delivery bookkeeping (called by the sidecar)
-- ---------------------------------------------------------------------------------------------

-- After a target committed a batch: move the home copy of the cursor forward (never back) and
-- record the batch in the log, in one round trip.
create function segmenter.record_batch(
  subscription_id bigint, cursor_pos bigint, cursor_ord int, event segmenter.event, segment_id uuid,
  statements int, rows bigint, duration_ms double precision, ok boolean, error text default null
) returns void
language plpgsql as $$ -- plpgsql, not sql: its plans are cached across calls (4 ms -> 1 ms a batch)
begin
  update segmenter.subscriptions s set cursor_pos = record_batch.cursor_pos, cursor_ord = record_batch.cursor_ord
  where s.subscription_id = record_batch.subscription_id
    and (s.cursor_pos, s.cursor_ord) < (record_batch.cursor_pos, record_batch.cursor_ord);
  insert into segmenter.log (kind, subscription_id, segment_id, event, statements, rows, duration_ms, ok, error)
  values ('batch', record_batch.subscription_id, record_batch.segment_id, record_batch.event,
          record_batch.statements, record_batch.rows, record_batch.duration_ms, record_batch.ok, record_batch.error);
end $$;
comment on function segmenter.record_batch is 'Sidecar: record a delivered (ok) or failed batch in segmenter.log and advance the subscription''s cursor.';

-- Re-emit dead-lettered events as changes for their subscription only. Member events are re-emitted
-- as the member's state now (add if still a member, remove otherwise), so a replay can never undo
-- a later change.
create function segmenter.replay_dead_letters(subscription text) returns bigint
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
comment on function segmenter.replay_dead_letters is 'Deliver a subscription''s dead letters again (after the target was fixed). Returns how many were re-queued.';

-- ---------------------------------------------------------------------------------------------
-- Views
-- ---------------------------------------------------------------------------------------------

create view segmenter.sync_stats as
select s.name as subscription, l.subscription_id, date_trunc('minute', l.at) as bucket,
       -- statements executed; rounds that only moved a checkpoint (all compacted away) count none
       coalesce(sum(l.statements) filter (where l.ok), 0) as successful_queries,
       coalesce(sum(l.rows) filter (where l.ok), 0) as rows,
       count(*) filter (where not l.ok) as errors,
       round(avg(l.duration_ms) filter (where l.ok and l.statements > 0)::numeric, 2) as avg_ms
from segmenter.log l
join segmenter.subscriptions s using (subscription_id)
where l.kind = 'batch'
group by s.name, l.subscription_id, date_trunc('minute', l.at);
comment on view segmenter.sync_stats is 'Per subscription and minute: successful queries (statements executed), rows delivered, errors, average batch duration in ms.';

create view segmenter.status as
select s.name as subscription, s.subscription_id, s.state, c.name as consumer,
       coalesce(p.pending, 0) as pending_changes,
       now() - p.oldest as oldest_pending_age,
       (select max(at) from segmenter.log l where l.subscription_id = s.subscription_id and l.kind = 'batch' and l.ok) as last_success,
       e.at as last_error_at, e.error as last_error,
       (select count(*) from segmenter.dead_letters d where d.subscription_id = s.subscription_id and d.replayed_at is null) as dead_letters,
       s.cursor_pos, s.cursor_ord
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
  where l.subscription_id = s.subscription_id and l.kind = 'batch' and not l.ok order by l.at desc limit 1
) e on true;
comment on view segmenter.status is 'Per subscription: state, pending member events, age of the oldest pending change, last success, last error, open dead letters, cursor.';

create function segmenter._members(table_name regclass, segment_id uuid)
returns table (id text, attributes jsonb, actual_begin timestamptz, processed timestamptz)
language plpgsql stable as $$
begin
  return query execute format($q$
    select t.id::text, segmenter._attributes(to_jsonb(t)), t.actual_begin::timestamptz, t.processed::timestamptz
    from %s t where t.segment_id = $1 and t.actual_end = 'infinity'$q$, table_name)
  using segment_id;
end $$;
comment on function segmenter._members is 'Private. Current members of one segment with their attributes as jsonb.';

create view segmenter.showcase as
select s.segment_id, s.name as segment, s.kind, m.id as member_id, m.attributes, m.actual_begin, m.processed
from segmenter.segments s
cross join lateral segmenter._members(s.table_name, s.segment_id) m
where s.actual_end = 'infinity';
comment on view segmenter.showcase is 'Every current member of every current segment, of both kinds (the seed''s segmenter showcase): segment, member_id, attributes as jsonb.';

insert into segmenter.migrations (id, name) values (1, '0001_schema');
