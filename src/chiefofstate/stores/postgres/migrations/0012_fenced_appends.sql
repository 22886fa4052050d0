-- Additive (decision D2): cos_append_events (migration 9) learns to fence appends by lease token.
--
-- A request may carry the lease token under which its node owns the request's entity shard. Under the
-- shard's lock (decision D3) the function compares that token with cos_shard_locks.lease_token, which
-- every lease acquisition raises (migration 11): a request whose token is not the current one writes
-- nothing, while the batch's other requests commit. Acquiring a lease updates the same row, so it waits
-- for an append holding the lock and every append after it sees the new token: an append of a node that
-- lost the shard (a long pause, a partition) can never land after the new owner has taken over. Only
-- the token is compared, not the expiry: as long as the token is unchanged nobody else has owned the
-- shard, so nothing another owner wrote can be overtaken.
--
-- The two new arguments come last and default to NULL, which is "no request is fenced": a node of the
-- previous release, which passes nine arguments, keeps appending during a rolling upgrade. Adding
-- arguments and a result column changes the function's signature, so it is dropped and created again;
-- the migration's transaction makes the swap atomic for callers.
DROP FUNCTION IF EXISTS cos_append_events(INTEGER[], TEXT[], BIGINT[], TEXT[], BIGINT[], TEXT[], BIGINT[],
                                          BYTEA[], TEXT[]);

-- Arguments as in migration 9, then per request: its shard and its lease token (NULL: unfenced).
-- Returns each request's revision as found under the locks and whether its lease token is current
-- (always true for an unfenced request); a request was written exactly when its revision equals its
-- expected revision and its lease is current.
CREATE FUNCTION cos_append_events(
    shard_numbers      INTEGER[],
    entity_ids         TEXT[],
    expected_sequences BIGINT[],
    event_entity_ids   TEXT[],
    event_sequences    BIGINT[],
    event_writers      TEXT[],
    event_timestamps   BIGINT[],
    event_payloads     BYTEA[],
    event_tags         TEXT[],
    request_shards     INTEGER[] DEFAULT NULL,
    lease_tokens       BIGINT[]  DEFAULT NULL
)
RETURNS TABLE (entity_id TEXT, current_sequence BIGINT, lease_held BOOLEAN)
LANGUAGE plpgsql
VOLATILE
AS $function$
DECLARE
    locked_shards   INTEGER;
    locked_numbers  INTEGER[];
    locked_tokens   BIGINT[];
    current_by_id   BIGINT[];
    held_by_id      BOOLEAN[];
    inserted_events BIGINT;
BEGIN
    -- Decision D3: the shards' rows are locked, in shard order, before any `ordering` value is drawn,
    -- so within one shard `ordering` grows in commit order. A locked row is read as last committed, so
    -- the tokens read here are current and stay so until this transaction ends.
    SELECT count(*), array_agg(held.shard), array_agg(held.lease_token)
        INTO locked_shards, locked_numbers, locked_tokens
        FROM (
            SELECT l.shard, l.lease_token FROM cos_shard_locks l
            WHERE l.shard = ANY (shard_numbers) ORDER BY l.shard FOR UPDATE
        ) AS held;
    IF locked_shards < cardinality(shard_numbers) THEN
        -- A shard beyond the ones created at boot (COS_NUM_SHARDS raised): add its row, lock them all.
        INSERT INTO cos_shard_locks (shard) SELECT unnest(shard_numbers) ORDER BY 1 ON CONFLICT (shard) DO NOTHING;
        SELECT array_agg(held.shard), array_agg(held.lease_token)
            INTO locked_numbers, locked_tokens
            FROM (
                SELECT l.shard, l.lease_token FROM cos_shard_locks l
                WHERE l.shard = ANY (shard_numbers) ORDER BY l.shard FOR UPDATE
            ) AS held;
    END IF;

    -- A new statement, so a new snapshot: exact for every writer that takes the shard locks. A fenced
    -- request holds its lease when its token is its shard's current one; NULL arrays (nothing fenced)
    -- unnest as NULLs, so every request holds.
    SELECT array_agg(
               COALESCE((SELECT max(j.sequence_number) FROM event_journal j WHERE j.persistence_id = r.pid), 0)
               ORDER BY r.position),
           array_agg(
               r.token IS NULL
               OR r.token IS NOT DISTINCT FROM locked_tokens[array_position(locked_numbers, r.shard)]
               ORDER BY r.position)
        INTO current_by_id, held_by_id
        FROM unnest(entity_ids, request_shards, lease_tokens) WITH ORDINALITY AS r(pid, shard, token, position);

    -- Requests whose expected revision differs (a stale writer, or a gap) or whose lease moved on
    -- insert nothing.
    WITH ev AS (
        SELECT * FROM unnest(event_entity_ids, event_sequences, event_writers, event_timestamps,
                             event_payloads, event_tags)
            WITH ORDINALITY AS e(pid, seq, writer, ts, payload, tag, position)
    ),
    inserted AS (
        INSERT INTO event_journal (persistence_id, sequence_number, deleted, writer, write_timestamp,
                                   adapter_manifest, event_ser_id, event_ser_manifest, event_payload)
        SELECT e.pid, e.seq, FALSE, e.writer, e.ts, '', 5001, 'chief_of_state.v1.EventWrapper', e.payload
        FROM ev e
        JOIN unnest(entity_ids, expected_sequences, current_by_id, held_by_id)
            AS r(pid, expected, current, held)
            ON r.pid = e.pid
        WHERE r.current = r.expected AND r.held
        ORDER BY e.position
        RETURNING ordering, persistence_id, sequence_number
    )
    INSERT INTO event_tag (event_id, tag)
    SELECT i.ordering, e.tag
    FROM inserted i JOIN ev e ON e.pid = i.persistence_id AND e.seq = i.sequence_number;
    GET DIAGNOSTICS inserted_events = ROW_COUNT;

    IF inserted_events > 0 THEN
        -- Wakes read-side projections on every node (readside/pg_wakeups); delivered at commit only.
        PERFORM pg_notify('cos_journal_appended', array_to_string(shard_numbers, ','));
    END IF;

    RETURN QUERY
    SELECT r.pid, r.current, r.held FROM unnest(entity_ids, current_by_id, held_by_id) AS r(pid, current, held);
END
$function$;
