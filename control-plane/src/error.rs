//! The control plane's error type and its mapping onto the shared error codes.

use heimdall_proto::ErrorCode;

/// Everything that can go wrong in the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("missing or invalid admin token")]
    Unauthenticated,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    #[error("event at revision {revision} cannot be read: {reason}")]
    CorruptEvent { revision: u64, reason: String },
    #[error("bundle storage: {0}")]
    Storage(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Internal(String),
}

impl ControlPlaneError {
    /// Returns the shared error code this error is reported with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::Unauthenticated => ErrorCode::Unauthenticated,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Self::Database(error) if is_unavailable(error) => ErrorCode::Unavailable,
            Self::Storage(_) => ErrorCode::Unavailable,
            Self::Database(_) | Self::CorruptEvent { .. } | Self::Config(_) | Self::Internal(_) => {
                ErrorCode::Internal
            }
        }
    }
}

fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    )
}

impl From<ControlPlaneError> for tonic::Status {
    fn from(error: ControlPlaneError) -> Self {
        let code = error.code().grpc_code();
        // Database details can name hosts and users: callers get a short message, logs the rest.
        let message = match &error {
            ControlPlaneError::Database(_) => "database error".to_owned(),
            other => other.to_string(),
        };
        tonic::Status::new(code, message)
    }
}
