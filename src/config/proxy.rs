//! The proxy's configuration sections: `mimir` (the upstream), `jwt`, `opa` and `proxy`, with
//! the original Heimdall's keys where it had them.

use std::time::Duration;

use anyhow::bail;
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Deserializer, Serialize};

use heimdall_proxy::{
    PartialTenants, RemoteOpaSettings, TenantBinding, UpstreamAuth, UpstreamSettings, UpstreamTls,
};

/// The upstream Heimdall protects.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMimir {
    /// Base URL of Mimir (or of a Prometheus-compatible store).
    pub url: String,
    /// mimir: tenants go in `X-Scope-OrgID`. label: one Prometheus-compatible store (Prometheus,
    /// Thanos, VictoriaMetrics) where the tenant is the label `tenant_label`, enforced on every
    /// selector.
    pub kind: String,
    /// The tenant label of a `label` upstream.
    pub tenant_label: String,
    /// mimir: one federated request for several tenants (Mimir's tenant federation); false:
    /// one request per tenant, merged by the proxy with each series labelled `__tenant_id__`.
    pub federation: bool,
    /// mimir: send the filter sets in `X-Prom-Label-Policy` for Mimir's label-based access
    /// control to enforce, instead of rewriting queries. Only for a Mimir that runs with
    /// `-auth.label-access-control-enabled`: any other ignores the header and answers unfiltered.
    pub label_policy: bool,
    /// Prefix of the Prometheus API on the upstream: `/prometheus` for Mimir, empty for a
    /// Prometheus server.
    pub api_prefix: String,
    /// Path of remote write on the upstream.
    pub push_path: String,
    /// Accepts any TLS certificate from the upstream.
    pub insecure_skip_verify: bool,
    /// Timeout of one upstream call.
    pub timeout_seconds: u64,
    /// The most an upstream answer may weigh.
    pub max_response_bytes: u64,
    pub auth: RawUpstreamAuth,
    pub tls: RawUpstreamTls,
}

/// TLS towards the upstream, with Prometheus' `tls_config` key names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstreamTls {
    /// PEM CA certificates; when set, only they are trusted for the upstream.
    pub ca_file: String,
    /// PEM client certificate (chain) for mutual TLS.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
}

/// Never prints credentials.
impl std::fmt::Debug for RawMimir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawMimir")
            .field("url", &self.url)
            .field("kind", &self.kind)
            .field("federation", &self.federation)
            .field("label_policy", &self.label_policy)
            .field("api_prefix", &self.api_prefix)
            .field("auth", &self.auth.kind)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Default for RawMimir {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080".to_owned(),
            kind: "mimir".to_owned(),
            tenant_label: "tenant".to_owned(),
            federation: true,
            label_policy: false,
            api_prefix: "/prometheus".to_owned(),
            push_path: "/api/v1/push".to_owned(),
            insecure_skip_verify: false,
            timeout_seconds: 120,
            max_response_bytes: 256 * 1024 * 1024,
            auth: RawUpstreamAuth::default(),
            tls: RawUpstreamTls::default(),
        }
    }
}

/// How the proxy authenticates to the upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstreamAuth {
    /// none, bearer, basic, or mtls (a client certificate from `mimir.tls` and no header).
    #[serde(rename = "type")]
    pub kind: String,
    /// The bearer token; prefer `HEIMDALL_MIMIR_AUTH_TOKEN` to the file.
    pub token: String,
    pub username: String,
    pub password: String,
}

impl Default for RawUpstreamAuth {
    fn default() -> Self {
        Self {
            kind: "none".to_owned(),
            token: String::new(),
            username: String::new(),
            password: String::new(),
        }
    }
}

