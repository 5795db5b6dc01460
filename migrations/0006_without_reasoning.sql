-- What enforce does with a response that has no analysable reasoning (SPEC §6.2), and
-- the hash of the output a checkpoint analysed instead.
--
-- agents.without_reasoning is allow | analyse_output | refuse; existing agents keep
-- today's behaviour (allow). integrity_checkpoints.output_block_hash is the SHA-256 of the
-- output block sent for analysis: like thinking_block_hash, never the text itself.
ALTER TABLE agents ADD COLUMN without_reasoning TEXT NOT NULL DEFAULT 'allow';
ALTER TABLE integrity_checkpoints ADD COLUMN output_block_hash TEXT;
