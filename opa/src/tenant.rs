//! Tenants as Mimir knows them: an id that follows Mimir's rules and a display name.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Mimir's limit on the length of a tenant id.
const MAX_TENANT_ID_LEN: usize = 150;
/// Heimdall's limit on a display name.
const MAX_DISPLAY_NAME_LEN: usize = 256;

/// Why a tenant id or tenant is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("tenant id is empty")]
    EmptyId,
    #[error("tenant id {id:?} is longer than {MAX_TENANT_ID_LEN} characters")]
    IdTooLong { id: String },
    #[error("tenant id {id:?} contains {character:?}: allowed are A-Z a-z 0-9 ! - _ . * ' ( )")]
    InvalidCharacter { id: String, character: char },
    #[error("tenant id {id:?} is reserved")]
    Reserved { id: String },
    #[error("tenant {id}: display name is empty")]
    EmptyDisplayName { id: String },
    #[error("tenant {id}: display name is longer than {MAX_DISPLAY_NAME_LEN} characters")]
    DisplayNameTooLong { id: String },
    #[error("tenant {id}: display name contains a control character")]
    DisplayNameControlCharacter { id: String },
}

/// A tenant id valid for Mimir: 1–150 characters of `[A-Za-z0-9!._*'()-]`, neither `.` nor `..`.
///
/// `*` alone is refused as well: policies use it to mean every registered tenant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    /// Validates `raw` as a tenant id.
    pub fn parse(raw: &str) -> Result<Self, TenantError> {
        if raw.is_empty() {
            return Err(TenantError::EmptyId);
        }
        if raw.chars().count() > MAX_TENANT_ID_LEN {
            return Err(TenantError::IdTooLong { id: raw.to_owned() });
        }
        if let Some(character) = raw.chars().find(|c| !is_tenant_id_char(*c)) {
            return Err(TenantError::InvalidCharacter {
                id: raw.to_owned(),
                character,
            });
        }
        if matches!(raw, "." | ".." | "*" | "__mimir_cluster") {
            return Err(TenantError::Reserved { id: raw.to_owned() });
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

fn is_tenant_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '!' | '-' | '_' | '.' | '*' | '\'' | '(' | ')')
}

/// A registered tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub id: TenantId,
    pub display_name: String,
}

impl Tenant {
    /// Validates a tenant from its raw id and display name.
    pub fn new(id: &str, display_name: &str) -> Result<Self, TenantError> {
        let id = TenantId::parse(id)?;
        let display_name = display_name.trim();
        if display_name.is_empty() {
            return Err(TenantError::EmptyDisplayName { id: id.0 });
        }
        if display_name.chars().count() > MAX_DISPLAY_NAME_LEN {
            return Err(TenantError::DisplayNameTooLong { id: id.0 });
        }
        if display_name.chars().any(char::is_control) {
            return Err(TenantError::DisplayNameControlCharacter { id: id.0 });
        }
        Ok(Self {
            id,
            display_name: display_name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_character_mimir_allows() {
        for id in ["acme", "team-a_b.c", "a!b*c'd(e)f", "A1", &"x".repeat(150)] {
            assert!(TenantId::parse(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn refuses_what_mimir_refuses() {
        assert_eq!(TenantId::parse(""), Err(TenantError::EmptyId));
        assert!(matches!(
            TenantId::parse(&"x".repeat(151)),
            Err(TenantError::IdTooLong { .. })
        ));
        for (id, bad) in [
            ("a|b", '|'),
            ("a b", ' '),
            ("a/b", '/'),
            ("é", 'é'),
            ("a:b", ':'),
        ] {
            assert_eq!(
                TenantId::parse(id),
                Err(TenantError::InvalidCharacter {
                    id: id.into(),
                    character: bad
                })
            );
        }
        for id in [".", "..", "*", "__mimir_cluster"] {
            assert!(
                matches!(TenantId::parse(id), Err(TenantError::Reserved { .. })),
                "{id}"
            );
        }
    }

    #[test]
    fn display_names_are_trimmed_and_checked() {
        assert_eq!(
            Tenant::new("acme", "  Acme Corp ").unwrap().display_name,
            "Acme Corp"
        );
        assert!(matches!(
            Tenant::new("acme", "  "),
            Err(TenantError::EmptyDisplayName { .. })
        ));
        assert!(matches!(
            Tenant::new("acme", "a\nb"),
            Err(TenantError::DisplayNameControlCharacter { .. })
        ));
    }
}
