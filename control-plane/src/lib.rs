//! Heimdall's control plane: the event store of tenant and policy changes, the projection built
//! from it, and the admin gRPC API that writes and reads them.

pub mod api;
pub mod auth;
pub mod bundle;
pub mod clock;
pub mod commands;
pub mod convert;
pub mod error;
pub mod events;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod notify;
pub mod projection;
pub mod server;
pub mod store;

pub use auth::{AdminToken, AdminTokens, generate_token, hash_token};
pub use error::ControlPlaneError;
pub use server::{ControlPlane, ControlPlaneSettings, run};
