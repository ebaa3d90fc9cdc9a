-- 0013: prune() keeps a change a subscription has delivered only in part.
--   A subscription's cursor is (cursor_pos, cursor_ord): every member event up to member
--   cursor_ord of the change at cursor_pos has been delivered (segmenter._is_pending). A window
--   ends after a number of member events, not at a change's end, so a subscription paused, held
--   or stopped mid-drain can have its cursor inside a change of 10,000 members. 0004's prune()
--   kept a change only for subscriptions whose cursor_pos was before it, so it deleted the change
--   the cursor stood in, and its undelivered members were never delivered: the sidecar resumes
--   after the cursor and finds the next change (bench/changelog.ts: a subscription paused at
--   cursor 610/4960 lost the other 5,040 members of change 610). Now a change is kept while any
--   subscription's cursor is before its last member.

create or replace function segmenter.prune(changes_keep interval default '1 day', log_keep interval default '30 days')
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
        and (s.cursor_pos, s.cursor_ord) < (ch.pos, ch.members));
  get diagnostics c = row_count;
  delete from segmenter.log where at < now() - log_keep;
  get diagnostics l = row_count;
  delete from segmenter.dead_letters where replayed_at < now() - log_keep;
  get diagnostics d = row_count;
  return query select c, l, d;
end $$;
comment on function segmenter.prune is 'Delete changes every subscription has delivered in full (older than changes_keep), and log rows and replayed dead letters older than log_keep. The sidecar runs it periodically; returns what it deleted.';

insert into segmenter.migrations (id, name) values (13, '0013_prune') on conflict do nothing;
