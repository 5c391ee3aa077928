//! `miniray start` and `miniray stop`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use std::process::Child;

use miniray::cluster::{DaemonSpec, GcsSpec, RayletSpec, SpawnedDaemon, spawn_daemon, stop_daemon};
use miniray_autoscaler::config::AutoscalingConfig;
use miniray_common::config::{self, DEFAULT_NODE_TIMEOUT};
use miniray_common::{NodeId, Resources};
use miniray_common::{net, shm};

use crate::daemons::{self, DaemonRecord};

#[derive(Args)]
pub struct StartArgs {
    /// Start a head node: the GCS and a raylet.
    #[arg(long, conflicts_with = "address")]
    head: bool,
    /// `HOST:PORT` of the head's GCS, for a worker node.
    #[arg(long, required_unless_present = "head")]
    address: Option<String>,
    /// GCS port of a head node.
    #[arg(long, default_value_t = 6379)]
    port: u16,
    /// Interface the head's GCS listens on. Anything but loopback exposes it to the
    /// network; `0.0.0.0` (every interface) needs an explicitly given token.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// This node's IP: the raylet and its workers listen on it and advertise it (default:
    /// for a head, `--host`, or when that is every interface the address of the default
    /// route; for a worker node, the address of the interface that routes to the GCS).
    #[arg(long)]
    node_ip_address: Option<String>,
    /// Write the GCS tables through to this Redis (`redis://HOST:PORT`), so a restarted
    /// head loses nothing.
    #[arg(long)]
    redis_address: Option<String>,
    /// CPUs of this node (default: the core count).
    #[arg(long)]
    num_cpus: Option<f64>,
    /// Custom resources of this node as JSON, such as '{"GPU": 1}'.
    #[arg(long)]
    resources: Option<String>,
    /// Plasma capacity of this node in bytes; must fit in the free space of the plasma
    /// directory (default: 30% of memory, at most 8 GiB, capped to 90% of that free space).
    #[arg(long)]
    object_store_memory: Option<u64>,
    /// Touch every page of the object store at start (faster first writes).
    #[arg(long)]
    prefault_object_store: bool,
    /// Cluster token (default: generated for a head; for a worker node, `MINIRAY_TOKEN` or
    /// the token file the head wrote on this machine).
    #[arg(long, env = "MINIRAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Milliseconds without heartbeat after which the GCS marks a node dead.
    #[arg(long, default_value_t = DEFAULT_NODE_TIMEOUT.as_millis() as u64)]
    node_timeout_ms: u64,
    /// Folder (a tmpfs) of the object store's shared-memory segment and the workers' reply
    /// journals.
    #[arg(long, env = "MINIRAY_PLASMA_DIR", default_value = shm::DEFAULT_PLASMA_DIR)]
    plasma_directory: PathBuf,
    /// Dead actors the GCS remembers (so callers learn why they died); older ones are
    /// forgotten first.
    #[arg(long, default_value_t = miniray::cluster::DEFAULT_MAX_DESTROYED_ACTORS)]
    max_destroyed_actors: usize,
    /// Task-event entries (`miniray timeline`; about two per task: submitted and
    /// scheduled from its submitter, run from its worker) the GCS keeps in memory; the
    /// oldest are dropped first.
    #[arg(long, default_value_t = miniray::cluster::DEFAULT_MAX_TASK_EVENTS)]
    max_task_events: usize,
    /// Seconds the GCS keeps the executable of the last finished job when no running job
    /// uses it, so that its driver run again need not upload it (0: removed at once; any
    /// other unused executable always is).
    #[arg(long, default_value_t = miniray::cluster::DEFAULT_UNUSED_EXECUTABLE_TTL.as_secs())]
    unused_executable_ttl_s: u64,
    /// Bytes of job executables no running job uses that this node keeps cached, so that
    /// a driver run again starts its workers without fetching its executable; the least
    /// recently used go first beyond this (0: remove each as its last job ends).
    #[arg(long, env = "MINIRAY_EXECUTABLE_CACHE_BYTES", default_value_t = miniray::cluster::DEFAULT_EXECUTABLE_CACHE_BYTES)]
    executable_cache_bytes: u64,
    #[command(flatten)]
    tls: crate::tls::TlsArgs,
    /// Run the autoscaler on this head with this config (YAML); checked before anything
    /// starts. The head's resources come from its `head_node_type` unless `--num-cpus` or
    /// `--resources` are given.
    #[arg(long, requires = "head")]
    autoscaling_config: Option<PathBuf>,
    /// Stay in the foreground: stop the daemons on SIGTERM or SIGINT, and exit when one of
    /// them exits (a drained raylet).
    #[arg(long)]
    block: bool,
    /// Run the dashboard on a head: the HTTP API `miniray job` uses.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, requires = "head")]
    include_dashboard: bool,
    /// Interface of the dashboard (default: `--host`).
    #[arg(long, requires = "head")]
    dashboard_host: Option<String>,
    /// Port of the dashboard (0: any free port) [default: 8265; when that is taken, the head
    /// starts without a dashboard and says so].
    #[arg(long, env = "MINIRAY_DASHBOARD_PORT")]
    dashboard_port: Option<u16>,
    /// Port of this node's Prometheus endpoint (the raylet's `/metrics`, on the node IP;
    /// 0: any free port). The head's `/api/prometheus/sd` lists every node's.
    #[arg(long, default_value_t = 0)]
    metrics_port: u16,
    /// Port of the head GCS's Prometheus endpoint (on `--host`; 0: any free port).
    #[arg(long, default_value_t = 0, requires = "head")]
    gcs_metrics_port: u16,
}

