-- segments (segment_id, name, updated) primary key (segment_id): insert or rename the segment
MERGE INTO segments t
USING (SELECT {segment_id} AS segment_id, {segment_name} AS name FROM dual) s
ON (t.segment_id = s.segment_id)
WHEN MATCHED THEN UPDATE SET t.name = s.name, t.updated = SYS_EXTRACT_UTC(SYSTIMESTAMP)
WHEN NOT MATCHED THEN INSERT (segment_id, name, updated) VALUES (s.segment_id, s.name, SYS_EXTRACT_UTC(SYSTIMESTAMP))
