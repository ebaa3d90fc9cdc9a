-- segments (segment_id, name, updated): forget the segment (its members go with clear; lightweight DELETE)
DELETE FROM segments WHERE segment_id = {segment_id}
