//! Heimdall's proxy: a stateless HTTP gateway that authenticates a JWT, decides per tenant with
//! the live policy bundle, and forwards what is allowed to Mimir. Modules follow the request:
//! identity, tenants, decision, upstream, respond; `bundle_sync` keeps the policy current.

pub mod built_from_decisions;
pub mod bundle_sync;
pub mod decision;
pub mod filter_response;
pub mod gateway;
pub mod identity;
pub mod label_policy;
pub mod merge;
pub mod metrics;
pub mod promql;
pub mod remote_write;
pub mod respond;
pub mod rewrite;
pub mod ruler;
pub mod server;
pub mod tenants;
#[cfg(test)]
mod test_support;
pub mod upstream;

pub use bundle_sync::{BundleSource, LatestBundle, Notifications};
pub use gateway::PartialTenants;
pub use identity::dev::DevSigner;
pub use identity::{IdentitySettings, KeySource};
pub use rewrite::TenantBinding;
pub use server::{ProxySettings, ProxySources, RemoteOpaSettings, StartError, run};
pub use upstream::{UpstreamAuth, UpstreamSettings, UpstreamTls};
