SELECT revision, stream, stream_version, event_type, schema_version, payload,
       actor, reason, request_id, recorded_at_ms
FROM events
WHERE revision > $1 AND revision <= $2
ORDER BY revision
