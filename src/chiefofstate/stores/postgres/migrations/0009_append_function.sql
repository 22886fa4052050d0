-- Additive (decision D2): one stored function that appends a whole group-commit batch, so the journal
-- writes a batch in one round trip instead of five (BEGIN, shard locks, append, notify, COMMIT).
--
-- It is created in the configured schema (the migration runs with search_path = COS_DB_SCHEMA) and
-- names its tables unqualified, so they resolve through the caller's search_path like every other
-- journal statement. It must stay VOLATILE: under READ COMMITTED each statement of a volatile function
-- takes a fresh snapshot, so the revisions read after the shard locks are held include every append
-- that committed before we got them.
--
-- Called as one autocommitted statement: the statement is the transaction, and the notification is
-- delivered at its commit. Arguments: the batch's distinct shards in ascending order; per request the
-- entity id and expected revision; per event (requests' events in order) entity id, sequence number,
-- writer, write timestamp, payload and shard tag. Returns each request's revision as found under the
-- locks; a request was written exactly when that equals its expected revision.
CREATE OR REPLACE FUNCTION cos_append_events(
    shard_numbers      INTEGER[],
    entity_ids         TEXT[],
    expected_sequences BIGINT[],
    event_entity_ids   TEXT[],
    event_sequences    BIGINT[],
    event_writers      TEXT[],
    event_timestamps   BIGINT[],
    event_payloads     BYTEA[],
    event_tags         TEXT[]
)
RETURNS TABLE (entity_id TEXT, current_sequence BIGINT)
LANGUAGE plpgsql
VOLATILE
AS $function$
DECLARE
    locked_shards   INTEGER;
    current_by_id   BIGINT[];
    inserted_events BIGINT;
BEGIN
    -- Decision D3: the shards' rows are locked, in shard order, before any `ordering` value is drawn,
    -- so within one shard `ordering` grows in commit order.
    SELECT count(*) INTO locked_shards FROM (
        SELECT 1 FROM cos_shard_locks l WHERE l.shard = ANY (shard_numbers) ORDER BY l.shard FOR UPDATE
    ) AS held;
    IF locked_shards < cardinality(shard_numbers) THEN
        -- A shard beyond the ones created at boot (COS_NUM_SHARDS raised): add its row, lock them all.
        INSERT INTO cos_shard_locks (shard) SELECT unnest(shard_numbers) ORDER BY 1 ON CONFLICT (shard) DO NOTHING;
        PERFORM 1 FROM cos_shard_locks l WHERE l.shard = ANY (shard_numbers) ORDER BY l.shard FOR UPDATE;
    END IF;

    -- A new statement, so a new snapshot: exact for every writer that takes the shard locks.
    SELECT array_agg(
               COALESCE((SELECT max(j.sequence_number) FROM event_journal j WHERE j.persistence_id = r.pid), 0)
               ORDER BY r.position)
        INTO current_by_id
        FROM unnest(entity_ids) WITH ORDINALITY AS r(pid, position);

    -- Requests whose expected revision differs (a stale writer, or a gap) insert nothing.
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
        JOIN unnest(entity_ids, expected_sequences, current_by_id) AS r(pid, expected, current)
            ON r.pid = e.pid
        WHERE r.current = r.expected
        ORDER BY e.position
        RETURNING ordering, persistence_id, sequence_number
    )
    INSERT INTO event_tag (event_id, tag)
    SELECT i.ordering, e.tag
    FROM inserted i JOIN ev e ON e.pid = i.persistence_id AND e.seq = i.sequence_number;
    GET DIAGNOSTICS inserted_events = ROW_COUNT;

    IF inserted_events > 0 THEN
        -- Wakes read-side projections on every node (stores/postgres/wakeups.py); delivered at commit only.
        PERFORM pg_notify('cos_journal_appended', array_to_string(shard_numbers, ','));
    END IF;

    RETURN QUERY SELECT r.pid, r.current FROM unnest(entity_ids, current_by_id) AS r(pid, current);
END
$function$;
