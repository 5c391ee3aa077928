//! The executable cache against a real GCS: files are private, verified before each use
//! (fetched again when tampered with), and a cache folder someone else controls is refused.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use miniray_common::auth::AuthedChannel;
use miniray_common::config::TRANSFER_CHUNK_SIZE;
use miniray_proto::ExecutableChunk;
use miniray_proto::gcs_client::GcsClient;
use miniray_raylet::executable_cache::{ExecutableCache, ExecutableError};

async fn upload(gcs: &mut GcsClient<AuthedChannel>, bytes: &[u8]) -> String {
    let hash = blake3::hash(bytes).to_hex().to_string();
    let chunks: Vec<ExecutableChunk> = bytes
        .chunks(TRANSFER_CHUNK_SIZE)
        .enumerate()
        .map(|(i, c)| ExecutableChunk {
            hash: if i == 0 { hash.clone() } else { String::new() },
            total_size: bytes.len() as u64,
            data: c.to_vec().into(),
        })
        .collect();
    gcs.put_executable(tokio_stream::iter(chunks))
        .await
        .expect("upload");
    hash
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_executables_are_private_and_verified_before_each_use() {
    let gcs = start_gcs().await;
    let mut client = gcs_client(&gcs).await;
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let hash = upload(&mut client, &bytes).await;
    let root = tempfile::tempdir().expect("temp dir");
    let dir = root.path().join("executables");
    let cache = ExecutableCache::new(dir.clone(), 0);

    let path = cache.ensure(&mut client, &hash).await.expect("fetched");
    assert_eq!(std::fs::read(&path).expect("read"), bytes);
    assert_eq!(mode(&dir), 0o700, "the folder is private");
    assert_eq!(mode(&path), 0o700, "the file is private");
    // Cached: the same file, not fetched again.
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("stat"));
    let first = ino(&path);
    cache.ensure(&mut client, &hash).await.expect("cached");
    assert_eq!(ino(&path), first);

    // One byte changed in place (same size, same inode): caught before use, fetched again.
    let mut tampered = bytes.clone();
    tampered[1000] ^= 0xff;
    std::fs::write(&path, &tampered).expect("tamper");
    let path = cache
        .ensure(&mut client, &hash)
        .await
        .expect("fetched again");
    assert_eq!(std::fs::read(&path).expect("read"), bytes);

    // A symlink under the hash's name is not followed but replaced by the real file.
    let decoy = root.path().join("decoy");
    std::fs::write(&decoy, b"#!/bin/sh\necho decoy\n").expect("decoy");
    std::fs::remove_file(&path).expect("remove");
    std::os::unix::fs::symlink(&decoy, &path).expect("symlink");
    let path = cache.ensure(&mut client, &hash).await.expect("replaced");
    assert!(std::fs::symlink_metadata(&path).expect("stat").is_file());
    assert_eq!(std::fs::read(&path).expect("read"), bytes);
    assert_eq!(
        std::fs::read(&decoy).expect("read"),
        b"#!/bin/sh\necho decoy\n"
    );

    // A file others may write is replaced by a private one.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o722)).expect("chmod");
    let path = cache.ensure(&mut client, &hash).await.expect("replaced");
    assert_eq!(mode(&path), 0o700);

    // Our own folder with a loose mode is made private again.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    cache.ensure(&mut client, &hash).await.expect("cached");
    assert_eq!(mode(&dir), 0o700);

    // A cache folder that is a symlink, or that another user owns, is refused.
    let link = root.path().join("link");
    std::os::unix::fs::symlink(&dir, &link).expect("symlink");
    let err = ExecutableCache::new(link, 0)
        .ensure(&mut client, &hash)
        .await
        .expect_err("a symlinked folder is refused");
    assert!(matches!(err, ExecutableError::UnsafeDir { .. }), "{err}");
    let foreign = root.path().join("foreign");
    std::fs::create_dir(&foreign).expect("mkdir");
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // Tests run as root (they mount tmpfs too): hand the folder to `nobody`.
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).expect("chown (needs root)");
    let err = ExecutableCache::new(foreign.clone(), 0)
        .ensure(&mut client, &hash)
        .await
        .expect_err("a folder of another user is refused");
    assert!(
        matches!(err, ExecutableError::UnsafeDir { .. }) && err.to_string().contains("65534"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(&foreign).expect("list").next().is_none(),
        "nothing was written into it"
    );
    gcs.shutdown().await;
}
