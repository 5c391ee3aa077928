//! Long-lived daemons keep bounded memory: 200 short jobs against one cluster leave the
//! GCS and raylet resident sizes flat, the GCS keeps only the last dead actors, the
//! executable of a finished job is gone from the GCS, and the raylet keeps finished jobs'
//! executables only within its cache budget.

mod support;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use miniray_proto::{ActorState, GetAllActorsRequest, GetAllJobsRequest, HasExecutableRequest};
use support::{Cluster, DRIVER, DriverRun, Options, wait_until};

/// Jobs run in all, and before the first memory reading (allocator pools, thread stacks
/// and connection buffers reach their working size in those).
const JOBS: usize = 200;
const WARMUP: usize = 20;
/// Drivers running at once.
const PARALLEL: usize = 2;
/// Every this many jobs, the driver runs from a fresh copy of the executable with bytes
/// appended (a developer who rebuilds and reruns): each copy is a new executable to store.
const NEW_EXECUTABLE_EVERY: usize = 20;
/// Dead actors the GCS of this test keeps.
const DEAD_ACTORS_KEPT: usize = 16;
/// glibc's malloc raises its mmap threshold each time a large block is freed, so the
/// multi-MiB transfer buffers of executables (about 80 MiB each) end up in heap arenas that
/// it keeps resident: drift of 10–20 MiB per 90 jobs, in both directions, that says nothing
/// about miniray's own tables. A fixed threshold (which also turns that adjustment off)
/// maps every buffer of 1 MiB or more on its own and unmaps it when freed, so the readings
/// follow what the daemons hold.
const MALLOC_ENV: (&str, &str) = ("MALLOC_MMAP_THRESHOLD_", "1048576");
/// Allowed growth of each daemon's resident size from the warm-up to the end, and over the
/// second half of the jobs. Keeping one stored executable per rebuilt job (the old behaviour) exceeds
/// the first bound many times over; steady growth above about 180 KiB per job exceeds
/// the second.
const RSS_TOLERANCE_KIB: u64 = 32 << 10;
const RSS_SECOND_HALF_TOLERANCE_KIB: u64 = 16 << 10;
/// The raylet's budget for unused executables in the 200-job test: a few of the rebuilt
/// copies, so that old ones are removed on the way.
const CACHE_BUDGET_200_JOBS: u64 = 256 << 20;

#[test]
fn two_hundred_short_jobs_leave_daemon_memory_flat() {
    let start = Instant::now();
    let scratch = Scratch::new();
    let mut cluster = Cluster::start(Options {
        max_destroyed_actors: Some(DEAD_ACTORS_KEPT),
        daemon_env: vec![(MALLOC_ENV.0.into(), MALLOC_ENV.1.into())],
        executable_cache_bytes: Some(CACHE_BUDGET_200_JOBS),
        ..Default::default()
    });
    let gcs_pid = cluster.gcs_pid().expect("gcs runs");
    let raylet_pid = cluster.node_pid(0).expect("raylet runs");

    run_jobs(&cluster, &scratch, 0..WARMUP);
    settle(&cluster);
    let (gcs_before, raylet_before) = (rss_kib(gcs_pid), rss_kib(raylet_pid));
    let half = (WARMUP + JOBS) / 2;
    run_jobs(&cluster, &scratch, WARMUP..half);
    settle(&cluster);
    let (gcs_half, raylet_half) = (rss_kib(gcs_pid), rss_kib(raylet_pid));
    run_jobs(&cluster, &scratch, half..JOBS);
    settle(&cluster);
    let (gcs_after, raylet_after) = (rss_kib(gcs_pid), rss_kib(raylet_pid));
    eprintln!(
        "VmRSS after {WARMUP}, {half} and {JOBS} jobs ({:?}): gcs {gcs_before} -> {gcs_half} -> {gcs_after} KiB, raylet {raylet_before} -> {raylet_half} -> {raylet_after} KiB",
        start.elapsed()
    );
    assert!(
        gcs_after <= gcs_half + RSS_SECOND_HALF_TOLERANCE_KIB,
        "gcs grew from {gcs_half} to {gcs_after} KiB over the last {} jobs",
        JOBS - half
    );
    assert!(
        raylet_after <= raylet_half + RSS_SECOND_HALF_TOLERANCE_KIB,
        "raylet grew from {raylet_half} to {raylet_after} KiB over the last {} jobs",
        JOBS - half
    );
    assert!(
        gcs_after <= gcs_before + RSS_TOLERANCE_KIB,
        "gcs grew from {gcs_before} to {gcs_after} KiB over {} jobs",
        JOBS - WARMUP
    );
    assert!(
        raylet_after <= raylet_before + RSS_TOLERANCE_KIB,
        "raylet grew from {raylet_before} to {raylet_after} KiB over {} jobs",
        JOBS - WARMUP
    );

    // Every job's actor died with its job; only the last few are remembered.
    let actors = cluster
        .gcs_call(async |gcs| {
            Ok(gcs
                .get_all_actors(GetAllActorsRequest {})
                .await?
                .into_inner()
                .actors)
        })
        .expect("actors listed");
    assert_eq!(actors.len(), DEAD_ACTORS_KEPT, "actors kept by the gcs");
    assert!(actors.iter().all(|a| a.state() == ActorState::Dead));

    assert!(cluster.stop().is_empty(), "plasma segments left behind");
}

