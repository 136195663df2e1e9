//! Token verification against real RSA, EC and Ed25519 keys (made by `openssl genpkey`) served
//! by a JWKS server inside the test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;

/// A private key and its public JWK.
struct TestKey {
    encoding: EncodingKey,
    jwk: Jwk,
    algorithm: Algorithm,
    public_pem: Vec<u8>,
}

impl TestKey {
    fn generate(algorithm: Algorithm, kid: &str) -> Self {
        let args: &[&str] = match algorithm {
            Algorithm::RS256 | Algorithm::PS256 => {
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
            }
            Algorithm::ES256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Algorithm::ES384 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            Algorithm::EdDSA => &["-algorithm", "ed25519"],
            other => panic!("no test key for {other:?}"),
        };
        let private_pem = openssl(&[&["genpkey"], args].concat(), None);
        let public_pem = openssl(&["pkey", "-pubout"], Some(&private_pem));
        let encoding = match algorithm.family() {
            jsonwebtoken::AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&private_pem),
            jsonwebtoken::AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&private_pem),
            _ => EncodingKey::from_ed_pem(&private_pem),
        }
        .expect("openssl should write a usable key");
        let mut jwk = Jwk::from_encoding_key(&encoding, algorithm).expect("key should make a JWK");
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            encoding,
            jwk,
            algorithm,
            public_pem,
        }
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = self.jwk.common.key_id.clone();
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing should work")
    }
}

fn openssl(args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl should be installed");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin
        .write_all(input.unwrap_or_default())
        .expect("openssl should read its input");
    drop(stdin);
    let output = child.wait_with_output().expect("openssl should run");
    assert!(output.status.success(), "openssl {args:?} failed");
    output.stdout
}

/// A JWKS endpoint whose key set the test can swap, counting fetches.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<JwkSet>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: Vec<Jwk>) -> Self {
        let keys = Arc::new(Mutex::new(JwkSet { keys }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (keys.clone(), fetches.clone());
        let router = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let body = serde_json::to_string(&*served.lock().expect("lock")).expect("json");
                async move { body }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port should be free");
        let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url, keys, fetches }
    }

    fn replace(&self, keys: Vec<Jwk>) {
        *self.keys.lock().expect("lock") = JwkSet { keys };
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn settings(url: &str) -> IdentitySettings {
    IdentitySettings {
        keys: KeySource::Url {
            url: url.to_owned(),
            insecure_skip_verify: false,
        },
        issuers: vec!["https://idp.example".to_owned()],
        audiences: vec!["heimdall".to_owned(), "grafana".to_owned()],
        algorithms: vec![
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ],
        hmac_secret: None,
        leeway: Duration::from_secs(5),
        user_claim: "sub".to_owned(),
        groups_claim: "groups".to_owned(),
        refresh_interval: Duration::from_secs(300),
        min_refresh_interval: Duration::from_secs(60),
        token_cache_size: 100,
        accept_basic_auth: false,
    }
}

async fn verifier(settings: IdentitySettings) -> JwtVerifier {
    let metrics = ProxyMetrics::unregistered();
    let keys = JwksCache::new(
        settings.keys.clone(),
        settings.min_refresh_interval,
        metrics.clone(),
    )
    .expect("client should build");
    keys.refresh("start").await.expect("the JWKS should load");
    JwtVerifier::new(settings, Arc::new(keys), metrics)
}

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let now = unix_now();
    let mut claims = json!({
        "iss": "https://idp.example",
        "aud": "heimdall",
        "sub": "alice@acme.com",
        "groups": ["sre", "developers", "sre"],
        "iat": now,
        "exp": now + 600,
    });
    for (key, value) in extra.as_object().expect("extra claims are an object") {
        if value.is_null() {
            claims.as_object_mut().expect("object").remove(key);
        } else {
            claims[key] = value.clone();
        }
    }
    claims
}

async fn reason(verifier: &JwtVerifier, token: &str) -> &'static str {
    verifier
        .verify(token)
        .await
        .expect_err("the token should be refused")
        .reason
}

#[tokio::test]
async fn tokens_signed_by_every_allowed_key_type_are_accepted() {
    let keys: Vec<TestKey> = [
        (Algorithm::RS256, "rsa"),
        (Algorithm::PS256, "rsa-pss"),
        (Algorithm::ES256, "ec-p256"),
        (Algorithm::ES384, "ec-p384"),
        (Algorithm::EdDSA, "ed25519"),
    ]
    .into_iter()
    .map(|(algorithm, kid)| TestKey::generate(algorithm, kid))
    .collect();
    let server = JwksServer::start(keys.iter().map(|key| key.jwk.clone()).collect()).await;
    let verifier = verifier(settings(&server.url)).await;
    for key in &keys {
        let identity = verifier
            .verify(&key.sign(&claims(json!({}))))
            .await
            .unwrap_or_else(|error| panic!("{:?} token refused: {error:?}", key.algorithm));
        assert_eq!(identity.user, "alice@acme.com");
        assert_eq!(identity.groups, vec!["developers", "sre"]);
    }
}

