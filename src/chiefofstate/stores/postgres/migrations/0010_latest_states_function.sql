-- Additive (decision D2): one stored function that reads the newest event row and the newest snapshot
-- of many entities at once, for recoveries that arrive together (journal/coalescing.py).
--
-- The same query sent as a prepared statement is planned again on every call: its custom plan knows
-- how many ids the array holds, so it always looks cheaper than the generic plan and the generic plan
-- is never chosen. Planning it cost the database twice the read itself. Inside this function, with
-- plan_cache_mode set for its duration only, the plan is made once per session and reused.
--
-- Like cos_append_events it names its tables unqualified, so they resolve through the caller's
-- search_path (COS_DB_SCHEMA). Each id is found by a backward scan of its primary key (a lateral
-- LIMIT 1), so an entity's older rows are never read.
CREATE OR REPLACE FUNCTION cos_latest_states(entity_ids TEXT[])
RETURNS TABLE (
    persistence_id  TEXT,
    kind            TEXT,
    sequence_number BIGINT,
    serializer_id   INTEGER,
    manifest        TEXT,
    payload         BYTEA
)
LANGUAGE plpgsql
STABLE
SET plan_cache_mode = force_generic_plan
AS $function$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT ids.pid, 'event'::TEXT, e.sequence_number, e.event_ser_id, e.event_ser_manifest::TEXT,
           e.event_payload
    FROM unnest(entity_ids) AS ids(pid)
    CROSS JOIN LATERAL (
        SELECT j.sequence_number, j.event_ser_id, j.event_ser_manifest, j.event_payload
        FROM event_journal j WHERE j.persistence_id = ids.pid ORDER BY j.sequence_number DESC LIMIT 1
    ) AS e
    UNION ALL
    SELECT ids.pid, 'snapshot'::TEXT, s.sequence_number, s.snapshot_ser_id, s.snapshot_ser_manifest::TEXT,
           s.snapshot_payload
    FROM unnest(entity_ids) AS ids(pid)
    CROSS JOIN LATERAL (
        SELECT t.sequence_number, t.snapshot_ser_id, t.snapshot_ser_manifest, t.snapshot_payload
        FROM state_snapshot t WHERE t.persistence_id = ids.pid ORDER BY t.sequence_number DESC LIMIT 1
    ) AS s;
END
$function$;
