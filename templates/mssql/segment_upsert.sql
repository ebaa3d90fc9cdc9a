-- segments (segment_id, name, updated) primary key (segment_id): insert or rename the segment
MERGE INTO segments WITH (HOLDLOCK) AS t
USING (VALUES ({segment_id}, {segment_name})) AS s (segment_id, name)
ON t.segment_id = s.segment_id
WHEN MATCHED THEN UPDATE SET name = s.name, updated = SYSUTCDATETIME()
WHEN NOT MATCHED THEN INSERT (segment_id, name, updated) VALUES (s.segment_id, s.name, SYSUTCDATETIME());