/// The dashboard's port when `--dashboard-port` is not given (Ray's).
const DEFAULT_DASHBOARD_PORT: u16 = 8265;

#[derive(Args)]
pub struct StopArgs {
    /// Seconds to wait for each daemon before killing it.
    #[arg(long, default_value_t = 10)]
    grace_period: u64,
}

/// The node's resources and its explicit CPU count (0 included; `None`: the core count
/// unless `--resources` says): the flags, else the head's node type in the autoscaling
/// config, whose CPUs are exactly what it says (none when it names none), as the planner
/// counts them.
fn node_resources(
    args: &StartArgs,
    autoscaling: Option<&AutoscalingConfig>,
) -> anyhow::Result<(Resources, Option<f64>)> {
    if let Some(config) = autoscaling
        && args.resources.is_none()
        && args.num_cpus.is_none()
        && let Some(head) = config.node_types.get(&config.head_node_type)
    {
        return Ok((head.resources.clone(), Some(head.resources.get("CPU"))));
    }
    let mut r = match &args.resources {
        Some(json) => Resources::from_json(json)?,
        None => Resources::new(),
    };
    if let Some(n) = args.num_cpus {
        r.set("CPU", n)?;
    }
    Ok((r, args.num_cpus))
}

fn session_dir() -> PathBuf {
    config::tmp_root().join(format!(
        "session_{}_{}",
        miniray_common::time::now_ms(),
        std::process::id()
    ))
}

/// What `start` listens on, decided before any daemon starts.
#[derive(Debug, PartialEq)]
struct Addresses {
    /// The GCS listen address of a head.
    host: IpAddr,
    /// What the raylet binds and advertises.
    node_ip: IpAddr,
}

impl Addresses {
    fn every_interface(&self) -> bool {
        self.host.is_unspecified()
    }
}

