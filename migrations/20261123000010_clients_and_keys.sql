-- Clients and their API keys, kept by the append of each `Client` event (same transaction), so
-- that a key works the moment `issueKey` returns and stops the moment `revokeKey` returns.
-- Both tables follow from the log alone: the events hold the keys' keyed hashes, never keys.
CREATE TABLE clients
(
    id         text        PRIMARY KEY,
    role       text        NOT NULL CHECK (role IN ('client', 'admin')),
    created_by text        NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE TABLE api_keys
(
    key_id     text        PRIMARY KEY,
    client_id  text        NOT NULL REFERENCES clients (id),
    role       text        NOT NULL CHECK (role IN ('client', 'admin')),
    -- HMAC-SHA256 of the key's secret under the server's pepper, hex.
    hash       text        NOT NULL,
    label      text        NOT NULL,
    issued_at  timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX api_keys_client ON api_keys (client_id);

CREATE FUNCTION record_client_event() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    body jsonb;
BEGIN
    CASE NEW.event_type
        WHEN 'ClientCreated' THEN
            body := NEW.payload -> 'Created';
            INSERT INTO clients (id, role, created_by, created_at)
            VALUES (NEW.aggregate_id, body ->> 'role', body ->> 'by', (body ->> 'at')::timestamptz);
        WHEN 'ClientKeyIssued' THEN
            body := NEW.payload -> 'KeyIssued';
            INSERT INTO api_keys (key_id, client_id, role, hash, label, issued_at)
            VALUES (body ->> 'key_id', NEW.aggregate_id, body ->> 'role', body ->> 'hash',
                    body ->> 'label', (body ->> 'at')::timestamptz);
        WHEN 'ClientKeyRevoked' THEN
            body := NEW.payload -> 'KeyRevoked';
            UPDATE api_keys SET revoked_at = (body ->> 'at')::timestamptz
             WHERE key_id = body ->> 'key_id' AND client_id = NEW.aggregate_id;
        WHEN 'ClientWebhookSecretRotated' THEN
            -- The next signature (or `webhookSecret` read) creates a fresh secret.
            DELETE FROM webhook_secrets WHERE owner = NEW.aggregate_id;
        ELSE NULL;
    END CASE;
    RETURN NULL;
END;
$$;

CREATE TRIGGER client_event_recorded
    AFTER INSERT
    ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'Client')
EXECUTE FUNCTION record_client_event();

-- Secrets the service makes for itself when none is configured (the key pepper).
CREATE TABLE server_secrets
(
    name  text  PRIMARY KEY,
    value bytea NOT NULL
);
