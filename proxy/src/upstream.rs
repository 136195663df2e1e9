//! Sends allowed requests to the upstream (Mimir, or a Prometheus-compatible store) with the
//! tenants the proxy decided on, and reads the answer back with a size limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use bytes::Bytes;
use heimdall_opa::TenantId;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};

use crate::label_policy::LABEL_POLICY_HEADER;
use crate::metrics::ProxyMetrics;
use crate::respond::ProxyError;
use crate::rewrite::TenantBinding;
use crate::tenants::{SCOPE_HEADER, scope_value};

/// Request headers passed upstream; everything else (the client's `Authorization`,
/// `X-Scope-OrgID`, `X-Prom-Label-Policy`, cookies, hop-by-hop headers) stays behind.
///
/// `Accept` stays behind too: the proxy reads JSON answers (to add warnings), so it lets the
/// upstream answer in its default JSON.
const FORWARDED_REQUEST_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "user-agent",
    "x-prometheus-remote-write-version",
];
/// Response headers passed back to the client.
const FORWARDED_RESPONSE_HEADERS: &[&str] = &["content-type", "content-encoding", "retry-after"];

/// How the proxy authenticates to the upstream.
#[derive(Clone, PartialEq, Eq)]
pub enum UpstreamAuth {
    None,
    Bearer(String),
    Basic { username: String, password: String },
}

/// Never prints a credential.
impl std::fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Bearer(_) => f.write_str("bearer <redacted>"),
            Self::Basic { username, .. } => write!(f, "basic {username} <redacted>"),
        }
    }
}

/// TLS towards the upstream, beyond the system's trust store.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// PEM certificates that alone are trusted to sign the upstream's certificate, replacing
    /// the system's roots (as Prometheus' `tls_config.ca_file` does).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain followed by its private key (PKCS#8, PKCS#1 or SEC1), shown
    /// to an upstream that asks for one (mutual TLS).
    pub client_identity_pem: Option<Vec<u8>>,
}

/// Never prints the private key.
impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client_identity_pem.is_some())
            .finish()
    }
}

impl UpstreamTls {
    /// Applies these settings to a client under construction.
    fn configure(&self, builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder, String> {
        let mut builder = builder;
        if let Some(pem) = &self.ca_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|error| format!("reading the upstream CA certificates: {error}"))?;
            if roots.is_empty() {
                return Err("the upstream CA file holds no PEM certificate".to_owned());
            }
            builder = builder.tls_certs_only(roots);
        }
        if let Some(pem) = &self.client_identity_pem {
            let identity = reqwest::Identity::from_pem(pem)
                .map_err(|error| format!("reading the upstream client certificate: {error}"))?;
            builder = builder.identity(identity);
        }
        Ok(builder)
    }
}

/// Where and how to reach the upstream. Built from the `mimir` config section.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Base URL, such as `http://mimir:8080`.
    pub url: String,
    /// Prefix of the query API on the upstream: `/prometheus` for Mimir, empty for Prometheus.
    pub api_prefix: String,
    /// Path of remote write on the upstream: `/api/v1/push` for Mimir.
    pub push_path: String,
    pub auth: UpstreamAuth,
    /// How the upstream separates tenants.
    pub tenant_binding: TenantBinding,
    pub insecure_skip_verify: bool,
    pub tls: UpstreamTls,
    /// Timeout of one upstream call.
    pub timeout: Duration,
    /// The most an upstream answer may weigh.
    pub max_response_bytes: usize,
    /// Upstream calls one process runs at once.
    pub max_concurrency: usize,
    /// Mimir: one federated request for several tenants; false: one request per tenant, merged.
    pub federation: bool,
    /// Mimir with label-based access control: series-reading requests carry the filter sets in
    /// `X-Prom-Label-Policy` and are not rewritten.
    pub label_policy: bool,
    /// Tenants of one request read at once when not federating.
    pub tenants_at_once: usize,
    /// How long a request waits for a free slot before a 503 with `Retry-After`.
    pub queue_timeout: Duration,
}

