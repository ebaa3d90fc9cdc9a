-- segments (segment_id, name, updated) primary key (segment_id): insert or rename the segment
MERGE segments t
USING (SELECT {segment_id} AS segment_id, {segment_name} AS name) s
ON t.segment_id = s.segment_id
WHEN MATCHED THEN UPDATE SET name = s.name, updated = CURRENT_TIMESTAMP()
WHEN NOT MATCHED THEN INSERT (segment_id, name, updated) VALUES (s.segment_id, s.name, CURRENT_TIMESTAMP())
