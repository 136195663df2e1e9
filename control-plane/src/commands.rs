//! Commands and the decisions they lead to: each command is checked against the current state
//! and becomes the events that carry it out, or an error that writes nothing.

use std::collections::HashSet;

use heimdall_opa::{Policy, PolicyName, Tenant, TenantId};

use crate::error::ControlPlaneError;
use crate::events::{DomainEvent, policy_stream, tenant_stream};
use crate::projection::State;

/// A change requested through the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CreateTenant {
        tenant: Tenant,
        expected_version: Option<u64>,
    },
    DeleteTenant {
        id: TenantId,
        force: bool,
        expected_version: Option<u64>,
    },
    /// Creates or replaces each policy; each carries its own expected version.
    ApplyPolicies {
        policies: Vec<(Policy, Option<u64>)>,
    },
    DeletePolicy {
        name: PolicyName,
        expected_version: Option<u64>,
    },
}

/// What applying a policy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created,
    Replaced,
    Unchanged,
}

/// The events a command leads to, and per policy what applying it did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub events: Vec<DomainEvent>,
    pub applied: Vec<(PolicyName, ApplyOutcome)>,
}

/// Decides what `command` does to `state`.
pub fn decide(state: &State, command: &Command) -> Result<Decision, ControlPlaneError> {
    match command {
        Command::CreateTenant {
            tenant,
            expected_version,
        } => {
            check_version(state, &tenant_stream(&tenant.id), *expected_version)?;
            if state.tenants.contains_key(&tenant.id) {
                let message = format!("tenant {} already exists", tenant.id);
                return Err(ControlPlaneError::AlreadyExists(message));
            }
            Ok(events_only(DomainEvent::TenantCreated(tenant.clone())))
        }
        Command::DeleteTenant {
            id,
            force,
            expected_version,
        } => {
            check_version(state, &tenant_stream(id), *expected_version)?;
            if !state.tenants.contains_key(id) {
                return Err(ControlPlaneError::NotFound(format!(
                    "tenant {id} does not exist"
                )));
            }
            let referencing_policies = state.policies_naming(id);
            if !referencing_policies.is_empty() && !force {
                let names: Vec<&str> = referencing_policies
                    .iter()
                    .map(PolicyName::as_str)
                    .collect();
                return Err(ControlPlaneError::FailedPrecondition(format!(
                    "tenant {id} is named by policies {}; delete or change them, or force",
                    names.join(", ")
                )));
            }
            Ok(events_only(DomainEvent::TenantDeleted {
                id: id.clone(),
                referencing_policies,
            }))
        }
        Command::ApplyPolicies { policies } => decide_apply(state, policies),
        Command::DeletePolicy {
            name,
            expected_version,
        } => {
            check_version(state, &policy_stream(name), *expected_version)?;
            if !state.policies.contains_key(name) {
                return Err(ControlPlaneError::NotFound(format!(
                    "policy {name} does not exist"
                )));
            }
            Ok(events_only(DomainEvent::PolicyDeleted(name.clone())))
        }
    }
}

fn decide_apply(
    state: &State,
    policies: &[(Policy, Option<u64>)],
) -> Result<Decision, ControlPlaneError> {
    if policies.is_empty() {
        return Err(ControlPlaneError::InvalidArgument(
            "no policy to apply".to_owned(),
        ));
    }
    let mut seen = HashSet::new();
    let mut decision = Decision::default();
    for (policy, expected_version) in policies {
        if !seen.insert(&policy.name) {
            let message = format!("policy {} is given twice", policy.name);
            return Err(ControlPlaneError::InvalidArgument(message));
        }
        check_version(state, &policy_stream(&policy.name), *expected_version)?;
        let outcome = match state.policies.get(&policy.name) {
            Some(current) if current.policy == *policy => ApplyOutcome::Unchanged,
            Some(_) => {
                decision
                    .events
                    .push(DomainEvent::PolicyReplaced(policy.clone()));
                ApplyOutcome::Replaced
            }
            None => {
                decision
                    .events
                    .push(DomainEvent::PolicyCreated(policy.clone()));
                ApplyOutcome::Created
            }
        };
        decision.applied.push((policy.name.clone(), outcome));
    }
    Ok(decision)
}

fn events_only(event: DomainEvent) -> Decision {
    Decision {
        events: vec![event],
        applied: Vec::new(),
    }
}

/// Refuses the write if the stream is not at the version the client expects.
fn check_version(
    state: &State,
    stream: &str,
    expected: Option<u64>,
) -> Result<(), ControlPlaneError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let actual = state.stream_version(stream);
    if actual == expected {
        return Ok(());
    }
    Err(ControlPlaneError::Conflict(format!(
        "stream {stream} is at version {actual}, not the expected {expected}"
    )))
}
