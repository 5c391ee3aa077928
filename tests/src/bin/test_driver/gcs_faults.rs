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
