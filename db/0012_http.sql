-- 0012: HTTP consumers (kind 'http', dialect 'json'; the sink is src/sinks/http.ts).
--   * create_consumer accepts kind 'http', whose dialect must be 'json', and json only for http.
--     The consumer's dsn_env names the variable holding the URL.
--   * Consumer options are checked per kind (the constraint of 0005 now sees the kind): an http
--     consumer takes method, headers, signing_secret_env, timeout_ms, max_in_flight,
--     rate_per_second and rate_per_minute; secrets are only ever named (environment variables).
--   * Templates of a json consumer are checked when written like SQL ones: 0007's scanner
--     (_scan_sql) dispatches to _scan_json for the json dialect, so both syntaxes refuse a
--     placeholder inside a JSON string or a loop in the request line; for the seed's syntax it also
--     renders a sample batch and requires the body to parse as JSON. Squirrelly output depends on
--     JavaScript, so for those the sample render is the sidecar's (src/render/index.ts): a template
--     whose body does not parse is held in an error state there, as for a JavaScript syntax error.
--     src/render/json.ts is the other half; test/template_check.test.ts holds the two to one corpus.
--   * A token bucket per consumer, in the home database so every sidecar and every subscription of
--     the consumer share it: segmenter.rate_buckets and segmenter._take_token.

-- ---------------------------------------------------------------------------------------------
-- Consumers
-- ---------------------------------------------------------------------------------------------

-- 0010's, with kind 'http' and dialect 'json'.
create or replace function segmenter.create_consumer(name text, kind text, dialect text, dsn_env text, options jsonb default '{}')
returns bigint
language plpgsql as $$
declare id bigint;
begin
  if name is null or btrim(name) = '' then
    perform segmenter._fail('SG012', 'name: a consumer needs a non-empty name', 'pass name => ''warehouse''');
  end if;
  if kind is null or kind not in ('mysql', 'postgres', 'clickhouse', 'http') then
    perform segmenter._fail('SG012', format('kind: %L is not a consumer kind', kind),
      'use kind => ''mysql'' (MySQL/MariaDB), ''postgres'', ''clickhouse'' or ''http'' (webhooks and REST APIs)');
  end if;
  if dialect is null or dialect not in ('mysql', 'postgres', 'mssql', 'oracle', 'bigquery', 'clickhouse', 'json') then
    perform segmenter._fail('SG007', format('dialect: %L is not a known dialect', dialect),
      'use one of mysql, postgres, mssql, oracle, bigquery, clickhouse (SQL), or json for an http consumer');
  end if;
  if kind <> 'http' and dialect = 'json' then
    perform segmenter._fail('SG012', format('dialect: json is the dialect of http consumers; a %s consumer runs SQL', kind),
      format('pass the SQL dialect of the target, e.g. dialect => %L, or kind => ''http'' for an HTTP endpoint', case when kind = 'clickhouse' then 'clickhouse' else kind end));
  end if;
  if kind = 'clickhouse' and dialect <> 'clickhouse' then
    perform segmenter._fail('SG012', format('dialect: a clickhouse consumer''s templates are ClickHouse SQL, not %s', dialect),
      'pass dialect => ''clickhouse''');
  end if;
  if kind = 'http' and dialect <> 'json' then
    perform segmenter._fail('SG012', format('dialect: an http consumer''s templates render JSON request bodies, not %s SQL', dialect),
      'pass dialect => ''json''');
  end if;
  if dsn_env is null or dsn_env !~ '^[A-Za-z_][A-Za-z0-9_]*$' then
    perform segmenter._fail('SG012', format('dsn_env: %L is not an environment variable name', dsn_env),
      case when kind = 'http' then 'name the variable that holds the endpoint URL, e.g. dsn_env => ''CRM_WEBHOOK_URL'''
           else 'name the variable that holds the connection URL, e.g. dsn_env => ''WAREHOUSE_URL''; passwords are never stored in tables' end);
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
comment on function segmenter.create_consumer is 'Create or update a consumer (an external system). dsn_env names the environment variable with its connection URL (http: the endpoint URL). Options, SQL kinds: lanes (1-16, default 1), checkpoint_table; http: method (default POST), headers (name => environment variable), signing_secret_env, timeout_ms (default 30000), max_in_flight (1-64, default 1), rate_per_second, rate_per_minute. Returns consumer_id.';

