-- Tool policies (schema "1.0"): the deployment-wide policy (owner '*') and one per agent
-- (owner = agent id), each with its change history; what the gateway recorded of them
-- (violations, tools first seen). Policy documents hold tool name globs and reasons,
-- never request content; violations and first-seen rows hold tool names only.
CREATE TABLE policies (
    owner TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    version INTEGER NOT NULL,
    document TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE policy_history (
    policy_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    version INTEGER NOT NULL,
    change TEXT NOT NULL,
    document TEXT,
    changed_at BIGINT NOT NULL,
    PRIMARY KEY (policy_id, version)
);
CREATE INDEX policy_history_owner_idx ON policy_history (owner, changed_at);

CREATE TABLE policy_violations (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    verdict TEXT NOT NULL,
    mode TEXT NOT NULL,
    blocked BOOLEAN NOT NULL,
    violations TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX policy_violations_agent_idx ON policy_violations (agent_id, created_at);

CREATE TABLE tool_first_seen (
    agent_id TEXT NOT NULL,
    tool TEXT NOT NULL,
    seen_as TEXT NOT NULL,
    first_seen_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, tool)
);
CREATE INDEX tool_first_seen_agent_idx ON tool_first_seen (agent_id, first_seen_at);
