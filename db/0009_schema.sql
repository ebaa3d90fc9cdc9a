-- 0009: installs under any schema name. `segmenter migrate --schema NAME` (or SEGMENTER_SCHEMA)
-- applies these files with the schema renamed (src/schema.ts inSchema), so every name an install
-- shares with the rest of the database must come from its schema name: the pg-boss queues and the
-- NOTIFY channel are renamed with it, and the advisory lock classes come from it here. Before this
-- file the classes were constants, and two installs would have taken each other's subscription
-- locks (subscription ids start at 1 in every install).

-- The class of a (class, subscription id) advisory lock: hashtext of the schema-qualified purpose,
-- so the classes of two installs differ. Purposes: 'deliver', held by the sidecar delivering a
-- subscription for the whole round (src/deliver); 'enqueue', taken for a transaction by _wake.
create function segmenter._lock_class(purpose text) returns int
language sql immutable parallel safe as $$
  select hashtext('segmenter.' || purpose)
$$;
comment on function segmenter._lock_class is 'Private. The advisory lock class of this install for a purpose (''deliver'' or ''enqueue''); keys are subscription ids.';

create or replace function segmenter._wake(segment_ids uuid[]) returns void
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
  where pg_try_advisory_xact_lock(segmenter._lock_class('enqueue'), (s.subscription_id & 2147483647)::int)
  on conflict do nothing;
  perform pg_notify('segmenter', 'changes'); -- also when the job was skipped: wake the sidecar anyway
end $$;
comment on function segmenter._wake is 'Private. Enqueue one delivery job per affected active subscription and NOTIFY once.';

insert into segmenter.migrations (id, name) values (9, '0009_schema') on conflict do nothing;
