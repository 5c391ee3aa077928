//! The executable-wide table of remote functions, filled by `#[miniray::remote]`.
//!
//! Invariant: a driver and its workers run the same executable, so a name registered in one
//! is registered in all; a name unknown to a worker is reported as `UnknownFunction`.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;

/// Why a registered function could not run to completion (a panic is caught separately).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvokeError {
    #[error("expected {expected} argument(s), got {got}")]
    Arity { expected: usize, got: usize },
    #[error("argument {index} does not decode: {reason}")]
    Argument { index: usize, reason: String },
    #[error("the return value does not encode: {reason}")]
    Return { reason: String },
}

/// A type-erased entry point: encoded arguments in, encoded result out.
pub type InvokeFn = fn(&[&[u8]]) -> Result<Vec<u8>, InvokeError>;

/// One remote function: its registry name and its type-erased entry point.
pub struct RemoteFunction {
    pub name: &'static str,
    pub invoke: InvokeFn,
}

inventory::collect!(RemoteFunction);

fn table() -> &'static HashMap<&'static str, &'static RemoteFunction> {
    static TABLE: OnceLock<HashMap<&'static str, &'static RemoteFunction>> = OnceLock::new();
    TABLE.get_or_init(|| {
        inventory::iter::<RemoteFunction>
            .into_iter()
            .map(|f| (f.name, f))
            .collect()
    })
}

/// The function registered under `name`.
pub(crate) fn lookup(name: &str) -> Option<&'static RemoteFunction> {
    table().get(name).copied()
}

pub fn check_arity(args: &[&[u8]], expected: usize) -> Result<(), InvokeError> {
    if args.len() != expected {
        return Err(InvokeError::Arity {
            expected,
            got: args.len(),
        });
    }
    Ok(())
}

pub fn decode_arg<T: DeserializeOwned + 'static>(
    bytes: &[u8],
    index: usize,
) -> Result<T, InvokeError> {
    codec::decode(bytes).map_err(|e| InvokeError::Argument {
        index,
        reason: e.to_string(),
    })
}

pub fn encode_return<T: Serialize + 'static>(value: &T) -> Result<Vec<u8>, InvokeError> {
    codec::encode(value).map_err(|e| InvokeError::Return {
        reason: e.to_string(),
    })
}