#[test]
fn without_a_cache_budget_the_executable_of_a_finished_job_is_removed() {
    let scratch = Scratch::new();
    let mut cluster = Cluster::start(Options {
        executable_cache_bytes: Some(0),
        unused_executable_ttl: Some(Duration::ZERO),
        ..Default::default()
    });
    // A job of the usual executable first: it stays in use by nobody after this, so the
    // rebuilt one below is the only executable a running job needs.
    cluster.run_driver(&["short_job"]).assert_success();

    let exe = scratch.rebuilt_driver(1);
    let hold = scratch.dir.join("hold");
    std::fs::create_dir_all(&hold).expect("hold folder");
    let driver = cluster.spawn_driver_from(&exe, &["short_job", path_str(&hold)]);
    let mut driver = Running(Some(driver));
    wait_until("the rebuilt job to run", Duration::from_secs(120), || {
        hold.join("ready").exists() || driver.exited()
    });
    assert!(!driver.exited(), "the rebuilt job's driver exited early");
    let hash = {
        let jobs = cluster
            .gcs_call(async |gcs| {
                Ok(gcs
                    .get_all_jobs(GetAllJobsRequest {})
                    .await?
                    .into_inner()
                    .jobs)
            })
            .expect("jobs listed");
        let running: Vec<_> = jobs.into_iter().filter(|j| !j.finished).collect();
        assert_eq!(running.len(), 1, "one running job: the rebuilt one");
        running[0].executable_hash.clone()
    };
    let has = |hash: &str| {
        let hash = hash.to_string();
        cluster
            .gcs_call(async move |gcs| {
                Ok(gcs
                    .has_executable(HasExecutableRequest { hash })
                    .await?
                    .into_inner()
                    .present)
            })
            .expect("has_executable answers")
    };
    let cached = raylet_cache(&hash);
    assert!(has(&hash), "the running job's executable is stored");
    assert!(cached.is_file(), "{} is cached", cached.display());

    std::fs::write(hold.join("go"), b"").expect("go marker");
    let run = DriverRun::wait(driver.take(), support::DRIVER_DEADLINE);
    run.assert_success();
    // MarkJobFinished removes it before it answers.
    assert!(!has(&hash), "the finished job's executable is still stored");
    wait_until(
        "the raylet to remove the finished job's executable",
        Duration::from_secs(30),
        || !cached.exists(),
    );

    // The executable runs again after that: uploaded anew, fetched anew.
    cluster
        .spawn_driver_from(&exe, &["short_job"])
        .wait_with_output()
        .map(|o| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr)))
        .expect("rerun of the rebuilt job");
    assert!(cluster.stop().is_empty(), "plasma segments left behind");
}

