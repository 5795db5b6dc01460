-- mnemomd schema, version 1: every table of SPEC §9.3.
--
-- One file serves SQLite and PostgreSQL: ids are text (prefixed, e.g. smolt-…, ic-…),
-- times are epoch milliseconds (BIGINT), JSON documents are TEXT, flags are BOOLEAN
-- (0/1 in SQLite). A migration that must differ per engine is written as
-- NNNN_name.sqlite.sql and NNNN_name.postgresql.sql instead.
--
-- Privacy: no column holds a provider key, a prompt, a response or thinking text.
-- Checkpoints keep a SHA-256 of the thinking; only trace_outbox holds short excerpts of
-- model output, and only until its expires_at (OUTBOX_TTL).

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    agent_hash TEXT NOT NULL UNIQUE,
    name TEXT,
    enforcement_mode TEXT NOT NULL DEFAULT 'observe',
    aip_enabled BOOLEAN NOT NULL DEFAULT TRUE,
    aap_enabled BOOLEAN NOT NULL DEFAULT TRUE,
    nudge_strategy TEXT NOT NULL DEFAULT 'always',
    nudge_rate DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    nudge_threshold INTEGER NOT NULL DEFAULT 3,
    containment_status TEXT NOT NULL DEFAULT 'active',
    containment_reason TEXT,
    containment_changed_at BIGINT,
    auto_containment_threshold INTEGER,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_seen_at BIGINT
);
CREATE INDEX agents_last_seen_idx ON agents (last_seen_at);
CREATE INDEX agents_created_idx ON agents (created_at);

CREATE TABLE alignment_cards (
    agent_id TEXT PRIMARY KEY REFERENCES agents (id) ON DELETE CASCADE,
    card_id TEXT NOT NULL,
    card TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE conscience_values (
    agent_id TEXT PRIMARY KEY REFERENCES agents (id) ON DELETE CASCADE,
    value_set TEXT NOT NULL,
    is_default BOOLEAN NOT NULL DEFAULT TRUE,
    updated_at BIGINT NOT NULL
);

CREATE TABLE integrity_checkpoints (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    session_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT,
    verdict TEXT NOT NULL,
    concerns TEXT NOT NULL DEFAULT '[]',
    reasoning_summary TEXT,
    conscience_context TEXT,
    window_position TEXT,
    analysis_metadata TEXT,
    thinking_block_hash TEXT,
    synthetic BOOLEAN NOT NULL DEFAULT FALSE,
    synthetic_reason TEXT,
    trace_id TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX checkpoints_agent_created_idx ON integrity_checkpoints (agent_id, created_at);
CREATE INDEX checkpoints_agent_verdict_idx ON integrity_checkpoints (agent_id, verdict, created_at);
CREATE INDEX checkpoints_agent_session_idx ON integrity_checkpoints (agent_id, session_id, created_at);
CREATE INDEX checkpoints_created_idx ON integrity_checkpoints (created_at);

CREATE TABLE drift_alerts (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    session_id TEXT,
    source TEXT NOT NULL,
    severity TEXT,
    alert TEXT NOT NULL,
    streak_key TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX drift_alerts_agent_created_idx ON drift_alerts (agent_id, created_at);
CREATE UNIQUE INDEX drift_alerts_streak_idx ON drift_alerts (agent_id, streak_key);

CREATE TABLE ap_traces (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    session_id TEXT,
    checkpoint_id TEXT,
    outbox_id TEXT UNIQUE,
    trace TEXT NOT NULL,
    verification TEXT,
    verified BOOLEAN,
    created_at BIGINT NOT NULL
);
CREATE INDEX traces_agent_created_idx ON ap_traces (agent_id, created_at);
CREATE INDEX traces_checkpoint_idx ON ap_traces (checkpoint_id);
CREATE INDEX traces_created_idx ON ap_traces (created_at);

CREATE TABLE nudges (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    session_id TEXT,
    checkpoint_id TEXT,
    notice TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    created_at BIGINT NOT NULL,
    delivered_at BIGINT,
    expires_at BIGINT NOT NULL
);
CREATE INDEX nudges_agent_status_idx ON nudges (agent_id, status, created_at);
CREATE INDEX nudges_status_expiry_idx ON nudges (status, expires_at);

CREATE TABLE containment_log (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    action TEXT NOT NULL,
    from_status TEXT NOT NULL,
    to_status TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX containment_log_agent_created_idx ON containment_log (agent_id, created_at);

CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    description TEXT,
    event_types TEXT NOT NULL,
    secret TEXT NOT NULL,
    allow_http BOOLEAN NOT NULL DEFAULT FALSE,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    disabled_reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    agent_id TEXT,
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    last_status_code INTEGER,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT,
    lease_owner TEXT,
    lease_expires_at BIGINT
);
CREATE UNIQUE INDEX webhook_deliveries_event_idx ON webhook_deliveries (endpoint_id, event_id);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, created_at);
CREATE INDEX webhook_deliveries_created_idx ON webhook_deliveries (created_at);

CREATE TABLE trace_outbox (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    session_id TEXT,
    provider TEXT NOT NULL,
    model TEXT,
    checkpoint_id TEXT,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    parked BOOLEAN NOT NULL DEFAULT FALSE,
    last_error TEXT,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX trace_outbox_expiry_idx ON trace_outbox (expires_at);
CREATE INDEX trace_outbox_ready_idx ON trace_outbox (parked, created_at);
