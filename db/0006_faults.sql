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

insert into segmenter.migrations (id, name) values (6, '0006_faults');