-- Whether a text that should name an environment variable looks like the secret itself: a known
-- token prefix, or a long run of mixed letters and digits without the "_" of a variable name. A
-- heuristic, because a secret in a table is read by everyone who can read the table.
create function segmenter._looks_like_secret(v text) returns boolean
language sql immutable parallel safe as $$
  select v ~* '^(whsec_|sk_|pk_|rk_|ghp_|gho_|ghs_|github_pat_|xox[abprs]-|AKIA|ASIA|eyJ|bearer |basic |token )'
      or (length(v) >= 24 and v ~ '[a-z]' and v ~ '[0-9]' and v !~ '_')
$$;
comment on function segmenter._looks_like_secret is 'Private. Heuristic: does a text meant to name an environment variable look like a secret value instead?';

-- An option that must name an environment variable: refused (SG012) otherwise, without echoing
-- more than the first characters of what may be a secret.
create function segmenter._check_env_option(what text, v jsonb, example text) returns void
language plpgsql immutable as $$
declare s text;
begin
  if v is null or jsonb_typeof(v) <> 'string' then
    perform segmenter._fail('SG012', format('options.%s: must be the name of an environment variable (a string), not %s', what, coalesce(jsonb_typeof(v), 'null')),
      format('pass %s', example));
  end if;
  s := v #>> '{}';
  if segmenter._looks_like_secret(s) or s !~ '^[A-Za-z_][A-Za-z0-9_]*$' then
    perform segmenter._fail('SG012',
      format('options.%s: %s is not the name of an environment variable%s', what, quote_literal(left(s, 4) || '…'),
        case when segmenter._looks_like_secret(s) or s ~ '\s' then '; it looks like a secret value' else '' end),
      format('put the value in an environment variable of the sidecar and name it here (letters, digits, _), e.g. %s; secrets never go into tables', example));
  end if;
end $$;
comment on function segmenter._check_env_option is 'Private. Refuse (SG012) a consumer option that should name an environment variable but does not, or holds what looks like a secret.';

create function segmenter._consumer_options_valid(kind text, options jsonb) returns boolean
language plpgsql immutable as $$
declare
  k text; v jsonb; n numeric; seen text[] := '{}';
  http_keys constant text[] := array['method', 'headers', 'signing_secret_env', 'timeout_ms', 'max_in_flight', 'rate_per_second', 'rate_per_minute'];
  sql_keys constant text[] := array['lanes', 'checkpoint_table'];
  -- Headers the sink writes itself: a configured one would clash with the body or the signature.
  reserved constant text[] := array['content-type', 'content-length', 'host', 'transfer-encoding', 'connection',
    'webhook-id', 'webhook-timestamp', 'webhook-signature', 'idempotency-key'];
