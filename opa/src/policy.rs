//! Policies: who (subjects) may do what (actions) on which tenants, restricted to which series
//! (filters). A [`PolicyDraft`] holds what a user wrote; [`PolicyDraft::validate`] turns it into a
//! [`Policy`] or an error naming the policy and the field.

mod document;
mod filter;

use std::fmt;

use serde::Serialize;

use crate::tenant::TenantId;

pub use document::parse_policy_document;
pub use filter::{LabelFilter, MatchOperator};

/// Longest policy name accepted.
const MAX_POLICY_NAME_LEN: usize = 128;

/// Why a policy is not valid. Every error names the policy and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {policy}: {field}: {reason}")]
    Invalid {
        policy: String,
        field: String,
        reason: String,
    },
    #[error("policy document: {reason}")]
    Document { reason: String },
}

impl PolicyError {
    fn invalid(policy: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            policy: policy.to_owned(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A policy name: 1–128 characters of `[A-Za-z0-9._:@-]`, unique among policies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PolicyName(String);

impl PolicyName {
    /// Validates `raw` as a policy name; the error is the reason.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if raw.chars().count() > MAX_POLICY_NAME_LEN {
            return Err(format!("is longer than {MAX_POLICY_NAME_LEN} characters"));
        }
        let allowed =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-');
        if let Some(bad) = raw.chars().find(|c| !allowed(*c)) {
            return Err(format!(
                "contains {bad:?}: allowed are A-Z a-z 0-9 . _ : @ -"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a matching policy grants or refuses access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// Whether a subject names a user or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    User,
    Group,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Group => "group",
        }
    }
}

/// A user or a group that a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Subject {
    #[serde(rename = "type")]
    pub kind: SubjectKind,
    pub id: String,
}

/// What a request does to a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Read,
    Write,
    RulesRead,
    RulesWrite,
    AlertsRead,
    /// Every action.
    All,
}

impl Action {
    pub const NAMES: [&'static str; 6] = [
        "read",
        "write",
        "rules:read",
        "rules:write",
        "alerts:read",
        "*",
    ];

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "read" => Self::Read,
            "write" => Self::Write,
            "rules:read" => Self::RulesRead,
            "rules:write" => Self::RulesWrite,
            "alerts:read" => Self::AlertsRead,
            "*" => Self::All,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::RulesRead => "rules:read",
            Self::RulesWrite => "rules:write",
            Self::AlertsRead => "alerts:read",
            Self::All => "*",
        }
    }
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The kind of data a policy covers. Metrics is the only one so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    Metrics,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Metrics => "metrics",
        }
    }
}

/// The tenants a policy covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TenantScope {
    /// `*`: every registered tenant.
    AllRegistered,
    Tenant(TenantId),
}

impl TenantScope {
    pub fn as_str(&self) -> &str {
        match self {
            Self::AllRegistered => "*",
            Self::Tenant(id) => id.as_str(),
        }
    }

    /// Returns the tenant id if the scope names one tenant.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Self::AllRegistered => None,
            Self::Tenant(id) => Some(id),
        }
    }
}

impl Serialize for TenantScope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Where a policy applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scope {
    pub tenants: Vec<TenantScope>,
    pub resources: Vec<Resource>,
}

/// A validated policy. Serializes to the original Heimdall's policy JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub name: PolicyName,
    pub effect: Effect,
    pub subjects: Vec<Subject>,
    pub actions: Vec<Action>,
    pub scope: Scope,
    /// Label matchers, ANDed. Empty on an allow policy: unrestricted.
    pub filters: Vec<LabelFilter>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl Policy {
    /// Returns whether the policy names `tenant` explicitly (not through `*`).
    pub fn names_tenant(&self, tenant: &TenantId) -> bool {
        self.scope
            .tenants
            .iter()
            .any(|scope| scope.tenant() == Some(tenant))
    }

    /// Returns the policy as a draft, the shape it is written and carried in.
    pub fn to_draft(&self) -> PolicyDraft {
        PolicyDraft {
            name: self.name.as_str().to_owned(),
            effect: self.effect.as_str().to_owned(),
            subjects: self
                .subjects
                .iter()
                .map(|subject| (subject.kind.as_str().to_owned(), subject.id.clone()))
                .collect(),
            actions: self
                .actions
                .iter()
                .map(|action| action.as_str().to_owned())
                .collect(),
            tenants: self
                .scope
                .tenants
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect(),
            resources: self
                .scope
                .resources
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            filters: self.filters.iter().map(ToString::to_string).collect(),
            description: self.description.clone(),
        }
    }
}

/// A policy as written, before validation: plain strings, as they come from JSON or protobuf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyDraft {
    pub name: String,
    pub effect: String,
    /// `(type, id)` pairs.
    pub subjects: Vec<(String, String)>,
    pub actions: Vec<String>,
    pub tenants: Vec<String>,
    pub resources: Vec<String>,
    pub filters: Vec<String>,
    pub description: String,
}

