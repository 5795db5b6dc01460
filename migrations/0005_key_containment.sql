-- Containment by key (SPEC §6.4): one API key can carry several agents (its plain agent
-- and every /agent/{name}/ agent), so a key-scoped pause or kill must reach all of them,
-- including names first used after it.
--
-- agents.key_hash is the hash of the key alone, that is the plain agent's agent_hash.
-- Plain agents know it now; named agents created before this migration learn it on their
-- next call (the gateway only ever sees the key in flight). A key-scoped action on such
-- an agent waits in pending_key_status ('paused' or 'killed') and applies to the agent
-- until the key is known, then moves to the key's row.
ALTER TABLE agents ADD COLUMN key_hash TEXT;
UPDATE agents SET key_hash = agent_hash WHERE name IS NULL;
CREATE INDEX agents_key_hash_idx ON agents (key_hash);
ALTER TABLE agents ADD COLUMN pending_key_status TEXT;

-- One row per key ever contained; a lifted containment stays as 'active' so that the
-- replicas' change poll (updated_at) sees the lift too.
CREATE TABLE key_containments (
    key_hash TEXT PRIMARY KEY,
    containment_status TEXT NOT NULL,
    containment_reason TEXT,
    containment_changed_at BIGINT NOT NULL,
    origin_agent_id TEXT REFERENCES agents (id) ON DELETE SET NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX key_containments_updated_idx ON key_containments (updated_at);

-- The log records the scope of each change; a key-scoped row names the agent the
-- operator acted through and the key, so every agent of the key shows it.
ALTER TABLE containment_log ADD COLUMN scope TEXT NOT NULL DEFAULT 'agent';
ALTER TABLE containment_log ADD COLUMN key_hash TEXT;
CREATE INDEX containment_log_key_created_idx ON containment_log (key_hash, created_at);
