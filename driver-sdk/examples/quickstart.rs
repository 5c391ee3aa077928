//! The quickstart: fan out tasks, chain them through object references, nest tasks, and pass
//! a 200 MiB object through the object store.
//!
//! `cargo run --release --example quickstart` starts a private local cluster;
//! with `MINIRAY_ADDRESS=HOST:PORT` it runs on that cluster instead.

use std::time::Instant;

use miniray::ObjectRef;

#[miniray::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[miniray::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// A task that submits tasks of its own and waits for them.
#[miniray::remote]
fn sum_of_squares(n: u64) -> u64 {
    let refs: Vec<ObjectRef<u64>> = (0..n)
        .map(square::remote)
        .collect::<Result<_, _>>()
        .expect("submit nested tasks");
    miniray::get_all(&refs)
        .expect("nested results")
        .iter()
        .sum()
}

/// Reads a large object straight from the node's shared memory.
#[miniray::remote]
fn checksum(data: Vec<u8>) -> (u64, u64) {
    let sum = data.iter().map(|&b| u64::from(b)).sum();
    (data.len() as u64, sum)
}

fn main() -> miniray::Result<()> {
    // First thing in main: in a worker process this runs tasks and never returns.
    miniray::init()?;
    let start = Instant::now();

    let refs: Vec<ObjectRef<u64>> = (0..1000).map(square::remote).collect::<Result<_, _>>()?;
    let squares: Vec<u64> = miniray::get_all(&refs)?;
    println!(
        "1,000 tasks: sum of squares of 0..1000 = {}",
        squares.iter().sum::<u64>()
    );

    let r = square::remote(7)?;
    let chained = square::remote(&r)?;
    let both = add::remote(&r, &chained)?;
    println!(
        "chained: 7^2 = {}, (7^2)^2 = {}, sum = {}",
        miniray::get(&r)?,
        miniray::get(&chained)?,
        miniray::get(&both)?
    );

    let nested = sum_of_squares::remote(100)?;
    println!(
        "nested: a task that ran 100 tasks returned {}",
        miniray::get(&nested)?
    );

    let data: Vec<u8> = (0..200usize << 20).map(|i| (i % 251) as u8).collect();
    let expected: u64 = data.iter().map(|&b| u64::from(b)).sum();
    let big = miniray::put(data)?;
    let (len, sum) = miniray::get(&checksum::remote(&big)?)?;
    assert_eq!(
        (len, sum),
        ((200u64 << 20), expected),
        "checksum of the 200 MiB object"
    );
    println!("200 MiB object: {len} bytes, checksum {sum} (matches)");

    println!(
        "done in {:.2?} on node {}",
        start.elapsed(),
        miniray::node_id()?
    );
    miniray::shutdown();
    Ok(())
}
