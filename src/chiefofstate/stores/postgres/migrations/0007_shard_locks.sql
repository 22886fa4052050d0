-- First project-only version (decision D2: additive, nothing upstream reads is altered).
--
-- One row per entity shard. Every append locks the rows of its shards, in shard order, before it draws
-- `ordering` values, so within a shard `ordering` grows in commit order (decision D3). The cluster work
-- will match `lease_token` in that same lock statement to fence writers that lost their lease.
CREATE TABLE IF NOT EXISTS cos_shard_locks (
    shard       INTEGER PRIMARY KEY,
    lease_token BIGINT  NOT NULL DEFAULT 0
);

-- The index on event_tag (tag, event_id) that projections read through is not built here: a plain
-- CREATE INDEX in this transaction would stop upstream's and this project's appends for as long as it
-- reads a large journal. It is built after the versioned scripts with CREATE INDEX CONCURRENTLY
-- (stores/postgres/online_indexes.py). A database migrated by an earlier release has it already.
