//! Behaviour of the plasma store and of client mappings, on real `/dev/shm` segments.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use miniray_common::{ErrorCode, ObjectId, WorkerId};
use miniray_plasma::{ObjectLocation, PlasmaError, PlasmaStore, SegmentMapping, StoreConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A config with a name unique to this process and call.
fn config(capacity: u64) -> StoreConfig {
    let name = format!(
        "miniray-plasma-test-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    );
    StoreConfig::new(capacity, name)
}

fn new_store(capacity: u64) -> PlasmaStore {
    PlasmaStore::create_segment(config(capacity)).expect("create segment")
}

/// Drops the store and checks it left no file behind.
fn finish(store: PlasmaStore) {
    let path = store.segment_path().to_path_buf();
    assert!(path.exists());
    drop(store);
    assert!(!path.exists(), "segment {} left behind", path.display());
}

fn put(store: &PlasmaStore, id: ObjectId, data: &[u8], primary: bool) -> ObjectLocation {
    store
        .create(id, data.len() as u64, primary)
        .expect("create");
    store.write(id, 0, data).expect("write");
    store.seal(id).expect("seal")
}

#[test]
fn store_and_mapping_are_thread_safe_types() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PlasmaStore>();
    assert_send_sync::<SegmentMapping>();
}

#[test]
fn a_sealed_view_reads_in_place_and_keeps_its_bytes_until_dropped() {
    let store = Arc::new(new_store(1 << 20));
    let id = ObjectId::random();
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    store.create(id, data.len() as u64, true).unwrap();
    assert!(matches!(
        store.sealed_view(id, 0, 1),
        Err(PlasmaError::NotSealed(_))
    ));
    store.write(id, 0, &data).unwrap();
    store.seal(id).unwrap();

    let view = store.sealed_view(id, 100, 1000).unwrap();
    assert_eq!(view.as_ref(), &data[100..1100]);
    let oob = store.sealed_view(id, 4999, 2).unwrap_err();
    assert_eq!(oob.code(), ErrorCode::InvalidArgument);
    // Deleted while viewed: gone for new readers, its bytes and room kept for the view.
    let used = store.used();
    assert!(store.delete(id));
    assert!(!store.contains(id));
    assert!(store.sealed_view(id, 0, 1).is_err());
    assert_eq!(store.used(), used);
    assert_eq!(view.as_ref(), &data[100..1100]);
    drop(view);
    assert_eq!(store.used(), 0);
    let Ok(store) = Arc::try_unwrap(store) else {
        panic!("the view still holds the store");
    };
    finish(store);
}

#[test]
fn a_written_view_serves_an_unsealed_object_and_outlives_its_abort() {
    let store = Arc::new(new_store(1 << 20));
    let id = ObjectId::random();
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 253) as u8).collect();
    store.create(id, 8192, false).unwrap();
    store.write(id, 0, &data).unwrap();
    let view = store.written_view(id, 0, data.len()).unwrap();
    assert_eq!(view.as_ref(), &data[..]);
    assert!(store.sealed_view(id, 0, 1).is_err(), "not sealed yet");
    let used = store.used();
    store.abort(id).unwrap();
    assert!(
        store.written_view(id, 0, 1).is_err(),
        "aborted: gone for new views"
    );
    assert_eq!(store.used(), used, "the view keeps the bytes");
    assert_eq!(view.as_ref(), &data[..]);
    drop(view);
    assert_eq!(store.used(), 0);
    let Ok(store) = Arc::try_unwrap(store) else {
        panic!("the view still holds the store");
    };
    finish(store);
}

