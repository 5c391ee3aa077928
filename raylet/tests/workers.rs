//! The worker pool and lease scheduling with real worker processes: the test executable
//! (`miniray-raylet-test-worker`) is registered as a job's executable in a real GCS, and
//! real raylets start it.
//!
//! One test function on purpose: it points `MINIRAY_TMPDIR` (where raylets cache job
//! executables) at a temporary folder before any other thread exists, so the cache is
//! private to this run and removed with it.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use miniray_common::auth::AuthedChannel;
use miniray_common::config::TRANSFER_CHUNK_SIZE;
use miniray_common::{ErrorCode, JobId, NodeId, WorkerId};
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::request_worker_lease_reply::Outcome;
use miniray_proto::*;
use miniray_raylet::{Raylet, RayletHandle};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_miniray-raylet-test-worker");

#[test]
fn worker_pool_and_leases() {
    let tmp_root = tempfile::tempdir().unwrap();
    // SAFETY: no other thread exists yet in this test binary's single test (the runtime is
    // built below), so nothing reads the environment concurrently.
    unsafe { std::env::set_var(miniray_common::config::env::TMPDIR, tmp_root.path()) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(scenario(tmp_root.path()));
}

async fn register_job(gcs: &mut GcsClient<AuthedChannel>, env: &[(&str, &str)]) -> JobId {
    let bytes = std::fs::read(WORKER_BIN).unwrap();
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let total = bytes.len() as u64;
    let chunks: Vec<ExecutableChunk> = bytes
        .chunks(TRANSFER_CHUNK_SIZE)
        .enumerate()
        .map(|(i, c)| ExecutableChunk {
            hash: if i == 0 { hash.clone() } else { String::new() },
            total_size: total,
            data: c.to_vec().into(),
        })
        .collect();
    gcs.put_executable(tokio_stream::iter(chunks))
        .await
        .unwrap();
    let job = JobId::random();
    gcs.add_job(AddJobRequest {
        job: Some(JobInfo {
            job_id: job.to_vec(),
            executable_hash: hash,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    job
}

fn cpu(n: f64) -> ResourceSet {
    let mut r = ResourceSet::default();
    r.amounts.insert("CPU".into(), n);
    r
}

fn lease_req(job: JobId, resources: ResourceSet, no_spillback: bool) -> RequestWorkerLeaseRequest {
    RequestWorkerLeaseRequest {
        job_id: job.to_vec(),
        resources: Some(resources),
        no_spillback,
        requester: None,
        grant_or_reject: false,
    }
}

/// A request as a submitter sends it to the node it was spilled to.
fn spilled_req(job: JobId, resources: ResourceSet) -> RequestWorkerLeaseRequest {
    RequestWorkerLeaseRequest {
        grant_or_reject: true,
        ..lease_req(job, resources, false)
    }
}

async fn lease(c: &mut RayletClient<AuthedChannel>, req: RequestWorkerLeaseRequest) -> Outcome {
    tokio::time::timeout(DEADLINE, c.request_worker_lease(req))
        .await
        .expect("lease answered in time")
        .expect("lease succeeds")
        .into_inner()
        .outcome
        .expect("lease outcome")
}

fn granted(o: Outcome) -> LeaseGrant {
    match o {
        Outcome::Granted(g) => g,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn spilled(o: Outcome) -> NodeAddress {
    match o {
        Outcome::Spillback(a) => a,
        other => panic!("expected spillback, got {other:?}"),
    }
}

fn worker_id(g: &LeaseGrant) -> WorkerId {
    WorkerId::from_bytes(&g.worker.as_ref().unwrap().worker_id).unwrap()
}

/// The pid a test worker printed into its stdout log.
async fn worker_pid(session: &Path, worker: WorkerId) -> i32 {
    let log = session.join("logs").join(format!("worker-{worker}.out"));
    eventually("the worker's pid in its log", || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("pid="))
                .and_then(|p| p.trim().parse().ok())
        }
    })
    .await
}

fn alive(pid: i32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

async fn stats(c: &mut RayletClient<AuthedChannel>) -> GetNodeStatsReply {
    c.get_node_stats(GetNodeStatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn available_cpu(s: &GetNodeStatsReply) -> f64 {
    s.node
        .as_ref()
        .and_then(|n| n.available.as_ref())
        .and_then(|a| a.amounts.get("CPU").copied())
        .unwrap_or(0.0)
}

async fn wait_stats(
    c: &RayletClient<AuthedChannel>,
    what: &str,
    ok: impl Fn(&GetNodeStatsReply) -> bool,
) {
    eventually(what, || {
        let mut c = c.clone();
        let s = async move { stats(&mut c).await };
        let ok = &ok;
        async move {
            let s = s.await;
            ok(&s).then_some(())
        }
    })
    .await
}

async fn start(
    gcs: &miniray_gcs::GcsHandle,
    session: &Path,
    resources: &[(&str, f64)],
    start_timeout: Duration,
) -> RayletHandle {
    let mut cfg = raylet_config(gcs, session, resources);
    cfg.object_store_memory = 8 << 20;
    cfg.worker_start_timeout = start_timeout;
    cfg.idle_worker_timeout = Duration::from_millis(300);
    Raylet::start(cfg).await.unwrap()
}

async fn scenario(tmp_root: &Path) {
    let gcs = start_gcs().await;
    let mut g = gcs_client(&gcs).await;
    let job = register_job(&mut g, &[]).await;
    let sessions: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (sa, sb, sc, sd) = (
        sessions[0].path(),
        sessions[1].path(),
        sessions[2].path(),
        sessions[3].path(),
    );
    let start_timeout = Duration::from_secs(30);
    let a = start(&gcs, sa, &[("CPU", 1.0)], start_timeout).await;
    let b = start(&gcs, sb, &[("CPU", 1.0)], start_timeout).await;
    let mut ca = raylet_client(&a).await;
    let mut cb = raylet_client(&b).await;
    let mut pids = Vec::new();

    // 1. A lease on A starts a worker process; the grant carries its address.
    let l1 = granted(lease(&mut ca, lease_req(job, cpu(1.0), false)).await);
    let w1 = worker_id(&l1);
    let addr = l1.worker.clone().unwrap();
    assert_eq!(addr.node_id, a.node_id().to_vec());
    assert_eq!(addr.host, "127.0.0.1");
    let pid1 = worker_pid(sa, w1).await;
    pids.push(pid1);
    assert!(alive(pid1));
    tokio::net::TcpStream::connect(("127.0.0.1", addr.port as u16))
        .await
        .expect("the worker listens at the granted address");
    let cached = tmp_root.join("executables").join(
        blake3::hash(&std::fs::read(WORKER_BIN).unwrap())
            .to_hex()
            .as_str(),
    );
    assert!(
        cached.is_file(),
        "executable cached at {}",
        cached.display()
    );
    let s = stats(&mut ca).await;
    assert_eq!(available_cpu(&s), 0.0);
    assert_eq!(s.num_workers, 1);

    // 2. A is busy: a lease spills back to B, which has a CPU free.
    let to_b = spilled(lease(&mut ca, lease_req(job, cpu(1.0), false)).await);
    assert_eq!(to_b.node_id, b.node_id().to_vec());
    assert_eq!(to_b.port, u32::from(b.address().port()));
    let lb = granted(lease(&mut cb, spilled_req(job, cpu(1.0))).await);
    pids.push(worker_pid(sb, worker_id(&lb)).await);
    // B is full now: a second spilled request is rejected at once (its requester asks its
    // home again), not queued on B where it would wait whatever other nodes free up.
    let again = lease(&mut cb, spilled_req(job, cpu(1.0))).await;
    assert!(
        matches!(again, Outcome::Rejected(_)),
        "expected a rejection, got {again:?}"
    );
    assert_eq!(stats(&mut cb).await.num_workers, 1);
    assert!(
        stats(&mut cb)
            .await
            .node
            .is_some_and(|n| n.demand.is_empty()),
        "nothing was queued on B"
    );
    // A returned lease with `disconnect` stops its worker.
    cb.return_worker(ReturnWorkerRequest {
        lease_id: lb.lease_id.clone(),
        disconnect: true,
    })
    .await
    .unwrap();
    wait_stats(&cb, "the disconnected worker to exit", |s| {
        s.num_workers == 0 && available_cpu(s) == 1.0
    })
    .await;

    // 3. A request that may not spill waits in A's queue, shows as demand, and is granted
    //    when L1 is returned — to the same, reused worker.
    let mut waiting_client = ca.clone();
    let waiting =
        tokio::spawn(
            async move { lease(&mut waiting_client, lease_req(job, cpu(1.0), true)).await },
        );
    let a_id = a.node_id();
    eventually("queued demand in the gcs", || {
        let mut g = g.clone();
        async move {
            let n = node_in_gcs(&mut g, a_id).await?;
            n.demand
                .iter()
                .any(|d| {
                    d.count == 1
                        && !d.infeasible
                        && d.shape.as_ref().and_then(|s| s.amounts.get("CPU")) == Some(&1.0)
                })
                .then_some(())
        }
    })
    .await;
    ca.return_worker(ReturnWorkerRequest {
        lease_id: l1.lease_id.clone(),
        disconnect: false,
    })
    .await
    .unwrap();
    let l3 = granted(waiting.await.unwrap());
    assert_eq!(worker_id(&l3), w1, "the idle worker is reused");
    assert_eq!(stats(&mut ca).await.num_workers, 1);

    // 4. Infeasible: nobody has a GPU. Reported as infeasible demand, then spilled to a
    //    raylet with a GPU once it joins.
    let mut gpu_client = ca.clone();
    let gpu_wait = tokio::spawn(async move {
        let mut r = ResourceSet::default();
        r.amounts.insert("GPU".into(), 1.0);
        lease(&mut gpu_client, lease_req(job, r, false)).await
    });
    eventually("infeasible demand in the gcs", || {
        let mut g = g.clone();
        async move {
            let n = node_in_gcs(&mut g, a_id).await?;
            n.demand
                .iter()
                .any(|d| {
                    d.infeasible
                        && d.shape.as_ref().and_then(|s| s.amounts.get("GPU")) == Some(&1.0)
                })
                .then_some(())
        }
    })
    .await;
    let d = start(&gcs, sd, &[("CPU", 1.0), ("GPU", 1.0)], start_timeout).await;
    let to_d = spilled(gpu_wait.await.unwrap());
    assert_eq!(to_d.node_id, d.node_id().to_vec());
    let mut cd = raylet_client(&d).await;
    let mut gpu = ResourceSet::default();
    gpu.amounts.insert("GPU".into(), 1.0);
    let ld = granted(lease(&mut cd, spilled_req(job, gpu)).await);
    pids.push(worker_pid(sd, worker_id(&ld)).await);

    // 5. A cancelled queued request leaves the queue.
    let mut cancel_client = ca.clone();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        cancel_client.request_worker_lease(lease_req(job, cpu(1.0), true)),
    )
    .await;
    assert!(cancelled.is_err(), "the request was still queued");
    wait_stats(&ca, "the cancelled request to leave the queue", |s| {
        s.node.as_ref().is_some_and(|n| n.demand.is_empty())
    })
    .await;

    // 6. A blocked worker lends its CPU: a queued lease gets it; unblocking takes it back.
    let mut blocked_client = ca.clone();
    let second =
        tokio::spawn(
            async move { lease(&mut blocked_client, lease_req(job, cpu(1.0), true)).await },
        );
    wait_stats(&ca, "the second request to queue", |s| {
        s.node.as_ref().is_some_and(|n| !n.demand.is_empty())
    })
    .await;
    ca.notify_blocked(NotifyBlockedRequest {
        worker_id: w1.to_vec(),
        blocked: true,
    })
    .await
    .unwrap();
    let l6 = granted(second.await.unwrap());
    let w6 = worker_id(&l6);
    assert_ne!(w6, w1);
    pids.push(worker_pid(sa, w6).await);
    ca.notify_blocked(NotifyBlockedRequest {
        worker_id: w1.to_vec(),
        blocked: false,
    })
    .await
    .unwrap();
    assert_eq!(available_cpu(&stats(&mut ca).await), 0.0);
    ca.return_worker(ReturnWorkerRequest {
        lease_id: l6.lease_id.clone(),
        disconnect: false,
    })
    .await
    .unwrap();
    // Over-committed by one CPU until L6 came back: still nothing free.
    assert_eq!(available_cpu(&stats(&mut ca).await), 0.0);
    ca.return_worker(ReturnWorkerRequest {
        lease_id: l3.lease_id.clone(),
        disconnect: false,
    })
    .await
    .unwrap();
    assert_eq!(available_cpu(&stats(&mut ca).await), 1.0);

    // 7. Two idle workers on a 1-CPU node: the one idle longest is asked to exit (Exit rpc)
    //    after the idle timeout; the other stays.
    wait_stats(&ca, "the extra idle worker to exit", |s| {
        s.num_workers == 1 && s.num_idle_workers == 1
    })
    .await;
    let w6_log = sa.join("logs").join(format!("worker-{w6}.out"));
    eventually("the extra worker to log its exit rpc", || {
        let log = w6_log.clone();
        async move {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("exit rpc"))
        }
    })
    .await;

    // 8. A SIGKILLed leased worker frees its lease's resources and leaves the pool.
    let l7 = granted(lease(&mut ca, lease_req(job, cpu(1.0), true)).await);
    assert_eq!(worker_id(&l7), w1, "the remaining idle worker is reused");
    assert_eq!(available_cpu(&stats(&mut ca).await), 0.0);
    // SAFETY: kill(2) on a pid of a test worker this test saw alive.
    unsafe { libc::kill(pid1, libc::SIGKILL) };
    wait_stats(&ca, "the killed worker's CPU to come back", |s| {
        available_cpu(s) == 1.0 && s.num_workers == 0
    })
    .await;

    // 9. A worker that never registers is killed after the start timeout; the lease fails
    //    naming its log, and nothing stays taken.
    let hang_job = register_job(&mut g, &[("MINIRAY_TEST_WORKER_MODE", "hang")]).await;
    let c_raylet = start(&gcs, sc, &[("CPU", 1.0)], Duration::from_secs(2)).await;
    let mut cc = raylet_client(&c_raylet).await;
    let err = tokio::time::timeout(
        DEADLINE,
        cc.request_worker_lease(lease_req(hang_job, cpu(1.0), true)),
    )
    .await
    .expect("the failed start is answered")
    .unwrap_err();
    assert_eq!(ErrorCode::of_status(&err), ErrorCode::Unavailable);
    assert!(
        err.message().contains("worker-") && err.message().contains(".err"),
        "error names the log file: {}",
        err.message()
    );
    wait_stats(&cc, "the hung worker to be reaped", |s| {
        s.num_workers == 0 && available_cpu(s) == 1.0
    })
    .await;

    // 10. Lease requests given up while their workers start (as a driver that exits does)
    //     leave workers the pool still manages: when their job ends, every one goes.
    let quit_job = register_job(&mut g, &[]).await;
    for k in 0..30u64 {
        let asked = tokio::time::timeout(
            Duration::from_micros(300 * (k % 10)),
            cc.request_worker_lease(lease_req(quit_job, cpu(1.0), true)),
        )
        .await;
        if let Ok(Ok(reply)) = asked
            && let Some(Outcome::Granted(grant)) = reply.into_inner().outcome
        {
            cc.return_worker(ReturnWorkerRequest {
                lease_id: grant.lease_id,
                disconnect: false,
            })
            .await
            .unwrap();
        }
    }
    g.mark_job_finished(MarkJobFinishedRequest {
        job_id: quit_job.to_vec(),
    })
    .await
    .unwrap();
    wait_stats(&cc, "every worker of the finished job to go", |s| {
        s.num_workers == 0 && available_cpu(s) == 1.0
    })
    .await;

    // 11. Shutdown leaves no worker process and no segment.
    let nodes: Vec<(NodeId, PathBuf)> = vec![
        (a.node_id(), sa.to_path_buf()),
        (b.node_id(), sb.to_path_buf()),
        (c_raylet.node_id(), sc.to_path_buf()),
        (d.node_id(), sd.to_path_buf()),
    ];
    for r in [a, b, c_raylet, d] {
        r.shutdown().await;
    }
    for pid in pids {
        assert!(!alive(pid), "worker {pid} is gone after shutdown");
    }
    for (node, session) in nodes {
        assert!(
            !segment_path(&session, node).exists(),
            "segment of {node} removed"
        );
        assert!(session.join("logs").is_dir());
    }
    gcs.shutdown().await;
}