begin
  if options is null or jsonb_typeof(options) <> 'object' then
    perform segmenter._fail('SG012', 'options: must be a JSON object', 'pass options => ''{}''::jsonb');
  end if;
  if kind is distinct from 'http' then
    for k in select jsonb_object_keys(options) loop
      if k = any (http_keys) then
        perform segmenter._fail('SG012', format('options: %L is an option of http consumers, not of a %s consumer', k, kind),
          'known options here: lanes (1-16), checkpoint_table (a table name)');
      end if;
    end loop;
    return segmenter._consumer_options_valid(options);
  end if;

  for k in select jsonb_object_keys(options) loop
    if k <> all (http_keys) then
      perform segmenter._fail('SG012', format('options: %L is not an option of an http consumer', k),
        'known options: method, headers, signing_secret_env, timeout_ms, max_in_flight, rate_per_second, rate_per_minute'
        || case when k = any (sql_keys) then format(' (%s is for SQL consumers)', k) else '' end);
    end if;
  end loop;
  if options ? 'method' and (jsonb_typeof(options->'method') <> 'string' or options->>'method' not in ('GET', 'POST', 'PUT', 'PATCH', 'DELETE')) then
    perform segmenter._fail('SG012', format('options.method: %s is not an HTTP method', options->'method'),
      'pass one of "GET", "POST", "PUT", "PATCH", "DELETE" in capitals, e.g. options => ''{"method": "PUT"}''; the default is POST, and a template''s request line overrides it');
  end if;
  if options ? 'headers' then
    if jsonb_typeof(options->'headers') <> 'object' then
      perform segmenter._fail('SG012', 'options.headers: must be an object of header name => environment variable name',
        'pass options => ''{"headers": {"Authorization": "CRM_AUTH_HEADER"}}''; the variable holds the whole header value');
    end if;
    for k, v in select * from jsonb_each(options->'headers') loop
      if k !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$' then
        perform segmenter._fail('SG012', format('options.headers: %L is not an HTTP header name', k),
          'use letters, digits and - (e.g. "X-Api-Key"); the value is the name of an environment variable');
      end if;
      if lower(k) = any (reserved) then
        perform segmenter._fail('SG012', format('options.headers: %s is set by the sidecar', k),
          'remove it: Content-Type is application/json, and the webhook-* signature headers and Idempotency-Key come from signing_secret_env and the batch id');
      end if;
      if lower(k) = any (seen) then
        perform segmenter._fail('SG012', format('options.headers: %s is given twice (header names are case-insensitive)', k), 'keep one of them');
      end if;
      seen := seen || lower(k);
      perform segmenter._check_env_option(format('headers.%s', k), v, format('options => ''{"headers": {"%s": "CRM_%s"}}''', k, upper(regexp_replace(k, '[^A-Za-z0-9]', '_', 'g'))));
    end loop;
  end if;
  if options ? 'signing_secret_env' then
    perform segmenter._check_env_option('signing_secret_env', options->'signing_secret_env', 'options => ''{"signing_secret_env": "CRM_WEBHOOK_SECRET"}'' (the variable holds whsec_…)');
  end if;
  if options ? 'timeout_ms' and (jsonb_typeof(options->'timeout_ms') <> 'number' or (options->>'timeout_ms') !~ '^\d+$'
                                 or (options->>'timeout_ms')::numeric not between 1 and 2147483647) then
    perform segmenter._fail('SG012', format('options.timeout_ms: %s is not a positive whole number of milliseconds', options->'timeout_ms'),
      'pass options => ''{"timeout_ms": 30000}'' (the default): a request that takes longer is abandoned and retried');
  end if;
  if options ? 'max_in_flight' and (jsonb_typeof(options->'max_in_flight') <> 'number' or (options->>'max_in_flight') !~ '^\d+$'
                                    or (options->>'max_in_flight')::numeric not between 1 and 64) then
    perform segmenter._fail('SG012', format('options.max_in_flight: %s is not a whole number from 1 to 64', options->'max_in_flight'),
      'pass options => ''{"max_in_flight": 4}''; 1 (the default) sends one request of a subscription at a time');
  end if;
  foreach k in array array['rate_per_second', 'rate_per_minute'] loop
    continue when not options ? k;
    if jsonb_typeof(options->k) <> 'number' or (options->>k)::numeric <= 0 then
      perform segmenter._fail('SG012', format('options.%s: %s is not a positive number', k, options->k),
        format('pass options => ''{"%s": %s}'', or leave it out for no limit', k, case when k = 'rate_per_second' then '10' else '600' end));
    end if;
  end loop;
  return true;
end $$;
comment on function segmenter._consumer_options_valid(text, jsonb) is 'Private. True for valid options of a consumer of this kind; refuses unknown or malformed ones (SG012) with a hint.';

-- The constraint of 0005, now per kind. NOT VALID as there: an upgrade never fails on old rows.
alter table segmenter.consumers drop constraint consumers_options_valid;
alter table segmenter.consumers add constraint consumers_options_valid check (segmenter._consumer_options_valid(kind, options)) not valid;
comment on function segmenter._consumer_options_valid(jsonb) is 'Private. The options of an SQL consumer (lanes, checkpoint_table); see the (kind, options) form.';

-- ---------------------------------------------------------------------------------------------
-- Templates of the json dialect (src/render/json.ts)
-- ---------------------------------------------------------------------------------------------

