-- Projections halted by STOP / REPLAY_STOP stay halted across restarts until an operator resumes,
-- restarts or skips them (decision D7). Upstream keeps no such record (a halted projection starts
-- again on the next boot and fails on the same event), so this is an additive project table; the
-- upstream tables read_side_offsets and read_sides are left exactly as they are (decision D2).
CREATE TABLE IF NOT EXISTS cos_read_side_halts (
    projection_name VARCHAR(255) NOT NULL,  -- read side id, as read_side_offsets
    projection_key  VARCHAR(255) NOT NULL,  -- shard number as text, as read_side_offsets
    event_offset    BIGINT       NOT NULL,  -- event_journal.ordering of the event it stopped on
    reason          TEXT         NOT NULL,  -- the last failure, for operators
    halted_at       BIGINT       NOT NULL,  -- epoch millis
    PRIMARY KEY (projection_name, projection_key)
);
