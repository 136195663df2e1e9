//! Who is asking: an `Authorization: Bearer` JWT verified against the identity provider's keys,
//! turned into a user and groups read from configurable (possibly nested) claims.

pub mod dev;
pub mod jwks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::metrics::ProxyMetrics;
use crate::respond::ProxyError;

pub use jwks::{JwksCache, KeySource};

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// How tokens are verified and read. Built from the `jwt` config section.
#[derive(Clone)]
pub struct IdentitySettings {
    pub keys: KeySource,
    /// Accepted `iss` values; empty: the issuer is not checked.
    pub issuers: Vec<String>,
    /// Accepted `aud` values (a token must name one); empty: the audience is not checked.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms. `none` does not exist here; HS* need `hmac_secret`.
    pub algorithms: Vec<Algorithm>,
    /// The shared secret for HS256/384/512, only when configured.
    pub hmac_secret: Option<Vec<u8>>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// The claim holding the user name, as a dotted path (`sub`, `preferred_username`).
    pub user_claim: String,
    /// The claim holding the groups: a list, or a comma-separated string (`realm_access.roles`).
    pub groups_claim: String,
    /// How often the JWKS is fetched again.
    pub refresh_interval: Duration,
    /// The shortest time between two fetches caused by unknown key ids.
    pub min_refresh_interval: Duration,
    /// How many verified tokens are remembered until they expire.
    pub token_cache_size: usize,
    /// Also takes the token from the password of `Authorization: Basic`, for clients that can
    /// only send basic credentials (promtool before 2.43, URL userinfo). The user name is
    /// ignored: the token alone says who is asking.
    pub accept_basic_auth: bool,
}

/// Never prints the HMAC secret.
impl std::fmt::Debug for IdentitySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySettings")
            .field("keys", &self.keys)
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("algorithms", &self.algorithms)
            .field(
                "hmac_secret",
                &self.hmac_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("leeway", &self.leeway)
            .field("user_claim", &self.user_claim)
            .field("groups_claim", &self.groups_claim)
            .finish_non_exhaustive()
    }
}

/// The verified subject of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// Sorted and without duplicates, so that equal subjects share cache entries.
    pub groups: Vec<String>,
    /// The token's `exp`, in Unix seconds.
    pub expires_at: u64,
}

struct CachedToken {
    identity: Arc<Identity>,
    expires_at: u64,
}

/// Verifies bearer tokens.
pub struct JwtVerifier {
    settings: IdentitySettings,
    keys: Arc<JwksCache>,
    verified: Mutex<HashMap<[u8; 32], CachedToken>>,
    /// Bumped whenever the key set changes, so that a verification that started with the old
    /// keys does not cache its token after the cache was cleared.
    key_generation: AtomicU64,
    metrics: ProxyMetrics,
}

impl JwtVerifier {
    pub fn new(settings: IdentitySettings, keys: Arc<JwksCache>, metrics: ProxyMetrics) -> Self {
        Self {
            settings,
            keys,
            verified: Mutex::new(HashMap::new()),
            key_generation: AtomicU64::new(0),
            metrics,
        }
    }

    /// Returns the key cache, for readiness and the refresh loop.
    pub fn keys(&self) -> &Arc<JwksCache> {
        &self.keys
    }

    /// Forgets every verified token, after the key set changed.
    pub fn forget_verified_tokens(&self) {
        let mut verified = self.lock_verified();
        self.key_generation.fetch_add(1, Ordering::AcqRel);
        verified.clear();
    }

