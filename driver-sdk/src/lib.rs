//! miniray: remote tasks and a shared-memory object store for Rust programs, in the mould of
//! Ray.
//!
//! ```no_run
//! #[miniray::remote]
//! fn square(x: u64) -> u64 { x * x }
//!
//! fn main() -> miniray::Result<()> {
//!     miniray::init()?; // in a worker process this runs tasks and never returns
//!     let r = square::remote(7)?;
//!     let dep = square::remote(&r)?;   // an ObjectRef argument is a dependency
//!     assert_eq!(miniray::get(&dep)?, 2401);
//!     miniray::shutdown();
//!     Ok(())
//! }
//! ```
//!
//! `#[remote]` functions must be defined at module level (not inside a function body), and
//! `init()` should be the first thing `main` does: workers are this same executable started
//! with no arguments, and `init()` is where they branch off.

mod actor;
mod actor_pool;
pub mod autoscaler;
mod codec;
mod error;
pub mod metrics;
mod object_bytes;
mod object_ref;
mod options;
mod registry;
mod runtime;

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use actor::{Actor, ActorHandle, ActorOptions, get_actor, get_actor_async, kill, kill_async};
pub use actor_pool::ActorPool;
pub use error::{Error, Result};
pub use miniray_common::ActorId;
pub use miniray_common::NodeId;
pub use miniray_macros::{actor, remote};
pub use object_bytes::ObjectBytes;
pub use object_ref::ObjectRef;
pub use options::{Arg, IntoArg, TaskOptions};
pub use runtime::bootstrap::InitOptions;

/// Daemon roles of a miniray executable, for `miniray start` and tests, and local clusters
/// of them.
pub mod cluster {
    pub use crate::runtime::cluster::{
        DEFAULT_EXECUTABLE_CACHE_BYTES, DEFAULT_MAX_DESTROYED_ACTORS, DEFAULT_MAX_TASK_EVENTS,
        DEFAULT_UNUSED_EXECUTABLE_TTL, DaemonSpec, GcsSpec, RayletSpec, SpawnedDaemon,
        run_daemon_from_env, spawn_daemon, spawn_daemon_via, stop_daemon,
    };
    pub use crate::runtime::local_cluster::{LocalCluster, LocalNodeOptions};
}

/// Sizes of the core worker's internal tables, for tests of their bounds; not a public API.
#[doc(hidden)]
pub mod __debug {
    /// Resource shapes the submitter keeps state for.
    pub fn submitter_keys() -> crate::Result<usize> {
        Ok(crate::runtime::current()?.submitter.key_count())
    }

    /// This process's job id in hex (what `miniray timeline --job` takes).
    pub fn job_id() -> crate::Result<String> {
        Ok(crate::runtime::current()?.job_id.hex())
    }
}

/// Used by the code `#[miniray::remote]` and `#[miniray::actor]` generate; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::actor::{ActorClient, ActorCore};
    pub use crate::registry::{
        ActorClass, ActorInstance, ActorMethod, InvokeError, RemoteFunction, check_arity,
        decode_arg, encode_return,
    };
    pub use inventory;

    /// Takes a read pin on `r`'s copy in this node's object store and never releases it:
    /// for tests of what the raylet gives back when a process dies or its job ends.
    /// `false` if the object has no copy in this node's store.
    pub fn hold_plasma_pin<T>(r: &crate::ObjectRef<T>) -> crate::Result<bool> {
        let cw = crate::runtime::current()?;
        Ok(cw.block_on(cw.plasma.pin(r.id()))??.is_some())
    }
}

/// Connects this program to miniray: joins the cluster at `MINIRAY_ADDRESS`, or starts a
/// private local cluster (stopped by `shutdown` or when the program exits).
///
/// In a worker process (started by a raylet) this runs the worker loop and never returns.
///
/// With `MINIRAY_TLS_CERT`, `MINIRAY_TLS_KEY` and `MINIRAY_TLS_CA` set, every connection of
/// this process (and of its private cluster) is mutual TLS; one or two of them, or a file
/// that does not load, is a [`Error::Startup`].
pub fn init() -> Result<()> {
    init_with(InitOptions::default())
}

