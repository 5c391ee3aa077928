//! Bringing a process's core worker up: as a driver (joining or starting a cluster) or as a
//! worker started by a raylet.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use miniray_common::auth::{self, AuthedChannel};
use miniray_common::config::{self, DEFAULT_INLINE_THRESHOLD, MAX_MESSAGE_SIZE, env};
use miniray_common::{JobId, NodeId, WorkerId, net};
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::{GetAllNodesRequest, NodeAddress, NodeState, RegisterWorkerRequest};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::borrowing::{BorrowQueue, GiveBack};
use super::clients::{Clients, node_endpoint};
use super::home::{Home, HomeCell, Rehomer, choose_home};
use super::local_cluster::{LocalCluster, LocalNodeOptions};
use super::plasma::{PlasmaClient, status_error};
use super::store::{Freed, ObjectStore};
use super::submitter::Submitter;
use super::task_events::TaskEvents;
use super::{CoreWorker, Global, Mode, executor, install, job, metrics, server};
use crate::error::{Error, Result};
use crate::object_ref::OwnerAddr;

/// How long joining a cluster may take before `init` gives up.
const CONNECT_DEADLINE: Duration = Duration::from_secs(15);

/// Options of `init_with`.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    pub(crate) address: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) num_cpus: Option<f64>,
    pub(crate) resources: Vec<(String, f64)>,
    pub(crate) object_store_memory: Option<u64>,
    pub(crate) metrics_port: Option<u16>,
}

impl InitOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// `HOST:PORT` of the GCS of a running cluster (default: `MINIRAY_ADDRESS`, else start a
    /// private local cluster).
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// Serve this driver's Prometheus metrics on `/metrics` at this port of its node IP (0:
    /// any free port; default: `MINIRAY_METRICS_PORT`, else none). The cluster's service
    /// discovery (`/api/prometheus/sd` on the dashboard) lists it while the job runs.
    pub fn metrics_port(mut self, port: u16) -> Self {
        self.metrics_port = Some(port);
        self
    }

    /// The cluster token (default: `MINIRAY_TOKEN`, else the token file `start --head` wrote).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// CPUs of the private local cluster (default: the core count).
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = Some(n);
        self
    }

    /// A custom resource of the private local cluster's node.
    pub fn resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        self.resources.push((name.into(), amount));
        self
    }

    /// Plasma capacity of the private local cluster's node, in bytes.
    pub fn object_store_memory(mut self, bytes: u64) -> Self {
        self.object_store_memory = Some(bytes);
        self
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("miniray")
        .enable_all()
        .build()
        .map_err(|e| Error::Startup(format!("cannot start the async runtime: {e}")))
}

fn unreachable(address: &str, reason: impl ToString) -> Error {
    Error::ClusterUnreachable {
        address: address.to_string(),
        reason: reason.to_string(),
    }
}

