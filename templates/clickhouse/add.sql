-- segment_members (segment_id, member_id, updated) ReplacingMergeTree(updated) ORDER BY (segment_id, member_id): insert the batch; updated defaults to now64(3)
INSERT INTO segment_members (segment_id, member_id) VALUES
{for $index, $lead = $batch}
  ({segment_id}, {$lead.id}){autocomma}
{end}
