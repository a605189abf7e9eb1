-- Budget leases (docs/leases.md): a gateway node's key actor spends only from
-- budget it leased from the store, so several nodes can serve one key.
--
-- keys.leased_atomic is the sum of what every unreclaimed lease of the key
-- still covers (granted − charged − returned). Invariant 1 at rest becomes
-- budget_used + leased ≤ limit; every statement that changes either keeps it
-- (the guards are in ledger/src/store/leases.rs and charges.rs).
ALTER TABLE keys ADD COLUMN leased_atomic BIGINT NOT NULL DEFAULT 0;

-- One lease per key actor incarnation (a node starts a fresh one each time
-- it loads the key). open: the node may take more; returned: the node gave
-- back what it did not spend and waits for the charges it did spend to land
-- (for leases.grace_ms at most); reclaimed: its node stopped renewing
-- (lease_nodes) for leases.grace_ms — a crash — or it was returned that long
-- ago, and the key took back what it still covered. renewed_at_ms: when it
-- was last granted to or returned.
CREATE TABLE budget_leases (
    id              TEXT   PRIMARY KEY,
    key_id          TEXT   NOT NULL REFERENCES keys (id),
    node_id         TEXT   NOT NULL,
    granted_atomic  BIGINT NOT NULL CHECK (granted_atomic >= 0),
    charged_atomic  BIGINT NOT NULL DEFAULT 0 CHECK (charged_atomic >= 0),
    returned_atomic BIGINT NOT NULL DEFAULT 0 CHECK (returned_atomic >= 0),
    state           TEXT   NOT NULL CHECK (state IN ('open', 'returned', 'reclaimed')),
    -- store updates that granted to this lease (a hot key's cost to the store)
    takes           BIGINT NOT NULL DEFAULT 0,
    renewed_at_ms   BIGINT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    CHECK (charged_atomic + returned_atomic <= granted_atomic)
);
CREATE INDEX budget_leases_by_node ON budget_leases (node_id, state);
CREATE INDEX budget_leases_by_renewal ON budget_leases (state, renewed_at_ms);
CREATE INDEX budget_leases_by_key ON budget_leases (key_id, state);

-- Each gateway node's heartbeat: one row per node, renewed every
-- leases.grace_ms / 8. A node's open leases live while its row is fresh; a
-- lease row is never locked by a heartbeat (so renewing never waits on, or
-- deadlocks with, the charge writers that lock key then lease rows).
CREATE TABLE lease_nodes (
    node_id       TEXT   PRIMARY KEY,
    renewed_at_ms BIGINT NOT NULL
);

-- Which lease a charge was spent from (NULL: none — written by a path that
-- holds no lease, checked against the key's unleased budget).
ALTER TABLE charges ADD COLUMN lease_id TEXT;