#[test]
fn lifecycle_create_write_seal_get_release_delete() {
    let store = new_store(1 << 20);
    let id = ObjectId::random();
    let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();

    let loc = store.create(id, data.len() as u64, true).unwrap();
    assert_eq!(loc.size, 1000);
    assert_eq!(loc.offset % 64, 0);
    assert_eq!(store.used(), 1024);
    assert_eq!(store.num_objects(), 1);

    // Unsealed: invisible to readers, refuses reads, accepts bounded writes.
    assert_eq!(store.get(id), None);
    assert!(!store.contains(id));
    assert!(matches!(
        store.read_sealed(id, 0, 1),
        Err(PlasmaError::NotSealed(_))
    ));
    store.write(id, 0, &data[..500]).unwrap();
    store.write(id, 500, &data[500..]).unwrap();
    let oob = store.write(id, 990, &[0; 11]).unwrap_err();
    assert!(matches!(
        oob,
        PlasmaError::OutOfBounds {
            offset: 990,
            len: 11,
            size: 1000
        }
    ));
    assert_eq!(oob.code(), ErrorCode::InvalidArgument);
    let dup = store.create(id, 10, true).unwrap_err();
    assert!(matches!(dup, PlasmaError::AlreadyExists(d) if d == id));
    assert_eq!(dup.code(), ErrorCode::AlreadyExists);

    assert_eq!(store.seal(id).unwrap(), loc);
    assert!(matches!(store.seal(id), Err(PlasmaError::AlreadySealed(_))));
    assert!(matches!(
        store.write(id, 0, &[1]),
        Err(PlasmaError::AlreadySealed(_))
    ));
    assert!(matches!(
        store.abort(id),
        Err(PlasmaError::AlreadySealed(_))
    ));

    assert!(store.contains(id));
    assert_eq!(store.get(id), Some(loc));
    assert_eq!(store.read_sealed(id, 0, 1000).unwrap(), data);
    assert_eq!(store.read_sealed(id, 10, 5).unwrap(), &data[10..15]);
    assert!(store.read_sealed(id, 999, 2).is_err());
    let sum = store
        .read_sealed_with(id, 0, 1000, |b| b.iter().map(|&x| x as u64).sum::<u64>())
        .unwrap();
    assert_eq!(sum, data.iter().map(|&x| x as u64).sum::<u64>());
    store.release(id);

    let stats = store.stats();
    assert_eq!(
        (stats.num_objects, stats.num_sealed, stats.pinned),
        (1, 1, 1024)
    );
    assert!(store.delete(id));
    assert!(!store.delete(id));
    assert!(!store.contains(id));
    assert_eq!(store.used(), 0);
    assert_eq!(store.num_objects(), 0);
    let missing = store.read_sealed(id, 0, 1).unwrap_err();
    assert_eq!(missing.code(), ErrorCode::NotFound);

    // Abort frees an unsealed object and its id can be used again.
    store.create(id, 100, true).unwrap();
    store.abort(id).unwrap();
    assert!(matches!(store.abort(id), Err(PlasmaError::NotFound(_))));
    assert_eq!(store.used(), 0);
    store.create(id, 100, true).unwrap();
    finish(store);
}

#[test]
fn zero_size_objects_work() {
    let store = new_store(4096);
    let id = ObjectId::random();
    let loc = put(&store, id, &[], true);
    assert_eq!(loc.size, 0);
    assert_eq!(store.used(), 0);
    assert_eq!(store.get(id), Some(loc));
    assert_eq!(store.read_sealed(id, 0, 0).unwrap(), Vec::<u8>::new());
    let mapping = SegmentMapping::open(store.segment_path()).unwrap();
    assert!(mapping.slice(loc).unwrap().is_empty());
    store.release(id);
    assert!(store.delete(id));
    assert_eq!(store.num_objects(), 0);
    finish(store);
}

