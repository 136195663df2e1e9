//! End-to-end tests of the proxy: `heimdall serve --target=all --dev` in front of a real
//! Prometheus, and a control plane with two separate proxies that follow policy changes over
//! NATS, one reading bundles from the control plane's endpoint, the other from the bundle folder.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use heimdall_proxy::remote_write::{self, Label, Sample, TimeSeries, WriteRequest};
use heimdall_tests::{
    HeimdallProcess, HttpResponse, NatsServer, PrometheusServer, cli_ok, http_get, http_request,
    http_request_with_body, mint_dev_token,
};
use serde_json::Value;

const ADMIN_TOKEN: &str = "hmd_proxy_test_admin_token";

/// Series of two tenants in one store (the tenant is the label `tenant`), three hours back so
/// that they sit in a backfilled block.
fn samples() -> (String, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = now - 3 * 3600;
    let text = format!(
        "# TYPE demo_temperature gauge\n\
         demo_temperature{{tenant=\"acme\",room=\"a\"}} 21 {at}\n\
         demo_temperature{{tenant=\"acme\",room=\"b\"}} 19 {at}\n\
         demo_temperature{{tenant=\"globex\",room=\"a\"}} 17 {at}\n\
         demo_temperature{{tenant=\"globex\",room=\"c\"}} 15 {at}\n\
         # EOF\n"
    );
    (text, at)
}

fn admin_tokens() -> String {
    format!(
        "[{{name: test, sha256: {}}}]",
        heimdall_control_plane::hash_token(ADMIN_TOKEN)
    )
}

fn query(addr: &str, token: &str, scope: Option<&str>, path: &str) -> HttpResponse {
    let bearer = format!("Bearer {token}");
    let mut headers = vec![("Authorization", bearer.as_str())];
    if let Some(scope) = scope {
        headers.push(("X-Scope-OrgID", scope));
    }
    http_request(addr, "GET", path, &headers).expect("the proxy should answer")
}

/// Asserts a Prometheus error envelope with this status and error type.
fn assert_error(response: &HttpResponse, status: u16, error_type: &str) -> String {
    let body = response.json();
    assert_eq!(response.status, status, "{body}");
    assert_eq!(body["status"], "error", "{body}");
    assert_eq!(body["errorType"], error_type, "{body}");
    body["error"].as_str().unwrap().to_owned()
}

