//! End-to-end tests of how the proxy meets real clients and a real TLS upstream: Debian's
//! `promtool` querying through the proxy, and a Prometheus that serves HTTPS and demands a
//! client certificate signed by its own CA (its `--web.config.file`), in front of which the
//! proxy must present the certificate from `mimir.tls`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use heimdall_tests::{
    HeimdallProcess, HttpResponse, PrometheusServer, cli_ok, http_request, mint_dev_token,
    required_env,
};
use serde_json::Value;

const ADMIN_TOKEN: &str = "hmd_clients_test_admin_token";

/// Two rooms of one tenant and one of another, three hours back (a backfilled block).
fn samples() -> (String, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = now - 3 * 3600;
    let text = format!(
        "# TYPE demo_humidity gauge\n\
         demo_humidity{{tenant=\"acme\",room=\"a\"}} 41 {at}\n\
         demo_humidity{{tenant=\"acme\",room=\"b\"}} 43 {at}\n\
         demo_humidity{{tenant=\"globex\",room=\"a\"}} 47 {at}\n\
         # EOF\n"
    );
    (text, at)
}

/// Starts `serve --target=all --dev` in front of a `label` store at `upstream_url`, with the
/// tenants acme and globex, and lets alice read acme where `room="a"`.
fn start_heimdall(dir: &Path, upstream_url: &str, extra_env: &[(&str, String)]) -> HeimdallProcess {
    let mut env = vec![
        (
            "HEIMDALL_ADMIN_TOKENS",
            format!(
                "[{{name: test, sha256: {}}}]",
                heimdall_control_plane::hash_token(ADMIN_TOKEN)
            ),
        ),
        ("HEIMDALL_MIMIR_URL", upstream_url.to_owned()),
        ("HEIMDALL_MIMIR_API_PREFIX", String::new()),
        ("HEIMDALL_MIMIR_KIND", "label".to_owned()),
    ];
    env.extend(extra_env.iter().cloned());
    let mut server = HeimdallProcess::serve(&["--target=all", "--dev"], dir, &env);
    server.wait_ready();
    for (id, name) in [("acme", "Acme"), ("globex", "Globex")] {
        cli_ok(dir, &server, ADMIN_TOKEN, &["tenant", "create", id, name]);
    }
    let policies = dir.join("policies.json");
    std::fs::write(
        &policies,
        r#"[{"name": "alice-reads-room-a", "effect": "allow",
             "subjects": [{"type": "user", "id": "alice"}], "actions": ["read"],
             "scope": {"tenants": ["acme"], "resources": ["metrics"]},
             "filters": ["room=\"a\""]}]"#,
    )
    .unwrap();
    cli_ok(
        dir,
        &server,
        ADMIN_TOKEN,
        &["policy", "apply", policies.to_str().unwrap()],
    );
    server
}