/// Checks `--host` and `--node-ip-address` and picks the node IP. `detect` finds the
/// default: for a head the address of the default route, for a worker node the address of
/// the interface that routes to the GCS.
fn addresses(
    args: &StartArgs,
    detect: impl FnOnce(&StartArgs) -> anyhow::Result<Option<IpAddr>>,
) -> anyhow::Result<Addresses> {
    let host: IpAddr = args
        .host
        .parse()
        .with_context(|| format!("--host {:?} is not an IP address", args.host))?;
    let token_given = args.token.as_deref().is_some_and(|t| !t.is_empty());
    if host.is_unspecified() && !token_given {
        bail!(
            "--host {host} listens on every interface, reachable from the network: give the \
             cluster token explicitly (--token or MINIRAY_TOKEN)"
        );
    }
    let node_ip = match &args.node_ip_address {
        Some(given) => net::parse_node_ip("--node-ip-address", given)?,
        None if args.head && !host.is_unspecified() => host,
        None => detect(args)?.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    };
    Ok(Addresses { host, node_ip })
}

/// The default node IP when neither `--node-ip-address` nor a specific head `--host` says.
fn detect_node_ip(args: &StartArgs) -> anyhow::Result<Option<IpAddr>> {
    if args.head {
        return Ok(net::default_route_ip());
    }
    let gcs = args.address.as_deref().context("--address is required")?;
    let ip = net::route_ip_to_blocking(gcs)
        .context("choosing this node's IP (pass --node-ip-address)")?;
    Ok(Some(ip))
}

