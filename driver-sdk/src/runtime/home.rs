//! The home raylet: the raylet a process leases workers from and (for a driver with no
//! raylet on its machine) streams its puts to.
//!
//! A worker's home is its own raylet, and so is a *local* driver's (a raylet on its own IP):
//! when that raylet dies the process cannot go on, as in Ray. A *remote* driver (a laptop,
//! another Pod) works through a raylet over the network, the head's when alive. When the
//! head dies and a new one comes up (new node id, maybe a new IP behind the same name), a
//! remote driver *re-homes*: `Rehomer` picks a new home with the rule of `choose_home`
//! (the alive head first, else any alive node), and every later lease request and put goes
//! there.
//!
//! Invariants:
//! - The home is read with one uncontended lock and an `Arc` clone (`HomeCell::get`),
//!   never held across an await; a call reads it once and uses that home throughout.
//! - A remote driver re-homes only when its home's node is gone for good: declared dead by
//!   the GCS (`NODE_CHANGES`, or its node table after a resubscribe), or unreachable while
//!   the GCS lists it dead or not at all. A retired home is never used again.
//! - While no node is alive (the GCS restarting, say) calls that need the home wait for a
//!   new one up to `REHOME_DEADLINE`, then fail with `ClusterUnreachable`; the re-home
//!   itself keeps trying, so a later call succeeds once a node is back.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use miniray_common::auth::AuthedChannel;
use miniray_common::config::DEFAULT_NODE_TIMEOUT;
use miniray_common::{JobId, NodeId, WorkerId};
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::raylet_client::RayletClient;
use miniray_proto::{GetAllNodesRequest, NodeAddress, NodeState, PlasmaInfoRequest};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::clients::{Clients, node_endpoint};
use super::nodes::DeadNodes;
use crate::error::{Error, Result};

/// How long calls wait for a new home while none is alive: the GCS's node timeout (the
/// time it takes to declare the old home dead) plus room for a GCS or head restart.
pub(crate) const REHOME_DEADLINE: Duration =
    Duration::from_secs(DEFAULT_NODE_TIMEOUT.as_secs() + 30);
/// Bounds of the wait between attempts to find a new home.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// How long a call of the rehomer (to the GCS, or registering with a candidate home) may
/// take.
const REGISTER_DEADLINE: Duration = Duration::from_secs(5);

/// One home raylet.
pub(crate) struct Home {
    pub(crate) node: NodeAddress,
    pub(crate) id: NodeId,
    /// `HOST:PORT` of its raylet.
    pub(crate) endpoint: String,
    pub(crate) raylet: RayletClient<AuthedChannel>,
    /// Set when this process stopped using it (it is gone for good).
    retired: AtomicBool,
}

impl Home {
    pub(crate) fn new(node: NodeAddress, id: NodeId, raylet: RayletClient<AuthedChannel>) -> Self {
        Self {
            endpoint: node_endpoint(&node),
            node,
            id,
            raylet,
            retired: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }
}

/// The current home, replaceable by a re-home.
pub(crate) struct HomeCell {
    tx: watch::Sender<Arc<Home>>,
    /// Whether this process may re-home (a remote driver).
    movable: bool,
    /// Poked when a call found the home unreachable: the rehomer asks the GCS whether it
    /// is gone.
    suspect: Notify,
}

impl HomeCell {
    pub(crate) fn new(home: Home, movable: bool) -> Self {
        Self {
            tx: watch::Sender::new(Arc::new(home)),
            movable,
            suspect: Notify::new(),
        }
    }

    /// The current home (cheap: a read lock and an `Arc` clone).
    pub(crate) fn get(&self) -> Arc<Home> {
        self.tx.borrow().clone()
    }

    pub(crate) fn is_movable(&self) -> bool {
        self.movable
    }

    /// Tells the rehomer a call could not reach `home`.
    pub(crate) fn report_unreachable(&self, home: &Home) {
        if self.movable && !home.is_retired() {
            debug!(raylet = %home.endpoint, "the home raylet did not answer; asking the GCS about it");
            self.suspect.notify_one();
        }
    }

    fn set(&self, home: Home) {
        self.tx.send_replace(Arc::new(home));
    }

    /// Waits until the home is no longer `from`, or `max` passed.
    pub(crate) async fn wait_change(&self, from: &Arc<Home>, max: Duration) {
        let mut rx = self.tx.subscribe();
        let _ = tokio::time::timeout(max, rx.wait_for(|h| !Arc::ptr_eq(h, from))).await;
    }

