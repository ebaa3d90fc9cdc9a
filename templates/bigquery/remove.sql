-- segment_members (segment_id, member_id, updated): delete the batch's members
DELETE FROM segment_members WHERE segment_id = {segment_id} AND member_id IN ({batch_in "id"})
