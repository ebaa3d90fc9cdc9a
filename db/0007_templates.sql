-- 0007: bad templates are refused when they are written, exactly as the sidecar would refuse them.
--
-- 0001 only checked a template's outline, so create_subscription accepted templates the sidecar's
-- compiler (src/render) refuses: every member was then dead-lettered one round trip at a time.
-- Here the write path runs a port of that compiler's checks: the altcraft tokenizer, Squirrelly's
-- parser (tag boundaries, strings and comments inside tags, filters, helpers, blocks), and the
-- dialect-aware SQL scanner that decides where each placeholder sits (plain SQL, a whole literal,
-- part of a literal, a comment). The dialect is the consumer's. test/template_check.test.ts runs
-- one corpus through both and fails when they disagree; the only templates left to the sidecar
-- are those whose Squirrelly JavaScript does not compile (a syntax error in an expression), which
-- it holds in an error state (hold_subscription) instead of dead-lettering members.
--
-- Also: alter_subscription(name, ...) changes templates, batch size, timeout, description or
-- audience in place, keeping the cursor, the sync key and the dead letters, and releases a
-- subscription the sidecar held.
--
-- Offsets below are 0-based like the TypeScript they port (ch[i + 1] is the TS source[i]).

-- JavaScript's \s (and what String.prototype.trim removes), as a PostgreSQL bracket expression.
create function segmenter._js_space() returns text
language sql immutable parallel safe as $$
  select '[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]'
$$;
comment on function segmenter._js_space is 'Private. JavaScript''s whitespace class as a regex bracket expression.';

create function segmenter._js_trim(s text) returns text
language sql immutable parallel safe as $$
  select regexp_replace(s, '^' || segmenter._js_space() || '+|' || segmenter._js_space() || '+$', '', 'g')
$$;
comment on function segmenter._js_trim is 'Private. JavaScript''s String.prototype.trim.';

-- SG010 with the TS compiler's wording: "<field>: <problem> at line L:C. <fix>", hint <fix>.
create function segmenter._template_fail(field text, source text, at int, problem text, fix text) returns void
language plpgsql immutable as $$
declare
  lines text[] := string_to_array(left(source, greatest(at, 0)), E'\n');
  line int := greatest(coalesce(cardinality(lines), 0), 1);
  col int := coalesce(length(lines[cardinality(lines)]), 0) + 1;
begin
  perform segmenter._fail('SG010', format('%s: %s at line %s:%s. %s', field, problem, line, col, fix), fix);
end $$;
comment on function segmenter._template_fail is 'Private. Raise SG010 naming the template field, the problem, its line:column and the fix.';

-- ---------------------------------------------------------------------------------------------
-- The SQL scanner (src/render/literals.ts, analyze): follows the dialect's lexer over the
-- template's text pieces (placeholders are opaque) and returns each slot's context: 'bare',
-- 'string' (the whole of a quoted literal), 'ident' (the whole of a quoted identifier) or
-- 'inside' (part of a larger literal). Refuses a placeholder it cannot place safely.
-- Pieces are parallel arrays: kind 'text' | 'slot' | 'ctl' | 'fixed', text, offset, label.
-- ---------------------------------------------------------------------------------------------

create function segmenter._scan_sql(field text, source text, dialect text, kinds text[], texts text[], ats int[], names text[])
returns text[]
language plpgsql immutable as $$
declare
  contexts text[] := '{}';
  slot_at int[] := '{}';
  st text := 'code'; -- code | quoted | line | block | dollar | qquote
  st_at int;
  q_ident boolean; q_q text; q_close text; q_bs boolean; q_triple boolean; q_prefix text; q_slots int[]; q_other boolean;
  depth int; tag text; qclose text; closer text;
  p int; s text[]; len int; i int; j int; b int; k int; c text; nx text; d text; at int;
  prefix text; whole boolean; first int; ident boolean; what text;
  -- PostgreSQL joins string constants that touch ('a''b') or are separated only by whitespace with
  -- a line break into one literal, in the escape mode of its first part. The join is what the
  -- output so far ends with: a literal of mode 'plain', 'e' (E'…', B'…', X'…') or 'unknown' (a
  -- value), glued to what follows or separated from it by a line break.
  pg constant boolean := dialect = 'postgres';
  j_mode text; j_glued boolean; j_nl boolean;
  q_cont text; q_head boolean; q_backslash boolean;
  tails text[] := '{}'; heads_at int[] := '{}'; heads_risky boolean[] := '{}'; head_pending boolean := false;
  joined_problem constant text := 'a placeholder touches a string literal or another placeholder (PostgreSQL joins string constants that touch or are separated only by a line break into one literal)';
  joined_fix constant text := 'separate them with || or a comma, or put them on one line with a space: ''a'' || {x}';
