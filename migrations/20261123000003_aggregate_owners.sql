-- Who owns each aggregate, recorded by the append of its first event (same transaction), so
-- that a log reader filtering by owner never sees an event before its owner is known.
CREATE TABLE aggregate_owners
(
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    owner          text NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
CREATE INDEX aggregate_owners_owner ON aggregate_owners (owner);

-- Each aggregate type names its owner in its first event; add a branch per new type.
CREATE FUNCTION record_aggregate_owner() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    found_owner text;
BEGIN
    found_owner := CASE NEW.event_type
        WHEN 'BatchOpened' THEN NEW.payload -> 'Opened' -> 'key' ->> 'owner'
        WHEN 'RequestSubmitted' THEN NEW.payload -> 'Submitted' ->> 'owner'
    END;
    IF found_owner IS NOT NULL THEN
        INSERT INTO aggregate_owners (aggregate_type, aggregate_id, owner)
        VALUES (NEW.aggregate_type, NEW.aggregate_id, found_owner)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER aggregate_owner_recorded
    AFTER INSERT
    ON events
    FOR EACH ROW
    WHEN (NEW.sequence = 1)
EXECUTE FUNCTION record_aggregate_owner();

-- A request accepted into a batch before its own stream started is found here by id.
CREATE INDEX batch_custom_ids_request ON batch_custom_ids (request_id);

-- The provider driver asks the provider to cancel a batch cancelled in flight, once.
ALTER TABLE batches ADD COLUMN provider_cancel_requested boolean NOT NULL DEFAULT false;

-- The provider driver's work list, read every round.
CREATE INDEX batches_driver ON batches (updated_at)
    WHERE status IN ('uploading', 'uploaded', 'provider_processing', 'provider_completed',
                     'expired', 'downloading', 'cancelled');
