//! Heimdall's wire contract: the admin gRPC service, the event payloads and the error codes that
//! the gRPC and HTTP APIs share.

mod error_code;

pub use error_code::ErrorCode;

/// Generated code, nested as the protobuf packages are so that cross-package references resolve.
mod generated {
    pub mod heimdall {
        pub mod admin {
            pub mod v1 {
                tonic::include_proto!("heimdall.admin.v1");
            }
        }
        pub mod events {
            pub mod v1 {
                tonic::include_proto!("heimdall.events.v1");
            }
        }
    }
}

/// Messages and client/server code of the admin API (`heimdall.admin.v1`).
pub use generated::heimdall::admin::v1 as admin;
/// Payloads of the control plane's events (`heimdall.events.v1`).
pub use generated::heimdall::events::v1 as events;
