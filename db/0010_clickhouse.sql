-- 0010: ClickHouse as a target (consumer kind 'clickhouse', src/sinks/clickhouse.ts).
--   * create_consumer accepts kind 'clickhouse', whose dialect must be 'clickhouse'.
--   * Templates may use the batch's version: {version} in the seed's syntax (it.version in
--     Squirrelly, which needs no change here). ClickHouse has no transactions: a batch whose
--     checkpoint was not confirmed may run again, with the same version, and templates that write
--     versioned rows of a ReplacingMergeTree(version) table converge (templates/clickhouse/).
--     _altcraft_fields is 0007's with {version} among the known tags; test/template_check.test.ts
--     holds it to the sidecar's compiler.

-- 0006's, with kind 'clickhouse'.
create or replace function segmenter.create_consumer(name text, kind text, dialect text, dsn_env text, options jsonb default '{}')
returns bigint
language plpgsql as $$
declare id bigint;
begin
  if name is null or btrim(name) = '' then
    perform segmenter._fail('SG012', 'name: a consumer needs a non-empty name', 'pass name => ''warehouse''');
  end if;
  if kind is null or kind not in ('mysql', 'postgres', 'clickhouse') then
    perform segmenter._fail('SG012', format('kind: %L is not a consumer kind', kind),
      'use kind => ''mysql'' (MySQL/MariaDB), ''postgres'' or ''clickhouse''');
  end if;
  if dialect is null or dialect not in ('mysql', 'postgres', 'mssql', 'oracle', 'bigquery', 'clickhouse') then
    perform segmenter._fail('SG007', format('dialect: %L is not a known SQL dialect', dialect),
      'use one of mysql, postgres, mssql, oracle, bigquery, clickhouse');
  end if;
  if kind = 'clickhouse' and dialect <> 'clickhouse' then
    perform segmenter._fail('SG012', format('dialect: a clickhouse consumer''s templates are ClickHouse SQL, not %s', dialect),
      'pass dialect => ''clickhouse''');
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
  perform segmenter._release_subscription(s.subscription_id) from segmenter.subscriptions s
  where s.consumer_id = id and s.error_kind = 'configuration';
  perform segmenter._wake(array(select distinct unnest(s.segment_ids) from segmenter.subscriptions s where s.consumer_id = id));
  return id;
end $$;

-- 0007's port of the altcraft compiler, with {version}.
create or replace function segmenter._altcraft_fields(field text, source text, dialect text) returns text[]
language plpgsql immutable as $$
declare
  ws constant text := segmenter._js_space();
  known constant text := '{segment_id}, {segment_name}, {audience}, {version}, {for $index, $lead = $batch}, {$lead.Field}, {$index}, {autocomma}, {end}, {batch_in "Field"}';
  ch text[] := coalesce(string_to_array(source, null), '{}');
  n int := cardinality(ch);
  kinds text[] := '{}'; texts text[] := '{}'; ats int[] := '{}'; names text[] := '{}';
  fields text[] := '{}';
  in_slots int[] := '{}'; in_ats int[] := '{}'; in_raws text[] := '{}';
  contexts text[];
  in_loop boolean := false; loop_index text; loop_lead text; loop_at int;
  last int := 0; p int := 0; q int; raw text; b text; m text[]; f text; k int;
  m_for text[]; m_in text[]; m_field text[]; m_index text[];
