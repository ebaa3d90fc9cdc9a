-- segment_members (segment_id, member_id, updated) unique (segment_id, member_id): upsert the batch
INSERT INTO segment_members (segment_id, member_id, updated) VALUES
{for $index, $lead = $batch}
  ({segment_id}, {$lead.id}, now()){autocomma}
{end}
ON CONFLICT (segment_id, member_id) DO UPDATE SET updated = excluded.updated
