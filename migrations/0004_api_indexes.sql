-- Indexes for the management API's list queries (SPEC §9.3, §10.2) that 0001 lacks.
--
-- The timeline reads an agent's nudges by time whatever their status, and webhook
-- endpoints are listed newest first.
CREATE INDEX nudges_agent_created_idx ON nudges (agent_id, created_at);
CREATE INDEX webhook_endpoints_created_idx ON webhook_endpoints (created_at);
