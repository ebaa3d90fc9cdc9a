-- segment_members (segment_id, member_id, version, deleted): a tombstone (deleted = 1) of the batch's version per member
INSERT INTO segment_members (segment_id, member_id, version, deleted) VALUES
{for $index, $lead = $batch}
  ({segment_id}, {$lead.id}, {version}, 1){autocomma}
{end}