/// Token verification.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJwt {
    /// The identity provider's JWKS document.
    pub jwks_url: String,
    /// Accepted issuers (`iss`): one, or a list. Required with `jwks_url`.
    #[serde(deserialize_with = "one_or_many")]
    pub issuer: Vec<String>,
    /// Accepted audiences (`aud`): one, or a list; a token must name one. Required with
    /// `jwks_url`.
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// Accepted algorithms: RS256/384/512, PS256/384/512, ES256/384, EdDSA; HS256/384/512 only
    /// with `hmac_secret`.
    #[serde(deserialize_with = "one_or_many")]
    pub algorithms: Vec<String>,
    /// Shared secret for HS* tokens; prefer `HEIMDALL_JWT_HMAC_SECRET` to the file.
    pub hmac_secret: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// The claim naming the user; a dotted path reaches nested claims.
    pub user_claim: String,
    /// The claim listing the groups (`realm_access.roles`); a list or a comma-separated string.
    pub groups_claim: String,
    /// How often the JWKS is fetched again.
    pub jwks_refresh_seconds: u64,
    /// The shortest time between fetches caused by unknown key ids.
    pub jwks_min_refresh_seconds: u64,
    /// Accepts any TLS certificate from the JWKS server.
    pub insecure_skip_verify: bool,
    /// How many verified tokens are remembered until they expire.
    pub token_cache_size: u64,
    /// Also reads the token from the password of `Authorization: Basic`, for clients that send
    /// only basic credentials (promtool 2.42, a URL's userinfo); the user name is ignored.
    pub accept_basic_auth: bool,
}

/// Never prints the HMAC secret.
impl std::fmt::Debug for RawJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawJwt")
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("algorithms", &self.algorithms)
            .field("accept_basic_auth", &self.accept_basic_auth)
            .finish_non_exhaustive()
    }
}

impl Default for RawJwt {
    fn default() -> Self {
        Self {
            jwks_url: String::new(),
            issuer: Vec::new(),
            audience: Vec::new(),
            algorithms: [
                "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
            ]
            .map(str::to_owned)
            .to_vec(),
            hmac_secret: String::new(),
            leeway_seconds: 10,
            user_claim: "sub".to_owned(),
            groups_claim: "groups".to_owned(),
            jwks_refresh_seconds: 300,
            jwks_min_refresh_seconds: 10,
            insecure_skip_verify: false,
            token_cache_size: 10_000,
            accept_basic_auth: false,
        }
    }
}

/// A remote OPA; empty `url`: the embedded engine decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOpa {
    pub url: String,
    pub insecure_skip_verify: bool,
    pub timeout_seconds: u64,
}

impl Default for RawOpa {
    fn default() -> Self {
        Self {
            url: String::new(),
            insecure_skip_verify: false,
            timeout_seconds: 5,
        }
    }
}

/// Limits on upstream calls (the original Heimdall's `fanout` section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFanout {
    /// Upstream requests one proxy process runs at once.
    pub max_concurrency: u64,
    /// Tenants of one request read at once when `mimir.federation` is false.
    pub tenants_per_request: u64,
    /// How long a request waits for a free slot before a 503 with `Retry-After`.
    pub queue_timeout_seconds: u64,
}

impl Default for RawFanout {
    fn default() -> Self {
        Self {
            max_concurrency: 64,
            tenants_per_request: 8,
            queue_timeout_seconds: 5,
        }
    }
}

/// The proxy's own behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    pub bundle: RawProxyBundle,
    /// How often the bundle is fetched without a notification.
    pub reconcile_interval_seconds: u64,
    /// The most tenants one request may name in `X-Scope-OrgID`.
    pub max_tenants: u64,
    /// Reads without `X-Scope-OrgID` go to every tenant the user may read; false: 400.
    pub auto_resolve_tenants: bool,
    /// warn: serve the readable tenants with a warning naming the others; deny: 403.
    pub partial_tenants: String,
    /// How many decisions are cached per bundle revision.
    pub decision_cache_size: u64,
    /// The most a request body may weigh.
    pub max_body_bytes: u64,
}

