SELECT revision, stream, stream_version, event_type, schema_version, payload,
       actor, reason, request_id, recorded_at_ms
FROM events
WHERE revision > $1 AND revision <= $2
  AND ($3 = '' OR stream = $3)
  AND ($4 = '' OR substr(stream, 1, length($4)) = $4)
  AND ($5 = '' OR actor = $5)
  AND recorded_at_ms >= $6 AND recorded_at_ms < $7
ORDER BY revision
LIMIT $8