/// Counts an upstream call as active until dropped, also when the client goes away mid-call.
struct ActiveGuard<'a>(&'a ProxyMetrics);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fanout_active.dec();
    }
}

/// An upstream answer, read into memory.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The upstream client.
pub struct Upstream {
    settings: UpstreamSettings,
    client: reqwest::Client,
    /// Upstream calls this process may run at once; the rest wait up to the queue timeout.
    inflight: Arc<Semaphore>,
    metrics: ProxyMetrics,
    /// The last probe of the upstream's label policy enforcement; behind an async lock so that
    /// concurrent requests share one probe.
    label_policy_probe: tokio::sync::Mutex<Option<ProbeOutcome>>,
}

/// A probe's answer and until when it stands.
struct ProbeOutcome {
    result: Result<(), ProxyError>,
    until: Instant,
}

/// How long a probe's proof that the upstream enforces label policies is trusted.
const LABEL_POLICY_CONFIRMATION: Duration = Duration::from_secs(300);
/// How long a failed probe's error is handed out before the upstream is probed again.
const LABEL_POLICY_RETRY: Duration = Duration::from_secs(5);
/// The longest a probe may take, whatever the upstream timeout.
const LABEL_POLICY_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// What Mimir's label access middleware says of a policy it cannot read.
const LABEL_POLICY_REFUSAL: &str = "label policy";

impl Upstream {
    pub fn new(settings: UpstreamSettings, metrics: ProxyMetrics) -> Result<Self, String> {
        let builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .tls_danger_accept_invalid_certs(settings.insecure_skip_verify);
        let client = settings
            .tls
            .configure(builder)?
            .build()
            .map_err(|error| format!("building the upstream client: {error}"))?;
        if settings.label_policy
            && (settings.tenant_binding != TenantBinding::Mimir || settings.federation)
        {
            // A label store has no label policies; federated tenants may meet Mimir's policy
            // lookup under the joined tenant id, where it would find none.
            return Err(
                "label policies need a mimir upstream read one tenant per request \
                 (federation off)"
                    .to_owned(),
            );
        }
        let inflight = Arc::new(Semaphore::new(settings.max_concurrency.max(1)));
        Ok(Self {
            settings,
            client,
            inflight,
            metrics,
            label_policy_probe: tokio::sync::Mutex::new(None),
        })
    }

    /// Makes sure the upstream enforces `X-Prom-Label-Policy` before filters are left to it. A
    /// Mimir with label-based access control refuses a malformed policy with a 400 naming it;
    /// one without it ignores the header and answers, which would read the tenant unfiltered.
    /// A proof stands for five minutes, a failure for five seconds; requests that arrive while
    /// a probe runs wait for it, at most the queue timeout.
    pub async fn confirm_label_policy_enforced(&self, tenant: &TenantId) -> Result<(), ProxyError> {
        let Ok(mut last) =
            tokio::time::timeout(self.settings.queue_timeout, self.label_policy_probe.lock()).await
        else {
            return Err(ProxyError::unavailable(
                "the upstream's label policy enforcement is being probed; retry later",
            ));
        };
        if let Some(outcome) = last.as_ref()
            && Instant::now() < outcome.until
        {
            return outcome.result.clone();
        }
        let (outcome, result) = self.probe_label_policy(tenant).await;
        self.metrics
            .label_policy_probes
            .with_label_values(&[outcome])
            .inc();
        let lasts = if result.is_ok() {
            LABEL_POLICY_CONFIRMATION
        } else {
            LABEL_POLICY_RETRY
        };
        *last = Some(ProbeOutcome {
            result: result.clone(),
            until: Instant::now() + lasts,
        });
        result
    }

