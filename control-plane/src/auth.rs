//! Admin authentication: bearer tokens checked against SHA-256 hashes from the configuration.
//! The token's name becomes the actor of every event it writes. Plain tokens are never stored.

use sha2::{Digest, Sha256};

use crate::error::ControlPlaneError;

/// Prefix of generated admin tokens, so that a leaked one is easy to recognise.
const TOKEN_PREFIX: &str = "hmd_";

/// A named admin token, known by its hash only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub name: String,
    pub sha256: [u8; 32],
}

impl AdminToken {
    /// Parses a configured token from its name and hex-encoded SHA-256.
    pub fn from_hex(name: &str, sha256_hex: &str) -> Result<Self, String> {
        if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "token name {name:?} must be non-empty without spaces"
            ));
        }
        let bytes = decode_hex(sha256_hex.trim())
            .ok_or_else(|| format!("token {name}: sha256 must be 64 hex digits"))?;
        let sha256 = bytes
            .try_into()
            .map_err(|_| format!("token {name}: sha256 must be 64 hex digits"))?;
        Ok(Self {
            name: name.to_owned(),
            sha256,
        })
    }
}

/// The admin tokens the API accepts.
#[derive(Debug, Clone, Default)]
pub struct AdminTokens {
    tokens: Vec<AdminToken>,
}

impl AdminTokens {
    pub fn new(tokens: Vec<AdminToken>) -> Self {
        Self { tokens }
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Returns the name of the token in an `authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<String, ControlPlaneError> {
        let header = authorization.ok_or(ControlPlaneError::Unauthenticated)?;
        let (scheme, token) = header
            .split_once(' ')
            .ok_or(ControlPlaneError::Unauthenticated)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(ControlPlaneError::Unauthenticated);
        }
        let presented: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        // Compare every configured hash in full so that timing tells nothing about which matched.
        let mut matched = None;
        for token in &self.tokens {
            if constant_time_eq(&token.sha256, &presented) && matched.is_none() {
                matched = Some(token.name.clone());
            }
        }
        matched.ok_or(ControlPlaneError::Unauthenticated)
    }
}

/// Generates a new admin token: a prefix and 32 random bytes in hex.
pub fn generate_token() -> Result<String, ControlPlaneError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| ControlPlaneError::Internal(format!("no randomness: {error}")))?;
    Ok(format!("{TOKEN_PREFIX}{}", encode_hex(&bytes)))
}

/// Returns the hex SHA-256 of a token, the form the configuration stores.
pub fn hash_token(token: &str) -> String {
    encode_hex(&Sha256::digest(token.as_bytes()))
}

fn constant_time_eq(left: &[u8; 32], right: &[u8; 32]) -> bool {
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(pairs: &[(&str, &str)]) -> AdminTokens {
        AdminTokens::new(
            pairs
                .iter()
                .map(|(name, token)| AdminToken::from_hex(name, &hash_token(token)).unwrap())
                .collect(),
        )
    }

    #[test]
    fn accepts_configured_tokens_and_names_the_actor() {
        let tokens = tokens(&[("ci", "secret-one"), ("ops", "secret-two")]);
        assert_eq!(
            tokens.authenticate(Some("Bearer secret-two")).unwrap(),
            "ops"
        );
        assert_eq!(
            tokens.authenticate(Some("bearer secret-one")).unwrap(),
            "ci"
        );
    }

    #[test]
    fn refuses_missing_malformed_and_wrong_tokens() {
        let tokens = tokens(&[("ci", "secret-one")]);
        for header in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer "),
            Some("Basic secret-one"),
            Some("Bearer secret-two"),
            Some("secret-one"),
        ] {
            assert!(
                matches!(
                    tokens.authenticate(header),
                    Err(ControlPlaneError::Unauthenticated)
                ),
                "{header:?}"
            );
        }
    }

    #[test]
    fn generated_tokens_are_unique_and_hash_to_64_hex_digits() {
        let first = generate_token().unwrap();
        let second = generate_token().unwrap();
        assert_ne!(first, second);
        assert!(first.starts_with(TOKEN_PREFIX));
        assert_eq!(hash_token(&first).len(), 64);
        assert!(AdminToken::from_hex("x", "abc").is_err());
        assert!(AdminToken::from_hex("x", &"zz".repeat(32)).is_err());
    }
}
