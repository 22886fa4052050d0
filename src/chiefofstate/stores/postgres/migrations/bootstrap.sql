-- Migration history, as upstream keeps it (docs/contract.md §4.2, §4.6).
CREATE TABLE IF NOT EXISTS cos_migrations (
    version_number INT PRIMARY KEY NOT NULL,
    upgraded_at    BIGINT,
    is_snapshot    BOOLEAN
);
