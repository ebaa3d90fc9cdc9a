-- segment_members (segment_id, member_id, updated) unique (segment_id, member_id): upsert the batch (no trailing ";": Oracle drivers reject it)
MERGE INTO segment_members t
USING (
  SELECT CAST(NULL AS VARCHAR2(64 CHAR)) AS segment_id, CAST(NULL AS VARCHAR2(255 CHAR)) AS member_id FROM dual WHERE 1 = 0
{for $index, $lead = $batch}
  UNION ALL SELECT {segment_id}, {$lead.id} FROM dual
{end}
) s
ON (t.segment_id = s.segment_id AND t.member_id = s.member_id)
WHEN MATCHED THEN UPDATE SET t.updated = SYS_EXTRACT_UTC(SYSTIMESTAMP)
WHEN NOT MATCHED THEN INSERT (segment_id, member_id, updated) VALUES (s.segment_id, s.member_id, SYS_EXTRACT_UTC(SYSTIMESTAMP))
