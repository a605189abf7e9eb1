-- Invariant 9: a restriction on a Studio key (a disable, an expiry set or
-- shortened) is lifted (enable; expiry lengthened or removed) only by a role
-- at least as high as the one that set it. Each column records the highest
-- role that restricted the key since the restriction was last lifted:
-- `disabled_by_role` while the key is disabled, `expiry_set_by_role` while
-- it has an expiry (NULL otherwise).
ALTER TABLE studio_apikeys ADD COLUMN disabled_by_role TEXT
    CHECK (disabled_by_role IS NULL OR disabled_by_role IN ('reader', 'executor', 'application', 'developer', 'admin'));
ALTER TABLE studio_apikeys ADD COLUMN expiry_set_by_role TEXT
    CHECK (expiry_set_by_role IS NULL OR expiry_set_by_role IN ('reader', 'executor', 'application', 'developer', 'admin'));

-- Who restricted an existing key is unknown: only an admin may lift it.
UPDATE studio_apikeys SET disabled_by_role = 'admin' WHERE enabled = 0;
UPDATE studio_apikeys SET expiry_set_by_role = 'admin' WHERE expires_at_ms IS NOT NULL;
