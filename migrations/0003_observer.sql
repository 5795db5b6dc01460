-- Job leases for schedulers that share a database without Redis: one row per job, held
-- by one scheduler process until it expires or is released.
CREATE TABLE job_leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- A redelivery repeats the event (same event_id) to the same endpoint.
DROP INDEX webhook_deliveries_event_idx;
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);

