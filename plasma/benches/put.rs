//! Put throughput: create + copy into the object through a client mapping + seal.
//!
//! The store is prefaulted (as a raylet configures it for speed). `put` reuses one client
//! mapping, as a long-lived worker does; `put_fresh_mapping` maps the segment anew for each
//! put (untimed), so every page of the object is first touched by this mapping, as in a
//! worker's first put. `memcpy` is the baseline: the same copy between two warm buffers.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use miniray_common::ObjectId;
use miniray_plasma::{PlasmaStore, SegmentMapping, StoreConfig};

const MIB: usize = 1 << 20;

fn store(capacity: u64) -> PlasmaStore {
    let mut cfg = StoreConfig::new(
        capacity,
        format!(
            "miniray-plasma-bench-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ),
    );
    cfg.prefault = true;
    match PlasmaStore::create_segment(cfg) {
        Ok(s) => s,
        Err(e) => panic!("cannot create bench segment: {e}"),
    }
}

fn put(store: &PlasmaStore, mapping: &SegmentMapping, src: &[u8]) {
    let id = ObjectId::random();
    let loc = store.create(id, src.len() as u64, true).expect("create");
    // SAFETY: the object was just created here, is unsealed, and this is its only view.
    let dst = unsafe { mapping.slice_mut(loc) }.expect("slice_mut");
    dst.copy_from_slice(src);
    store.seal(id).expect("seal");
    black_box(loc);
    store.delete(id);
}

fn bench(c: &mut Criterion) {
    let store = store(1 << 30);
    let mapping = SegmentMapping::open(store.segment_path()).expect("open mapping");
    for (size, label) in [(MIB, "1MiB"), (100 * MIB, "100MiB"), (800 * MIB, "800MiB")] {
        let src = vec![0x5au8; size];
        let mut group = c.benchmark_group(format!("put_{label}"));
        group.throughput(Throughput::Bytes(size as u64));
        if size >= 100 * MIB {
            group.sample_size(10);
            group.measurement_time(Duration::from_secs(if size > 100 * MIB { 15 } else { 5 }));
        }
        group.bench_function("memcpy", |b| {
            let mut dst = vec![0u8; size];
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&dst);
            })
        });
        group.bench_function("put", |b| b.iter(|| put(&store, &mapping, &src)));
        if size <= 100 * MIB {
            group.bench_function("put_fresh_mapping", |b| {
                b.iter_batched(
                    || SegmentMapping::open(store.segment_path()).expect("open mapping"),
                    |fresh| put(&store, &fresh, &src),
                    BatchSize::PerIteration,
                )
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
