-- Analytics: projection tables meant to be queried with SQL, in schema `analytics`, readable
-- by the role `chronicle_analytics` (NOLOGIN: grant it to the login roles of analysts).
-- Days are UTC dates. See the README's section for analysts.

CREATE SCHEMA analytics;

-- Projector `analytics_requests`: which owner, model and day each request counts toward.
CREATE TABLE analytics.request_keys
(
    request_id uuid PRIMARY KEY,
    owner      text NOT NULL,
    model      text NOT NULL,
    day        date NOT NULL
);

-- Requests per owner, model and day of submission, with their outcomes and tokens.
CREATE TABLE analytics.usage_daily
(
    owner         text   NOT NULL,
    model         text   NOT NULL,
    day           date   NOT NULL,
    requests      bigint NOT NULL DEFAULT 0,
    succeeded     bigint NOT NULL DEFAULT 0, -- a result arrived
    failed        bigint NOT NULL DEFAULT 0, -- the provider (or its batch) failed it
    expired       bigint NOT NULL DEFAULT 0,
    cancelled     bigint NOT NULL DEFAULT 0,
    input_tokens  bigint NOT NULL DEFAULT 0, -- usage.prompt_tokens or usage.input_tokens
    output_tokens bigint NOT NULL DEFAULT 0, -- usage.completion_tokens or usage.output_tokens
    PRIMARY KEY (owner, model, day)
);
CREATE INDEX usage_daily_day ON analytics.usage_daily (day);

-- Delivery attempts per owner and day of the attempt (webhooks and RabbitMQ).
CREATE TABLE analytics.delivery_daily
(
    owner              text   NOT NULL,
    day                date   NOT NULL,
    attempts           bigint NOT NULL DEFAULT 0,
    succeeded_attempts bigint NOT NULL DEFAULT 0,
    delivered          bigint NOT NULL DEFAULT 0, -- rounds that ended delivered
    delivery_failed    bigint NOT NULL DEFAULT 0, -- rounds that gave up
    latency_ms_total   bigint NOT NULL DEFAULT 0, -- sum of attempt durations
    PRIMARY KEY (owner, day)
);

-- Projector `analytics_batches`: each batch's turnaround.
CREATE TABLE analytics.batch_turnaround
(
    batch_id              uuid        PRIMARY KEY,
    owner                 text        NOT NULL,
    model                 text        NOT NULL,
    day                   date        NOT NULL, -- when it opened
    requests              bigint      NOT NULL DEFAULT 0,
    submitted_at          timestamptz,          -- sent to the provider
    provider_completed_at timestamptz,
    done_at               timestamptz           -- every request settled
);
CREATE INDEX batch_turnaround_model_day ON analytics.batch_turnaround (model, day);

-- p50/p95 turnaround per owner, model and day, in seconds: submit -> provider_completed -> done.
CREATE VIEW analytics.batch_turnaround_daily AS
SELECT owner, model, day, count(*) AS batches,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM provider_completed_at - submitted_at))
           AS provider_p50_seconds,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM provider_completed_at - submitted_at))
           AS provider_p95_seconds,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM done_at - submitted_at))
           AS done_p50_seconds,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM done_at - submitted_at))
           AS done_p95_seconds
  FROM analytics.batch_turnaround
 WHERE submitted_at IS NOT NULL
 GROUP BY owner, model, day;

-- Projector `analytics_simulations`: which owner and day each simulation counts toward.
CREATE TABLE analytics.simulation_keys
(
    simulation_id uuid PRIMARY KEY,
    owner         text NOT NULL,
    day           date NOT NULL
);

-- Simulation activity per owner and day of creation.
CREATE TABLE analytics.simulation_daily
(
    owner        text   NOT NULL,
    day          date   NOT NULL,
    sessions     bigint NOT NULL DEFAULT 0,
    messages     bigint NOT NULL DEFAULT 0,
    ai_calls     bigint NOT NULL DEFAULT 0, -- completed
    failed_calls bigint NOT NULL DEFAULT 0,
    tokens       bigint NOT NULL DEFAULT 0,
    feedbacks    bigint NOT NULL DEFAULT 0,
    score_total  bigint NOT NULL DEFAULT 0, -- sum of rubric scores (0-5 each)
    scores       bigint NOT NULL DEFAULT 0, -- rubric items scored
    PRIMARY KEY (owner, day)
);

DO
$$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chronicle_analytics') THEN
        CREATE ROLE chronicle_analytics NOLOGIN;
    END IF;
END;
$$;
GRANT USAGE ON SCHEMA analytics TO chronicle_analytics;
GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO chronicle_analytics;
ALTER DEFAULT PRIVILEGES IN SCHEMA analytics GRANT SELECT ON TABLES TO chronicle_analytics;
