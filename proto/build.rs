//! Compiles `proto/*.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/common.proto",
        "proto/gcs.proto",
        "proto/raylet.proto",
        "proto/core_worker.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Task-event columns are read in place: `Bytes` slices the received message
        // rather than copying each column out of it.
        .bytes(".miniray.TaskEventBatch")
        // Object chunks too: received data is written to plasma straight from the
        // message's receive buffer, and served data can be a view of plasma.
        .bytes(".miniray.ObjectChunk")
        // Executable chunks are slices of one buffer on every side: the GCS serves a
        // stored executable to many raylets at once without a copy per fetch.
        .bytes(".miniray.ExecutableChunk")
        .compile_fds(descriptors)?;
    Ok(())
}