#[test]
fn finished_jobs_executables_stay_cached_within_the_budget() {
    use std::os::unix::fs::MetadataExt;
    let scratch = Scratch::new();
    let (first, second) = (scratch.rebuilt_driver(1), scratch.rebuilt_driver(2));
    let size = std::fs::metadata(&first).expect("copy written").len();
    // Room for one unused executable, not two.
    let mut cluster = Cluster::start(Options {
        executable_cache_bytes: Some(size * 3 / 2),
        ..Default::default()
    });
    let hash_of = |exe: &Path| {
        blake3::hash(&std::fs::read(exe).expect("copy readable"))
            .to_hex()
            .to_string()
    };
    let (first_cached, second_cached) = (
        raylet_cache(&hash_of(&first)),
        raylet_cache(&hash_of(&second)),
    );
    let run = |exe: &Path| {
        let run = DriverRun::wait(
            cluster.spawn_driver_from(exe, &["short_job"]),
            support::DRIVER_DEADLINE,
        );
        run.assert_success();
    };
    run(&first);
    run(&second);
    // Both jobs ended; the first executable is the least recently released, and the two
    // exceed the budget, so it goes once the raylet has released the second.
    wait_until(
        "the raylet to remove the older unused executable",
        Duration::from_secs(30),
        || !first_cached.exists(),
    );
    let identity =
        |path: &Path| std::fs::metadata(path).map(|m| (m.ino(), m.mtime(), m.mtime_nsec()));
    let kept = identity(&second_cached).expect("the newer unused executable is kept");
    // Run again, its workers start from the kept file: not fetched and written anew.
    run(&second);
    assert_eq!(
        identity(&second_cached).ok(),
        Some(kept),
        "the kept executable was fetched again"
    );
    assert!(cluster.stop().is_empty(), "plasma segments left behind");
}

#[test]
fn the_submitter_forgets_shapes_no_longer_in_use() {
    let mut cluster = Cluster::start(Options::default());
    let run = cluster.run_driver(&["many_shapes"]);
    run.assert_success();
    assert_eq!(
        run.get("sum"),
        (0..40u64).map(|i| i * i).sum::<u64>().to_string()
    );
    assert_eq!(run.get("keys_after"), "0", "{}", run.stdout);
    assert!(cluster.stop().is_empty(), "plasma segments left behind");
}

/// Runs the jobs numbered `range`, `PARALLEL` at a time; every one must succeed.
fn run_jobs(cluster: &Cluster, scratch: &Scratch, range: std::ops::Range<usize>) {
    let mut running: Vec<(usize, Child, Option<PathBuf>)> = Vec::new();
    let mut next = range.start;
    while next < range.end || !running.is_empty() {
        while running.len() < PARALLEL && next < range.end {
            let copy = (next % NEW_EXECUTABLE_EVERY == NEW_EXECUTABLE_EVERY - 1)
                .then(|| scratch.rebuilt_driver(next));
            let exe = copy.as_deref().unwrap_or(Path::new(DRIVER));
            running.push((next, cluster.spawn_driver_from(exe, &["short_job"]), copy));
            next += 1;
        }
        let (job, child, copy) = running.remove(0);
        let run = DriverRun::wait(child, support::DRIVER_DEADLINE);
        assert!(
            run.success,
            "job {job} failed\n--- stdout\n{}\n--- stderr\n{}",
            run.stdout, run.stderr
        );
        assert_eq!(run.get("squares"), "140");
        assert_eq!(run.get("counter"), "3");
        if let Some(copy) = copy {
            let _ = std::fs::remove_file(copy);
        }
    }
}

/// Waits until the jobs' workers are gone, so both readings see the same idle cluster.
fn settle(cluster: &Cluster) {
    wait_until(
        "the workers of finished jobs to exit",
        Duration::from_secs(60),
        || {
            cluster
                .nodes_info()
                .first()
                .is_some_and(|n| n.num_workers == 0 && n.num_leased_workers == 0)
        },
    );
}

/// Resident set size of a process, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read the status of process {pid}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}

/// Where raylets on this machine cache the executable `hash`.
fn raylet_cache(hash: &str) -> PathBuf {
    miniray_common::config::tmp_root()
        .join("executables")
        .join(hash)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A folder of this test's files, removed at the end with what raylets cached of the
/// rebuilt drivers in it.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "miniray-bounded-{}-{}",
            std::process::id(),
            miniray_common::NodeId::random().hex()
        ));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Scratch { dir }
    }

    /// A copy of the test driver with bytes appended: it runs the same, hashes differently.
    fn rebuilt_driver(&self, n: usize) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(format!("test-driver-{n}"));
        let mut bytes = std::fs::read(DRIVER).expect("test driver readable");
        bytes.extend_from_slice(format!("rebuild {n} {:?}", self.dir).as_bytes());
        std::fs::write(&path, bytes).expect("copy written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("copy executable");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                let _ = std::fs::remove_file(raylet_cache(&blake3::hash(&bytes).to_hex()));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A driver that is killed if the test fails before it exits.
struct Running(Option<Child>);

impl Running {
    fn exited(&mut self) -> bool {
        self.0
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    fn take(&mut self) -> Child {
        self.0.take().expect("driver still held")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
