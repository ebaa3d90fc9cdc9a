-- PostgreSQL: segment_members (segment_id, member_id, updated) unique (segment_id, member_id); segments (segment_id, name, updated)
CREATE TABLE IF NOT EXISTS segment_members (
  segment_id text NOT NULL,
  member_id text NOT NULL,
  updated timestamptz NOT NULL,
  PRIMARY KEY (segment_id, member_id)
);

CREATE TABLE IF NOT EXISTS segments (
  segment_id text PRIMARY KEY,
  name text NOT NULL,
  updated timestamptz NOT NULL
);
