-- segment_members (segment_id, member_id, updated) unique (segment_id, member_id): upsert the batch
MERGE INTO segment_members WITH (HOLDLOCK) AS t
USING (VALUES
{for $index, $lead = $batch}
  ({segment_id}, {$lead.id}){autocomma}
{end}
) AS s (segment_id, member_id)
ON t.segment_id = s.segment_id AND t.member_id = s.member_id
WHEN MATCHED THEN UPDATE SET updated = SYSUTCDATETIME()
WHEN NOT MATCHED THEN INSERT (segment_id, member_id, updated) VALUES (s.segment_id, s.member_id, SYSUTCDATETIME());