impl Default for RawProxy {
    fn default() -> Self {
        Self {
            bundle: RawProxyBundle::default(),
            reconcile_interval_seconds: 30,
            max_tenants: 32,
            auto_resolve_tenants: true,
            partial_tenants: "warn".to_owned(),
            decision_cache_size: 100_000,
            max_body_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Where the proxy gets bundles.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxyBundle {
    /// The control plane's bundle endpoint (`http://control-plane:9092/bundles/bundle.tar.gz`).
    /// Empty: read the bundle where the `bundle` section publishes it (folder or bucket).
    pub url: String,
    /// A bundle token (see `bundle.tokens`); prefer `HEIMDALL_PROXY_BUNDLE_TOKEN`.
    pub token: String,
    pub insecure_skip_verify: bool,
}

/// Never prints the token.
impl std::fmt::Debug for RawProxyBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawProxyBundle")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(value) if value.trim().is_empty() => Vec::new(),
        OneOrMany::One(value) => value
            .split(',')
            .map(|item| item.trim().to_owned())
            .collect(),
        OneOrMany::Many(values) => values,
    })
}

/// The validated proxy configuration, without what depends on the target (keys, sources).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub upstream: UpstreamSettings,
    pub jwt: JwtConfig,
    pub remote_opa: Option<RemoteOpaSettings>,
    pub bundle_url: Option<String>,
    pub bundle_token: Option<String>,
    pub bundle_insecure_skip_verify: bool,
    pub reconcile_interval: Duration,
    pub max_tenants: usize,
    pub auto_resolve_tenants: bool,
    pub partial_tenants: PartialTenants,
    pub decision_cache_size: usize,
    pub max_body_bytes: usize,
}

/// Validated `jwt` settings.
#[derive(Clone)]
pub struct JwtConfig {
    pub jwks_url: Option<String>,
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub hmac_secret: Option<Vec<u8>>,
    pub leeway: Duration,
    pub user_claim: String,
    pub groups_claim: String,
    pub refresh_interval: Duration,
    pub min_refresh_interval: Duration,
    pub insecure_skip_verify: bool,
    pub token_cache_size: usize,
    pub accept_basic_auth: bool,
}

/// Never prints the HMAC secret.
impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("jwks_url", &self.jwks_url)
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("algorithms", &self.algorithms)
            .field("accept_basic_auth", &self.accept_basic_auth)
            .finish_non_exhaustive()
    }
}

/// Validates the proxy sections.
pub fn validate(
    fanout: &RawFanout,
    mimir: &RawMimir,
    jwt: &RawJwt,
    opa: &RawOpa,
    proxy: &RawProxy,
) -> anyhow::Result<ProxyConfig> {
    let upstream = validate_upstream(mimir, fanout)?;
    let jwt = validate_jwt(jwt)?;
    let remote_opa = match opa.url.trim() {
        "" => None,
        url => Some(RemoteOpaSettings {
            url: http_url("opa.url", url)?,
            timeout: positive_seconds("opa.timeout_seconds", opa.timeout_seconds)?,
            insecure_skip_verify: opa.insecure_skip_verify,
        }),
    };
    let bundle_url = match proxy.bundle.url.trim() {
        "" => None,
        url => Some(http_url("proxy.bundle.url", url)?),
    };
    let partial_tenants = match proxy.partial_tenants.as_str() {
        "warn" => PartialTenants::Warn,
        "deny" => PartialTenants::Deny,
        other => bail!("config key proxy.partial_tenants: {other:?} is not warn or deny"),
    };
    if proxy.max_tenants == 0 {
        bail!("config key proxy.max_tenants: must be at least 1");
    }
    Ok(ProxyConfig {
        upstream,
        jwt,
        remote_opa,
        bundle_url,
        bundle_token: Some(proxy.bundle.token.trim().to_owned()).filter(|token| !token.is_empty()),
        bundle_insecure_skip_verify: proxy.bundle.insecure_skip_verify,
        reconcile_interval: positive_seconds(
            "proxy.reconcile_interval_seconds",
            proxy.reconcile_interval_seconds,
        )?,
        max_tenants: to_usize(proxy.max_tenants),
        auto_resolve_tenants: proxy.auto_resolve_tenants,
        partial_tenants,
        decision_cache_size: to_usize(proxy.decision_cache_size),
        max_body_bytes: to_usize(proxy.max_body_bytes),
    })
}

