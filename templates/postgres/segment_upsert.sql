-- segments (segment_id, name, updated) primary key (segment_id): insert or rename the segment
INSERT INTO segments (segment_id, name, updated) VALUES ({segment_id}, {segment_name}, now())
ON CONFLICT (segment_id) DO UPDATE SET name = excluded.name, updated = excluded.updated
