//! Running a benchmark command of the real binary and reading its `metric value` lines
//! (shared by the microbenchmark and scale-bench tests, included by path).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MINIRAY: &str = env!("CARGO_BIN_EXE_miniray");

/// Runs `miniray <args>` under a temp root of its own, with no cluster in the environment,
/// killed after `limit`; asserts that it succeeded and returns its `name value` lines in
/// order, with its whole stdout (for messages).
pub fn run_bench(args: &[&str], limit: Duration) -> (Vec<(String, f64)>, String) {
    let tmp = std::env::temp_dir().join(format!(
        "miniray-bench-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&tmp).expect("temp root");
    let mut child = Command::new(MINIRAY)
        .args(args)
        .env("MINIRAY_TMPDIR", &tmp)
        .env_remove("MINIRAY_ADDRESS")
        .env_remove("MINIRAY_TOKEN")
        .env_remove("MINIRAY_ROLE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start miniray");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        out.status.success(),
        "miniray {args:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    let printed = stdout
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect();
    (printed, stdout)
}
