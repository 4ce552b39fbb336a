-- Request lists filtered by model (a dashboard's most common narrowing) walked the list
-- order's index past every other model's newer rows: 24 ms at the median under W7 once
-- 20,000 newer requests of other models stood in front. Lists now put only the filters they
-- are given in their SQL (projections/src/listing.rs), so this index serves them; an owner's
-- model filter uses it too, checking the owner on the model's rows.
CREATE INDEX requests_model_created ON requests (model, created_at DESC, id DESC);
