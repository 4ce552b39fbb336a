-- Log pages are bounded by payload size, and that size was the stored one: compressed, so a
-- bulk batch event of 1,000 requests (254 kB of JSON stored in 17 kB) counted for a
-- fifteenth of what it takes once read, and a rebuild's page of them parsed into hundreds of
-- megabytes. Each event now keeps the size of its payload as JSON text, set as it is
-- appended (in the trigger that already runs for every row); older events have none, and
-- readers fall back to the stored size for them.
ALTER TABLE events ADD COLUMN payload_bytes integer;

CREATE OR REPLACE FUNCTION assign_log_position() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    -- Re-entrant: the first event of a transaction waits for the previous appender's commit,
    -- later ones find the lock held.
    PERFORM pg_advisory_xact_lock(7163101030252110700);
    NEW.log_position := nextval('events_log_position');
    NEW.payload_bytes := octet_length(NEW.payload::text);
    RETURN NEW;
END;
$$;