/// `init` with options: the cluster address and token, or the shape of the local cluster.
pub fn init_with(opts: InitOptions) -> Result<()> {
    match std::env::var(miniray_common::config::env::ROLE).as_deref() {
        Ok("worker") => {
            if let Err(e) = miniray_common::tls::install_from_env() {
                eprintln!("miniray worker: cannot start: {e}");
                std::process::exit(1);
            }
            runtime::bootstrap::run_worker()
        }
        Ok("gcs") | Ok("raylet") => runtime::cluster::run_daemon_from_env(),
        _ => {}
    }
    // Drivers: mutual TLS when `MINIRAY_TLS_*` say so, before any channel is made.
    miniray_common::tls::install_from_env().map_err(|e| Error::Startup(e.to_string()))?;
    if runtime::is_initialized() {
        return Err(Error::InvalidArgument(
            "miniray is already initialized; call shutdown() first".into(),
        ));
    }
    runtime::bootstrap::start_driver(opts)
}

/// Whether `init` has run in this process (and `shutdown` has not).
pub fn is_initialized() -> bool {
    runtime::is_initialized()
}

/// Disconnects: returns worker leases, frees this program's objects, and stops the private
/// local cluster if `init` started one. Safe to call more than once.
pub fn shutdown() {
    runtime::shutdown();
}

/// Total resources of the cluster's alive nodes by name (`"CPU"`, `"GPU"`, custom ones).
pub fn cluster_resources() -> Result<std::collections::BTreeMap<String, f64>> {
    let cw = runtime::current()?;
    cw.block_on(cw.cluster_resources())?
}

/// The node this code runs on.
pub fn node_id() -> Result<NodeId> {
    Ok(runtime::current()?.node_id())
}

/// Stores a value in the object store; the reference can be passed to tasks.
pub fn put<T: Serialize + 'static>(value: T) -> Result<ObjectRef<T>> {
    let cw = runtime::current()?;
    let handle = cw.block_on(cw.put_value(&value))??;
    Ok(ObjectRef::from_handle(handle))
}

/// `put` without giving the value up: it is serialized into the store, not moved. For
/// large values this saves the caller a copy.
pub fn put_ref<T: Serialize + 'static>(value: &T) -> Result<ObjectRef<T>> {
    let cw = runtime::current()?;
    let handle = cw.block_on(cw.put_value(value))??;
    Ok(ObjectRef::from_handle(handle))
}

/// `put` for async code.
pub async fn put_async<T: Serialize + 'static>(value: T) -> Result<ObjectRef<T>> {
    let cw = runtime::current()?;
    let handle = cw.put_value(&value).await?;
    Ok(ObjectRef::from_handle(handle))
}

/// Waits for the object and returns its value.
pub fn get<T: DeserializeOwned + 'static>(r: &ObjectRef<T>) -> Result<T> {
    get_timeout(r, None)
}

/// `get` that gives up with `Error::Timeout` after `timeout`.
pub fn get_timeout<T: DeserializeOwned + 'static>(
    r: &ObjectRef<T>,
    timeout: Option<Duration>,
) -> Result<T> {
    let cw = runtime::current()?;
    let ready = cw.is_ready_locally(r.id()) || cw.spin_until_ready(r.id());
    cw.block_on_waiting(ready, cw.get(&r.handle, timeout))?
}

/// `get` for async code.
pub async fn get_async<T: DeserializeOwned + 'static>(r: &ObjectRef<T>) -> Result<T> {
    let cw = runtime::current()?;
    cw.get(&r.handle, None).await
}

/// The bytes of a `Vec<u8>` object, read in place when it lies in this node's object store
/// (brought there first when it is on another node): no copy, whatever its size, as Ray's
/// zero-copy numpy reads. The object stays pinned in the store while the result lives.
/// Small objects and drivers connected from another machine get an owned copy
/// ([`ObjectBytes::is_zero_copy`] tells which).
pub fn get_bytes(r: &ObjectRef<Vec<u8>>) -> Result<ObjectBytes> {
    let cw = runtime::current()?;
    let ready = cw.is_ready_locally(r.id()) || cw.spin_until_ready(r.id());
    cw.block_on_waiting(ready, cw.get_bytes(&r.handle, None))?
}

/// `get_bytes` for async code.
pub async fn get_bytes_async(r: &ObjectRef<Vec<u8>>) -> Result<ObjectBytes> {
    let cw = runtime::current()?;
    cw.get_bytes(&r.handle, None).await
}

