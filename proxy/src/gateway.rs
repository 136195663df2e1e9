//! One request through the proxy, in order: identity, tenants, per-tenant decisions, upstream,
//! and the answer with warnings for the tenants left out.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use heimdall_opa::TenantId;
use heimdall_opa::engine::Decision;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};

use crate::built_from_decisions::BuiltFromDecisions;
use crate::decision::{Action, Decider};
use crate::filter_response::{self, FILTERED_ROUTES};
use crate::identity::{Identity, JwtVerifier};
use crate::label_policy::{self, LABEL_POLICY_HEADER};
use crate::merge::{self, MergeError};
use crate::metrics::ProxyMetrics;
use crate::promql::Enforcement;
use crate::promql::TENANT_LABEL;
use crate::remote_write;
use crate::respond::ProxyError;
use crate::rewrite::SERIES_FREE_ROUTES;
use crate::rewrite::{TenantBinding, check_params, enforcement_for, rewrite_params};
use crate::ruler;
use crate::tenants::{SCOPE_HEADER, parse_scope};
use crate::upstream::{ForwardRequest, Upstream, UpstreamResponse};
use futures_util::StreamExt;

/// Mimir's path prefix for the Prometheus API.
pub const PROMETHEUS_PREFIX: &str = "/prometheus";
/// The largest form body Prometheus (Go's `ParseForm`) reads; a larger one it drops whole.
const MAX_FORM_BYTES: usize = 10 * 1024 * 1024;
/// The most all request headers together may weigh.
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// What to do with tenants the subject may not read, when others are readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartialTenants {
    /// Serve the readable ones and name the others in a Prometheus warning.
    Warn,
    /// Refuse the whole request with 403, naming them.
    Deny,
}

/// What the request path needs, shared by every request.
pub struct Gateway {
    pub verifier: Arc<JwtVerifier>,
    pub decider: Decider,
    pub upstream: Upstream,
    pub metrics: ProxyMetrics,
    pub max_tenants: usize,
    pub auto_resolve_tenants: bool,
    pub partial_tenants: PartialTenants,
    pub max_body_bytes: usize,
    /// Read every tenant of a multi-tenant request on its own and merge (Mimir without
    /// federation), rather than one federated request.
    pub fan_out: bool,
    /// How many tenants of one request are read at once when fanning out.
    pub tenants_at_once: usize,
    /// Enforcements built from decisions, for requests with the same decisions. The tenant
    /// binding they also depend on is the upstream's, fixed for the gateway's life.
    pub enforcements: BuiltFromDecisions<Option<Arc<Enforcement>>>,
    /// `X-Prom-Label-Policy` values built from decisions, likewise.
    pub label_policies: BuiltFromDecisions<Arc<Vec<HeaderValue>>>,
}

/// Which kind of endpoint a route is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// A Prometheus API read; the route template labels metrics.
    Read(&'static str),
    /// Remote write.
    Push,
    /// Mimir's ruler configuration API; `write` for POST and DELETE.
    Ruler { route: &'static str, write: bool },
}

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Self::Read(route) | Self::Ruler { route, .. } => route,
            Self::Push => "/api/v1/push",
        }
    }

    fn action(self) -> Action {
        match self {
            Self::Read("/api/v1/rules") => Action::RulesRead,
            Self::Read("/api/v1/alerts") => Action::AlertsRead,
            Self::Read(_) => Action::Read,
            Self::Push => Action::Write,
            Self::Ruler { write: false, .. } => Action::RulesRead,
            Self::Ruler { write: true, .. } => Action::RulesWrite,
        }
    }
}

/// The parts of a request the gateway reads.
pub struct IncomingRequest {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Body,
}

