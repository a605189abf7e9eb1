-- The caller's own `x-request-id` of a paid call, when it sent a well-formed
-- one (1 to 64 of `[A-Za-z0-9._:-]`): it travels with the call's queue event
-- into its charge, so a client's report finds its charge and, through the
-- charge's batch, its settlement. Never an identity: `request_id` (ours)
-- stays the key.
ALTER TABLE charges ADD COLUMN client_request_id TEXT;
