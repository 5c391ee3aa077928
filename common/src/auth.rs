//! The cluster token: generated at `start --head`, carried by every RPC, checked by every
//! server.
//!
//! Invariant: every tonic server in miniray is built with [`TokenCheck`] as its interceptor
//! and every client channel with [`AddToken`]; there is no unauthenticated service. An
//! empty token authenticates nothing: servers refuse to start with one, and a
//! `TokenCheck` built with one refuses every request (it fails closed). How channels and
//! servers are configured (keepalive, TLS) is [`crate::transport`]'s business.

use miniray_proto::TOKEN_METADATA_KEY;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::error::ErrorCode;
use crate::transport::endpoint;

/// A fresh random token (32 hex characters).
pub fn generate_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Client side: adds the token to each outgoing request.
#[derive(Clone)]
pub struct AddToken {
    value: MetadataValue<tonic::metadata::Ascii>,
}

impl AddToken {
    pub fn new(token: &str) -> Result<Self, AuthError> {
        Ok(Self {
            value: token.parse().map_err(|_| AuthError::BadToken)?,
        })
    }
}

impl Interceptor for AddToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut()
            .insert(TOKEN_METADATA_KEY, self.value.clone());
        Ok(req)
    }
}

/// Server side: refuses any request whose token is missing or wrong.
#[derive(Clone)]
pub struct TokenCheck {
    expected: std::sync::Arc<[u8]>,
}

impl TokenCheck {
    /// A check for `token`. With an empty token it refuses every request; servers call
    /// [`TokenCheck::try_new`] first so that they do not start at all.
    pub fn new(token: &str) -> Self {
        Self {
            expected: token.as_bytes().into(),
        }
    }

    /// A check for `token`, or [`AuthError::EmptyToken`].
    pub fn try_new(token: &str) -> Result<Self, AuthError> {
        if token.is_empty() {
            return Err(AuthError::EmptyToken);
        }
        Ok(Self::new(token))
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let presented = req
            .metadata()
            .get(TOKEN_METADATA_KEY)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if token_matches(&self.expected, presented) {
            Ok(req)
        } else {
            Err(ErrorCode::Unauthenticated.status("missing or wrong cluster token"))
        }
    }
}

/// Whether `presented` is the `expected` token, compared in constant time (for its length),
/// so its bytes cannot be guessed one by one. Fails closed: an empty expected token would
/// otherwise admit requests without one. Every server that checks the cluster token (gRPC,
/// the dashboard's HTTP, the Kubernetes simulator's API) decides with this.
pub fn token_matches(expected: &[u8], presented: &[u8]) -> bool {
    !expected.is_empty() && constant_time_eq(presented, expected)
}

/// Whether HTTP `headers` carry the cluster token as `Authorization: Bearer <token>`: how
/// the dashboard, every `/metrics` endpoint and the Kubernetes simulator authenticate.
pub fn bearer_token_matches(headers: &http::HeaderMap, token: &str) -> bool {
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    token_matches(token.as_bytes(), presented.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A client channel that carries the token.
pub type AuthedChannel = InterceptedService<Channel, AddToken>;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the cluster token contains characters not allowed in gRPC metadata")]
    BadToken,
    #[error("invalid address {address:?}: {reason}")]
    BadAddress { address: String, reason: String },
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("the cluster token is empty")]
    EmptyToken,
}

/// Connects at once; fails fast when nothing answers.
pub async fn connect(address: &str, token: &str) -> Result<AuthedChannel, AuthError> {
    let channel = endpoint(address)?
        .connect()
        .await
        .map_err(|e| AuthError::Connect {
            address: address.to_string(),
            reason: error_chain(&e),
        })?;
    Ok(InterceptedService::new(channel, AddToken::new(token)?))
}

/// A channel that connects on first use and reconnects after failures.
pub fn connect_lazy(address: &str, token: &str) -> Result<AuthedChannel, AuthError> {
    let channel = endpoint(address)?.connect_lazy();
    Ok(InterceptedService::new(channel, AddToken::new(token)?))
}

/// "a: b: c" for an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_refuses_missing_and_wrong_tokens() {
        let mut check = TokenCheck::new("secret");
        assert!(check.call(Request::new(())).is_err());
        let mut add = AddToken::new("wrong").unwrap();
        assert!(check.call(add.call(Request::new(())).unwrap()).is_err());
        let mut add = AddToken::new("secret").unwrap();
        assert!(check.call(add.call(Request::new(())).unwrap()).is_ok());
    }

    #[test]
    fn an_empty_token_admits_nothing() {
        assert!(matches!(
            TokenCheck::try_new(""),
            Err(AuthError::EmptyToken)
        ));
        let mut check = TokenCheck::new("");
        let err = check.call(Request::new(())).expect_err("no token");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let mut add = AddToken::new("").unwrap();
        assert!(check.call(add.call(Request::new(())).unwrap()).is_err());
    }
}
