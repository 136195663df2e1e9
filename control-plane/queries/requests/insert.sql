INSERT INTO client_requests (request_id, digest, revision, recorded_at_ms) VALUES ($1, $2, $3, $4)
