-- 0008: one API boundary.
--   * The sidecar writes home state only through functions: besides record_batch, record_batches
--     and hold_subscription, a dead letter (_record_dead_letter), a round that failed before any
--     batch (_record_failure) and the home cursor set to the target's checkpoint
--     (_reconcile_cursor). The tables stay readable; what is written to them is decided in SQL.
--   * "What is pending" for a subscription is defined once (_is_pending): the status view counts
--     it, and the sidecar's sweep asks whether there is any.

-- ---------------------------------------------------------------------------------------------
-- Delivery bookkeeping (called by the sidecar)
-- ---------------------------------------------------------------------------------------------

-- Written before the target's checkpoint passes the event, so a sidecar that dies in between finds
-- the event rejected again: the unique index dead_letters_open makes the second write a no-op.
create function segmenter._record_dead_letter(
  subscription_id bigint, pos bigint, ord int, segment_id uuid, event segmenter.event, member_id text, statement text, error text
) returns void
language sql as $$
  insert into segmenter.dead_letters (subscription_id, pos, ord, segment_id, event, member_id, statement, error)
  values (_record_dead_letter.subscription_id, _record_dead_letter.pos, _record_dead_letter.ord, _record_dead_letter.segment_id,
          _record_dead_letter.event, _record_dead_letter.member_id, _record_dead_letter.statement, _record_dead_letter.error)
  on conflict do nothing;
$$;
comment on function segmenter._record_dead_letter is 'Private. Sidecar: record an event the target rejected, with the statement and the target''s error (once per open dead letter). replay_dead_letters delivers it again.';

-- A log row without a batch: sync_stats counts it as an error, status shows it as the last error.
create function segmenter._record_failure(subscription_id bigint, error text) returns void
language sql as $$
  insert into segmenter.log (kind, subscription_id, ok, error) values ('batch', _record_failure.subscription_id, false, _record_failure.error);
$$;
comment on function segmenter._record_failure is 'Private. Sidecar: log a delivery round that failed before any batch (the target unreachable or its checkpoint unreadable).';

-- Unlike record_batch, which never moves the cursor back, this sets it to where the target's
-- checkpoint says delivery stands: the target is the truth, the home cursor its copy.
create function segmenter._reconcile_cursor(subscription_id bigint, cursor_pos bigint, cursor_ord int) returns void
language sql as $$
  update segmenter.subscriptions s set cursor_pos = _reconcile_cursor.cursor_pos, cursor_ord = _reconcile_cursor.cursor_ord
  where s.subscription_id = _reconcile_cursor.subscription_id
    and (s.cursor_pos, s.cursor_ord) is distinct from (_reconcile_cursor.cursor_pos, _reconcile_cursor.cursor_ord);
$$;
comment on function segmenter._reconcile_cursor is 'Private. Sidecar: set a subscription''s home cursor to the target''s checkpoint (forward or back) when nothing is pending after it.';

-- ---------------------------------------------------------------------------------------------
-- What is pending
-- ---------------------------------------------------------------------------------------------

-- A change is pending for a subscription when it is in its scope (its segments; a resync's rows
-- only for the subscription that asked), not yet sequenced or after the cursor, and not superseded
-- by a resync snapshot the cursor has not reached. A predicate, not a set-returning function: the
-- planner inlines it into the query that uses it, and the sweep's EXISTS stays a semi-join that
-- probes the changes_pos and changes_unsequenced indexes (an EXISTS over an inlined set-returning
-- function became a subplan that scanned the whole log: 1.1 s instead of 0.2 ms with 100,000
-- changes and 20 subscriptions).
create function segmenter._is_pending(c segmenter.changes, s segmenter.subscriptions) returns boolean
language sql stable as $$
  select c.segment_id = any(s.segment_ids)
     and (c.subscription_id is null or c.subscription_id = s.subscription_id)
     and (c.pos is null or c.pos > s.cursor_pos or (c.pos = s.cursor_pos and c.members > s.cursor_ord))
     and (s.resync_pos is null or c.pos is null or c.pos >= s.resync_pos or s.cursor_pos >= s.resync_pos)
$$;
comment on function segmenter._is_pending is 'Private. Whether a change is still to be delivered to a subscription: in its scope, after its cursor, not superseded by a resync. Counted by segmenter.status, probed by the sidecar''s sweep.';

-- As in 0006 (same columns, same order), with the pending rule from _is_pending.
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
  -- the member events of each pending change that are not delivered yet
  select sum(ch.members - case when ch.pos = s.cursor_pos then s.cursor_ord else 0 end) as pending, min(ch.at) as oldest
  from segmenter.changes ch where segmenter._is_pending(ch, s)
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

-- The scanner moved to its own module.
comment on function segmenter._scan_sql is 'Private. Port of the sidecar''s SQL scanner (src/render/lexer.ts analyze): the context of each placeholder, or SG010.';

insert into segmenter.migrations (id, name) values (8, '0008_boundary') on conflict do nothing;
