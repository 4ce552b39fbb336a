-- Tamper evidence: every event carries a SHA-256 over its content and the previous event's
-- hash in the same aggregate, computed by a trigger when it is appended, so no writer can
-- skip it. `chronicle audit verify` recomputes the chain and reports the first broken link.
--
-- hash(n) = sha256(hash(n-1) || content(n)), hash(0) = empty, where content is the UTF-8 of
-- aggregate_type, aggregate_id, sequence, event_type, event_version, payload::text and
-- metadata::text joined by U+001F (jsonb's text form is canonical).

ALTER TABLE events ADD COLUMN hash bytea;

CREATE FUNCTION event_content(e events) RETURNS bytea
    LANGUAGE sql IMMUTABLE AS
$$
SELECT convert_to(concat_ws(chr(31), e.aggregate_type, e.aggregate_id, e.sequence::text,
                            e.event_type, e.event_version, e.payload::text, e.metadata::text),
                  'UTF8')
$$;

CREATE FUNCTION chain_event() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    previous bytea := '\x';
BEGIN
    IF NEW.sequence > 1 THEN
        SELECT hash INTO previous FROM events
         WHERE aggregate_type = NEW.aggregate_type AND aggregate_id = NEW.aggregate_id
           AND sequence = NEW.sequence - 1;
        previous := coalesce(previous, '\x');
    END IF;
    NEW.hash := sha256(previous || event_content(NEW));
    RETURN NEW;
END;
$$;

-- Events already stored are chained in sequence order, one sequence number at a time.
DO
$$
DECLARE
    step bigint := 1;
    changed bigint;
BEGIN
    LOOP
        UPDATE events e
           SET hash = sha256(coalesce((SELECT p.hash FROM events p
                                        WHERE p.aggregate_type = e.aggregate_type
                                          AND p.aggregate_id = e.aggregate_id
                                          AND p.sequence = e.sequence - 1), '\x')
                             || event_content(e))
         WHERE e.sequence = step;
        GET DIAGNOSTICS changed = ROW_COUNT;
        EXIT WHEN changed = 0;
        step := step + 1;
    END LOOP;
END;
$$;

ALTER TABLE events ALTER COLUMN hash SET NOT NULL;

CREATE TRIGGER events_chained
    BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION chain_event();
