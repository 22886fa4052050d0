-- Additive (decision D2): the tables a cluster of nodes on one database agrees through. Membership and
-- ownership live here, and every expiry is judged by the database's clock (now()), never a node's: the
-- nodes' clocks may disagree, the database's is the one they all read.

-- One row per node that ever joined. A node draws a fresh member id at every start, so a restarted node
-- is a new member and its old row simply stops being live.
CREATE TABLE IF NOT EXISTS cos_cluster_members (
    member_id    TEXT        PRIMARY KEY,
    -- host:port of the node's internal gRPC service, where other nodes forward requests
    address      TEXT        NOT NULL,
    -- COS_NUM_SHARDS of the node: every live member must run with the same number
    num_shards   INTEGER     NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- set when the node leaves or is evicted; its heartbeats are then refused
    left_at      TIMESTAMPTZ NULL
);

-- Entity-shard leases live on the shard's lock row (migration 7), which every append already locks:
-- the append compares its lease token with `lease_token` under that lock, so a writer that lost the
-- lease is fenced without any extra round trip. Adding nullable columns rewrites nothing.
ALTER TABLE cos_shard_locks
    ADD COLUMN IF NOT EXISTS owner      TEXT        NULL,
    ADD COLUMN IF NOT EXISTS expires_at TIMESTAMPTZ NULL;

-- One lease per (read side, shard): the one node that runs that projection. The token grows at every
-- acquisition, as on cos_shard_locks, so a stale owner can be told apart from the current one.
CREATE TABLE IF NOT EXISTS cos_projection_leases (
    read_side_id TEXT        NOT NULL,
    shard        INTEGER     NOT NULL,
    owner        TEXT        NULL,
    lease_token  BIGINT      NOT NULL DEFAULT 0,
    expires_at   TIMESTAMPTZ NULL,
    PRIMARY KEY (read_side_id, shard)
);
