-- Oracle: segment_members (segment_id, member_id, updated) unique (segment_id, member_id); segments (segment_id, name, updated)
-- Oracle reads '' as NULL, so an empty member id is rejected (NOT NULL) and dead-lettered
CREATE TABLE segment_members (
  segment_id VARCHAR2(64 CHAR) NOT NULL,
  member_id VARCHAR2(255 CHAR) NOT NULL,
  updated TIMESTAMP NOT NULL,
  CONSTRAINT pk_segment_members PRIMARY KEY (segment_id, member_id)
);

CREATE TABLE segments (
  segment_id VARCHAR2(64 CHAR) NOT NULL CONSTRAINT pk_segments PRIMARY KEY,
  name VARCHAR2(255 CHAR) NOT NULL,
  updated TIMESTAMP NOT NULL
);
