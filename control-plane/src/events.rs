//! The control plane's events: what each one means, the stream it belongs to, and its protobuf
//! encoding. Decoding is strict: an unknown type, a newer schema or a payload that no longer
//! validates is an error, never a skipped row.

use heimdall_opa::{Policy, PolicyName, Tenant, TenantId};
use heimdall_proto::events::{self as pb, event_payload::Kind};
use prost::Message;

use crate::convert::{policy_to_spec, spec_to_draft, tenant_to_spec};
use crate::error::ControlPlaneError;
use crate::store::StoredEvent;

/// The payload schema version this build writes and the newest it reads.
pub const SCHEMA_VERSION: u32 = 1;

/// One change to tenants or policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainEvent {
    TenantCreated(Tenant),
    TenantDeleted {
        id: TenantId,
        referencing_policies: Vec<PolicyName>,
    },
    PolicyCreated(Policy),
    PolicyReplaced(Policy),
    PolicyDeleted(PolicyName),
}

impl DomainEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::TenantCreated(_) => "tenant.created",
            Self::TenantDeleted { .. } => "tenant.deleted",
            Self::PolicyCreated(_) => "policy.created",
            Self::PolicyReplaced(_) => "policy.replaced",
            Self::PolicyDeleted(_) => "policy.deleted",
        }
    }

    /// Returns the stream the event belongs to: `tenant/<id>` or `policy/<name>`.
    pub fn stream(&self) -> String {
        match self {
            Self::TenantCreated(tenant) => tenant_stream(&tenant.id),
            Self::TenantDeleted { id, .. } => tenant_stream(id),
            Self::PolicyCreated(policy) | Self::PolicyReplaced(policy) => {
                policy_stream(&policy.name)
            }
            Self::PolicyDeleted(name) => policy_stream(name),
        }
    }

    /// Returns the payload as carried in the admin API.
    pub fn to_payload(&self) -> pb::EventPayload {
        let kind = match self {
            Self::TenantCreated(tenant) => Kind::TenantCreated(pb::TenantCreated {
                tenant: Some(tenant_to_spec(tenant)),
            }),
            Self::TenantDeleted {
                id,
                referencing_policies,
            } => Kind::TenantDeleted(pb::TenantDeleted {
                id: id.to_string(),
                referencing_policies: referencing_policies
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            }),
            Self::PolicyCreated(policy) => Kind::PolicyCreated(pb::PolicyCreated {
                policy: Some(policy_to_spec(policy)),
            }),
            Self::PolicyReplaced(policy) => Kind::PolicyReplaced(pb::PolicyReplaced {
                policy: Some(policy_to_spec(policy)),
            }),
            Self::PolicyDeleted(name) => Kind::PolicyDeleted(pb::PolicyDeleted {
                name: name.to_string(),
            }),
        };
        pb::EventPayload { kind: Some(kind) }
    }

    /// Encodes the event's own message (not the `EventPayload` wrapper) as stored.
    pub fn encode(&self) -> Vec<u8> {
        match self
            .to_payload()
            .kind
            .expect("to_payload always sets a kind")
        {
            Kind::TenantCreated(message) => message.encode_to_vec(),
            Kind::TenantDeleted(message) => message.encode_to_vec(),
            Kind::PolicyCreated(message) => message.encode_to_vec(),
            Kind::PolicyReplaced(message) => message.encode_to_vec(),
            Kind::PolicyDeleted(message) => message.encode_to_vec(),
        }
    }

    /// Decodes a stored event; the error says what is wrong with it.
    pub fn decode(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<Self, String> {
        if schema_version > SCHEMA_VERSION {
            return Err(format!(
                "schema version {schema_version} is newer than this heimdall reads ({SCHEMA_VERSION})"
            ));
        }
        let malformed = |error: prost::DecodeError| format!("{event_type} payload: {error}");
        match event_type {
            "tenant.created" => {
                let message = pb::TenantCreated::decode(payload).map_err(malformed)?;
                let spec = message.tenant.unwrap_or_default();
                Tenant::new(&spec.id, &spec.display_name)
                    .map(Self::TenantCreated)
                    .map_err(|error| error.to_string())
            }
            "tenant.deleted" => {
                let message = pb::TenantDeleted::decode(payload).map_err(malformed)?;
                let id = TenantId::parse(&message.id).map_err(|error| error.to_string())?;
                let referencing_policies = message
                    .referencing_policies
                    .iter()
                    .map(|name| PolicyName::parse(name))
                    .collect::<Result<_, _>>()?;
                Ok(Self::TenantDeleted {
                    id,
                    referencing_policies,
                })
            }
            "policy.created" => {
                let message = pb::PolicyCreated::decode(payload).map_err(malformed)?;
                decode_policy(message.policy).map(Self::PolicyCreated)
            }
            "policy.replaced" => {
                let message = pb::PolicyReplaced::decode(payload).map_err(malformed)?;
                decode_policy(message.policy).map(Self::PolicyReplaced)
            }
            "policy.deleted" => {
                let message = pb::PolicyDeleted::decode(payload).map_err(malformed)?;
                PolicyName::parse(&message.name)
                    .map(Self::PolicyDeleted)
                    .map_err(|reason| format!("policy name {reason}"))
            }
            other => Err(format!("unknown event type {other:?}")),
        }
    }
}

