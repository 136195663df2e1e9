//! The control plane's HTTP listener: liveness, readiness, metrics, and the OPA bundle endpoint.
//!
//! `/bundles/bundle.tar.gz` answers GET and HEAD with an `ETag`, honours `If-None-Match` (304),
//! and OPA's long polling (`Prefer: wait=N`). `/bundles/revisions/<rev>.tar.gz` rebuilds any past
//! revision's bundle from the events, byte for byte. Both need a bearer token: the bundle names
//! every user and group.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use heimdall_opa::bundle::Bundle;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::auth::AdminTokens;
use crate::bundle::{PublishedBundles, bundle_of};
use crate::ledger::Ledger;
use crate::metrics::ControlPlaneMetrics;
use crate::store::EventStore;

/// How long readiness waits for the database.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest long poll accepted.
const MAX_LONG_POLL: Duration = Duration::from_secs(300);
/// The content type OPA expects from a server that supports long polling.
const LONG_POLL_CONTENT_TYPE: &str = "application/vnd.openpolicyagent.bundles";

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub store: EventStore,
    pub registry: Registry,
    pub ledger: Arc<Ledger>,
    pub bundles: PublishedBundles,
    /// Who may download bundles: the configured bundle tokens and the admin tokens.
    pub bundle_readers: Vec<AdminTokens>,
    pub metrics: ControlPlaneMetrics,
}

/// Builds the router of the HTTP listener.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/bundles/bundle.tar.gz", get(latest_bundle))
        .route("/bundles/revisions/{file}", get(revision_bundle))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, String) {
    match tokio::time::timeout(READINESS_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "readiness check failed");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable\n".to_owned(),
            );
        }
        Err(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "database timed out\n".to_owned(),
            );
        }
    }
    if !state.bundles.notifications_connected() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "nats disconnected\n".to_owned(),
        );
    }
    if let Some(error) = state.bundles.health().failing {
        let message = format!("bundle publishing failing: {error}\n");
        return (StatusCode::SERVICE_UNAVAILABLE, message);
    }
    (StatusCode::OK, "ready\n".to_owned())
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(error) = encoder.encode(&state.registry.gather(), &mut body) {
        tracing::error!(error = %error, "encoding metrics failed");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
        body,
    )
        .into_response()
}

async fn latest_bundle(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let response = serve_latest(&state, &headers).await;
    state
        .metrics
        .bundle_requests
        .with_label_values(&[response.status().as_str()])
        .inc();
    response
}

async fn serve_latest(state: &HttpState, headers: &HeaderMap) -> Response {
    if let Some(refusal) = authenticate(state, headers) {
        return refusal;
    }
    let Some(latest) = state.bundles.latest() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no bundle built yet");
    };
    let long_poll = requested_wait(headers);
    let unchanged = if_none_match(headers).is_some_and(|tag| tag == etag(&latest));
    if !unchanged {
        return bundle_response(&latest, long_poll.is_some());
    }
    let Some(wait) = long_poll else {
        return not_modified(&latest, false);
    };
    match tokio::time::timeout(wait, state.bundles.changed_from(&latest.digest)).await {
        Ok(Some(newer)) => bundle_response(&newer, true),
        _ => not_modified(&latest, true),
    }
}

async fn revision_bundle(
    State(state): State<HttpState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = authenticate(&state, &headers) {
        return refusal;
    }
    let Some(revision) = file
        .strip_suffix(".tar.gz")
        .and_then(|number| number.parse::<u64>().ok())
    else {
        return text(StatusCode::NOT_FOUND, "no such bundle");
    };
    if revision == 0 {
        return text(StatusCode::NOT_FOUND, "no such revision");
    }
    let bundle = match state
        .ledger
        .state_at(revision)
        .await
        .and_then(|past| bundle_of(&past))
    {
        Ok(bundle) => bundle,
        Err(error) if error.code().http_status() == StatusCode::NOT_FOUND => {
            return text(StatusCode::NOT_FOUND, "no such revision");
        }
        Err(error) => {
            tracing::error!(revision, error = %error, "rebuilding a past bundle failed");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot rebuild the bundle",
            );
        }
    };
    bundle_response(&bundle, false)
}

/// Returns a 401 unless the request carries a bundle or admin token.
fn authenticate(state: &HttpState, headers: &HeaderMap) -> Option<Response> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let accepted = state
        .bundle_readers
        .iter()
        .any(|tokens| tokens.authenticate(authorization).is_ok());
    if accepted {
        return None;
    }
    let mut response = text(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(response)
}

fn etag(bundle: &Bundle) -> String {
    format!("\"{}\"", bundle.digest)
}

fn if_none_match(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
}

/// Reads `Prefer: wait=N` (seconds), capped.
fn requested_wait(headers: &HeaderMap) -> Option<Duration> {
    let prefer = headers.get("prefer")?.to_str().ok()?;
    prefer
        .split([',', ';'])
        .filter_map(|preference| preference.trim().strip_prefix("wait="))
        .find_map(|seconds| seconds.trim().parse::<u64>().ok())
        .map(|seconds| Duration::from_secs(seconds).min(MAX_LONG_POLL))
}

fn bundle_response(bundle: &Bundle, long_poll: bool) -> Response {
    let content_type = if long_poll {
        LONG_POLL_CONTENT_TYPE
    } else {
        "application/gzip"
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ETAG, etag(bundle))
        .header("x-heimdall-bundle-revision", bundle.revision.as_str())
        .body(Body::from(bundle.bytes.clone()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn not_modified(bundle: &Bundle, long_poll: bool) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(tag) = HeaderValue::from_str(&etag(bundle)) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    if long_poll {
        let content_type = HeaderValue::from_static(LONG_POLL_CONTENT_TYPE);
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    response
}

fn text(status: StatusCode, message: &str) -> Response {
    (status, format!("{message}\n")).into_response()
}
