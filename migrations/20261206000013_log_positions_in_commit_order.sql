-- The global log ordered by positions given in commit order, so that no transaction outside
-- Chronicle's appends can hold a reader back.
--
-- Until now readers trusted only rows below the oldest running transaction of the whole
-- cluster (pg_snapshot_xmin) and ordered by (transaction id, position): any open transaction,
-- an analyst's or another database's, stopped every reader for as long as it stayed open.
--
-- Now every appending transaction takes one transaction-scoped advisory lock before its first
-- event and draws positions from a sequence while holding it. PostgreSQL releases the lock
-- only after the commit is visible, so positions are handed out in commit order: when a
-- reader sees position n, every lower position is committed (or was rolled back and will
-- never appear). Readers follow `log_position` alone. The lock is taken once per transaction;
-- concurrent commands share transactions (group commit) to keep it cheap.

-- Positions of the old log order, (transaction_id, position), then the new ones.
CREATE SEQUENCE events_log_position AS bigint;

ALTER TABLE events ADD COLUMN log_position bigint;

UPDATE events e
   SET log_position = ordered.n
  FROM (SELECT aggregate_type, aggregate_id, sequence,
               row_number() OVER (ORDER BY transaction_id, position) AS n
          FROM events) ordered
 WHERE e.aggregate_type = ordered.aggregate_type
   AND e.aggregate_id = ordered.aggregate_id
   AND e.sequence = ordered.sequence;

SELECT setval('events_log_position', coalesce(max(log_position), 0) + 1, false) FROM events;

ALTER TABLE events ALTER COLUMN log_position SET NOT NULL;
CREATE UNIQUE INDEX events_by_log_position ON events (log_position);

-- The advisory lock's key: "chronicl" as a big-endian bigint (leadership locks use
-- hashtextextended of their role names, which cannot be confused with it in practice).
CREATE FUNCTION assign_log_position() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    -- Re-entrant: the first event of a transaction waits for the previous appender's commit,
    -- later ones find the lock held.
    PERFORM pg_advisory_xact_lock(7163101030252110700);
    NEW.log_position := nextval('events_log_position');
    RETURN NEW;
END;
$$;

CREATE TRIGGER events_log_position
    BEFORE INSERT
    ON events
    FOR EACH ROW
EXECUTE FUNCTION assign_log_position();

-- Projection checkpoints move to log positions: the last event at or before the old cursor.
ALTER TABLE projection_checkpoints ADD COLUMN log_position bigint NOT NULL DEFAULT 0;

UPDATE projection_checkpoints c
   SET log_position = coalesce(
           (SELECT e.log_position FROM events e
             WHERE (e.transaction_id, e.position) <= (c.transaction_id, c.position)
             ORDER BY e.transaction_id DESC, e.position DESC LIMIT 1), 0);

ALTER TABLE projection_checkpoints DROP COLUMN transaction_id, DROP COLUMN position;

-- Audit checkpoints cover ranges of log positions. Those recorded before keep their old
-- cursors, which their signatures cover.
ALTER TABLE audit_checkpoints ADD COLUMN after_log_position bigint,
                              ADD COLUMN through_log_position bigint;

UPDATE audit_checkpoints c
   SET after_log_position = coalesce(
           (SELECT e.log_position FROM events e
             WHERE (e.transaction_id::text::bigint, e.position)
                   <= (c.after_transaction_id, c.after_position)
             ORDER BY e.transaction_id DESC, e.position DESC LIMIT 1), 0),
       through_log_position = coalesce(
           (SELECT e.log_position FROM events e
             WHERE (e.transaction_id::text::bigint, e.position)
                   <= (c.through_transaction_id, c.through_position)
             ORDER BY e.transaction_id DESC, e.position DESC LIMIT 1), 0);

ALTER TABLE audit_checkpoints ALTER COLUMN after_log_position SET NOT NULL,
                              ALTER COLUMN through_log_position SET NOT NULL,
                              ALTER COLUMN after_transaction_id DROP NOT NULL,
                              ALTER COLUMN after_position DROP NOT NULL,
                              ALTER COLUMN through_transaction_id DROP NOT NULL,
                              ALTER COLUMN through_position DROP NOT NULL;
ALTER TABLE audit_checkpoints ADD UNIQUE (after_log_position);

-- The old order's index served only the old readers.
DROP INDEX events_log_order;
