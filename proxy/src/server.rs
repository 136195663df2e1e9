//! Starts the proxy: loads keys and the bundle in the background, serves the Prometheus API on
//! its listener and metrics and health on another, until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::built_from_decisions::BuiltFromDecisions;
use crate::bundle_sync::{BundleSource, BundleSync, Notifications, SyncSettings};
use crate::decision::{Decider, Engine, RemoteOpa};
use crate::gateway::{Endpoint, Gateway, IncomingRequest, PROMETHEUS_PREFIX, PartialTenants};
use crate::identity::{IdentitySettings, JwksCache, JwtVerifier, KeySource};
use crate::metrics::ProxyMetrics;
use crate::respond::ProxyError;
use crate::rewrite::TenantBinding;
use crate::upstream::{Upstream, UpstreamSettings};

/// The read endpoints of the Prometheus API the proxy serves, also under `/prometheus`.
const READ_ROUTES: &[&str] = &[
    "/api/v1/query",
    "/api/v1/query_range",
    "/api/v1/query_exemplars",
    "/api/v1/series",
    "/api/v1/labels",
    "/api/v1/label/{name}/values",
    "/api/v1/metadata",
    "/api/v1/rules",
    "/api/v1/alerts",
    "/api/v1/status/buildinfo",
    "/api/v1/format_query",
];
const PUSH_ROUTE: &str = "/api/v1/push";
/// Distinct decision combinations whose enforcement (or label policies) a proxy remembers.
const BUILT_FROM_DECISIONS_CAPACITY: usize = 4096;
/// Mimir's ruler configuration API.
const RULER_ROUTES: &[&str] = &[
    "/prometheus/config/v1/rules",
    "/prometheus/config/v1/rules/{namespace}",
    "/prometheus/config/v1/rules/{namespace}/{group}",
];
/// Where the development key set is served.
const DEV_JWKS_ROUTE: &str = "/.well-known/jwks.json";

/// What the proxy needs to run, validated by the caller.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Where the Prometheus API is served.
    pub listen_addr: SocketAddr,
    /// Where /metrics, /healthz and /readyz are served.
    pub metrics_addr: SocketAddr,
    pub identity: IdentitySettings,
    pub upstream: UpstreamSettings,
    /// The most tenants one request may name.
    pub max_tenants: usize,
    /// Reads without `X-Scope-OrgID` go to every tenant the subject may read; off: 400.
    pub auto_resolve_tenants: bool,
    pub partial_tenants: PartialTenants,
    /// How many decisions are cached per bundle revision.
    pub decision_cache_size: usize,
    /// The most a request body may weigh.
    pub max_body_bytes: usize,
    /// How often the bundle is fetched even without a notification.
    pub reconcile_interval: Duration,
    /// Decide with a remote OPA instead of the embedded engine.
    pub remote_opa: Option<RemoteOpaSettings>,
    /// Serve the (static, development) key set at `/.well-known/jwks.json`.
    pub serve_jwks: bool,
}

/// A remote OPA's data API.
#[derive(Debug, Clone)]
pub struct RemoteOpaSettings {
    pub url: String,
    pub timeout: Duration,
    pub insecure_skip_verify: bool,
}

