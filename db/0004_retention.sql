-- 0004: retention. The change log and the run log would otherwise grow forever.

-- A change can go once every subscription that would deliver it has passed it (by the home
-- cursor, which never runs ahead of the target's checkpoint) and it is older than `changes_keep`
-- (kept that long for inspection with segmenter.events). Log rows and replayed dead letters go
-- after `log_keep`. A target that is reset to empty needs a resync afterwards, as the changes it
-- would replay from may be gone.
create function segmenter.prune(changes_keep interval default '1 day', log_keep interval default '30 days')
returns table (changes bigint, log bigint, dead_letters bigint)
language plpgsql as $$
declare c bigint; l bigint; d bigint;
begin
  delete from segmenter.changes ch
  where ch.pos is not null and ch.at < now() - changes_keep
    and not exists (
      select 1 from segmenter.subscriptions s
      where ch.segment_id = any(s.segment_ids)
        and (ch.subscription_id is null or ch.subscription_id = s.subscription_id)
        and s.cursor_pos < ch.pos);
  get diagnostics c = row_count;
  delete from segmenter.log where at < now() - log_keep;
  get diagnostics l = row_count;
  delete from segmenter.dead_letters where replayed_at < now() - log_keep;
  get diagnostics d = row_count;
  return query select c, l, d;
end $$;
comment on function segmenter.prune is 'Delete changes every subscription has delivered (older than changes_keep), and log rows and replayed dead letters older than log_keep. The sidecar runs it periodically; returns what it deleted.';

insert into segmenter.migrations (id, name) values (4, '0004_retention');
