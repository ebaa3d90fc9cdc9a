-- segments (segment_id, name, updated) primary key (segment_id): forget the segment (its members go with clear)
DELETE FROM segments WHERE segment_id = {segment_id}