/// Where bundles and change notifications come from.
pub struct ProxySources {
    pub bundles: BundleSource,
    pub notifications: Notifications,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

#[derive(Clone)]
struct AppState {
    gateway: Arc<Gateway>,
    registry: Registry,
    jwks: Option<Arc<jsonwebtoken::jwk::JwkSet>>,
}

/// Serves until `shutdown` turns true, then drains in-flight requests and returns.
pub async fn run(
    settings: ProxySettings,
    sources: ProxySources,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StartError> {
    let registry = Registry::new();
    let metrics = ProxyMetrics::register(&registry)
        .map_err(|error| StartError::Setup(format!("registering metrics: {error}")))?;
    let listener = bind(settings.listen_addr, "server.main.addr").await?;
    let metrics_listener = bind(settings.metrics_addr, "server.metrics.addr").await?;

    let (sync, live) = BundleSync::new(
        sources.bundles,
        SyncSettings {
            reconcile_interval: settings.reconcile_interval,
            load_engine: settings.remote_opa.is_none(),
        },
        metrics.clone(),
    );
    let syncing = tokio::spawn(sync.run(sources.notifications, shutdown.clone()));

    let keys = Arc::new(
        JwksCache::new(
            settings.identity.keys.clone(),
            settings.identity.min_refresh_interval,
            metrics.clone(),
        )
        .map_err(|error| StartError::Setup(error.to_string()))?,
    );
    let jwks = match &settings.identity.keys {
        KeySource::Static(set) if settings.serve_jwks => Some(Arc::new(set.clone())),
        _ => None,
    };
    let verifier = Arc::new(JwtVerifier::new(
        settings.identity.clone(),
        keys,
        metrics.clone(),
    ));
    let refreshing = tokio::spawn(refresh_keys(
        verifier.clone(),
        settings.identity.clone(),
        shutdown.clone(),
    ));

    let engine = match &settings.remote_opa {
        None => Engine::Embedded,
        Some(opa) => Engine::Remote(
            RemoteOpa::new(&opa.url, opa.timeout, opa.insecure_skip_verify)
                .map_err(StartError::Setup)?,
        ),
    };
    let decider = Decider::new(engine, live, settings.decision_cache_size, metrics.clone());
    let upstream =
        Upstream::new(settings.upstream.clone(), metrics.clone()).map_err(StartError::Setup)?;
    let fan_out =
        settings.upstream.tenant_binding == TenantBinding::Mimir && !settings.upstream.federation;
    let tenants_at_once = settings.upstream.tenants_at_once;
    let gateway = Arc::new(Gateway {
        verifier,
        decider,
        upstream,
        metrics,
        max_tenants: settings.max_tenants,
        auto_resolve_tenants: settings.auto_resolve_tenants,
        partial_tenants: settings.partial_tenants,
        max_body_bytes: settings.max_body_bytes,
        fan_out,
        tenants_at_once,
        enforcements: BuiltFromDecisions::new(BUILT_FROM_DECISIONS_CAPACITY),
        label_policies: BuiltFromDecisions::new(BUILT_FROM_DECISIONS_CAPACITY),
    });
    let state = AppState {
        gateway,
        registry,
        jwks,
    };
    tracing::info!(
        addr = %settings.listen_addr,
        metrics_addr = %settings.metrics_addr,
        upstream = %crate::bundle_sync::redact_url(&settings.upstream.url),
        "proxy listening"
    );
    let mut metrics_shutdown = shutdown.clone();
    let api = axum::serve(listener, api_router(state.clone()))
        .with_graceful_shutdown(async move { stopped(&mut shutdown).await });
    let operations = axum::serve(metrics_listener, operations_router(state))
        .with_graceful_shutdown(async move { stopped(&mut metrics_shutdown).await });
    let (api_result, operations_result) = tokio::join!(api, operations);
    syncing.abort();
    refreshing.abort();
    api_result.map_err(|error| StartError::Setup(format!("proxy server: {error}")))?;
    operations_result.map_err(|error| StartError::Setup(format!("metrics server: {error}")))?;
    tracing::info!("proxy stopped");
    Ok(())
}

fn api_router(state: AppState) -> Router {
    let mut router = Router::new();
    for prefix in ["", PROMETHEUS_PREFIX] {
        for route in READ_ROUTES {
            let endpoint = Endpoint::Read(route);
            let handler = move |State(state): State<AppState>, request: Request| {
                serve_endpoint(state, endpoint, request)
            };
            router = router.route(&format!("{prefix}{route}"), get(handler).post(handler));
        }
        let push = move |State(state): State<AppState>, request: Request| {
            serve_endpoint(state, Endpoint::Push, request)
        };
        router = router.route(&format!("{prefix}{PUSH_ROUTE}"), post(push));
    }
    for route in RULER_ROUTES {
        let read = move |State(state): State<AppState>, request: Request| {
            let write = request.method() != http::Method::GET;
            serve_endpoint(state, Endpoint::Ruler { route, write }, request)
        };
        let methods = match *route {
            "/prometheus/config/v1/rules" => get(read),
            "/prometheus/config/v1/rules/{namespace}" => get(read).post(read).delete(read),
            _ => get(read).delete(read),
        };
        router = router.route(route, methods);
    }
    if state.jwks.is_some() {
        router = router.route(DEV_JWKS_ROUTE, get(serve_jwks));
    }
    router
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

fn operations_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn serve_endpoint(state: AppState, endpoint: Endpoint, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let request = IncomingRequest {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
    };
    state.gateway.handle(endpoint, request).await
}

/// Anything not listed is refused, never passed through.
async fn not_found(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    let response = ProxyError::not_found(format!(
        "{} {} is not an endpoint this proxy serves",
        request.method(),
        request.uri().path()
    ))
    .into_response();
    state
        .gateway
        .observe(request.method(), "other", response.status(), started);
    response
}

async fn serve_jwks(State(state): State<AppState>) -> Response {
    match &state.jwks {
        Some(set) => (
            [(http::header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(set.as_ref()).unwrap_or_default(),
        )
            .into_response(),
        None => ProxyError::not_found("no key set is served here").into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready once a bundle and the signing keys are loaded.
async fn readyz(State(state): State<AppState>) -> Response {
    let gateway = &state.gateway;
    if let Err(error) = gateway.decider.current_bundle() {
        return error.into_response();
    }
    if !gateway.verifier.keys().is_loaded() {
        return ProxyError::unavailable("signing keys not loaded yet").into_response();
    }
    "ready".into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut buffer) {
        Ok(()) => (
            StatusCode::OK,
            [(http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            buffer,
        )
            .into_response(),
        Err(error) => ProxyError::internal(format!("encoding metrics: {error}")).into_response(),
    }
}

/// Fetches the signing keys at start (quickly retrying until they load) and then on an
/// interval; a change forgets every verified token.
async fn refresh_keys(
    verifier: Arc<JwtVerifier>,
    settings: IdentitySettings,
    mut shutdown: watch::Receiver<bool>,
) {
    if matches!(settings.keys, KeySource::Static(_)) {
        return;
    }
    let mut retry_delay = Duration::from_millis(200);
    let mut trigger = "start";
    loop {
        let delay = match verifier.keys().refresh(trigger).await {
            Ok(changed) => {
                if changed {
                    verifier.forget_verified_tokens();
                }
                trigger = "interval";
                settings.refresh_interval
            }
            Err(error) => {
                tracing::warn!(error = %error, "fetching signing keys failed");
                let delay = retry_delay;
                retry_delay = (retry_delay * 2).min(settings.refresh_interval);
                delay
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { key, addr, source })
}
