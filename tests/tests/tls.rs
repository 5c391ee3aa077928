//! Mutual TLS on whole clusters of real processes: a TLS cluster of two nodes, each in a
//! network namespace, runs a driver in a third through tasks, cross-node objects and
//! actors; clients without the cluster's certificate, with another CA's, or in plaintext
//! are refused; a right certificate with a wrong token is not enough.
//! Also HTTP/2 keepalive: a call to a server that stopped answering fails in bounded time.
//!
//! The TLS setting of a process is process-wide, so every test here shares one CA and node
//! certificate, made by the generator behind `miniray tls init`, and this process uses it
//! too (the sandbox's own GCS calls go over TLS).

mod support;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use miniray_common::auth::AddToken;
use miniray_common::tls::{self, GeneratedCerts, Tls};
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::{GetAllNodesRequest, GetNodeStatsRequest};
use support::netns::Hosts;
use support::{Cluster, DRIVER_DEADLINE, DriverRun, Options};

/// The driver's host in the namespace test.
const DRIVER_HOST: usize = 2;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The certificates of every cluster in this file, installed as this process's setting.
fn certs() -> &'static GeneratedCerts {
    static CERTS: OnceLock<GeneratedCerts> = OnceLock::new();
    CERTS.get_or_init(|| {
        let certs = tls::generate_certs(&[], &[]).expect("generate certificates");
        let own = Tls::from_pem(
            certs.node_cert.as_bytes(),
            certs.node_key.as_bytes(),
            certs.ca_cert.as_bytes(),
        )
        .expect("load the generated certificates");
        tls::install(Some(own)).expect("install TLS in the test process");
        certs
    })
}

/// A TLS cluster and the folder of its certificate files (removed after the cluster).
struct TlsCluster {
    cluster: Cluster,
    _certs: tempfile::TempDir,
}

fn tls_cluster(opts: Options) -> TlsCluster {
    let dir = tempfile::tempdir().expect("a folder for the certificates");
    let files = certs()
        .write(dir.path(), false)
        .expect("write the certificates");
    TlsCluster {
        cluster: Cluster::start(Options {
            tls: Some(files),
            ..opts
        }),
        _certs: dir,
    }
}

/// Hosts 0 and 1 run a node each (the GCS on host 0); the driver runs on host 2, each in a
/// network namespace of its own, so every call crosses a real (virtual) link under TLS.
#[test]
fn a_tls_cluster_in_namespaces_runs_tasks_objects_and_actors_across_hosts() {
    let mut c = tls_cluster(Options {
        head_cpus: 1.0,
        hosts: Some(Arc::new(Hosts::new(3))),
        ..Options::default()
    });
    let cluster = &mut c.cluster;
    let remote = cluster.add_node_on_host(1, 1.0, &[("remote", 1.0)], false, 1 << 30);
    support::wait_until("both nodes registered", Duration::from_secs(30), || {
        cluster.nodes_info().len() == 2
    });
    let run_driver = |cluster: &Cluster, args: &[&str]| {
        DriverRun::wait(cluster.spawn_driver_on(DRIVER_HOST, args), DRIVER_DEADLINE)
    };

    let run = run_driver(cluster, &["spill"]);
    run.assert_success();
    assert_eq!(run.get("distinct_nodes"), "2", "{}", run.stdout);

    let run = run_driver(cluster, &["cross_node_object"]);
    run.assert_success();
    assert_eq!(
        run.get("remote_node"),
        cluster.nodes[remote].node_id.to_string()
    );
    assert_eq!(run.get("to_remote_ok"), "true");
    assert_eq!(run.get("from_remote_ok"), "true");

    let run = run_driver(cluster, &["actor_features"]);
    run.assert_success();
    assert_eq!(run.get("from_task"), "3");
    assert_eq!(run.get("from_actor"), "4");
    assert_eq!(run.get("named_value"), "7");

    assert!(cluster.all_alive());
    assert_eq!(cluster.stop(), Vec::<String>::new(), "segments left behind");
}

/// `GetAllNodes` on `address` over `endpoint` (given as `scheme://address`) with `token`.
async fn gcs_call(endpoint: Endpoint, token: &str) -> Result<usize, String> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let add = AddToken::new(token).map_err(|e| e.to_string())?;
    let mut gcs = GcsClient::new(InterceptedService::new(channel, add));
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        gcs.get_all_nodes(GetAllNodesRequest {}),
    )
    .await
    .map_err(|_| "no answer within 10 s".to_string())?;
    reply
        .map(|r| r.into_inner().nodes.len())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

fn tls_endpoint(address: &str, config: ClientTlsConfig) -> Endpoint {
    Endpoint::from_shared(format!("https://{address}"))
        .expect("address")
        .connect_timeout(Duration::from_secs(5))
        .tls_config(config)
        .expect("client TLS config")
}

