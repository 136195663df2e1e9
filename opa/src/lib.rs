//! Heimdall's policy model: tenants and policies, their validation, and the policy JSON of the
//! original Heimdall. The Rego policy, bundles and decision engines join this crate later.

pub mod policy;
pub mod tenant;

pub use policy::{
    Action, Effect, LabelFilter, MatchOperator, Policy, PolicyDraft, PolicyError, PolicyName,
    Resource, Subject, SubjectKind, TenantScope, parse_policy_document,
};
pub use tenant::{Tenant, TenantError, TenantId};