    /// The home to use now: the current one unless it is gone (retired or declared dead),
    /// else, for a remote driver, the next one, waited for up to `REHOME_DEADLINE`.
    pub(crate) async fn usable(&self, dead: &DeadNodes) -> Result<Arc<Home>> {
        self.usable_within(dead, REHOME_DEADLINE).await
    }

    async fn usable_within(&self, dead: &DeadNodes, deadline: Duration) -> Result<Arc<Home>> {
        let gone = |h: &Arc<Home>| h.is_retired() || dead.is_dead(h.id.as_bytes());
        let home = self.get();
        if !gone(&home) {
            return Ok(home);
        }
        let unreachable = |reason: String| Error::ClusterUnreachable {
            address: home.endpoint.clone(),
            reason,
        };
        if !self.movable {
            return Err(unreachable(
                "the node of this process's raylet is dead".into(),
            ));
        }
        let mut rx = self.tx.subscribe();
        // `wait_for` checks the current value first; a death recorded after our check
        // above is seen again by `gone` here (the dead set is read, not watched).
        let next = tokio::time::timeout(deadline, async {
            loop {
                let h = rx.borrow_and_update().clone();
                if !gone(&h) {
                    return Some(h);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match next {
            Ok(Some(h)) => Ok(h),
            _ => Err(unreachable(format!(
                "the home raylet's node is gone and no alive node to work through \
                 appeared within {}s",
                deadline.as_secs()
            ))),
        }
    }
}

/// The raylet a driver on `node_ip` works through, and whether it runs on this machine:
/// an alive node advertising `node_ip` (the head first), else, for a driver with no raylet
/// on its machine, the head if alive, else any alive node (remote mode: reached over the
/// network, its store not mapped).
pub(crate) fn choose_home(
    alive: &[(NodeAddress, bool)],
    node_ip: IpAddr,
) -> Option<(&NodeAddress, bool)> {
    let on_this_node = |a: &NodeAddress| {
        a.host.parse::<IpAddr>().ok() == Some(node_ip)
            || (a.host == "localhost" && node_ip.is_loopback())
    };
    let head_first = |(_, head): &&(NodeAddress, bool)| *head;
    if let Some((a, _)) = alive
        .iter()
        .filter(|(a, _)| on_this_node(a))
        .max_by_key(head_first)
    {
        return Some((a, true));
    }
    alive.iter().max_by_key(head_first).map(|(a, _)| (a, false))
}

/// The next home of a remote driver whose home is gone: `choose_home` over the alive nodes
/// of the GCS's table, leaving out the old home and any node this process knows dead. The
/// new home is used in remote mode whatever `choose_home` says, since this process never
/// mapped a store (a raylet that appeared on its IP is still reached over the network).
pub(crate) fn choose_next_home(
    nodes: &[miniray_proto::NodeInfo],
    old: &[u8],
    is_dead: impl Fn(&[u8]) -> bool,
    node_ip: IpAddr,
) -> Option<NodeAddress> {
    let alive: Vec<(NodeAddress, bool)> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Alive as i32)
        .filter_map(|n| n.address.clone().map(|a| (a, n.is_head)))
        .filter(|(a, _)| a.node_id != old && !is_dead(&a.node_id))
        .collect();
    choose_home(&alive, node_ip).map(|(a, _)| a.clone())
}

/// Follows a remote driver's home and moves it when it is gone (see the module doc).
pub(crate) struct Rehomer {
    pub(crate) gcs: GcsClient<AuthedChannel>,
    pub(crate) cell: Arc<HomeCell>,
    pub(crate) dead: Arc<DeadNodes>,
    pub(crate) clients: Clients,
    pub(crate) node_ip: IpAddr,
    pub(crate) worker_id: WorkerId,
    pub(crate) job_id: JobId,
}

impl Rehomer {
    /// Runs for the life of the runtime.
    pub(crate) async fn run(mut self) {
        loop {
            let home = self.cell.get();
            tokio::select! {
                () = self.dead.wait_dead(home.id.as_bytes()) => {
                    info!(node_id = %home.id, raylet = %home.endpoint, "the home raylet's node is dead; re-homing");
                }
                () = self.cell.suspect.notified() => {
                    if !self.gcs_says_gone(&home).await {
                        continue;
                    }
                    info!(node_id = %home.id, raylet = %home.endpoint, "the home raylet is unreachable and the GCS lists its node gone; re-homing");
                }
            }
            home.retired.store(true, Ordering::Release);
            let started = std::time::Instant::now();
            let mut wait = RETRY_MIN;
            let mut warned = false;
            let next = loop {
                match self.find_home(&home).await {
                    Ok(next) => break next,
                    Err(e) => {
                        if !warned && started.elapsed() > REHOME_DEADLINE {
                            warn!(error = %e, waited_s = started.elapsed().as_secs(), "no new home raylet yet; calls that need one fail until a node is alive");
                            warned = true;
                        } else {
                            debug!(error = %e, "no new home raylet yet");
                        }
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(RETRY_MAX);
                    }
                }
            };
            info!(
                old = %home.endpoint,
                new = %next.endpoint,
                node_id = %next.id,
                after_ms = started.elapsed().as_millis() as u64,
                "driver re-homed"
            );
            self.cell.set(next);
        }
    }

    /// Whether the GCS's table has `home`'s node dead or not at all (false when the GCS
    /// cannot be asked: then nothing is known).
    async fn gcs_says_gone(&mut self, home: &Home) -> bool {
        match self.all_nodes().await {
            Ok(nodes) => !nodes.iter().any(|n| {
                n.state != NodeState::Dead as i32
                    && n.address
                        .as_ref()
                        .is_some_and(|a| a.node_id == home.id.as_bytes())
            }),
            Err(e) => {
                debug!(error = %e, "cannot ask the GCS about the home raylet");
                false
            }
        }
    }

    /// The GCS's node table (its deaths recorded), within `REGISTER_DEADLINE`: a GCS that
    /// hangs must not hold up following the home's death.
    async fn all_nodes(&mut self) -> Result<Vec<miniray_proto::NodeInfo>> {
        let unreachable = |reason: String| Error::ClusterUnreachable {
            address: "the GCS".into(),
            reason,
        };
        let nodes = tokio::time::timeout(
            REGISTER_DEADLINE,
            self.gcs.get_all_nodes(GetAllNodesRequest {}),
        )
        .await
        .map_err(|_| unreachable("no answer in time".into()))?
        .map_err(|s| unreachable(s.message().to_string()))?
        .into_inner()
        .nodes;
        self.dead.apply(&nodes);
        Ok(nodes)
    }

    /// A new home: chosen from the GCS's table, and registered with as a store client.
    async fn find_home(&mut self, old: &Home) -> Result<Home> {
        let nodes = self.all_nodes().await?;
        let node = choose_next_home(
            &nodes,
            old.id.as_bytes(),
            |id| self.dead.is_dead(id),
            self.node_ip,
        )
        .ok_or_else(|| Error::ClusterUnreachable {
            address: "the GCS".into(),
            reason: "the cluster has no alive node".into(),
        })?;
        let id = NodeId::from_bytes(&node.node_id)
            .map_err(|e| Error::Internal(format!("GCS sent a bad node id: {e}")))?;
        let endpoint = node_endpoint(&node);
        let mut raylet = self.clients.raylet(&endpoint)?;
        // Announced as a store client with its job, as at start, so puts there are owned.
        tokio::time::timeout(
            REGISTER_DEADLINE,
            raylet.plasma_info(PlasmaInfoRequest {
                client_id: self.worker_id.to_vec(),
                job_id: self.job_id.to_vec(),
            }),
        )
        .await
        .map_err(|_| Error::ClusterUnreachable {
            address: endpoint.clone(),
            reason: "no answer in time".into(),
        })?
        .map_err(|s| Error::ClusterUnreachable {
            address: endpoint.clone(),
            reason: s.message().to_string(),
        })?;
        Ok(Home::new(node, id, raylet))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use miniray_proto::NodeInfo;

    fn node(host: &str, id: u8) -> NodeAddress {
        NodeAddress {
            node_id: vec![id; 16],
            host: host.into(),
            port: 1000 + u32::from(id),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an IP")
    }

    fn info(host: &str, id: u8, head: bool, state: NodeState) -> NodeInfo {
        NodeInfo {
            address: Some(node(host, id)),
            is_head: head,
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn the_home_raylet_is_on_the_node_ip_else_the_head_over_the_network() {
        let alive = vec![
            (node("10.0.0.1", 1), false),
            (node("10.0.0.2", 2), false),
            (node("10.0.0.2", 3), true),
        ];
        // On a node's IP: that node, the head among several.
        let (home, local) = choose_home(&alive, ip("10.0.0.1")).unwrap();
        assert_eq!((home.node_id[0], local), (1, true));
        let (home, local) = choose_home(&alive, ip("10.0.0.2")).unwrap();
        assert_eq!((home.node_id[0], local), (3, true));
        // No raylet on this IP: the head, remote.
        let (home, local) = choose_home(&alive, ip("10.0.0.9")).unwrap();
        assert_eq!((home.node_id[0], local), (3, false));
        // No head alive: any node, remote.
        let (_, local) = choose_home(&alive[..2], ip("10.0.0.9")).unwrap();
        assert!(!local);
        assert!(choose_home(&[], ip("10.0.0.9")).is_none());
        // A raylet named `localhost` is on a loopback driver's node.
        let named = vec![(node("localhost", 4), false)];
        assert!(choose_home(&named, ip("127.0.0.1")).unwrap().1);
    }

    fn home(id: u8) -> Home {
        let clients = Clients::new("t".into());
        let node = node("10.0.0.1", id);
        let raylet = clients
            .raylet(&node_endpoint(&node))
            .expect("a lazy channel");
        Home::new(node, NodeId::from_array([id; 16]), raylet)
    }

    #[tokio::test]
    async fn calls_wait_for_the_next_home_and_give_up_after_the_deadline() {
        let dead = DeadNodes::default();
        let cell = Arc::new(HomeCell::new(home(1), true));
        assert_eq!(cell.usable(&dead).await.expect("alive").id.as_bytes()[0], 1);
        dead.mark_dead(&[1; 16]);
        // Gone, and a new one comes a while later: the call waits and gets it.
        let waiter = {
            let (cell, dead) = (cell.clone(), Arc::new(DeadNodes::default()));
            dead.mark_dead(&[1; 16]);
            tokio::spawn(async move { cell.usable(&dead).await.map(|h| h.id) })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        cell.set(home(2));
        let next = waiter.await.expect("ran").expect("the next home");
        assert_eq!(next.as_bytes()[0], 2);
        // Gone with no next one: a clear error after the deadline.
        dead.mark_dead(&[2; 16]);
        let started = std::time::Instant::now();
        let deadline = Duration::from_millis(500);
        let err = cell
            .usable_within(&dead, deadline)
            .await
            .err()
            .expect("no home");
        assert!(started.elapsed() >= deadline);
        assert!(matches!(err, Error::ClusterUnreachable { .. }), "{err}");
        // A local driver's or worker's home never moves: its death fails calls at once.
        let fixed = HomeCell::new(home(3), false);
        dead.mark_dead(&[3; 16]);
        assert!(fixed.usable(&dead).await.is_err());
    }

    #[test]
    fn a_new_home_is_the_new_head_else_any_alive_node_never_the_old_or_a_dead_one() {
        let driver = ip("10.0.0.9");
        let no_deaths = |_: &[u8]| false;
        // The old head (1) still listed alive (the GCS has not timed it out yet), a worker
        // (2), the new head (3) at the same IP as the old: the new head.
        let nodes = vec![
            info("10.0.0.1", 1, true, NodeState::Alive),
            info("10.0.0.2", 2, false, NodeState::Alive),
            info("10.0.0.1", 3, true, NodeState::Alive),
        ];
        let next = choose_next_home(&nodes, &[1; 16], no_deaths, driver).unwrap();
        assert_eq!(next.node_id[0], 3);
        // No new head yet: any alive node, never the old home.
        let next = choose_next_home(&nodes[..2], &[1; 16], no_deaths, driver).unwrap();
        assert_eq!(next.node_id[0], 2);
        // A node this process knows dead is not chosen, even if the table lags.
        let next = choose_next_home(&nodes, &[1; 16], |id: &[u8]| id[0] == 3, driver).unwrap();
        assert_eq!(next.node_id[0], 2);
        // Dead or draining nodes are not alive.
        let nodes = vec![
            info("10.0.0.1", 1, true, NodeState::Dead),
            info("10.0.0.2", 2, false, NodeState::Draining),
        ];
        assert!(choose_next_home(&nodes, &[1; 16], no_deaths, driver).is_none());
        // A raylet that appeared on the driver's own IP is chosen like any other node.
        let nodes = vec![
            info("10.0.0.2", 2, false, NodeState::Alive),
            info("10.0.0.9", 4, false, NodeState::Alive),
        ];
        let next = choose_next_home(&nodes, &[1; 16], no_deaths, driver).unwrap();
        assert_eq!(next.node_id[0], 4);
    }
}