pub fn start(args: StartArgs) -> anyhow::Result<()> {
    // Checked before anything starts, so a refusal leaves nothing running.
    let tls = args.tls.install()?;
    let addrs = addresses(&args, detect_node_ip)?;
    let node_ip = addrs.node_ip.to_string();
    let autoscaling = args
        .autoscaling_config
        .as_deref()
        .map(crate::autoscaler::load_config)
        .transpose()?;
    let exe = std::env::current_exe().context("locating the miniray executable")?;
    let (resources, num_cpus) = node_resources(&args, autoscaling.as_ref())?;
    // With --block the daemons are attached: they stop when this process is gone.
    let attached = args.block;
    let mut children: Vec<(String, Child)> = Vec::new();
    let session_dir = session_dir();
    let logs = session_dir.join("logs");
    // Checked before any daemon starts, so a refusal leaves nothing running.
    let object_store_memory = match args.object_store_memory {
        Some(bytes) => {
            shm::check_fits(&args.plasma_directory, bytes)?;
            bytes
        }
        None => shm::default_object_store_memory(&args.plasma_directory)?,
    };

    let (gcs_address, token) = if args.head {
        let token = args
            .token
            .clone()
            .unwrap_or_else(miniray_common::auth::generate_token);
        let bind = SocketAddr::new(addrs.host, args.port);
        let session_name = session_dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let gcs = spawn(
            &exe,
            &DaemonSpec::Gcs(GcsSpec {
                bind,
                token: token.clone(),
                session_name,
                redis_address: args.redis_address.clone(),
                node_timeout_ms: args.node_timeout_ms,
                max_destroyed_actors: Some(args.max_destroyed_actors),
                max_task_events: Some(args.max_task_events),
                unused_executable_ttl_ms: Some(args.unused_executable_ttl_s.saturating_mul(1000)),
                tls: tls.clone(),
                metrics_port: Some(args.gcs_metrics_port),
            }),
            &logs.join("gcs.err"),
            attached,
        )?;
        daemons::record(&DaemonRecord {
            pid: gcs.child.id(),
            role: "gcs".into(),
            address: gcs.address.clone(),
            exe: exe.clone(),
            session_dir: session_dir.clone(),
            segment: None,
        })?;
        children.push(("gcs".into(), gcs.child));
        // A GCS on every interface is reached at the node IP: `0.0.0.0:PORT` names no host
        // another machine could dial.
        let address = match gcs.address.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() => net::host_port(&node_ip, a.port()),
            _ => gcs.address,
        };
        record_head(&address, &token)?;
        (address, token)
    } else {
        let address = args.address.clone().context("--address is required")?;
        let token = args
            .token
            .clone()
            .or_else(|| config::find_token(&address))
            .with_context(|| {
                format!("no token for the cluster at {address}: pass --token or set MINIRAY_TOKEN")
            })?;
        (address, token)
    };

    let raylet_spec = RayletSpec {
        gcs_address: gcs_address.clone(),
        token: token.clone(),
        bind_host: node_ip.clone(),
        port: 0,
        node_id: NodeId::random(),
        resources,
        object_store_memory,
        prefault_object_store: args.prefault_object_store,
        is_head: args.head,
        session_dir: session_dir.clone(),
        plasma_dir: Some(args.plasma_directory.clone()),
        tls: tls.clone(),
        cloud_instance_id: non_empty_env(config::env::CLOUD_INSTANCE_ID),
        node_type: non_empty_env(config::env::NODE_TYPE),
        num_cpus,
        metrics_port: Some(args.metrics_port),
        executable_cache_bytes: Some(args.executable_cache_bytes),
    };
    let segment = raylet_spec.segment_path();
    let raylet = spawn(
        &exe,
        &DaemonSpec::Raylet(raylet_spec),
        &logs.join("raylet.err"),
        attached,
    )?;
    daemons::record(&DaemonRecord {
        pid: raylet.child.id(),
        role: "raylet".into(),
        address: raylet.address.clone(),
        exe: exe.clone(),
        session_dir: session_dir.clone(),
        segment: Some(segment),
    })?;
    children.push(("raylet".into(), raylet.child));

    let mut dashboard_url = None;
    if args.head && args.include_dashboard {
        let host = args
            .dashboard_host
            .clone()
            .unwrap_or_else(|| args.host.clone());
        let port = args.dashboard_port.unwrap_or(DEFAULT_DASHBOARD_PORT);
        match crate::dashboard::spawn(
            &exe,
            &gcs_address,
            &token,
            (&host, port),
            &session_dir,
            tls.as_ref(),
            attached,
        ) {
            Ok((child, port)) => {
                let address = net::host_port(&host, port);
                daemons::record(&DaemonRecord {
                    pid: child.id(),
                    role: "dashboard".into(),
                    address: address.clone(),
                    exe: exe.clone(),
                    session_dir: session_dir.clone(),
                    segment: None,
                })?;
                // `miniray job --address http(s)://<address>` finds the token by it.
                record_dashboard(&address, &token)?;
                let scheme = if tls.is_some() { "https" } else { "http" };
                dashboard_url = Some(format!("{scheme}://{address}"));
                children.push(("dashboard".into(), child));
            }
            Err(e) if args.dashboard_port.is_none() => {
                eprintln!("warning: the head starts without a dashboard: {e:#}");
            }
            Err(e) => return Err(e.context("starting the dashboard")),
        }
    }

    if let (Some(path), Some(config)) = (&args.autoscaling_config, &autoscaling) {
        let mut child = crate::autoscaler::spawn(
            &exe,
            &gcs_address,
            &token,
            path,
            &logs,
            tls.as_ref(),
            attached,
        )?;
        daemons::record(&DaemonRecord {
            pid: child.id(),
            role: "autoscaler".into(),
            address: gcs_address.clone(),
            exe: exe.clone(),
            session_dir: session_dir.clone(),
            segment: None,
        })?;
        crate::autoscaler::wait_for_first_report(&mut child, &gcs_address, &token, &logs)?;
        println!(
            "Started the autoscaler for cluster {:?} ({} node types, at most {} workers).",
            config.cluster_name,
            config.node_types.len(),
            config.max_workers
        );
        children.push(("autoscaler".into(), child));
    }

    if args.head {
        println!("Started a miniray head node.");
        println!("  GCS address: {gcs_address}");
        println!("  node IP:     {node_ip}");
        println!("  raylet:      {}", raylet.address);
        if let Some(url) = &dashboard_url {
            println!("  dashboard:   {url}");
        }
        if addrs.every_interface() {
            println!(
                "  the GCS is listening on every interface ({}): the token guards it",
                addrs.host
            );
        }
        println!("  logs:        {}", logs.display());
        println!();
        println!("Run a driver on this cluster:");
        println!("  MINIRAY_ADDRESS={gcs_address} cargo run --release --example quickstart");
        if let Some(url) = &dashboard_url {
            println!("Or submit it as a job, run on the head:");
            println!(
                "  miniray job submit --address {url} -- ./target/release/examples/quickstart"
            );
        }
        println!("Add a node on this machine:");
        println!("  miniray start --address {gcs_address}");
        println!("From another machine, also pass the token:");
        println!("  export MINIRAY_TOKEN={token}");
        if let Some(files) = &tls {
            crate::tls::print_driver_env(files);
        }
    } else {
        println!("Started a miniray worker node joining {gcs_address}.");
        println!("  node IP: {node_ip}");
        println!("  raylet:  {}", raylet.address);
        println!("  logs:    {}", logs.display());
    }
    if args.block {
        let nodes = autoscaling
            .as_ref()
            .map(|c| crate::autoscaler::state_dir(&c.cluster_name));
        return block(children, nodes);
    }
    Ok(())
}