#[tokio::test(flavor = "current_thread")]
async fn wait_get_wakes_on_seal_and_times_out_otherwise() {
    let store = Arc::new(new_store(1 << 20));
    let ready = ObjectId::random();
    let later = ObjectId::random();
    let never = ObjectId::random();
    put(&store, ready, b"ready", true);
    store.create(later, 5, true).unwrap();

    {
        // Pending while `later` is unsealed (bounded check, no sleeping).
        let ids = [ready, later];
        let fut = store.wait_get(&ids, Duration::from_secs(60));
        tokio::pin!(fut);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut fut)
                .await
                .is_err()
        );

        // Sealing from another thread wakes it well before its timeout.
        let sealer = {
            let store = store.clone();
            std::thread::spawn(move || {
                store.write(later, 0, b"later").unwrap();
                store.seal(later).unwrap();
            })
        };
        let started = Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(20), fut)
            .await
            .expect("woken by seal");
        sealer.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(got.iter().all(Option::is_some));
    }
    assert_eq!(store.read_sealed(later, 0, 5).unwrap(), b"later");

    // Times out on what never appears, still answering (and pinning) what is there.
    let started = Instant::now();
    let got = store
        .wait_get(&[ready, never], Duration::from_millis(100))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(got[0].is_some() && got[1].is_none());

    // Zero timeout answers at once.
    let got = store.wait_get(&[never], Duration::ZERO).await;
    assert_eq!(got, vec![None]);

    // `ready` now has two reader pins, `later` one: deletion waits for all of them.
    assert!(store.delete(ready));
    assert!(store.delete(later));
    assert_eq!(store.num_objects(), 2);
    store.release(later);
    store.release(ready);
    assert_eq!(store.num_objects(), 1);
    store.release(ready);
    assert_eq!(store.num_objects(), 0);
    assert_eq!(store.used(), 0);
    let store = Arc::try_unwrap(store).expect("sole owner");
    finish(store);
}

#[tokio::test(flavor = "current_thread")]
async fn dropped_wait_get_releases_its_pins() {
    let store = new_store(1 << 20);
    let ready = ObjectId::random();
    let missing = ObjectId::random();
    put(&store, ready, b"x", false);
    assert_eq!(store.stats().pinned, 0);
    {
        let ids = [ready, missing];
        let fut = store.wait_get(&ids, Duration::from_secs(60));
        tokio::pin!(fut);
        // It has pinned `ready` and waits for `missing`; then it is cancelled.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut fut)
                .await
                .is_err()
        );
        assert_eq!(store.stats().pinned, 64);
    }
    // No pin left behind: the copy is evictable again and deletion is immediate.
    assert_eq!(store.stats().pinned, 0);
    assert!(store.delete(ready));
    assert_eq!(store.num_objects(), 0);
    finish(store);
}

#[test]
fn reader_pins_defer_deletion_until_the_last_release() {
    let store = new_store(1 << 20);
    let id = ObjectId::random();
    let loc = put(&store, id, b"pinned bytes", true);
    let mapping = SegmentMapping::open(store.segment_path()).unwrap();
    assert_eq!(store.get(id), Some(loc));
    assert_eq!(store.get(id), Some(loc));

    assert!(store.delete(id));
    // Invisible to new readers at once, but the bytes stay for the current ones.
    assert!(!store.contains(id));
    assert_eq!(store.get(id), None);
    assert!(!store.delete(id));
    assert_eq!(store.used(), 64);
    assert_eq!(mapping.slice(loc).unwrap(), b"pinned bytes");
    assert!(matches!(
        store.create(id, 1, true),
        Err(PlasmaError::AlreadyExists(_))
    ));

    store.release(id);
    assert_eq!(store.used(), 64);
    store.release(id);
    assert_eq!(store.used(), 0);
    assert_eq!(store.num_objects(), 0);
    // A stray release is harmless.
    store.release(id);
    store.create(id, 1, true).unwrap();
    finish(store);
}

