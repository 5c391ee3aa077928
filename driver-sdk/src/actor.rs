//! Actors: a struct constructed in a worker of the cluster, whose methods run there one call
//! at a time, in the order each caller made them.
//!
//! `#[miniray::actor]` on the struct implements [`Actor`] and defines the generated client
//! type; on the `impl` block it adds `Type::remote(..)`, `Type::options()` and one client
//! method per `&self`/`&mut self` method. [`ActorHandle<A>`] dereferences to the client, so
//! `handle.method(args)` submits a call and returns an [`ObjectRef`] at once.
//!
//! Invariant: every live [`ActorHandle`] counts once in its process's actor table (see
//! `runtime::actors`); the creating process ends an unnamed actor when the count reaches
//! zero and no handle ever left the process.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::{Arc, Weak};

use miniray_common::ActorId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::object_ref::{ObjectRef, OwnerAddr};
use crate::options::Arg;
use crate::runtime::actors::actor_label;
use crate::runtime::borrowing::{ActorHold, Held};
use crate::runtime::{self, CoreWorker};

pub use crate::runtime::actors::ActorOptions;

/// A type that can run as an actor. Implemented by `#[miniray::actor]` on the struct.
pub trait Actor: Sized + 'static {
    /// The name the class is registered under in every worker (module path and type name).
    const NAME: &'static str;
    /// The generated type whose methods submit calls; `ActorHandle<Self>` dereferences to it.
    type Client: ActorClient;
}

/// The generated client of an actor class. Used by the code `#[miniray::actor]` generates.
#[doc(hidden)]
pub trait ActorClient: Clone {
    fn from_core(core: ActorCore) -> Self;
    fn core(&self) -> &ActorCore;
}

/// One counted reference to an actor in this process.
struct HandleInner {
    id: ActorId,
    class: String,
    runtime: Weak<CoreWorker>,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        if let Some(cw) = self.runtime.upgrade() {
            cw.release_actor_handle(self.id);
        }
    }
}

/// The untyped part of a handle: the actor's id and this process's runtime. Used by the
/// code `#[miniray::actor]` generates.
#[doc(hidden)]
#[derive(Clone)]
pub struct ActorCore(Arc<HandleInner>);

impl ActorCore {
    fn new(
        cw: &Arc<CoreWorker>,
        id: ActorId,
        class: &str,
        max_task_retries: u32,
        creator: Option<OwnerAddr>,
    ) -> Self {
        cw.add_actor_handle(id, actor_label(class, id), max_task_retries, creator);
        Self::counted(cw, id, class)
    }

    /// A handle the core worker counts already: by `add_actor_handle`, or by
    /// `create_actor` for the handle of an actor this process just created.
    fn counted(cw: &Arc<CoreWorker>, id: ActorId, class: &str) -> Self {
        Self(Arc::new(HandleInner {
            id,
            class: class.to_string(),
            runtime: Arc::downgrade(cw),
        }))
    }

    /// Creates an actor of class `A` with the constructor arguments `args`.
    pub fn create<A: Actor>(opts: ActorOptions, args: Vec<Arg>) -> Result<ActorHandle<A>> {
        let cw = runtime::current()?;
        let id = cw.block_on(cw.create_actor(A::NAME, opts, args))??;
        Ok(ActorHandle::from_core(Self::counted(&cw, id, A::NAME)))
    }

    /// `create` for async code.
    pub async fn create_async<A: Actor>(
        opts: ActorOptions,
        args: Vec<Arg>,
    ) -> Result<ActorHandle<A>> {
        let cw = runtime::current()?;
        let id = cw.create_actor(A::NAME, opts, args).await?;
        Ok(ActorHandle::from_core(Self::counted(&cw, id, A::NAME)))
    }

    /// Submits a call of `method`; returns at once.
    pub fn call<R>(&self, method: &'static str, args: Vec<Arg>) -> Result<ObjectRef<R>> {
        let cw = self.0.runtime.upgrade().ok_or(Error::NotInitialized)?;
        let handle = cw.submit_actor_call(self.0.id, method, args)?;
        Ok(ObjectRef::from_handle(handle))
    }
}

/// A handle to an actor of class `A`: call its methods through it (`handle.method(args)`).
///
/// Cheap to clone; clones share the call order of this process. Serializable: pass it to a
/// task or another actor, or return it from one, and call the actor from there.
pub struct ActorHandle<A: Actor> {
    client: A::Client,
    _marker: PhantomData<fn() -> A>,
}