begin
  for p in 1 .. coalesce(cardinality(kinds), 0) loop
    what := case st when 'quoted' then case when q_ident then 'a quoted identifier' else 'a string literal' end
                    when 'line' then 'an SQL comment' when 'block' then 'an SQL comment'
                    when 'dollar' then 'a dollar-quoted string' when 'qquote' then 'a q-quoted string' else 'plain SQL' end;
    if kinds[p] = 'slot' then
      slot_at := slot_at || ats[p];
      if st = 'code' then
        contexts[cardinality(slot_at)] := 'bare';
        if pg then
          if j_mode is not null and (j_glued or j_nl) then
            perform segmenter._template_fail(field, source, ats[p], joined_problem, joined_fix);
          end if;
          j_mode := 'unknown'; j_glued := true; j_nl := false;
          head_pending := false;
        end if;
      elsif st = 'quoted' then
        q_slots := q_slots || cardinality(slot_at);
      else
        perform segmenter._template_fail(field, source, ats[p], format('%s is inside %s', names[p], what), 'move it out; values cannot be escaped there');
      end if;
      continue;
    elsif kinds[p] = 'ctl' then
      if st <> 'code' then
        perform segmenter._template_fail(field, source, ats[p], format('%s is inside %s', names[p], what),
          'loops and conditions must start and end in plain SQL, outside quotes and comments');
      end if;
      if pg then
        if j_mode is not null then tails := tails || j_mode; end if;
        head_pending := true;
      end if;
      continue;
    elsif kinds[p] = 'fixed' then
      if st = 'quoted' then q_other := true; end if;
      continue;
    end if;

    s := coalesce(string_to_array(texts[p], null), '{}');
    len := cardinality(s);
    i := 0;
    ident := false; -- the text just before continues an identifier (so a "$" does too)
    while i < len loop
      c := s[i + 1];
      at := ats[p] + i;
      if st = 'code' then
        nx := s[i + 2];
        if pg and c <> '''' then
          if c in (' ', E'\t', E'\n', E'\r', E'\f', E'\v') then
            if j_mode is not null then j_glued := false; j_nl := j_nl or c in (E'\n', E'\r'); end if;
          elsif c = '-' and nx = '-' then
            if j_mode is not null then j_glued := false; end if; -- a -- comment counts as whitespace; its line break ends it
          else
            j_mode := null; head_pending := false;
          end if;
        end if;
        if c = '''' or (c = '"' and dialect in ('mysql', 'bigquery')) then
          b := i;
          while b > 0 and s[b] ~ '^[A-Za-z0-9_]$' loop b := b - 1; end loop;
          if b = i and s[i] = '&' and coalesce(s[i - 1], '') ~* '^u$' and coalesce(s[i - 2], '') !~ '^[A-Za-z0-9_]$' then
            b := i - 2;
          end if;
          prefix := array_to_string(s[b + 1:i], '');
          if dialect = 'oracle' and prefix ~* '^n?q$' and c = '''' then
            d := s[i + 2];
            if d is null then
              perform segmenter._template_fail(field, source, at, 'a q-quoted literal needs its delimiter right after q''', 'write q''[...]''');
            end if;
            qclose := coalesce(case d when '[' then ']' when '(' then ')' when '{' then '}' when '<' then '>' end, d) || '''';
            st := 'qquote'; st_at := at;
            i := i + 2;
          else
            q_triple := dialect = 'bigquery' and array_to_string(s[i + 1:i + 3], '') = repeat(c, 3);
            q_bs := dialect in ('mysql', 'bigquery', 'clickhouse') or (dialect = 'postgres' and prefix ~* '^e$');
            q_close := repeat(c, case when q_triple then 3 else 1 end);
            -- A plain ' that touches the literal before it continues it, in that literal's mode.
            q_cont := case when pg and j_mode is not null and (j_glued or j_nl) then j_mode end;
            q_bs := q_bs or q_cont = 'e';
            q_head := head_pending; q_backslash := false;
            j_mode := null; head_pending := false;
            st := 'quoted'; q_ident := false; q_q := c; q_prefix := prefix; st_at := at; q_slots := '{}'; q_other := false;
            i := i + length(q_close);
          end if;
        elsif c = '"' or (c = '`' and dialect not in ('postgres', 'oracle', 'mssql')) or (c = '[' and dialect = 'mssql') then
          q_close := case when c = '[' then ']' else c end;
          q_bs := dialect = 'clickhouse' or (dialect = 'bigquery' and c = '`');
          b := i;
          while b > 0 and s[b] ~ '^[A-Za-z0-9_]$' loop b := b - 1; end loop;
          if dialect = 'postgres' and c = '"' and s[i] = '&' and coalesce(s[i - 1], '') ~* '^u$' then b := i - 2; end if;
          st := 'quoted'; q_ident := true; q_q := c; q_triple := false; q_prefix := array_to_string(s[b + 1:i], '');
          q_cont := null; q_head := false; q_backslash := false;
          st_at := at; q_slots := '{}'; q_other := false;
          i := i + 1;
        elsif c = '-' and nx = '-' then
          -- MySQL needs whitespace after "--"; at the end of the text what follows is unknown, so
          -- it counts as a comment (a placeholder there is refused, never mis-escaped).
          if dialect = 'mysql' and i + 2 < len and ascii(s[i + 3]) > 32 then
            i := i + 2;
          else
            st := 'line'; st_at := at; i := i + 2;
          end if;
        elsif c = '#' and dialect in ('mysql', 'bigquery', 'clickhouse') then
          st := 'line'; st_at := at; i := i + 1;
        elsif c = '/' and nx = '/' and dialect = 'clickhouse' then
          st := 'line'; st_at := at; i := i + 2;
        elsif c = '/' and nx = '*' then
          if dialect = 'mysql' and (s[i + 3] = '!' or (s[i + 3] = 'M' and s[i + 4] = '!')) then
            perform segmenter._template_fail(field, source, at, 'MySQL executable comments /*! … */ are not supported', 'write the SQL without the comment wrapper');
          end if;
          st := 'block'; depth := 1; st_at := at; i := i + 2;
        elsif c = '$' and dialect in ('postgres', 'clickhouse') and not ident then
          if dialect = 'clickhouse' then
            perform segmenter._template_fail(field, source, at, 'a "$" heredoc or parameter is not supported in ClickHouse templates', 'use a quoted string instead');
          end if;
          j := i + 1;
          if s[j + 1] ~ '^[A-Za-z_]$' or ascii(s[j + 1]) >= 128 then
            j := j + 1;
            while s[j + 1] ~ '^[A-Za-z0-9_]$' or ascii(s[j + 1]) >= 128 loop j := j + 1; end loop;
          end if;
          if s[j + 1] = '$' then
            tag := array_to_string(s[i + 1:j + 1], ''); st := 'dollar'; st_at := at; i := j + 1;
          else
            i := i + 1;
          end if;
        else
          -- Postgres identifiers: a letter, "_" or any non-ASCII character starts or continues
          -- one; digits and "$" continue one.
          ident := case when c ~ '^[A-Za-z_]$' or ascii(c) >= 128 then true when c = '$' or c ~ '^[0-9]$' then ident else false end;
          i := i + 1;
          continue;
        end if;
        ident := false;
      elsif st = 'quoted' then
        if pg and c = '\' and not q_ident then
          q_backslash := true;
          if q_cont = 'unknown' then
            perform segmenter._template_fail(field, source, at,
              'a backslash in a string that PostgreSQL joins to a value before it (they touch, or only a line break separates them): the value may be written as E''…'', which makes the backslash an escape',
              'separate the two with || or a comma, or put them on one line: {x} || ''a\b''');
          end if;
        end if;
        if q_bs and c = '\' then
          if i + 1 >= len then
            perform segmenter._template_fail(field, source, at, 'a placeholder cannot follow a backslash inside a string literal', 'remove the backslash');
          end if;
          if dialect = 'mysql' and s[i + 2] = q_q then
            perform segmenter._template_fail(field, source, at,
              format('\%s inside a MySQL string means different things with and without NO_BACKSLASH_ESCAPES', q_q),
              format('double the quote (%s%s) instead', q_q, q_q));
          end if;
          q_other := true; i := i + 2;
        elsif array_to_string(s[i + 1:i + length(q_close)], '') = q_close then
          if not q_triple and s[i + 2] = q_close then
            q_other := true; i := i + 2;
          else
            if cardinality(q_slots) > 0 then
              first := slot_at[q_slots[1]];
              whole := cardinality(q_slots) = 1 and not q_other;
              if q_ident then
                if not whole or q_prefix <> '' then
                  perform segmenter._template_fail(field, source, first, 'a placeholder inside a quoted identifier must be the entire identifier',
                    'write "{x}" alone, or build the name outside the template');
                end if;
                contexts[q_slots[1]] := 'ident';
              else
                if q_cont is not null and whole then
                  perform segmenter._template_fail(field, source, first, joined_problem, joined_fix);
                end if;
                if q_cont is not null and q_cont <> 'plain' then
                  perform segmenter._template_fail(field, source, first,
                    'a placeholder inside a string that PostgreSQL joins to an E''…'' string or a value before it (they touch, or only a line break separates them) would be read with backslash escapes',
                    'separate the two with || or a comma, or put them on one line: ''a'' || ''…{x}…''');
                end if;
              end if;
              if q_ident then
                null;
              elsif whole then
                if not (q_prefix = '' or q_prefix ~* '^(N|E|U&|R)$') then
                  perform segmenter._template_fail(field, source, first, format('a placeholder inside a prefixed literal %s''…'' is not supported', q_prefix),
                    'remove the prefix; the value is written as a complete literal');
                end if;
                contexts[q_slots[1]] := 'string';
              else
                if dialect = 'mysql' then
                  perform segmenter._template_fail(field, source, first,
                    'a placeholder inside a larger string literal is not supported for mysql (its meaning of \ depends on NO_BACKSLASH_ESCAPES)',
                    'use CONCAT(''prefix'', {x}, ''suffix'') with a bare placeholder');
                end if;
                if q_prefix <> '' and q_prefix !~* '^N$' then
                  perform segmenter._template_fail(field, source, first, format('a placeholder inside a prefixed literal %s''…'' must be the whole literal', q_prefix),
                    'remove the prefix or concatenate a bare placeholder');
                end if;
                foreach k in array q_slots loop contexts[k] := 'inside'; end loop;
              end if;
            end if;
            i := i + length(q_close);
            if pg and not q_ident then
              whole := cardinality(q_slots) = 1 and not q_other;
              j_mode := coalesce(q_cont, case when whole then 'unknown' when q_prefix ~* '^[ebx]$' then 'e' else 'plain' end);
              j_glued := true; j_nl := false;
              if q_head then
                heads_at := heads_at || st_at;
                heads_risky := heads_risky || ((cardinality(q_slots) > 0 and not whole) or q_backslash);
              end if;
            end if;
            st := 'code';
          end if;
        else
          q_other := true; i := i + 1;
        end if;
      elsif st = 'line' then
        if c = E'\r' and s[i + 2] is distinct from E'\n' then
          perform segmenter._template_fail(field, source, at, 'a lone carriage return inside a -- comment',
            'servers disagree on where such a comment ends; use \n line breaks');
        end if;
        if c = E'\n' then
          st := 'code';
          if j_mode is not null then j_nl := true; end if;
        end if;
        i := i + 1;
      elsif st = 'block' then
        if c = '*' and s[i + 2] = '/' then
          i := i + 2; depth := depth - 1;
          if depth = 0 then st := 'code'; end if;
        elsif c = '/' and s[i + 2] = '*' and dialect in ('postgres', 'mssql', 'clickhouse') then
          depth := depth + 1; i := i + 2;
        else
          i := i + 1;
        end if;
      else -- dollar, qquote: the rest up to the closing delimiter
        closer := case when st = 'dollar' then tag else qclose end;
        j := strpos(array_to_string(s[i + 1:len], ''), closer);
        if j = 0 then
          i := len;
        else
          i := i + j - 1 + length(closer); st := 'code';
        end if;
      end if;
    end loop;
  end loop;
  if st not in ('code', 'line') then
    what := case st when 'quoted' then case when q_ident then 'a quoted identifier' else 'a string literal' end
                    when 'block' then 'an SQL comment' when 'dollar' then 'a dollar-quoted string' else 'a q-quoted string' end;
    perform segmenter._template_fail(field, source, st_at, format('%s is never closed', what), 'close it; the scanner must know where every literal ends');
  end if;
  -- Loops and conditions reorder the output: what ends before any such tag may meet what starts
  -- after any of them.
  k := array_position(heads_risky, true);
  if k is not null and exists (select 1 from unnest(tails) m where m <> 'plain') then
    perform segmenter._template_fail(field, source, heads_at[k],
      'a string with a backslash or a placeholder right after a loop or condition tag may be joined by PostgreSQL to an E''…'' string or a value that ends before such a tag (string constants that touch or are separated only by a line break are one literal, in the first one''s escape mode)',
      'put a comma, an operator or other SQL between the tag and the string, or end the text before the tag with something other than a string');
  end if;
  return contexts;