impl Gateway {
    /// Serves one request and records it.
    pub async fn handle(&self, endpoint: Endpoint, request: IncomingRequest) -> Response {
        let started = Instant::now();
        let method = request.method.clone();
        let response = match self.serve(endpoint, request).await {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(
                    status = error.status.as_u16(),
                    blame = ?error.blame,
                    error = %error.message,
                    "request refused"
                );
                error.into_response()
            }
        };
        self.observe(&method, endpoint.label(), response.status(), started);
        response
    }

    /// Records a request.
    pub fn observe(&self, method: &Method, route: &str, status: StatusCode, started: Instant) {
        // Any method name is a valid request; only known ones become label values.
        let method = match *method {
            Method::GET | Method::POST | Method::PUT | Method::DELETE | Method::HEAD => {
                method.as_str()
            }
            _ => "other",
        };
        let labels = [method, route, status.as_str()];
        self.metrics.requests.with_label_values(&labels).inc();
        self.metrics
            .request_duration
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
    }

    async fn serve(
        &self,
        endpoint: Endpoint,
        request: IncomingRequest,
    ) -> Result<Response, ProxyError> {
        let header_bytes: usize = request
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if header_bytes > MAX_HEADER_BYTES {
            return Err(ProxyError::headers_too_large(format!(
                "request headers exceed {MAX_HEADER_BYTES} bytes"
            )));
        }
        if request.headers.contains_key(LABEL_POLICY_HEADER) {
            // Mimir would enforce the client's own label policy: only the proxy may set one.
            return Err(ProxyError::bad_request(
                "X-Prom-Label-Policy may not be sent by clients",
            ));
        }
        self.decider.current_bundle()?;
        if !self.verifier.keys().is_loaded() {
            return Err(ProxyError::unavailable(
                "the identity provider's signing keys are not loaded yet",
            ));
        }
        let identity = self
            .verifier
            .verify_header(request.headers.get(header::AUTHORIZATION))
            .await?;
        let action = endpoint.action();
        let tenants = self
            .requested_tenants(&identity, action, &request.headers)
            .await?;
        if matches!(endpoint, Endpoint::Push | Endpoint::Ruler { .. }) && tenants.len() != 1 {
            return Err(ProxyError::bad_request(format!(
                "{} takes exactly one tenant: name one in X-Scope-OrgID",
                endpoint.label()
            )));
        }
        let (allowed, warnings) = self.decide_all(&identity, action, &tenants).await?;
        let body = axum::body::to_bytes(request.body, self.max_body_bytes)
            .await
            .map_err(|_| {
                ProxyError::payload_too_large(format!(
                    "request body is larger than {} bytes",
                    self.max_body_bytes
                ))
            })?;
        let rules = matches!(
            endpoint,
            Endpoint::Read("/api/v1/rules") | Endpoint::Ruler { .. }
        );
        if rules && matches!(self.upstream.tenant_binding(), TenantBinding::Label(_)) {
            return Err(ProxyError::forbidden(
                "rules of a store shared by tenants belong to no one tenant; they are not served",
            ));
        }
        let form_body = match endpoint {
            Endpoint::Read(_) => read_body_is_form(&request.method, &request.headers, &body)?,
            Endpoint::Push | Endpoint::Ruler { .. } => false,
        };
        let parts = RequestParts {
            endpoint,
            method: &request.method,
            uri: &request.uri,
            headers: &request.headers,
            form_body,
        };
        tracing::debug!(
            user = %identity.user,
            tenants = allowed.len(),
            route = endpoint.label(),
            "forwarding"
        );
        if let Endpoint::Read(route) = endpoint
            && self.fan_out
            && allowed.len() > 1
        {
            return self.fan_out(route, &parts, body, &allowed, &warnings).await;
        }
        let answer = self.call_upstream(&parts, body, &allowed).await?;
        Ok(respond(answer, &warnings))
    }

    /// Sends one upstream request for `allowed` (one tenant, or several federated): enforces
    /// the filters on its parameters or its written series, and narrows the answer.
    async fn call_upstream(
        &self,
        parts: &RequestParts<'_>,
        body: Bytes,
        allowed: &[(TenantId, Arc<Decision>)],
    ) -> Result<UpstreamResponse, ProxyError> {
        let left_to_mimir = match parts.endpoint {
            Endpoint::Read(route)
                if self.upstream.label_policy() && label_policy::enforced_upstream(route) =>
            {
                Some(route)
            }
            _ => None,
        };
        // Mimir enforces the label policies it is sent: the parameters go as they are, once
        // known to be as unambiguous as rewritten ones.
        let (enforcement, label_policies) = if let Some(route) = left_to_mimir {
            check_params(route, parts.uri.query(), &body, parts.form_body)?;
            let policies = self.label_policies.get_or_build(allowed, || {
                label_policy::header_values(allowed).map(Arc::new)
            })?;
            // Without a policy to send (only unrestricted tenants), nothing depends on Mimir.
            if !policies.is_empty()
                && let Some((tenant, _)) = allowed.first()
            {
                self.upstream.confirm_label_policy_enforced(tenant).await?;
            }
            (None, policies)
        } else {
            let enforcement = self.enforcements.get_or_build(allowed, || {
                enforcement_for(self.upstream.tenant_binding(), allowed)
                    .map(|enforcement| enforcement.map(Arc::new))
            })?;
            (enforcement, Arc::default())
        };
        let (query, body) = match (&enforcement, parts.endpoint) {
            (None, _) => (parts.uri.query().map(str::to_owned), body),
            (Some(enforcement), Endpoint::Read(route)) => {
                let rewritten =
                    rewrite_params(route, enforcement, parts.uri.query(), body, parts.form_body)?;
                (rewritten.query, rewritten.body)
            }
            (Some(enforcement), Endpoint::Push) => {
                let header_text = |name| {
                    parts
                        .headers
                        .get(name)
                        .and_then(|value: &HeaderValue| value.to_str().ok())
                };
                remote_write::check(
                    &body,
                    header_text(header::CONTENT_ENCODING),
                    header_text(header::CONTENT_TYPE),
                    enforcement,
                )?;
                (parts.uri.query().map(str::to_owned), body)
            }
            (Some(enforcement), Endpoint::Ruler { write: true, .. })
                if *parts.method == Method::POST =>
            {
                let enforced = ruler::enforce_rule_group(&body, enforcement)?;
                (parts.uri.query().map(str::to_owned), enforced)
            }
            (Some(_), Endpoint::Ruler { .. }) => (parts.uri.query().map(str::to_owned), body),
        };
        let tenant_ids: Vec<TenantId> = allowed.iter().map(|(tenant, _)| tenant.clone()).collect();
        let path = parts.uri.path();
        let forward = ForwardRequest {
            method: parts.method,
            api_path: path.strip_prefix(PROMETHEUS_PREFIX).unwrap_or(path),
            query: query.as_deref(),
            headers: parts.headers,
            body,
            push: parts.endpoint == Endpoint::Push,
            label_policies: &label_policies,
        };
        let mut answer = self.upstream.forward(forward, &tenant_ids).await?;
        if let (Some(enforcement), Endpoint::Read(route)) = (&enforcement, parts.endpoint)
            && FILTERED_ROUTES.contains(&route)
            && answer.status.is_success()
        {
            answer.body = self
                .narrow_answer(route, &answer.body, enforcement, &tenant_ids)
                .await?;
        }
        Ok(answer)
    }

    /// Reads every tenant on its own, at most `tenants_at_once` at a time, and merges the
    /// answers; the first failing tenant's answer is relayed instead.
    async fn fan_out(
        &self,
        route: &'static str,
        parts: &RequestParts<'_>,
        body: Bytes,
        allowed: &[(TenantId, Arc<Decision>)],
        warnings: &[String],
    ) -> Result<Response, ProxyError> {
        if parts
            .uri
            .path()
            .ends_with(&format!("/label/{TENANT_LABEL}/values"))
        {
            let tenants: Vec<&str> = allowed.iter().map(|(tenant, _)| tenant.as_str()).collect();
            let answer = serde_json::json!({"status": "success", "data": tenants});
            return Ok(json_response(Bytes::from(answer.to_string()), warnings));
        }
        // Series-free endpoints answer the same for every tenant: one call is enough.
        let callees = if SERIES_FREE_ROUTES.contains(&route) {
            &allowed[..1]
        } else {
            allowed
        };
        // Collected first: a stream over a borrowing closure would make this future's type
        // depend on a closure lifetime the router cannot name.
        let mut calls = Vec::with_capacity(callees.len());
        for one in callees {
            let body = body.clone();
            calls.push(async move {
                let answer = self
                    .call_upstream(parts, body, std::slice::from_ref(one))
                    .await;
                (one.0.clone(), answer)
            });
        }
        let mut results = futures_util::stream::iter(calls).buffered(self.tenants_at_once.max(1));
        let mut answers = Vec::with_capacity(callees.len());
        let mut total_bytes = 0_usize;
        while let Some((tenant, answer)) = results.next().await {
            let answer = answer?;
            if !answer.status.is_success() {
                return Ok(respond(answer, warnings));
            }
            // One budget for all tenants, so a merged answer stays within the limit too.
            total_bytes += answer.body.len();
            if total_bytes > self.upstream.max_response_bytes() {
                return Err(ProxyError::bad_gateway(format!(
                    "the tenants' answers together exceed {} bytes",
                    self.upstream.max_response_bytes()
                )));
            }
            answers.push((tenant, answer.body));
        }
        let merged = merge::merge(route, &answers).map_err(|error| match error {
            MergeError::Unexpected(_) => ProxyError::bad_gateway(error.to_string()),
            MergeError::Unmergeable(_) => ProxyError::unprocessable(error.to_string()),
        })?;
        Ok(json_response(merged, warnings))
    }

    /// Narrows a metadata, rules or alerts answer to what the filter sets allow. An answer that
    /// cannot be read is a 502, never passed on unfiltered.
    async fn narrow_answer(
        &self,
        route: &str,
        body: &Bytes,
        enforcement: &Enforcement,
        tenants: &[TenantId],
    ) -> Result<Bytes, ProxyError> {
        let narrowed = match route {
            "/api/v1/alerts" => filter_response::alerts(body, enforcement),
            "/api/v1/rules" => filter_response::rules(body, enforcement),
            _ => {
                let readable = self.readable_metric_names(enforcement, tenants).await?;
                filter_response::metadata(body, &readable)
            }
        };
        narrowed.map_err(|error| ProxyError::bad_gateway(error.to_string()))
    }

    /// Asks the upstream for the metric names that have readable series.
    async fn readable_metric_names(
        &self,
        enforcement: &Enforcement,
        tenants: &[TenantId],
    ) -> Result<std::collections::BTreeSet<String>, ProxyError> {
        let selectors = enforcement.readable_series_selectors();
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(selectors.iter().map(|selector| ("match[]", selector)))
            .finish();
        let headers = HeaderMap::new();
        let request = ForwardRequest {
            method: &Method::GET,
            api_path: "/api/v1/label/__name__/values",
            query: Some(&query),
            headers: &headers,
            body: Bytes::new(),
            push: false,
            label_policies: &[],
        };
        let answer = self.upstream.forward(request, tenants).await?;
        if !answer.status.is_success() {
            return Err(ProxyError::bad_gateway(format!(
                "listing readable metric names failed upstream with status {}",
                answer.status
            )));
        }
        filter_response::label_values(&answer.body)
            .map_err(|error| ProxyError::bad_gateway(error.to_string()))
    }

    /// Returns the tenants the request is about: those it names, or (reads only) those the
    /// subject may read.
    async fn requested_tenants(
        &self,
        identity: &Identity,
        action: Action,
        headers: &HeaderMap,
    ) -> Result<Vec<TenantId>, ProxyError> {
        if let Some(tenants) = parse_scope(headers.get(SCOPE_HEADER), self.max_tenants)? {
            return Ok(tenants);
        }
        if matches!(action, Action::Write | Action::RulesWrite) {
            return Err(ProxyError::bad_request(
                "X-Scope-OrgID is required for writes",
            ));
        }
        if !self.auto_resolve_tenants {
            return Err(ProxyError::bad_request(
                "X-Scope-OrgID is required: name the tenants to read",
            ));
        }
        let accessible = self.decider.accessible_tenants(identity, action).await?;
        if accessible.is_empty() {
            return Err(ProxyError::forbidden(format!(
                "user {:?} may {} no tenant",
                identity.user,
                action.as_str()
            )));
        }
        if accessible.len() > self.max_tenants {
            return Err(ProxyError::bad_request(format!(
                "user {:?} may read {} tenants, more than the {} one request may span: name them \
                 in X-Scope-OrgID",
                identity.user,
                accessible.len(),
                self.max_tenants
            )));
        }
        Ok(accessible.as_ref().clone())
    }

    /// Decides every tenant. Returns the allowed ones and the warnings to attach; refuses when
    /// none is allowed, or when some are denied and partial answers are off.
    async fn decide_all(
        &self,
        identity: &Identity,
        action: Action,
        tenants: &[TenantId],
    ) -> Result<(Vec<(TenantId, Arc<Decision>)>, Vec<String>), ProxyError> {
        let mut allowed = Vec::with_capacity(tenants.len());
        let mut denied = Vec::new();
        for tenant in tenants {
            let decision = match self.decider.decide(identity, tenant, action).await {
                Ok(decision) => decision,
                Err(error) => {
                    self.metrics.decisions.with_label_values(&["error"]).inc();
                    return Err(error);
                }
            };
            let outcome = match (decision.allowed, decision.unrestricted) {
                (false, _) => "denied",
                (true, true) => "allowed",
                (true, false) => "filtered",
            };
            self.metrics.decisions.with_label_values(&[outcome]).inc();
            if decision.allowed {
                allowed.push((tenant.clone(), decision));
            } else {
                denied.push(tenant.as_str());
            }
        }
        let verb = action.as_str();
        if allowed.is_empty() {
            return Err(ProxyError::forbidden(format!(
                "user {:?} may not {verb} tenant {}",
                identity.user,
                denied.join(", ")
            )));
        }
        if denied.is_empty() {
            return Ok((allowed, Vec::new()));
        }
        if action == Action::Write || self.partial_tenants == PartialTenants::Deny {
            return Err(ProxyError::forbidden(format!(
                "user {:?} may not {verb} tenant {}",
                identity.user,
                denied.join(", ")
            )));
        }
        let warning = format!(
            "tenants left out because user {:?} may not {verb} them: {}",
            identity.user,
            denied.join(", ")
        );
        Ok((allowed, vec![warning]))
    }
}

