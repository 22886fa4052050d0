-- First project-only version (decision D2: additive, nothing upstream reads is altered).
--
-- One row per entity shard. Every append locks the rows of its shards, in shard order, before it draws
-- `ordering` values, so within a shard `ordering` grows in commit order (decision D3). The cluster work
-- will match `lease_token` in that same lock statement to fence writers that lost their lease.
CREATE TABLE IF NOT EXISTS cos_shard_locks (
    shard       INTEGER PRIMARY KEY,
    lease_token BIGINT  NOT NULL DEFAULT 0
);

-- Projections read "tag = s AND event_id > offset ORDER BY event_id"; upstream's primary key leads with
-- event_id, which makes a replay scan every shard's rows to find one shard's.
CREATE INDEX IF NOT EXISTS cos_event_tag_by_tag_idx ON event_tag (tag, event_id);