#[test]
fn unpinned_objects_are_evicted_least_recently_used_first() {
    // 10 blocks of 64 bytes.
    let store = new_store(640);
    let (a, b, c) = (ObjectId::random(), ObjectId::random(), ObjectId::random());
    for id in [a, b, c] {
        put(&store, id, &[7; 128], false);
    }
    // Reading `a` makes it the most recently used: order is now b, c, a.
    store.get(a).unwrap();
    store.release(a);
    let big = ObjectId::random();
    put(&store, big, &[1; 256], true);
    assert_eq!(store.used(), 640);
    assert_eq!(store.stats().pinned, 256);

    let d = ObjectId::random();
    store.create(d, 128, true).unwrap();
    assert!(!store.contains(b), "least recently used goes first");
    assert!(store.contains(a) && store.contains(c));
    let e = ObjectId::random();
    store.create(e, 100, false).unwrap();
    assert!(!store.contains(c));
    assert!(store.contains(a));
    assert_eq!(store.stats().num_evictions, 2);
    // Unsealed objects are never evicted, even secondary ones: only `a` can go.
    let f = ObjectId::random();
    store.create(f, 128, true).unwrap();
    assert!(!store.contains(a));
    let err = store.create(ObjectId::random(), 64, true).unwrap_err();
    assert!(matches!(err, PlasmaError::ObjectStoreFull { .. }));
    assert_eq!(store.num_objects(), 4); // big, d, e, f
    finish(store);
}

#[test]
fn full_store_of_pinned_objects_answers_object_store_full_and_keeps_working() {
    let store = new_store(1024);
    let mapping = SegmentMapping::open(store.segment_path()).unwrap();
    let mut ids = Vec::new();
    for i in 0..8u8 {
        let id = ObjectId::random();
        put(&store, id, &[i; 64], i % 2 == 0);
        ids.push(id);
    }
    // Secondary copies stay while read.
    for id in ids.iter().skip(1).step_by(2) {
        store.get(*id).unwrap();
    }
    assert_eq!(store.used(), 512);
    let extra = ObjectId::random();
    put(&store, extra, &[9; 512], true);

    let err = store.create(ObjectId::random(), 1, true).unwrap_err();
    match err {
        PlasmaError::ObjectStoreFull {
            requested,
            capacity,
            used,
            pinned,
        } => {
            assert_eq!((requested, capacity, used, pinned), (64, 1024, 1024, 1024));
        }
        other => panic!("expected ObjectStoreFull, got {other:?}"),
    }
    assert_eq!(err.code(), ErrorCode::ObjectStoreFull);
    assert!(err.to_string().contains("pinned 1024"));
    let too_large = store.create(ObjectId::random(), 1025, true).unwrap_err();
    assert!(matches!(
        too_large,
        PlasmaError::TooLarge {
            requested: 1025,
            ..
        }
    ));

    // Nothing was lost.
    for (i, id) in ids.iter().enumerate() {
        assert!(store.contains(*id));
        let loc = store.location(*id).unwrap();
        assert!(mapping.slice(loc).unwrap().iter().all(|&b| b == i as u8));
    }
    // Releasing the readers makes the secondary copies evictable: room appears, taken from
    // the least recently used one.
    for id in ids.iter().skip(1).step_by(2) {
        store.release(*id);
    }
    let next = ObjectId::random();
    put(&store, next, &[42; 60], true);
    assert_eq!(store.stats().num_evictions, 1);
    assert!(!store.contains(ids[1]));
    assert!(store.contains(ids[3]));
    assert!(store.delete(extra));
    put(&store, ObjectId::random(), &[1; 512], true);
    finish(store);
}