-- 0007's scanner keeps its body under another name; _scan_sql, which _altcraft_fields and
-- _squirrelly_fields call, now dispatches on the dialect.
alter function segmenter._scan_sql(text, text, text, text[], text[], int[], text[]) rename to _scan_sql_text;

-- A rendered json template's request line (src/render/json.ts splitRequest): SG010 for one that is
-- malformed or could leave the consumer's URL; returns the body.
create function segmenter._json_request_body(field text, source text, rendered text) returns text
language plpgsql immutable as $$
declare
  m text[] := regexp_match(rendered, '^([A-Z]+) ([^\r\n]*)(\r?\n)');
  target text; rest text; path text;
  line text;
begin
  if m is null then return rendered; end if;
  target := m[2];
  line := format('the request line "%s"', m[1] || ' ' || target);
  rest := substr(rendered, length(m[1]) + length(target) + length(m[3]) + 2);
  if m[1] not in ('GET', 'POST', 'PUT', 'PATCH', 'DELETE') then
    perform segmenter._fail('SG010', format('%s: %s starts with "%s", which is not an HTTP method', field, line, m[1]), 'use one of GET, POST, PUT, PATCH, DELETE');
  end if;
  if rest !~ '^\r?\n' then
    perform segmenter._fail('SG010', format('%s: %s is not followed by an empty line', field, line), 'write the request line, then an empty line, then the JSON body');
  end if;
  if left(target, 1) not in ('/', '?') then
    perform segmenter._fail('SG010', format('%s: %s does not start its path with "/" or "?"', field, line),
      'the path is relative to the consumer''s URL, e.g. POST /lists/{audience}/members; an absolute URL is not allowed');
  end if;
  if left(target, 2) = '//' then
    perform segmenter._fail('SG010', format('%s: %s starts with "//", which names another host', field, line), 'start the path with a single "/"');
  end if;
  if target !~ '^[A-Za-z0-9._~!$&''()*+,;=:@/?%-]*$' or target ~ '%($|[^0-9A-Fa-f]|.$|.[^0-9A-Fa-f])' then
    perform segmenter._fail('SG010', format('%s: %s holds a character a request path cannot', field, line),
      'percent-encode it in the template; values in the request line are encoded for you');
  end if;
  path := split_part(target, '?', 1);
  if exists (select 1 from unnest(string_to_array(path, '/')) seg where seg ~* '^(\.|%2e){1,2}$') then
    perform segmenter._fail('SG010', format('%s: %s has a "." or ".." path segment', field, line), 'write the path without dot segments; it is relative to the consumer''s URL');
  end if;
  return regexp_replace(rest, '^\r?\n', '');
end $$;
comment on function segmenter._json_request_body is 'Private. Port of src/render/json.ts splitRequest: check a rendered request line (SG010) and return the body.';

-- The json dialect's scanner (src/render/json.ts analyzeJson): 'path' for a slot in the request
-- line, 'bare' for a JSON value in the body; SG010 for a placeholder inside a JSON string or a
-- loop where it cannot be. With sample, also the sample render of the compiler (two members):
-- the body must parse as JSON (the json type's parser, RFC 8259 like the sidecar's).
create function segmenter._scan_json(field text, source text, kinds text[], texts text[], ats int[], names text[], sample boolean)
returns text[]
language plpgsql immutable as $$
declare
  contexts text[] := '{}';
  line_end int := -1;
  m text[];
  in_string boolean := false; string_at int;
  p int; i int; s text[]; c text; b text;
  lines text[];
  -- sample render
  out text := ''; iter int; loop_from int; loop_to int; q int; part text;
  body text;
  err text;