/// Listens on a free port of `host`, the node IP this process advertises.
async fn bind_node_ip(host: &str) -> Result<(TcpListener, u16)> {
    let ip = net::bind_ip(host)
        .await
        .map_err(|e| Error::Startup(e.to_string()))?;
    let listener = TcpListener::bind((ip, 0))
        .await
        .map_err(|e| Error::Startup(format!("cannot listen on {ip}: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Startup(e.to_string()))?
        .port();
    Ok((listener, port))
}

fn gcs_client(channel: AuthedChannel) -> GcsClient<AuthedChannel> {
    GcsClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// Starts this process as a driver.
pub(crate) fn start_driver(opts: InitOptions) -> Result<()> {
    miniray_common::logging::init("warn");
    // Checked before anything starts: a bad value changes nothing.
    let metrics_port = match opts.metrics_port {
        Some(port) => Some(port),
        None => metrics::port_from_env()?,
    };
    let address = opts
        .address
        .clone()
        .or_else(|| std::env::var(env::ADDRESS).ok().filter(|a| !a.is_empty()));
    let (cluster, gcs_address, token, own_node) = match address {
        Some(addr) => {
            if opts.token.as_deref() == Some("") {
                return Err(Error::Startup("the cluster token is empty".into()));
            }
            let token = opts
                .token
                .clone()
                .or_else(|| config::find_token(&addr))
                .ok_or_else(|| {
                    Error::Startup(format!(
                        "no cluster token for {addr}: set MINIRAY_TOKEN (printed by `miniray start --head`)"
                    ))
                })?;
            (None, addr, token, None)
        }
        None => {
            let mut resources = miniray_common::Resources::new();
            for (name, amount) in &opts.resources {
                resources
                    .set(name.clone(), *amount)
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            }
            let node = LocalNodeOptions {
                num_cpus: opts.num_cpus,
                resources,
                object_store_memory: opts.object_store_memory,
            };
            // The logs of a driver's cluster stay, for the user to read after a failure.
            let cluster = LocalCluster::start(std::slice::from_ref(&node), true)?;
            let (addr, token, head) = (
                cluster.gcs_address().to_owned(),
                cluster.token().to_owned(),
                cluster.node_ids().first().copied(),
            );
            (Some(cluster), addr, token, head)
        }
    };
    let rt = runtime(1)?;
    let started = rt.block_on(async {
        tokio::time::timeout(
            CONNECT_DEADLINE,
            connect_driver(&gcs_address, &token, own_node),
        )
        .await
        .map_err(|_| unreachable(&gcs_address, "no answer in time"))?
    });
    let (cw, listener, background) = started?;
    let metrics_listener = match metrics_port {
        Some(port) => Some(rt.block_on(metrics::bind(&cw.address.host, port))?),
        None => None,
    };
    let stop = {
        let _guard = rt.enter();
        background.spawn(&cw);
        if cw.home.is_movable() {
            follow_home(&cw, &token)?;
        }
        server::serve(&cw, listener, &token, None)
    };
    let metrics_port = match metrics_listener {
        Some((listener, port)) => {
            let _guard = rt.enter();
            metrics::serve(listener, &cw.address.host, port, &token);
            port
        }
        None => 0,
    };
    rt.block_on(job::register(&cw, metrics_port))?;
    install(Global {
        cw,
        runtime: rt,
        server_stop: Some(stop),
        cluster,
    });
    Ok(())
}

/// Starts re-homing a remote driver when its home is gone (see `home.rs`); node deaths
/// are followed from now on, not from the first task, so a driver that only puts and gets
/// re-homes too.
fn follow_home(cw: &Arc<CoreWorker>, token: &str) -> Result<()> {
    let node_ip = cw.address.host.parse::<IpAddr>().map_err(|e| {
        Error::Internal(format!("this driver's address {:?}: {e}", cw.address.host))
    })?;
    cw.follow_node_deaths();
    tokio::spawn(
        Rehomer {
            gcs: cw.gcs.clone(),
            cell: cw.home.clone(),
            dead: cw.dead_nodes.clone(),
            clients: Clients::new(token.to_string()),
            node_ip,
            worker_id: cw.worker_id,
            job_id: cw.job_id,
        }
        .run(),
    );
    Ok(())
}

type Started = (Arc<CoreWorker>, TcpListener, Background);

async fn connect_driver(
    gcs_address: &str,
    token: &str,
    own_node: Option<NodeId>,
) -> Result<Started> {
    let channel = auth::connect(gcs_address, token)
        .await
        .map_err(|e| unreachable(gcs_address, e))?;
    let mut gcs = gcs_client(channel);
    let nodes = gcs
        .get_all_nodes(GetAllNodesRequest {})
        .await
        .map_err(|s| status_error(gcs_address, s))?
        .into_inner()
        .nodes;
    let alive: Vec<_> = nodes
        .into_iter()
        .filter(|n| n.state == NodeState::Alive as i32)
        .filter_map(|n| n.address.map(|a| (a, n.is_head)))
        .collect();
    let (node_ip, home) = match own_node {
        // The private cluster of `init()` stays on loopback, whatever MINIRAY_NODE_IP says.
        Some(id) => (
            IpAddr::from(Ipv4Addr::LOCALHOST),
            alive
                .iter()
                .find(|(a, _)| a.node_id == id.as_bytes())
                .map(|(a, _)| (a, true)),
        ),
        None => {
            let node_ip = net::node_ip(gcs_address)
                .await
                .map_err(|e| Error::Startup(format!("cannot choose this driver's address: {e}")))?;
            (node_ip, choose_home(&alive, node_ip))
        }
    };
    let (home, local) =
        home.ok_or_else(|| unreachable(gcs_address, "the cluster has no alive node"))?;
    tracing::info!(
        node_ip = %node_ip,
        raylet = %node_endpoint(home),
        remote = !local,
        "driver attached to its home raylet"
    );
    let node_id = NodeId::from_bytes(&home.node_id)
        .map_err(|e| Error::Internal(format!("GCS sent a bad node id: {e}")))?;
    build(
        Mode::Driver,
        gcs,
        gcs_address,
        token,
        Node {
            address: home.clone(),
            id: node_id,
            ip: node_ip.to_string(),
            local,
        },
        WorkerId::random(),
        JobId::random(),
    )
    .await
}

/// The node a core worker belongs to: its raylet, its IP, and whether that raylet's store
/// can be mapped here.
struct Node {
    address: NodeAddress,
    id: NodeId,
    /// What this process binds and advertises.
    ip: String,
    local: bool,
}

async fn build(
    mode: Mode,
    gcs: GcsClient<AuthedChannel>,
    gcs_address: &str,
    token: &str,
    node: Node,
    worker_id: WorkerId,
    job_id: JobId,
) -> Result<Started> {
    let Node {
        address: local_node,
        id: node_id,
        ip,
        local,
    } = node;
    let raylet_endpoint = node_endpoint(&local_node);
    let clients = Clients::new(token.to_string());
    let raylet: RayletClient<AuthedChannel> = clients.raylet(&raylet_endpoint)?;
    // Only a remote driver moves: a worker or local driver lives and dies with its raylet.
    let home = Arc::new(HomeCell::new(
        Home::new(local_node, node_id, raylet),
        mode == Mode::Driver && !local,
    ));
    let plasma = PlasmaClient::connect(home.clone(), worker_id, job_id, local).await?;
    let (listener, port) = bind_node_ip(&ip).await?;
    let (freed_tx, freed_rx) = mpsc::unbounded_channel();
    let (borrows, given_back_rx) = BorrowQueue::new();
    let cw = Arc::new(CoreWorker {
        mode,
        worker_id,
        job_id,
        address: OwnerAddr {
            worker_id,
            node_id,
            host: ip,
            port,
        },
        home,
        gcs,
        gcs_address: gcs_address.to_string(),
        clients,
        plasma,
        store: ObjectStore::new(freed_tx, borrows.clone()),
        submitter: Submitter::default(),
        actors: Default::default(),
        dead_nodes: Default::default(),
        inline_threshold: DEFAULT_INLINE_THRESHOLD,
        borrows,
        task_events: Arc::new(TaskEvents::from_env(job_id)),
        counters: Default::default(),
        handle: tokio::runtime::Handle::current(),
    });
    Ok((
        cw,
        listener,
        Background {
            freed_rx,
            given_back_rx,
        },
    ))
}

/// Receivers of the core worker's background tasks, started by `Background::spawn`.
pub(crate) struct Background {
    freed_rx: mpsc::UnboundedReceiver<Freed>,
    given_back_rx: mpsc::UnboundedReceiver<GiveBack>,
}

impl Background {
    /// Starts freeing plasma copies, giving borrows back and probing borrowers (inside the
    /// runtime).
    fn spawn(self, cw: &Arc<CoreWorker>) {
        tokio::spawn(cw.clone().run_freer(self.freed_rx));
        tokio::spawn(cw.clone().run_give_back(self.given_back_rx));
        tokio::spawn(cw.clone().run_borrower_probe());
        tokio::spawn(cw.clone().run_task_event_reporter());
    }
}

fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => {
            eprintln!("miniray worker: {name} is not set; workers are started by a raylet");
            std::process::exit(2);
        }
    }
}

/// Runs this process as a worker: serve, register with the raylet, run tasks until told to
/// exit or until the raylet that started it is gone. Never returns.
pub(crate) fn run_worker() -> ! {
    miniray_common::logging::init("warn");
    let code = match worker_main() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("miniray worker: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn worker_main() -> Result<()> {
    let gcs_address = required_env(env::GCS_ADDRESS);
    let raylet_address = required_env(env::RAYLET_ADDRESS);
    let token = required_env(env::TOKEN);
    let parse = |name: &str| {
        let v = required_env(name);
        hex::decode(&v).map_err(|e| Error::Startup(format!("{name}={v:?} is not hex: {e}")))
    };
    let node_id =
        NodeId::from_bytes(&parse(env::NODE_ID)?).map_err(|e| Error::Startup(e.to_string()))?;
    let worker_id =
        WorkerId::from_bytes(&parse(env::WORKER_ID)?).map_err(|e| Error::Startup(e.to_string()))?;
    let job_id =
        JobId::from_bytes(&parse(env::JOB_ID)?).map_err(|e| Error::Startup(e.to_string()))?;
    let (host, port) = raylet_address
        .rsplit_once(':')
        .and_then(|(h, p)| p.parse::<u32>().ok().map(|p| (h.to_string(), p)))
        .ok_or_else(|| Error::Startup(format!("bad raylet address {raylet_address:?}")))?;
    // The node IP the raylet advertises; a raylet of an older build sets no MINIRAY_NODE_IP,
    // and its own host is then the node's.
    let ip = std::env::var(env::NODE_IP)
        .ok()
        .filter(|ip| !ip.is_empty())
        .or_else(|| net::host_of(&raylet_address).map(str::to_string))
        .unwrap_or_else(|| host.clone());
    let local_node = NodeAddress {
        node_id: node_id.to_vec(),
        host,
        port,
    };

    let rt = runtime(1)?;
    // Lazy channels spawn their connection tasks on the current runtime.
    let _guard = rt.enter();
    let gcs = gcs_client(
        auth::connect_lazy(&gcs_address, &token).map_err(|e| unreachable(&gcs_address, e))?,
    );
    let (cw, listener, background) = rt.block_on(build(
        Mode::Worker,
        gcs,
        &gcs_address,
        &token,
        Node {
            address: local_node,
            id: node_id,
            ip,
            local: true,
        },
        worker_id,
        job_id,
    ))?;
    let (exec_tx, exec_rx) = std::sync::mpsc::channel();
    let port = cw.address.port;
    background.spawn(&cw);
    let journals = std::env::var_os(env::REPLY_JOURNAL)
        .and_then(|prefix| super::journal::Journals::start(prefix.into()));
    let stop = server::serve(
        &cw,
        listener,
        &token,
        Some(server::TaskThread {
            exec: exec_tx,
            journals,
        }),
    );
    let home = cw.home.get();
    let mut raylet = home.raylet.clone();
    rt.block_on(raylet.register_worker(RegisterWorkerRequest {
        worker_id: worker_id.to_vec(),
        port: u32::from(port),
        pid: std::process::id(),
        job_id: job_id.to_vec(),
    }))
    .map_err(|s| status_error(&home.endpoint, s))?;

    // A worker never outlives the raylet that started it.
    let parent = std::os::unix::process::parent_id();
    rt.spawn(async move {
        miniray_common::parent::exited(parent).await;
        std::process::exit(1);
    });

    drop(_guard);
    install(Global {
        cw: cw.clone(),
        runtime: rt,
        server_stop: Some(stop),
        cluster: None,
    });
    executor::run(&cw, exec_rx);
    drop(cw);
    super::shutdown();
    Ok(())
}
