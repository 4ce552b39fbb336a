-- Signed checkpoints of the whole log: each covers the events after the previous one, in log
-- order, with digest = sha256(previous digest || for each event: position (8 bytes, big
-- endian) || hash), signed with HMAC-SHA256 under a key the database never sees. Someone who
-- rewrites events and their hash chain still cannot make the digests and signatures match.
CREATE TABLE audit_checkpoints
(
    id                     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    after_transaction_id   bigint      NOT NULL,
    after_position         bigint      NOT NULL,
    through_transaction_id bigint      NOT NULL,
    through_position       bigint      NOT NULL,
    events                 bigint      NOT NULL,
    digest                 bytea       NOT NULL,
    signature              bytea,      -- NULL when no signing key was configured
    created_at             timestamptz NOT NULL DEFAULT now(),
    -- Two writers racing cannot both extend the same checkpoint.
    UNIQUE (after_transaction_id, after_position)
);
