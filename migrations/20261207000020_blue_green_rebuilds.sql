-- A projection is rebuilt beside the live one (blue/green): copies of its tables in the
-- schema `chronicle_next_<projection>` are loaded from the log while the live tables keep
-- answering, and swapped in atomically once they have caught up. The live checkpoint no
-- longer goes back to zero, so it has no rebuild target.
ALTER TABLE projection_checkpoints DROP COLUMN rebuild_target;

-- The version of the projector code that built the live tables: a projector whose version
-- in code is higher is rebuilt at start-up.
ALTER TABLE projection_checkpoints ADD COLUMN version integer NOT NULL DEFAULT 1;

-- One rebuild in progress (or failed) per projection. `log_position` and `events_applied` are
-- the copies' own checkpoint, moved in the transaction that loads each page into them.
-- `building` loads the copies with their unique indexes only; `finishing` has built the
-- other indexes and keeps up until the swap, which deletes the row. `failed` keeps the
-- error until the rebuild is asked for again (the live tables were never touched).
CREATE TABLE projection_rebuilds
(
    projection     text        PRIMARY KEY,
    version        integer     NOT NULL,
    phase          text        NOT NULL CHECK (phase IN ('building', 'finishing', 'failed')),
    -- Bumped each time the rebuild starts again: a runner of an earlier attempt that is
    -- still retrying a page can never write to the new attempt's copies.
    attempt        integer     NOT NULL DEFAULT 1,
    log_position   bigint      NOT NULL DEFAULT 0,
    events_applied bigint      NOT NULL DEFAULT 0,
    requested_by   text        NOT NULL,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    error          text,
    -- A digest of the live tables' definitions when the copies were made: if a migration
    -- changes them meanwhile, the swap would undo it, so the rebuild starts again instead.
    live_shape     text
);
