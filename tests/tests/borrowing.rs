//! Borrowed references: object references that travel inside values (task arguments, task
//! returns, actor state) keep their objects alive only while some process holds them, so a
//! long loop that passes them every iteration runs at flat plasma memory.

mod support;

use support::{Cluster, Options};

/// Iterations of the loop; each puts two objects of 120 KiB into plasma (a policy and a
/// trajectory), 2.3 GiB over the loop against a 256 MiB store: without borrower tracking
/// the store fills up long before the end.
const ITERATIONS: &str = "10000";

#[test]
fn references_passed_inside_values_are_freed_when_the_last_borrower_drops_them() {
    let mut cluster = Cluster::start(Options {
        object_store_memory: 256 << 20,
        ..Options::default()
    });
    let raylet = cluster.nodes[0].address.clone();
    let run = cluster.run_driver(&["borrow_loop", &raylet, ITERATIONS]);
    run.assert_success();
    let start: u64 = run.get("used_start").parse().expect("number");
    let end: u64 = run.get("used_end").parse().expect("number");
    assert_eq!(
        end,
        start,
        "plasma usage returns to its start while the driver still runs (loop took {} s, sampled peak {} bytes)",
        run.get("loop_secs"),
        run.get("used_peak_sampled")
    );
    assert!(
        cluster.stop().is_empty(),
        "segments or journals left behind"
    );
}

#[test]
fn actor_handles_passed_inside_values_keep_their_actor_alive_until_the_last_borrower_drops_them() {
    let mut cluster = Cluster::start(Options {
        head_cpus: 4.0,
        ..Options::default()
    });
    let run = cluster.run_driver(&["borrowed_actor_handles"]);
    run.assert_success();
    // Lent to an actor: alive while the keeper holds it, though its creator dropped its own.
    assert_eq!(run.get("lent_bump"), "1");
    assert_eq!(run.get("lent_state_while_borrowed"), "Alive");
    assert_eq!(run.get("lent_dead_after_forget"), "true");
    // Returned inside a value: alive while the driver holds it, ended when it drops it.
    assert_eq!(run.get("returned_incr"), "11");
    assert_eq!(run.get("returned_state_while_held"), "Alive");
    assert_eq!(run.get("returned_dead_after_drop"), "true");
    assert!(
        cluster.stop().is_empty(),
        "segments or journals left behind"
    );
}