begin
  m := regexp_match(source, '^([A-Z]+) ');
  if m is not null then
    if m[1] not in ('GET', 'POST', 'PUT', 'PATCH', 'DELETE') then
      perform segmenter._template_fail(field, source, 0, format('the request line starts with "%s", which is not an HTTP method', m[1]),
        'use one of GET, POST, PUT, PATCH, DELETE, or start the template with the JSON body');
    end if;
    line_end := strpos(source, E'\n') - 1;
    if line_end < 0 or substr(source, line_end + 2) !~ '^\r?\n' then
      perform segmenter._template_fail(field, source, case when line_end < 0 then length(source) else line_end end,
        'the request line is not followed by an empty line', 'write the request line ("POST /path"), then an empty line, then the JSON body');
    end if;
  end if;

  for p in 1 .. coalesce(cardinality(kinds), 0) loop
    if kinds[p] = 'text' then
      s := coalesce(string_to_array(texts[p], null), '{}');
      i := 0;
      while i < cardinality(s) loop
        if ats[p] + i > line_end then
          c := s[i + 1];
          if in_string then
            if c = '\' then i := i + 1;
            elsif c = '"' then in_string := false;
            end if;
          elsif c = '"' then
            in_string := true; string_at := ats[p] + i;
          end if;
        end if;
        i := i + 1;
      end loop;
      continue;
    end if;
    continue when kinds[p] = 'fixed';
    if ats[p] < line_end then
      if kinds[p] = 'ctl' then
        perform segmenter._template_fail(field, source, ats[p], format('%s is in the request line', names[p]),
          'loops and conditions belong in the body; the request line takes values like {audience} only');
      end if;
      contexts := contexts || 'path'::text;
      continue;
    end if;
    if in_string then
      lines := string_to_array(left(source, string_at), E'\n');
      perform segmenter._template_fail(field, source, ats[p],
        case when kinds[p] = 'slot' then format('%s is inside a JSON string (the string opened at line %s:%s)', names[p],
          greatest(coalesce(cardinality(lines), 0), 1), coalesce(length(lines[cardinality(lines)]), 0) + 1)
        else format('%s is inside a JSON string', names[p]) end,
        case when kinds[p] = 'slot' then format('remove the quotes around it: every value is written as a JSON value ("x" for text, 1 for a number, null), e.g. "name": %s', names[p])
        else 'loops and conditions must start and end outside JSON strings' end);
    end if;
    if kinds[p] = 'slot' then contexts := contexts || 'bare'::text; end if;
  end loop;

  if not sample then return contexts; end if;

  -- The compiler's sample render (src/render/json.ts sampleContext), for the seed's syntax: two
  -- members; {autocomma} writes "," after the first; the values are the compiler's.
  p := 1;
  while p <= coalesce(cardinality(kinds), 0) loop
    if kinds[p] = 'ctl' and segmenter._js_trim(substr(names[p], 2, length(names[p]) - 2)) ~ '^for\M' then
      loop_from := p + 1;
      loop_to := loop_from;
      while kinds[loop_to] is distinct from 'ctl' loop loop_to := loop_to + 1; end loop;
      for iter in 1 .. 2 loop
        for q in loop_from .. loop_to - 1 loop
          out := out || segmenter._json_sample_piece(kinds[q], texts[q], names[q], ats[q] < line_end, iter);
        end loop;
      end loop;
      p := loop_to + 1;
      continue;
    end if;
    out := out || segmenter._json_sample_piece(kinds[p], texts[p], names[p], ats[p] < line_end, 0);
    p := p + 1;
  end loop;
  body := segmenter._json_request_body(field, source, out);
  if body ~ '^[ \t\n\r]*$' and out ~ '^[A-Z]+ ' then return contexts; end if;
  begin
    perform body::json;
  exception when others then
    get stacked diagnostics err = pg_exception_detail;
    perform segmenter._fail('SG010', format('%s: the body is not JSON when rendered for a sample batch: %s%s', field, sqlerrm, coalesce(': ' || nullif(err, ''), '')),
      'values are written as JSON values; check the commas ({autocomma} between items), brackets and quotes around that place');
  end;
  return contexts;
end $$;
comment on function segmenter._scan_json is 'Private. Port of the sidecar''s json-dialect checks (src/render/json.ts): each placeholder''s context (path or bare), SG010 for one inside a JSON string, and with sample the sample render whose body must parse.';