#[tokio::test]
async fn time_issuer_and_audience_claims_are_enforced() {
    let key = TestKey::generate(Algorithm::ES256, "ec");
    let server = JwksServer::start(vec![key.jwk.clone()]).await;
    let verifier = verifier(settings(&server.url)).await;
    let now = unix_now();
    let cases = [
        (json!({"exp": now - 60}), "expired"),
        (json!({"nbf": now + 60}), "not_yet_valid"),
        (json!({"exp": null}), "claims"),
        (json!({"iss": "https://evil.example"}), "issuer"),
        (json!({"iss": null}), "claims"),
        (json!({"aud": "someone-else"}), "audience"),
        (json!({"aud": null}), "claims"),
        (json!({"sub": null}), "claims"),
        (json!({"groups": {"not": "a list"}}), "claims"),
    ];
    for (extra, expected) in cases {
        let token = key.sign(&claims(extra.clone()));
        assert_eq!(reason(&verifier, &token).await, expected, "claims {extra}");
    }
    // Within the leeway, and one audience among several, is fine.
    let token = key.sign(&claims(
        json!({"exp": now - 2, "aud": ["other", "grafana"]}),
    ));
    assert!(verifier.verify(&token).await.is_ok());
}

#[tokio::test]
async fn none_and_hmac_tokens_are_refused_without_a_configured_secret() {
    let key = TestKey::generate(Algorithm::RS256, "rsa");
    let server = JwksServer::start(vec![key.jwk.clone()]).await;
    let verifier = verifier(settings(&server.url)).await;
    let body = claims(json!({}));
    let encode = |value: &serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    };
    let unsigned = format!("{}.{}.", encode(&json!({"alg": "none"})), encode(&body));
    assert_eq!(reason(&verifier, &unsigned).await, "algorithm");
    // The classic confusion: HS256 keyed with the RSA public key.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &body,
        &EncodingKey::from_secret(&key.public_pem).expect("any bytes are a secret"),
    )
    .expect("signing should work");
    assert_eq!(reason(&verifier, &confused).await, "algorithm");
    // Even with HS256 allowed, only the configured secret verifies it.
    let mut with_secret = settings(&server.url);
    with_secret.algorithms.push(Algorithm::HS256);
    with_secret.hmac_secret = Some(b"a-long-configured-shared-secret".to_vec());
    let verifier = super::tests::verifier(with_secret).await;
    assert_eq!(reason(&verifier, &confused).await, "signature");
    let shared = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &body,
        &EncodingKey::from_secret(b"a-long-configured-shared-secret").expect("a secret"),
    )
    .expect("signing should work");
    assert!(verifier.verify(&shared).await.is_ok());
}

#[tokio::test]
async fn malformed_tokens_and_headers_are_refused() {
    let key = TestKey::generate(Algorithm::EdDSA, "ed");
    let server = JwksServer::start(vec![key.jwk.clone()]).await;
    let verifier = verifier(settings(&server.url)).await;
    for token in [
        "",
        "abc",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJFZERTQSJ9.e30.AAAA",
    ] {
        let refused = verifier.verify(token).await.expect_err(token);
        assert!(
            matches!(
                refused.reason,
                "malformed" | "signature" | "algorithm" | "unknown_kid"
            ),
            "{token:?}: {refused:?}"
        );
    }
    let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(reason(&verifier, &huge).await, "malformed");
    for header in ["Basic YWxpY2U6cHc=", "Bearer", "Bearer   ", "token"] {
        let value = http::HeaderValue::from_static(header);
        let error = verifier
            .verify_header(Some(&value))
            .await
            .expect_err(header);
        assert_eq!(error.status, http::StatusCode::UNAUTHORIZED, "{header}");
    }
    let error = verifier.verify_header(None).await.expect_err("no header");
    assert!(error.message.contains("missing"), "{}", error.message);
}

