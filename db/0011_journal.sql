-- 0011: what is sent is recorded before it is sent.
--   * A target without transactions (ClickHouse; HTTP receivers) cannot commit a batch together
--     with its checkpoint: a sidecar killed after sending and before the checkpoint leaves the
--     batch unconfirmed, and it is sent again. segmenter.in_flight keeps, before each send, exactly
--     what goes (the rendered statements or request bodies, and the extent they cover), so the
--     next sidecar sends the same bytes again instead of rendering anew (a window read again may
--     be longer, and a member's attributes may have changed meanwhile).
--   * A row goes when the home cursor passes its end (a trigger on subscriptions: every function
--     that moves the cursor cleans up, and nothing else needs to know).

create table segmenter.in_flight (
  subscription_id bigint not null references segmenter.subscriptions on delete cascade,
  -- The checkpoint the target stood at when this was sent, and the one it moves to.
  from_pos bigint not null,
  from_ord int not null,
  to_pos bigint not null,
  to_ord int not null,
  -- The stable id of this send (HTTP: webhook-id and Idempotency-Key), the same on every replay.
  request_id text not null,
  -- Exactly what was sent, in order: SQL statements, or HTTP requests as rendered, one after the
  -- other; statement_lengths says where each ends (in UTF-16 code units, as the sidecar counts).
  -- One text, not an array: a text[] of a megabyte took 150-180 ms to write (escaped element by
  -- element on the way in), one text 11 ms.
  statements text not null,
  statement_lengths int[] not null,
  -- For the log rows of a replay: one element per batch in this send.
  segment_ids uuid[] not null,
  events segmenter.event[] not null,
  rows bigint[] not null,
  statement_counts int[] not null,
  sent_at timestamptz not null default clock_timestamp(),
  primary key (subscription_id, from_pos, from_ord),
  check ((to_pos, to_ord) > (from_pos, from_ord)),
  check (cardinality(segment_ids) = cardinality(events) and cardinality(events) = cardinality(rows)
         and cardinality(rows) = cardinality(statement_counts))
);
-- Not compressed: a row lives for a round trip or two, and compressing a megabyte of JSON or SQL
-- cost more time than the disk it saved.
alter table segmenter.in_flight alter column statements set storage external;
comment on table segmenter.in_flight is 'Batches sent to a target without transactions (ClickHouse, HTTP) and not yet confirmed: exactly what was sent, replayed byte for byte by the next delivery round if the target''s checkpoint did not reach them. Empty while every subscription is caught up.';

-- Recorded before the send. A send from the same checkpoint replaces what was recorded there
-- (a batch split after a rejection), and anything recorded after it was never confirmed and is
-- superseded: the chain of unconfirmed sends stays one line from the target's checkpoint.
create function segmenter._record_sending(
  subscription_id bigint, from_pos bigint, from_ord int, to_pos bigint, to_ord int, request_id text,
  statements text, statement_lengths int[], segment_ids uuid[], events segmenter.event[], rows bigint[], statement_counts int[]
) returns void
language sql as $$
  delete from segmenter.in_flight f
  where f.subscription_id = _record_sending.subscription_id
    and (f.from_pos, f.from_ord) >= (_record_sending.from_pos, _record_sending.from_ord);
  insert into segmenter.in_flight (subscription_id, from_pos, from_ord, to_pos, to_ord, request_id, statements, statement_lengths,
                                  segment_ids, events, rows, statement_counts)
  values (_record_sending.subscription_id, _record_sending.from_pos, _record_sending.from_ord, _record_sending.to_pos,
          _record_sending.to_ord, _record_sending.request_id, _record_sending.statements, _record_sending.statement_lengths,
          _record_sending.segment_ids,
          _record_sending.events, _record_sending.rows, _record_sending.statement_counts);
$$;
comment on function segmenter._record_sending is 'Private. Sidecar: record what is about to be sent to a target without transactions (segmenter.in_flight), replacing what was recorded from the same checkpoint on.';

-- Dropped when a replay cannot go as recorded (the target rejects it now): delivery renders anew.
create function segmenter._forget_sending(subscription_id bigint, from_pos bigint, from_ord int) returns void
language sql as $$
  delete from segmenter.in_flight f
  where f.subscription_id = _forget_sending.subscription_id
    and (f.from_pos, f.from_ord) >= (_forget_sending.from_pos, _forget_sending.from_ord);
$$;
comment on function segmenter._forget_sending is 'Private. Sidecar: drop the recorded sends of a subscription from a checkpoint on (a replay the target rejected; delivery renders those events anew).';

create function segmenter._in_flight_confirmed() returns trigger
language plpgsql as $$
begin
  delete from segmenter.in_flight f
  where f.subscription_id = new.subscription_id and (f.to_pos, f.to_ord) <= (new.cursor_pos, new.cursor_ord);
  return null;
end $$;
comment on function segmenter._in_flight_confirmed is 'Private. Trigger: the home cursor passed these sends, so the target confirmed them.';

create trigger in_flight_confirmed after update of cursor_pos, cursor_ord on segmenter.subscriptions
for each row when ((old.cursor_pos, old.cursor_ord) is distinct from (new.cursor_pos, new.cursor_ord))
execute function segmenter._in_flight_confirmed();

insert into segmenter.migrations (id, name) values (11, '0011_journal') on conflict do nothing;
