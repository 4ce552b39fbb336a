-- A submission now writes each accepted request's first event (`RequestSubmitted`) itself,
-- in the transaction of the batch event that carries it (`BatchRequestsAdded`). Until now
-- the `request_streams` projector derived them from the log; a store whose projector had not
-- caught up when it was stopped (during a rebuild, say) may hold submissions whose requests
-- have no stream yet. They are started here, as the projector would have: same payload,
-- the batch event's metadata, in the batch event's log order. Streams that exist are left.
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                    payload, metadata)
SELECT 'Request', entry ->> 'request_id', 1, 'RequestSubmitted', '1.0.0',
       jsonb_build_object('Submitted', jsonb_build_object(
           'request_id', entry -> 'request_id',
           'owner', opened.payload -> 'Opened' -> 'key' -> 'owner',
           'batch_id', to_jsonb(added.aggregate_id),
           'spec', entry -> 'spec',
           'at', added.payload -> 'RequestsAdded' -> 'at')),
       added.metadata
  FROM events added
  JOIN events opened ON opened.aggregate_type = 'Batch'
                    AND opened.aggregate_id = added.aggregate_id
                    AND opened.sequence = 1
 CROSS JOIN LATERAL jsonb_array_elements(added.payload -> 'RequestsAdded' -> 'entries')
       WITH ORDINALITY AS entries(entry, n)
 WHERE added.aggregate_type = 'Batch' AND added.event_type = 'BatchRequestsAdded'
   AND NOT EXISTS (SELECT 1 FROM events started
                    WHERE started.aggregate_type = 'Request'
                      AND started.aggregate_id = entry ->> 'request_id')
 ORDER BY added.log_position, entries.n;
