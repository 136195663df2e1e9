//! Conversions between the policy model of `heimdall-opa` and its protobuf form.

use heimdall_opa::{Effect, Policy, PolicyDraft, SubjectKind, Tenant};
use heimdall_proto::events::{self as pb, PolicySpec, TenantSpec};

/// Returns the protobuf form of a validated policy.
pub fn policy_to_spec(policy: &Policy) -> PolicySpec {
    PolicySpec {
        name: policy.name.to_string(),
        effect: match policy.effect {
            Effect::Allow => pb::Effect::Allow,
            Effect::Deny => pb::Effect::Deny,
        } as i32,
        subjects: policy
            .subjects
            .iter()
            .map(|subject| pb::Subject {
                r#type: match subject.kind {
                    SubjectKind::User => pb::SubjectType::User,
                    SubjectKind::Group => pb::SubjectType::Group,
                } as i32,
                id: subject.id.clone(),
            })
            .collect(),
        actions: policy
            .actions
            .iter()
            .map(|action| action.as_str().to_owned())
            .collect(),
        tenants: policy
            .scope
            .tenants
            .iter()
            .map(|scope| scope.as_str().to_owned())
            .collect(),
        resources: policy
            .scope
            .resources
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect(),
        filters: policy.filters.iter().map(ToString::to_string).collect(),
        description: policy.description.clone(),
    }
}

/// Returns the draft a protobuf policy stands for; unknown enum values become strings that
/// validation refuses by name.
pub fn spec_to_draft(spec: &PolicySpec) -> PolicyDraft {
    let effect = match pb::Effect::try_from(spec.effect) {
        Ok(pb::Effect::Allow) => "allow".to_owned(),
        Ok(pb::Effect::Deny) => "deny".to_owned(),
        _ => format!("<effect {}>", spec.effect),
    };
    let subjects = spec
        .subjects
        .iter()
        .map(|subject| {
            let kind = match pb::SubjectType::try_from(subject.r#type) {
                Ok(pb::SubjectType::User) => "user".to_owned(),
                Ok(pb::SubjectType::Group) => "group".to_owned(),
                _ => format!("<type {}>", subject.r#type),
            };
            (kind, subject.id.clone())
        })
        .collect();
    PolicyDraft {
        name: spec.name.clone(),
        effect,
        subjects,
        actions: spec.actions.clone(),
        tenants: spec.tenants.clone(),
        resources: spec.resources.clone(),
        filters: spec.filters.clone(),
        description: spec.description.clone(),
    }
}

/// Returns the protobuf form of a tenant.
pub fn tenant_to_spec(tenant: &Tenant) -> TenantSpec {
    TenantSpec {
        id: tenant.id.to_string(),
        display_name: tenant.display_name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_round_trip_through_protobuf() {
        let text = r#"{"name": "p", "effect": "deny", "subjects": [{"type": "group", "id": "g"},
            {"type": "user", "id": "u"}], "actions": ["read", "rules:write"],
            "scope": {"tenants": ["a", "*"], "resources": ["metrics"]},
            "filters": ["env=~\"a|b\"", "team!=\"x\""], "description": "why"}"#;
        let policy = heimdall_opa::parse_policy_document(text).unwrap().remove(0);
        let spec = policy_to_spec(&policy);
        assert_eq!(spec_to_draft(&spec).validate().unwrap(), policy);
    }

    #[test]
    fn unspecified_enums_are_refused_by_validation() {
        let spec = PolicySpec {
            name: "p".into(),
            ..PolicySpec::default()
        };
        let error = spec_to_draft(&spec).validate().unwrap_err().to_string();
        assert!(error.starts_with("policy p: effect:"), "{error}");
    }
}
