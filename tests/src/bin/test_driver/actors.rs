//! Actor scenarios of the test driver.

use std::time::{Duration, Instant};

use miniray::{ActorHandle, ActorPool, Error, ObjectRef};

use crate::{out, report};

/// Remembers every value pushed, in arrival order.
#[miniray::actor]
pub struct Recorder {
    seen: Vec<u64>,
}

#[miniray::actor]
impl Recorder {
    pub fn new() -> Self {
        Recorder { seen: Vec::new() }
    }

    /// Appends `x`; returns how many values the actor holds now.
    pub fn push(&mut self, x: u64) -> u64 {
        self.seen.push(x);
        self.seen.len() as u64
    }

    pub fn seen(&self) -> Vec<u64> {
        self.seen.clone()
    }

    pub fn len(&self) -> u64 {
        self.seen.len() as u64
    }

    /// Changes the state, then panics.
    pub fn push_then_panic(&mut self, x: u64, msg: String) -> u64 {
        self.seen.push(x);
        panic!("{msg}");
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

/// A counter whose worker can be killed from the outside.
#[miniray::actor]
pub struct Counter {
    n: u64,
}

#[miniray::actor]
impl Counter {
    pub fn new(start: u64) -> Self {
        Counter { n: start }
    }

    pub fn incr(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }

    pub fn value(&self) -> u64 {
        self.n
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Marks that it started (a file in `dir`), sleeps, returns the worker's pid.
    pub fn slow_pid(&self, dir: String, ms: u64) -> u32 {
        let _ = std::fs::write(format!("{dir}/started-{}", std::process::id()), b"");
        std::thread::sleep(Duration::from_millis(ms));
        std::process::id()
    }

    pub fn abort(&self) -> u64 {
        std::process::abort()
    }

    pub fn node(&self) -> String {
        miniray::node_id()
            .map(|n| n.to_string())
            .unwrap_or_default()
    }
}

/// Calls another actor through a handle it was given.
#[miniray::actor]
pub struct Relay {
    target: ActorHandle<Recorder>,
}

#[miniray::actor]
impl Relay {
    pub fn new(target: ActorHandle<Recorder>) -> Self {
        Relay { target }
    }

    pub fn forward(&self, x: u64) -> u64 {
        let r = self
            .target
            .push(x)
            .unwrap_or_else(|e| panic!("relay submit: {e}"));
        miniray::get(&r).unwrap_or_else(|e| panic!("relay get: {e}"))
    }
}

#[miniray::actor]
pub struct Doubler;

#[miniray::actor]
impl Doubler {
    pub fn new() -> Self {
        Doubler
    }

    pub fn double(&self, x: u64, sleep_ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(sleep_ms));
        2 * x
    }
}

/// A task that calls an actor through a handle passed as its argument.
#[miniray::remote]
fn push_from_task(h: ActorHandle<Recorder>, x: u64) -> u64 {
    let r = h.push(x).unwrap_or_else(|e| panic!("task submit: {e}"));
    miniray::get(&r).unwrap_or_else(|e| panic!("task get: {e}"))
}

/// Runs an actor scenario; false if `scenario` is not one.
pub(crate) fn run(scenario: &str) -> anyhow::Result<bool> {
    let arg = |i: usize| std::env::args().nth(i).unwrap_or_default();
    match scenario {
        "actor_order" => actor_order()?,
        "actor_features" => actor_features()?,
        "actor_restart" => actor_restart(&arg(2))?,
        "actor_named_owner" => actor_named_owner(&arg(2))?,
        "actor_named_user" => actor_named_user(&arg(2))?,
        "actor_pool" => actor_pool()?,
        "actor_node_loss" => actor_node_loss(&arg(2))?,
        "actor_on_cut_node" => actor_on_cut_node(&arg(2))?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// 10,000 calls from one handle run in the order they were made.
fn actor_order() -> anyhow::Result<()> {
    const N: u64 = 10_000;
    let h = Recorder::remote()?;
    let refs: Vec<ObjectRef<u64>> = (0..N).map(|i| h.push(i)).collect::<Result<_, _>>()?;
    let lens = miniray::get_all(&refs)?;
    out("lens_in_order", lens == (1..=N).collect::<Vec<_>>());
    let seen = miniray::get(&h.seen()?)?;
    out("seen_in_order", seen == (0..N).collect::<Vec<_>>());
    out("seen_len", seen.len());
    Ok(())
}

/// Panics, handles in tasks and actors, names, kill, and the end of an unreferenced actor.
fn actor_features() -> anyhow::Result<()> {
    let h = Recorder::remote()?;
    miniray::get(&h.push(1)?)?;

    // A panic fails that call only; the actor keeps its state and serves the next call.
    report(
        "panic",
        miniray::get(&h.push_then_panic(2, String::from("boom in a method"))?),
    );
    out("after_panic_len", miniray::get(&h.len()?)?);

    // The handle travels into a task and into another actor; both reach the same state.
    out(
        "from_task",
        miniray::get(&push_from_task::remote(h.clone(), 10)?)?,
    );
    let relay = Relay::remote(h.clone())?;
    out("from_actor", miniray::get(&relay.forward(20)?)?);
    out("seen", format!("{:?}", miniray::get(&h.seen()?)?));

    // Names: found from this driver; taken names and unknown names are errors.
    let named = Counter::options().name("features-counter").remote(5)?;
    miniray::get(&named.incr(1)?)?;
    let found: ActorHandle<Counter> = miniray::get_actor("features-counter")?;
    out("named_value", miniray::get(&found.incr(1)?)?);
    report(
        "duplicate_name",
        Counter::options()
            .name("features-counter")
            .remote(0)
            .map(|_| ()),
    );
    report(
        "unknown_name",
        miniray::get_actor::<Counter>("no-such-actor").map(|_| ()),
    );
    report(
        "wrong_class",
        miniray::get_actor::<Recorder>("features-counter").map(|_| ()),
    );

    // Kill: later calls fail with ActorDied, and the name is free again.
    miniray::kill(&named)?;
    report("after_kill", miniray::get(&found.incr(1)?));
    let deadline = Instant::now() + Duration::from_secs(20);
    let renamed = loop {
        match Counter::options().name("features-counter").remote(100) {
            Ok(h) => break Ok(h),
            Err(Error::InvalidArgument(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => break Err(e),
        }
    };
    report("name_reused", miniray::get(&renamed?.value()?));

    // Bad options are typed errors and create nothing.
    report(
        "bad_option",
        Counter::options().num_cpus(-1.0).remote(0).map(|_| ()),
    );
    report(
        "infeasible",
        Counter::options()
            .resource("no-such-resource", 1.0)
            .remote(0)
            .map(|_| ()),
    );

    // Dropping the last handle of an unnamed actor ends it (its worker exits).
    let temp = Recorder::remote()?;
    let temp_pid = miniray::get(&temp.pid()?)?;
    drop(temp);
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_alive(temp_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    out("dropped_actor_exited", !process_alive(temp_pid));
    Ok(())
}

/// Restarts after SIGKILL and abort, retries of calls in flight, `ActorDied` at the end.
fn actor_restart(dir: &str) -> anyhow::Result<()> {
    // max_restarts 1: the first death restarts the actor (constructor re-run: state 0).
    let h = Counter::options().max_restarts(1).remote(0)?;
    miniray::get(&h.incr(5)?)?;
    let pid1 = miniray::get(&h.pid()?)?;
    kill9(pid1);
    // Calls sent before this process hears of the death fail (they went to the dead worker,
    // as in Ray); once the restart is known, calls wait for the new incarnation.
    let after = until_ok(|| miniray::get(&h.incr(1)?))?;
    out("after_restart_value", after);
    let pid2 = miniray::get(&h.pid()?)?;
    out("restarted_in_new_process", pid2 != pid1);
    kill9(pid2);
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        let r = h.incr(1).and_then(|r| miniray::get(&r));
        match &r {
            Err(Error::ActorDied { reason, .. })
                if !reason.contains("restarts") && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => break r,
        }
    };
    report("out_of_restarts", last);

    // A call in flight when the worker dies is retried with max_task_retries.
    let r = Counter::options()
        .max_restarts(1)
        .max_task_retries(1)
        .remote(0)?;
    let first_pid = miniray::get(&r.pid()?)?;
    let call = r.slow_pid(dir.to_string(), 3_000)?;
    wait_for_file(dir, &format!("started-{first_pid}"))?;
    kill9(first_pid);
    let retried_pid = miniray::get(&call)?;
    out("retried_elsewhere", retried_pid != first_pid);

    // Without retries a call in flight fails with ActorDied; the actor itself restarts.
    let a = Counter::options().max_restarts(1).remote(7)?;
    miniray::get(&a.value()?)?;
    report("abort_in_flight", miniray::get(&a.abort()?));
    report("after_abort", until_ok(|| miniray::get(&a.value()?)));
    Ok(())
}

/// Creates a named counter, bumps it once, and waits until another driver has bumped it
/// ten times.
fn actor_named_owner(name: &str) -> anyhow::Result<()> {
    let h = Counter::options().name(name).remote(0)?;
    miniray::get(&h.incr(1)?)?;
    out("created", true);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut value = 0;
    while Instant::now() < deadline {
        value = miniray::get(&h.value()?)?;
        if value >= 11 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    out("owner_sees", value);
    Ok(())
}

/// Finds the named counter of another driver and bumps it ten times.
fn actor_named_user(name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let h: ActorHandle<Counter> = loop {
        match miniray::get_actor(name) {
            Ok(h) => break h,
            Err(Error::ActorNotFound { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut last = 0;
    for _ in 0..10 {
        last = miniray::get(&h.incr(1)?)?;
    }
    out("user_last", last);
    Ok(())
}

/// An actor whose node dies restarts on another node with the resource it needs. The test
/// kills the node named in `dir/placed` and then creates `dir/killed`.
fn actor_node_loss(dir: &str) -> anyhow::Result<()> {
    let h = Counter::options()
        .resource("side", 1.0)
        .max_restarts(1)
        .remote(0)?;
    miniray::get(&h.incr(3)?)?;
    let first = miniray::get(&h.node()?)?;
    out("first_node", &first);
    std::fs::write(std::path::Path::new(dir).join("placed"), &first)?;
    wait_for_file(dir, "killed")?;
    // The orphaned worker may answer until it notices its raylet is gone (within 200 ms);
    // then calls fail until the GCS declares the node dead and the actor is back elsewhere.
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        match miniray::get(&h.node()?) {
            Ok(node) if node != first => break node,
            Ok(_) | Err(Error::ActorDied { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            other => break other?,
        }
    };
    out("second_node", &second);
    // The constructor ran again on the new node: the state starts over.
    out("value_after_restart", miniray::get(&h.value()?)?);
    Ok(())
}

/// An actor on the only node with the `remote` resource, with no restarts, runs a long call
/// (marked `started-<pid>` in `dir`) while the test cuts that node off: the call fails with
/// `ActorDied` once the GCS declares the node dead.
fn actor_on_cut_node(dir: &str) -> anyhow::Result<()> {
    let h = Counter::options().resource("remote", 1.0).remote(0)?;
    miniray::get(&h.incr(1)?)?;
    let call = h.slow_pid(dir.to_string(), 120_000)?;
    report("slow_call", miniray::get(&call));
    Ok(())
}

/// The pool: ordered results, completion-order results, and `map`.
fn actor_pool() -> anyhow::Result<()> {
    let actors = (0..3)
        .map(|_| Doubler::remote())
        .collect::<miniray::Result<Vec<_>>>()?;
    let mut pool = ActorPool::new(actors);
    // Earlier items sleep longer, so completion order differs from submission order.
    for x in 0..9u64 {
        pool.submit(move |a| a.double(x, (9 - x) * 20))?;
    }
    let mut ordered = Vec::new();
    while pool.has_next() {
        ordered.push(pool.get_next()?);
    }
    out("ordered", format!("{ordered:?}"));
    for x in 0..9u64 {
        pool.submit(move |a| a.double(x, (9 - x) * 20))?;
    }
    let mut unordered = Vec::new();
    while pool.has_next() {
        unordered.push(pool.get_next_unordered()?);
    }
    out("unordered_sorted_equal", {
        let mut s = unordered.clone();
        s.sort_unstable();
        s == ordered
    });
    out("unordered_differs", unordered != ordered);
    let mapped = pool.map(0..5u64, |a, x| a.double(x, 0))?;
    out("mapped", format!("{mapped:?}"));
    report("empty_get", pool.get_next());
    Ok(())
}

/// Retries `f` while it fails with `ActorDied` (a death not yet known here), for 30 s.
fn until_ok<T>(mut f: impl FnMut() -> miniray::Result<T>) -> miniray::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Err(Error::ActorDied { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other,
        }
    }
}

fn kill9(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            // The state field follows the command name in parentheses; a zombie has exited.
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

fn wait_for_file(dir: &str, name: &str) -> anyhow::Result<()> {
    let path = std::path::Path::new(dir).join(name);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if Instant::now() > deadline {
            anyhow::bail!("{} did not appear", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
