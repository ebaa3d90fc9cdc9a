-- 0015: the NOTIFY names the subscriptions it wakes.
--   A sidecar woken by 'changes' asked the home which subscriptions have something pending (the
--   sweep) before it started any: one round trip of every commit's latency, 1 to 1.5 ms on the
--   build machine. The payload now lists the active subscriptions of the touched segments (up to
--   100 of them; NOTIFY payloads are limited to 8,000 bytes), which the sidecar starts at once;
--   the sweep still follows, for what a payload cannot name.

create or replace function segmenter._wake(segment_ids uuid[]) returns void
language plpgsql as $$
declare
  woken bigint[];
begin
  if segment_ids is null or cardinality(segment_ids) = 0 then
    return;
  end if;
  select array_agg(s.subscription_id order by s.subscription_id) into woken
  from segmenter.subscriptions s where s.state = 'active' and s.segment_ids && _wake.segment_ids;
  -- As in 0009: only one open transaction per subscription enqueues (a try-lock, never a wait).
  insert into pgboss.job (name, singleton_key, data, policy, retry_limit, expire_in, keep_until)
  select 'segmenter_deliver', w.id::text, jsonb_build_object('subscription_id', w.id),
         'short', 0, interval '15 minutes', now() + interval '1 hour'
  from unnest(woken) w(id)
  where pg_try_advisory_xact_lock(segmenter._lock_class('enqueue'), (w.id & 2147483647)::int)
  on conflict do nothing;
  -- Also when the job was skipped: wake the sidecar anyway.
  perform pg_notify('segmenter', case when cardinality(woken) between 1 and 100
                                      then 'changes ' || array_to_string(woken, ' ') else 'changes' end);
end $$;
comment on function segmenter._wake is 'Private. Enqueue one delivery job per affected active subscription and NOTIFY once, naming them (up to 100).';

insert into segmenter.migrations (id, name) values (15, '0015_wake_payload') on conflict do nothing;