end $$;
comment on function segmenter._scan_sql is 'Private. Port of the sidecar''s SQL scanner (src/render/literals.ts analyze): the context of each placeholder, or SG010.';

-- ---------------------------------------------------------------------------------------------
-- altcraft (src/render/altcraft.ts)
-- ---------------------------------------------------------------------------------------------

create function segmenter._altcraft_fields(field text, source text, dialect text) returns text[]
language plpgsql immutable as $$
declare
  ws constant text := segmenter._js_space();
  known constant text := '{segment_id}, {segment_name}, {audience}, {for $index, $lead = $batch}, {$lead.Field}, {$index}, {autocomma}, {end}, {batch_in "Field"}';
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
        if b in ('segment_id', 'segment_name', 'audience') then
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

-- ---------------------------------------------------------------------------------------------
-- Squirrelly (src/render/squirrelly.ts and Squirrelly 8's parse())
-- ---------------------------------------------------------------------------------------------

-- Where a string that starts at `start` inside a Squirrelly tag ends (exclusive), as Squirrelly
-- finds it: its string regexes are searched from there, not anchored; -1 when none matches.
create function segmenter._sqrl_string_end(ch text[], start int, quote text) returns int
language plpgsql immutable as $$
declare
  ws constant text := segmenter._js_space();
  n int := cardinality(ch);
  p int := start; q int; c text; lvl int;
begin
  loop
    while p < n and ch[p + 1] <> quote loop p := p + 1; end loop;
    if p >= n then return -1; end if;
    q := p + 1;
    <<candidate>>
    loop
      c := ch[q + 1];
      exit when c is null;
      if quote = '`' then
        -- `(?:\\[\s\S]|\${(?:[^{}]|{(?:[^{}]|{[^}]*})*})*}|(?!\${)[^\\`])*`
        if c = '\' then
          exit when ch[q + 2] is null;
          q := q + 2;
        elsif c = '`' then
          return q + 1;
        elsif c = '$' and ch[q + 2] = '{' then
          q := q + 2; lvl := 1;
          loop
            c := ch[q + 1];
            exit candidate when c is null;
            if c = '}' then
              q := q + 1; lvl := lvl - 1;
              exit when lvl = 0;
            elsif c = '{' and lvl = 2 then
              q := q + 1;
              while ch[q + 1] is not null and ch[q + 1] <> '}' loop q := q + 1; end loop;
              exit candidate when ch[q + 1] is null;
              q := q + 1;
            elsif c = '{' then
              q := q + 1; lvl := 2;
            else
              q := q + 1;
            end if;
          end loop;
        else
          q := q + 1;
        end if;
      else
        -- '(?:\\[\s\w"'\\`]|[^\n\r'\\])*?'
        if c = '\' then
          exit when ch[q + 2] is null or not (ch[q + 2] ~ ws or ch[q + 2] ~ '^[A-Za-z0-9_"''\\`]$');
          q := q + 2;
        elsif c = quote then
          return q + 1;
        elsif c in (E'\n', E'\r') then
          exit;
        else
          q := q + 1;
        end if;
      end if;
    end loop;
    p := p + 1;
  end loop;