/// Polls until `done` holds for the answer, for at most 10 s; returns the last answer.
fn eventually(
    mut ask: impl FnMut() -> HttpResponse,
    done: impl Fn(&HttpResponse) -> bool,
) -> HttpResponse {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = ask();
        if done(&response) || Instant::now() > deadline {
            return response;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn apply(dir: &Path, server: &HeimdallProcess, policies: &str) {
    let file = dir.join(format!("policies-{}.json", heimdall_tests::random_u64()));
    std::fs::write(&file, policies).unwrap();
    cli_ok(
        dir,
        server,
        ADMIN_TOKEN,
        &["policy", "apply", file.to_str().unwrap()],
    );
}

/// Returns `tenant/room` of every series of a vector answer, sorted.
fn series_of(body: &Value) -> Vec<String> {
    assert_eq!(body["status"], "success", "{body}");
    let mut series: Vec<String> = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|series| {
            let labels = &series["metric"];
            format!(
                "{}/{}",
                labels["tenant"].as_str().unwrap(),
                labels["room"].as_str().unwrap()
            )
        })
        .collect();
    series.sort();
    series
}

fn metric(addr: &str, line_prefix: &str) -> f64 {
    let (status, text) = http_get(addr, "/metrics").expect("metrics should answer");
    assert_eq!(status, 200);
    text.lines()
        .find(|line| line.starts_with(line_prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_prefix} in:\n{text}"))
}

#[test]
fn the_all_target_forwards_to_prometheus_only_what_the_policy_allows() {
    let (openmetrics, at) = samples();
    let Some(prometheus) = PrometheusServer::start(&openmetrics) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("HEIMDALL_ADMIN_TOKENS", admin_tokens()),
        ("HEIMDALL_MIMIR_URL", prometheus.url()),
        ("HEIMDALL_MIMIR_API_PREFIX", String::new()),
        ("HEIMDALL_MIMIR_KIND", "label".to_owned()),
        ("HEIMDALL_MIMIR_PUSH_PATH", "/api/v1/write".to_owned()),
    ];
    let mut server = HeimdallProcess::serve(&["--target=all", "--dev"], dir.path(), &env);
    server.wait_ready();
    let mint = |user: &str, groups: &[&str]| mint_dev_token(dir.path(), user, groups);
    let alice = mint("alice@acme.com", &["analysts"]);
    let bob = mint("bob@acme.com", &["developers"]);
    for (id, name) in [("acme", "Acme"), ("globex", "Globex")] {
        cli_ok(
            dir.path(),
            &server,
            ADMIN_TOKEN,
            &["tenant", "create", id, name],
        );
    }
    let addr = server.proxy_addr.clone();
    let path = format!("/api/v1/query?query=demo_temperature&time={at}");

    // No policy yet: denied, in the Prometheus envelope.
    let denied = query(&addr, &alice, Some("acme"), &path);
    let message = assert_error(&denied, 403, "forbidden");
    assert!(message.contains("acme"), "{message}");

    apply(
        dir.path(),
        &server,
        r#"[{"name": "alice-reads-acme", "effect": "allow",
             "subjects": [{"type": "user", "id": "alice@acme.com"}],
             "actions": ["read"], "scope": {"tenants": ["acme"], "resources": ["metrics"]}},
            {"name": "developers-read-prod-globex", "effect": "allow",
             "subjects": [{"type": "group", "id": "developers"}],
             "actions": ["read"], "scope": {"tenants": ["globex"], "resources": ["metrics"]},
             "filters": ["room=\"a\""]}]"#,
    );
    let allowed = eventually(
        || query(&addr, &alice, Some("acme"), &path),
        |response| response.status == 200,
    );
    let body = allowed.json();
    assert_eq!(body["status"], "success", "{body}");
    assert_eq!(
        series_of(&body),
        ["acme/a", "acme/b"],
        "Prometheus' real answer, for acme only"
    );

    // The same under Mimir's /prometheus prefix, and with the tenants auto-resolved.
    let prefixed = query(&addr, &alice, Some("acme"), &format!("/prometheus{path}"));
    assert_eq!(prefixed.status, 200);
    let resolved = query(&addr, &alice, None, &path);
    assert_eq!(series_of(&resolved.json()), ["acme/a", "acme/b"]);

    // A tenant she may not read is left out with a warning, never silently.
    let partial = query(&addr, &alice, Some("acme|globex"), &path);
    let body = partial.json();
    assert_eq!(partial.status, 200, "{body}");
    assert_eq!(series_of(&body), ["acme/a", "acme/b"]);
    let warnings = body["warnings"].as_array().expect("a warnings list");
    assert!(
        warnings
            .iter()
            .any(|warning| warning.as_str().unwrap().contains("globex")),
        "{body}"
    );

    // Bob may read globex only where room="a": his answers hold that series alone, whether the
    // query names the room, another room, or nothing.
    let filtered = query(&addr, &bob, Some("globex"), &path);
    assert_eq!(series_of(&filtered.json()), ["globex/a"]);
    let sum = query(
        &addr,
        &bob,
        None,
        &format!("/api/v1/query?query=sum(demo_temperature)&time={at}"),
    );
    assert_eq!(sum.json()["data"]["result"][0]["value"][1], "17");
    let other_room = query(
        &addr,
        &bob,
        Some("globex"),
        &format!("/api/v1/query?query=demo_temperature{{room%3D%22c%22}}&time={at}"),
    );
    assert_eq!(series_of(&other_room.json()), Vec::<String>::new());
    let start = at - 600;
    let series = query(
        &addr,
        &bob,
        None,
        &format!("/api/v1/series?start={start}&end={at}"),
    );
    let listed: Vec<String> = series.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|labels| {
            let tenant = labels["tenant"].as_str().unwrap();
            format!("{tenant}/{}", labels["room"].as_str().unwrap())
        })
        .collect();
    assert_eq!(listed, ["globex/a"]);
    let rooms = query(
        &addr,
        &bob,
        None,
        &format!("/api/v1/label/room/values?start={start}&end={at}"),
    );
    assert_eq!(rooms.json()["data"], serde_json::json!(["a"]));
    let tenants = query(
        &addr,
        &alice,
        None,
        &format!("/api/v1/label/tenant/values?start={start}&end={at}"),
    );
    assert_eq!(tenants.json()["data"], serde_json::json!(["acme"]));
    // Metadata is narrowed to readable metric names (this store has none from scrapes); rules
    // need their own action, which bob lacks.
    let metadata = query(&addr, &bob, Some("globex"), "/api/v1/metadata");
    assert_eq!(metadata.json()["status"], "success");
    let rules = query(&addr, &bob, Some("globex"), "/api/v1/rules");
    assert_error(&rules, 403, "forbidden");

    // Bad input gets clear 4xx answers.
    let no_token = http_request(&addr, "GET", &path, &[("X-Scope-OrgID", "acme")]).unwrap();
    assert_error(&no_token, 401, "unauthorized");
    assert_eq!(no_token.header("www-authenticate"), Some("Bearer"));
    assert_error(
        &query(&addr, "not.a.token", Some("acme"), &path),
        401,
        "unauthorized",
    );
    let tampered = format!("{}x", &alice[..alice.len() - 1]);
    assert_error(
        &query(&addr, &tampered, Some("acme"), &path),
        401,
        "unauthorized",
    );
    assert_error(
        &query(&addr, &alice, Some("acme||globex"), &path),
        400,
        "bad_data",
    );
    assert_error(&query(&addr, &alice, Some("ac me"), &path), 400, "bad_data");
    let thousand = (0..1000)
        .map(|n| format!("t{n}"))
        .collect::<Vec<_>>()
        .join("|");
    assert_error(
        &query(&addr, &alice, Some(&thousand), &path),
        400,
        "bad_data",
    );
    let huge = "x".repeat(40 * 1024);
    let oversize = http_request(
        &addr,
        "GET",
        &path,
        &[
            ("Authorization", &format!("Bearer {alice}")),
            ("X-Padding", &huge),
        ],
    )
    .unwrap();
    assert!(
        oversize.status == 431,
        "oversize headers: {}",
        oversize.status
    );
    for unknown in [
        "/api/v1/admin/tsdb/snapshot",
        "/federate",
        "/api/v1/status/config",
    ] {
        let response = query(&addr, &alice, Some("acme"), unknown);
        assert_error(&response, 404, "not_found");
    }
    let write = http_request(
        &addr,
        "POST",
        "/api/v1/push",
        &[("Authorization", &format!("Bearer {alice}"))],
    )
    .unwrap();
    let message = assert_error(&write, 400, "bad_data");
    assert!(message.contains("X-Scope-OrgID"), "{message}");
    // Writes need a write policy, and every series must satisfy its filters, tenant label
    // included; Prometheus' remote-write receiver takes what passes.
    let push = |series: &[(&str, &str)]| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let request = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: series
                    .iter()
                    .map(|(name, value)| Label {
                        name: (*name).to_owned(),
                        value: (*value).to_owned(),
                    })
                    .collect(),
                samples: vec![Sample {
                    value: 42.0,
                    timestamp: i64::try_from(now.as_millis()).unwrap(),
                }],
            }],
        };
        http_request_with_body(
            &addr,
            "POST",
            "/api/v1/push",
            &[
                ("Authorization", &format!("Bearer {alice}")),
                ("X-Scope-OrgID", "acme"),
                ("Content-Encoding", "snappy"),
                ("Content-Type", "application/x-protobuf"),
                ("X-Prometheus-Remote-Write-Version", "0.1.0"),
            ],
            &remote_write::encode(&request),
        )
        .unwrap()
    };
    let prod = [
        ("__name__", "demo_pushed"),
        ("tenant", "acme"),
        ("room", "p"),
    ];
    assert_error(&push(&prod), 403, "forbidden");
    apply(
        dir.path(),
        &server,
        r#"[{"name": "alice-writes-room-p", "effect": "allow",
             "subjects": [{"type": "user", "id": "alice@acme.com"}],
             "actions": ["write"], "scope": {"tenants": ["acme"], "resources": ["metrics"]},
             "filters": ["room=\"p\""]}]"#,
    );
    let written = eventually(|| push(&prod), |response| response.status != 403);
    assert_eq!(
        written.status,
        204,
        "{}",
        String::from_utf8_lossy(&written.body)
    );
    let other_room = push(&[
        ("__name__", "demo_pushed"),
        ("tenant", "acme"),
        ("room", "q"),
    ]);
    let message = assert_error(&other_room, 403, "forbidden");
    assert!(message.contains(r#"room="q""#), "{message}");
    let other_tenant = push(&[
        ("__name__", "demo_pushed"),
        ("tenant", "globex"),
        ("room", "p"),
    ]);
    assert_error(&other_tenant, 403, "forbidden");
    let pushed = query(
        &addr,
        &alice,
        Some("acme"),
        "/api/v1/query?query=demo_pushed",
    );
    assert_eq!(pushed.json()["data"]["result"][0]["value"][1], "42");

    // A deny policy wins over the allow, and takes effect without a restart.
    apply(
        dir.path(),
        &server,
        r#"[{"name": "alice-blocked", "effect": "deny",
             "subjects": [{"type": "user", "id": "alice@acme.com"}],
             "actions": ["read"], "scope": {"tenants": ["acme"], "resources": ["metrics"]}}]"#,
    );
    let blocked = eventually(
        || query(&addr, &alice, Some("acme"), &path),
        |response| response.status == 403,
    );
    assert_error(&blocked, 403, "forbidden");

    let metrics = server.proxy_metrics_addr.clone();
    assert!(metric(&metrics, "heimdall_decisions_total{outcome=\"denied\"}") >= 2.0);
    assert!(metric(&metrics, "heimdall_decisions_total{outcome=\"allowed\"}") >= 1.0);
    assert!(metric(&metrics, "heimdall_bundle_revision") >= 4.0);
    assert!(metric(&metrics, "heimdall_decision_cache_hits_total") >= 1.0);
    assert!(
        metric(
            &metrics,
            "heimdall_requests_total{method=\"GET\",path=\"/api/v1/query\",status=\"200\"}"
        ) >= 3.0
    );
    assert!(
        server.terminate(),
        "heimdall should stop cleanly on SIGTERM"
    );
    let logs = server.take_stderr();
    assert!(!logs.contains(&alice), "a token reached the logs");
}

