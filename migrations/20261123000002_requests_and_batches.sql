-- Requests and batches (issue: LLM requests and batches).

-- The custom ids in each batch, kept by the append itself (trigger below), so that the batch
-- aggregate's CustomIds lookup sees exactly the ids of the version it loaded: concurrent adds
-- to one batch serialize on the batch's sequence, and the index moves in the same transaction.
CREATE TABLE batch_custom_ids
(
    batch_id   uuid NOT NULL,
    custom_id  text NOT NULL,
    request_id uuid NOT NULL,
    PRIMARY KEY (batch_id, custom_id)
);

-- The newest batch of each (owner, endpoint, model): where submitters start looking for the
-- open batch (a hint; the batch aggregate decides, and a closed batch names its successor).
CREATE TABLE batch_heads
(
    owner    text NOT NULL,
    endpoint text NOT NULL,
    model    text NOT NULL,
    batch_id uuid NOT NULL,
    PRIMARY KEY (owner, endpoint, model)
);

CREATE FUNCTION index_batch_events() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF NEW.event_type = 'BatchRequestsAdded' THEN
        INSERT INTO batch_custom_ids (batch_id, custom_id, request_id)
        SELECT NEW.aggregate_id::uuid, entry -> 'spec' ->> 'custom_id', (entry ->> 'request_id')::uuid
          FROM jsonb_array_elements(NEW.payload -> 'RequestsAdded' -> 'entries') AS entry;
    ELSIF NEW.event_type = 'BatchOpened' THEN
        INSERT INTO batch_heads (owner, endpoint, model, batch_id)
        VALUES (NEW.payload -> 'Opened' -> 'key' ->> 'owner',
                NEW.payload -> 'Opened' -> 'key' ->> 'endpoint',
                NEW.payload -> 'Opened' -> 'key' ->> 'model',
                NEW.aggregate_id::uuid)
        ON CONFLICT (owner, endpoint, model) DO UPDATE SET batch_id = EXCLUDED.batch_id;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER batch_events_indexed
    AFTER INSERT
    ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'Batch')
EXECUTE FUNCTION index_batch_events();

-- Read model `requests` (projector `requests`): what request list views filter on.
CREATE TABLE requests
(
    id            uuid        PRIMARY KEY,
    owner         text        NOT NULL,
    batch_id      uuid        NOT NULL,
    custom_id     text        NOT NULL,
    endpoint      text        NOT NULL,
    model         text        NOT NULL,
    status        text        NOT NULL,
    delivery      jsonb       NOT NULL,
    body          jsonb       NOT NULL,
    response      jsonb,
    error         jsonb,
    version       bigint      NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX requests_owner_created ON requests (owner, created_at DESC, id DESC);
CREATE INDEX requests_batch ON requests (batch_id, created_at DESC, id DESC);

-- Read model `batches` (projector `batches`).
CREATE TABLE batches
(
    id                uuid        PRIMARY KEY,
    owner             text        NOT NULL,
    endpoint          text        NOT NULL,
    model             text        NOT NULL,
    status            text        NOT NULL,
    request_count     bigint      NOT NULL,
    size_bytes        bigint      NOT NULL,
    close_reason      text,
    successor         uuid,
    provider_batch_id text,
    version           bigint      NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);
CREATE INDEX batches_owner_created ON batches (owner, created_at DESC, id DESC);
CREATE INDEX batches_building ON batches (status, created_at) WHERE status = 'building';

-- The audit trail (projector `transitions`): every state change of every aggregate type.
CREATE TABLE transitions
(
    position       bigint      PRIMARY KEY,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL,
    from_state     text,
    to_state       text        NOT NULL,
    event_type     text        NOT NULL,
    actor          text        NOT NULL,
    correlation_id text        NOT NULL,
    recorded_at    timestamptz NOT NULL
);
CREATE INDEX transitions_aggregate ON transitions (aggregate_id, sequence);
