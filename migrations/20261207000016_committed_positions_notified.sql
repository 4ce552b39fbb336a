-- An instance's live log takes the events its own group commits wrote from memory, and reads
-- the log only for what others committed. For that, each appending statement's notification
-- names the last log position it drew (a listener that already holds everything up to it
-- reads nothing), and the owner an aggregate's first event names is one function that the
-- owners' trigger and the group commit's statement share.

-- Under the log lock no one else draws positions, so the sequence's last value is this
-- statement's last event. (A statement that inserted nothing names someone else's position:
-- at worst its listeners read once.)
CREATE OR REPLACE FUNCTION notify_events_appended() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('chronicle_events',
                      coalesce(pg_sequence_last_value('events_log_position'), 0)::text);
    RETURN NULL;
END;
$$;

-- The owner an aggregate's first event names; add a branch per new aggregate type.
CREATE FUNCTION event_owner(event_type text, payload jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE AS
$$
SELECT CASE event_type
    WHEN 'BatchOpened' THEN payload -> 'Opened' -> 'key' ->> 'owner'
    WHEN 'RequestSubmitted' THEN payload -> 'Submitted' ->> 'owner'
    WHEN 'SimulationCreated' THEN payload -> 'Created' ->> 'owner'
    WHEN 'TransferJobCreated' THEN payload -> 'Created' ->> 'owner'
    WHEN 'QueryJobCreated' THEN payload -> 'Created' ->> 'owner'
END
$$;

CREATE OR REPLACE FUNCTION record_aggregate_owner() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    found_owner text := event_owner(NEW.event_type, NEW.payload);
BEGIN
    IF found_owner IS NOT NULL THEN
        INSERT INTO aggregate_owners (aggregate_type, aggregate_id, owner)
        VALUES (NEW.aggregate_type, NEW.aggregate_id, found_owner)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;
