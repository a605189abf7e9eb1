-- Prompt-cache tokens (ledger::pricing, docs/paid-path.md "Final amount"):
-- of a charge's `input_tokens`, those the upstream read from its prompt
-- cache (OpenAI's `cached_tokens`, Anthropic's `cache_read_input_tokens`)
-- and those it wrote to it (Anthropic's `cache_creation_input_tokens`),
-- each priced at the model's cached-input and cache-write prices. They are
-- parts of `input_tokens`, never beside it: `cached_input_tokens +
-- cache_write_tokens <= input_tokens`. Charges recorded before have none
-- (0): they were priced with every input token plain, and re-price so.
--
-- The reported counterparts are NULL when the upstream reported no usage
-- (as `reported_input_tokens` is), and for charges recorded before this.
ALTER TABLE charges ADD COLUMN cached_input_tokens BIGINT NOT NULL DEFAULT 0
    CHECK (cached_input_tokens >= 0);
ALTER TABLE charges ADD COLUMN cache_write_tokens BIGINT NOT NULL DEFAULT 0
    CHECK (cache_write_tokens >= 0);
ALTER TABLE charges ADD COLUMN reported_cached_input_tokens BIGINT;
ALTER TABLE charges ADD COLUMN reported_cache_write_tokens BIGINT;
