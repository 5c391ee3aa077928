//! The executable-wide tables of remote functions and actor classes, filled by
//! `#[miniray::remote]` and `#[miniray::actor]`.
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
    #[error("this worker hosts an actor of another class")]
    WrongActor,
}

/// A type-erased entry point: encoded arguments in, encoded result out.
pub type InvokeFn = fn(&[&[u8]]) -> Result<Vec<u8>, InvokeError>;

/// One remote function: its registry name and its type-erased entry point.
pub struct RemoteFunction {
    pub name: &'static str,
    pub invoke: InvokeFn,
}

inventory::collect!(RemoteFunction);

/// An actor instance while its worker hosts it. Not `Send`: it lives on the task thread.
pub type ActorInstance = Box<dyn std::any::Any>;

/// Builds an actor from its encoded constructor arguments.
pub type ConstructFn = fn(&[&[u8]]) -> Result<ActorInstance, InvokeError>;

/// Runs one method on an actor instance: encoded arguments in, encoded result out.
pub type MethodFn = fn(&mut dyn std::any::Any, &[&[u8]]) -> Result<Vec<u8>, InvokeError>;

/// One actor class, registered by `#[miniray::actor]` on its `impl` block.
pub struct ActorClass {
    pub name: &'static str,
    pub construct: ConstructFn,
}

/// One method of an actor class.
pub struct ActorMethod {
    pub class: &'static str,
    pub method: &'static str,
    pub invoke: MethodFn,
}

inventory::collect!(ActorClass);
inventory::collect!(ActorMethod);

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

/// The actor class registered under `name`.
pub(crate) fn actor_class(name: &str) -> Option<&'static ActorClass> {
    static TABLE: OnceLock<HashMap<&'static str, &'static ActorClass>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            inventory::iter::<ActorClass>
                .into_iter()
                .map(|c| (c.name, c))
                .collect()
        })
        .get(name)
        .copied()
}

/// The method `method` of the actor class `class`.
pub(crate) fn actor_method(class: &str, method: &str) -> Option<&'static ActorMethod> {
    type Table = HashMap<(&'static str, &'static str), &'static ActorMethod>;
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            inventory::iter::<ActorMethod>
                .into_iter()
                .map(|m| ((m.class, m.method), m))
                .collect()
        })
        .get(&(class, method))
        .copied()
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