end $$;
comment on function segmenter._sqrl_string_end is 'Private. Where Squirrelly''s string regexes end a string that starts inside a tag, or -1.';

create function segmenter._squirrelly_fields(field text, source text, dialect text) returns text[]
language plpgsql immutable as $$
declare
  ws constant text := segmenter._js_space();
  helpers constant text[] := array['rows', 'each', 'foreach', 'if', 'try'];
  ch text[] := coalesce(string_to_array(source, null), '{}');
  n int := cardinality(ch);
  -- the tags, in order
  t_start int[] := '{}'; t_body int[] := '{}'; t_close int[] := '{}'; t_end int[] := '{}';
  t_prefix text[] := '{}'; t_tb text[] := '{}'; t_ta text[] := '{}';
  t_type text[] := '{}'; t_name text[] := '{}'; t_nf int[] := '{}'; t_badf text[] := '{}'; t_firstf text[] := '{}';
  t_raw boolean[] := '{}'; t_parens int[] := '{}'; t_parent text[] := '{}'; t_blocks int[] := '{}';
  -- parse state
  pos int := 0; p int; k int; i int; j int; c text; t int; ntags int;
  prefix text; typ text; attr text; nattr text; raw boolean; parens int; cut int; extra int; startind int;
  pending text; val text; tname text; tb text; ta text; slash boolean; close_at int; end_at int;
  nf int; badf text; firstf text;
  stack int[] := '{}'; -- open helpers, as tag numbers
  -- checks
  content text; label text; txt text; cutn int;
  kinds text[] := '{}'; texts text[] := '{}'; ats int[] := '{}'; names text[] := '{}';
  in_slots int[] := '{}'; in_tags int[] := '{}'; slot int := 0;
  contexts text[];
  bound text[] := array['lead'];
  fields text[] := '{}';
  m text[]; allowed text[]; re text;