#[tokio::test]
async fn a_token_is_taken_from_a_basic_password_only_when_configured() {
    use base64::Engine as _;
    let key = TestKey::generate(Algorithm::EdDSA, "ed");
    let server = JwksServer::start(vec![key.jwk.clone()]).await;
    let token = key.sign(&claims(json!({"sub": "alice"})));
    let basic = |credentials: &str| {
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        http::HeaderValue::from_str(&format!("Basic {encoded}")).expect("a header value")
    };

    let strict = verifier(settings(&server.url)).await;
    let error = strict
        .verify_header(Some(&basic(&format!("promtool:{token}"))))
        .await
        .expect_err("basic is off by default");
    assert_eq!(error.status, http::StatusCode::UNAUTHORIZED);

    let mut lenient_settings = settings(&server.url);
    lenient_settings.accept_basic_auth = true;
    let lenient = verifier(lenient_settings).await;
    let identity = lenient
        .verify_header(Some(&basic(&format!("promtool:{token}"))))
        .await
        .expect("the password is a valid token");
    assert_eq!(identity.user, "alice");
    // The user name plays no part; a token is still verified in full.
    let tampered = format!(
        "{}AAAA",
        &token[..token.rfind('.').expect("three parts") + 1]
    );
    for credentials in [
        format!("alice:{tampered}"),
        "alice:".to_owned(),
        "alice".to_owned(),
        format!(":{}", "a.b.c"),
    ] {
        let error = lenient
            .verify_header(Some(&basic(&credentials)))
            .await
            .expect_err(&credentials);
        assert_eq!(
            error.status,
            http::StatusCode::UNAUTHORIZED,
            "{credentials}"
        );
    }
    let not_base64 = http::HeaderValue::from_static("Basic !!!");
    assert!(lenient.verify_header(Some(&not_base64)).await.is_err());
    let bearer = http::HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
    assert!(lenient.verify_header(Some(&bearer)).await.is_ok());
}

#[tokio::test]
async fn a_rotated_key_is_fetched_on_its_first_token_and_the_old_one_is_dropped() {
    let old = TestKey::generate(Algorithm::RS256, "2026-11");
    let server = JwksServer::start(vec![old.jwk.clone()]).await;
    let mut settings = settings(&server.url);
    settings.min_refresh_interval = Duration::from_millis(300);
    let verifier = verifier(settings).await;
    let old_token = old.sign(&claims(json!({})));
    assert!(verifier.verify(&old_token).await.is_ok());
    assert_eq!(server.fetches(), 1);

    let new = TestKey::generate(Algorithm::RS256, "2026-12");
    server.replace(vec![new.jwk.clone()]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let new_token = new.sign(&claims(json!({"sub": "bob"})));
    let identity = verifier
        .verify(&new_token)
        .await
        .expect("the new key should be fetched");
    assert_eq!(identity.user, "bob");
    assert_eq!(server.fetches(), 2);
    // The old key is gone, and so is the cached verification of its token.
    assert_eq!(reason(&verifier, &old_token).await, "unknown_kid");

    // Unknown key ids do not hammer the identity provider.
    let stranger = TestKey::generate(Algorithm::ES256, "stranger");
    for _ in 0..5 {
        let token = stranger.sign(&claims(json!({})));
        assert_eq!(reason(&verifier, &token).await, "unknown_kid");
    }
    assert!(server.fetches() <= 3, "fetched {} times", server.fetches());
}

#[tokio::test]
async fn groups_come_from_nested_paths_and_comma_separated_strings() {
    let key = TestKey::generate(Algorithm::EdDSA, "ed");
    let server = JwksServer::start(vec![key.jwk.clone()]).await;
    let mut nested = settings(&server.url);
    nested.user_claim = "preferred_username".to_owned();
    nested.groups_claim = "realm_access.roles".to_owned();
    let verifier = verifier(nested).await;
    let token = key.sign(&claims(json!({
        "preferred_username": "carol",
        "realm_access": {"roles": ["admins", "developers"]},
    })));
    let identity = verifier
        .verify(&token)
        .await
        .expect("nested claims should be read");
    assert_eq!(identity.user, "carol");
    assert_eq!(identity.groups, vec!["admins", "developers"]);

    let mut flat = settings(&server.url);
    flat.groups_claim = "https://acme.example/groups".to_owned();
    let verifier = super::tests::verifier(flat).await;
    let token = key.sign(&claims(
        json!({"https://acme.example/groups": "sre, ops,,sre"}),
    ));
    let identity = verifier
        .verify(&token)
        .await
        .expect("a string of groups is read");
    assert_eq!(identity.groups, vec!["ops", "sre"]);
}

#[tokio::test]
async fn verified_tokens_are_served_from_the_cache_until_they_expire() {
    let key = TestKey::generate(Algorithm::ES256, "ec");
    let server = JwksServer::start(vec![key.jwk.clone()]).await;
    let verifier = verifier(settings(&server.url)).await;
    let token = key.sign(&claims(json!({})));
    for _ in 0..3 {
        verifier.verify(&token).await.expect("token should verify");
    }
    assert_eq!(verifier.metrics.token_cache_misses.get(), 1);
    assert_eq!(verifier.metrics.token_cache_hits.get(), 2);
    // A forged copy with another signature is not a cache hit.
    let forged = format!(
        "{}AAAA",
        &token[..token.rfind('.').expect("three parts") + 1]
    );
    assert_eq!(reason(&verifier, &forged).await, "signature");
}