/// `start --block`: waits for SIGTERM or SIGINT, or for a daemon to exit, then stops the
/// others (newest first: the autoscaler, then the nodes it launched, whose state folder is
/// `nodes`, then the raylet and the GCS) and removes their records.
fn block(mut children: Vec<(String, Child)>, nodes: Option<PathBuf>) -> anyhow::Result<()> {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let exited = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<_, anyhow::Error>(None),
                _ = int.recv() => return Ok(None),
                _ = tick.tick() => {}
            }
            for (role, child) in &mut children {
                if let Ok(Some(status)) = child.try_wait() {
                    return Ok(Some((role.clone(), status)));
                }
            }
        }
    })?;
    while let Some((role, mut child)) = children.pop() {
        let pid = child.id();
        stop_daemon(&mut child);
        daemons::remove(pid);
        if role == "autoscaler"
            && let Some(dir) = &nodes
        {
            // Without a head they could never do anything again.
            for node in miniray_autoscaler::local::cluster_node_pids(dir) {
                if let Err(e) = stop_pid(node, Duration::from_secs(10)) {
                    eprintln!("Could not stop the autoscaler's node (pid {node}): {e:#}");
                }
            }
        }
    }
    match exited {
        Some((role, status)) if !status.success() => bail!("the {role} exited ({status})"),
        Some((role, _)) => {
            println!("The {role} exited; stopped this node.");
            Ok(())
        }
        None => {
            println!("Stopped this node.");
            Ok(())
        }
    }
}

/// The value of `name`, if set and not empty (the autoscaler's provider sets the raylet's
/// identity variables; a node started by hand has none).
fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Starts a detached daemon. If it does not come up, its error carries the daemon's own
/// last words from its log (a port in use, an unreachable GCS): the log path alone leaves
/// the user to go and dig.
fn spawn(
    exe: &Path,
    spec: &DaemonSpec,
    log: &Path,
    attached: bool,
) -> anyhow::Result<SpawnedDaemon> {
    spawn_daemon(exe, spec, log, attached).map_err(|e| {
        // A daemon that fails to start prints one `miniray <role>: <reason>` line last.
        let reason = std::fs::read_to_string(log).ok().and_then(|text| {
            text.lines()
                .rev()
                .find(|l| l.starts_with("miniray "))
                .map(str::to_string)
        });
        match reason {
            Some(reason) => anyhow::anyhow!("{e}\n  {reason}"),
            None => e.into(),
        }
    })
}

/// Records a head on this machine, so `miniray status`, drivers and worker nodes started
/// here find it: its token in the token file of its address ([`config::token_file`], which
/// they read), and the address itself beside it ([`address_file`]), since the token file's
/// name cannot be read back into an address (`demo-head.default…` and `demo.head.default…`
/// share it). `miniray start --head` and `miniray up` both record this way.
pub(crate) fn record_head(address: &str, token: &str) -> anyhow::Result<()> {
    write_private(&config::token_file(address), token)?;
    write_private(&address_file(address), address)
}

/// Records the token of a head's dashboard at `address`, for `miniray job` on this machine.
pub(crate) fn record_dashboard(address: &str, token: &str) -> anyhow::Result<()> {
    write_private(&config::dashboard_token_file(address), token)
}

