//! A finished command as the CLI's tests look at it.

#![allow(dead_code)]

/// A command that ran to its end: its exit code and output.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Everything about the run, for an assertion's message.
    pub fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The value of the first `key=VALUE` line of its stdout.
    pub fn value(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }
}

/// After a test: its files are kept, and named with how `stop` went, when it failed
/// (panicking); removed otherwise.
pub fn keep_if_failed(root: &std::path::Path, stop: &Run) {
    if std::thread::panicking() {
        eprintln!(
            "miniray files kept in {}\n{}",
            root.display(),
            stop.describe()
        );
    } else {
        let _ = std::fs::remove_dir_all(root);
    }
}

impl From<std::process::Output> for Run {
    fn from(output: std::process::Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}