-- One piece of the sample render: text as it is; a value as the compiler's sample writes it (in the
-- body a JSON value, in the request line its percent-encoded text); member n of the loop (0 outside).
create function segmenter._json_sample_piece(kind text, txt text, name text, in_path boolean, n int) returns text
language plpgsql immutable as $$
declare b text; f text; m text[];
begin
  if kind = 'text' then return txt; end if;
  if kind = 'fixed' then return case when n = 1 then ',' else '' end; end if;
  if kind <> 'slot' then return ''; end if;
  b := segmenter._js_trim(substr(name, 2, length(name) - 2));
  if b = 'segment_id' then return case when in_path then '00000000-0000-4000-8000-000000000000' else '"00000000-0000-4000-8000-000000000000"' end; end if;
  if b in ('segment_name', 'audience') then return case when in_path then 'sample' else '"sample"' end; end if;
  if b = 'version' then return '1'; end if;
  f := substring(b from '^\$[A-Za-z0-9_]+\.([A-Za-z0-9_$]+)$');
  if f is not null then return to_json(format('sample %s %s', f, n))::text; end if;
  if b ~ '^\$[A-Za-z0-9_]+$' then return (n - 1)::text; end if; -- {$index}
  m := regexp_match(b, '^batch_in' || segmenter._js_space() || '+(?:"([^"]+)"|''([^'']+)''|([A-Za-z0-9_$]+))$');
  f := coalesce(m[1], m[2], m[3]);
  return to_json(format('sample %s 1', f))::text || ', ' || to_json(format('sample %s 2', f))::text;
end $$;
comment on function segmenter._json_sample_piece is 'Private. A piece of the json-dialect sample render, as src/render/json.ts sampleContext renders it.';

create function segmenter._scan_sql(field text, source text, dialect text, kinds text[], texts text[], ats int[], names text[])
returns text[]
language plpgsql immutable as $$
begin
  if dialect = 'json' then
    -- Squirrelly tags start with "{{", the seed's never do: only the seed's output is rendered
    -- here (and a template without tags, whose output is its text).
    return segmenter._scan_json(field, source, kinds, texts, ats, names,
      not exists (select 1 from unnest(kinds, names) as x(k, n) where x.k <> 'text' and x.n like '{{%'));
  end if;
  return segmenter._scan_sql_text(field, source, dialect, kinds, texts, ats, names);
end $$;
comment on function segmenter._scan_sql is 'Private. The context of each placeholder, or SG010: the SQL scanner (_scan_sql_text) for SQL dialects, _scan_json for json.';

-- ---------------------------------------------------------------------------------------------
-- Rate limits
-- ---------------------------------------------------------------------------------------------

-- One row per rate-limited consumer: the tokens of its two buckets when last refilled. A bucket
-- holds at most one token and refills continuously, so requests are spaced evenly (1/rate apart)
-- and no window of one second (one minute) ever sees more than the rate: a bucket holding a
-- second's worth would let a full bucket and its refill through in one second, twice the rate,
-- which is what a receiver counting per second answers with 429. A request takes one token from each.
create table segmenter.rate_buckets (
  consumer_id bigint primary key references segmenter.consumers on delete cascade,
  second_tokens float8,
  minute_tokens float8,
  refilled_at timestamptz not null
);
comment on table segmenter.rate_buckets is 'Private. Token buckets of the consumers with rate_per_second or rate_per_minute, shared by every sidecar (segmenter._take_token). Readable; written only by _take_token.';

create function segmenter._take_token(consumer_id bigint) returns float8
language plpgsql volatile as $$
declare
  o jsonb;
  rps float8; rpm float8;
  b segmenter.rate_buckets;
  t timestamptz;
  dt float8; s float8; m float8; wait float8 := 0;
begin
  select c.options into o from segmenter.consumers c where c.consumer_id = _take_token.consumer_id;
  rps := (o->>'rate_per_second')::float8;
  rpm := (o->>'rate_per_minute')::float8;
  if rps is null and rpm is null then return 0; end if;
  insert into segmenter.rate_buckets as r (consumer_id, second_tokens, minute_tokens, refilled_at)
  values (_take_token.consumer_id, 1, 1, clock_timestamp())
  on conflict do nothing;
  -- The row lock orders concurrent callers; the time is read after it is granted, so a caller
  -- that waited refills for the time it waited.
  select * into b from segmenter.rate_buckets r where r.consumer_id = _take_token.consumer_id for update;
  t := clock_timestamp();
  dt := greatest(extract(epoch from t - b.refilled_at)::float8, 0);
  s := case when rps is not null then least(1, coalesce(b.second_tokens, 1) + dt * rps) end;
  m := case when rpm is not null then least(1, coalesce(b.minute_tokens, 1) + dt * rpm / 60) end;
  if coalesce(s >= 1, true) and coalesce(m >= 1, true) then
    s := s - 1;
    m := m - 1;
  else
    wait := ceil(greatest(case when s < 1 then (1 - s) / rps end, case when m < 1 then (1 - m) * 60 / rpm end) * 1000);
    wait := greatest(wait, 1);
  end if;
  update segmenter.rate_buckets r set second_tokens = s, minute_tokens = m, refilled_at = t where r.consumer_id = _take_token.consumer_id;
  return wait;
