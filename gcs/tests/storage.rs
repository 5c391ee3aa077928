//! One behavioural suite for every `Storage` backend.

use miniray_gcs::storage::{MemoryStorage, RedisStorage, Storage, StorageError};
use miniray_gcs::testing::RedisServer;

async fn storage_suite(s: &dyn Storage) {
    // put reports whether the key is new; get/exists see the latest value.
    assert!(s.put("t", b"a", b"1").await.unwrap());
    assert!(!s.put("t", b"a", b"2").await.unwrap());
    assert_eq!(s.get("t", b"a").await.unwrap(), Some(b"2".to_vec()));
    assert!(s.exists("t", b"a").await.unwrap());
    assert!(!s.exists("t", b"missing").await.unwrap());
    assert_eq!(s.get("t", b"missing").await.unwrap(), None);
    assert_eq!(s.get("no-such-table", b"a").await.unwrap(), None);

    // put_if_absent never replaces.
    assert!(!s.put_if_absent("t", b"a", b"3").await.unwrap());
    assert_eq!(s.get("t", b"a").await.unwrap(), Some(b"2".to_vec()));
    assert!(s.put_if_absent("t", b"b", b"4").await.unwrap());
    assert_eq!(s.get("t", b"b").await.unwrap(), Some(b"4".to_vec()));

    // Binary keys and values survive untouched, including a large value.
    let key = [0u8, 0xff, b'\n', 0x80];
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    assert!(s.put("bin", &key, &big).await.unwrap());
    assert_eq!(s.get("bin", &key).await.unwrap(), Some(big));

    // Tables are isolated from each other.
    assert!(s.put("other", b"a", b"x").await.unwrap());
    assert_eq!(s.get("t", b"a").await.unwrap(), Some(b"2".to_vec()));

    // get_all returns exactly the table's entries.
    let mut all = s.get_all("t").await.unwrap();
    all.sort();
    assert_eq!(
        all,
        vec![
            (b"a".to_vec(), b"2".to_vec()),
            (b"b".to_vec(), b"4".to_vec())
        ]
    );
    assert!(s.get_all("no-such-table").await.unwrap().is_empty());

    // Prefix listing is sorted and exact.
    for k in [&b"job:2"[..], b"job:1", b"jo", b"node:1", b"job:\xff"] {
        s.put("p", k, b"v").await.unwrap();
    }
    assert_eq!(
        s.keys_with_prefix("p", b"job:").await.unwrap(),
        vec![b"job:1".to_vec(), b"job:2".to_vec(), b"job:\xff".to_vec()]
    );
    assert_eq!(s.keys_with_prefix("p", b"").await.unwrap().len(), 5);
    assert!(s.keys_with_prefix("p", b"zzz").await.unwrap().is_empty());
    assert!(s.keys_with_prefix("empty", b"").await.unwrap().is_empty());

    // delete reports whether something was removed.
    assert!(s.delete("t", b"a").await.unwrap());
    assert!(!s.delete("t", b"a").await.unwrap());
    assert!(!s.delete("no-such-table", b"a").await.unwrap());
    assert_eq!(s.get("t", b"a").await.unwrap(), None);
    assert_eq!(s.get_all("t").await.unwrap().len(), 1);
}

#[tokio::test]
async fn memory_storage_passes_the_suite() {
    storage_suite(&MemoryStorage::new()).await;
}

#[tokio::test]
async fn redis_storage_passes_the_suite() {
    let redis = RedisServer::start().unwrap();
    let storage = RedisStorage::connect(&redis.url()).await.unwrap();
    storage_suite(&storage).await;
}

#[tokio::test]
async fn redis_prefixes_keep_clusters_apart() {
    let redis = RedisServer::start().unwrap();
    let a = RedisStorage::connect_with_prefix(&redis.url(), "a:")
        .await
        .unwrap();
    let b = RedisStorage::connect_with_prefix(&redis.url(), "b:")
        .await
        .unwrap();
    a.put("t", b"k", b"from a").await.unwrap();
    assert_eq!(b.get("t", b"k").await.unwrap(), None);
    assert_eq!(a.get("t", b"k").await.unwrap(), Some(b"from a".to_vec()));
}

#[tokio::test]
async fn redis_errors_are_typed() {
    assert!(matches!(
        RedisStorage::connect("not a url").await,
        Err(StorageError::BadUrl { .. })
    ));
    // A port nobody listens on: the server we started is gone after the drop.
    let url = {
        let redis = RedisServer::start().unwrap();
        redis.url()
    };
    match RedisStorage::connect(&url).await {
        Err(e @ StorageError::Unavailable(_)) => {
            assert_eq!(e.code(), miniray_common::ErrorCode::Unavailable)
        }
        Err(e) => panic!("expected Unavailable, got {e}"),
        Ok(_) => panic!("connected to a stopped redis"),
    }
}

#[tokio::test]
async fn redis_operations_fail_unavailable_when_redis_dies() {
    let redis = RedisServer::start().unwrap();
    let storage = RedisStorage::connect(&redis.url()).await.unwrap();
    storage.put("t", b"k", b"v").await.unwrap();
    drop(redis);
    let err = storage.get("t", b"k").await.unwrap_err();
    assert_eq!(err.code(), miniray_common::ErrorCode::Unavailable, "{err}");
}