#[test]
fn random_churn_does_not_leak_space() {
    let capacity = 1 << 20;
    let store = new_store(capacity);
    let mut rng = StdRng::seed_from_u64(0x9e3779b97f4a7c15);
    let mut live: Vec<(ObjectId, bool)> = Vec::new();
    let mut fulls = 0;
    for _ in 0..5000 {
        if live.is_empty() || rng.random_bool(0.6) {
            let id = ObjectId::random();
            let size = rng.random_range(0..40_000);
            let primary = rng.random_bool(0.7);
            match store.create(id, size, primary) {
                Ok(_) => {
                    if rng.random_bool(0.9) {
                        store.seal(id).unwrap();
                        live.push((id, true));
                    } else {
                        live.push((id, false));
                    }
                }
                Err(PlasmaError::ObjectStoreFull { .. }) => fulls += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        } else {
            let (id, sealed) = live.swap_remove(rng.random_range(0..live.len()));
            if sealed {
                // Evicted secondary copies are already gone.
                store.delete(id);
            } else {
                store.abort(id).unwrap();
            }
        }
    }
    assert!(fulls > 0, "the churn should have filled the store");
    assert!(store.stats().num_evictions > 0);
    for (id, sealed) in live {
        if sealed {
            store.delete(id);
        } else {
            store.abort(id).unwrap();
        }
    }
    assert_eq!(store.used(), 0);
    assert_eq!(store.num_objects(), 0);
    let whole = ObjectId::random();
    store
        .create(whole, capacity, true)
        .expect("a capacity-sized object fits again");
    finish(store);
}

#[test]
fn mappings_share_bytes_with_the_store_and_each_other() {
    let store = new_store(1 << 20);
    let one = SegmentMapping::open(store.segment_path()).unwrap();
    let two = SegmentMapping::open(store.segment_path()).unwrap();
    assert_eq!(one.len(), 1 << 20);

    // Server writes, clients read.
    let a = ObjectId::random();
    let loc_a = put(&store, a, b"written by the server", true);
    assert_eq!(one.slice(loc_a).unwrap(), b"written by the server");
    assert_eq!(two.slice(loc_a).unwrap(), b"written by the server");

    // A client writes in place, the other client and the server read.
    let b = ObjectId::random();
    let loc_b = store.create(b, 4096, true).unwrap();
    {
        // SAFETY: `b` was created above, is unsealed, and no other view of it is alive.
        let dst = unsafe { one.slice_mut(loc_b) }.unwrap();
        for (i, byte) in dst.iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
    }
    store.seal(b).unwrap();
    let expected: Vec<u8> = (0..4096).map(|i| (i % 251) as u8).collect();
    assert_eq!(two.slice(loc_b).unwrap(), &expected[..]);
    assert_eq!(store.read_sealed(b, 0, 4096).unwrap(), expected);

    // Bounds are checked on the segment.
    let past = ObjectLocation {
        offset: (1 << 20) - 10,
        size: 11,
    };
    assert!(matches!(
        one.slice(past),
        Err(PlasmaError::OutOfBounds { .. })
    ));
    // SAFETY: the call fails its bounds check before producing a slice.
    assert!(unsafe { one.slice_mut(past) }.is_err());
    let huge = ObjectLocation {
        offset: u64::MAX,
        size: 2,
    };
    assert!(one.slice(huge).is_err());
    finish(store);
    // The mappings outlive the file.
    assert_eq!(one.slice(loc_a).unwrap(), b"written by the server");
}

/// `dd` reading or writing `len` bytes of `path` at `offset` in a child process.
fn dd(path: &Path, offset: u64, len: usize, input: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = Command::new("dd");
    match input {
        None => cmd.args([
            format!("if={}", path.display()),
            "iflag=skip_bytes,count_bytes".into(),
            format!("skip={offset}"),
            format!("count={len}"),
        ]),
        Some(_) => cmd.args([
            format!("of={}", path.display()),
            "oflag=seek_bytes".into(),
            "conv=notrunc".into(),
            format!("seek={offset}"),
        ]),
    };
    cmd.arg("status=none")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn dd");
    let mut stdin = child.stdin.take().expect("stdin");
    if let Some(data) = input {
        stdin.write_all(data).expect("write to dd");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("wait for dd");
    assert!(out.status.success(), "dd failed: {:?}", out.status);
    out.stdout
}

#[test]
fn another_process_sees_and_writes_segment_bytes() {
    let store = new_store(1 << 20);
    let path: PathBuf = store.segment_path().to_path_buf();
    let a = ObjectId::random();
    let loc_a = put(&store, a, b"hello from the store", true);
    assert_eq!(dd(&path, loc_a.offset, 20, None), b"hello from the store");

    let b = ObjectId::random();
    let loc_b = store.create(b, 17, true).unwrap();
    dd(
        &path,
        loc_b.offset,
        17,
        Some(b"hello from a child"[..17].as_ref()),
    );
    store.seal(b).unwrap();
    let mapping = SegmentMapping::open(&path).unwrap();
    assert_eq!(mapping.slice(loc_b).unwrap(), b"hello from a chil");
    assert_eq!(store.read_sealed(b, 0, 17).unwrap(), b"hello from a chil");
    finish(store);
}

#[test]
fn segment_file_lifecycle() {
    let cfg = config(1 << 16);
    let path = cfg.segment_path();
    let store = PlasmaStore::create_segment(cfg.clone()).unwrap();
    assert_eq!(store.segment_path(), path);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 16);

    // A second store on the same name fails cleanly and leaves the first one's file alone.
    let err = PlasmaStore::create_segment(cfg.clone()).unwrap_err();
    assert!(matches!(err, PlasmaError::SegmentExists { .. }));
    assert_eq!(err.code(), ErrorCode::AlreadyExists);
    assert!(path.exists());
    finish(store);

    // Bad configurations are refused without leaving files.
    let mut tiny = config(10);
    assert!(matches!(
        PlasmaStore::create_segment(tiny.clone()),
        Err(PlasmaError::InvalidConfig(_))
    ));
    assert!(!tiny.segment_path().exists());
    tiny.segment_dir = PathBuf::from("/nonexistent-miniray-dir");
    tiny.capacity = 4096;
    assert!(matches!(
        PlasmaStore::create_segment(tiny),
        Err(PlasmaError::Io { .. })
    ));
    assert!(SegmentMapping::open(&path).is_err());
}

#[test]
fn prefaulted_segment_reserves_memory_and_works() {
    let mut cfg = config(8 << 20);
    cfg.prefault = true;
    let store = PlasmaStore::create_segment(cfg).unwrap();
    let id = ObjectId::random();
    let loc = store.create(id, 4 << 20, true).unwrap();
    let mapping = SegmentMapping::open(store.segment_path()).unwrap();
    // SAFETY: freshly created, unsealed, only view.
    unsafe { mapping.slice_mut(loc) }.unwrap().fill(0xab);
    store.seal(id).unwrap();
    assert!(
        store
            .read_sealed(id, 0, 4 << 20)
            .unwrap()
            .iter()
            .all(|&b| b == 0xab)
    );
    finish(store);
}

#[test]
fn concurrent_clients_keep_the_accounting_exact() {
    let store = Arc::new(new_store(4 << 20));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(t);
                for _ in 0..500 {
                    let id = ObjectId::random();
                    let size = rng.random_range(0..8192usize);
                    let data = vec![t as u8; size];
                    match store.create(id, size as u64, true) {
                        Ok(_) => {}
                        Err(PlasmaError::ObjectStoreFull { .. }) => continue,
                        Err(e) => panic!("unexpected {e}"),
                    }
                    store.write(id, 0, &data).unwrap();
                    store.seal(id).unwrap();
                    let loc = store.get(id).unwrap();
                    assert_eq!(loc.size, size as u64);
                    assert_eq!(store.read_sealed(id, 0, size).unwrap(), data);
                    assert!(store.delete(id));
                    store.release(id);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.used(), 0);
    assert_eq!(store.num_objects(), 0);
    let store = Arc::try_unwrap(store).expect("sole owner");
    finish(store);
}

#[test]
fn disconnect_releases_a_clients_pins_and_aborts_its_unsealed_objects() {
    let store = new_store(1 << 20);
    let (a, b) = (WorkerId::random(), WorkerId::random());
    // A sealed primary copy, pinned twice by `a` and once by `b`.
    let shared = ObjectId::random();
    put(&store, shared, &[7; 100], true);
    assert!(store.get_by(Some(a), shared).is_some());
    assert!(store.get_by(Some(a), shared).is_some());
    assert!(store.get_by(Some(b), shared).is_some());
    // A secondary copy only `a` pins, and two objects `a` created but never sealed.
    let secondary = ObjectId::random();
    put(&store, secondary, &[1; 64], false);
    assert!(store.get_by(Some(a), secondary).is_some());
    let unsealed = ObjectId::random();
    store.create_by(Some(a), unsealed, 1000, true).unwrap();
    let pulled = ObjectId::random();
    store.create_by(Some(a), pulled, 10, false).unwrap();
    // `b` creates and seals one: sealing ends what `disconnect` would abort.
    let sealed_by_b = ObjectId::random();
    store.create_by(Some(b), sealed_by_b, 10, true).unwrap();
    store.seal(sealed_by_b).unwrap();
    assert_eq!(store.used(), 128 + 64 + 1024 + 64 + 64);
    let mut clients = store.clients();
    clients.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(clients, expected);

    // The owner frees the primary copy while `a` and `b` still read it.
    assert!(store.delete(shared));
    assert_eq!(store.used(), 128 + 64 + 1024 + 64 + 64);

    let gone = store.disconnect(a);
    assert_eq!(gone.pins_released, 3);
    let mut aborted = gone.aborted.clone();
    aborted.sort();
    let mut want = vec![unsealed, pulled];
    want.sort();
    assert_eq!(aborted, want);
    // `b`'s pin still keeps the deleted object; the secondary is evictable again.
    assert_eq!(store.used(), 128 + 64 + 64);
    assert_eq!(store.stats().pinned, 128 + 64);
    assert_eq!(store.clients(), vec![b]);
    // Nothing left to give back a second time.
    assert_eq!(store.disconnect(a), Default::default());

    let gone = store.disconnect(b);
    assert_eq!(gone.pins_released, 1);
    assert!(gone.aborted.is_empty());
    assert!(store.clients().is_empty());
    assert_eq!(store.used(), 64 + 64);
    assert_eq!(store.stats().pinned, 64);
    assert!(store.delete(sealed_by_b));
    assert!(store.delete(secondary));
    assert_eq!(store.used(), 0);
    finish(store);
}

#[test]
fn a_client_releases_only_its_own_pins() {
    let store = new_store(1 << 20);
    let (a, b) = (WorkerId::random(), WorkerId::random());
    let id = ObjectId::random();
    put(&store, id, b"bytes", true);
    assert!(store.get_by(Some(a), id).is_some());
    // `b` never pinned it: its release changes nothing, so `a`'s pin survives.
    store.release_by(Some(b), id);
    assert!(store.delete(id));
    assert_eq!(store.used(), 64);
    store.release_by(Some(a), id);
    assert_eq!(store.used(), 0);
    assert!(store.clients().is_empty());
    // Explicit releases leave nothing for `disconnect`.
    assert_eq!(store.disconnect(a), Default::default());
    finish(store);
}

#[tokio::test(flavor = "current_thread")]
async fn wait_get_pins_belong_to_their_client() {
    let store = Arc::new(new_store(1 << 20));
    let client = WorkerId::random();
    let id = ObjectId::random();
    let waiter = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .wait_get_by(Some(client), &[id], Duration::from_secs(60))
                .await
        })
    };
    tokio::task::yield_now().await;
    store.create_by(Some(client), id, 10, true).unwrap();
    store.seal(id).unwrap();
    let found = waiter.await.unwrap();
    assert!(found[0].is_some());
    assert!(store.delete(id));
    assert_eq!(store.used(), 64, "the reader pin keeps the bytes");
    // The client dies without releasing: its pin goes with it.
    assert_eq!(store.disconnect(client).pins_released, 1);
    assert_eq!(store.used(), 0);
    let store = Arc::try_unwrap(store).expect("sole owner");
    finish(store);
}

