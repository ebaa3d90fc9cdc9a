-- ClickHouse: segment_members (segment_id, member_id, updated) unique (segment_id, member_id); segments (segment_id, name, updated)
-- ReplacingMergeTree keeps the newest row per ORDER BY key after merges: read with FINAL (or argMax) for exact contents
CREATE TABLE IF NOT EXISTS segment_members (
  segment_id String,
  member_id String,
  updated DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(updated)
ORDER BY (segment_id, member_id);

CREATE TABLE IF NOT EXISTS segments (
  segment_id String,
  name String,
  updated DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(updated)
ORDER BY segment_id;
