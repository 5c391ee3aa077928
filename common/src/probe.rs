//! Is a core worker (a driver or a worker process) still there? Asked by the GCS of drivers
//! and of actors' workers after a restart, and by callers of an actor whose push failed.

use std::time::Duration;

use miniray_proto::GetObjectStatusRequest;
use miniray_proto::core_worker_client::CoreWorkerClient;
use tonic::Code;

use crate::auth::AuthedChannel;
use crate::ids::ID_LEN;

/// Whether the core worker behind `client` answers within `timeout`. A server that answers
/// at all, even with an error, counts as there; transport failures (which tonic reports as
/// `Unavailable` or `Unknown`) and silence do not.
pub async fn core_worker_answers(
    mut client: CoreWorkerClient<AuthedChannel>,
    timeout: Duration,
) -> bool {
    // An id nobody owns: the cheapest call every core worker serves.
    let probe = client.get_object_status(GetObjectStatusRequest {
        object_id: vec![0; ID_LEN],
        wait: false,
    });
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(_)) => true,
        Ok(Err(status)) => !matches!(status.code(), Code::Unavailable | Code::Unknown),
        Err(_) => false,
    }
}
