-- BigQuery: segment_members (segment_id, member_id, updated) unique (segment_id, member_id); segments (segment_id, name, updated)
-- Keys are NOT ENFORCED in BigQuery: the MERGE templates keep them unique. Qualify as dataset.table unless the job sets a default dataset.
CREATE TABLE IF NOT EXISTS segment_members (
  segment_id STRING NOT NULL,
  member_id STRING NOT NULL,
  updated TIMESTAMP NOT NULL,
  PRIMARY KEY (segment_id, member_id) NOT ENFORCED
)
CLUSTER BY segment_id, member_id;

CREATE TABLE IF NOT EXISTS segments (
  segment_id STRING NOT NULL,
  name STRING NOT NULL,
  updated TIMESTAMP NOT NULL,
  PRIMARY KEY (segment_id) NOT ENFORCED
);
