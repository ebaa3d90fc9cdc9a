-- MySQL/MariaDB: segment_members (segment_id, member_id, updated) unique (segment_id, member_id); segments (segment_id, name, updated)
-- utf8mb4_bin compares ids byte for byte (but, being PAD SPACE, ignores trailing spaces; MariaDB has utf8mb4_nopad_bin)
CREATE TABLE IF NOT EXISTS segment_members (
  segment_id varchar(64) NOT NULL,
  member_id varchar(255) NOT NULL,
  updated datetime(6) NOT NULL,
  PRIMARY KEY (segment_id, member_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS segments (
  segment_id varchar(64) NOT NULL PRIMARY KEY,
  name varchar(255) NOT NULL,
  updated datetime(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
