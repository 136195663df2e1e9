-- The event log: every change to tenants and policies, in commit order, never changed.
CREATE TABLE IF NOT EXISTS events (
    revision        BIGINT  PRIMARY KEY,
    stream          TEXT    NOT NULL,
    stream_version  BIGINT  NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    payload         BYTEA   NOT NULL,
    actor           TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    request_id      TEXT    NOT NULL,
    recorded_at_ms  BIGINT  NOT NULL,
    CONSTRAINT events_revision_positive CHECK (revision > 0),
    CONSTRAINT events_stream_version_unique UNIQUE (stream, stream_version)
);

CREATE INDEX IF NOT EXISTS events_recorded_at ON events (recorded_at_ms);

-- Idempotency: the outcome of every write that carried a client request id.
CREATE TABLE IF NOT EXISTS client_requests (
    request_id      TEXT    PRIMARY KEY,
    digest          BYTEA   NOT NULL,
    revision        BIGINT  NOT NULL,
    recorded_at_ms  BIGINT  NOT NULL
);

CREATE OR REPLACE FUNCTION heimdall_events_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'heimdall events are immutable';
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS events_immutable ON events;
CREATE TRIGGER events_immutable BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION heimdall_events_immutable();
