//! The proxy in-process in front of a recording upstream: what goes upstream (and what never
//! does), how upstream answers come back, writes, and how the live bundle is swapped.
//!
//! The upstream here is a recorder, not a Mimir stand-in: it exists to see the exact headers and
//! paths the proxy sends, which a real Prometheus cannot report. Real Prometheus answers are
//! covered by the end-to-end tests in `tests/`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use heimdall_opa::bundle::{self, Bundle};
use heimdall_opa::{Tenant, parse_policy_document};
use heimdall_proto::events::RevisionNotification;
use heimdall_proxy::identity::dev::{DEV_AUDIENCE, DEV_ISSUER};
use heimdall_proxy::{
    BundleSource, DevSigner, IdentitySettings, KeySource, Notifications, PartialTenants,
    ProxySettings, ProxySources, RemoteOpaSettings, TenantBinding, UpstreamAuth, UpstreamSettings,
    UpstreamTls,
};
use tokio::sync::{broadcast, watch};

/// What the recorder saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    query: String,
    headers: http::HeaderMap,
    body: bytes::Bytes,
}

struct Harness {
    proxy: String,
    metrics: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Label policies the recording upstream refused, as Mimir would: the proxy's probes.
    refused_policies: Arc<AtomicUsize>,
    latest: Arc<Mutex<Option<Arc<Bundle>>>>,
    notify: broadcast::Sender<RevisionNotification>,
    signer: DevSigner,
    _shutdown: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

const POLICIES_V1: &str = r#"[
  {"name": "alice-reads", "effect": "allow", "subjects": [{"type": "user", "id": "alice"}],
   "actions": ["read"], "scope": {"tenants": ["acme", "globex"], "resources": ["metrics"]}},
  {"name": "alice-writes-acme", "effect": "allow", "subjects": [{"type": "user", "id": "alice"}],
   "actions": ["write"], "scope": {"tenants": ["acme"], "resources": ["metrics"]}},
  {"name": "alice-rules-prod", "effect": "allow", "subjects": [{"type": "user", "id": "alice"}],
   "actions": ["rules:read", "rules:write"],
   "scope": {"tenants": ["acme"], "resources": ["metrics"]}, "filters": ["env=\"prod\""]},
  {"name": "carol-reads-prod", "effect": "allow", "subjects": [{"type": "user", "id": "carol"}],
   "actions": ["read"], "scope": {"tenants": ["acme"], "resources": ["metrics"]},
   "filters": ["env=\"prod\""]},
  {"name": "carol-reads-team-a", "effect": "allow", "subjects": [{"type": "user", "id": "carol"}],
   "actions": ["read"], "scope": {"tenants": ["acme"], "resources": ["metrics"]},
   "filters": ["team=~\"a|b\"", "env!=\"dev\""]},
  {"name": "carol-reads-globex", "effect": "allow", "subjects": [{"type": "user", "id": "carol"}],
   "actions": ["read"], "scope": {"tenants": ["globex"], "resources": ["metrics"]}}
]"#;

const POLICIES_V2: &str = r#"[
  {"name": "alice-reads", "effect": "allow", "subjects": [{"type": "user", "id": "alice"}],
   "actions": ["read"], "scope": {"tenants": ["acme", "globex"], "resources": ["metrics"]}},
  {"name": "alice-blocked-on-acme", "effect": "deny",
   "subjects": [{"type": "user", "id": "alice"}],
   "actions": ["read"], "scope": {"tenants": ["acme"], "resources": ["metrics"]}}
]"#;

fn build_bundle(revision: u64, policies: &str) -> Arc<Bundle> {
    let tenants = [
        Tenant::new("acme", "Acme").unwrap(),
        Tenant::new("globex", "Globex").unwrap(),
    ];
    let policies = parse_policy_document(policies).unwrap();
    Arc::new(bundle::build(revision, &tenants, &policies).unwrap())
}

