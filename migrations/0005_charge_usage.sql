-- What the upstream reported beside what was billed. `input_tokens` and
-- `output_tokens` are the usage billed, and `amount_atomic` is exactly its
-- price (the billed usage is lowered to what the hold paid for when the
-- reported usage would cost more). The reported counts are NULL when the
-- upstream reported no usage: the billed usage is then the gateway's
-- estimate (docs/paid-path.md, "Estimated charges").
ALTER TABLE charges ADD COLUMN reported_input_tokens BIGINT;
ALTER TABLE charges ADD COLUMN reported_output_tokens BIGINT;
