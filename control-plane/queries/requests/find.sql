SELECT digest, revision FROM client_requests WHERE request_id = $1
