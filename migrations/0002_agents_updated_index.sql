-- Replicas ask every few seconds which agents changed (to drop stale cache entries);
-- this keeps that question an index range scan instead of a table scan.
CREATE INDEX agents_updated_idx ON agents (updated_at);
