-- Settlement finality (docs/settlement.md, "On chain"): a batch whose
-- settling transaction is mined, succeeded and proved every payer's outcome
-- is `confirming` until its block is `chains.ID.finality_confirmations`
-- deep; only then is it `settled` and are its charges. While confirming, the
-- batch stays `sending` (its charges `batched`) with the block it was mined
-- in noted here; the settler re-reads the receipt every pass, and when the
-- chain loses it (a reorg) these are cleared and the batch is sent again.
--
-- Columns, not a new status value: the status CHECK of settlement_batches
-- cannot change in place on SQLite, and both stores run this same SQL.
-- The store reports such a batch's status as 'confirming'.
ALTER TABLE settlement_batches ADD COLUMN mined_block_no BIGINT;
ALTER TABLE settlement_batches ADD COLUMN mined_block_hash TEXT;
