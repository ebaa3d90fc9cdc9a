-- 0014: a receiver's Retry-After outlives the sidecar that heard it.
--   An HTTP receiver that answers 429 or 503 with Retry-After asks this client to wait. The
--   sidecar that got the answer waits it in memory; one killed meanwhile used to be replaced by a
--   sidecar that sent the same request again at once (test/http.test.ts caught one 269 ms early).
--   The wait is now kept here, per consumer (a receiver's limits are usually per client, and every
--   subscription of the consumer talks to it), and every round of the consumer's subscriptions
--   starts no sooner (src/read.ts SUBSCRIPTION_SQL reads it with the subscription).

create table segmenter.retry_after (
  consumer_id bigint primary key references segmenter.consumers on delete cascade,
  not_before timestamptz not null,
  http_status int not null,
  at timestamptz not null default clock_timestamp()
);
comment on table segmenter.retry_after is 'Per HTTP consumer: the receiver''s last Retry-After (429 or 503) and when it ends; no request of the consumer goes before not_before, from any sidecar. Written by segmenter._retry_after.';

create function segmenter._retry_after(consumer_id bigint, wait_ms float8, http_status int) returns void
language sql volatile as $$
  insert into segmenter.retry_after as r (consumer_id, not_before, http_status)
  values (_retry_after.consumer_id, clock_timestamp() + wait_ms * interval '1 millisecond', _retry_after.http_status)
  on conflict (consumer_id) do update
    set not_before = greatest(r.not_before, excluded.not_before), http_status = excluded.http_status, at = clock_timestamp()
$$;
comment on function segmenter._retry_after is 'Private. Sidecar: the receiver of a consumer answered 429 or 503 with Retry-After; keep its requests back for wait_ms (never shortening a longer wait already kept).';

insert into segmenter.migrations (id, name) values (14, '0014_retry_after') on conflict do nothing;
