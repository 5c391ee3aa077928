//! Scenarios for `tests/gcs_faults.rs`: a driver whose cluster's GCS is restarted under it.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::{out, square};

/// How long the driver waits for the test to restart the GCS.
const GO_DEADLINE: Duration = Duration::from_secs(180);

fn sum_of_squares(n: u64) -> anyhow::Result<u64> {
    let refs: Vec<_> = (0..n).map(square::remote).collect::<Result<_, _>>()?;
    Ok(miniray::get_all(&refs)?.iter().sum())
}

/// Runs tasks, writes `<dir>/ready`, waits for `<dir>/go` (the test restarts the GCS in
/// between), then runs tasks again.
pub fn across_gcs_restart(dir: &str) -> anyhow::Result<()> {
    let dir = Path::new(dir);
    out("before", sum_of_squares(50)?);
    std::fs::write(dir.join("ready"), b"")?;
    let start = Instant::now();
    while !dir.join("go").exists() {
        if start.elapsed() > GO_DEADLINE {
            anyhow::bail!("no go after {GO_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    out("after", sum_of_squares(50)?);
    Ok(())
}

/// Bytes above the inline threshold, so a put goes to the home raylet's store.
const PLASMA_BYTES: usize = 256 * 1024;

/// A remote driver whose head (GCS and raylet) is killed and replaced under it: a loop of
/// iterations, each tasks (on the worker node), an actor call and a put read back by a
/// task. Writes `<dir>/ready` after the first iteration; once `<dir>/go` exists (the test
/// replaced the head), writes `<dir>/recovered` at the end of the first iteration that
/// started after it, runs a few more, writes `<dir>/finished` and waits for
/// `<dir>/checked`, then checks that an object whose only copy was on the old head is lost.
pub fn across_head_restart(dir: &str) -> anyhow::Result<()> {
    use crate::actors::Counter;
    let dir = Path::new(dir);
    let counter = Counter::options().num_cpus(1.0).remote(0)?;
    let on_old_head = miniray::put(vec![7u8; PLASMA_BYTES])?;
    out("first_home", miniray::node_id()?);
    let start = Instant::now();
    let mut iteration = 0u64;
    let mut after_go = 0u32;
    let mut nodes = std::collections::BTreeSet::new();
    loop {
        let go_before = dir.join("go").exists();
        iteration += 1;
        let sum = sum_of_squares(20)?;
        anyhow::ensure!(sum == 2470, "iteration {iteration}: sum of squares {sum}");
        let n = miniray::get(&counter.incr(1)?)?;
        anyhow::ensure!(
            n == iteration,
            "iteration {iteration}: the counter reads {n}"
        );
        let fill = (iteration % 251) as u8;
        let data = miniray::put(vec![fill; PLASMA_BYTES])?;
        let (len, hash) = match miniray::get(&crate::checksum::remote(&data)?) {
            Ok(v) => v,
            // Put on the old head just before it was killed, the only copy went with it:
            // lost, as in Ray. Only an iteration that started before the new head may.
            Err(miniray::Error::ObjectLost { .. }) if !go_before => {
                out("lost_in_the_kill", iteration);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        anyhow::ensure!(
            len == PLASMA_BYTES as u64 && hash == crate::fnv(&vec![fill; PLASMA_BYTES]),
            "iteration {iteration}: the put read back as {len} bytes"
        );
        nodes.insert(miniray::get(&crate::where_slow::remote(0)?)?);
        if iteration == 1 {
            std::fs::write(dir.join("ready"), b"")?;
        }
        if go_before {
            after_go += 1;
            if after_go == 1 {
                std::fs::write(dir.join("recovered"), b"")?;
                out("home_after", miniray::node_id()?);
            }
            if after_go == 5 {
                break;
            }
        } else if start.elapsed() > GO_DEADLINE {
            anyhow::bail!("no go after {GO_DEADLINE:?}");
        }
    }
    // The test looks at the job table while this driver still runs.
    std::fs::write(dir.join("finished"), b"")?;
    let waiting = Instant::now();
    while !dir.join("checked").exists() {
        anyhow::ensure!(
            waiting.elapsed() < GO_DEADLINE,
            "not checked after {GO_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    out("iterations", iteration);
    out("counter", miniray::get(&counter.value()?)?);
    out(
        "task_nodes",
        nodes.into_iter().collect::<Vec<_>>().join(","),
    );
    match miniray::get(&on_old_head) {
        Ok(v) => out("old_object", format!("ok:{}", v.len())),
        Err(e) => out("old_object", crate::error_kind(&e)),
    }
    Ok(())
}
