-- SQL Server: segment_members (segment_id, member_id, updated) unique (segment_id, member_id); segments (segment_id, name, updated)
-- BIN2 collation: ids compare exactly (case and accents count); 2 * (64 + 255) bytes fits the 900-byte key limit
CREATE TABLE segment_members (
  segment_id nvarchar(64) COLLATE Latin1_General_100_BIN2 NOT NULL,
  member_id nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL,
  updated datetime2(3) NOT NULL,
  CONSTRAINT pk_segment_members PRIMARY KEY (segment_id, member_id)
);

CREATE TABLE segments (
  segment_id nvarchar(64) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT pk_segments PRIMARY KEY,
  name nvarchar(255) NOT NULL,
  updated datetime2(3) NOT NULL
);
