//! Serving an object that is still arriving: the part of the object manager that no
//! cluster test can pin down in time.

use super::*;
use miniray_plasma::StoreConfig;

fn store() -> Arc<PlasmaStore> {
    let name = format!(
        "miniray-om-test-{}-{}",
        std::process::id(),
        ObjectId::random()
    );
    Arc::new(PlasmaStore::create_segment(StoreConfig::new(8 << 20, name)).expect("segment"))
}

#[tokio::test]
async fn an_arriving_object_is_served_as_its_bytes_land_and_fails_with_its_pull() {
    let store = store();
    let node = NodeId::random();
    let om = ObjectManager::new(
        node,
        NodeAddress {
            node_id: node.to_vec(),
            host: "127.0.0.1".into(),
            port: 1,
        },
        "token".into(),
        Arc::clone(&store),
    );
    let id = ObjectId::random();
    let missing = om.read(id, 0, 0, 0, None).unwrap_err();
    assert_eq!(missing.code, ErrorCode::NotFound);

    const MIB: u64 = 1 << 20;
    let total = 3 * MIB;
    let data: Vec<u8> = (0..total).map(|i| (i % 247) as u8).collect();
    store.create(id, total, false).unwrap();
    let progress = Arc::new(Progress::new(total, PULL_RANGE));
    let arriving = Arriving::register(&om.arriving, id, Arc::clone(&progress));
    let mut rx = om.read(id, MIB, 0, 0, None).unwrap();

    for k in 0..2 {
        let range = (k * MIB) as usize..((k + 1) * MIB) as usize;
        // Not served before it is written (a wait that can only pass wrongly, never fail).
        let early = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await;
        assert!(early.is_err(), "chunk {k} served before it arrived");
        store.write(id, k * MIB, &data[range.clone()]).unwrap();
        progress.advance((k + 1) * MIB);
        let chunk = rx.recv().await.expect("a chunk").expect("served");
        assert_eq!(chunk.offset, k * MIB);
        assert_eq!(chunk.total_size, total);
        assert_eq!(&chunk.data[..], &data[range]);
    }
    // The pull fails: its readers are told, and the object is no longer offered.
    drop(arriving);
    let failed = rx.recv().await.expect("the failure").unwrap_err();
    assert_eq!(ErrorCode::of_status(&failed), ErrorCode::Unavailable);
    store.abort(id).unwrap();
    assert_eq!(
        om.read(id, 0, 0, 0, None).unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(om.stats().bytes_served, 2 * MIB);
}
