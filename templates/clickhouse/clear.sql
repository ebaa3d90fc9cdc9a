-- segment_members (segment_id, member_id, version, deleted): a tombstone of the clear's version for every member the target holds in the segment
INSERT INTO segment_members (segment_id, member_id, version, deleted)
SELECT segment_id, member_id, {version}, 1 FROM segment_members FINAL
WHERE segment_id = {segment_id} AND deleted = 0 AND version < {version}
