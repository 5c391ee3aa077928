//! `PlasmaWrite`: a primary copy streamed in by a client that cannot map the segment (a
//! remote driver). A complete stream seals the object; a short, out-of-order or broken
//! one aborts it, and nothing half-written stays. Also `ReadObject` of byte ranges, what
//! pulls are made of.

mod common;

use common::*;
use miniray_common::auth::AuthedChannel;
use miniray_common::{ErrorCode, ObjectId};
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn first(id: ObjectId, size: u64, data: Vec<u8>) -> PlasmaWriteChunk {
    PlasmaWriteChunk {
        create: Some(PlasmaCreateRequest {
            object_id: id.to_vec(),
            data_size: size,
            owner: Some(WorkerAddress {
                worker_id: vec![1; 16],
                node_id: vec![2; 16],
                host: "127.0.0.9".into(),
                port: 1,
            }),
            job_id: vec![3; 16],
            client_id: vec![4; 16],
        }),
        offset: 0,
        data,
    }
}

fn chunk(offset: u64, data: Vec<u8>) -> PlasmaWriteChunk {
    PlasmaWriteChunk {
        offset,
        data,
        ..Default::default()
    }
}

async fn write(
    c: &mut RayletClient<AuthedChannel>,
    chunks: Vec<PlasmaWriteChunk>,
) -> Result<u64, tonic::Status> {
    c.plasma_write(tokio_stream::iter(chunks))
        .await
        .map(|r| r.into_inner().size)
}

async fn stats(c: &mut RayletClient<AuthedChannel>) -> GetNodeStatsReply {
    c.get_node_stats(GetNodeStatsRequest {})
        .await
        .expect("stats")
        .into_inner()
}

async fn read(c: &mut RayletClient<AuthedChannel>, id: ObjectId) -> Result<Vec<u8>, tonic::Status> {
    read_range(c, id, 0, 0).await
}

/// `ReadObject` of `[offset, offset + length)`, checking that chunks come in order.
async fn read_range(
    c: &mut RayletClient<AuthedChannel>,
    id: ObjectId,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = c
        .read_object(ReadObjectRequest {
            object_id: id.to_vec(),
            chunk_size: 1 << 20,
            offset,
            length,
            puller: None,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        assert_eq!(chunk.offset, offset + out.len() as u64, "chunks in order");
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_object_is_sealed_whole_or_not_at_all() {
    let gcs = start_gcs().await;
    let dir = tempfile::tempdir().unwrap();
    let raylet = start_raylet(&gcs, dir.path(), &[("CPU", 1.0)]).await;
    let mut c = raylet_client(&raylet).await;
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let size = payload.len() as u64;

    // Whole: three chunks, sealed, readable, the owner recorded.
    let id = ObjectId::random();
    let parts: Vec<Vec<u8>> = payload.chunks(1 << 20).map(<[u8]>::to_vec).collect();
    let mut chunks = vec![first(id, size, parts[0].clone())];
    let mut offset = parts[0].len() as u64;
    for p in &parts[1..] {
        chunks.push(chunk(offset, p.clone()));
        offset += p.len() as u64;
    }
    assert_eq!(write(&mut c, chunks).await.unwrap(), size);
    assert_eq!(read(&mut c, id).await.unwrap(), payload);
    let used = stats(&mut c).await.object_store_used;
    assert!(used >= size, "{used}");

    // Short, long, out of order: refused, and the store holds what it held before.
    let short = vec![first(ObjectId::random(), size, parts[0].clone())];
    let long = vec![
        first(ObjectId::random(), 10, vec![0; 10]),
        chunk(10, vec![0; 1]),
    ];
    let out_of_order = vec![
        first(ObjectId::random(), size, parts[0].clone()),
        chunk(7, parts[1].clone()),
    ];
    for (what, chunks) in [
        ("short", short),
        ("long", long),
        ("out of order", out_of_order),
    ] {
        let id = ObjectId::from_bytes(&chunks[0].create.as_ref().unwrap().object_id).unwrap();
        assert!(
            write(&mut c, chunks).await.is_err(),
            "{what} stream accepted"
        );
        let e = read(&mut c, id).await.unwrap_err();
        assert_eq!(ErrorCode::of_status(&e), ErrorCode::NotFound, "{what}: {e}");
        assert_eq!(
            stats(&mut c).await.object_store_used,
            used,
            "{what} left bytes"
        );
    }
    // No first chunk, or a bad id: invalid, nothing created.
    let e = write(&mut c, Vec::new()).await.unwrap_err();
    assert_eq!(ErrorCode::of_status(&e), ErrorCode::InvalidArgument, "{e}");
    let mut bad = first(id, 1, vec![0]);
    bad.create.as_mut().unwrap().object_id = vec![1, 2, 3];
    let e = write(&mut c, vec![bad]).await.unwrap_err();
    assert_eq!(ErrorCode::of_status(&e), ErrorCode::InvalidArgument, "{e}");
    let e = write(&mut c, vec![chunk(0, vec![0])]).await.unwrap_err();
    assert_eq!(ErrorCode::of_status(&e), ErrorCode::InvalidArgument, "{e}");

    // A client that goes away mid-stream: the object is aborted once the raylet notices.
    let gone = ObjectId::random();
    let (tx, rx) = mpsc::channel(4);
    tx.send(first(gone, size, parts[0].clone())).await.unwrap();
    let mut writer = c.clone();
    let call = tokio::spawn(async move { writer.plasma_write(ReceiverStream::new(rx)).await });
    eventually("the unsealed object to take room", || {
        let mut c = c.clone();
        async move { (stats(&mut c).await.object_store_used > used).then_some(()) }
    })
    .await;
    call.abort();
    drop(tx);
    eventually("the broken write to be aborted", || {
        let mut c = c.clone();
        async move { (stats(&mut c).await.object_store_used == used).then_some(()) }
    })
    .await;
    assert!(read(&mut c, gone).await.is_err());

    raylet.shutdown().await;
    gcs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_ranges_of_an_object_are_served_and_bad_ranges_refused() {
    let gcs = start_gcs().await;
    let dir = tempfile::tempdir().unwrap();
    let raylet = start_raylet(&gcs, dir.path(), &[("CPU", 1.0)]).await;
    let mut c = raylet_client(&raylet).await;
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let size = payload.len() as u64;
    let id = ObjectId::random();
    assert_eq!(
        write(&mut c, vec![first(id, size, payload.clone())])
            .await
            .unwrap(),
        size
    );

    // A range inside the object, one across chunk boundaries, and one cut at the end.
    for (offset, length) in [(0, 10), (1_048_000, 1_100_000), (2_999_990, 1_000)] {
        let got = read_range(&mut c, id, offset, length).await.unwrap();
        let end = (offset + length).min(size) as usize;
        assert!(
            got == payload[offset as usize..end],
            "range {offset}+{length}: {} bytes",
            got.len()
        );
    }
    // From an offset to the end; the end itself is an empty range that still names the size.
    assert_eq!(
        read_range(&mut c, id, 2_000_000, 0).await.unwrap(),
        payload[2_000_000..]
    );
    assert!(read_range(&mut c, id, size, 0).await.unwrap().is_empty());
    // Past the end: refused, and the object is served as before.
    let e = read_range(&mut c, id, size + 1, 0).await.unwrap_err();
    assert_eq!(ErrorCode::of_status(&e), ErrorCode::InvalidArgument, "{e}");
    assert_eq!(read(&mut c, id).await.unwrap(), payload);

    raylet.shutdown().await;
    gcs.shutdown().await;
}
