-- Upstream's schema version 6 (docs/contract.md §4.2) in SQLite: same tables, columns and encodings, so rows can
-- be copied between the embedded store and PostgreSQL unchanged (decision D2). `ordering` is the rowid
-- (AUTOINCREMENT so values are never reused after a delete, like a sequence), which makes upstream's
-- separate unique index on it unnecessary; the primary key of PostgreSQL becomes a UNIQUE constraint.

CREATE TABLE IF NOT EXISTS event_journal (
    ordering           INTEGER PRIMARY KEY AUTOINCREMENT,
    persistence_id     VARCHAR(255)          NOT NULL,
    sequence_number    BIGINT                NOT NULL,
    deleted            BOOLEAN DEFAULT FALSE NOT NULL,
    writer             VARCHAR(255)          NOT NULL,
    write_timestamp    BIGINT,
    adapter_manifest   VARCHAR(255),
    event_ser_id       INTEGER               NOT NULL,
    event_ser_manifest VARCHAR(255)          NOT NULL,
    event_payload      BLOB                  NOT NULL,
    meta_ser_id        INTEGER,
    meta_ser_manifest  VARCHAR(255),
    meta_payload       BLOB,
    UNIQUE (persistence_id, sequence_number)
);

CREATE TABLE IF NOT EXISTS event_tag (
    event_id BIGINT       NOT NULL,
    tag      VARCHAR(256) NOT NULL,
    PRIMARY KEY (event_id, tag),
    CONSTRAINT fk_event_journal
        FOREIGN KEY (event_id) REFERENCES event_journal (ordering) ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS state_snapshot (
    persistence_id        VARCHAR(255) NOT NULL,
    sequence_number       BIGINT       NOT NULL,
    created               BIGINT       NOT NULL,
    snapshot_ser_id       INTEGER      NOT NULL,
    snapshot_ser_manifest VARCHAR(255) NOT NULL,
    snapshot_payload      BLOB         NOT NULL,
    meta_ser_id           INTEGER,
    meta_ser_manifest     VARCHAR(255),
    meta_payload          BLOB,
    PRIMARY KEY (persistence_id, sequence_number)
);

CREATE TABLE IF NOT EXISTS read_side_offsets (
    projection_name VARCHAR(255) NOT NULL,
    projection_key  VARCHAR(255) NOT NULL,
    current_offset  VARCHAR(255) NOT NULL,
    manifest        VARCHAR(4)   NOT NULL,
    mergeable       BOOLEAN      NOT NULL,
    last_updated    BIGINT       NOT NULL,
    PRIMARY KEY (projection_name, projection_key)
);

CREATE INDEX IF NOT EXISTS projection_name_index ON read_side_offsets (projection_name);

CREATE TABLE IF NOT EXISTS read_sides (
    projection_name VARCHAR(255) NOT NULL,
    projection_key  VARCHAR(255) NOT NULL,
    paused          BOOLEAN      NOT NULL,
    last_updated    BIGINT       NOT NULL,
    PRIMARY KEY (projection_name, projection_key)
);
