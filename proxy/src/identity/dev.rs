//! The development identity provider of `serve --target=all --dev`: one Ed25519 key kept in the
//! data folder, whose public half the proxy trusts and whose private half `heimdall token` signs
//! with. Never for production: whoever can read the key file can be anyone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};

/// The issuer of development tokens.
pub const DEV_ISSUER: &str = "heimdall-dev";
/// The audience of development tokens.
pub const DEV_AUDIENCE: &str = "heimdall";
/// The key file's name inside the data folder.
pub const DEV_KEY_FILE: &str = "dev-signing-key.der";

/// Why the development key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DevKeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an Ed25519 PKCS#8 key")]
    Invalid { path: PathBuf },
    #[error("generating the development key failed")]
    Generate,
    #[error("signing a token: {0}")]
    Sign(String),
}

/// The development signing key.
pub struct DevSigner {
    encoding_key: EncodingKey,
    key_id: String,
    jwks: JwkSet,
}

impl DevSigner {
    /// Loads the key from `data_dir`, creating it (readable by its owner only) if missing.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, DevKeyError> {
        let path = data_dir.join(DEV_KEY_FILE);
        match std::fs::read(&path) {
            Ok(der) => Self::from_pkcs8(&der, &path),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let der = generate_pkcs8()?;
                write_private(&path, &der)?;
                tracing::info!(path = %path.display(), "generated development signing key");
                Self::from_pkcs8(&der, &path)
            }
            Err(source) => Err(DevKeyError::Io { path, source }),
        }
    }

    /// Loads an existing key from `data_dir`.
    pub fn load(data_dir: &Path) -> Result<Self, DevKeyError> {
        let path = data_dir.join(DEV_KEY_FILE);
        let der = std::fs::read(&path).map_err(|source| DevKeyError::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_pkcs8(&der, &path)
    }

    fn from_pkcs8(der: &[u8], path: &Path) -> Result<Self, DevKeyError> {
        let invalid = || DevKeyError::Invalid {
            path: path.to_owned(),
        };
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|_| invalid())?;
        let v1 = pair.to_pkcs8v1().map_err(|_| invalid())?;
        let encoding_key = EncodingKey::from_ed_der(v1.as_ref());
        let key_id = hex(&Sha256::digest(pair.public_key().as_ref())[..8]);
        let mut jwk =
            Jwk::from_encoding_key(&encoding_key, Algorithm::EdDSA).map_err(|_| invalid())?;
        jwk.common.key_id = Some(key_id.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        Ok(Self {
            encoding_key,
            key_id,
            jwks: JwkSet { keys: vec![jwk] },
        })
    }

    /// Returns the public key set that verifies this signer's tokens.
    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    /// Mints a token for `user` in `groups`, valid for `ttl`.
    pub fn mint(
        &self,
        user: &str,
        groups: &[String],
        ttl: Duration,
    ) -> Result<String, DevKeyError> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({
            "iss": DEV_ISSUER,
            "aud": DEV_AUDIENCE,
            "sub": user,
            "groups": groups,
            "iat": now,
            "nbf": now,
            "exp": now + ttl.as_secs(),
        });
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding_key)
            .map_err(|error| DevKeyError::Sign(error.to_string()))
    }
}

fn generate_pkcs8() -> Result<Vec<u8>, DevKeyError> {
    let document =
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| DevKeyError::Generate)?;
    Ok(document.as_ref().to_vec())
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), DevKeyError> {
    let io = |source| DevKeyError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).map_err(io)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