/// Asks the proxy until the answer's status is no longer 403 or 503 (the policy and the
/// upstream settle), for at most 15 s.
fn query_until_settled(addr: &str, token: &str, path: &str) -> HttpResponse {
    let bearer = format!("Bearer {token}");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("X-Scope-OrgID", "acme"),
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = http_request(addr, "GET", path, &headers).expect("the proxy answers");
        if !matches!(response.status, 403 | 503) || Instant::now() > deadline {
            return response;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Returns `tenant/room` of every series of a vector answer, sorted.
fn rooms(body: &Value) -> Vec<String> {
    assert_eq!(body["status"], "success", "{body}");
    let mut rooms: Vec<String> = body["data"]["result"]
        .as_array()
        .expect("a result list")
        .iter()
        .map(|series| {
            format!(
                "{}/{}",
                series["metric"]["tenant"].as_str().unwrap(),
                series["metric"]["room"].as_str().unwrap()
            )
        })
        .collect();
    rooms.sort();
    rooms
}

/// Runs `promtool query instant` and returns its output, requiring success.
fn promtool_query(promtool: &str, args: &[&str]) -> String {
    let output = Command::new(promtool)
        .args(["query", "instant"])
        .args(args)
        .output()
        .expect("promtool should run");
    assert!(
        output.status.success(),
        "promtool {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn promtool_reads_through_the_proxy_only_the_allowed_series() {
    let (openmetrics, at) = samples();
    let Some(prometheus) = PrometheusServer::start(&openmetrics) else {
        return;
    };
    let Some(promtool) = required_env("HEIMDALL_PROMTOOL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start_heimdall(
        dir.path(),
        &prometheus.url(),
        &[("HEIMDALL_JWT_ACCEPT_BASIC_AUTH", "true".to_owned())],
    );
    let alice = mint_dev_token(dir.path(), "alice", &[]);
    let settled = query_until_settled(
        &server.proxy_addr,
        &alice,
        &format!("/api/v1/query?query=demo_humidity&time={at}"),
    );
    assert_eq!(rooms(&settled.json()), ["acme/a"]);

    // promtool 2.42 sends no bearer token of its own, but Go's HTTP client turns a URL's
    // userinfo into Basic credentials: the token travels as the password. Without a tenant
    // header the proxy resolves alice's tenants itself.
    let proxy_url = format!("http://promtool:{alice}@{}", server.proxy_addr);
    let time = at.to_string();
    let output = promtool_query(
        &promtool,
        &[&format!("--time={time}"), &proxy_url, "demo_humidity"],
    );
    assert!(
        output.contains(r#"room="a""#) && output.contains(r#"tenant="acme""#),
        "{output}"
    );
    assert!(!output.contains(r#"room="b""#), "{output}");
    assert!(!output.contains("globex"), "{output}");
    let summed = promtool_query(
        &promtool,
        &[&format!("--time={time}"), &proxy_url, "sum(demo_humidity)"],
    );
    assert!(summed.contains("=> 41 @"), "only room a counts: {summed}");

    // A forged token gets nothing, also through promtool.
    let forged = format!("http://promtool:{alice}x@{}", server.proxy_addr);
    let refused = Command::new(&promtool)
        .args(["query", "instant", &forged, "demo_humidity"])
        .output()
        .expect("promtool should run");
    assert!(!refused.status.success());
    let refused_text = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!refused_text.contains("=> "), "{refused_text}");

    // promtool 2.43 and later (Debian trixie's, which the test command fetches) sends a
    // bearer token from --http.config.file.
    let Some(bearer_promtool) = required_env("HEIMDALL_PROMTOOL_HTTP_CONFIG") else {
        return;
    };
    let config = dir.path().join("promtool-http.yml");
    std::fs::write(
        &config,
        format!("authorization:\n  type: Bearer\n  credentials: {alice}\n"),
    )
    .unwrap();
    let http_config = format!("--http.config.file={}", config.display());
    let proxy = format!("http://{}", server.proxy_addr);
    let output = promtool_query(
        &bearer_promtool,
        &[
            &http_config,
            &format!("--time={time}"),
            &proxy,
            "demo_humidity",
        ],
    );
    assert!(
        output.contains(r#"room="a""#) && output.contains(r#"tenant="acme""#),
        "{output}"
    );
    assert!(!output.contains(r#"room="b""#), "{output}");
    assert!(!output.contains("globex"), "{output}");
    // A range query, the other form promtool users reach for.
    let range = Command::new(&bearer_promtool)
        .args(["query", "range", &http_config])
        .arg(format!("--start={}", at - 60))
        .arg(format!("--end={at}"))
        .args(["--step=30s", &proxy, "demo_humidity"])
        .output()
        .expect("promtool should run");
    let range_text = String::from_utf8_lossy(&range.stdout);
    assert!(range.status.success(), "{range_text}");
    assert!(range_text.contains(r#"room="a""#), "{range_text}");
    assert!(!range_text.contains(r#"room="b""#), "{range_text}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made by `openssl`.
struct Certificates {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl should run");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn make_certificates(dir: &Path) -> Certificates {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "2"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=heimdall-test-ca",
    ]);
    openssl(dir, &ca);
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        let extensions = dir.join(format!("{name}.ext"));
        std::fs::write(
            &extensions,
            format!(
                "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"
            ),
        )
        .unwrap();
        let (key, csr, cert) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let mut request = vec!["req", "-nodes"];
        request.extend(ec);
        let subject = format!("/CN=heimdall-test-{name}");
        request.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(dir, &request);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &cert,
                "-extfile",
                extensions.to_str().unwrap(),
            ],
        );
    }
    Certificates {
        ca: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}

#[test]
fn a_tls_upstream_that_demands_a_client_certificate_is_read_with_mimir_tls() {
    let (openmetrics, at) = samples();
    let certificates_dir = tempfile::tempdir().unwrap();
    let certificates = make_certificates(certificates_dir.path());
    let web_config = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: \
         RequireAndVerifyClientCert\n  client_ca_file: {}\n",
        certificates.server_cert.display(),
        certificates.server_key.display(),
        certificates.ca.display()
    );
    let Some(prometheus) = PrometheusServer::start_with(&openmetrics, Some(&web_config)) else {
        return;
    };
    let upstream = format!("https://{}", prometheus.addr);
    let path = format!("/api/v1/query?query=demo_humidity&time={at}");

    // With the CA and the client certificate, the proxy reads the upstream, still filtered.
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_heimdall(
        dir.path(),
        &upstream,
        &[
            ("HEIMDALL_MIMIR_AUTH_TYPE", "mtls".to_owned()),
            (
                "HEIMDALL_MIMIR_TLS_CA_FILE",
                certificates.ca.display().to_string(),
            ),
            (
                "HEIMDALL_MIMIR_TLS_CERT_FILE",
                certificates.client_cert.display().to_string(),
            ),
            (
                "HEIMDALL_MIMIR_TLS_KEY_FILE",
                certificates.client_key.display().to_string(),
            ),
        ],
    );
    let alice = mint_dev_token(dir.path(), "alice", &[]);
    let answer = query_until_settled(&server.proxy_addr, &alice, &path);
    assert_eq!(answer.status, 200, "{}", answer.json());
    assert_eq!(rooms(&answer.json()), ["acme/a"]);
    assert!(server.terminate(), "heimdall should stop cleanly");
    let logs = server.take_stderr();
    assert!(!logs.contains("PRIVATE KEY"), "{logs}");

    // Trusting the CA without presenting a certificate: Prometheus ends the handshake, and
    // the client gets a 502 in the Prometheus envelope, not data and not a hang.
    let dir = tempfile::tempdir().unwrap();
    let server = start_heimdall(
        dir.path(),
        &upstream,
        &[(
            "HEIMDALL_MIMIR_TLS_CA_FILE",
            certificates.ca.display().to_string(),
        )],
    );
    let alice = mint_dev_token(dir.path(), "alice", &[]);
    let refused = query_until_settled(&server.proxy_addr, &alice, &path);
    let body = refused.json();
    assert_eq!(refused.status, 502, "{body}");
    assert_eq!(body["status"], "error", "{body}");
    // The same Prometheus answered a moment ago, so the certificate is what is missing. Under
    // TLS 1.3 the client may see the server's alert or only the closed connection, so the
    // message is not asserted.
    assert!(!String::from_utf8_lossy(&refused.body).contains("humidity"));

    // Without the CA, the upstream's certificate is not trusted: 502 as well.
    let dir = tempfile::tempdir().unwrap();
    let server = start_heimdall(
        dir.path(),
        &upstream,
        &[
            (
                "HEIMDALL_MIMIR_TLS_CERT_FILE",
                certificates.client_cert.display().to_string(),
            ),
            (
                "HEIMDALL_MIMIR_TLS_KEY_FILE",
                certificates.client_key.display().to_string(),
            ),
        ],
    );
    let alice = mint_dev_token(dir.path(), "alice", &[]);
    let untrusted = query_until_settled(&server.proxy_addr, &alice, &path);
    let body = untrusted.json();
    assert_eq!(untrusted.status, 502, "{body}");
    let message = body["error"].as_str().unwrap().to_lowercase();
    assert!(
        message.contains("certificate"),
        "the CA is unknown: {message}"
    );
}
