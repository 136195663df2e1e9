//! The identity provider's signing keys: a JWKS fetched over HTTP(S), kept in memory, refreshed
//! on an interval and, rate limited, when a token names a key id the set does not hold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::metrics::ProxyMetrics;
use crate::upstream::error_chain;

/// The most a JWKS document may weigh.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long one JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the verification keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// A JWKS document at an HTTP(S) URL.
    Url {
        url: String,
        insecure_skip_verify: bool,
    },
    /// A fixed key set, such as the development signer's.
    Static(JwkSet),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url { url, .. } => write!(f, "jwks {url}"),
            Self::Static(set) => write!(f, "static key set ({} keys)", set.keys.len()),
        }
    }
}

/// Why the keys could not be fetched.
#[derive(Debug, Clone, thiserror::Error)]
#[error("fetching the JWKS: {0}")]
pub struct JwksError(pub String);

/// One usable verification key.
#[derive(Clone)]
pub struct VerificationKey {
    /// The key's `alg`, when the JWKS names one: the key then verifies that algorithm only.
    pub algorithm: Option<Algorithm>,
    pub key: DecodingKey,
}

/// The keys of one fetch, by key id.
#[derive(Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Vec<VerificationKey>>,
    without_kid: Vec<VerificationKey>,
    /// A digest of the document, to tell whether a refresh changed anything.
    fingerprint: Vec<u8>,
}

impl KeySet {
    /// Builds a key set, skipping keys that cannot verify signatures (encryption keys, unknown
    /// types).
    pub fn from_jwks(set: &JwkSet) -> Self {
        let mut keys = Self::default();
        for jwk in &set.keys {
            let Some(key) = verification_key(jwk) else {
                tracing::debug!(kid = ?jwk.common.key_id, "skipping unusable jwk");
                continue;
            };
            match &jwk.common.key_id {
                Some(kid) => keys.by_kid.entry(kid.clone()).or_default().push(key),
                None => keys.without_kid.push(key),
            }
        }
        let document = serde_json::to_vec(set).unwrap_or_default();
        keys.fingerprint = <sha2::Sha256 as sha2::Digest>::digest(&document).to_vec();
        keys
    }

    /// Returns the keys that may verify a token with this key id and algorithm.
    pub fn candidates(&self, kid: Option<&str>, algorithm: Algorithm) -> Vec<&VerificationKey> {
        let pool: Box<dyn Iterator<Item = &VerificationKey>> = match kid {
            Some(kid) => Box::new(self.by_kid.get(kid).into_iter().flatten()),
            None => Box::new(self.by_kid.values().flatten().chain(&self.without_kid)),
        };
        pool.filter(|key| key.algorithm.is_none_or(|named| named == algorithm))
            .filter(|key| key.key.family() == algorithm.family())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_kid.values().map(Vec::len).sum::<usize>() + self.without_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn verification_key(jwk: &Jwk) -> Option<VerificationKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let algorithm = match jwk.common.key_algorithm {
        Some(algorithm) => Some(Algorithm::try_from(algorithm).ok()?),
        None => None,
    };
    // Symmetric keys never come from a JWKS: a published HMAC key would let anyone sign.
    if matches!(
        jwk.algorithm,
        jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
    ) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerificationKey { algorithm, key })
}

/// The current keys and the machinery that refreshes them.
pub struct JwksCache {
    source: KeySource,
    client: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    loaded: AtomicBool,
    /// Held while fetching, so concurrent unknown-kid refreshes share one fetch; records when
    /// the last fetch started.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_refresh_interval: Duration,
    metrics: ProxyMetrics,
}