impl<A: Actor> ActorHandle<A> {
    fn from_core(core: ActorCore) -> Self {
        Self {
            client: A::Client::from_core(core),
            _marker: PhantomData,
        }
    }

    /// The actor's id (the same across restarts).
    pub fn id(&self) -> ActorId {
        self.client.core().0.id
    }
}

impl<A: Actor> Deref for ActorHandle<A> {
    type Target = A::Client;
    fn deref(&self) -> &A::Client {
        &self.client
    }
}

impl<A: Actor> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            _marker: PhantomData,
        }
    }
}

impl<A: Actor> fmt::Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorHandle({})", actor_label(A::NAME, self.id()))
    }
}

impl<A: Actor> PartialEq for ActorHandle<A> {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl<A: Actor> Eq for ActorHandle<A> {}

#[derive(Serialize, Deserialize)]
struct WireHandle {
    id: ActorId,
    class: String,
    max_task_retries: u32,
    /// The process that ends the actor when no handle is left (`None` for a named actor).
    creator: Option<OwnerAddr>,
}

impl<A: Actor> Serialize for ActorHandle<A> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let inner = &self.client.core().0;
        let mut max_task_retries = 0;
        let mut creator = None;
        if let Some(cw) = inner.runtime.upgrade() {
            // Inside a capture the handle is held while the value is, and its receiver
            // registers as a borrower; outside one it escapes untracked.
            let tracked = runtime::borrowing::note_serialized(|| {
                Some(Held::Actor(ActorHold::new(&cw, inner.id)))
            });
            if !tracked {
                cw.mark_actor_escaped(inner.id);
            }
            max_task_retries = cw.actor_max_task_retries(inner.id);
            creator = cw.actor_owner(inner.id);
        }
        WireHandle {
            id: inner.id,
            class: inner.class.clone(),
            max_task_retries,
            creator,
        }
        .serialize(s)
    }
}

impl<'de, A: Actor> Deserialize<'de> for ActorHandle<A> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let wire = WireHandle::deserialize(d)?;
        if wire.class != A::NAME {
            return Err(serde::de::Error::custom(format!(
                "a handle to a {} actor cannot be read as a handle to {}",
                wire.class,
                A::NAME
            )));
        }
        let cw = runtime::current().map_err(serde::de::Error::custom)?;
        Ok(Self::from_core(ActorCore::new(
            &cw,
            wire.id,
            &wire.class,
            wire.max_task_retries,
            wire.creator,
        )))
    }
}

/// The live actor named `name`, from any driver of the cluster.
pub fn get_actor<A: Actor>(name: &str) -> Result<ActorHandle<A>> {
    let cw = runtime::current()?;
    let (id, class, retries) = cw.block_on(cw.find_named_actor(name))??;
    typed_handle(&cw, name, id, &class, retries)
}

/// A handle of class `A` to the actor found under `name`, if it is of that class.
fn typed_handle<A: Actor>(
    cw: &Arc<CoreWorker>,
    name: &str,
    id: ActorId,
    class: &str,
    retries: u32,
) -> Result<ActorHandle<A>> {
    if class != A::NAME {
        return Err(Error::InvalidArgument(format!(
            "the actor named {name:?} is a {class}, not a {}",
            A::NAME
        )));
    }
    // A named actor is not ended by its handles: nobody to register with.
    Ok(ActorHandle::from_core(ActorCore::new(
        cw, id, class, retries, None,
    )))
}

/// `get_actor` for async code.
pub async fn get_actor_async<A: Actor>(name: &str) -> Result<ActorHandle<A>> {
    let cw = runtime::current()?;
    let (id, class, retries) = cw.find_named_actor(name).await?;
    typed_handle(&cw, name, id, &class, retries)
}

/// Ends the actor for good (no restart): its worker stops, and calls that have not run fail
/// with [`Error::ActorDied`].
pub fn kill<A: Actor>(handle: &ActorHandle<A>) -> Result<()> {
    let cw = runtime::current()?;
    cw.block_on(cw.kill_actor(handle.id()))?
}

/// `kill` for async code.
pub async fn kill_async<A: Actor>(handle: &ActorHandle<A>) -> Result<()> {
    runtime::current()?.kill_actor(handle.id()).await
}
