//! The small set of error codes every service error maps onto.
//!
//! Each crate keeps its own `thiserror` enum; at an RPC boundary the error becomes a
//! `tonic::Status` whose code and `x-miniray-error` metadata carry an [`ErrorCode`], and the
//! receiving side turns it back into its own enum with [`ErrorCode::of_status`].

use tonic::{Code, Status};

const ERROR_CODE_KEY: &str = "x-miniray-error";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request was malformed (bad id, bad resource shape, bad value).
    InvalidArgument,
    /// The thing asked for does not exist.
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// The object store cannot make room.
    ObjectStoreFull,
    /// The caller lacks the cluster token.
    Unauthenticated,
    /// The peer did not answer in time or is gone.
    Unavailable,
    /// The request exceeds a configured limit.
    ResourceExhausted,
    /// Anything else: a bug.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::ObjectStoreFull => "object_store_full",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::Internal => "internal",
        }
    }

    fn grpc_code(self) -> Code {
        match self {
            ErrorCode::InvalidArgument => Code::InvalidArgument,
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::AlreadyExists => Code::AlreadyExists,
            ErrorCode::ObjectStoreFull => Code::ResourceExhausted,
            ErrorCode::Unauthenticated => Code::Unauthenticated,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::ResourceExhausted => Code::ResourceExhausted,
            ErrorCode::Internal => Code::Internal,
        }
    }

    /// A `Status` carrying this code and message.
    pub fn status(self, message: impl Into<String>) -> Status {
        let mut status = Status::new(self.grpc_code(), message);
        if let Ok(v) = self.as_str().parse() {
            status.metadata_mut().insert(ERROR_CODE_KEY, v);
        }
        status
    }

    /// The code named `name` ([`as_str`](Self::as_str)), if any.
    pub fn parse(name: &str) -> Option<ErrorCode> {
        ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Recovers the code of a `Status`, from its metadata when a miniray server made it,
    /// else from the gRPC code (transport failures, other servers).
    pub fn of_status(status: &Status) -> ErrorCode {
        if let Some(code) = status
            .metadata()
            .get(ERROR_CODE_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(ErrorCode::parse)
        {
            return code;
        }
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => ErrorCode::InvalidArgument,
            Code::NotFound => ErrorCode::NotFound,
            Code::AlreadyExists => ErrorCode::AlreadyExists,
            Code::Unauthenticated | Code::PermissionDenied => ErrorCode::Unauthenticated,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ErrorCode::Unavailable,
            Code::ResourceExhausted => ErrorCode::ResourceExhausted,
            _ => ErrorCode::Internal,
        }
    }
}

const ALL: [ErrorCode; 8] = [
    ErrorCode::InvalidArgument,
    ErrorCode::NotFound,
    ErrorCode::AlreadyExists,
    ErrorCode::ObjectStoreFull,
    ErrorCode::Unauthenticated,
    ErrorCode::Unavailable,
    ErrorCode::ResourceExhausted,
    ErrorCode::Internal,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_survive_a_status_round_trip() {
        for c in ALL {
            assert_eq!(ErrorCode::of_status(&c.status("x")), c);
        }
        assert_eq!(
            ErrorCode::of_status(&Status::unavailable("down")),
            ErrorCode::Unavailable
        );
    }
}
