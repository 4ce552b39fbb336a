-- Delivery of results: the schedule the delivery worker reads, each attempt's record, the
-- per-state request counts of every batch, and the webhook signing secrets.

-- Projector `requests`: where each pushed request's delivery stands.
ALTER TABLE requests
    ADD COLUMN delivery_target   text,
    ADD COLUMN delivery_rounds   integer NOT NULL DEFAULT 0,
    ADD COLUMN delivery_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at   timestamptz,
    ADD COLUMN delivery_error    text;

-- `delivery_target` groups deliveries for fairness: a webhook's origin, a queue or an exchange.
UPDATE requests
   SET delivery_target = CASE delivery ->> 'kind'
       WHEN 'webhook' THEN regexp_replace(delivery ->> 'url',
                                          '^([a-z][a-z0-9+.-]*://)([^@/?#]*@)?([^/?#]*).*$',
                                          '\1\3')
       WHEN 'rabbitmq' THEN 'amqp queue ' || (delivery ->> 'queue')
       WHEN 'rabbitmq_exchange' THEN 'amqp exchange ' || (delivery ->> 'exchange')
   END;

-- The delivery worker's queue: requests being delivered, by when they are due.
CREATE INDEX requests_delivery_due ON requests (next_attempt_at NULLS FIRST)
    WHERE status = 'delivering';

-- Projector `delivery_attempts`: every attempt of every delivery round.
CREATE TABLE delivery_attempts
(
    request_id  uuid        NOT NULL,
    round       integer     NOT NULL,
    number      integer     NOT NULL,
    delivery_id uuid        NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms bigint      NOT NULL,
    status_code integer,
    error       text,
    outcome     text        NOT NULL, -- delivered, retry or failed
    retry_at    timestamptz,
    PRIMARY KEY (request_id, round, number)
);

-- Requests per (batch, status), kept by triggers on `requests` in the projector's transaction.
CREATE TABLE batch_request_counts
(
    batch_id uuid   NOT NULL,
    status   text   NOT NULL,
    n        bigint NOT NULL,
    PRIMARY KEY (batch_id, status)
);
CREATE INDEX batch_request_counts_open ON batch_request_counts (status, batch_id) WHERE n > 0;

INSERT INTO batch_request_counts (batch_id, status, n)
SELECT batch_id, status, count(*) FROM requests GROUP BY batch_id, status;

CREATE FUNCTION count_batch_requests() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO batch_request_counts AS c (batch_id, status, n)
        SELECT batch_id, status, count(*) FROM new_rows GROUP BY batch_id, status
        ON CONFLICT (batch_id, status) DO UPDATE SET n = c.n + excluded.n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO batch_request_counts AS c (batch_id, status, n)
        SELECT batch_id, status, sum(d)
          FROM (SELECT batch_id, status, -1 AS d FROM old_rows
                UNION ALL
                SELECT batch_id, status, 1 FROM new_rows) AS moves
         GROUP BY batch_id, status
        HAVING sum(d) <> 0
        ON CONFLICT (batch_id, status) DO UPDATE SET n = c.n + excluded.n;
    ELSE
        INSERT INTO batch_request_counts AS c (batch_id, status, n)
        SELECT batch_id, status, -count(*) FROM old_rows GROUP BY batch_id, status
        ON CONFLICT (batch_id, status) DO UPDATE SET n = c.n + excluded.n;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER requests_counted_insert
    AFTER INSERT ON requests REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_batch_requests();
CREATE TRIGGER requests_counted_update
    AFTER UPDATE ON requests REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_batch_requests();
CREATE TRIGGER requests_counted_delete
    AFTER DELETE ON requests REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_batch_requests();

-- The secret each owner's webhooks are signed with (HMAC-SHA256), created on first use.
CREATE TABLE webhook_secrets
(
    owner      text        PRIMARY KEY,
    secret     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