#[test]
fn clients_without_the_cluster_certificate_or_token_are_refused() {
    let c = tls_cluster(Options::default());
    let cluster = &c.cluster;
    let certs = certs();
    let other = tls::generate_certs(&[], &[]).expect("another CA");
    let ca = Certificate::from_pem(&certs.ca_cert);
    let ours = Identity::from_pem(&certs.node_cert, &certs.node_key);
    let theirs = Identity::from_pem(&other.node_cert, &other.node_key);
    let gcs = cluster.gcs_address.clone();
    let raylet = cluster.nodes[0].address.clone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let verified = || {
            ClientTlsConfig::new()
                .ca_certificate(ca.clone())
                .domain_name(tls::SERVER_NAME)
        };
        // The right certificate and token get in (so the refusals below are about them).
        let nodes = gcs_call(
            tls_endpoint(&gcs, verified().identity(ours.clone())),
            &cluster.token,
        )
        .await;
        assert_eq!(nodes, Ok(1));

        // No client certificate.
        let r = gcs_call(tls_endpoint(&gcs, verified()), &cluster.token).await;
        assert!(r.is_err(), "a client without a certificate got {r:?}");
        let channel = tls_endpoint(&raylet, verified()).connect().await;
        if let Ok(channel) = channel {
            let add = AddToken::new(&cluster.token).expect("token");
            let mut client = RayletClient::new(InterceptedService::new(channel, add));
            let r = client.get_node_stats(GetNodeStatsRequest {}).await;
            assert!(
                r.is_err(),
                "the raylet served a client without a certificate"
            );
        }

        // A certificate of another CA.
        let r = gcs_call(
            tls_endpoint(&gcs, verified().identity(theirs.clone())),
            &cluster.token,
        )
        .await;
        assert!(r.is_err(), "a client of another CA got {r:?}");

        // A client trusting another CA does not accept the cluster's servers either.
        let r = gcs_call(
            tls_endpoint(
                &gcs,
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&other.ca_cert))
                    .domain_name(tls::SERVER_NAME)
                    .identity(theirs),
            ),
            &cluster.token,
        )
        .await;
        assert!(
            r.is_err(),
            "a client of another CA accepted the server: {r:?}"
        );

        // The right certificate, a wrong token.
        let r = gcs_call(
            tls_endpoint(&gcs, verified().identity(ours.clone())),
            "wrong-token",
        )
        .await;
        match r {
            Err(e) => assert!(e.starts_with("Unauthenticated"), "{e}"),
            Ok(n) => panic!("a wrong token got {n} nodes"),
        }

        // Plaintext to a TLS server.
        let plain = Endpoint::from_shared(format!("http://{gcs}"))
            .expect("address")
            .connect_timeout(Duration::from_secs(5));
        let r = gcs_call(plain, &cluster.token).await;
        assert!(r.is_err(), "a plaintext client got {r:?}");

        // Plaintext to a TLS raylet's object data plane, with the right token: the raylet
        // expects a TLS handshake after the magic and sends no header (at most a TLS
        // alert, a record of type 21).
        let mut plain = tokio::net::TcpStream::connect(&raylet)
            .await
            .expect("connect to the raylet");
        let request = prost::Message::encode_to_vec(&miniray_proto::ObjectTransferRequest {
            token: cluster.token.clone(),
            read: Some(miniray_proto::ReadObjectRequest {
                object_id: vec![7; 16],
                ..Default::default()
            }),
        });
        let mut frame = b"MRXFER1\n".to_vec();
        frame.extend_from_slice(&(request.len() as u32).to_be_bytes());
        frame.extend_from_slice(&request);
        tokio::io::AsyncWriteExt::write_all(&mut plain, &frame)
            .await
            .expect("send");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut answer),
        )
        .await
        .expect("the raylet closes the connection");
        assert!(
            answer.first().is_none_or(|&b| b == 21),
            "a plaintext data-plane client got {answer:?}"
        );
    });
    // The same process-wide channels the daemons use still work.
    assert_eq!(cluster.nodes_info().len(), 1);
}

/// Sends SIGCONT to a stopped process when dropped, so a failed assertion does not leave
/// it stopped (its cluster could not stop it).
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a child of this test.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Whether every thread of `pid` is in the stopped state (`T`).
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    })
}

#[test]
fn a_call_to_a_server_that_stopped_answering_fails_within_the_keepalive_bound() {
    let c = tls_cluster(Options::default());
    let cluster = &c.cluster;
    let pid = i32::try_from(cluster.gcs_pid().expect("gcs running")).expect("pid");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (result, elapsed) = rt.block_on(async {
        let channel = miniray_common::auth::connect(&cluster.gcs_address, &cluster.token)
            .await
            .expect("connect to the gcs");
        let mut gcs = GcsClient::new(channel);
        gcs.get_all_nodes(GetAllNodesRequest {})
            .await
            .expect("a first call");
        // A stopped process neither answers nor closes: its kernel keeps the connection
        // open, as with a link cut without FIN or RST.
        // SAFETY: kill(2) on a child of this test; `Resume` continues it.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        let _resume = Resume(pid);
        // The stop is asynchronous: wait until every thread of the GCS is stopped.
        support::wait_until("the gcs stopped", Duration::from_secs(10), || {
            all_threads_stopped(pid)
        });
        let start = Instant::now();
        // No deadline on the call itself: only keepalive can end it (the outer bound is
        // there so a regression fails instead of hanging).
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            gcs.get_all_nodes(GetAllNodesRequest {}),
        )
        .await;
        (result, start.elapsed())
    });
    let status = match result {
        Ok(Err(status)) => status,
        Ok(Ok(_)) => panic!("a stopped gcs answered"),
        Err(_) => panic!("the call hung for 60 s"),
    };
    let bound = miniray_common::transport::KEEPALIVE_INTERVAL
        + miniray_common::transport::KEEPALIVE_TIMEOUT
        + Duration::from_secs(5);
    assert!(
        elapsed < bound,
        "failed after {elapsed:?} (bound {bound:?}): {status}"
    );
}
