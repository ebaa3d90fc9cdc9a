-- segment_members (segment_id, member_id, updated) unique (segment_id, member_id): upsert the batch
MERGE segment_members t
USING (SELECT * FROM UNNEST(ARRAY<STRUCT<segment_id STRING, member_id STRING>>[
{for $index, $lead = $batch}
  ({segment_id}, {$lead.id}){autocomma}
{end}
])) s
ON t.segment_id = s.segment_id AND t.member_id = s.member_id
WHEN MATCHED THEN UPDATE SET updated = CURRENT_TIMESTAMP()
WHEN NOT MATCHED THEN INSERT (segment_id, member_id, updated) VALUES (s.segment_id, s.member_id, CURRENT_TIMESTAMP())
