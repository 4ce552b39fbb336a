-- A batch's cancellation, failure or withdrawal now settles its waiting requests in the same
-- command and transaction (see `Effects::settlements`), so the `request_streams` projector,
-- which appended those request events from the log, is gone. It was applied inline, in the
-- transaction of every batch event, so no event it had yet to settle is left behind.
DELETE FROM projection_checkpoints WHERE name = 'request_streams';