begin
  -- 1. Squirrelly's parse(): tag boundaries, strings and comments inside tags, the attributes of
  --    each tag (name, filters), helper nesting. Its errors are the compiler's first ones.
  loop
    p := strpos(substr(source, pos + 1), '{{');
    exit when p = 0;
    k := pos + p - 1;
    t_start := t_start || k;
    k := k + 2;
    tb := null;
    if ch[k + 1] in ('-', '_') then tb := ch[k + 1]; k := k + 1; end if;
    while ch[k + 1] ~ ws loop k := k + 1; end loop;
    prefix := '';
    if ch[k + 1] in ('@', '#', '*', '/', '!') then prefix := ch[k + 1]; k := k + 1; end if;
    while ch[k + 1] ~ ws loop k := k + 1; end loop;
    typ := case prefix when '' then 'i' when '@' then 'h' when '#' then 'b' when '*' then 'r' when '/' then 'c' else 'e' end;
    attr := case when typ in ('h', 'b', 'c') then 'n' else 'c' end;
    raw := typ = 'r';
    if typ = 'r' then typ := 'i'; end if;
    parens := 0; startind := k; tname := null; nf := 0; badf := null; firstf := null; close_at := null; ta := null; slash := false;
    i := k;
    while i < n loop
      c := ch[i + 1]; cut := null; extra := 0;
      if c = '(' then
        if parens = 0 and attr in ('n', 'f') then cut := i; nattr := case when attr = 'n' then 'p' else 'fp' end; end if;
        parens := parens + 1; i := i + 1;
      elsif c = ')' then
        parens := parens - 1;
        if parens = 0 and attr <> 'c' then cut := i; nattr := 'err'; end if;
        i := i + 1;
      elsif c = '|' then
        if parens = 0 then cut := i; nattr := 'f'; end if;
        i := i + 1;
      elsif c = '=' and ch[i + 2] = '>' then
        cut := i; nattr := 'res'; extra := 1; i := i + 2;
      elsif c in ('''', '"', '`') then
        j := segmenter._sqrl_string_end(ch, i, c);
        if j < 0 then
          perform segmenter._template_fail(field, source, i, 'Squirrelly cannot compile the template: unclosed string', 'close the string inside the tag');
        end if;
        i := j;
      elsif c = '/' and ch[i + 2] = '*' then
        j := strpos(substr(source, i + 3), '*/');
        if j = 0 then
          perform segmenter._template_fail(field, source, i, 'Squirrelly cannot compile the template: unclosed comment', 'close the /* comment */ inside the tag');
        end if;
        i := i + 2 + j - 1 + 2;
      else
        -- \s*((\/)?(-|_)?}}) here?
        j := i;
        while ch[j + 1] ~ ws loop j := j + 1; end loop;
        end_at := null;
        if ch[j + 1] = '/' and ch[j + 2] in ('-', '_') and ch[j + 3] = '}' and ch[j + 4] = '}' then
          slash := true; ta := ch[j + 2]; end_at := j + 4;
        elsif ch[j + 1] = '/' and ch[j + 2] = '}' and ch[j + 3] = '}' then
          slash := true; end_at := j + 3;
        elsif ch[j + 1] in ('-', '_') and ch[j + 2] = '}' and ch[j + 3] = '}' then
          ta := ch[j + 1]; end_at := j + 3;
        elsif ch[j + 1] = '}' and ch[j + 2] = '}' then
          end_at := j + 2;
        end if;
        if end_at is null then
          i := i + 1;
        else
          cut := i; close_at := i;
        end if;
      end if;
      if cut is not null then
        pending := substring(source from startind + 1 for cut - startind);
        val := segmenter._js_trim(pending);
        if attr = 'f' then
          if val = 'safe' then
            raw := true;
          else
            nf := nf + 1;
            firstf := coalesce(firstf, val);
            if val <> 'in' then badf := coalesce(badf, val); end if;
          end if;
        elsif attr = 'err' and val <> '' then
          perform segmenter._template_fail(field, source, startind, 'Squirrelly cannot compile the template: invalid syntax', 'nothing may follow the closing ")" of a helper or filter but => and the tag''s end');
        elsif attr = 'n' then
          tname := val;
        end if;
        startind := cut + 1 + extra;
        exit when close_at is not null;
        attr := nattr;
      end if;
    end loop;
    if close_at is null then
      perform segmenter._template_fail(field, source, t_start[cardinality(t_start)], 'Squirrelly cannot compile the template: unclosed tag', 'close it with }}');
    end if;
    if slash and typ = 'h' then typ := 's'; end if;
    t := cardinality(t_start);
    t_body := t_body || k; t_close := t_close || close_at; t_end := t_end || end_at; t_prefix := t_prefix || prefix;
    t_tb := t_tb || tb; t_ta := t_ta || ta; t_type := t_type || typ; t_name := t_name || coalesce(tname, '');
    t_nf := t_nf || nf; t_badf := t_badf || badf; t_firstf := t_firstf || firstf; t_raw := t_raw || raw; t_parens := t_parens || parens;
    t_parent := t_parent || case when cardinality(stack) > 0 then t_name[stack[cardinality(stack)]] end;
    t_blocks := t_blocks || 0;
    if typ = 'h' then
      stack := stack || t;
    elsif typ = 'c' then
      if cardinality(stack) = 0 or t_name[stack[cardinality(stack)]] <> t_name[t] then
        perform segmenter._template_fail(field, source, k, 'Squirrelly cannot compile the template: Helper start and end don''t match',
          'close each {{@helper}} with {{/helper}} of the same name, innermost first');
      end if;
      stack := stack[1:cardinality(stack) - 1];
    elsif typ = 'b' and cardinality(stack) > 0 then
      t_blocks[stack[cardinality(stack)]] := t_blocks[stack[cardinality(stack)]] + 1;
    end if;
    pos := end_at;
  end loop;
  if cardinality(stack) > 0 then
    perform segmenter._template_fail(field, source, t_start[stack[cardinality(stack)]],
      format('Squirrelly cannot compile the template: unclosed helper "%s"', t_name[stack[cardinality(stack)]]),
      format('close it with {{/%s}}', t_name[stack[cardinality(stack)]]));
  end if;
  ntags := cardinality(t_start);

  -- 2. The tags the compiler refuses outright, and the SQL text between them as Squirrelly emits
  --    it (after the - and _ trim markers).
  for t in 1 .. ntags loop
    txt := substring(source from coalesce(t_end[t - 1], 0) + 1 for t_start[t] - coalesce(t_end[t - 1], 0));
    cutn := length(txt);
    if t_ta[t - 1] = '_' then txt := regexp_replace(txt, '^' || ws || '+', '');
    elsif t_ta[t - 1] = '-' and left(txt, 1) in (E'\n', E'\r') then txt := substr(txt, 2);
    end if;
    cutn := cutn - length(txt);
    if t_tb[t] = '_' then txt := regexp_replace(txt, ws || '+$', '');
    elsif t_tb[t] = '-' then
      if right(txt, 2) = E'\r\n' then txt := left(txt, -2);
      elsif right(txt, 1) in (E'\n', E'\r') then txt := left(txt, -1);
      end if;
    end if;
    kinds := kinds || 'text'::text; texts := texts || txt; ats := ats || (coalesce(t_end[t - 1], 0) + cutn); names := names || ''::text;

    content := substring(source from t_body[t] + 1 for t_close[t] - t_body[t]);
    label := substring(source from t_start[t] + 1 for t_end[t] - t_start[t]);
    if t_prefix[t] = '*' then
      perform segmenter._template_fail(field, source, t_start[t], format('raw output %s is not allowed', label), 'use {{ value }}; it is written as an SQL literal');
    elsif t_prefix[t] = '!' then
      perform segmenter._template_fail(field, source, t_start[t], format('execute tag %s is not allowed', label), 'compute the value inside {{ … }} or with {{@if}}');
    end if;
    if content ~ '__sql' then
      perform segmenter._template_fail(field, source, t_start[t], format('%s uses the reserved name __sql', label), 'rename it');
    end if;
    if t_prefix[t] = '' then
      if content ~ ('\|' || ws || '*safe([^A-Za-z0-9_]|$)') then
        perform segmenter._template_fail(field, source, t_start[t], format('%s asks for raw output with "| safe"', label),
          'remove "| safe"; values are always written as SQL literals');
      end if;
      slot := slot + 1;
      if content ~ ('\|' || ws || '*in([^A-Za-z0-9_]|$)') then in_slots := in_slots || slot; in_tags := in_tags || t; end if;
      kinds := kinds || 'slot'::text;
    else
      if t_prefix[t] = '@' then
        if substring(content from '^[A-Za-z0-9_$]*') <> all (helpers) then
          perform segmenter._template_fail(field, source, t_start[t], format('unknown helper @%s', substring(content from '^[A-Za-z0-9_$]*')),
            'available helpers: @rows, @each, @foreach, @if, @try');
        end if;
        for m in select regexp_matches(content, '=>' || ws || '*\(?' || ws || '*([A-Za-z_$][A-Za-z0-9_$]*)', 'g') loop
          bound := bound || m[1];
        end loop;
      elsif t_prefix[t] = '#' and t_parent[t] is null then
        perform segmenter._template_fail(field, source, t_start[t], format('%s is outside a helper', label),
          'blocks belong inside one: {{@if(…)}}…{{#else}}…{{/if}}, {{@rows(…) => x}}…{{#sep}}…{{/rows}}');
      end if;
      kinds := kinds || 'ctl'::text;
    end if;
    texts := texts || ''::text; ats := ats || t_start[t]; names := names || label;
  end loop;
  txt := substring(source from coalesce(t_end[ntags], 0) + 1);
  cutn := length(txt);
  if t_ta[ntags] = '_' then txt := regexp_replace(txt, '^' || ws || '+', '');
  elsif t_ta[ntags] = '-' and left(txt, 1) in (E'\n', E'\r') then txt := substr(txt, 2);
  end if;
  kinds := kinds || 'text'::text; texts := texts || txt; ats := ats || (coalesce(t_end[ntags], 0) + cutn - length(txt)); names := names || ''::text;

  -- 3. What Squirrelly parses but would not compile or render (src/render/squirrelly.ts checkAst).
  for t in 1 .. ntags loop
    continue when t_type[t] = 'c';
    label := substring(source from t_start[t] + 1 for t_end[t] - t_start[t]);
    if t_type[t] = 's' then
      perform segmenter._template_fail(field, source, t_start[t], format('self-closing helper {{@%s /}} is not supported', t_name[t]),
        format('write {{@%s(…) => x}}…{{/%s}}', t_name[t], t_name[t]));
    end if;
    if t_type[t] = 'h' and t_name[t] <> all (helpers) then
      perform segmenter._template_fail(field, source, t_start[t], format('unknown helper @%s', t_name[t]), 'available helpers: @rows, @each, @foreach, @if, @try');
    end if;
    if t_nf[t] > 0 and t_type[t] <> 'i' then
      perform segmenter._template_fail(field, source, t_start[t],
        format('%s has a filter (| %s); filters apply to {{ value }} interpolations only', case when t_type[t] = 'h' then '@' || t_name[t] else label end, t_firstf[t]),
        'remove the filter');
    end if;
    if t_badf[t] is not null then
      perform segmenter._template_fail(field, source, t_start[t], format('unknown filter "%s"', t_badf[t]),
        'available filters: | in (e.g. {{ it.batch | in("id") }}); compute anything else in the expression itself');
    end if;
    if t_type[t] = 'b' then
      allowed := case t_parent[t] when 'rows' then array['sep'] when 'if' then array['elif', 'else'] when 'try' then array['catch'] else '{}' end;
      if t_name[t] <> all (allowed) then
        perform segmenter._template_fail(field, source, t_start[t], format('@%s does not take a {{#%s}} block', t_parent[t], t_name[t]),
          case when cardinality(allowed) > 0 then format('blocks of @%s: %s', t_parent[t], (select string_agg('{{#' || a || '}}', ', ') from unnest(allowed) a)) else 'remove the block' end);
      end if;
    end if;
    if t_type[t] = 'h' and t_name[t] = 'try' and t_blocks[t] <> 1 then
      perform segmenter._template_fail(field, source, t_start[t], '@try takes exactly one {{#catch}} block', 'write {{@try}}…{{#catch => e}}…{{/try}}');
    end if;
  end loop;

  -- 4. Each placeholder's SQL context.
  if dialect is not null then
    contexts := segmenter._scan_sql(field, source, dialect, kinds, texts, ats, names);
    for k in 1 .. cardinality(in_slots) loop
      if contexts[in_slots[k]] <> 'bare' then
        label := substring(source from t_start[in_tags[k]] + 1 for t_end[in_tags[k]] - t_start[in_tags[k]]);
        perform segmenter._template_fail(field, source, t_start[in_tags[k]], format('%s produces a list of literals and cannot stand inside quotes', label),
          'write IN ({{ it.batch | in("column") }}) without quotes');
      end if;
    end loop;
  end if;

  -- 5. Every interpolation must end in the hidden escaping filter the compiler appends: not when
  --    its parentheses do not balance (the filter would land inside them) or it asks for raw output.
  for t in 1 .. ntags loop
    if t_type[t] = 'i' and (t_parens[t] <> 0 or t_raw[t]) then
      perform segmenter._template_fail(field, source, t_start[t],
        'an interpolation would be written without SQL escaping (raw output is not allowed)',
        'use {{ value }} with no "*" or "| safe", and balance its parentheses');
    end if;
  end loop;

  -- 6. Member fields: lead.x, lead["x"] for lead and every name a helper binds with =>, and in("x").
  re := '(?<![A-Za-z0-9_$.])(?:' || (select string_agg(replace(b, '$', '\$'), '|') from unnest(bound) b) || ')'
        || '(?:\.([A-Za-z_$][A-Za-z0-9_$]*)|\[' || ws || '*(?:"([^"]+)"|''([^'']+)'')' || ws || '*\])';
  for t in 1 .. ntags loop
    content := substring(source from t_body[t] + 1 for t_close[t] - t_body[t]);
    for m in select regexp_matches(content, re, 'g') loop
      fields := fields || coalesce(m[1], m[2], m[3]);
    end loop;
    for m in select regexp_matches(content, '\|' || ws || '*in' || ws || '*\(' || ws || '*(?:"([^"]+)"|''([^'']+)'')', 'g') loop
      fields := fields || coalesce(m[1], m[2]);
    end loop;
  end loop;
  return fields;
end $$;
comment on function segmenter._squirrelly_fields is 'Private. Port of Squirrelly''s parser and the sidecar''s Squirrelly compiler checks: SG010 for a template it refuses, else the member fields it names. JavaScript syntax errors inside expressions are left to the sidecar.';

-- ---------------------------------------------------------------------------------------------
-- The checks create_subscription and alter_subscription run
-- ---------------------------------------------------------------------------------------------

create function segmenter._template_fields(field text, source text, syntax text, dialect text) returns text[]
language plpgsql immutable as $$
begin
  if source is null then return '{}'; end if;
  if syntax = 'altcraft' then return segmenter._altcraft_fields(field, source, dialect); end if;
  if syntax = 'squirrelly' then return segmenter._squirrelly_fields(field, source, dialect); end if;
  return '{}';
end $$;
comment on function segmenter._template_fields is 'Private. Check a template as the sidecar compiles it for the dialect (SG010 if it would refuse it); returns the member fields it names. A null dialect skips the SQL-context checks.';

create function segmenter._check_template(field text, source text, syntax text, dialect text) returns void
language plpgsql immutable as $$
begin
  perform segmenter._template_fields(field, source, syntax, dialect);
end $$;
comment on function segmenter._check_template(text, text, text, text) is 'Private. Refuse (SG010) a template the sidecar would not compile for this dialect.';

-- The 0001 signature, for callers that do not know the dialect: everything but the SQL contexts.
create or replace function segmenter._check_template(field text, source text, syntax text) returns void
language plpgsql immutable as $$
begin
  perform segmenter._template_fields(field, source, syntax, null);
end $$;
comment on function segmenter._check_template(text, text, text) is 'Private. Refuse (SG010) a template the sidecar would not compile, without the dialect-dependent checks; see the 4-argument form.';

-- A field resolves like the renderer's fieldValue: the exact column name, else the one column that
-- matches it case-insensitively; in every segment table of the scope.
create function segmenter._check_member_fields(field text, fields text[], segment_ids uuid[]) returns void
language plpgsql stable as $$
declare
  f text; t regclass; matches text[];
begin
  for f in select distinct x from unnest(fields) x loop
    for t in select g.table_name from segmenter.segments g where g.segment_id = any(segment_ids) and g.actual_end = 'infinity' loop
      continue when exists (select 1 from pg_attribute a where a.attrelid = t and a.attnum > 0 and not a.attisdropped and a.attname = f);
      select array_agg(a.attname::text order by a.attnum) into matches
      from pg_attribute a where a.attrelid = t and a.attnum > 0 and not a.attisdropped and lower(a.attname) = lower(f);
      if coalesce(cardinality(matches), 0) = 0 then
        perform segmenter._fail('SG010', format('%s: the template uses member field %L, which table %s does not have', field, f, t),
          format('use one of the columns of %s: %s', t, (select string_agg(attname, ', ' order by attnum) from pg_attribute where attrelid = t and attnum > 0 and not attisdropped)));
      elsif cardinality(matches) > 1 then
        perform segmenter._fail('SG010', format('%s: the template uses member field %L, which is ambiguous in table %s (%s)', field, f, t, array_to_string(matches, ', ')),
          'write the column''s exact name');
      end if;
    end loop;
  end loop;
end $$;
comment on function segmenter._check_member_fields is 'Private. Refuse (SG010) member fields a segment table of the scope has no column for.';

create or replace function segmenter._check_template_fields(field text, source text, syntax text, segment_ids uuid[]) returns void
language plpgsql stable as $$
begin
  perform segmenter._check_member_fields(field, segmenter._template_fields(field, source, syntax, null), segment_ids);
end $$;
comment on function segmenter._check_template_fields is 'Private. Refuse a template naming a member field its segment tables lack (SG010).';

-- Every template of a subscription, for its consumer's dialect and its scope. Member fields matter
-- in the templates that render members: add, remove and update (add renders updates without one).
create function segmenter._check_templates(syntax text, dialect text, segment_ids uuid[], add_sql text, remove_sql text,
  clear_sql text, update_sql text, segment_upsert_sql text, segment_delete_sql text) returns void
language plpgsql stable as $$
begin
  perform segmenter._check_member_fields('add_sql', segmenter._template_fields('add_sql', add_sql, syntax, dialect), segment_ids);
  perform segmenter._check_member_fields('remove_sql', segmenter._template_fields('remove_sql', remove_sql, syntax, dialect), segment_ids);
  perform segmenter._template_fields('clear_sql', clear_sql, syntax, dialect);
  perform segmenter._check_member_fields('update_sql', segmenter._template_fields('update_sql', update_sql, syntax, dialect), segment_ids);
  perform segmenter._template_fields('segment_upsert_sql', segment_upsert_sql, syntax, dialect);
  perform segmenter._template_fields('segment_delete_sql', segment_delete_sql, syntax, dialect);
end $$;
comment on function segmenter._check_templates is 'Private. Check all templates of a subscription for a dialect and scope (SG010).';

-- Same signature and checks as in 0001; templates are now checked for the consumer's dialect.
create or replace function segmenter.create_subscription(
  name text,
  consumer text,
  segments text[],
  add_sql text,
  remove_sql text,
  clear_sql text default null,
  segment_upsert_sql text default null,
  segment_delete_sql text default null,
  batch_size int default 1,
  batch_timeout interval default '0 s',
  syntax text default 'squirrelly',
  update_sql text default null,
  audience text default null,
  description text default null
) returns bigint
language plpgsql as $$
declare
  c segmenter.consumers;
  seg_ids uuid[] := '{}';
  seg text;
  sub_id bigint;
begin
  if name is null or btrim(name) = '' then
    perform segmenter._fail('SG012', 'name: a subscription needs a non-empty name', 'pass name => ''crm_sync''');
  end if;
  if exists (select 1 from segmenter.subscriptions s where s.name = create_subscription.name) then
    perform segmenter._fail('SG013', format('name: subscription %L already exists', name), 'pick another name, change it with segmenter.alter_subscription, or drop it first with segmenter.drop_subscription');
  end if;
  select * into c from segmenter.consumers where consumers.name = consumer;
  if not found then
    perform segmenter._fail('SG002', format('consumer: unknown consumer %L', consumer),
      'create it first with segmenter.create_consumer(name, kind, dialect, dsn_env)');
  end if;
  if segments is null or cardinality(segments) = 0 then
    perform segmenter._fail('SG012', 'segments: a subscription needs at least one segment', 'pass segments => array[''my_segment'']');
  end if;
  foreach seg in array segments loop
    seg_ids := seg_ids || (segmenter._segment(seg)).segment_id;
  end loop;
  if add_sql is null or btrim(add_sql) = '' then
    perform segmenter._fail('SG004', 'add_sql: the add template is mandatory', 'pass add_sql => ''insert into ... values ...''');
  end if;
  if remove_sql is null or btrim(remove_sql) = '' then
    perform segmenter._fail('SG004', 'remove_sql: the remove template is mandatory', 'pass remove_sql => ''delete from ... where ...''');
  end if;
  if batch_size is null or batch_size < 1 then
    perform segmenter._fail('SG005', format('batch_size: must be at least 1 (got %s)', coalesce(batch_size::text, 'null')), 'pass batch_size => 1 for one member per statement, or more to batch');
  end if;
  if batch_timeout is null or batch_timeout < interval '0' then
    perform segmenter._fail('SG006', format('batch_timeout: must not be negative (got %s)', coalesce(batch_timeout::text, 'null')), 'pass batch_timeout => ''0 s'' to flush at once, or e.g. ''2 s''');
  end if;
  if syntax is null or syntax not in ('squirrelly', 'altcraft') then
    perform segmenter._fail('SG008', format('syntax: %L is not a template syntax', syntax), 'use syntax => ''squirrelly'' ({{ it.segment_id }}) or ''altcraft'' ({segment_id}, {for $index, $lead = $batch} ... {end})');
  end if;
  perform segmenter._check_templates(syntax, c.dialect, seg_ids, add_sql, remove_sql, clear_sql, update_sql, segment_upsert_sql, segment_delete_sql);

  insert into segmenter.subscriptions (name, description, consumer_id, segment_ids, add_sql, remove_sql, clear_sql,
    update_sql, segment_upsert_sql, segment_delete_sql, syntax, batch_size, batch_timeout, audience)
  values (name, description, c.consumer_id, seg_ids, add_sql, remove_sql, clear_sql,
    update_sql, segment_upsert_sql, segment_delete_sql, syntax, batch_size, batch_timeout, audience)
  returning subscription_id into sub_id;
  -- A new subscription starts like a resync (without the clear): every segment and all current
  -- members, then the changes after that snapshot.
  perform segmenter._start_sync(sub_id, false);
  return sub_id;
