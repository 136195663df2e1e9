-- The event log: every change to tenants and policies, in commit order, never changed.
CREATE TABLE IF NOT EXISTS events (
    revision        INTEGER PRIMARY KEY CHECK (revision > 0),
    stream          TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    payload         BLOB    NOT NULL,
    actor           TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    request_id      TEXT    NOT NULL,
    recorded_at_ms  INTEGER NOT NULL,
    UNIQUE (stream, stream_version)
);

CREATE INDEX IF NOT EXISTS events_recorded_at ON events (recorded_at_ms);

-- Idempotency: the outcome of every write that carried a client request id.
CREATE TABLE IF NOT EXISTS client_requests (
    request_id      TEXT    PRIMARY KEY,
    digest          BLOB    NOT NULL,
    revision        INTEGER NOT NULL,
    recorded_at_ms  INTEGER NOT NULL
);

CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'heimdall events are immutable');
END;

CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'heimdall events are immutable');
END;
