-- The event store. postgres-es appends and loads through the first seven columns; the others
-- are ours and are filled by defaults, so no writer can skip them.
CREATE TABLE events
(
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL CHECK (sequence >= 1),
    event_type     text        NOT NULL,
    event_version  text        NOT NULL,
    payload        jsonb       NOT NULL,
    -- actor, correlation_id, causation_id, command_id (see src/command/metadata.rs)
    metadata       jsonb       NOT NULL,
    -- Global position: unique and increasing in allocation order, but NOT in commit order.
    position       bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- The writing transaction; readers only trust rows below the oldest running transaction,
    -- and order by (transaction_id, position) so concurrent commits never leave a gap behind.
    transaction_id xid8        NOT NULL DEFAULT pg_current_xact_id(),
    -- When the writing transaction appended the row (its commit follows within milliseconds).
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- The global log order used by every consumer (src/log/reader.rs).
CREATE INDEX events_log_order ON events (transaction_id, position);
-- Idempotent commands look up a command id after a crash between append and outcome record.
CREATE INDEX events_command_id ON events ((metadata ->> 'command_id'));
-- Correlation view for auditors: one client call across aggregates.
CREATE INDEX events_correlation_id ON events ((metadata ->> 'correlation_id'));

-- Snapshots of long streams (postgres-es writes them; one row per aggregate).
CREATE TABLE snapshots
(
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint NOT NULL CHECK (current_snapshot >= 0),
    payload          jsonb  NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- Wakes live readers after a commit. The notification carries nothing: readers always take the
-- data from the table, so a lost or coalesced notification costs latency, never an event.
CREATE FUNCTION notify_events_appended() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('chronicle_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_appended
    AFTER INSERT
    ON events
    FOR EACH STATEMENT
EXECUTE FUNCTION notify_events_appended();

-- Exactly-once projections: a projector's tables and its checkpoint change in one transaction.
CREATE TABLE projection_checkpoints
(
    name           text        PRIMARY KEY,
    -- The log cursor of the last applied event; (0, 0) before the first.
    transaction_id xid8        NOT NULL DEFAULT '0',
    position       bigint      NOT NULL DEFAULT 0,
    events_applied bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Outcomes of commands sent with an idempotency key, so a retry returns the first outcome.
CREATE TABLE idempotency_keys
(
    -- Who sent the key: keys are scoped per actor, so two clients never collide.
    actor       text        NOT NULL,
    key         text        NOT NULL,
    -- Aggregate type, id and command, hashed: the same key with another command is refused.
    fingerprint text        NOT NULL,
    -- {"ok": receipt} or {"rejected": {code, message}}.
    outcome     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (actor, key)
);

-- Generic read model: every aggregate with its version and last change (projector
-- `aggregate_index`), for auditors and for waiting on a write to be projected.
CREATE TABLE aggregate_index
(
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    version         bigint      NOT NULL,
    last_event_type text        NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
