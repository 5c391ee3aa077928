//! Raylet behaviour that needs no worker processes: registration and heartbeats, plasma over
//! gRPC, node-to-node transfer, authentication and input validation.

mod common;

use std::time::Duration;

use common::*;
use miniray_common::auth::connect;
use miniray_common::{ErrorCode, ObjectId};
use miniray_plasma::{ObjectLocation, SegmentMapping};
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_and_heartbeats_with_resources() {
    let gcs = start_gcs().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = raylet_config(&gcs, dir.path(), &[("CPU", 3.0), ("custom", 2.0)]);
    cfg.labels.insert("zone".into(), "a".into());
    cfg.is_head = true;
    let raylet = miniray_raylet::Raylet::start(cfg).await.unwrap();
    let node = raylet.node_id();
    let segment = segment_path(dir.path(), node);
    assert!(segment.exists(), "segment {} exists", segment.display());

    let mut g = gcs_client(&gcs).await;
    let first = eventually("the node in the gcs", || {
        let mut g = g.clone();
        async move { node_in_gcs(&mut g, node).await }
    })
    .await;
    assert_eq!(first.state, NodeState::Alive as i32);
    assert!(first.is_head);
    assert_eq!(first.labels.get("zone").map(String::as_str), Some("a"));
    assert_eq!(first.object_store_capacity, 64 << 20);
    let total = first.total.clone().unwrap().amounts;
    assert_eq!(total.get("CPU"), Some(&3.0));
    assert_eq!(total.get("custom"), Some(&2.0));
    let addr = first.address.clone().unwrap();
    assert_eq!(addr.port, u32::from(raylet.address().port()));
    assert_eq!(addr.host, "127.0.0.1");

    // Heartbeats keep arriving and carry the available resources.
    let t0 = first.last_heartbeat_ms;
    let later = eventually("a later heartbeat", || {
        let mut g = g.clone();
        async move {
            node_in_gcs(&mut g, node)
                .await
                .filter(|n| n.last_heartbeat_ms > t0)
        }
    })
    .await;
    assert_eq!(later.available.unwrap().amounts.get("CPU"), Some(&3.0));

    raylet.shutdown().await;
    assert!(!segment.exists(), "segment removed at shutdown");
    let gone = node_in_gcs(&mut g, node).await;
    assert!(
        gone.is_none_or(|n| n.state == NodeState::Dead as i32),
        "node unregistered"
    );
    gcs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plasma_round_trip_over_grpc() {
    let gcs = start_gcs().await;
    let dir = tempfile::tempdir().unwrap();
    let raylet = start_raylet(&gcs, dir.path(), &[("CPU", 1.0)]).await;
    let mut c = raylet_client(&raylet).await;

    let info = c
        .plasma_info(PlasmaInfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, raylet.node_id().to_vec());
    assert_eq!(info.capacity, 64 << 20);
    let mapping = SegmentMapping::open(std::path::Path::new(&info.segment_path)).unwrap();

    let id = ObjectId::random();
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let offset = c
        .plasma_create(PlasmaCreateRequest {
            object_id: id.to_vec(),
            data_size: payload.len() as u64,
            owner: Some(WorkerAddress {
                worker_id: vec![1; 16],
                node_id: raylet.node_id().to_vec(),
                host: "127.0.0.1".into(),
                port: 1,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .offset;
    let loc = ObjectLocation {
        offset,
        size: payload.len() as u64,
    };

    // A reader waiting for the object sees it once sealed.
    let mut waiter = c.clone();
    let wait = tokio::spawn(async move {
        waiter
            .plasma_get(PlasmaGetRequest {
                object_ids: vec![id.to_vec()],
                timeout_ms: 30_000,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    });
    {
        // SAFETY: this test created the object, has not sealed it, and holds no other view.
        let dst = unsafe { mapping.slice_mut(loc) }.unwrap();
        dst.copy_from_slice(&payload);
    }
    c.plasma_seal(PlasmaSealRequest {
        object_id: id.to_vec(),
    })
    .await
    .unwrap();
    let waited = wait.await.unwrap().unwrap();
    assert!(waited.objects[0].found);

    let got = c
        .plasma_get(PlasmaGetRequest {
            object_ids: vec![id.to_vec()],
            timeout_ms: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let o = &got.objects[0];
    assert!(o.found);
    assert_eq!((o.offset, o.size), (offset, payload.len() as u64));
    assert_eq!(mapping.slice(loc).unwrap(), &payload[..]);
    c.plasma_release(PlasmaReleaseRequest {
        object_ids: vec![id.to_vec(), id.to_vec()],
        ..Default::default()
    })
    .await
    .unwrap();

    // A full store answers ObjectStoreFull (primary copies are pinned).
    let big = ObjectId::random();
    c.plasma_create(PlasmaCreateRequest {
        object_id: big.to_vec(),
        data_size: 40 << 20,
        owner: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let full = c
        .plasma_create(PlasmaCreateRequest {
            object_id: ObjectId::random().to_vec(),
            data_size: 40 << 20,
            owner: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of_status(&full), ErrorCode::ObjectStoreFull);
    c.plasma_abort(PlasmaAbortRequest {
        object_id: big.to_vec(),
    })
    .await
    .unwrap();

    c.plasma_delete(PlasmaDeleteRequest {
        object_ids: vec![id.to_vec()],
    })
    .await
    .unwrap();
    let after = c
        .plasma_get(PlasmaGetRequest {
            object_ids: vec![id.to_vec()],
            timeout_ms: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!after.objects[0].found);
    let stats = c
        .get_node_stats(GetNodeStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.num_objects, 0);
    assert_eq!(stats.object_store_used, 0);

    drop(mapping);
    raylet.shutdown().await;
    gcs.shutdown().await;
}

fn checksum(bytes: &[u8]) -> blake3::Hash {
    blake3::hash(bytes)
}

/// Creates and seals an object of `size` pseudo-random bytes in the raylet behind `c`,
/// through its segment; returns its id and checksum.
async fn put_pseudo_random(
    c: &mut RayletClient<miniray_common::auth::AuthedChannel>,
    size: u64,
) -> (ObjectId, blake3::Hash) {
    let id = ObjectId::random();
    let info = c
        .plasma_info(PlasmaInfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    let map = SegmentMapping::open(std::path::Path::new(&info.segment_path)).unwrap();
    let offset = c
        .plasma_create(PlasmaCreateRequest {
            object_id: id.to_vec(),
            data_size: size,
            owner: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .offset;
    let loc = ObjectLocation { offset, size };
    let expected = {
        // SAFETY: created by this test, unsealed, no other view.
        let dst = unsafe { map.slice_mut(loc) }.unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ size;
        for chunk in dst.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        checksum(dst)
    };
    c.plasma_seal(PlasmaSealRequest {
        object_id: id.to_vec(),
    })
    .await
    .unwrap();
    (id, expected)
}

/// The size and checksum of the sealed object `id` in the raylet behind `c`.
async fn sealed_checksum(
    c: &mut RayletClient<miniray_common::auth::AuthedChannel>,
    id: ObjectId,
) -> (u64, blake3::Hash) {
    let info = c
        .plasma_info(PlasmaInfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    let map = SegmentMapping::open(std::path::Path::new(&info.segment_path)).unwrap();
    let got = c
        .plasma_get(PlasmaGetRequest {
            object_ids: vec![id.to_vec()],
            timeout_ms: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let o = &got.objects[0];
    assert!(o.found, "object {id} is sealed there");
    let sum = checksum(
        map.slice(ObjectLocation {
            offset: o.offset,
            size: o.size,
        })
        .unwrap(),
    );
    c.plasma_release(PlasmaReleaseRequest {
        object_ids: vec![id.to_vec()],
        ..Default::default()
    })
    .await
    .unwrap();
    (o.size, sum)
}

fn node_address(r: &miniray_raylet::RayletHandle) -> NodeAddress {
    NodeAddress {
        node_id: r.node_id().to_vec(),
        host: "127.0.0.1".into(),
        port: u32::from(r.address().port()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_a_64_mib_object_between_raylets_once_in_parallel_ranges() {
    let gcs = start_gcs().await;
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let mut cfg_a = raylet_config(&gcs, dir_a.path(), &[("CPU", 1.0)]);
    cfg_a.object_store_memory = 96 << 20;
    let mut cfg_b = raylet_config(&gcs, dir_b.path(), &[("CPU", 1.0)]);
    cfg_b.object_store_memory = 96 << 20;
    let a = miniray_raylet::Raylet::start(cfg_a).await.unwrap();
    let b = miniray_raylet::Raylet::start(cfg_b).await.unwrap();
    let mut ca = raylet_client(&a).await;
    let mut cb = raylet_client(&b).await;

    // Put a 64 MiB object into A through its segment: five ranges of a pull, the last
    // one short.
    let size: u64 = (64 << 20) + 12_345;
    let (id, expected) = put_pseudo_random(&mut ca, size).await;
    let source = node_address(&a);
    // Three concurrent pulls of the same object: one transfer.
    let pulls: Vec<_> = (0..3)
        .map(|_| {
            let mut cb = cb.clone();
            let source = source.clone();
            tokio::spawn(async move {
                cb.pull_object(PullObjectRequest {
                    object_id: id.to_vec(),
                    source: Some(source),
                })
                .await
                .map(|r| r.into_inner().size)
            })
        })
        .collect();
    for p in pulls {
        assert_eq!(p.await.unwrap().unwrap(), size);
    }
    let stats = b.transfer_stats();
    assert_eq!(
        stats.pulls_started, 1,
        "concurrent pulls share one transfer: {stats:?}"
    );
    assert_eq!(stats.bytes_pulled, size);

    // B has an identical sealed copy.
    assert_eq!(sealed_checksum(&mut cb, id).await, (size, expected));

    // A pull of something here already answers at once; a missing object is NotFound and
    // leaves nothing behind.
    let again = cb
        .pull_object(PullObjectRequest {
            object_id: id.to_vec(),
            source: Some(source.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.size, size);
    assert_eq!(b.transfer_stats().pulls_started, 1);
    let missing = cb
        .pull_object(PullObjectRequest {
            object_id: ObjectId::random().to_vec(),
            source: Some(source),
        })
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of_status(&missing), ErrorCode::NotFound);
    let stats = cb
        .get_node_stats(GetNodeStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.num_objects, 1);

    a.shutdown().await;
    b.shutdown().await;
    gcs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reads_ranges_from_earlier_pullers_and_falls_back_to_the_source() {
    let gcs = start_gcs().await;
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut raylets = Vec::new();
    for dir in &dirs {
        let mut cfg = raylet_config(&gcs, dir.path(), &[("CPU", 1.0)]);
        cfg.object_store_memory = 80 << 20;
        raylets.push(miniray_raylet::Raylet::start(cfg).await.unwrap());
    }
    let mut clients = Vec::new();
    for r in &raylets {
        clients.push(raylet_client(r).await);
    }
    // Four ranges of a pull, the last one short.
    let size: u64 = (48 << 20) + 777;
    let (id, expected) = put_pseudo_random(&mut clients[0], size).await;
    let source = node_address(&raylets[0]);
    let pull = |mut c: RayletClient<miniray_common::auth::AuthedChannel>| {
        let source = source.clone();
        tokio::spawn(async move {
            c.pull_object(PullObjectRequest {
                object_id: id.to_vec(),
                source: Some(source),
            })
            .await
            .map(|r| r.into_inner().size)
        })
    };

    // B pulls it all from A; then C and D at once, whom A points to B (and D maybe to C,
    // still receiving it).
    assert_eq!(pull(clients[1].clone()).await.unwrap().unwrap(), size);
    let (c, d) = (pull(clients[2].clone()), pull(clients[3].clone()));
    assert_eq!(c.await.unwrap().unwrap(), size);
    assert_eq!(d.await.unwrap().unwrap(), size);
    for k in 1..=3 {
        assert_eq!(sealed_checksum(&mut clients[k], id).await, (size, expected));
        assert_eq!(raylets[k].transfer_stats().bytes_pulled, size, "node {k}");
    }
    let served: Vec<u64> = raylets
        .iter()
        .map(|r| r.transfer_stats().bytes_served)
        .collect();
    assert!(served[1] > 0, "B served ranges to C and D: {served:?}");
    assert!(
        served[0] < 3 * size,
        "A did not send every byte: {served:?}"
    );

    // B goes away; A still names it to E, whose ranges from B come from A instead.
    let b = raylets.remove(1);
    clients.remove(1);
    b.shutdown().await;
    assert_eq!(pull(clients[3].clone()).await.unwrap().unwrap(), size);
    assert_eq!(sealed_checksum(&mut clients[3], id).await, (size, expected));
    assert_eq!(raylets[3].transfer_stats().bytes_pulled, size);

    for r in raylets {
        r.shutdown().await;
    }
    gcs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_plane_shares_the_port_and_serves_nothing_without_the_token() {
    use miniray_raylet::object_manager::PULL_RANGE;
    use miniray_raylet::object_manager::data_plane::open_range;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let gcs = start_gcs().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = raylet_config(&gcs, dir.path(), &[("CPU", 1.0)]);
    cfg.object_store_memory = 48 << 20;
    let raylet = miniray_raylet::Raylet::start(cfg).await.unwrap();
    let mut c = raylet_client(&raylet).await;
    let size: u64 = (20 << 20) + 5;
    let (id, _) = put_pseudo_random(&mut c, size).await;
    let addr = raylet.address().to_string();
    let read = |id: ObjectId, offset: u64| ReadObjectRequest {
        object_id: id.to_vec(),
        chunk_size: 0,
        offset,
        length: 0,
        puller: None,
    };

    let refused = |r: Result<_, miniray_raylet::object_manager::PullError>| match r {
        Ok(_) => panic!("a range was served"),
        Err(e) => e.code,
    };
    assert_eq!(
        refused(open_range(&addr, "not-the-token", read(id, 0)).await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        refused(open_range(&addr, "", read(id, 0)).await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        refused(open_range(&addr, TOKEN, read(ObjectId::random(), 0)).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        refused(open_range(&addr, TOKEN, read(id, size + 1)).await),
        ErrorCode::InvalidArgument
    );
    let mut bad_id = read(id, 0);
    bad_id.object_id.truncate(3);
    assert_eq!(
        refused(open_range(&addr, TOKEN, bad_id).await),
        ErrorCode::InvalidArgument
    );
    // A frame too large, or garbage, after the magic: the connection closes, unanswered.
    for junk in [
        &b"MRXFER1\n\xff\xff\xff\xff"[..],
        b"MRXFER1\n\0\0\0\x03\xff\xff\xff",
    ] {
        let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
        raw.write_all(junk).await.unwrap();
        let mut answer = Vec::new();
        // Closed, or reset: either way, nothing was said.
        let _ = tokio::time::timeout(Duration::from_secs(30), raw.read_to_end(&mut answer))
            .await
            .expect("the raylet closes the connection");
        assert!(answer.is_empty(), "answered {answer:?}");
    }
    assert_eq!(raylet.transfer_stats().bytes_served, 0);

    // With the token: the range from `offset` to the end, on the same port as gRPC, which
    // still answers.
    let served = open_range(&addr, TOKEN, read(id, PULL_RANGE))
        .await
        .unwrap();
    assert_eq!(
        (
            served.header.total_size,
            served.header.offset,
            served.header.length
        ),
        (size, PULL_RANGE, size - PULL_RANGE)
    );
    drop(served);
    let stats = c
        .get_node_stats(GetNodeStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.num_objects, 1);

    raylet.shutdown().await;
    gcs.shutdown().await;
}

/// How a fake source of the data plane misbehaves.
#[derive(Clone, Copy)]
enum Fault {
    /// Sends the header, then half of each range, then closes.
    CutShort,
    /// Claims a different object size on every range after the first.
    ChangesSize,
}

/// A data-plane source that answers every request for an object of `total` bytes, and
/// misbehaves as `fault` says; returns its port.
async fn faulty_source(total: u64, fault: Fault) -> u16 {
    use miniray_raylet::object_manager::data_plane::MAGIC;
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut magic = [0u8; 8];
                conn.read_exact(&mut magic).await.ok()?;
                assert_eq!(magic, MAGIC);
                let mut len = [0u8; 4];
                conn.read_exact(&mut len).await.ok()?;
                let mut body = vec![0; u32::from_be_bytes(len) as usize];
                conn.read_exact(&mut body).await.ok()?;
                let read = ObjectTransferRequest::decode(body.as_slice()).ok()?.read?;
                let end = match read.length {
                    0 => total,
                    n => (read.offset + n).min(total),
                };
                let header = ObjectTransferHeader {
                    total_size: match fault {
                        Fault::ChangesSize if read.offset > 0 => total + 1,
                        _ => total,
                    },
                    offset: read.offset,
                    length: end - read.offset,
                    ..Default::default()
                };
                let header = header.encode_to_vec();
                conn.write_all(&(header.len() as u32).to_be_bytes())
                    .await
                    .ok()?;
                conn.write_all(&header).await.ok()?;
                let sent = match fault {
                    Fault::CutShort => (end - read.offset) / 2,
                    Fault::ChangesSize => end - read.offset,
                };
                conn.write_all(&vec![0x5a; sent as usize]).await.ok()?;
                conn.shutdown().await.ok()
            });
        }
    });
    port
}

/// Failure injection on the data plane: a source that cuts its ranges short, or changes
/// its story about the object's size, fails the pull; nothing half-pulled stays, and the
/// store takes a good pull afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_cuts_its_ranges_short_or_lies_fails_the_pull_and_leaves_nothing() {
    let gcs = start_gcs().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cfg_a = raylet_config(&gcs, dir_a.path(), &[("CPU", 1.0)]);
    cfg_a.object_store_memory = 80 << 20;
    let mut cfg_b = raylet_config(&gcs, dir_b.path(), &[("CPU", 1.0)]);
    cfg_b.object_store_memory = 80 << 20;
    let a = miniray_raylet::Raylet::start(cfg_a).await.unwrap();
    let b = miniray_raylet::Raylet::start(cfg_b).await.unwrap();
    let mut ca = raylet_client(&a).await;
    let mut cb = raylet_client(&b).await;

    let total: u64 = (40 << 20) + 3;
    for fault in [Fault::CutShort, Fault::ChangesSize] {
        let port = faulty_source(total, fault).await;
        let err = cb
            .pull_object(PullObjectRequest {
                object_id: ObjectId::random().to_vec(),
                source: Some(NodeAddress {
                    node_id: miniray_common::NodeId::random().to_vec(),
                    host: "127.0.0.1".into(),
                    port: u32::from(port),
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(ErrorCode::of_status(&err), ErrorCode::Unavailable, "{err}");
        let stats = cb
            .get_node_stats(GetNodeStatsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!((stats.num_objects, stats.object_store_used), (0, 0));
    }

    let (id, expected) = put_pseudo_random(&mut ca, total).await;
    let size = cb
        .pull_object(PullObjectRequest {
            object_id: id.to_vec(),
            source: Some(node_address(&a)),
        })
        .await
        .unwrap()
        .into_inner()
        .size;
    assert_eq!(size, total);
    assert_eq!(sealed_checksum(&mut cb, id).await, (total, expected));

    a.shutdown().await;
    b.shutdown().await;
    gcs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_unauthenticated_calls_and_bad_input() {
    let gcs = start_gcs().await;
    let dir = tempfile::tempdir().unwrap();
    // Nothing starts with an empty token, or with a store its plasma folder cannot hold.
    let mut cfg = raylet_config(&gcs, dir.path(), &[("CPU", 1.0)]);
    cfg.token = String::new();
    let r = miniray_raylet::Raylet::start(cfg).await;
    assert!(
        matches!(r, Err(miniray_raylet::RayletError::Config(_))),
        "{:?}",
        r.err()
    );
    let mut cfg = raylet_config(&gcs, dir.path(), &[("CPU", 1.0)]);
    cfg.object_store_memory = 1 << 60;
    let err = miniray_raylet::Raylet::start(cfg)
        .await
        .err()
        .expect("a store larger than the plasma folder is refused");
    assert!(
        err.to_string().contains(&(1u64 << 60).to_string()) && err.to_string().contains("free"),
        "{err}"
    );
    let raylet = start_raylet(&gcs, dir.path(), &[("CPU", 1.0)]).await;
    let addr = raylet.address().to_string();
    let node_id = raylet.node_id();

    let mut wrong = RayletClient::new(connect(&addr, "not-the-token").await.unwrap());
    let err = wrong
        .get_node_stats(GetNodeStatsRequest {})
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of_status(&err), ErrorCode::Unauthenticated);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut bare = RayletClient::new(channel);
    let err = bare
        .plasma_info(PlasmaInfoRequest::default())
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of_status(&err), ErrorCode::Unauthenticated);

    let mut c = raylet_client(&raylet).await;
    let bad_lease = c
        .request_worker_lease(RequestWorkerLeaseRequest {
            job_id: vec![1, 2, 3],
            resources: None,
            no_spillback: false,
            requester: None,
            grant_or_reject: false,
        })
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of_status(&bad_lease), ErrorCode::InvalidArgument);
    let mut negative = ResourceSet::default();
    negative.amounts.insert("CPU".into(), -1.0);
    let bad_res = c
        .request_worker_lease(RequestWorkerLeaseRequest {
            job_id: vec![1; 16],
            resources: Some(negative),
            no_spillback: false,
            requester: None,
            grant_or_reject: false,
        })
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of_status(&bad_res), ErrorCode::InvalidArgument);
    let bad_get = c
        .plasma_get(PlasmaGetRequest {
            object_ids: vec![vec![0; 16], vec![9]],
            timeout_ms: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of_status(&bad_get), ErrorCode::InvalidArgument);
    let bad_return = c
        .return_worker(ReturnWorkerRequest {
            lease_id: vec![],
            disconnect: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        ErrorCode::of_status(&bad_return),
        ErrorCode::InvalidArgument
    );
    let bad_register = c
        .register_worker(RegisterWorkerRequest {
            worker_id: vec![1; 16],
            port: 70_000,
            pid: 1,
            job_id: vec![1; 16],
        })
        .await
        .unwrap_err();
    assert_eq!(
        ErrorCode::of_status(&bad_register),
        ErrorCode::InvalidArgument
    );
    let unknown_worker = c
        .register_worker(RegisterWorkerRequest {
            worker_id: vec![1; 16],
            port: 7000,
            pid: 1,
            job_id: vec![1; 16],
        })
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of_status(&unknown_worker), ErrorCode::NotFound);
    let bad_pull = c
        .pull_object(PullObjectRequest {
            object_id: vec![0; 16],
            source: None,
        })
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of_status(&bad_pull), ErrorCode::InvalidArgument);

    // Nothing changed.
    let stats = c
        .get_node_stats(GetNodeStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let node = stats.node.unwrap();
    assert_eq!(node.available.unwrap().amounts.get("CPU"), Some(&1.0));
    assert!(node.demand.is_empty());
    assert_eq!(stats.num_workers, 0);

    // The Shutdown rpc stops the daemon.
    c.shutdown(ShutdownRequest {}).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), raylet.wait())
        .await
        .expect("raylet stops after the shutdown rpc")
        .unwrap();
    assert!(!segment_path(dir.path(), node_id).exists());
    gcs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_stops_answering_gives_back_its_plasma_memory() {
    let gcs = start_gcs().await;
    let dir = tempfile::tempdir().unwrap();
    let raylet = start_raylet(&gcs, dir.path(), &[("CPU", 1.0)]).await;
    let mut c = raylet_client(&raylet).await;
    // An owner on this node whose address nobody listens on: a driver that was SIGKILLed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let dead = miniray_common::WorkerId::random();
    let job = miniray_common::JobId::random();
    let owner = WorkerAddress {
        worker_id: dead.to_vec(),
        node_id: raylet.node_id().to_vec(),
        host: "127.0.0.1".into(),
        port: u32::from(port),
    };
    c.plasma_info(PlasmaInfoRequest {
        client_id: dead.to_vec(),
        job_id: job.to_vec(),
    })
    .await
    .unwrap();
    let create =
        |id: ObjectId, owner: Option<WorkerAddress>, client: Vec<u8>| PlasmaCreateRequest {
            object_id: id.to_vec(),
            data_size: 1 << 20,
            owner,
            job_id: job.to_vec(),
            client_id: client,
        };
    // A sealed primary copy it owns and pins, and one it never sealed.
    let (sealed, unsealed, anonymous) =
        (ObjectId::random(), ObjectId::random(), ObjectId::random());
    c.plasma_create(create(sealed, Some(owner.clone()), dead.to_vec()))
        .await
        .unwrap();
    c.plasma_seal(PlasmaSealRequest {
        object_id: sealed.to_vec(),
    })
    .await
    .unwrap();
    let got = c
        .plasma_get(PlasmaGetRequest {
            object_ids: vec![sealed.to_vec()],
            timeout_ms: 0,
            client_id: dead.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.objects[0].found);
    c.plasma_create(create(unsealed, Some(owner), dead.to_vec()))
        .await
        .unwrap();
    // An object with no owner is nobody's to free.
    c.plasma_create(create(anonymous, None, Vec::new()))
        .await
        .unwrap();
    c.plasma_seal(PlasmaSealRequest {
        object_id: anonymous.to_vec(),
    })
    .await
    .unwrap();
    let used = |c: &RayletClient<miniray_common::auth::AuthedChannel>| {
        let mut c = c.clone();
        async move {
            c.get_node_stats(GetNodeStatsRequest {})
                .await
                .unwrap()
                .into_inner()
                .object_store_used
        }
    };
    assert_eq!(used(&c).await, 3 << 20);

    // The owner fails its probes: its copy, its pin and its unsealed object all go.
    eventually("the dead owner's memory to come back", || {
        let c = c.clone();
        async move { (used(&c).await == 1 << 20).then_some(()) }
    })
    .await;
    let after = c
        .plasma_get(PlasmaGetRequest {
            object_ids: vec![sealed.to_vec(), anonymous.to_vec()],
            timeout_ms: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!after.objects[0].found);
    assert!(after.objects[1].found);
    // A release naming a client with no pins is refused quietly: the anonymous pin stays.
    c.plasma_release(PlasmaReleaseRequest {
        object_ids: vec![anonymous.to_vec()],
        client_id: dead.to_vec(),
    })
    .await
    .unwrap();
    c.plasma_delete(PlasmaDeleteRequest {
        object_ids: vec![anonymous.to_vec()],
    })
    .await
    .unwrap();
    assert_eq!(
        used(&c).await,
        1 << 20,
        "the anonymous reader still pins it"
    );
    c.plasma_release(PlasmaReleaseRequest {
        object_ids: vec![anonymous.to_vec()],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(used(&c).await, 0);
    // A malformed client id is refused.
    let bad = c
        .plasma_get(PlasmaGetRequest {
            object_ids: vec![anonymous.to_vec()],
            timeout_ms: 0,
            client_id: vec![1, 2, 3],
        })
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of_status(&bad), ErrorCode::InvalidArgument);

    raylet.shutdown().await;
    gcs.shutdown().await;
}
