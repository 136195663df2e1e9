//! Per-request cost of the proxy's first stages: JWT verification and per-tenant decisions, each
//! cold (no cache) and cached.
//!
//! `cargo bench -p heimdall-proxy --bench request_path`. The machine is noisy, so every figure is
//! printed beside a baseline measured in the same run: SHA-256 of the token (what a cache hit
//! must compute anyway) for verification, and the embedded engine called directly for decisions.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use heimdall_opa::engine::{DecisionInput, EmbeddedEngine, SubjectIdentity};
use heimdall_opa::{Tenant, TenantId, parse_policy_document};
use heimdall_proxy::bundle_sync::LoadedBundle;
use heimdall_proxy::decision::{Action, Decider, Engine};
use heimdall_proxy::identity::dev::{DEV_AUDIENCE, DEV_ISSUER};
use heimdall_proxy::identity::{Identity, JwksCache, JwtVerifier};
use heimdall_proxy::metrics::ProxyMetrics;
use heimdall_proxy::{DevSigner, IdentitySettings, KeySource};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::Digest;
use tokio::sync::watch;

const ITERATIONS: usize = 20_000;
const TENANTS: usize = 1_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime should start");
    runtime.block_on(async {
        bench_tokens().await;
        bench_decisions().await;
    });
}

/// Times `operation` `ITERATIONS` times and prints the median and p99.
async fn measure<F, Fut>(name: &str, mut operation: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..ITERATIONS / 10 {
        operation().await;
    }
    let mut samples = Vec::with_capacity(ITERATIONS);
    for _ in 0..ITERATIONS {
        let started = Instant::now();
        operation().await;
        samples.push(started.elapsed());
    }
    samples.sort_unstable();
    let median = samples[samples.len() / 2];
    let p99 = samples[samples.len() * 99 / 100];
    println!("{name:<44} median {median:>10.2?}  p99 {p99:>10.2?}");
    median
}

fn settings(keys: KeySource, algorithm: Algorithm, cache: usize) -> IdentitySettings {
    IdentitySettings {
        keys,
        issuers: vec![DEV_ISSUER.to_owned()],
        audiences: vec![DEV_AUDIENCE.to_owned()],
        algorithms: vec![algorithm],
        hmac_secret: None,
        leeway: Duration::from_secs(10),
        user_claim: "sub".to_owned(),
        groups_claim: "groups".to_owned(),
        refresh_interval: Duration::from_secs(300),
        min_refresh_interval: Duration::from_secs(10),
        token_cache_size: cache,
        accept_basic_auth: false,
    }
}

fn verifier(keys: &KeySource, algorithm: Algorithm, cache: usize) -> JwtVerifier {
    let metrics = ProxyMetrics::unregistered();
    let cache_of_keys = JwksCache::new(keys.clone(), Duration::from_secs(10), metrics.clone())
        .expect("a static key set needs no client");
    JwtVerifier::new(
        settings(keys.clone(), algorithm, cache),
        Arc::new(cache_of_keys),
        metrics,
    )
}

/// An RS256 key from openssl, with its key set and a token.
fn rsa_token() -> (KeySource, String) {
    let pem = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .expect("openssl should be installed");
    let key = EncodingKey::from_rsa_pem(&pem.stdout).expect("openssl writes a usable key");
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).expect("a JWK");
    jwk.common.key_id = Some("rsa".to_owned());
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "alice", "groups": ["sre", "dev"],
        "exp": now + 3600,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa".to_owned());
    let token = jsonwebtoken::encode(&header, &claims, &key).expect("signing works");
    (KeySource::Static(JwkSet { keys: vec![jwk] }), token)
}

