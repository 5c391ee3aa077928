//! `main` of the CLI's `harness = false` tests: one executable is the test runner, the
//! driver the tests start (`driver ARGS`), and that driver's workers (`MINIRAY_ROLE` set),
//! so the driver's remote functions are the test's own.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc::Receiver;
use std::time::Instant;

/// The lines `child` prints on its (piped) stdout, read on a thread of their own as they
/// come, so a test can wait for one with a deadline.
pub fn stdout_lines(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// The value of the next `key=VALUE` line of `lines`, if one comes within `deadline`.
pub fn next_value(
    lines: &Receiver<String>,
    key: &str,
    deadline: std::time::Duration,
) -> Option<String> {
    let end = Instant::now() + deadline;
    let prefix = format!("{key}=");
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).ok()?;
        if let Some(v) = line.strip_prefix(&prefix) {
            return Some(v.to_string());
        }
    }
}

/// A test: its name (positional arguments filter on it, as libtest's do) and its body.
pub type Test = (&'static str, fn());

/// Runs as a worker, as the driver, or as the test runner; exits non-zero on a failure.
pub fn run(tests: &[Test], driver: fn(&[String]) -> Result<(), String>) {
    // A worker of the driver: runs tasks and never returns.
    if std::env::var_os("MINIRAY_ROLE").is_some() {
        if let Err(e) = miniray::init() {
            eprintln!("worker: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("driver") {
        if let Err(e) = driver(&args[1..]) {
            eprintln!("driver: {e}");
            std::process::exit(1);
        }
        return;
    }
    // libtest-like: positional arguments filter by name; flags are ignored.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<&Test> = tests
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in &selected {
            println!("{name}: test");
        }
        return;
    }
    println!("running {} tests", selected.len());
    let mut failed = Vec::new();
    for (name, test) in selected {
        let start = Instant::now();
        let ok = std::panic::catch_unwind(test).is_ok();
        println!(
            "test {name} ... {} ({:?})",
            if ok { "ok" } else { "FAILED" },
            start.elapsed()
        );
        if !ok {
            failed.push(*name);
        }
    }
    if !failed.is_empty() {
        println!("failed: {failed:?}");
        std::process::exit(1);
    }
    println!("test result: ok");
}