/// Waits for all the objects and returns their values in order.
pub fn get_all<T: DeserializeOwned + 'static>(refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
    let cw = runtime::current()?;
    let ready = refs.iter().all(|r| cw.is_ready_locally(r.id()));
    cw.block_on_waiting(ready, get_all_inner(&cw, refs))?
}

/// `get_all` for async code.
pub async fn get_all_async<T: DeserializeOwned + 'static>(refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
    let cw = runtime::current()?;
    get_all_inner(&cw, refs).await
}

/// References a `get_all` resolves at once: enough to overlap the waits and pulls of many
/// objects, while a get of a million references holds a thousand resolving futures (about
/// 2 KiB each), not a million.
const GET_ALL_CONCURRENCY: usize = 1024;

async fn get_all_inner<T: DeserializeOwned + 'static>(
    cw: &std::sync::Arc<runtime::CoreWorker>,
    refs: &[ObjectRef<T>],
) -> Result<Vec<T>> {
    use futures::StreamExt;
    let mut values = futures::stream::iter(refs.iter().map(|r| cw.resolve(&r.handle, None)))
        .buffered(GET_ALL_CONCURRENCY);
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        let value = values
            .next()
            .await
            .ok_or_else(|| Error::Internal("a get ended before its last reference".into()))??;
        out.push(cw.read(r.id(), &value).await?);
    }
    Ok(out)
}

/// What `wait` returns: (ready, not ready), each in the order given.
pub type WaitResult<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// Waits until `num_returns` of `refs` are ready (finished or failed) or `timeout` passes.
/// Returns (ready, not ready), each in the order of `refs`.
pub fn wait<T>(
    refs: &[ObjectRef<T>],
    num_returns: usize,
    timeout: Option<Duration>,
) -> Result<WaitResult<T>> {
    let cw = runtime::current()?;
    if let Some(done) = wait_without_blocking(&cw, refs, num_returns)? {
        return Ok(done);
    }
    cw.block_on_waiting(false, wait_inner(&cw, refs, num_returns, timeout))?
}

/// `wait` for async code.
pub async fn wait_async<T>(
    refs: &[ObjectRef<T>],
    num_returns: usize,
    timeout: Option<Duration>,
) -> Result<WaitResult<T>> {
    let cw = runtime::current()?;
    if let Some(done) = wait_without_blocking(&cw, refs, num_returns)? {
        return Ok(done);
    }
    wait_inner(&cw, refs, num_returns, timeout).await
}

/// Answers `wait` from what this process already knows, when that is enough.
fn wait_without_blocking<T>(
    cw: &runtime::CoreWorker,
    refs: &[ObjectRef<T>],
    num_returns: usize,
) -> Result<Option<WaitResult<T>>> {
    check_num_returns(refs.len(), num_returns)?;
    let mut found = 0;
    let is_ready: Vec<bool> = refs
        .iter()
        .map(|r| {
            let ready = found < num_returns && cw.is_ready_locally(r.id());
            found += usize::from(ready);
            ready
        })
        .collect();
    Ok((found >= num_returns).then(|| split_by_readiness(refs, &is_ready)))
}

async fn wait_inner<T>(
    cw: &std::sync::Arc<runtime::CoreWorker>,
    refs: &[ObjectRef<T>],
    num_returns: usize,
    timeout: Option<Duration>,
) -> Result<WaitResult<T>> {
    check_num_returns(refs.len(), num_returns)?;
    let handles: Vec<_> = refs.iter().map(|r| r.handle.clone()).collect();
    let mut is_ready = vec![false; refs.len()];
    for i in cw.wait_ready(&handles, num_returns, timeout).await {
        is_ready[i] = true;
    }
    Ok(split_by_readiness(refs, &is_ready))
}

fn check_num_returns(given: usize, num_returns: usize) -> Result<()> {
    if num_returns > given {
        return Err(Error::InvalidArgument(format!(
            "num_returns {num_returns} is more than the {given} references given"
        )));
    }
    Ok(())
}

/// (ready, not ready), each in the order of `refs`.
fn split_by_readiness<T>(refs: &[ObjectRef<T>], is_ready: &[bool]) -> WaitResult<T> {
    let (mut done, mut pending) = (Vec::new(), Vec::new());
    for (r, &ready) in refs.iter().zip(is_ready) {
        if ready {
            done.push(r.clone());
        } else {
            pending.push(r.clone());
        }
    }
    (done, pending)
}