fn validate_upstream(mimir: &RawMimir, fanout: &RawFanout) -> anyhow::Result<UpstreamSettings> {
    if fanout.max_concurrency == 0 || fanout.max_concurrency > 1_000_000 {
        bail!("config key fanout.max_concurrency: must be between 1 and 1000000");
    }
    if fanout.tenants_per_request == 0 || fanout.tenants_per_request > fanout.max_concurrency {
        bail!(
            "config key fanout.tenants_per_request: must be between 1 and fanout.max_concurrency"
        );
    }
    let url = http_url("mimir.url", mimir.url.trim())?;
    let path_key = |key: &str, path: &str| -> anyhow::Result<String> {
        let path = path.trim().trim_end_matches('/');
        if !path.is_empty() && !path.starts_with('/') {
            bail!("config key {key}: {path:?} must start with /");
        }
        Ok(path.to_owned())
    };
    let auth = match mimir.auth.kind.as_str() {
        "" | "none" => UpstreamAuth::None,
        "bearer" if !mimir.auth.token.is_empty() => UpstreamAuth::Bearer(mimir.auth.token.clone()),
        "bearer" => bail!("config key mimir.auth.token: required with type bearer"),
        "basic" if !mimir.auth.username.is_empty() => UpstreamAuth::Basic {
            username: mimir.auth.username.clone(),
            password: mimir.auth.password.clone(),
        },
        "basic" => bail!("config key mimir.auth.username: required with type basic"),
        "mtls" if !mimir.tls.cert_file.trim().is_empty() => UpstreamAuth::None,
        "mtls" => bail!("config key mimir.tls.cert_file: required with auth type mtls"),
        other => {
            bail!("config key mimir.auth.type: {other:?} is not none, bearer, basic or mtls")
        }
    };
    let tls = upstream_tls(&mimir.tls)?;
    let uses_tls = tls != UpstreamTls::default() || mimir.auth.kind == "mtls";
    if uses_tls && !url.starts_with("https://") {
        bail!("config key mimir.url: {url:?} must be https:// with mimir.tls or auth type mtls");
    }
    let tenant_binding = match mimir.kind.as_str() {
        "mimir" => TenantBinding::Mimir,
        "label" => {
            let label = mimir.tenant_label.trim();
            let valid = !label.is_empty()
                && !label.starts_with("__")
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !label.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                bail!("config key mimir.tenant_label: {label:?} is not a usable label name");
            }
            TenantBinding::Label(label.to_owned())
        }
        other => bail!("config key mimir.kind: {other:?} is not mimir or label"),
    };
    if mimir.label_policy && tenant_binding != TenantBinding::Mimir {
        bail!("config key mimir.label_policy: only a mimir upstream enforces label policies");
    }
    if mimir.label_policy && mimir.federation {
        // Whether Mimir looks a federated request's policies up per tenant is not confirmed;
        // if it used the joined id, it would find none and read every tenant unfiltered.
        bail!("config key mimir.label_policy: needs mimir.federation: false");
    }
    Ok(UpstreamSettings {
        url,
        tenant_binding,
        api_prefix: path_key("mimir.api_prefix", &mimir.api_prefix)?,
        push_path: path_key("mimir.push_path", &mimir.push_path)?,
        auth,
        insecure_skip_verify: mimir.insecure_skip_verify,
        tls,
        timeout: positive_seconds("mimir.timeout_seconds", mimir.timeout_seconds)?,
        max_response_bytes: to_usize(mimir.max_response_bytes),
        federation: mimir.federation,
        label_policy: mimir.label_policy,
        tenants_at_once: to_usize(fanout.tenants_per_request),
        max_concurrency: to_usize(fanout.max_concurrency),
        queue_timeout: Duration::from_secs(fanout.queue_timeout_seconds),
    })
}