/// Serves a JWKS for one EC key, made by openssl, from inside the test.
struct TestIdentityProvider {
    url: String,
    key: jsonwebtoken::EncodingKey,
    runtime: tokio::runtime::Runtime,
}

impl TestIdentityProvider {
    fn start() -> Self {
        let pem = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .output()
            .expect("openssl should be installed");
        assert!(pem.status.success());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem.stdout).unwrap();
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256)
                .unwrap();
        jwk.common.key_id = Some("test-ec".to_owned());
        let document =
            serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys: vec![jwk] }).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let router = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let document = document.clone();
                async move { document }
            }),
        );
        runtime.spawn(async move { axum::serve(listener, router).await });
        Self { url, key, runtime }
    }

    fn token(&self, user: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("test-ec".to_owned());
        let claims = serde_json::json!({
            "iss": "https://idp.test", "aud": "heimdall", "sub": user,
            "groups": ["sre"], "exp": now + 3600,
        });
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

#[test]
fn a_policy_change_reaches_two_proxies_over_nats_without_a_restart() {
    let (openmetrics, at) = samples();
    let Some(prometheus) = PrometheusServer::start(&openmetrics) else {
        return;
    };
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let identity = TestIdentityProvider::start();
    let dir = tempfile::tempdir().unwrap();
    let bundle_dir = dir.path().join("bundles");
    let bundle_token = "hmd_proxy_bundle_reader";
    let common = [
        ("HEIMDALL_ADMIN_TOKENS", admin_tokens()),
        ("HEIMDALL_NATS_URL", nats.url()),
        ("HEIMDALL_BUNDLE_DIR", bundle_dir.display().to_string()),
    ];
    let mut control_plane = HeimdallProcess::control_plane(
        dir.path(),
        &[
            common[0].clone(),
            common[1].clone(),
            common[2].clone(),
            (
                "HEIMDALL_BUNDLE_TOKENS",
                format!(
                    "[{{name: proxies, sha256: {}}}]",
                    heimdall_control_plane::hash_token(bundle_token)
                ),
            ),
        ],
    );
    control_plane.wait_ready();
    cli_ok(
        dir.path(),
        &control_plane,
        ADMIN_TOKEN,
        &["tenant", "create", "acme", "Acme"],
    );

    let proxy_env = |bundle_url: Option<String>| {
        let mut env = vec![
            common[1].clone(),
            common[2].clone(),
            ("HEIMDALL_MIMIR_URL", prometheus.url()),
            ("HEIMDALL_MIMIR_API_PREFIX", String::new()),
            ("HEIMDALL_MIMIR_KIND", "label".to_owned()),
            ("HEIMDALL_JWT_JWKS_URL", identity.url.clone()),
            ("HEIMDALL_JWT_ISSUER", "https://idp.test".to_owned()),
            ("HEIMDALL_JWT_AUDIENCE", "heimdall".to_owned()),
            // Far beyond the test: only the notification can bring the change in time.
            (
                "HEIMDALL_PROXY_RECONCILE_INTERVAL_SECONDS",
                "3600".to_owned(),
            ),
        ];
        if let Some(url) = bundle_url {
            env.push(("HEIMDALL_PROXY_BUNDLE_URL", url));
            env.push(("HEIMDALL_PROXY_BUNDLE_TOKEN", bundle_token.to_owned()));
        }
        env
    };
    let endpoint = format!("http://{}/bundles/bundle.tar.gz", control_plane.http_addr);
    let mut from_endpoint =
        HeimdallProcess::serve(&["--target=proxy"], dir.path(), &proxy_env(Some(endpoint)));
    let mut from_folder = HeimdallProcess::serve(&["--target=proxy"], dir.path(), &proxy_env(None));
    from_endpoint.wait_ready();
    from_folder.wait_ready();

    let token = identity.token("carol@acme.com");
    let path = format!("/api/v1/query?query=demo_temperature&time={at}");
    let proxies = [
        from_endpoint.proxy_addr.clone(),
        from_folder.proxy_addr.clone(),
    ];
    for proxy in &proxies {
        let response = eventually(
            || query(proxy, &token, Some("acme"), &path),
            |response| response.status == 403,
        );
        assert_error(&response, 403, "forbidden");
    }

    apply(
        dir.path(),
        &control_plane,
        r#"[{"name": "sre-read-acme", "effect": "allow",
             "subjects": [{"type": "group", "id": "sre"}],
             "actions": ["read"], "scope": {"tenants": ["acme"], "resources": ["metrics"]}}]"#,
    );
    for proxy in &proxies {
        let response = eventually(
            || query(proxy, &token, Some("acme"), &path),
            |response| response.status == 200,
        );
        let body = response.json();
        assert_eq!(
            response.status, 200,
            "proxy {proxy} did not follow the change: {body}"
        );
        assert_eq!(
            body["data"]["result"].as_array().unwrap().len(),
            2,
            "{body}"
        );
    }

    apply(
        dir.path(),
        &control_plane,
        r#"[{"name": "carol-blocked", "effect": "deny",
             "subjects": [{"type": "user", "id": "carol@acme.com"}],
             "actions": ["read"], "scope": {"tenants": ["acme"], "resources": ["metrics"]}}]"#,
    );
    for proxy in &proxies {
        let response = eventually(
            || query(proxy, &token, Some("acme"), &path),
            |response| response.status == 403,
        );
        assert_error(&response, 403, "forbidden");
    }
    for metrics in [
        &from_endpoint.proxy_metrics_addr,
        &from_folder.proxy_metrics_addr,
    ] {
        assert!(metric(metrics, "heimdall_bundle_revision") >= 3.0);
        assert!(
            metric(
                metrics,
                "heimdall_jwks_refreshes_total{result=\"success\",trigger=\"start\"}"
            ) >= 1.0
        );
    }
    assert!(from_endpoint.terminate());
    assert!(from_folder.terminate());
    assert!(control_plane.terminate());
    drop(identity.runtime);
}
