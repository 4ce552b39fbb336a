-- Events a projector failed on after all the attempts its policy allows, set aside so that
-- the others (and, by policy, the projector itself) go on. Operational state like the
-- checkpoints: written in the transaction that moves (or holds) the projector's checkpoint,
-- so a parked event is applied exactly once when retried. A row moves from `parked` to
-- `applied` (a retry that succeeded) or `skipped` (an admin gave it up), never back.
CREATE TABLE parked_events
(
    projection   text        NOT NULL,
    log_position bigint      NOT NULL,
    aggregate_type text      NOT NULL,
    aggregate_id text        NOT NULL,
    sequence     bigint      NOT NULL,
    event_type   text        NOT NULL,
    -- Failed attempts so far, the runner's and admins' retries together.
    attempts     integer     NOT NULL,
    error        text        NOT NULL,
    -- Whether the projector halted on it (it applies nothing later until the event is
    -- retried or skipped) or went on past it.
    halted       boolean     NOT NULL,
    status       text        NOT NULL DEFAULT 'parked'
                             CHECK (status IN ('parked', 'applied', 'skipped')),
    parked_at    timestamptz NOT NULL DEFAULT now(),
    -- The API key that retried or skipped it, and when.
    resolved_by  text,
    resolved_at  timestamptz,
    PRIMARY KEY (projection, log_position)
);

CREATE INDEX parked_events_waiting ON parked_events (projection) WHERE status = 'parked';

-- A rebuild records the log's head when it starts: until the checkpoint passes it, the
-- projection is rebuilding, and its progress is how far towards it the checkpoint is.
ALTER TABLE projection_checkpoints ADD COLUMN rebuild_target bigint;