/// Reads the upstream's CA and client certificate files, so that a missing or unreadable one
/// stops the start rather than the first request.
fn upstream_tls(tls: &RawUpstreamTls) -> anyhow::Result<UpstreamTls> {
    let read = |key: &str, path: &str| -> anyhow::Result<Option<Vec<u8>>> {
        let path = path.trim();
        if path.is_empty() {
            return Ok(None);
        }
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) => bail!("config key {key}: reading {path}: {error}"),
        }
    };
    let ca_pem = read("mimir.tls.ca_file", &tls.ca_file)?;
    let cert = read("mimir.tls.cert_file", &tls.cert_file)?;
    let key = read("mimir.tls.key_file", &tls.key_file)?;
    let client_identity_pem = match (cert, key) {
        (None, None) => None,
        (Some(mut cert), Some(key)) => {
            if !cert.ends_with(b"\n") {
                cert.push(b'\n');
            }
            cert.extend_from_slice(&key);
            Some(cert)
        }
        (Some(_), None) => bail!("config key mimir.tls.key_file: required with cert_file"),
        (None, Some(_)) => bail!("config key mimir.tls.cert_file: required with key_file"),
    };
    Ok(UpstreamTls {
        ca_pem,
        client_identity_pem,
    })
}

fn validate_jwt(jwt: &RawJwt) -> anyhow::Result<JwtConfig> {
    let jwks_url = match jwt.jwks_url.trim() {
        "" => None,
        url => Some(http_url("jwt.jwks_url", url)?),
    };
    let hmac_secret = Some(jwt.hmac_secret.as_bytes().to_vec()).filter(|s| !s.is_empty());
    let mut algorithms = Vec::new();
    for name in &jwt.algorithms {
        let algorithm = match name.trim() {
            "none" | "NONE" | "None" => {
                bail!("config key jwt.algorithms: \"none\" is never accepted")
            }
            other => other.parse::<Algorithm>().map_err(|_| {
                anyhow::anyhow!("config key jwt.algorithms: {other:?} is not a JWT algorithm")
            })?,
        };
        let hmac = algorithm.family() == jsonwebtoken::AlgorithmFamily::Hmac;
        if hmac && hmac_secret.is_none() {
            bail!("config key jwt.algorithms: {name} needs jwt.hmac_secret");
        }
        if hmac && jwt.hmac_secret.len() < 32 {
            bail!("config key jwt.hmac_secret: must be at least 32 bytes");
        }
        algorithms.push(algorithm);
    }
    if jwt.leeway_seconds > 300 {
        bail!("config key jwt.leeway_seconds: at most 300");
    }
    if algorithms.is_empty() {
        bail!("config key jwt.algorithms: name at least one algorithm");
    }
    for (key, value) in [
        ("jwt.user_claim", &jwt.user_claim),
        ("jwt.groups_claim", &jwt.groups_claim),
    ] {
        if value.trim().is_empty() {
            bail!("config key {key}: must not be empty");
        }
    }
    // A provider's keys often sign tokens for other applications and tenants too: without both
    // checks such a token would be accepted here.
    if jwks_url.is_some() && jwt.issuer.is_empty() {
        bail!("config key jwt.issuer: required with jwt.jwks_url");
    }
    if jwks_url.is_some() && jwt.audience.is_empty() {
        bail!("config key jwt.audience: required with jwt.jwks_url");
    }
    Ok(JwtConfig {
        jwks_url,
        issuers: jwt.issuer.clone(),
        audiences: jwt.audience.clone(),
        algorithms,
        hmac_secret,
        leeway: Duration::from_secs(jwt.leeway_seconds),
        user_claim: jwt.user_claim.trim().to_owned(),
        groups_claim: jwt.groups_claim.trim().to_owned(),
        refresh_interval: positive_seconds("jwt.jwks_refresh_seconds", jwt.jwks_refresh_seconds)?,
        min_refresh_interval: Duration::from_secs(jwt.jwks_min_refresh_seconds),
        insecure_skip_verify: jwt.insecure_skip_verify,
        token_cache_size: to_usize(jwt.token_cache_size),
        accept_basic_auth: jwt.accept_basic_auth,
    })
}

fn http_url(key: &str, url: &str) -> anyhow::Result<String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("config key {key}: {url:?} must start with http:// or https://");
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn positive_seconds(key: &str, seconds: u64) -> anyhow::Result<Duration> {
    if seconds == 0 {
        bail!("config key {key}: must be at least 1");
    }
    Ok(Duration::from_secs(seconds))
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}
