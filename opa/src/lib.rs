//! Everything about policy: tenants and policies with their validation (accepting the original
//! Heimdall's policy JSON), the Rego policy, OPA bundles, and the embedded decision engine.

pub mod bundle;
pub mod engine;
pub mod policy;
pub mod tenant;

pub use policy::{
    Action, Effect, LabelFilter, MatchOperator, Policy, PolicyDraft, PolicyError, PolicyName,
    Resource, Subject, SubjectKind, TenantScope, parse_policy_document,
};
pub use tenant::{Tenant, TenantError, TenantId};
