-- Admins list requests and batches across owners, newest first: without an index in that
-- order, every page sorted the whole table (16 ms for 11,000 requests in the bench, growing
-- with the table). Owners' lists keep their (owner, created_at, id) indexes.
CREATE INDEX requests_created ON requests (created_at DESC, id DESC);
CREATE INDEX batches_created ON batches (created_at DESC, id DESC);
