-- Studio API keys (Composable Studio `/api/v1/apikeys`): accounts own
-- projects; keys belong to an account and a project. A key's value is never
-- stored in the clear: `value_hash` is a keyed hash (HMAC-SHA256) used to find
-- a presented key, `value_sealed` the AES-256-GCM sealed value of an `sk` key
-- (so `withValue=true` can return it; `pk` values are shown once, at issue).

-- An account may name the wallet (and chain) that funds its projects' budgets.
CREATE TABLE studio_accounts (
    id            TEXT   PRIMARY KEY,
    name          TEXT   NOT NULL,
    wallet        TEXT,
    chain_id      BIGINT,
    created_at_ms BIGINT NOT NULL,
    CHECK ((wallet IS NULL) = (chain_id IS NULL))
);

-- A project's USDC budget is a Compose key row (no token ever exists for it)
-- owned by the account's wallet: Studio keys spend it through the same key
-- actors, funding check and charges as Compose keys.
CREATE TABLE studio_projects (
    id            TEXT   PRIMARY KEY,
    account_id    TEXT   NOT NULL REFERENCES studio_accounts (id),
    name          TEXT   NOT NULL,
    budget_key_id TEXT   REFERENCES keys (id),
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX studio_projects_by_account ON studio_projects (account_id);

CREATE TABLE studio_apikeys (
    id            TEXT   PRIMARY KEY,
    account_id    TEXT   NOT NULL REFERENCES studio_accounts (id),
    project_id    TEXT   NOT NULL REFERENCES studio_projects (id),
    name          TEXT   NOT NULL,
    key_type      TEXT   NOT NULL CHECK (key_type IN ('sk', 'pk')),
    role          TEXT   NOT NULL CHECK (role IN ('reader', 'executor', 'application', 'developer', 'admin')),
    enabled       BIGINT NOT NULL CHECK (enabled IN (0, 1)),
    value_hash    TEXT   NOT NULL UNIQUE,
    value_sealed  TEXT,
    masked_value  TEXT   NOT NULL,
    created_by    TEXT   NOT NULL,
    updated_by    TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT,
    -- a public key is always an executor, and its value is never kept
    CHECK (key_type = 'sk' OR (role = 'executor' AND value_sealed IS NULL)),
    CHECK (key_type = 'pk' OR value_sealed IS NOT NULL)
);
CREATE INDEX studio_apikeys_by_project ON studio_apikeys (account_id, project_id, created_at_ms);