impl JwksCache {
    pub fn new(
        source: KeySource,
        min_refresh_interval: Duration,
        metrics: ProxyMetrics,
    ) -> Result<Self, JwksError> {
        let insecure = matches!(
            source,
            KeySource::Url {
                insecure_skip_verify: true,
                ..
            }
        );
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .tls_danger_accept_invalid_certs(insecure)
            .build()
            .map_err(|error| JwksError(format!("building the HTTP client: {error}")))?;
        let cache = Self {
            keys: RwLock::new(Arc::new(KeySet::default())),
            loaded: AtomicBool::new(false),
            last_fetch: tokio::sync::Mutex::new(None),
            source,
            client,
            min_refresh_interval,
            metrics,
        };
        if let KeySource::Static(set) = &cache.source {
            cache.install(KeySet::from_jwks(set));
        }
        Ok(cache)
    }

    /// Returns whether a key set has been loaded at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Returns the current keys.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .map(|keys| keys.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Fetches the key set now. Returns whether the keys changed.
    pub async fn refresh(&self, trigger: &'static str) -> Result<bool, JwksError> {
        let mut last_fetch = self.last_fetch.lock().await;
        *last_fetch = Some(Instant::now());
        self.fetch_and_install(trigger).await
    }

    /// Fetches the key set unless a fetch started less than the minimum interval ago (then the
    /// caller's unknown key stays unknown). Returns whether the keys changed.
    pub async fn refresh_for_unknown_kid(&self) -> Result<bool, JwksError> {
        let before = Instant::now();
        let mut last_fetch = self.last_fetch.lock().await;
        if let Some(at) = *last_fetch {
            // Another request's fetch finished while this one waited: use its result.
            if at >= before || at.elapsed() < self.min_refresh_interval {
                self.metrics
                    .jwks_refreshes
                    .with_label_values(&["unknown_kid", "rate_limited"])
                    .inc();
                return Ok(false);
            }
        }
        *last_fetch = Some(Instant::now());
        self.fetch_and_install("unknown_kid").await
    }

    async fn fetch_and_install(&self, trigger: &'static str) -> Result<bool, JwksError> {
        let result = self.fetch().await;
        let label = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .jwks_refreshes
            .with_label_values(&[trigger, label])
            .inc();
        let keys = KeySet::from_jwks(&result?);
        if keys.is_empty() {
            // An identity provider briefly serving no usable key must not lock everyone out.
            self.metrics
                .jwks_refreshes
                .with_label_values(&[trigger, "empty"])
                .inc();
            return Err(JwksError(
                "the key set holds no usable signing key; keeping the previous keys".to_owned(),
            ));
        }
        Ok(self.install(keys))
    }

    fn install(&self, keys: KeySet) -> bool {
        let mut current = self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = current.fingerprint != keys.fingerprint;
        if changed {
            tracing::info!(keys = keys.len(), "loaded signing keys");
            *current = Arc::new(keys);
        }
        self.loaded.store(true, Ordering::Release);
        changed
    }

    async fn fetch(&self) -> Result<JwkSet, JwksError> {
        let url = match &self.source {
            KeySource::Url { url, .. } => url,
            KeySource::Static(set) => return Ok(set.clone()),
        };
        let mut response = self
            .client
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|error| JwksError(format!("{url}: {}", error_chain(&error.without_url()))))?;
        if !response.status().is_success() {
            return Err(JwksError(format!("{url}: status {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| JwksError(format!("{url}: {}", error_chain(&error.without_url()))))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError(format!(
                    "{url}: larger than {MAX_JWKS_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body).map_err(|reason| JwksError(format!("{url}: {reason}")))
    }
}

/// Parses a JWKS, keeping the keys this proxy understands: one key of an unknown type must not
/// make the whole set unusable.
pub fn parse_jwks(body: &[u8]) -> Result<JwkSet, String> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet =
        serde_json::from_slice(body).map_err(|error| format!("not a JWKS document: {error}"))?;
    let keys = raw
        .keys
        .into_iter()
        .filter_map(|key| serde_json::from_value::<Jwk>(key).ok())
        .collect();
    Ok(JwkSet { keys })
}
