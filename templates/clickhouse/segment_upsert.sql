-- segments (segment_id, name, version, deleted) ReplacingMergeTree(version): the segment's name as of this version
INSERT INTO segments (segment_id, name, version, deleted) VALUES ({segment_id}, {segment_name}, {version}, 0)
