//! Task arguments and per-submission options.

use std::sync::Arc;

use miniray_common::Resources;
use serde::Serialize;

use crate::codec;
use crate::error::{Error, Result};
use crate::object_ref::{ObjectRef, RefHandle};
use crate::runtime;

/// One argument of a task: a value, or an object the task depends on.
pub struct Arg(pub(crate) ArgKind);

pub(crate) enum ArgKind {
    Value(Vec<u8>),
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
        Ok(Arg(ArgKind::Value(codec::encode(&self)?)))
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

/// Default retries of a task whose worker dies (as in Ray).
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// Options of one task submission; built by the `options()` of a `#[remote]` function.
#[derive(Clone, Debug)]
pub struct TaskOptions {
    pub(crate) function: &'static str,
    pub(crate) resources: Resources,
    pub(crate) max_retries: u32,
    /// The first invalid option given; reported by `submit` so the builder stays chainable.
    invalid: Option<String>,
}

impl TaskOptions {
    pub fn new(function: &'static str) -> Self {
        let mut resources = Resources::new();
        // A positive constant is always a valid amount.
        let _ = resources.set("CPU", 1.0);
        Self {
            function,
            resources,
            max_retries: DEFAULT_MAX_RETRIES,
            invalid: None,
        }
    }

    pub fn num_cpus(self, n: f64) -> Self {
        self.resource("CPU", n)
    }

    pub fn resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        if let Err(e) = self.resources.set(name, amount)
            && self.invalid.is_none()
        {
            self.invalid = Some(e.to_string());
        }
        self
    }

    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Submits the task; the returned reference resolves to its result.
    pub fn submit<R>(self, args: Vec<Arg>) -> Result<ObjectRef<R>> {
        if let Some(reason) = self.invalid {
            return Err(Error::InvalidArgument(reason));
        }
        let cw = runtime::current()?;
        let handle = cw.submit_task(self, args)?;
        Ok(ObjectRef::from_handle(handle))
    }
}