#[test]
fn aborting_or_deleting_an_unsealed_object_forgets_its_creator() {
    let store = new_store(1 << 20);
    let client = WorkerId::random();
    let (aborted, deleted) = (ObjectId::random(), ObjectId::random());
    store.create_by(Some(client), aborted, 10, true).unwrap();
    store.create_by(Some(client), deleted, 10, true).unwrap();
    store.abort(aborted).unwrap();
    assert!(store.delete(deleted));
    assert!(store.clients().is_empty());
    assert_eq!(store.disconnect(client), Default::default());
    assert_eq!(store.used(), 0);
    finish(store);
}

#[test]
fn a_full_segment_folder_answers_object_store_full_instead_of_sigbus() {
    // 6 MiB of memory under a 32 MiB store: the store has room, its folder does not.
    let tmpfs = miniray_plasma::testing::Tmpfs::mount(6 << 20).expect("mount a tmpfs (root)");
    let mut cfg = config(32 << 20);
    cfg.segment_dir = tmpfs.path().to_path_buf();
    let store = PlasmaStore::create_segment(cfg).expect("create segment");
    let mapping = SegmentMapping::open(store.segment_path()).expect("map");
    const MIB: u64 = 1 << 20;
    let create_and_fill = |id: ObjectId, primary: bool, byte: u8| {
        let loc = store.create(id, MIB, primary)?;
        // Every byte of a created object is backed: writing it cannot SIGBUS.
        unsafe { mapping.slice_mut(loc) }.expect("range").fill(byte);
        store.seal(id)?;
        Ok::<_, PlasmaError>(())
    };

    let mut ids = Vec::new();
    let err = loop {
        let id = ObjectId::random();
        match create_and_fill(id, true, ids.len() as u8) {
            Ok(()) => ids.push(id),
            Err(e) => break e,
        }
        assert!(ids.len() <= 32, "the folder never filled up");
    };
    // Objects are laid out from offset 0, so exactly the folder's 6 MiB were usable.
    assert_eq!(ids.len(), 6, "{err}");
    assert!(matches!(err, PlasmaError::SegmentDirFull { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::ObjectStoreFull);
    assert!(
        err.to_string()
            .contains(&tmpfs.path().display().to_string()),
        "{err}"
    );
    // Nothing was lost and the failed create took nothing.
    assert_eq!(store.num_objects(), 6);
    assert_eq!(store.used(), 6 * MIB);
    for (i, id) in ids.iter().enumerate() {
        let loc = store.get(*id).expect("sealed");
        assert!(
            mapping
                .slice(loc)
                .expect("range")
                .iter()
                .all(|&b| b == i as u8)
        );
        store.release(*id);
    }

    // Freed pages stay reserved and are reused.
    assert!(store.delete(ids[0]));
    create_and_fill(ObjectId::random(), true, 9).expect("reuses the freed pages");
    assert!(create_and_fill(ObjectId::random(), true, 9).is_err());

    // Evicting an unpinned object makes room in pages already reserved.
    for id in &ids[1..] {
        assert!(store.delete(*id));
    }
    let cached: Vec<ObjectId> = (0..5).map(|_| ObjectId::random()).collect();
    for id in &cached {
        create_and_fill(*id, false, 3).expect("secondary copy");
    }
    assert_eq!(store.stats().num_evictions, 0);
    create_and_fill(ObjectId::random(), true, 4).expect("evicts to make room");
    assert_eq!(store.stats().num_evictions, 1);
    assert!(
        !store.contains(cached[0]),
        "the least recently used copy goes first"
    );

    drop(mapping);
    finish(store);
}