begin
  while p < n loop
    -- A "{" followed by "$" or a letter and closed by "}" on the same line, with no "{" between.
    if ch[p + 1] = '{' and ch[p + 2] ~ '^[$A-Za-z]$' then
      q := p + 2;
      while q < n and ch[q + 1] not in ('{', '}', E'\n') loop q := q + 1; end loop;
      if q < n and ch[q + 1] = '}' then
        raw := array_to_string(ch[p + 1:q + 1], '');
        b := segmenter._js_trim(array_to_string(ch[p + 2:q], ''));
        kinds := kinds || 'text'::text; texts := texts || array_to_string(ch[last + 1:p], ''); ats := ats || last; names := names || ''::text;
        m_for := regexp_match(b, '^for' || ws || '+(?:\$([A-Za-z0-9_]+)' || ws || '*,' || ws || '*)?\$([A-Za-z0-9_]+)' || ws || '*=' || ws || '*\$batch$');
        m_in := regexp_match(b, '^batch_in' || ws || '+(?:"([^"]+)"|''([^'']+)''|([A-Za-z0-9_$]+))$');
        m_field := regexp_match(b, '^\$([A-Za-z0-9_]+)\.([A-Za-z0-9_$]+)$');
        m_index := regexp_match(b, '^\$([A-Za-z0-9_]+)$');
        if b in ('segment_id', 'segment_name', 'audience', 'version') then
          kinds := kinds || 'slot'::text;
        elsif b = 'end' then
          if not in_loop then
            perform segmenter._template_fail(field, source, p, '{end} without a matching {for}', 'remove it, or open the loop with {for $index, $lead = $batch}');
          end if;
          in_loop := false;
          kinds := kinds || 'ctl'::text;
        elsif b = 'autocomma' then
          if not in_loop then
            perform segmenter._template_fail(field, source, p, '{autocomma} outside a {for} loop',
              'use it inside {for $index, $lead = $batch} … {end}, where it separates the rows');
          end if;
          kinds := kinds || 'fixed'::text;
        elsif m_for is not null then
          m := m_for;
          if in_loop then
            perform segmenter._template_fail(field, source, p, 'nested {for} loops are not supported', 'close the first loop with {end} before starting another');
          end if;
          if m[1] = m[2] then
            perform segmenter._template_fail(field, source, p, format('%s uses $%s for both the index and the member', raw, m[2]),
              'give them different names, e.g. {for $index, $lead = $batch}');
          end if;
          in_loop := true; loop_index := m[1]; loop_lead := m[2]; loop_at := p;
          kinds := kinds || 'ctl'::text;
        elsif m_in is not null then
          m := m_in;
          f := coalesce(m[1], m[2], m[3]);
          fields := fields || f;
          kinds := kinds || 'slot'::text;
          in_slots := in_slots || (select count(*)::int from unnest(kinds) x where x = 'slot');
          in_ats := in_ats || p; in_raws := in_raws || raw;
        elsif m_field is not null then
          m := m_field;
          if not in_loop then
            perform segmenter._template_fail(field, source, p, format('%s outside a {for} loop', raw),
              format('use it between {for $index, $lead = $batch} and {end}, or {batch_in "%s"} for a list', m[2]));
          end if;
          if m[1] <> loop_lead then
            perform segmenter._template_fail(field, source, p, format('unknown variable $%s in %s', m[1], raw),
              format('the loop names its member $%s: write {$%s.%s}', loop_lead, loop_lead, m[2]));
          end if;
          fields := fields || m[2];
          kinds := kinds || 'slot'::text;
        elsif m_index is not null then
          m := m_index;
          if not in_loop then
            perform segmenter._template_fail(field, source, p, format('%s outside a {for} loop', raw), 'use it between {for $index, $lead = $batch} and {end}');
          end if;
          if m[1] is distinct from loop_index and m[1] <> loop_lead then
            perform segmenter._template_fail(field, source, p, format('unknown variable %s', raw), 'Known tags: ' || known);
          end if;
          if m[1] = loop_lead then
            perform segmenter._template_fail(field, source, p, format('%s is a whole row', raw), format('write {$%s.Field} to use one of its columns', m[1]));
          end if;
          kinds := kinds || 'slot'::text;
        else
          perform segmenter._template_fail(field, source, p, format('unknown tag %s', raw), format('Known tags: %s. A "{" followed by a space is plain text.', known));
        end if;
        texts := texts || ''::text; ats := ats || p; names := names || raw;
        last := q + 1; p := q + 1;
        continue;
      end if;
    end if;
    p := p + 1;
  end loop;
  kinds := kinds || 'text'::text; texts := texts || array_to_string(ch[last + 1:n], ''); ats := ats || last; names := names || ''::text;
  if in_loop then
    perform segmenter._template_fail(field, source, loop_at, '{for} is never closed', 'add {end} after the loop body');
  end if;
  if dialect is not null then
    contexts := segmenter._scan_sql(field, source, dialect, kinds, texts, ats, names);
    for k in 1 .. cardinality(in_slots) loop
      if contexts[in_slots[k]] <> 'bare' then
        perform segmenter._template_fail(field, source, in_ats[k], format('%s produces a list of literals and cannot stand inside quotes', in_raws[k]),
          format('write IN (%s) without quotes', in_raws[k]));
      end if;
    end loop;
  end if;
  return fields;
end $$;
comment on function segmenter._altcraft_fields is 'Private. Port of the sidecar''s altcraft compiler checks: SG010 for a template it refuses, else the member fields it names.';

insert into segmenter.migrations (id, name) values (10, '0010_clickhouse') on conflict do nothing;
