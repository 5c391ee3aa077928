//! Task arguments and per-submission options.

use std::sync::Arc;

use miniray_common::Resources;
use serde::Serialize;

use crate::codec;
use crate::error::{Error, Result};
use crate::object_ref::{ObjectRef, RefHandle};
use crate::runtime;
use crate::runtime::borrowing::Held;

/// One argument of a task: a value, or an object the task depends on.
pub struct Arg(pub(crate) ArgKind);

pub(crate) enum ArgKind {
    /// An encoded value, and the references inside it (held until the task is done).
    Value(Vec<u8>, Vec<Held>),
    Ref(Arc<RefHandle>),
}

/// What may be passed where a remote function takes a `T`: a `T` itself, or an
/// `ObjectRef<T>` (by value or reference), which makes the task wait for that object and
/// receive its value.
pub trait IntoArg<T> {
    fn into_arg(self) -> Result<Arg>;
}

impl<T: Serialize + 'static> IntoArg<T> for T {
    fn into_arg(self) -> Result<Arg> {
        let (bytes, contained) = runtime::borrowing::capture_refs(|| codec::encode(&self));
        Ok(Arg(ArgKind::Value(bytes?, contained)))
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> Result<Arg> {
        Ok(Arg(ArgKind::Ref(self.handle.clone())))
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> Result<Arg> {
        Ok(Arg(ArgKind::Ref(self.handle)))
    }
}

/// Resources one submission asks for, and the first invalid option given: reported when the
/// task or actor is submitted, so that option builders stay chainable.
#[derive(Clone, Debug, Default)]
pub(crate) struct ResourceRequest {
    pub(crate) resources: Resources,
    invalid: Option<String>,
}

impl ResourceRequest {
    pub(crate) fn set(&mut self, name: impl Into<String>, amount: f64) {
        if let Err(e) = self.resources.set(name, amount) {
            self.reject(e.to_string());
        }
    }

    /// Records an invalid option (only the first is reported).
    pub(crate) fn reject(&mut self, reason: String) {
        self.invalid.get_or_insert(reason);
    }

    /// `InvalidArgument` for the first invalid option given.
    pub(crate) fn check(&self) -> Result<()> {
        match &self.invalid {
            Some(reason) => Err(Error::InvalidArgument(reason.clone())),
            None => Ok(()),
        }
    }
}

/// Default retries of a task whose worker dies (as in Ray).
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// Options of one task submission; built by the `options()` of a `#[remote]` function.
#[derive(Clone, Debug)]
pub struct TaskOptions {
    pub(crate) function: &'static str,
    pub(crate) request: ResourceRequest,
    pub(crate) max_retries: u32,
}

impl TaskOptions {
    pub fn new(function: &'static str) -> Self {
        let mut request = ResourceRequest::default();
        request.set("CPU", 1.0);
        Self {
            function,
            request,
            max_retries: DEFAULT_MAX_RETRIES,
        }
    }

    pub fn num_cpus(self, n: f64) -> Self {
        self.resource("CPU", n)
    }

    pub fn resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        self.request.set(name, amount);
        self
    }

    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Submits the task; the returned reference resolves to its result.
    pub fn submit<R>(self, args: Vec<Arg>) -> Result<ObjectRef<R>> {
        self.request.check()?;
        let cw = runtime::current()?;
        let handle = cw.submit_task(self, args)?;
        Ok(ObjectRef::from_handle(handle))
    }
}
