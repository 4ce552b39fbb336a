-- Transfer and query jobs: owners in `aggregate_owners`, and the read models of projector
-- `transfers` (registered DICOM servers, transfer jobs, their tasks, transfer throughput)
-- and of projector `queries` (query jobs, their tasks, the studies they found).

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
        WHEN 'TransferJobCreated' THEN NEW.payload -> 'Created' ->> 'owner'
        WHEN 'QueryJobCreated' THEN NEW.payload -> 'Created' ->> 'owner'
    END;
    IF found_owner IS NOT NULL THEN
        INSERT INTO aggregate_owners (aggregate_type, aggregate_id, owner)
        VALUES (NEW.aggregate_type, NEW.aggregate_id, found_owner)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;

-- Servers jobs may name. Credentials are not here: `auth_secret_env` names the variable.
CREATE TABLE dicom_servers
(
    name            text        PRIMARY KEY,
    base_url        text        NOT NULL,
    auth_kind       text,
    auth_secret_env text,
    removed         boolean     NOT NULL DEFAULT false,
    version         bigint      NOT NULL,
    registered_at   timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

CREATE TABLE transfer_jobs
(
    id              uuid        PRIMARY KEY,
    owner           text        NOT NULL,
    source          text        NOT NULL,
    destination     text        NOT NULL,
    status          text        NOT NULL,
    pseudonymize    boolean     NOT NULL,
    urgent          boolean     NOT NULL,
    protocol_id     text,
    protocol_name   text,
    task_count      integer     NOT NULL,
    instances_moved bigint      NOT NULL DEFAULT 0,
    verified_by     text,
    version         bigint      NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX transfer_jobs_owner_created ON transfer_jobs (owner, created_at DESC, id DESC);
-- The runner's work list: runnable jobs, urgent first.
CREATE INDEX transfer_jobs_runnable ON transfer_jobs (urgent DESC, created_at)
    WHERE status IN ('pending', 'in_progress');

CREATE TABLE transfer_tasks
(
    job_id               uuid        NOT NULL REFERENCES transfer_jobs (id),
    task                 integer     NOT NULL,
    patient_id           text        NOT NULL,
    study_instance_uid   text        NOT NULL,
    series_instance_uids text[]      NOT NULL,
    pseudonym            text,
    status               text        NOT NULL,
    attempts             integer     NOT NULL DEFAULT 0,
    instances            integer     NOT NULL DEFAULT 0,
    message              text,
    retry_at             timestamptz, -- after a transient failure: not run before
    started_at           timestamptz,
    finished_at          timestamptz,
    updated_at           timestamptz NOT NULL,
    PRIMARY KEY (job_id, task)
);
CREATE INDEX transfer_tasks_pending ON transfer_tasks (job_id, task) WHERE status = 'pending';
CREATE INDEX transfer_tasks_running ON transfer_tasks (job_id) WHERE status = 'in_progress';

-- Studies, instances and failures per owner, server pair and day a task finished.
CREATE TABLE analytics.transfer_daily
(
    owner       text   NOT NULL,
    source      text   NOT NULL,
    destination text   NOT NULL,
    day         date   NOT NULL,
    studies     bigint NOT NULL DEFAULT 0, -- tasks finished success or warning
    instances   bigint NOT NULL DEFAULT 0, -- instances those stored
    failures    bigint NOT NULL DEFAULT 0, -- tasks finished failure
    canceled    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, source, destination, day)
);
CREATE INDEX transfer_daily_day ON analytics.transfer_daily (day);
GRANT SELECT ON analytics.transfer_daily TO chronicle_analytics;

CREATE TABLE query_jobs
(
    id            uuid        PRIMARY KEY,
    owner         text        NOT NULL,
    source        text        NOT NULL,
    status        text        NOT NULL,
    task_count    integer     NOT NULL,
    matches_found bigint      NOT NULL DEFAULT 0,
    verified_by   text,
    version       bigint      NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX query_jobs_owner_created ON query_jobs (owner, created_at DESC, id DESC);
CREATE INDEX query_jobs_runnable ON query_jobs (created_at)
    WHERE status IN ('pending', 'in_progress', 'canceling');

CREATE TABLE query_tasks
(
    job_id      uuid        NOT NULL REFERENCES query_jobs (id),
    task        integer     NOT NULL,
    criteria    jsonb       NOT NULL,
    status      text        NOT NULL,
    attempts    integer     NOT NULL DEFAULT 0,
    matches     integer     NOT NULL DEFAULT 0,
    message     text,
    retry_at    timestamptz, -- after a transient failure: not run before
    started_at  timestamptz,
    finished_at timestamptz,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (job_id, task)
);
CREATE INDEX query_tasks_pending ON query_tasks (job_id, task) WHERE status = 'pending';

-- The studies each task found in its latest run.
CREATE TABLE query_results
(
    job_id             uuid    NOT NULL REFERENCES query_jobs (id),
    task               integer NOT NULL,
    study_instance_uid text    NOT NULL,
    patient_id         text    NOT NULL,
    study_date         text,
    modalities         text[]  NOT NULL,
    description        text,
    series             integer,
    instances          integer,
    PRIMARY KEY (job_id, task, study_instance_uid)
);
