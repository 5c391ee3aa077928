//! The main example as a user runs it: `rl_rollouts` on its private local cluster, rollouts
//! on actors. A real learning check on a small budget, and reproducibility across actor
//! counts (every episode is seeded, whichever actor runs it).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The example binary `cargo test` built beside this test (`target/<profile>/examples/`;
/// a plain `cargo test` builds every example, `cargo test --test rl_rollouts` alone does not).
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let binary = profile_dir.join("examples").join("rl_rollouts");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo test` without a target filter, or `cargo build --example rl_rollouts`",
        binary.display()
    );
    binary
}

/// (mean_return, mean_return_last100) per iteration, from the CSV the example wrote.
fn read_curve(csv: &Path) -> Vec<(f64, f64)> {
    let text = std::fs::read_to_string(csv).expect("csv written");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("csv header").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("csv has no {name} column: {header:?}"))
    };
    let (mean, last100) = (col("mean_return"), col("mean_return_last100"));
    lines
        .map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            (
                fields[mean].parse().expect("a number"),
                fields[last100].parse().expect("a number"),
            )
        })
        .collect()
}

fn train(actors: usize, out: &Path) -> Vec<(f64, f64)> {
    let output = Command::new(example_binary())
        .args(["--max-env-steps", "120000", "--seed", "3", "--actors"])
        .arg(actors.to_string())
        .arg("--out-dir")
        .arg(out)
        .env_remove("MINIRAY_ADDRESS")
        .env_remove("MINIRAY_ROLE")
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "rl_rollouts failed\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("{actors} rollout actor(s) up")),
        "{stdout}"
    );
    let png = std::fs::metadata(out.join("learning_curve.png")).expect("png written");
    assert!(png.len() > 10_000, "the plot is {} bytes", png.len());
    read_curve(&out.join("learning_curve.csv"))
}

#[test]
fn rollouts_on_actors_learn_cartpole_and_are_reproducible() {
    let dir = tempfile::tempdir().expect("temp dir");
    let two = train(2, &dir.path().join("two"));
    let first = two.first().expect("at least one iteration").0;
    let (_, last100) = *two.last().expect("at least one iteration");
    // A random linear policy balances for ~10 steps; 120k steps of ES must lift the mean over
    // the last 100 evaluation episodes far above that.
    assert!(
        last100 >= 150.0 && last100 >= 3.0 * first,
        "no clear learning: first generation {first}, last-100 mean {last100}"
    );
    // The same seed on one actor gives the same curve: results do not depend on placement.
    let one = train(1, &dir.path().join("one"));
    assert_eq!(one, two);
}