/// Checks the body of a read and returns whether it holds form parameters.
///
/// Prometheus reads parameters from the body only of a POST with a URL-encoded form of at most
/// 10 MiB (Go's limit); any other body it ignores, or parses in ways the proxy would not see
/// (multipart). A body the proxy cannot rewrite exactly is refused rather than passed on.
fn read_body_is_form(
    method: &Method,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<bool, ProxyError> {
    if body.is_empty() {
        return Ok(false);
    }
    if *method != Method::POST {
        return Err(ProxyError::bad_request(format!(
            "a {method} request to the query API must not carry a body"
        )));
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Err(ProxyError::bad_request(
            "the body of a query API request must be an application/x-www-form-urlencoded form",
        ));
    }
    if body.len() > MAX_FORM_BYTES {
        return Err(ProxyError::payload_too_large(format!(
            "a form body may hold at most {MAX_FORM_BYTES} bytes"
        )));
    }
    Ok(true)
}

/// The parts of a client request every upstream call of it reads.
struct RequestParts<'a> {
    endpoint: Endpoint,
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    /// Whether the body is a form Prometheus reads parameters from.
    form_body: bool,
}

/// A JSON answer made by the proxy, with its warnings.
fn json_response(body: Bytes, warnings: &[String]) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    respond(
        UpstreamResponse {
            status: StatusCode::OK,
            headers,
            body,
        },
        warnings,
    )
}

