//! The one error-code enum behind both APIs: every error Heimdall reports maps to a gRPC code and
//! an HTTP status through it, so that the admin API and the proxy agree on what a failure means.

use http::StatusCode;
use tonic::Code;

/// What went wrong, independent of the protocol that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed or fails validation.
    InvalidArgument,
    /// No credentials, or credentials that are not valid.
    Unauthenticated,
    /// Valid credentials without the right to do this.
    PermissionDenied,
    /// The named resource does not exist.
    NotFound,
    /// The resource to create exists already.
    AlreadyExists,
    /// A concurrent write changed the resource: an expected version did not match.
    Conflict,
    /// The system is not in the state the operation needs (a tenant still referenced).
    FailedPrecondition,
    /// The request is well formed but cannot be carried out exactly (PromQL not enforceable).
    Unprocessable,
    /// A limit was reached; retry later.
    TooManyRequests,
    /// A dependency is not reachable or not ready.
    Unavailable,
    /// A dependency did not answer in time.
    Timeout,
    /// A bug or an unexpected failure inside Heimdall.
    Internal,
}

impl ErrorCode {
    /// Returns the gRPC status code for this error.
    pub fn grpc_code(self) -> Code {
        match self {
            Self::InvalidArgument | Self::Unprocessable => Code::InvalidArgument,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::NotFound => Code::NotFound,
            Self::AlreadyExists => Code::AlreadyExists,
            Self::Conflict => Code::Aborted,
            Self::FailedPrecondition => Code::FailedPrecondition,
            Self::TooManyRequests => Code::ResourceExhausted,
            Self::Unavailable => Code::Unavailable,
            Self::Timeout => Code::DeadlineExceeded,
            Self::Internal => Code::Internal,
        }
    }

    /// Returns the HTTP status for this error.
    pub fn http_status(self) -> StatusCode {
        match self {
            Self::InvalidArgument => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AlreadyExists | Self::Conflict | Self::FailedPrecondition => StatusCode::CONFLICT,
            Self::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Returns the error code that a gRPC status code stands for.
    pub fn from_grpc_code(code: Code) -> Self {
        match code {
            Code::InvalidArgument | Code::OutOfRange => Self::InvalidArgument,
            Code::Unauthenticated => Self::Unauthenticated,
            Code::PermissionDenied => Self::PermissionDenied,
            Code::NotFound => Self::NotFound,
            Code::AlreadyExists => Self::AlreadyExists,
            Code::Aborted => Self::Conflict,
            Code::FailedPrecondition => Self::FailedPrecondition,
            Code::ResourceExhausted => Self::TooManyRequests,
            Code::Unavailable => Self::Unavailable,
            Code::DeadlineExceeded | Code::Cancelled => Self::Timeout,
            Code::Ok | Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss => {
                Self::Internal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; 12] = [
        ErrorCode::InvalidArgument,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::Conflict,
        ErrorCode::FailedPrecondition,
        ErrorCode::Unprocessable,
        ErrorCode::TooManyRequests,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ];

    #[test]
    fn grpc_codes_round_trip_except_unprocessable() {
        for code in ALL {
            let back = ErrorCode::from_grpc_code(code.grpc_code());
            if code == ErrorCode::Unprocessable {
                assert_eq!(back, ErrorCode::InvalidArgument);
            } else {
                assert_eq!(back, code, "{code:?}");
            }
        }
    }

    #[test]
    fn client_errors_are_4xx_and_server_errors_5xx() {
        for code in ALL {
            let status = code.http_status();
            let server_side = matches!(
                code,
                ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::Internal
            );
            assert_eq!(status.is_server_error(), server_side, "{code:?}");
            assert_eq!(status.is_client_error(), !server_side, "{code:?}");
        }
    }

    #[test]
    fn the_admin_api_codes_follow_the_documented_mapping() {
        assert_eq!(ErrorCode::Conflict.grpc_code(), Code::Aborted);
        assert_eq!(
            ErrorCode::Unauthenticated.grpc_code(),
            Code::Unauthenticated
        );
        assert_eq!(
            ErrorCode::InvalidArgument.grpc_code(),
            Code::InvalidArgument
        );
        assert_eq!(ErrorCode::NotFound.grpc_code(), Code::NotFound);
        assert_eq!(
            ErrorCode::Unprocessable.http_status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