async fn bench_tokens() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let signer = DevSigner::load_or_create(dir.path()).expect("a dev key");
    let ed_token = signer
        .mint("alice", &["sre".to_owned()], Duration::from_secs(3600))
        .expect("minting works");
    let ed_keys = KeySource::Static(signer.jwks().clone());
    let (rsa_keys, rsa_token) = rsa_token();

    println!("JWT verification ({ITERATIONS} per case)");
    let baseline = measure("baseline: sha256 of the token", || {
        let token = ed_token.clone();
        async move {
            black_box(sha2::Sha256::digest(token.as_bytes()));
        }
    })
    .await;
    for (name, keys, algorithm, token) in [
        ("EdDSA", &ed_keys, Algorithm::EdDSA, &ed_token),
        ("RS256", &rsa_keys, Algorithm::RS256, &rsa_token),
    ] {
        let cold = verifier(keys, algorithm, 0);
        let cold_time = measure(&format!("{name} cold (signature and claims)"), || async {
            black_box(cold.verify(token).await.expect("valid token"));
        })
        .await;
        let cached = verifier(keys, algorithm, 1000);
        let cached_time = measure(&format!("{name} cached"), || async {
            black_box(cached.verify(token).await.expect("valid token"));
        })
        .await;
        println!(
            "  {name}: cold / baseline {:.1}, cached / baseline {:.1}, cold / cached {:.1}",
            ratio(cold_time, baseline),
            ratio(cached_time, baseline),
            ratio(cold_time, cached_time)
        );
    }
}

fn policy_document() -> String {
    let mut policies = Vec::new();
    for tenant in 0..TENANTS {
        policies.push(serde_json::json!({
            "name": format!("team-{tenant}"), "effect": "allow",
            "subjects": [{"type": "group", "id": format!("team-{}", tenant % 50)}],
            "actions": ["read"],
            "scope": {"tenants": [format!("tenant-{tenant}")], "resources": ["metrics"]},
            "filters": [format!("env=\"prod\"")],
        }));
    }
    policies.push(serde_json::json!({
        "name": "alice-everywhere", "effect": "allow",
        "subjects": [{"type": "user", "id": "alice"}], "actions": ["read"],
        "scope": {"tenants": ["*"], "resources": ["metrics"]},
    }));
    serde_json::Value::Array(policies).to_string()
}

async fn bench_decisions() {
    let tenants: Vec<Tenant> = (0..TENANTS)
        .map(|i| Tenant::new(&format!("tenant-{i}"), &format!("Tenant {i}")).expect("valid"))
        .collect();
    let policies = parse_policy_document(&policy_document()).expect("valid policies");
    let bundle = heimdall_opa::bundle::build(1, &tenants, &policies).expect("a bundle");
    let engine = Arc::new(EmbeddedEngine::from_bundle(&bundle.bytes).expect("loads"));
    let loaded = LoadedBundle {
        revision: 1,
        manifest_revision: bundle.revision.clone(),
        digest: bundle.digest.clone(),
        engine: Some(engine.clone()),
        loaded_at: SystemTime::now(),
    };
    let (_sender, live) = watch::channel(Some(Arc::new(loaded)));
    let identity = Identity {
        user: "bob".to_owned(),
        groups: vec!["team-7".to_owned()],
        expires_at: u64::MAX,
    };
    let tenant = TenantId::parse("tenant-7").expect("valid");
    let input = DecisionInput {
        subject: SubjectIdentity {
            user: identity.user.clone(),
            groups: identity.groups.clone(),
        },
        tenant: tenant.to_string(),
        action: "read".to_owned(),
        resource: "metrics".to_owned(),
    };
    assert!(engine.decide(&input).expect("decides").allowed);

    println!(
        "Decisions ({TENANTS} tenants, {} policies; {ITERATIONS} per case)",
        policies.len()
    );
    let baseline = measure("baseline: embedded engine, direct", || async {
        black_box(engine.decide(&input).expect("decides"));
    })
    .await;
    let metrics = ProxyMetrics::unregistered();
    let cold = Decider::new(Engine::Embedded, live.clone(), 0, metrics.clone());
    let cold_time = measure("decider, cold (no cache)", || async {
        black_box(
            cold.decide(&identity, &tenant, Action::Read)
                .await
                .expect("decides"),
        );
    })
    .await;
    let cached = Decider::new(Engine::Embedded, live, 100_000, metrics);
    let cached_time = measure("decider, cached", || async {
        black_box(
            cached
                .decide(&identity, &tenant, Action::Read)
                .await
                .expect("decides"),
        );
    })
    .await;
    println!(
        "  cold / baseline {:.2}, cached / baseline {:.3}, cold / cached {:.0}",
        ratio(cold_time, baseline),
        ratio(cached_time, baseline),
        ratio(cold_time, cached_time)
    );
}

fn ratio(numerator: Duration, denominator: Duration) -> f64 {
    numerator.as_secs_f64() / denominator.as_secs_f64()
}
