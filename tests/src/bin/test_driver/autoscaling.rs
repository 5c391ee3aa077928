//! Scenarios of `tests/autoscaling.rs`: what a driver sees of an autoscaling cluster
//! (requests that wait for a node, infeasible ones, the `request_resources` floor) and the
//! work that keeps a node busy. The test and the driver hand over through files in a folder
//! the test names.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::actors::Counter;
use crate::{out, report, square, where_slow};

/// Longest a scenario waits for the test's go-ahead.
const HANDOVER_DEADLINE: Duration = Duration::from_secs(120);

/// Runs an autoscaling scenario; false when `scenario` is not one.
pub(crate) fn run(scenario: &str) -> anyhow::Result<bool> {
    let dir = std::env::args().nth(2).unwrap_or_default();
    match scenario {
        "as_wait" => wait_for_a_node()?,
        "as_floor" => floor(Path::new(&dir))?,
        "as_hold" => hold(Path::new(&dir))?,
        "as_pending_actor" => pending_actor(Path::new(&dir))?,
        "as_spread" => spread(Path::new(&dir))?,
        _ => return Ok(false),
    }
    Ok(true)
}

fn wait_for_file(path: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + HANDOVER_DEADLINE;
    while std::fs::metadata(path).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Marks that it started, then runs until the test releases it.
#[miniray::remote]
fn held(dir: String) -> u64 {
    let dir = Path::new(&dir);
    let _ = std::fs::write(dir.join("task_started"), b"x");
    match wait_for_file(&dir.join("task_release")) {
        Ok(()) => 1,
        Err(e) => panic!("{e}"),
    }
}

/// Marks that it started (a file named after its node and process), then runs until the
/// test releases it; returns its node.
#[miniray::remote]
fn held_marked(dir: String) -> String {
    let dir = Path::new(&dir);
    let node = miniray::node_id()
        .map(|n| n.to_string())
        .unwrap_or_default();
    let _ = std::fs::write(dir.join(format!("{node}-{}", std::process::id())), b"x");
    match wait_for_file(&dir.join("release")) {
        Ok(()) => node,
        Err(e) => panic!("{e}"),
    }
}

/// Three one-CPU tasks held until the test releases them; prints how many nodes ran them.
fn spread(dir: &Path) -> anyhow::Result<()> {
    let refs: Vec<_> = (0..3)
        .map(|_| held_marked::remote(dir.display().to_string()))
        .collect::<Result<_, _>>()?;
    let nodes: std::collections::BTreeSet<String> = miniray::get_all(&refs)?.into_iter().collect();
    out("distinct_nodes", nodes.len());
    Ok(())
}

/// A GPU task fails at once (no node type has a GPU); a 2-CPU task waits for a node of the
/// 2-CPU type, which the test adds, and runs there.
fn wait_for_a_node() -> anyhow::Result<()> {
    let start = Instant::now();
    let gpu = square::options().resource("GPU", 1.0).remote(3)?;
    report(
        "gpu",
        miniray::get_timeout(&gpu, Some(Duration::from_secs(60))),
    );
    out("gpu_elapsed_ms", start.elapsed().as_millis());
    let two = where_slow::options().num_cpus(2.0).remote(0)?;
    report(
        "two_cpu",
        miniray::get_timeout(&two, Some(Duration::from_secs(120))),
    );
    Ok(())
}

/// Sets a floor of two 2-CPU bundles, waits, clears it with the async twin; a bad amount
/// is refused.
fn floor(dir: &Path) -> anyhow::Result<()> {
    report(
        "bad",
        miniray::autoscaler::request_resources(&[BTreeMap::from([("CPU", -1.0)])]),
    );
    let bundle = BTreeMap::from([("CPU", 2.0)]);
    miniray::autoscaler::request_resources(&[bundle.clone(), bundle])?;
    std::fs::write(dir.join("set"), b"x")?;
    wait_for_file(&dir.join("clear"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(miniray::autoscaler::request_resources_async::<&str>(&[]))?;
    out("cleared", 1);
    Ok(())
}

/// A task, then an actor, each kept running until the test releases it.
fn hold(dir: &Path) -> anyhow::Result<()> {
    let task = held::remote(dir.display().to_string())?;
    out("task", miniray::get(&task)?);
    let counter = Counter::remote(0)?;
    out("incr", miniray::get(&counter.incr(1)?)?);
    std::fs::write(dir.join("actor_alive"), b"x")?;
    wait_for_file(&dir.join("actor_release"))?;
    miniray::kill(&counter)?;
    Ok(())
}

/// An actor that needs the custom resource `big`, which no node has at first: it is
/// created (the autoscaling config has a type with it) and waits until such a node joins.
fn pending_actor(dir: &Path) -> anyhow::Result<()> {
    let counter = Counter::options().resource("big", 1.0).remote(0)?;
    out("created", 1);
    out("incr", miniray::get(&counter.incr(1)?)?);
    std::fs::write(dir.join("actor_alive"), b"x")?;
    wait_for_file(&dir.join("actor_release"))?;
    miniray::kill(&counter)?;
    Ok(())
}
