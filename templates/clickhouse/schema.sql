-- ClickHouse: segment_members (segment_id, member_id, version, deleted), segments (segment_id, name, version, deleted)
-- ReplacingMergeTree(version): per key the row of the highest version is the state (a remove or a clear writes a row with deleted = 1).
-- Read with FINAL … WHERE deleted = 0, or from the two views. Works on ClickHouse 18.16 and 26.7.
CREATE TABLE IF NOT EXISTS segment_members (
  segment_id String,
  member_id String,
  version UInt64,
  deleted UInt8,
  updated DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree(version)
ORDER BY (segment_id, member_id);

CREATE TABLE IF NOT EXISTS segments (
  segment_id String,
  name String,
  version UInt64,
  deleted UInt8,
  updated DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree(version)
ORDER BY segment_id;

CREATE VIEW IF NOT EXISTS current_segment_members AS
SELECT segment_id, member_id, version, updated FROM segment_members FINAL WHERE deleted = 0;

CREATE VIEW IF NOT EXISTS current_segments AS
SELECT segment_id, name, version, updated FROM segments FINAL WHERE deleted = 0;
