-- segment_members (segment_id, member_id, updated) unique (segment_id, member_id): upsert the batch
INSERT INTO segment_members (segment_id, member_id, updated) VALUES
{for $index, $lead = $batch}
  ({segment_id}, {$lead.id}, UTC_TIMESTAMP(6)){autocomma}
{end}
ON DUPLICATE KEY UPDATE updated = UTC_TIMESTAMP(6)