end $$;
comment on function segmenter._take_token is 'Private. Sidecar, before each request to a consumer: 0 when a request may go now (a token of the per-second and per-minute buckets is taken), else the milliseconds to wait before asking again. Shared by every sidecar through a row lock; call it outside a transaction so the lock is held only for the call.';

-- ---------------------------------------------------------------------------------------------
-- What the target answered, in the log
-- ---------------------------------------------------------------------------------------------

-- A batch's log row may carry what the target said besides ok/error: an HTTP receiver's status
-- ({"http_status": 202, "attempts": 2}). An argument more, so the functions are made again (a
-- second signature beside the old one would make named calls ambiguous).
drop function segmenter.record_batch(bigint, bigint, int, segmenter.event, uuid, int, bigint, float8, boolean, text);
create function segmenter.record_batch(
  subscription_id bigint, cursor_pos bigint, cursor_ord int, event segmenter.event, segment_id uuid, statements int, rows bigint,
  duration_ms float8, ok boolean, error text default null, detail jsonb default null
) returns void
language plpgsql as $$ -- plpgsql, not sql: its plans are cached across calls (4 ms -> 1 ms a batch)
begin
  update segmenter.subscriptions s set cursor_pos = record_batch.cursor_pos, cursor_ord = record_batch.cursor_ord
  where s.subscription_id = record_batch.subscription_id
    and (s.cursor_pos, s.cursor_ord) < (record_batch.cursor_pos, record_batch.cursor_ord);
  insert into segmenter.log (kind, subscription_id, segment_id, event, statements, rows, duration_ms, ok, error, detail)
  values ('batch', record_batch.subscription_id, record_batch.segment_id, record_batch.event,
          record_batch.statements, record_batch.rows, record_batch.duration_ms, record_batch.ok, record_batch.error, record_batch.detail);
end $$;
comment on function segmenter.record_batch is 'Sidecar: record a delivered (ok) or failed batch in segmenter.log (detail: what the target answered, e.g. {"http_status": 200}) and advance the subscription''s cursor.';

drop function segmenter.record_batches(bigint, bigint, int, uuid[], segmenter.event[], int[], bigint[], float8[]);
create function segmenter.record_batches(
  subscription_id bigint, cursor_pos bigint, cursor_ord int, segment_ids uuid[], events segmenter.event[], statements int[],
  rows bigint[], duration_ms float8[], details jsonb[] default null
) returns void
language plpgsql as $$
begin
  update segmenter.subscriptions s set cursor_pos = record_batches.cursor_pos, cursor_ord = record_batches.cursor_ord
  where s.subscription_id = record_batches.subscription_id
    and (s.cursor_pos, s.cursor_ord) < (record_batches.cursor_pos, record_batches.cursor_ord);
  insert into segmenter.log (kind, subscription_id, segment_id, event, statements, rows, duration_ms, ok, detail)
  select 'batch', record_batches.subscription_id, b.segment_id, b.event, b.statements, b.rows, b.duration_ms, true, b.detail
  from unnest(segment_ids, events, statements, rows, duration_ms, coalesce(details, array_fill(null::jsonb, array[cardinality(events)])))
    as b (segment_id, event, statements, rows, duration_ms, detail);
end $$;
comment on function segmenter.record_batches is 'Sidecar: record several delivered batches in segmenter.log (arrays, one element per batch; details: what the target answered) and advance the subscription''s cursor.';

insert into segmenter.migrations (id, name) values (12, '0012_http') on conflict do nothing;
