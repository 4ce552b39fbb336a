-- Simulations: their owners in `aggregate_owners`, and the read models of projector
-- `simulations`: sessions, their messages, and the audit of every AI call.

CREATE OR REPLACE FUNCTION record_aggregate_owner() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    found_owner text;
BEGIN
    found_owner := CASE NEW.event_type
        WHEN 'BatchOpened' THEN NEW.payload -> 'Opened' -> 'key' ->> 'owner'
        WHEN 'RequestSubmitted' THEN NEW.payload -> 'Submitted' ->> 'owner'
        WHEN 'SimulationCreated' THEN NEW.payload -> 'Created' ->> 'owner'
    END;
    IF found_owner IS NOT NULL THEN
        INSERT INTO aggregate_owners (aggregate_type, aggregate_id, owner)
        VALUES (NEW.aggregate_type, NEW.aggregate_id, found_owner)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TABLE simulations
(
    id              uuid        PRIMARY KEY,
    owner           text        NOT NULL,
    learner_id      text        NOT NULL,
    diagnosis       text        NOT NULL,
    chief_complaint text        NOT NULL,
    difficulty      text        NOT NULL,
    model           text        NOT NULL,
    status          text        NOT NULL,
    message_count   integer     NOT NULL DEFAULT 0,
    tokens_used     bigint      NOT NULL DEFAULT 0,
    pending_call_id uuid,
    pending_service text,
    ends_at         timestamptz,
    started_at      timestamptz,
    ended_at        timestamptz,
    end_reason      text,
    feedback        jsonb,
    version         bigint      NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX simulations_owner_created ON simulations (owner, created_at DESC, id DESC);
-- The responder's work list.
CREATE INDEX simulations_pending ON simulations (updated_at) WHERE pending_call_id IS NOT NULL;
CREATE INDEX simulations_timed ON simulations (ends_at)
    WHERE status IN ('created', 'in_progress') AND ends_at IS NOT NULL;

CREATE TABLE simulation_messages
(
    simulation_id uuid        NOT NULL,
    seq           integer     NOT NULL,
    role          text        NOT NULL,
    text          text        NOT NULL,
    call_id       uuid,
    at            timestamptz NOT NULL,
    PRIMARY KEY (simulation_id, seq)
);

-- Every AI call: requested, then completed, failed or abandoned.
CREATE TABLE ai_calls
(
    call_id           uuid        PRIMARY KEY,
    simulation_id     uuid        NOT NULL,
    service           text        NOT NULL,
    model             text        NOT NULL,
    status            text        NOT NULL,
    request           jsonb,
    response_text     text,
    output            jsonb,
    prompt_tokens     bigint,
    completion_tokens bigint,
    finish_reason     text,
    latency_ms        bigint,
    attempts          integer,
    error             text,
    requested_at      timestamptz NOT NULL,
    finished_at       timestamptz
);
CREATE INDEX ai_calls_simulation ON ai_calls (simulation_id, requested_at);
