-- Settlement on an EVM chain (docs/settlement.md, "On chain"). The store
-- owns the operator's nonces and every signed transaction (an outbox
-- written before broadcast), so a restart rebroadcasts the same bytes and
-- never signs a second transaction for a batch that one already settled.

-- The number the contract knows a batch by (its bitmap id), per chain.
-- Ledger batches have none.
ALTER TABLE settlement_batches ADD COLUMN chain_batch_no BIGINT;
CREATE UNIQUE INDEX settlement_batches_by_chain_no
    ON settlement_batches (chain_id, chain_batch_no);

-- One row per chain: the operator's next nonce (ours, not the provider's),
-- the next batch number, why settlement is paused (NULL: running), and the
-- settler currently active on the chain (one at a time, by lease).
CREATE TABLE chain_accounts (
    chain_id         BIGINT PRIMARY KEY,
    operator         TEXT   NOT NULL,
    next_nonce       BIGINT NOT NULL CHECK (next_nonce >= 0),
    next_batch_no    BIGINT NOT NULL CHECK (next_batch_no >= 1),
    paused_reason    TEXT,
    settler_id       TEXT,
    settler_until_ms BIGINT NOT NULL DEFAULT 0,
    updated_at_ms    BIGINT NOT NULL
);

-- Each payer of an on-chain batch: the sum of its charges in the batch and
-- what the receipt proved ('pending' until then).
CREATE TABLE settlement_payers (
    batch_id      TEXT   NOT NULL REFERENCES settlement_batches (id),
    payer         TEXT   NOT NULL,
    amount_atomic BIGINT NOT NULL CHECK (amount_atomic > 0),
    charge_count  BIGINT NOT NULL CHECK (charge_count > 0),
    outcome       TEXT   NOT NULL CHECK (outcome IN ('pending', 'settled', 'failed')),
    PRIMARY KEY (batch_id, payer)
);

-- The outbox: every transaction the settler signed, persisted before it is
-- broadcast. Every hash of a nonce is kept until one of them is mined.
CREATE TABLE chain_txs (
    tx_hash                  TEXT   PRIMARY KEY,
    chain_id                 BIGINT NOT NULL,
    batch_id                 TEXT   NOT NULL REFERENCES settlement_batches (id),
    nonce                    BIGINT NOT NULL CHECK (nonce >= 0),
    raw_tx                   TEXT   NOT NULL,
    gas_limit                BIGINT NOT NULL,
    max_fee_per_gas          BIGINT NOT NULL,
    max_priority_fee_per_gas BIGINT NOT NULL,
    created_at_ms            BIGINT NOT NULL,
    broadcast_at_ms          BIGINT
);
CREATE INDEX chain_txs_by_batch ON chain_txs (batch_id, created_at_ms);
