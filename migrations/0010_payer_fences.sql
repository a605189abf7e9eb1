-- Payers the `evm` settler found unable to pay what they owe (balance or
-- allowance short): fenced — no key of theirs takes a new hold or a lease
-- top-up — until their charges settle. Re-checked at `retry_at_ms`, with a
-- backoff, so the settler reads past them to the payers behind.
CREATE TABLE held_back_payers (
    chain_id         BIGINT NOT NULL,
    wallet           TEXT   NOT NULL,
    owed_atomic      BIGINT NOT NULL CHECK (owed_atomic >= 0),
    balance_atomic   BIGINT NOT NULL CHECK (balance_atomic >= 0),
    allowance_atomic BIGINT NOT NULL CHECK (allowance_atomic >= 0),
    since_ms         BIGINT NOT NULL,
    checked_at_ms    BIGINT NOT NULL,
    checks           BIGINT NOT NULL CHECK (checks >= 1),
    retry_at_ms      BIGINT NOT NULL,
    PRIMARY KEY (chain_id, wallet)
);
CREATE INDEX held_back_payers_by_retry ON held_back_payers (chain_id, retry_at_ms);

-- A charge of an answered call that reached the ledger when its key's limit
-- could no longer take it (a lease's cover was taken back before the charge
-- landed): recorded all the same — it is owed, and it settles like any
-- other — but flagged, counted on its key apart from `budget_used`, and
-- reported by `tollgate reconcile`.
ALTER TABLE charges ADD COLUMN overdrawn BIGINT NOT NULL DEFAULT 0 CHECK (overdrawn IN (0, 1));
ALTER TABLE keys ADD COLUMN overdrawn_atomic BIGINT NOT NULL DEFAULT 0 CHECK (overdrawn_atomic >= 0);
