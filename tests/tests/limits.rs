//! Limits a user sees as errors, not crashes: a node whose shared-memory folder fills up
//! under its object store answers `ObjectStoreFull`, and no process dies of `SIGBUS`.

mod support;

use miniray_plasma::testing::Tmpfs;
use support::{Cluster, Options};

#[test]
fn a_put_into_a_full_plasma_folder_is_object_store_full_and_nothing_dies() {
    // A 64 MiB tmpfs (Docker's /dev/shm) under a 48 MiB store, which fits at start.
    let tmpfs = Tmpfs::mount(64 << 20).expect("mount a tmpfs (needs root)");
    let mut cluster = Cluster::start(Options {
        head_cpus: 1.0,
        object_store_memory: 48 << 20,
        plasma_dir: Some(tmpfs.path().to_path_buf()),
        ..Options::default()
    });
    // Another user of the folder takes most of its memory after the raylet started.
    let filler = tmpfs.path().join("someone-else");
    std::fs::write(&filler, vec![1u8; 56 << 20]).expect("fill the tmpfs");

    let len = (16u64 << 20).to_string();
    let run = cluster.run_driver(&["shm_full", &filler.to_string_lossy(), &len]);
    run.assert_success();
    assert_eq!(run.get("full_put_kind"), "object_store_full");
    assert!(
        run.get("full_put_message")
            .contains(&tmpfs.path().display().to_string()),
        "{}",
        run.get("full_put_message")
    );
    // Reply journals live in the plasma folder too.
    assert!(
        run.get("journal_prefix")
            .starts_with(&tmpfs.path().display().to_string()),
        "{}",
        run.get("journal_prefix")
    );
    assert_eq!(run.get("journal_exists"), "true");
    assert_eq!(run.get("task_after_full"), "true");
    assert_eq!(run.get("after_free"), "true");

    assert!(cluster.all_alive(), "a daemon died");
    let left = cluster.stop();
    assert!(left.is_empty(), "left in the tmpfs: {left:?}");
}