impl PolicyDraft {
    /// Validates the draft. Duplicated entries in a list are refused rather than merged, so that
    /// what is stored is what was written.
    pub fn validate(&self) -> Result<Policy, PolicyError> {
        let label = if self.name.is_empty() {
            "<unnamed>"
        } else {
            self.name.as_str()
        };
        let invalid = |field: &str, reason: String| PolicyError::invalid(label, field, reason);

        let name = PolicyName::parse(&self.name).map_err(|reason| invalid("name", reason))?;
        let effect = match self.effect.as_str() {
            "allow" => Effect::Allow,
            "deny" => Effect::Deny,
            other => return Err(invalid("effect", format!("{other:?} is not allow or deny"))),
        };
        let subjects = self.validate_subjects(label)?;
        let actions = validate_list(label, "actions", &self.actions, |raw| {
            Action::parse(raw)
                .ok_or_else(|| format!("{raw:?} is not one of {}", Action::NAMES.join(", ")))
        })?;
        let tenants = validate_list(label, "scope.tenants", &self.tenants, |raw| {
            if raw == "*" {
                return Ok(TenantScope::AllRegistered);
            }
            TenantId::parse(raw)
                .map(TenantScope::Tenant)
                .map_err(|error| error.to_string())
        })?;
        let resources =
            validate_list(label, "scope.resources", &self.resources, |raw| match raw {
                "metrics" => Ok(Resource::Metrics),
                other => Err(format!("{other:?} is not a resource (metrics)")),
            })?;
        let filters = self.validate_filters(label)?;
        if self
            .description
            .chars()
            .any(|c| c.is_control() && c != '\n')
        {
            return Err(invalid(
                "description",
                "contains a control character".to_owned(),
            ));
        }
        Ok(Policy {
            name,
            effect,
            subjects,
            actions,
            scope: Scope { tenants, resources },
            filters,
            description: self.description.clone(),
        })
    }

    fn validate_subjects(&self, label: &str) -> Result<Vec<Subject>, PolicyError> {
        if self.subjects.is_empty() {
            return Err(PolicyError::invalid(label, "subjects", "must not be empty"));
        }
        let mut subjects: Vec<Subject> = Vec::with_capacity(self.subjects.len());
        for (index, (kind, id)) in self.subjects.iter().enumerate() {
            let field = format!("subjects[{index}]");
            let kind = match kind.as_str() {
                "user" => SubjectKind::User,
                "group" => SubjectKind::Group,
                other => {
                    let reason = format!("type {other:?} is not user or group");
                    return Err(PolicyError::invalid(label, field, reason));
                }
            };
            if id.trim().is_empty() {
                return Err(PolicyError::invalid(label, field, "id must not be empty"));
            }
            if id.chars().any(char::is_control) {
                return Err(PolicyError::invalid(
                    label,
                    field,
                    "id contains a control character",
                ));
            }
            let subject = Subject {
                kind,
                id: id.clone(),
            };
            if subjects.contains(&subject) {
                return Err(PolicyError::invalid(
                    label,
                    field,
                    format!("{id:?} is listed twice"),
                ));
            }
            subjects.push(subject);
        }
        Ok(subjects)
    }

    fn validate_filters(&self, label: &str) -> Result<Vec<LabelFilter>, PolicyError> {
        let mut filters: Vec<LabelFilter> = Vec::with_capacity(self.filters.len());
        for (index, raw) in self.filters.iter().enumerate() {
            let field = format!("filters[{index}]");
            let filter = LabelFilter::parse(raw)
                .map_err(|reason| PolicyError::invalid(label, &field, reason))?;
            if filters.contains(&filter) {
                let reason = format!("{raw:?} is listed twice");
                return Err(PolicyError::invalid(label, field, reason));
            }
            filters.push(filter);
        }
        Ok(filters)
    }
}

/// Validates a non-empty list without duplicates, naming the first bad entry by its index.
fn validate_list<T: PartialEq>(
    policy: &str,
    field: &str,
    raw: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, PolicyError> {
    if raw.is_empty() {
        return Err(PolicyError::invalid(policy, field, "must not be empty"));
    }
    let mut parsed = Vec::with_capacity(raw.len());
    for (index, entry) in raw.iter().enumerate() {
        let entry_field = format!("{field}[{index}]");
        let value =
            parse(entry).map_err(|reason| PolicyError::invalid(policy, &entry_field, reason))?;
        if parsed.contains(&value) {
            let reason = format!("{entry:?} is listed twice");
            return Err(PolicyError::invalid(policy, entry_field, reason));
        }
        parsed.push(value);
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests;
