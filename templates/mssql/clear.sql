-- segment_members (segment_id, member_id, updated): delete every member of the segment
DELETE FROM segment_members WHERE segment_id = {segment_id};
