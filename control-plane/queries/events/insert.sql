INSERT INTO events (
    revision, stream, stream_version, event_type, schema_version, payload,
    actor, reason, request_id, recorded_at_ms
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
