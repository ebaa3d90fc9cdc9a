-- segments (segment_id, name, updated) ReplacingMergeTree(updated) ORDER BY segment_id: the newest name wins; updated defaults to now64(3)
INSERT INTO segments (segment_id, name) VALUES ({segment_id}, {segment_name})