fn free_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Reads an `X-Prom-Label-Policy` value as Mimir's label access middleware does: policies split
/// on `,`, each `<tenant>:<path-escaped selector>`; a bad escape or a selector that does not
/// parse is refused. (Mimir itself cannot run here; this is its parsing step, nothing more.)
fn mimir_accepts_label_policy(value: &str) -> bool {
    value.split(',').all(|policy| {
        let Some((tenant, selector)) = policy.split_once(':') else {
            return false;
        };
        let bytes = selector.as_bytes();
        let escapes_valid = bytes.iter().enumerate().all(|(at, byte)| {
            *byte != b'%'
                || (bytes.get(at + 1).is_some_and(u8::is_ascii_hexdigit)
                    && bytes.get(at + 2).is_some_and(u8::is_ascii_hexdigit))
        });
        let decoded = percent_encoding::percent_decode_str(selector).decode_utf8();
        // Mimir reads a series selector (`ParseMetricSelector`), nothing else.
        let is_selector = |selector: &str| {
            matches!(
                promql_parser::parser::parse(selector),
                Ok(promql_parser::parser::Expr::VectorSelector(_))
            )
        };
        !tenant.is_empty() && escapes_valid && decoded.is_ok_and(|selector| is_selector(&selector))
    })
}

async fn recording_upstream(
    seen: Arc<Mutex<Vec<Seen>>>,
    refused_policies: Arc<AtomicUsize>,
) -> String {
    let router = axum::Router::new().fallback(move |request: Request| {
        let seen = seen.clone();
        let refused_policies = refused_policies.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let policies_readable = parts
                .headers
                .get_all("x-prom-label-policy")
                .iter()
                .all(|value| value.to_str().is_ok_and(mimir_accepts_label_policy));
            if !policies_readable {
                refused_policies.fetch_add(1, Ordering::SeqCst);
                return (
                    http::StatusCode::BAD_REQUEST,
                    [(http::header::CONTENT_TYPE, "text/plain")],
                    "invalid label policy header value unable to url escape selector string"
                        .to_owned(),
                );
            }
            let path = parts.uri.path().to_owned();
            let scope = parts
                .headers
                .get("x-scope-orgid")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            seen.lock().unwrap().push(Seen {
                path: path.clone(),
                query: parts.uri.query().unwrap_or_default().to_owned(),
                headers: parts.headers,
                body,
            });
            if parts
                .uri
                .query()
                .is_some_and(|query| query.contains("slow"))
            {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            if path.ends_with("/query_range") {
                return (
                    http::StatusCode::UNPROCESSABLE_ENTITY,
                    [(http::header::CONTENT_TYPE, "application/json")],
                    r#"{"status":"error","errorType":"execution","error":"too many samples"}"#
                        .to_owned(),
                );
            }
            // One series naming the tenants this request was for.
            let answer = serde_json::json!({"status": "success", "data": {"resultType": "vector",
                "result": [{"metric": {"__name__": "up", "scope": scope}, "value": [1, "1"]}]}});
            (
                http::StatusCode::OK,
                [(http::header::CONTENT_TYPE, "application/json")],
                answer.to_string(),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

async fn start(upstream_url: Option<String>) -> Harness {
    start_with(upstream_url, None, |_| {}).await
}

/// Starts a proxy whose upstream settings `adjust` may change.
async fn start_with(
    upstream_url: Option<String>,
    remote_opa: Option<RemoteOpaSettings>,
    adjust: impl FnOnce(&mut UpstreamSettings),
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let signer = DevSigner::load_or_create(dir.path()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let refused_policies = Arc::new(AtomicUsize::new(0));
    let upstream = match upstream_url {
        Some(url) => url,
        None => recording_upstream(seen.clone(), refused_policies.clone()).await,
    };
    let latest = Arc::new(Mutex::new(Some(build_bundle(1, POLICIES_V1))));
    let (notify, notifications) = broadcast::channel(16);
    let source_latest = latest.clone();
    let sources = ProxySources {
        bundles: BundleSource::InProcess(Arc::new(move || source_latest.lock().unwrap().clone())),
        notifications: Notifications::InProcess(notifications),
    };
    let (listen_addr, metrics_addr) = (free_addr(), free_addr());
    let mut settings = ProxySettings {
        listen_addr,
        metrics_addr,
        identity: IdentitySettings {
            keys: KeySource::Static(signer.jwks().clone()),
            issuers: vec![DEV_ISSUER.to_owned()],
            audiences: vec![DEV_AUDIENCE.to_owned()],
            algorithms: vec![jsonwebtoken::Algorithm::EdDSA],
            hmac_secret: None,
            leeway: Duration::from_secs(5),
            user_claim: "sub".to_owned(),
            groups_claim: "groups".to_owned(),
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(10),
            token_cache_size: 100,
            accept_basic_auth: false,
        },
        upstream: UpstreamSettings {
            url: upstream,
            api_prefix: "/prometheus".to_owned(),
            push_path: "/api/v1/push".to_owned(),
            auth: UpstreamAuth::Bearer("upstream-secret".to_owned()),
            tenant_binding: TenantBinding::Mimir,
            insecure_skip_verify: false,
            tls: UpstreamTls::default(),
            timeout: Duration::from_secs(5),
            max_response_bytes: 1024 * 1024,
            max_concurrency: 2,
            federation: true,
            label_policy: false,
            tenants_at_once: 2,
            queue_timeout: Duration::from_millis(300),
        },
        max_tenants: 32,
        auto_resolve_tenants: true,
        partial_tenants: PartialTenants::Warn,
        decision_cache_size: 1000,
        max_body_bytes: 1024,
        reconcile_interval: Duration::from_secs(3600),
        remote_opa,
        serve_jwks: false,
    };
    adjust(&mut settings.upstream);
    let (shutdown, shutdown_receiver) = watch::channel(false);
    tokio::spawn(heimdall_proxy::run(settings, sources, shutdown_receiver));
    let harness = Harness {
        proxy: format!("http://{listen_addr}"),
        metrics: format!("http://{metrics_addr}"),
        seen,
        refused_policies,
        latest,
        notify,
        signer,
        _shutdown: shutdown,
        _dir: dir,
    };
    for _ in 0..200 {
        if let Ok(response) = reqwest::get(format!("{}/readyz", harness.metrics)).await
            && response.status() == 200
        {
            return harness;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the proxy did not become ready");
}

impl Harness {
    fn token(&self) -> String {
        self.token_of("alice")
    }

    /// A GET through the proxy as alice, for the tenants in `scope`.
    fn get(&self, path: &str, scope: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .get(format!("{}{path}", self.proxy))
            .bearer_auth(self.token())
            .header("X-Scope-OrgID", scope)
    }

    fn token_of(&self, user: &str) -> String {
        self.signer
            .mint(user, &[], Duration::from_secs(600))
            .unwrap()
    }

    fn publish(&self, bundle: Arc<Bundle>, revision: u64) {
        *self.latest.lock().unwrap() = Some(bundle);
        let _ = self.notify.send(RevisionNotification {
            revision,
            ..Default::default()
        });
    }

    fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }
}

async fn body_json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    (status, value)
}

#[tokio::test]
async fn only_the_proxys_own_tenant_header_and_credentials_go_upstream() {
    let harness = start(None).await;
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/api/v1/query?time=1700000000", harness.proxy))
        .bearer_auth(harness.token())
        .header("X-Scope-OrgID", "globex|acme|globex")
        .header("Cookie", "session=secret")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("query=up")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = harness.last_seen();
    assert_eq!(seen.path, "/prometheus/api/v1/query");
    assert_eq!(seen.query, "time=1700000000");
    assert_eq!(seen.body.as_ref(), b"query=up");
    assert_eq!(seen.headers["x-scope-orgid"], "acme|globex");
    assert_eq!(seen.headers["authorization"], "Bearer upstream-secret");
    assert!(seen.headers.get("x-prom-label-policy").is_none());

    // A client's own label policy is refused, not dropped silently.
    let response = harness
        .get("/api/v1/query?query=up", "acme")
        .header("X-Prom-Label-Policy", "acme:env=\"prod\"")
        .send()
        .await
        .unwrap();
    let (status, body) = body_json(response).await;
    assert_eq!(status, 400, "{body}");
    assert!(seen.headers.get("cookie").is_none());
}

#[tokio::test]
async fn upstream_errors_are_relayed_and_an_unreachable_upstream_is_a_502() {
    let harness = start(None).await;
    let response = harness
        .get("/prometheus/api/v1/query_range", "acme")
        .send()
        .await
        .unwrap();
    let (status, body) = body_json(response).await;
    assert_eq!(status, 422);
    assert_eq!(body["errorType"], "execution");

    let closed = format!("http://{}", free_addr());
    let harness = start(Some(closed)).await;
    let response = harness.get("/api/v1/labels", "acme").send().await.unwrap();
    let (status, body) = body_json(response).await;
    assert_eq!(status, 502);
    assert_eq!(body["status"], "error");
}

#[tokio::test]
async fn writes_need_one_writable_tenant_and_keep_their_encoding() {
    let harness = start(None).await;
    let client = reqwest::Client::new();
    let push = |scope: &'static str, body: Vec<u8>| {
        client
            .post(format!("{}/api/v1/push", harness.proxy))
            .bearer_auth(harness.token())
            .header("X-Scope-OrgID", scope)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send()
    };
    let response = push("acme", b"opaque-snappy-bytes".to_vec()).await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = harness.last_seen();
    assert_eq!(seen.path, "/api/v1/push");
    assert_eq!(seen.headers["content-encoding"], "snappy");
    assert_eq!(seen.headers["x-prometheus-remote-write-version"], "0.1.0");
    assert_eq!(seen.body.as_ref(), b"opaque-snappy-bytes");

    let (status, body) = body_json(push("globex", b"x".to_vec()).await.unwrap()).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = body_json(push("acme|globex", b"x".to_vec()).await.unwrap()).await;
    assert_eq!(status, 400, "a write goes to one tenant");
    let (status, body) = body_json(push("acme", vec![b'x'; 4096]).await.unwrap()).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["status"], "error");
}

#[tokio::test]
async fn a_new_bundle_is_swapped_in_and_an_older_one_never_replaces_it() {
    let harness = start(None).await;
    let ask = || harness.get("/api/v1/query?query=up", "acme").send();
    assert_eq!(ask().await.unwrap().status(), 200);
    harness.publish(build_bundle(2, POLICIES_V2), 2);
    let mut status = 0;
    for _ in 0..200 {
        status = ask().await.unwrap().status().as_u16();
        if status == 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, 403, "the deny of revision 2 should apply");

    // A source that goes back to revision 1 is ignored.
    harness.publish(build_bundle(1, POLICIES_V1), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ask().await.unwrap().status(), 403);
    let metrics = reqwest::get(format!("{}/metrics", harness.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("heimdall_bundle_revision 2"), "{metrics}");
    assert!(
        metrics.contains("heimdall_bundle_loads_total{result=\"stale\"} 1"),
        "{metrics}"
    );
}

/// OPA's data API served by OPA's own engine (`opa/crosscheck/opa_server.py` over the PyPI
/// wheel's bindings), stopped when dropped.
struct OpaServer {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl OpaServer {
    fn start(bindings: &str, bundle: &Bundle) -> Self {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.tar.gz");
        std::fs::write(&path, &bundle.bytes).unwrap();
        let port = free_addr().port();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../opa/crosscheck/opa_server.py"
        );
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .arg(&path)
            .arg(port.to_string())
            .env("PYTHONPATH", bindings)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 should run the OPA server");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the OPA server did not start");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

impl Drop for OpaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_remote_opa_decides_and_its_failure_never_allows() {
    let Some(bindings) = heimdall_tests::required_env("HEIMDALL_OPA_BINDINGS") else {
        return;
    };
    let mut opa = OpaServer::start(&bindings, &build_bundle(1, POLICIES_V1));
    let remote = RemoteOpaSettings {
        url: opa.url.clone(),
        timeout: Duration::from_secs(5),
        insecure_skip_verify: false,
    };
    let harness = start_with(None, Some(remote), |_| {}).await;
    let client = reqwest::Client::new();
    let ask = |token: String, scope: Option<&'static str>| {
        let mut request = client
            .get(format!("{}/api/v1/query?query=up", harness.proxy))
            .bearer_auth(token);
        if let Some(scope) = scope {
            request = request.header("X-Scope-OrgID", scope);
        }
        request.send()
    };
    assert_eq!(
        ask(harness.token(), Some("acme")).await.unwrap().status(),
        200
    );
    // Auto resolution asks OPA for the readable tenants.
    assert_eq!(ask(harness.token(), None).await.unwrap().status(), 200);
    assert_eq!(harness.last_seen().headers["x-scope-orgid"], "acme|globex");
    let (status, body) = body_json(
        ask(harness.token_of("mallory"), Some("acme"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // OPA gone: a decision not already cached is an error, never an allow.
    opa.child.kill().unwrap();
    opa.child.wait().unwrap();
    let (status, body) = body_json(ask(harness.token_of("bob"), Some("acme")).await.unwrap()).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["errorType"], "internal");
}

#[tokio::test]
async fn a_full_upstream_limit_answers_503_with_retry_after() {
    let harness = start(None).await;
    let ask = || harness.get("/api/v1/query?query=slow", "acme").send();
    // Two slots: the third request waits 300 ms for one, then gets 503.
    let (first, second, third) = tokio::join!(ask(), ask(), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ask().await
    });
    assert_eq!(first.unwrap().status(), 200);
    assert_eq!(second.unwrap().status(), 200);
    let third = third.unwrap();
    assert_eq!(third.status(), 503);
    assert_eq!(third.headers()["retry-after"], "1");
    let metrics = reqwest::get(format!("{}/metrics", harness.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("heimdall_fanout_dropped_requests_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("heimdall_fanout_active_goroutines 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_federation_each_tenant_is_read_alone_and_the_answers_merged() {
    let harness = start_with(None, None, |upstream| upstream.federation = false).await;
    let response = harness
        .get("/api/v1/query?query=up", "globex|acme")
        .send()
        .await
        .unwrap();
    let (status, body) = body_json(response).await;
    assert_eq!(status, 200, "{body}");
    let series: Vec<(String, String)> = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|series| {
            let metric = &series["metric"];
            (
                metric["__tenant_id__"].as_str().unwrap().to_owned(),
                metric["scope"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // Each tenant's series came from a request for that tenant alone, sorted by labels.
    assert_eq!(
        series,
        [
            ("acme".to_owned(), "acme".to_owned()),
            ("globex".to_owned(), "globex".to_owned())
        ]
    );
    let scopes: Vec<String> = harness
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|seen| seen.headers["x-scope-orgid"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(scopes.len(), 2);
    assert!(
        scopes.iter().all(|scope| !scope.contains('|')),
        "{scopes:?}"
    );
    // A failing tenant's error is relayed, not merged away.
    let response = harness
        .get("/api/v1/query_range?query=up", "globex|acme")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
}

#[tokio::test]
async fn rule_groups_are_stored_only_with_enforced_expressions() {
    let harness = start(None).await;
    let client = reqwest::Client::new();
    let group = "name: api\nrules:\n  - alert: Down\n    expr: up == 0\n    for: 5m\n";
    let response = client
        .post(format!("{}/prometheus/config/v1/rules/team", harness.proxy))
        .bearer_auth(harness.token())
        .header("X-Scope-OrgID", "acme")
        .header("Content-Type", "application/yaml")
        .body(group)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = harness.last_seen();
    assert_eq!(seen.path, "/prometheus/config/v1/rules/team");
    let stored: serde_yaml::Value = serde_yaml::from_slice(&seen.body).unwrap();
    assert_eq!(stored["rules"][0]["expr"], "up{env=\"prod\"} == 0");
    // A rule whose expression has no exact enforced form is refused, as is a second tenant.
    let refused = client
        .post(format!("{}/prometheus/config/v1/rules/team", harness.proxy))
        .bearer_auth(harness.token())
        .header("X-Scope-OrgID", "acme")
        .body("name: api\nrules:\n  - record: r\n    expr: sum(\n")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let two = harness
        .get("/prometheus/config/v1/rules", "acme|globex")
        .send()
        .await
        .unwrap();
    assert_eq!(two.status(), 400, "the ruler API takes one tenant");
}

/// The decoded `X-Prom-Label-Policy` values of one upstream request, sorted.
fn label_policies(seen: &Seen) -> Vec<String> {
    let mut policies: Vec<String> = seen
        .headers
        .get_all("x-prom-label-policy")
        .iter()
        .map(|value| {
            let (tenant, selector) = value.to_str().unwrap().split_once(':').unwrap();
            let selector = percent_encoding::percent_decode_str(selector)
                .decode_utf8()
                .unwrap();
            format!("{tenant}:{selector}")
        })
        .collect();
    policies.sort();
    policies
}

#[tokio::test]
async fn in_label_policy_mode_mimir_gets_the_filter_sets_and_the_query_as_sent() {
    let harness = start_with(None, None, |upstream| {
        upstream.federation = false;
        upstream.label_policy = true;
    })
    .await;
    let client = reqwest::Client::new();
    // A union over two labels that the rewriter would refuse with 422 (no metric name).
    let query = r#"topk(3, {job="api"})"#;
    let encoded = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", query)
        .finish();
    let response = client
        .get(format!(
            "{}/prometheus/api/v1/query?{encoded}",
            harness.proxy
        ))
        .bearer_auth(harness.token_of("carol"))
        .header("X-Scope-OrgID", "acme|globex")
        .send()
        .await
        .unwrap();
    let (status, body) = body_json(response).await;
    assert_eq!(status, 200, "{body}");
    let requests: Vec<Seen> = harness.seen.lock().unwrap().drain(..).collect();
    // One request per tenant (the probe, refused with 400, is not recorded), each with the
    // query as sent and its own tenant's policies: one per filter set, none for globex, which
    // carol reads without filters.
    assert_eq!(requests.len(), 2);
    for seen in &requests {
        let sent: Vec<(String, String)> = form_urlencoded::parse(seen.query.as_bytes())
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        assert_eq!(sent, [("query".to_owned(), query.to_owned())]);
        let expected: Vec<&str> = match seen.headers["x-scope-orgid"].to_str().unwrap() {
            "acme" => vec![r#"acme:{env!="dev", team=~"a|b"}"#, r#"acme:{env="prod"}"#],
            "globex" => Vec::new(),
            other => panic!("unexpected scope {other}"),
        };
        assert_eq!(label_policies(seen), expected);
    }

    // Series endpoints without match[] are left to Mimir as well.
    let response = client
        .get(format!("{}/api/v1/labels", harness.proxy))
        .bearer_auth(harness.token_of("carol"))
        .header("X-Scope-OrgID", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = harness.last_seen();
    assert_eq!(seen.query, "");
    assert_eq!(label_policies(&seen).len(), 2);

    // The same parameter in the URL and the body is still refused, rewritten or not.
    let response = client
        .post(format!("{}/api/v1/query?{encoded}", harness.proxy))
        .bearer_auth(harness.token_of("carol"))
        .header("X-Scope-OrgID", "acme")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("query=up")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // A user readable without filters sends no policy at all.
    let response = harness
        .get("/api/v1/query?query=up", "acme|globex")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(label_policies(&harness.last_seen()).is_empty());

    // One probe proved that Mimir enforces policies; it stands for the later requests.
    assert_eq!(harness.refused_policies.load(Ordering::SeqCst), 1);

    // Rule groups are not enforced by Mimir's LBAC: they are still rewritten by the proxy.
    let response = client
        .post(format!("{}/prometheus/config/v1/rules/team", harness.proxy))
        .bearer_auth(harness.token())
        .header("X-Scope-OrgID", "acme")
        .header("Content-Type", "application/yaml")
        .body("name: api\nrules:\n  - record: up:sum\n    expr: sum(up)\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let stored: serde_yaml::Value = serde_yaml::from_slice(&harness.last_seen().body).unwrap();
    assert_eq!(stored["rules"][0]["expr"], "sum(up{env=\"prod\"})");
}

#[tokio::test]
async fn label_policies_are_never_left_to_an_upstream_that_ignores_them() {
    // Answers 200 to everything, as a Mimir without label-based access control would.
    let calls = Arc::new(Mutex::new(Vec::new()));
    let recorded = calls.clone();
    let router = axum::Router::new().fallback(move |request: Request| {
        let recorded = recorded.clone();
        async move {
            recorded
                .lock()
                .unwrap()
                .push(request.uri().path().to_owned());
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let harness = start_with(Some(url), None, |upstream| {
        upstream.federation = false;
        upstream.label_policy = true;
    })
    .await;
    for _ in 0..2 {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/query?query=up", harness.proxy))
            .bearer_auth(harness.token_of("carol"))
            .header("X-Scope-OrgID", "acme")
            .send()
            .await
            .unwrap();
        let (status, body) = body_json(response).await;
        assert_eq!(status, 502, "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains("X-Prom-Label-Policy"), "{message}");
    }
    // Only the probe reached it, never the query; its failure stands for a few seconds, so the
    // second request was refused without another probe.
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls, ["/prometheus/api/v1/labels"]);
    let metrics = reqwest::get(format!("{}/metrics", harness.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"heimdall_label_policy_probes_total{result="ignored"} 1"#),
        "{metrics}"
    );
}
