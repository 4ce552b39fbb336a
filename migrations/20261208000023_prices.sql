-- What results cost (the price table): each result's event records its cost, priced when it
-- was recorded; the usage analytics sum it, and a request shows its own.
ALTER TABLE analytics.usage_daily
    ADD COLUMN cached_input_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN cost_nano_usd bigint NOT NULL DEFAULT 0,
    ADD COLUMN unpriced bigint NOT NULL DEFAULT 0;
COMMENT ON COLUMN analytics.usage_daily.input_tokens IS
    'prompt tokens: usage.prompt_tokens or usage.input_tokens (with Anthropic''s cache reads and writes)';
COMMENT ON COLUMN analytics.usage_daily.cached_input_tokens IS
    'prompt tokens read from the provider''s prompt cache (part of input_tokens)';
COMMENT ON COLUMN analytics.usage_daily.cost_nano_usd IS
    'what the results cost, in billionths of a US dollar, as priced when each was recorded';
COMMENT ON COLUMN analytics.usage_daily.unpriced IS
    'results no price table entry applied to (their cost is not in cost_nano_usd)';

ALTER TABLE requests
    ADD COLUMN cost_nano_usd bigint,
    ADD COLUMN cost_price text;
COMMENT ON COLUMN requests.cost_nano_usd IS
    'what the result cost, in billionths of a US dollar; null without a result or a price';
COMMENT ON COLUMN requests.cost_price IS 'the price table entry it was priced with';