/// Forgets the head at `address` (a stopped head, a cluster taken down).
pub(crate) fn forget_head(address: &str) {
    let _ = std::fs::remove_file(config::token_file(address));
    let _ = std::fs::remove_file(address_file(address));
}

/// Where [`record_head`] writes the address: the token file with `.address` for `.token`.
pub(crate) fn address_file(address: &str) -> PathBuf {
    config::token_file(address).with_extension("address")
}

/// Writes a file only the current user can read: a fresh file (`O_EXCL | O_NOFOLLOW`, mode
/// 0600, so a planted symlink or a file someone else opened cannot receive the token)
/// renamed over `path` (a rename replaces a symlink instead of following it).
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent folder", path.display()))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        NodeId::random().hex()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

pub fn stop(args: StopArgs) -> anyhow::Result<()> {
    let found = daemons::list();
    if found.is_empty()
        && miniray_autoscaler::local::live_node_pids(&crate::autoscaler::state_root()).is_empty()
    {
        println!("No miniray daemons are running.");
        return Ok(());
    }
    // The autoscaler first, so it launches nothing more; then the nodes it launched (their
    // `start --block` stops its raylet, also one still starting); then the other raylets,
    // which stop their workers and remove their segments while the GCS is up; the GCS last.
    let (mut autoscalers, mut rest): (Vec<_>, Vec<_>) = found
        .into_iter()
        .partition(|(rec, _)| rec.role == "autoscaler" || rec.role == "dashboard");
    rest.sort_by_key(|(rec, _)| rec.role == "gcs");
    let grace = Duration::from_secs(args.grace_period);
    let mut failed = 0;
    for found in autoscalers.drain(..) {
        failed += usize::from(!stop_recorded(found, grace));
    }
    for pid in miniray_autoscaler::local::live_node_pids(&crate::autoscaler::state_root()) {
        match stop_pid(pid, grace) {
            Ok(()) => println!("Stopped a node the autoscaler launched (pid {pid})."),
            Err(e) => {
                failed += 1;
                eprintln!("Could not stop the autoscaler's node (pid {pid}): {e:#}");
            }
        }
    }
    for found in rest.drain(..) {
        failed += usize::from(!stop_recorded(found, grace));
    }
    if failed > 0 {
        bail!("{failed} daemon(s) could not be stopped");
    }
    Ok(())
}

/// Stops one recorded daemon and removes its record; false when it could not be stopped.
fn stop_recorded((rec, path): (DaemonRecord, PathBuf), grace: Duration) -> bool {
    match stop_pid(rec.pid, grace) {
        Ok(()) => {
            println!("Stopped {} (pid {}, {}).", rec.role, rec.pid, rec.address);
            // Gone for good: whatever it did not remove itself (it was SIGKILLed) goes now.
            daemons::remove_segment(&rec);
            let _ = std::fs::remove_file(&path);
            if rec.role == "gcs" {
                forget_head(&rec.address);
            }
            if rec.role == "dashboard" {
                let _ = std::fs::remove_file(config::dashboard_token_file(&rec.address));
            }
            true
        }
        Err(e) => {
            eprintln!("Could not stop {} (pid {}): {e:#}", rec.role, rec.pid);
            false
        }
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL. The pid is not our child, so poll /proc.
fn stop_pid(pid: u32, grace: Duration) -> anyhow::Result<()> {
    let pid_i = i32::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) on a pid whose executable we just verified.
    if unsafe { libc::kill(pid_i, libc::SIGTERM) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(err).context("sending SIGTERM");
    }
    if gone_within(pid, grace) {
        return Ok(());
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid_i, libc::SIGKILL) };
    if gone_within(pid, Duration::from_secs(5)) {
        return Ok(());
    }
    bail!("still running after SIGKILL")
}

