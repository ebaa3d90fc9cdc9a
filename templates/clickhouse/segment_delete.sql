-- segments (segment_id, name, version, deleted): a tombstone for the segment (its members go with clear)
INSERT INTO segments (segment_id, name, version, deleted) VALUES ({segment_id}, {segment_name}, {version}, 1)