impl StoredEvent {
    /// Decodes the stored payload; a payload that cannot be read is a corrupt event.
    pub fn decode(&self) -> Result<DomainEvent, ControlPlaneError> {
        DomainEvent::decode(&self.event_type, self.schema_version, &self.payload).map_err(
            |reason| ControlPlaneError::CorruptEvent {
                revision: self.revision,
                reason,
            },
        )
    }
}

fn decode_policy(spec: Option<pb::PolicySpec>) -> Result<Policy, String> {
    let spec = spec.ok_or_else(|| "policy payload without a policy".to_owned())?;
    spec_to_draft(&spec)
        .validate()
        .map_err(|error| error.to_string())
}

pub fn tenant_stream(id: &TenantId) -> String {
    format!("tenant/{id}")
}

pub fn policy_stream(name: &PolicyName) -> String {
    format!("policy/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_events() -> Vec<DomainEvent> {
        let tenant = Tenant::new("acme", "Acme Corp").unwrap();
        let policy = heimdall_opa::parse_policy_document(
            r#"{"name": "p", "effect": "allow", "subjects": [{"type": "user", "id": "u"}],
                "actions": ["read"], "scope": {"tenants": ["acme"]}, "filters": ["env=\"prod\""]}"#,
        )
        .unwrap()
        .remove(0);
        vec![
            DomainEvent::TenantCreated(tenant.clone()),
            DomainEvent::TenantDeleted {
                id: tenant.id.clone(),
                referencing_policies: vec![policy.name.clone()],
            },
            DomainEvent::PolicyCreated(policy.clone()),
            DomainEvent::PolicyReplaced(policy.clone()),
            DomainEvent::PolicyDeleted(policy.name.clone()),
        ]
    }

    #[test]
    fn every_event_round_trips() {
        for event in sample_events() {
            let decoded = DomainEvent::decode(event.event_type(), SCHEMA_VERSION, &event.encode());
            assert_eq!(decoded.as_ref(), Ok(&event));
        }
    }

    #[test]
    fn unknown_newer_and_corrupt_events_are_errors() {
        let event = &sample_events()[0];
        let newer = DomainEvent::decode(event.event_type(), SCHEMA_VERSION + 1, &event.encode());
        assert!(
            newer
                .unwrap_err()
                .contains("newer than this heimdall reads")
        );
        let unknown = DomainEvent::decode("tenant.renamed", SCHEMA_VERSION, &event.encode());
        assert!(unknown.unwrap_err().contains("unknown event type"));
        let corrupt = DomainEvent::decode("tenant.created", SCHEMA_VERSION, &[0xff, 0xff, 0xff]);
        assert!(corrupt.unwrap_err().starts_with("tenant.created payload"));
        let invalid = pb::TenantCreated {
            tenant: Some(pb::TenantSpec {
                id: "a|b".into(),
                display_name: "x".into(),
            }),
        };
        let invalid =
            DomainEvent::decode("tenant.created", SCHEMA_VERSION, &invalid.encode_to_vec());
        assert!(invalid.unwrap_err().contains("a|b"));
    }
}
