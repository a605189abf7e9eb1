-- Invariant 7: a wallet's keys may never spend past its funds, including
-- calls still running on keys already revoked, superseded or expired. A key's
-- unspent budget (limit − used) is committed against its wallet until
-- `committed_until_ms`: for a live key, its expiry plus the longest a hold can
-- live; once it is revoked or superseded, the revocation time plus that bound;
-- and at once when the gateway reports that no call can charge it any more.
-- The funding check sums exactly the keys still committed.
ALTER TABLE keys ADD COLUMN committed_until_ms BIGINT NOT NULL DEFAULT 0;

-- Keys stored before this column: assume the default bound (10.5 minutes).
UPDATE keys SET committed_until_ms = CASE
    WHEN status = 'active' THEN expires_at_ms + 630000
    ELSE COALESCE(revoked_at_ms, created_at_ms) + 630000
END;

CREATE INDEX keys_committed ON keys (wallet, chain_id, committed_until_ms);