end $$;
comment on function segmenter.create_subscription is 'Create a subscription: deliver the given segments to a consumer with these templates. Templates are checked now, for the consumer''s dialect, as the sidecar compiles them (SG010); delivery starts with segment_upsert and every current member, then follows the changes. Returns subscription_id.';

create function segmenter.alter_subscription(
  name text,
  add_sql text default null,
  remove_sql text default null,
  clear_sql text default null,
  update_sql text default null,
  segment_upsert_sql text default null,
  segment_delete_sql text default null,
  batch_size int default null,
  batch_timeout interval default null,
  description text default null,
  audience text default null
) returns bigint
language plpgsql as $$
declare
  s segmenter.subscriptions := segmenter._subscription(name);
  dialect text;
  -- null keeps the current value; '' (or only whitespace) removes an optional one
  new_add text; new_remove text; new_clear text; new_update text; new_upsert text; new_delete text;
begin
  select * into s from segmenter.subscriptions where subscription_id = s.subscription_id for update;
  select c.dialect into dialect from segmenter.consumers c where c.consumer_id = s.consumer_id;
  new_add := coalesce(alter_subscription.add_sql, s.add_sql);
  new_remove := coalesce(alter_subscription.remove_sql, s.remove_sql);
  new_clear := case when alter_subscription.clear_sql is null then s.clear_sql
                    when btrim(alter_subscription.clear_sql) = '' then null else alter_subscription.clear_sql end;
  new_update := case when alter_subscription.update_sql is null then s.update_sql
                     when btrim(alter_subscription.update_sql) = '' then null else alter_subscription.update_sql end;
  new_upsert := case when alter_subscription.segment_upsert_sql is null then s.segment_upsert_sql
                     when btrim(alter_subscription.segment_upsert_sql) = '' then null else alter_subscription.segment_upsert_sql end;
  new_delete := case when alter_subscription.segment_delete_sql is null then s.segment_delete_sql
                     when btrim(alter_subscription.segment_delete_sql) = '' then null else alter_subscription.segment_delete_sql end;
  if btrim(new_add) = '' then
    perform segmenter._fail('SG004', 'add_sql: the add template is mandatory and cannot be removed', 'pass add_sql => ''insert into ... values ...'', or leave it out to keep the current one');
  end if;
  if btrim(new_remove) = '' then
    perform segmenter._fail('SG004', 'remove_sql: the remove template is mandatory and cannot be removed', 'pass remove_sql => ''delete from ... where ...'', or leave it out to keep the current one');
  end if;
  if alter_subscription.batch_size < 1 then
    perform segmenter._fail('SG005', format('batch_size: must be at least 1 (got %s)', alter_subscription.batch_size), 'pass batch_size => 1 for one member per statement, or more to batch');
  end if;
  if alter_subscription.batch_timeout < interval '0' then
    perform segmenter._fail('SG006', format('batch_timeout: must not be negative (got %s)', alter_subscription.batch_timeout), 'pass batch_timeout => ''0 s'' to flush at once, or e.g. ''2 s''');
  end if;
  perform segmenter._check_templates(s.syntax, dialect, s.segment_ids, new_add, new_remove, new_clear, new_update, new_upsert, new_delete);

  update segmenter.subscriptions u set
    add_sql = new_add, remove_sql = new_remove, clear_sql = new_clear, update_sql = new_update,
    segment_upsert_sql = new_upsert, segment_delete_sql = new_delete,
    batch_size = coalesce(alter_subscription.batch_size, s.batch_size),
    batch_timeout = coalesce(alter_subscription.batch_timeout, s.batch_timeout),
    description = case when alter_subscription.description is null then s.description else nullif(alter_subscription.description, '') end,
    audience = case when alter_subscription.audience is null then s.audience else nullif(alter_subscription.audience, '') end
  where u.subscription_id = s.subscription_id;
  -- Whatever held it (a template that did not compile, ...) was about this configuration: let the
  -- sidecar try again now; it holds it again if the cause is still there.
  perform segmenter._release_subscription(s.subscription_id);
  perform segmenter._wake(s.segment_ids);
  return s.subscription_id;
end $$;
comment on function segmenter.alter_subscription is 'Change a subscription in place: only the arguments passed (null keeps a value; an empty string removes an optional template, the description or the audience). Runs the checks of create_subscription (SG004/5/6/10; SG011 if unknown), keeps the delivery cursor, sync key and dead letters, clears an error state the sidecar set, and wakes delivery. Returns subscription_id.';

insert into segmenter.migrations (id, name) values (7, '0007_templates');