    /// Verifies the value of an `Authorization` header.
    pub async fn verify_header(
        &self,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<Arc<Identity>, ProxyError> {
        let result = match presented_token(authorization, self.settings.accept_basic_auth) {
            Ok(token) => self.verify(&token).await,
            Err(rejection) => Err(rejection),
        };
        result.map_err(|rejection| {
            self.metrics
                .token_rejections
                .with_label_values(&[rejection.reason])
                .inc();
            tracing::debug!(reason = rejection.reason, "token refused");
            ProxyError::unauthorized(rejection.message)
        })
    }

    /// Verifies a token and reads its subject.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, Rejection> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix_now();
        if let Some(cached) = self.lock_verified().get(&digest)
            && cached.expires_at > now
        {
            self.metrics.token_cache_hits.inc();
            return Ok(cached.identity.clone());
        }
        self.metrics.token_cache_misses.inc();
        let generation = self.key_generation.load(Ordering::Acquire);
        let identity = Arc::new(self.verify_uncached(token).await?);
        self.remember(digest, identity.clone(), now, generation);
        Ok(identity)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Identity, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::new(
                "malformed",
                format!("token is longer than {MAX_TOKEN_BYTES} bytes"),
            ));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|error| {
                match declared_algorithm(token) {
                    Some(algorithm) => Rejection::new(
                        "algorithm",
                        format!("token algorithm {algorithm:?} is not accepted"),
                    ),
                    None => Rejection::new("malformed", format!("token is malformed: {error}")),
                }
            })?;
        let algorithm = header.alg;
        if !self.settings.algorithms.contains(&algorithm) {
            return Err(Rejection::new(
                "algorithm",
                format!("token algorithm {algorithm:?} is not allowed"),
            ));
        }
        let claims = self
            .verify_signature(token, algorithm, header.kid.as_deref())
            .await?;
        self.read_identity(&claims)
    }

    async fn verify_signature(
        &self,
        token: &str,
        algorithm: Algorithm,
        kid: Option<&str>,
    ) -> Result<Value, Rejection> {
        let validation = self.validation(algorithm);
        if algorithm.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            let Some(secret) = &self.settings.hmac_secret else {
                return Err(Rejection::new(
                    "algorithm",
                    format!("token algorithm {algorithm:?} needs a configured secret"),
                ));
            };
            let key = DecodingKey::from_secret(secret).map_err(|error| {
                Rejection::new("key", format!("configured HMAC secret: {error}"))
            })?;
            return decode(token, &key, &validation);
        }
        let mut keys = self.keys.keys();
        if keys.candidates(kid, algorithm).is_empty() {
            // A key id we have not seen may be a rotation: fetch again, rate limited.
            match self.keys.refresh_for_unknown_kid().await {
                Ok(true) => self.forget_verified_tokens(),
                Ok(false) => {}
                Err(error) => tracing::warn!(error = %error, "refreshing signing keys failed"),
            }
            keys = self.keys.keys();
        }
        let candidates = keys.candidates(kid, algorithm);
        let key = match (candidates.as_slice(), kid) {
            ([key], _) | ([key, ..], Some(_)) => key,
            ([], Some(kid)) => {
                return Err(Rejection::new(
                    "unknown_kid",
                    format!("token key id {kid:?} is not in the identity provider's key set"),
                ));
            }
            ([], None) => {
                return Err(Rejection::new(
                    "unknown_kid",
                    format!("no {algorithm:?} key in the identity provider's key set"),
                ));
            }
            (_, None) => {
                return Err(Rejection::new(
                    "unknown_kid",
                    "token names no key id and several keys could have signed it".to_owned(),
                ));
            }
        };
        decode(token, &key.key, &validation)
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if self.settings.issuers.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&self.settings.issuers);
            required.push("iss");
        }
        if self.settings.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.settings.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    fn read_identity(&self, claims: &Value) -> Result<Identity, Rejection> {
        let user_claim = &self.settings.user_claim;
        let user = match claim_at(claims, user_claim) {
            Some(Value::String(user)) if !user.trim().is_empty() => user.clone(),
            Some(Value::Number(number)) => number.to_string(),
            _ => {
                return Err(Rejection::new(
                    "claims",
                    format!("token has no user claim {user_claim:?}"),
                ));
            }
        };
        let groups_claim = &self.settings.groups_claim;
        let mut groups = match claim_at(claims, groups_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(list)) => list
                .split(',')
                .map(str::trim)
                .filter(|group| !group.is_empty())
                .map(str::to_owned)
                .collect(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(group) => Ok(group.clone()),
                    _ => Err(Rejection::new(
                        "claims",
                        format!("groups claim {groups_claim:?} holds a value that is not a string"),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(Rejection::new(
                    "claims",
                    format!("groups claim {groups_claim:?} is neither a list nor a string"),
                ));
            }
        };
        groups.sort_unstable();
        groups.dedup();
        let expires_at = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Ok(Identity {
            user,
            groups,
            expires_at,
        })
    }

    fn remember(&self, digest: [u8; 32], identity: Arc<Identity>, now: u64, generation: u64) {
        let capacity = self.settings.token_cache_size;
        if capacity == 0 {
            return;
        }
        let mut verified = self.lock_verified();
        if self.key_generation.load(Ordering::Acquire) != generation {
            return;
        }
        if verified.len() >= capacity {
            verified.retain(|_, cached| cached.expires_at > now);
        }
        if verified.len() >= capacity {
            // Still full of live tokens: start over rather than track recency on every hit.
            verified.clear();
        }
        let expires_at = identity.expires_at;
        verified.insert(
            digest,
            CachedToken {
                identity,
                expires_at,
            },
        );
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], CachedToken>> {
        self.verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Why a token was refused: a metric label and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

impl Rejection {
    fn new(reason: &'static str, message: String) -> Self {
        Self { reason, message }
    }
}

/// Reads the token from `Authorization: Bearer <token>`, or from the password of
/// `Authorization: Basic` when `accept_basic` is on.
fn presented_token(
    authorization: Option<&http::HeaderValue>,
    accept_basic: bool,
) -> Result<String, Rejection> {
    let Some(value) = authorization else {
        return Err(Rejection::new(
            "missing",
            "missing Authorization: Bearer token".to_owned(),
        ));
    };
    let value = value.to_str().map_err(|_| {
        Rejection::new(
            "malformed",
            "Authorization header is not printable ASCII".to_owned(),
        )
    })?;
    let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty() {
        return Ok(credentials.to_owned());
    }
    if accept_basic && scheme.eq_ignore_ascii_case("basic") {
        return basic_password(credentials);
    }
    let expected = if accept_basic {
        "a Bearer token or Basic credentials"
    } else {
        "a Bearer token"
    };
    Err(Rejection::new(
        "malformed",
        format!("Authorization header is not {expected}"),
    ))
}

/// The password of Basic credentials (`base64(user:password)`), which must be a token.
fn basic_password(credentials: &str) -> Result<String, Rejection> {
    use base64::Engine as _;
    let malformed = || {
        Rejection::new(
            "malformed",
            "Authorization: Basic credentials are not base64 of user:token".to_owned(),
        )
    };
    if credentials.len() > MAX_TOKEN_BYTES * 2 {
        return Err(malformed());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials)
        .map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (_user, password) = decoded.split_once(':').ok_or_else(malformed)?;
    if password.trim().is_empty() {
        return Err(malformed());
    }
    Ok(password.trim().to_owned())
}

fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Value, Rejection> {
    jsonwebtoken::decode::<Value>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|error| {
            let (reason, message) = match error.kind() {
                ErrorKind::ExpiredSignature => ("expired", "token has expired".to_owned()),
                ErrorKind::ImmatureSignature => {
                    ("not_yet_valid", "token is not valid yet (nbf)".to_owned())
                }
                ErrorKind::InvalidIssuer => ("issuer", "token issuer is not accepted".to_owned()),
                ErrorKind::InvalidAudience => {
                    ("audience", "token audience is not accepted".to_owned())
                }
                ErrorKind::InvalidSignature => ("signature", "token signature is invalid".into()),
                ErrorKind::MissingRequiredClaim(claim) => {
                    ("claims", format!("token has no {claim:?} claim"))
                }
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => (
                    "algorithm",
                    "token algorithm does not match the signing key".to_owned(),
                ),
                _ => ("malformed", format!("token is malformed: {error}")),
            };
            Rejection::new(reason, message)
        })
}

/// Returns the `alg` a token's header declares, for a header jsonwebtoken cannot represent (such
/// as `none`).
fn declared_algorithm(token: &str) -> Option<String> {
    use base64::Engine as _;
    let encoded = token.split('.').next()?;
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .ok()?;
    let header: Value = serde_json::from_slice(&decoded).ok()?;
    header.get("alg")?.as_str().map(str::to_owned)
}

/// Returns the claim at `path`: the whole name first (claims such as
/// `https://example.com/groups` contain dots), then a dotted path through nested objects.
fn claim_at<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    path.split('.')
        .try_fold(claims, |node, segment| node.get(segment))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests;