/// Builds the client's response from the upstream's, adding warnings to a JSON success body.
fn respond(answer: UpstreamResponse, warnings: &[String]) -> Response {
    let body = if warnings.is_empty() {
        answer.body
    } else {
        with_warnings(answer.body, warnings)
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers;
    response.headers_mut().remove(header::CONTENT_LENGTH);
    response
}

/// Appends `warnings` to the `warnings` list of a Prometheus API body; other bodies (errors,
/// compressed or non-JSON answers) are left as they are.
fn with_warnings(body: Bytes, warnings: &[String]) -> Bytes {
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice(&body) else {
        return body;
    };
    let list = object
        .entry("warnings")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    let serde_json::Value::Array(list) = list else {
        return body;
    };
    list.extend(warnings.iter().cloned().map(serde_json::Value::String));
    serde_json::to_vec(&object).map_or(body, Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_post_form_may_carry_read_parameters() {
        let form = |content_type: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
            headers
        };
        let urlencoded = form("application/x-www-form-urlencoded; charset=utf-8");
        let body = Bytes::from_static(b"match[]=up");
        assert_eq!(
            read_body_is_form(&Method::POST, &urlencoded, &body),
            Ok(true)
        );
        assert_eq!(
            read_body_is_form(&Method::GET, &HeaderMap::new(), &Bytes::new()),
            Ok(false)
        );
        // Prometheus would ignore these bodies (or parse them unseen): refused.
        assert!(read_body_is_form(&Method::GET, &urlencoded, &body).is_err());
        let multipart = form("multipart/form-data; boundary=x");
        assert!(read_body_is_form(&Method::POST, &multipart, &body).is_err());
        let huge = Bytes::from(vec![b'a'; MAX_FORM_BYTES + 1]);
        let error = read_body_is_form(&Method::POST, &urlencoded, &huge).unwrap_err();
        assert_eq!(error.status, http::StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn warnings_are_appended_to_prometheus_bodies_only() {
        let body = Bytes::from_static(br#"{"status":"success","data":{"resultType":"vector","result":[]},"warnings":["upstream"]}"#);
        let merged = with_warnings(body, &["left out: globex".to_owned()]);
        let value: serde_json::Value = serde_json::from_slice(&merged).expect("JSON stays JSON");
        assert_eq!(
            value["warnings"],
            serde_json::json!(["upstream", "left out: globex"])
        );
        assert_eq!(value["data"]["resultType"], "vector");
        let binary = Bytes::from_static(b"\x1f\x8b not json");
        assert_eq!(with_warnings(binary.clone(), &["x".to_owned()]), binary);
    }
}
