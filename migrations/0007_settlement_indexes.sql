-- Settlement in the ledger mode claims the oldest pending charges of a chain
-- every pass, and listings count a batch's charges: both by index, not by
-- scanning every charge ever recorded (on SQLite, while holding the write
-- lock).
CREATE INDEX charges_pending ON charges (chain_id, created_at_ms, request_id)
    WHERE status = 'pending';
CREATE INDEX charges_by_batch ON charges (batch_id);
