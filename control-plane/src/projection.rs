//! The projection: tenants and policies as the events up to a revision leave them.
//!
//! Applying an event checks that it fits the state (no tenant created twice, no revision
//! skipped), so a history that does not add up stops the control plane instead of being
//! silently reinterpreted.

use std::collections::{BTreeMap, HashMap};

use heimdall_opa::{Policy, PolicyName, Tenant, TenantId};

use crate::error::ControlPlaneError;
use crate::events::DomainEvent;
use crate::store::StoredEvent;

/// A registered tenant with its stream metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub tenant: Tenant,
    pub version: u64,
    pub created_revision: u64,
}

/// A current policy with its stream metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRecord {
    pub policy: Policy,
    pub version: u64,
    pub updated_revision: u64,
}

/// Tenants and policies at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub revision: u64,
    pub tenants: BTreeMap<TenantId, TenantRecord>,
    pub policies: BTreeMap<PolicyName, PolicyRecord>,
    /// The version of every stream that has events, deleted entities included.
    stream_versions: HashMap<String, u64>,
}

impl State {
    /// Rebuilds the state from events in revision order, starting at revision 1.
    pub fn from_events<'a>(
        events: impl IntoIterator<Item = &'a StoredEvent>,
    ) -> Result<Self, ControlPlaneError> {
        let mut state = Self::default();
        for event in events {
            state.apply(event)?;
        }
        Ok(state)
    }

    /// Returns the current version of a stream, 0 if it has no events.
    pub fn stream_version(&self, stream: &str) -> u64 {
        self.stream_versions.get(stream).copied().unwrap_or(0)
    }

    /// Returns the names of the policies that name `tenant` explicitly.
    pub fn policies_naming(&self, tenant: &TenantId) -> Vec<PolicyName> {
        self.policies
            .values()
            .filter(|record| record.policy.names_tenant(tenant))
            .map(|record| record.policy.name.clone())
            .collect()
    }

    /// Applies one stored event, which must be the next revision.
    pub fn apply(&mut self, stored: &StoredEvent) -> Result<(), ControlPlaneError> {
        let corrupt = |reason: String| ControlPlaneError::CorruptEvent {
            revision: stored.revision,
            reason,
        };
        if stored.revision != self.revision + 1 {
            return Err(corrupt(format!("expected revision {}", self.revision + 1)));
        }
        let event = stored.decode()?;
        if event.stream() != stored.stream {
            return Err(corrupt(format!(
                "stream {} does not match its payload",
                stored.stream
            )));
        }
        let expected_version = self.stream_version(&stored.stream) + 1;
        if stored.stream_version != expected_version {
            return Err(corrupt(format!(
                "stream {} jumps to version {} from {}",
                stored.stream,
                stored.stream_version,
                expected_version - 1
            )));
        }
        self.apply_event(event, stored).map_err(corrupt)?;
        self.stream_versions
            .insert(stored.stream.clone(), stored.stream_version);
        self.revision = stored.revision;
        Ok(())
    }

    fn apply_event(&mut self, event: DomainEvent, stored: &StoredEvent) -> Result<(), String> {
        match event {
            DomainEvent::TenantCreated(tenant) => {
                if self.tenants.contains_key(&tenant.id) {
                    return Err(format!("tenant {} is created twice", tenant.id));
                }
                let record = TenantRecord {
                    tenant: tenant.clone(),
                    version: stored.stream_version,
                    created_revision: stored.revision,
                };
                self.tenants.insert(tenant.id, record);
            }
            DomainEvent::TenantDeleted { id, .. } => {
                if self.tenants.remove(&id).is_none() {
                    return Err(format!("tenant {id} is deleted but does not exist"));
                }
            }
            DomainEvent::PolicyCreated(policy) => {
                if self.policies.contains_key(&policy.name) {
                    return Err(format!("policy {} is created twice", policy.name));
                }
                self.insert_policy(policy, stored);
            }
            DomainEvent::PolicyReplaced(policy) => {
                if !self.policies.contains_key(&policy.name) {
                    return Err(format!(
                        "policy {} is replaced but does not exist",
                        policy.name
                    ));
                }
                self.insert_policy(policy, stored);
            }
            DomainEvent::PolicyDeleted(name) => {
                if self.policies.remove(&name).is_none() {
                    return Err(format!("policy {name} is deleted but does not exist"));
                }
            }
        }
        Ok(())
    }

    fn insert_policy(&mut self, policy: Policy, stored: &StoredEvent) {
        let record = PolicyRecord {
            policy: policy.clone(),
            version: stored.stream_version,
            updated_revision: stored.revision,
        };
        self.policies.insert(policy.name, record);
    }
}
