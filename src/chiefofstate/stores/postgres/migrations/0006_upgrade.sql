-- Upstream's only upgrade step: version 5 (Namely 0.9.x) to 6 adds the read-side pause flags.

CREATE TABLE IF NOT EXISTS read_sides (
    projection_name VARCHAR(255) NOT NULL,
    projection_key  VARCHAR(255) NOT NULL,
    paused          BOOLEAN      NOT NULL,
    last_updated    BIGINT       NOT NULL,
    PRIMARY KEY (projection_name, projection_key)
);
