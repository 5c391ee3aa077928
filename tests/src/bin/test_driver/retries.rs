//! Retry accounting scenarios: batches of short tasks (or actor calls) with a crashing one
//! among them, every execution counted in a file, so the test can check that only the task
//! that crashed paid for it and that nothing without retries ran twice.

use std::io::Write;
use std::time::Duration;

use miniray::{Error, ObjectRef};

use crate::{error_kind, out};

/// Appends one byte to `<dir>/<name>`: the file's length counts executions.
fn count_execution(dir: &str, name: &str) {
    let path = format!("{dir}/{name}");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path);
    match file {
        Ok(mut f) => {
            if let Err(e) = f.write_all(b"x") {
                panic!("counting {path}: {e}");
            }
        }
        Err(e) => panic!("counting {path}: {e}"),
    }
}

#[miniray::remote]
fn counted(dir: String, name: String, x: u64) -> u64 {
    count_execution(&dir, &name);
    x
}

#[miniray::remote]
fn counted_abort(dir: String, name: String) -> u64 {
    count_execution(&dir, &name);
    std::process::abort()
}

/// An actor whose calls count their executions; `crash` aborts its worker.
#[miniray::actor]
pub struct Tally;

#[miniray::actor]
impl Tally {
    pub fn new() -> Self {
        Tally
    }

    pub fn work(&self, dir: String, name: String, x: u64) -> u64 {
        count_execution(&dir, &name);
        x
    }

    pub fn crash(&self, dir: String, name: String) -> u64 {
        count_execution(&dir, &name);
        std::process::abort()
    }
}

/// Prints `<name>=<outcome>` for a finished task: `ok:<value>` or the error kind, with the
/// attempts a `WorkerDied` reports.
fn outcome(name: &str, r: miniray::Result<u64>) {
    match r {
        Ok(v) => out(name, format!("ok:{v}")),
        Err(Error::WorkerDied { attempts, .. }) => out(name, format!("worker_died:{attempts}")),
        Err(e) => out(name, error_kind(&e)),
    }
}

/// `rounds` rounds of: `before` short tasks, one that aborts its worker, `after` short
/// tasks, all submitted at once so that they travel in pipelined batches. Short tasks have
/// no retries; the crasher of round r has `r % 3` retries.
pub(crate) fn task_rounds(dir: &str, rounds: u64, before: u64, after: u64) -> anyhow::Result<()> {
    // Warm up: short tasks make the submitter pipeline them in batches.
    let warm: Vec<ObjectRef<u64>> = (0..300)
        .map(|i| counted::remote(dir.to_string(), "warm".to_string(), i))
        .collect::<Result<_, _>>()?;
    miniray::get_all(&warm)?;
    for round in 0..rounds {
        let short = |i: u64| {
            counted::options()
                .max_retries(0)
                .remote(dir.to_string(), format!("r{round}-t{i}"), i)
        };
        let mut refs = Vec::new();
        for i in 0..before {
            refs.push((format!("r{round}-t{i}"), short(i)?));
        }
        let crasher = counted_abort::options()
            .max_retries((round % 3) as u32)
            .remote(dir.to_string(), format!("r{round}-crash"))?;
        for i in before..before + after {
            refs.push((format!("r{round}-t{i}"), short(i)?));
        }
        for (name, r) in &refs {
            outcome(name, miniray::get(r));
        }
        outcome(&format!("r{round}-crash"), miniray::get(&crasher));
    }
    Ok(())
}

/// The same with actor calls: one actor restarted without limit, calls without retries,
/// and one call per round that aborts the actor's worker.
pub(crate) fn actor_rounds(dir: &str, rounds: u64, before: u64, after: u64) -> anyhow::Result<()> {
    let tally = Tally::options().max_restarts(-1).remote()?;
    for round in 0..rounds {
        let mut refs = Vec::new();
        for i in 0..before {
            let name = format!("a{round}-t{i}");
            refs.push((name.clone(), tally.work(dir.to_string(), name, i)?));
        }
        let crash = tally.crash(dir.to_string(), format!("a{round}-crash"))?;
        for i in before..before + after {
            let name = format!("a{round}-t{i}");
            refs.push((name.clone(), tally.work(dir.to_string(), name, i)?));
        }
        for (name, r) in &refs {
            outcome(name, miniray::get(r));
        }
        outcome(&format!("a{round}-crash"), miniray::get(&crash));
        // The next round starts on a restarted actor that is up.
        let ping = tally.work(dir.to_string(), "ping".to_string(), 0)?;
        miniray::get_timeout(&ping, Some(Duration::from_secs(60)))?;
    }
    Ok(())
}
