-- Tollgate's first schema. Written in the SQL that PostgreSQL and SQLite share
-- (BIGINT, TEXT, CHECK, partial unique indexes, ON CONFLICT), so one migration
-- set serves both stores. Amounts are USDC atomic units in BIGINT columns named
-- *_atomic; times are milliseconds since the Unix epoch in *_at_ms columns.
-- Flags are BIGINT 0/1 because the portable driver decodes no booleans.

-- Prepaid balances per wallet and chain (settlement mode "ledger").
-- credited: every operator credit; debited: settled charges.
CREATE TABLE balances (
    wallet          TEXT   NOT NULL,
    chain_id        BIGINT NOT NULL,
    credited_atomic BIGINT NOT NULL DEFAULT 0 CHECK (credited_atomic >= 0),
    debited_atomic  BIGINT NOT NULL DEFAULT 0 CHECK (debited_atomic >= 0),
    -- bumped by every writer that must serialize with others on this wallet+chain
    lock_version    BIGINT NOT NULL DEFAULT 0,
    updated_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (wallet, chain_id),
    CHECK (debited_atomic <= credited_atomic)
);

-- The audit trail of operator credits.
CREATE TABLE credits (
    id            TEXT   PRIMARY KEY,
    wallet        TEXT   NOT NULL,
    chain_id      BIGINT NOT NULL,
    amount_atomic BIGINT NOT NULL CHECK (amount_atomic > 0),
    note          TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- SIWE nonces: issued by GET /api/sessions/nonce, consumed once.
CREATE TABLE siwe_nonces (
    nonce        TEXT   PRIMARY KEY,
    issued_at_ms BIGINT NOT NULL,
    used_at_ms   BIGINT
);
CREATE INDEX siwe_nonces_by_age ON siwe_nonces (issued_at_ms);

-- SIWE sessions; at most one active per wallet+chain.
CREATE TABLE sessions (
    id               TEXT   PRIMARY KEY,
    wallet           TEXT   NOT NULL,
    chain_id         BIGINT NOT NULL,
    active           BIGINT NOT NULL CHECK (active IN (0, 1)),
    created_at_ms    BIGINT NOT NULL,
    expires_at_ms    BIGINT NOT NULL,
    superseded_at_ms BIGINT
);
CREATE UNIQUE INDEX sessions_one_active ON sessions (wallet, chain_id) WHERE active = 1;

-- Compose keys. The token itself is never stored, only its SHA-256.
CREATE TABLE keys (
    id                  TEXT   PRIMARY KEY,
    token_sha256        TEXT   NOT NULL UNIQUE,
    wallet              TEXT   NOT NULL,
    chain_id            BIGINT NOT NULL,
    purpose             TEXT   NOT NULL CHECK (purpose IN ('api', 'session')),
    session_id          TEXT   REFERENCES sessions (id),
    name                TEXT   NOT NULL,
    budget_limit_atomic BIGINT NOT NULL CHECK (budget_limit_atomic >= 0),
    budget_used_atomic  BIGINT NOT NULL DEFAULT 0,
    status              TEXT   NOT NULL CHECK (status IN ('active', 'revoked', 'superseded')),
    created_at_ms       BIGINT NOT NULL,
    expires_at_ms       BIGINT NOT NULL,
    revoked_at_ms       BIGINT,
    -- invariant 1 at rest: a key never spends past its limit
    CHECK (budget_used_atomic >= 0 AND budget_used_atomic <= budget_limit_atomic),
    CHECK ((purpose = 'session') = (session_id IS NOT NULL))
);
CREATE INDEX keys_by_wallet ON keys (wallet, chain_id, status);
CREATE INDEX keys_by_session ON keys (session_id);

-- Settlement batches: one on-chain transaction (or one ledger debit) each.
CREATE TABLE settlement_batches (
    id             TEXT   PRIMARY KEY,
    chain_id       BIGINT NOT NULL,
    status         TEXT   NOT NULL CHECK (status IN ('open', 'sending', 'settled', 'failed')),
    total_atomic   BIGINT NOT NULL DEFAULT 0 CHECK (total_atomic >= 0),
    payer_count    BIGINT NOT NULL DEFAULT 0,
    tx_hash        TEXT,
    last_error     TEXT,
    created_at_ms  BIGINT NOT NULL,
    updated_at_ms  BIGINT NOT NULL
);
CREATE INDEX settlement_batches_by_status ON settlement_batches (chain_id, status);

-- Every attempt to send a batch, for operators and for "did it settle?" checks.
CREATE TABLE settlement_attempts (
    batch_id       TEXT   NOT NULL REFERENCES settlement_batches (id),
    attempt        BIGINT NOT NULL CHECK (attempt >= 1),
    started_at_ms  BIGINT NOT NULL,
    finished_at_ms BIGINT,
    outcome        TEXT   CHECK (outcome IN ('settled', 'reverted', 'error', 'unknown')),
    tx_hash        TEXT,
    error          TEXT,
    PRIMARY KEY (batch_id, attempt)
);

-- Charges: one per paid call, written once (the request id is the primary key).
CREATE TABLE charges (
    request_id     TEXT   PRIMARY KEY,
    key_id         TEXT   NOT NULL REFERENCES keys (id),
    wallet         TEXT   NOT NULL,
    chain_id       BIGINT NOT NULL,
    model          TEXT   NOT NULL,
    price_version  TEXT   NOT NULL,
    input_tokens   BIGINT NOT NULL CHECK (input_tokens >= 0),
    output_tokens  BIGINT NOT NULL CHECK (output_tokens >= 0),
    amount_atomic  BIGINT NOT NULL CHECK (amount_atomic >= 0),
    status         TEXT   NOT NULL CHECK (status IN ('pending', 'batched', 'settled', 'failed')),
    batch_id       TEXT   REFERENCES settlement_batches (id),
    created_at_ms  BIGINT NOT NULL
);
CREATE INDEX charges_by_key ON charges (key_id, created_at_ms);
CREATE INDEX charges_by_payer ON charges (wallet, chain_id, status);
