//! Scenarios of the bounded-memory tests: short jobs run by the hundred against one cluster,
//! and a driver that goes through many task shapes.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::actors::Counter;
use crate::{out, square};

/// Runs a scenario of this module; false if `scenario` is not one.
pub(crate) fn run(scenario: &str) -> anyhow::Result<bool> {
    match scenario {
        "short_job" => short_job(std::env::args().nth(2).as_deref())?,
        "many_shapes" => many_shapes()?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// A few tasks, an actor created and called, a small and a plasma-sized object put and
/// read. With `hold`, writes `<hold>/ready` when done and waits for `<hold>/go` before it
/// exits, so the test can look at the cluster while the job runs.
fn short_job(hold: Option<&str>) -> anyhow::Result<()> {
    let refs: Vec<_> = (0..8).map(square::remote).collect::<Result<_, _>>()?;
    let squares: u64 = miniray::get_all(&refs)?.iter().sum();
    out("squares", squares);
    let counter = Counter::remote(1)?;
    miniray::get(&counter.incr(2)?)?;
    out("counter", miniray::get(&counter.value()?)?);
    let small = miniray::put(vec![7u8; 1000])?;
    let large = miniray::put(vec![9u8; 256 << 10])?;
    out(
        "objects",
        miniray::get(&small)?.len() + miniray::get(&large)?.len(),
    );
    if let Some(dir) = hold {
        let dir = Path::new(dir);
        std::fs::write(dir.join("ready"), b"")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !dir.join("go").exists() {
            anyhow::ensure!(Instant::now() < deadline, "never told to go on");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Tasks of 40 resource shapes, then the submitter's state once their leases lingered out:
/// it must keep nothing for shapes no longer in use.
fn many_shapes() -> anyhow::Result<()> {
    const SHAPES: u32 = 40;
    let refs: Vec<_> = (0..SHAPES)
        .map(|i| {
            square::options()
                .num_cpus(0.5 + f64::from(i) / 100.0)
                .remote(u64::from(i))
        })
        .collect::<Result<_, _>>()?;
    out("sum", miniray::get_all(&refs)?.iter().sum::<u64>());
    out("keys_busy", miniray::__debug::submitter_keys()?);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut keys = miniray::__debug::submitter_keys()?;
    while keys > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        keys = miniray::__debug::submitter_keys()?;
    }
    out("keys_after", keys);
    Ok(())
}
