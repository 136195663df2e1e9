//! Turns proxy errors into Prometheus API error responses: `{"status":"error","errorType":…,
//! "error":…}` with the status code that says who is to blame.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// Who caused a failure: it decides the status family and how loudly it is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The request was wrong or not allowed: 4xx.
    Client,
    /// The upstream failed or was unreachable: 502/504, or its own status relayed.
    Upstream,
    /// The proxy itself cannot answer (not ready, overloaded, a bug): 5xx.
    Internal,
}

/// An error answered in the Prometheus envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProxyError {
    pub status: StatusCode,
    /// Prometheus' `errorType`: `bad_data`, `unauthorized`, `forbidden`, `not_found`,
    /// `unavailable`, `timeout` or `internal`.
    pub error_type: &'static str,
    pub message: String,
    pub blame: Blame,
    /// Seconds a client should wait before retrying (503).
    pub retry_after: Option<u64>,
}

impl ProxyError {
    fn new(status: StatusCode, error_type: &'static str, blame: Blame, message: String) -> Self {
        Self {
            status,
            error_type,
            message,
            blame,
            retry_after: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad_data",
            Blame::Client,
            message.into(),
        )
    }

    /// 401: no identity could be established.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            Blame::Client,
            message.into(),
        )
    }

    /// 403: the identity is known and the policy denies.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            Blame::Client,
            message.into(),
        )
    }

    /// 404: an endpoint the proxy does not serve.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            Blame::Client,
            message.into(),
        )
    }

    /// 413: a body over the configured limit.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_data",
            Blame::Client,
            message.into(),
        )
    }

    /// 431: request headers over the limit.
    pub fn headers_too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "bad_data",
            Blame::Client,
            message.into(),
        )
    }

    /// 422: a valid query that cannot be narrowed exactly to what the caller may read.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "execution",
            Blame::Client,
            message.into(),
        )
    }

    /// 503: the proxy cannot decide yet (no bundle or keys loaded).
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            Blame::Internal,
            message.into(),
        );
        error.retry_after = Some(1);
        error
    }

    /// 502: the upstream could not be reached or answered garbage.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "unavailable",
            Blame::Upstream,
            message.into(),
        )
    }

    /// 504: the upstream did not answer in time.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            Blame::Upstream,
            message.into(),
        )
    }

    /// 500: a failure inside the proxy, such as a policy evaluation error. Never an allow.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            Blame::Internal,
            message.into(),
        )
    }
}

/// Builds an envelope error response.
pub fn error_body(error_type: &str, message: &str) -> String {
    serde_json::json!({"status": "error", "errorType": error_type, "error": message}).to_string()
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            error_body(self.error_type, &self.message),
        )
            .into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_use_the_prometheus_envelope_and_their_status() {
        let response = ProxyError::forbidden("tenant \"acme\" is not readable").into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body should be readable");
        let value: serde_json::Value = serde_json::from_slice(&body).expect("body should be JSON");
        assert_eq!(value["status"], "error");
        assert_eq!(value["errorType"], "forbidden");
        assert_eq!(value["error"], "tenant \"acme\" is not readable");
    }

    #[test]
    fn unauthorized_asks_for_a_bearer_token_and_unavailable_for_a_retry() {
        let response = ProxyError::unauthorized("missing token").into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let response = ProxyError::unavailable("no bundle loaded").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
