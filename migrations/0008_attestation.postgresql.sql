-- The tamper-evident record (docs/attestation.md): one attestation row per checkpoint and
-- the public half of every signing key that signed one.
--
-- checkpoint_attestations holds hashes, ids and the signature, never the analysed text.
-- Its rows outlive the checkpoints that retention deletes (pruned is then set), so the
-- chains and Merkle trees of newer checkpoints stay verifiable. seq orders an agent's
-- Merkle leaves: the order rows were stored in. signing_keys holds public keys only.
CREATE TABLE checkpoint_attestations (
    seq BIGSERIAL PRIMARY KEY,
    checkpoint_id TEXT NOT NULL UNIQUE,
    agent_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    chain_segment TEXT NOT NULL,
    chain_position INTEGER NOT NULL,
    chain_hash TEXT NOT NULL,
    prev_chain_hash TEXT,
    leaf_hash TEXT NOT NULL,
    input_commitments TEXT NOT NULL,
    card_id TEXT,
    confidence DOUBLE PRECISION,
    analysis_model TEXT,
    analysis_duration_ms DOUBLE PRECISION,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    pruned BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);
CREATE INDEX attestations_agent_seq_idx ON checkpoint_attestations (agent_id, seq);
CREATE INDEX attestations_chain_idx ON checkpoint_attestations
    (agent_id, session_id, chain_segment, chain_position);

CREATE TABLE signing_keys (
    key_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);
