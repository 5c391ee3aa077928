//! Scenarios of `tests/plasma_memory.rs`: processes that leave plasma memory behind, for
//! the raylet to give back when they die or their job ends.

use std::time::{Duration, Instant};

use miniray::ObjectRef;

use crate::{out, pattern};

const MIB: usize = 1 << 20;

/// Records that it started (creates `marker`), then holds its argument's plasma pin for
/// `ms` milliseconds.
#[miniray::remote]
fn hold_arg(data: Vec<u8>, marker: String, ms: u64) -> u64 {
    let _ = std::fs::write(&marker, b"started");
    std::thread::sleep(Duration::from_millis(ms));
    data.len() as u64
}

/// Puts a value in this worker's store and returns its reference inside a value: the
/// worker owns it and the caller borrows it, so it lives until the caller drops it or is
/// gone (or the job ends).
#[miniray::remote]
fn put_inside(len: u64, seed: u8) -> Vec<ObjectRef<Vec<u8>>> {
    let r = miniray::put(pattern(len as usize, seed)).unwrap_or_else(|e| panic!("put: {e}"));
    vec![r]
}

/// Puts `count` objects of 10 MiB owned by the driver and pins each in plasma.
fn put_and_pin(count: u8) -> anyhow::Result<Vec<ObjectRef<Vec<u8>>>> {
    let mut refs = Vec::new();
    for i in 0..count {
        let r = miniray::put(pattern(10 * MIB, i))?;
        anyhow::ensure!(
            miniray::__private::hold_plasma_pin(&r)?,
            "object {i} is not in this node's store"
        );
        refs.push(r);
    }
    Ok(refs)
}

/// Runs `scenario` if it is one of these; `false` if unknown.
pub(crate) fn run(scenario: &str) -> anyhow::Result<bool> {
    match scenario {
        "hold_plasma" => {
            // Driver-owned primary copies with driver read pins, a worker pinning one as its
            // argument, and a worker-owned object the driver borrows; then wait to be killed.
            let dir = std::env::args().nth(2).unwrap_or_default();
            let refs = put_and_pin(4)?;
            let marker = format!("{dir}/hold_arg-started");
            let _held = hold_arg::remote(&refs[0], marker.clone(), 600_000)?;
            let inner = miniray::get(&put_inside::remote(10 * MIB as u64, 9)?)?;
            anyhow::ensure!(miniray::get(&inner[0])?.len() == 10 * MIB);
            let deadline = Instant::now() + Duration::from_secs(60);
            while std::fs::metadata(&marker).is_err() {
                anyhow::ensure!(Instant::now() < deadline, "hold_arg did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            out("ready", 1);
            // Killed by the test; bounded so a lost test cannot leave it behind forever.
            std::thread::sleep(Duration::from_secs(600));
            Ok(true)
        }
        "plasma_job_ends" => {
            // The same memory, but the driver returns normally; its pins are released only
            // because its job ends.
            let refs = put_and_pin(3)?;
            let inner = miniray::get(&put_inside::remote(10 * MIB as u64, 7)?)?;
            anyhow::ensure!(miniray::get(&inner[0])?.len() == 10 * MIB);
            out("pinned", refs.len());
            Ok(true)
        }
        _ => Ok(false),
    }
}