/// Polls /proc until `pid` is gone or `limit` passes.
fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !alive(pid)
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its parent) counts as stopped.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        start: StartArgs,
    }

    fn args(argv: &[&str]) -> StartArgs {
        Cli::try_parse_from(std::iter::once("start").chain(argv.iter().copied()))
            .expect("valid arguments")
            .start
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an IP")
    }

    fn detected(_: &StartArgs) -> anyhow::Result<Option<IpAddr>> {
        Ok(Some(ip("10.9.8.7")))
    }

    #[test]
    fn the_node_ip_is_given_or_follows_the_host_or_is_detected() {
        let plan = |argv: &[&str]| addresses(&args(argv), detected);
        // A head: --host, unless every interface, then the detected address.
        let a = plan(&["--head"]).unwrap();
        assert_eq!((a.host, a.node_ip), (ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(!a.every_interface());
        let a = plan(&["--head", "--host", "10.1.1.1"]).unwrap();
        assert_eq!(a.node_ip, ip("10.1.1.1"));
        let a = plan(&["--head", "--host", "0.0.0.0", "--token", "t"]).unwrap();
        assert_eq!(a.node_ip, ip("10.9.8.7"));
        assert!(a.every_interface());
        // No detectable route: loopback.
        let a = addresses(&args(&["--head", "--host", "::", "--token", "t"]), |_| {
            Ok(None)
        })
        .unwrap();
        assert_eq!(a.node_ip, ip("127.0.0.1"));
        // A worker node: the route to the GCS; given beats detected everywhere.
        let a = plan(&["--address", "10.0.0.1:6379"]).unwrap();
        assert_eq!(a.node_ip, ip("10.9.8.7"));
        let a = plan(&["--address", "x:1", "--node-ip-address", "10.2.2.2"]).unwrap();
        assert_eq!(a.node_ip, ip("10.2.2.2"));
        let a = plan(&[
            "--head",
            "--host",
            "10.1.1.1",
            "--node-ip-address",
            "10.2.2.2",
        ])
        .unwrap();
        assert_eq!(a.node_ip, ip("10.2.2.2"));
    }

    #[test]
    fn every_interface_needs_an_explicit_token_and_bad_addresses_are_refused() {
        let plan = |argv: &[&str]| addresses(&args(argv), detected);
        for any in ["0.0.0.0", "::"] {
            let e = plan(&["--head", "--host", any]).unwrap_err().to_string();
            assert!(
                e.contains("every interface") && e.contains("--token"),
                "{e}"
            );
            let e = plan(&["--head", "--host", any, "--token", ""]).unwrap_err();
            assert!(e.to_string().contains("every interface"), "{e}");
        }
        for bad in ["0.0.0.0", "not-an-ip", "300.1.1.1", "224.0.0.1"] {
            let e = plan(&["--head", "--node-ip-address", bad]).unwrap_err();
            assert!(e.to_string().contains("--node-ip-address"), "{e}");
        }
        let e = plan(&["--head", "--host", "localhost"]).unwrap_err();
        assert!(e.to_string().contains("--host"), "{e}");
    }

    #[test]
    fn the_token_file_is_private_and_never_follows_a_symlink() {
        let dir = std::env::temp_dir().join(format!(
            "miniray-token-test-{}-{}",
            std::process::id(),
            NodeId::random().hex()
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep me").expect("victim");
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let token_file = dir.join("clusters").join("127_0_0_1_6379.token");
        std::fs::create_dir_all(token_file.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(&victim, &token_file).expect("plant a symlink");

        write_private(&token_file, "secret").expect("write");
        let meta = std::fs::symlink_metadata(&token_file).expect("stat");
        assert!(meta.is_file(), "the symlink was replaced by a file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&token_file).expect("read"),
            "secret"
        );
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep me");

        // Rewriting replaces the file; no temporary file stays behind.
        write_private(&token_file, "other").expect("rewrite");
        assert_eq!(std::fs::read_to_string(&token_file).expect("read"), "other");
        let names: Vec<_> = std::fs::read_dir(token_file.parent().expect("parent"))
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