    /// Sends one probe; returns its outcome (`enforced`, `ignored` or `unconfirmed`, for the
    /// metric) with what it means for the request.
    async fn probe_label_policy(
        &self,
        tenant: &TenantId,
    ) -> (&'static str, Result<(), ProxyError>) {
        let base = self.settings.url.trim_end_matches('/');
        let url = format!("{base}{}/api/v1/labels", self.settings.api_prefix);
        let probe = self
            .client
            .get(url)
            .timeout(self.settings.timeout.min(LABEL_POLICY_PROBE_TIMEOUT))
            .header(SCOPE_HEADER, tenant.as_str())
            .header(LABEL_POLICY_HEADER, format!("{tenant}:%zz"));
        let response = match self.authenticate(probe).send().await {
            Ok(response) => response,
            Err(error) if error.is_timeout() => {
                let error = ProxyError::gateway_timeout(
                    "the upstream did not answer the label policy probe in time",
                );
                return ("unconfirmed", Err(error));
            }
            Err(error) => {
                let reason = error_chain(&error.without_url());
                let error = ProxyError::bad_gateway(format!(
                    "probing the upstream's label policy enforcement failed: {reason}"
                ));
                return ("unconfirmed", Err(error));
            }
        };
        let status = response.status();
        let body = read_limited(response, 64 * 1024).await.unwrap_or_default();
        let refusal_names_the_policy = String::from_utf8_lossy(&body)
            .to_ascii_lowercase()
            .contains(LABEL_POLICY_REFUSAL);
        if status == StatusCode::BAD_REQUEST && refusal_names_the_policy {
            tracing::debug!("upstream enforces label policies");
            return ("enforced", Ok(()));
        }
        if status.is_success() || status == StatusCode::BAD_REQUEST {
            tracing::error!(
                status = status.as_u16(),
                "upstream ignores X-Prom-Label-Policy; refusing to leave filters to it"
            );
            let error = ProxyError::bad_gateway(format!(
                "the upstream answered {status} to a malformed X-Prom-Label-Policy where a Mimir \
                 enforcing label policies refuses it; it would read the tenant unfiltered, so \
                 nothing is sent (mimir.label_policy needs -auth.label-access-control-enabled)"
            ));
            return ("ignored", Err(error));
        }
        tracing::warn!(
            status = status.as_u16(),
            "could not confirm that the upstream enforces label policies"
        );
        let message = format!(
            "could not confirm that the upstream enforces label policies: it answered {status}"
        );
        let error = if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            ProxyError::unavailable(message)
        } else {
            ProxyError::bad_gateway(message)
        };
        ("unconfirmed", Err(error))
    }

    /// Adds the proxy's own upstream credentials.
    fn authenticate(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.settings.auth {
            UpstreamAuth::None => builder,
            UpstreamAuth::Bearer(token) => builder.bearer_auth(token),
            UpstreamAuth::Basic { username, password } => {
                builder.basic_auth(username, Some(password))
            }
        }
    }

    /// Returns the most one answer (or the answers of one request together) may weigh.
    pub fn max_response_bytes(&self) -> usize {
        self.settings.max_response_bytes
    }

    /// Returns whether Mimir enforces the filter sets it is sent (its LBAC mode).
    pub fn label_policy(&self) -> bool {
        self.settings.label_policy
    }

    /// Returns how the upstream separates tenants.
    pub fn tenant_binding(&self) -> &TenantBinding {
        &self.settings.tenant_binding
    }

    /// Sends a request for the Prometheus API path `api_path` (`/api/v1/query`), or remote write
    /// when `push` is true, on behalf of `tenants`.
    pub async fn forward(
        &self,
        request: ForwardRequest<'_>,
        tenants: &[TenantId],
    ) -> Result<UpstreamResponse, ProxyError> {
        let Ok(Ok(_permit)) =
            tokio::time::timeout(self.settings.queue_timeout, self.inflight.acquire()).await
        else {
            self.metrics.fanout_dropped_requests.inc();
            return Err(ProxyError::unavailable(format!(
                "more than {} upstream requests are in flight; retry later",
                self.settings.max_concurrency
            )));
        };
        self.metrics.fanout_active.inc();
        let _active = ActiveGuard(&self.metrics);
        let base = self.settings.url.trim_end_matches('/');
        let path = if request.push {
            self.settings.push_path.clone()
        } else {
            format!("{}{}", self.settings.api_prefix, request.api_path)
        };
        let mut url = format!("{base}{path}");
        if let Some(query) = request.query.filter(|query| !query.is_empty()) {
            url.push('?');
            url.push_str(query);
        }
        let mut headers = HeaderMap::new();
        for name in FORWARDED_REQUEST_HEADERS {
            for value in request.headers.get_all(*name) {
                headers.append(HeaderName::from_static(name), value.clone());
            }
        }
        let scope = HeaderValue::from_str(&scope_value(tenants))
            .map_err(|_| ProxyError::internal("tenant ids should form a valid header"))?;
        headers.insert(HeaderName::from_static(SCOPE_HEADER), scope);
        for policy in request.label_policies {
            headers.append(HeaderName::from_static(LABEL_POLICY_HEADER), policy.clone());
        }
        let builder = self.authenticate(
            self.client
                .request(request.method.clone(), &url)
                .headers(headers)
                .body(request.body.clone()),
        );
        let started = Instant::now();
        let result = self.send(builder).await;
        self.metrics
            .upstream_request_duration
            .observe(started.elapsed().as_secs_f64());
        let status_label = match &result {
            Ok(response) => response.status.as_str().to_owned(),
            Err(error) => error.status.as_str().to_owned(),
        };
        self.metrics
            .upstream_requests
            .with_label_values(&[status_label.as_str()])
            .inc();
        result
    }

    async fn send(&self, builder: reqwest::RequestBuilder) -> Result<UpstreamResponse, ProxyError> {
        let failed = |error: reqwest::Error| {
            let timed_out = error.is_timeout();
            let reason = error_chain(&error.without_url());
            tracing::debug!(error = %reason, "upstream request failed");
            if timed_out {
                ProxyError::gateway_timeout("upstream did not answer in time")
            } else {
                ProxyError::bad_gateway(format!("upstream unreachable: {reason}"))
            }
        };
        let mut response = builder.send().await.map_err(failed)?;
        let status = response.status();
        let mut headers = HeaderMap::new();
        for name in FORWARDED_RESPONSE_HEADERS {
            if let Some(value) = response.headers().get(*name) {
                headers.insert(HeaderName::from_static(name), value.clone());
            }
        }
        let limit = self.settings.max_response_bytes;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > limit {
                return Err(ProxyError::bad_gateway(format!(
                    "upstream answer is larger than {limit} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if !headers.contains_key(header::CONTENT_TYPE) && !body.is_empty() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
        }
        Ok(UpstreamResponse {
            status,
            headers,
            body: Bytes::from(body),
        })
    }
}

/// Returns an error with its causes, which name what actually failed (refused, reset, DNS).
pub(crate) fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The parts of a client request that go upstream.
pub struct ForwardRequest<'a> {
    pub method: &'a Method,
    /// The Prometheus API path without any `/prometheus` prefix.
    pub api_path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    /// Remote write rather than the query API.
    pub push: bool,
    /// `X-Prom-Label-Policy` values for Mimir to enforce (its LBAC mode); empty otherwise.
    pub label_policies: &'a [HeaderValue],
}

/// Reads at most `limit` bytes of an answer's body; the rest is left unread.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while body.len() < limit
        && let Some(chunk) = response.chunk().await?
    {
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_never_print_their_key() {
        let tls = UpstreamTls {
            ca_pem: Some(b"-----BEGIN CERTIFICATE-----\nca\n".to_vec()),
            client_identity_pem: Some(b"-----BEGIN PRIVATE KEY-----\nsecret-key\n".to_vec()),
        };
        let printed = format!("{tls:?}");
        assert!(!printed.contains("secret-key"), "{printed}");
        assert!(!printed.contains("45, 45, 45"), "bytes printed: {printed}");
        assert!(printed.contains("client_certificate: true"), "{printed}");
    }

    #[test]
    fn an_unreadable_ca_or_identity_stops_the_client_from_being_built() {
        for tls in [
            UpstreamTls {
                ca_pem: Some(b"not a certificate".to_vec()),
                client_identity_pem: None,
            },
            UpstreamTls {
                ca_pem: None,
                client_identity_pem: Some(b"-----BEGIN CERTIFICATE-----\n".to_vec()),
            },
        ] {
            assert!(
                tls.configure(reqwest::Client::builder()).is_err(),
                "{tls:?}"
            );
        }
    }
}
