-- segment_members (segment_id, member_id, version, deleted) ReplacingMergeTree(version): the batch's members as rows of its version
INSERT INTO segment_members (segment_id, member_id, version, deleted) VALUES
{for $index, $lead = $batch}
  ({segment_id}, {$lead.id}, {version}, 0){autocomma}
{end}
