-- segments (segment_id, name, updated) primary key (segment_id): insert or rename the segment
INSERT INTO segments (segment_id, name, updated) VALUES ({segment_id}, {segment_name}, UTC_TIMESTAMP(6))
ON DUPLICATE KEY UPDATE name = {segment_name}, updated = UTC_TIMESTAMP(6)
