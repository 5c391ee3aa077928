//! Node deaths as the GCS announces them, followed as Ray's core worker does.
//!
//! From its first task or actor handle on, a process subscribes to `NODE_CHANGES` and keeps
//! the ids of the nodes the GCS declared dead. Every resubscription (after the stream ended
//! or failed, with backoff) is followed by a `GetAllNodes` reconciliation, so a death
//! announced while this process was not subscribed is not missed.
//!
//! Invariant: work on a node the GCS declared dead is failed at once and never recovered
//! from that node. A push to a worker there stops waiting for replies the moment the death
//! is known (`wait_dead`), its tasks are settled as "cannot tell" (each spends a retry, as
//! in Ray on node death) without asking the node's raylet, the lease is dropped without a
//! `ReturnWorker` call, and no lease request goes there. A node id never comes back, so
//! the set only grows; it is capped at `MAX_DEAD_NODES`, the oldest deaths forgotten first.

use std::collections::{HashSet, VecDeque};
use std::sync::Weak;
use std::time::Duration;

use miniray_common::auth::AuthedChannel;
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::{
    Channel, GetAllNodesRequest, NodeInfo, NodeState, SubscribeRequest, pub_message,
};
use parking_lot::RwLock;
use tokio::sync::watch;
use tracing::debug;

/// Dead node ids remembered (the oldest deaths go first beyond it).
const MAX_DEAD_NODES: usize = 10_000;
/// First wait before subscribing again after the stream failed; doubles up to the max.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(2);

#[derive(Default)]
struct DeadSet {
    ids: HashSet<Vec<u8>>,
    /// Ids in the order they died, to forget the oldest beyond `MAX_DEAD_NODES`.
    order: VecDeque<Vec<u8>>,
}

/// The nodes the GCS declared dead, and a signal for each new death.
pub(crate) struct DeadNodes {
    /// Read on every push; written only when a node dies.
    set: RwLock<DeadSet>,
    /// Bumped on each newly known death; `wait_dead` listens to it.
    deaths: watch::Sender<u64>,
    /// Set once this process follows `NODE_CHANGES`.
    watching: std::sync::atomic::AtomicBool,
}

impl Default for DeadNodes {
    fn default() -> Self {
        Self {
            set: RwLock::new(DeadSet::default()),
            deaths: watch::Sender::new(0),
            watching: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl DeadNodes {
    /// Whether the GCS declared `node_id` dead.
    pub(crate) fn is_dead(&self, node_id: &[u8]) -> bool {
        !node_id.is_empty() && self.set.read().ids.contains(node_id)
    }

    /// Records a death; returns whether it was new.
    pub(crate) fn mark_dead(&self, node_id: &[u8]) -> bool {
        if node_id.is_empty() {
            return false;
        }
        {
            let mut set = self.set.write();
            if !set.ids.insert(node_id.to_vec()) {
                return false;
            }
            set.order.push_back(node_id.to_vec());
            while set.order.len() > MAX_DEAD_NODES {
                if let Some(old) = set.order.pop_front() {
                    set.ids.remove(&old);
                }
            }
        }
        debug!(node_id = %hex::encode(node_id), "node declared dead by the GCS");
        self.deaths.send_modify(|n| *n += 1);
        true
    }

    /// Records every dead node of a `GetAllNodes` answer or announcement.
    pub(crate) fn apply<'a>(&self, nodes: impl IntoIterator<Item = &'a NodeInfo>) {
        for node in nodes {
            if node.state == NodeState::Dead as i32
                && let Some(address) = &node.address
            {
                self.mark_dead(&address.node_id);
            }
        }
    }

    /// Resolves once `node_id` is known dead; never for an empty (unknown) id.
    pub(crate) async fn wait_dead(&self, node_id: &[u8]) {
        // Subscribed before the check: a death recorded in between still wakes us.
        let mut deaths = self.deaths.subscribe();
        loop {
            if self.is_dead(node_id) {
                return;
            }
            if deaths.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Whether a watcher must be started (true exactly once).
    pub(crate) fn start_watching(&self) -> bool {
        use std::sync::atomic::Ordering;
        // A plain load first: this runs on every task submission.
        !self.watching.load(Ordering::Acquire) && !self.watching.swap(true, Ordering::AcqRel)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.set.read().ids.len()
    }
}

impl super::CoreWorker {
    /// Starts following node deaths (once per process): called before this process first
    /// leases a worker or calls an actor.
    pub(crate) fn follow_node_deaths(&self) {
        if self.dead_nodes.start_watching() {
            self.handle.spawn(watch_node_changes(
                self.gcs.clone(),
                std::sync::Arc::downgrade(&self.dead_nodes),
            ));
        }
    }
}

/// Follows `NODE_CHANGES` for as long as `dead` lives: subscribe, reconcile with
/// `GetAllNodes`, then apply each announcement; on any failure, back off and start over.
pub(crate) async fn watch_node_changes(mut gcs: GcsClient<AuthedChannel>, dead: Weak<DeadNodes>) {
    let mut backoff = RESUBSCRIBE_MIN;
    loop {
        if dead.strong_count() == 0 {
            return;
        }
        match follow_once(&mut gcs, &dead).await {
            // Connected and reconciled before the stream ended: start the backoff over.
            Ok(()) => backoff = RESUBSCRIBE_MIN,
            Err(status) => {
                debug!(error = %status, "following node changes failed; subscribing again");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
    }
}

/// One subscription: returns when the stream ends (`Ok` if it got as far as reconciling).
async fn follow_once(
    gcs: &mut GcsClient<AuthedChannel>,
    dead: &Weak<DeadNodes>,
) -> std::result::Result<(), tonic::Status> {
    // Subscribed first (the GCS registers the subscriber before it answers), then the
    // table read: a death is either in the answer or announced on the stream.
    let mut stream = gcs
        .subscribe(SubscribeRequest {
            channels: vec![Channel::NodeChanges as i32],
        })
        .await?
        .into_inner();
    let nodes = gcs
        .get_all_nodes(GetAllNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    match dead.upgrade() {
        Some(d) => d.apply(&nodes),
        None => return Ok(()),
    }
    while let Ok(Some(msg)) = stream.message().await {
        let Some(pub_message::Payload::Node(info)) = msg.payload else {
            continue;
        };
        let Some(d) = dead.upgrade() else {
            return Ok(());
        };
        d.apply([&info]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use miniray_common::NodeId;
    use miniray_gcs::storage::{MemoryStorage, NODES_TABLE, Storage};
    use miniray_gcs::{GcsConfig, GcsServer};
    use miniray_proto::{NodeAddress, RegisterNodeRequest, UnregisterNodeRequest};
    use prost::Message;
    use std::sync::Arc;
    use std::time::Instant;

    fn node(id: &[u8], state: NodeState) -> NodeInfo {
        NodeInfo {
            address: Some(NodeAddress {
                node_id: id.to_vec(),
                host: "10.0.0.1".into(),
                port: 1,
            }),
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn only_dead_nodes_are_recorded_and_the_set_stays_bounded() {
        let dead = DeadNodes::default();
        dead.apply(&[node(b"a", NodeState::Alive), node(b"b", NodeState::Dead)]);
        assert!(!dead.is_dead(b"a"));
        assert!(dead.is_dead(b"b"));
        assert!(!dead.is_dead(b""), "an unknown node is never dead");
        assert!(!dead.mark_dead(b"b"), "a death counts once");
        for i in 0..(MAX_DEAD_NODES + 10) {
            dead.mark_dead(format!("n{i}").as_bytes());
        }
        assert_eq!(dead.len(), MAX_DEAD_NODES);
        assert!(!dead.is_dead(b"b"), "the oldest death is forgotten first");
        assert!(dead.is_dead(format!("n{}", MAX_DEAD_NODES + 9).as_bytes()));
    }

    #[tokio::test]
    async fn wait_dead_wakes_on_a_later_death() {
        let dead = Arc::new(DeadNodes::default());
        let waiter = {
            let dead = dead.clone();
            tokio::spawn(async move { dead.wait_dead(b"x").await })
        };
        tokio::task::yield_now().await;
        dead.mark_dead(b"y");
        dead.mark_dead(b"x");
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken within the deadline")
            .expect("waiter ran");
    }

    async fn wait_for(what: &str, mut pred: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pred() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    type Client = GcsClient<AuthedChannel>;
    const TOKEN: &str = "node-watch-test";

    async fn register(client: &mut Client, id: NodeId) {
        client
            .register_node(RegisterNodeRequest {
                node: Some(node(&id.to_vec(), NodeState::Alive)),
                jobs: Vec::new(),
            })
            .await
            .expect("registers");
    }

    async fn unregister(client: &mut Client, id: NodeId) {
        client
            .unregister_node(UnregisterNodeRequest {
                node_id: id.to_vec(),
                reason: "test".into(),
            })
            .await
            .expect("unregisters");
    }

    /// A GCS on `storage` at `bind`, and a client that reconnects when it comes back.
    async fn start_gcs(
        bind: Option<std::net::SocketAddr>,
        storage: Arc<MemoryStorage>,
    ) -> (miniray_gcs::GcsHandle, Client) {
        let mut cfg = GcsConfig::new(TOKEN);
        if let Some(bind) = bind {
            cfg.bind = bind;
        }
        let gcs = GcsServer::start_with_storage(cfg, storage)
            .await
            .expect("gcs starts");
        let channel =
            miniray_common::auth::connect_lazy(&gcs.address().to_string(), TOKEN).expect("channel");
        (gcs, GcsClient::new(channel))
    }

    /// A death announced while nothing was subscribed is learned from the reconciliation
    /// that follows subscribing; a later one from the stream.
    #[tokio::test]
    async fn a_death_missed_while_unsubscribed_is_reconciled() {
        let (gcs, mut client) = start_gcs(None, Arc::new(MemoryStorage::new())).await;
        let (early, late) = (NodeId::random(), NodeId::random());
        register(&mut client, early).await;
        register(&mut client, late).await;
        unregister(&mut client, early).await;
        // Only now does this process follow node changes.
        let dead = Arc::new(DeadNodes::default());
        let watcher = tokio::spawn(watch_node_changes(client.clone(), Arc::downgrade(&dead)));
        wait_for("the earlier death", || dead.is_dead(&early.to_vec())).await;
        assert!(!dead.is_dead(&late.to_vec()));
        unregister(&mut client, late).await;
        wait_for("the later death", || dead.is_dead(&late.to_vec())).await;
        watcher.abort();
        gcs.shutdown().await;
    }

    /// The GCS goes away and comes back (same address, same storage) with a node dead that
    /// was alive before: the death was never announced on any stream, so only the
    /// reconciliation after resubscribing can tell.
    #[tokio::test]
    async fn a_death_recorded_while_disconnected_is_reconciled_after_resubscribing() {
        let storage = Arc::new(MemoryStorage::new());
        let (gcs, mut client) = start_gcs(None, storage.clone()).await;
        let bind = gcs.address();
        let (victim, probe) = (NodeId::random(), NodeId::random());
        register(&mut client, victim).await;
        register(&mut client, probe).await;
        let dead = Arc::new(DeadNodes::default());
        let watcher = tokio::spawn(watch_node_changes(client.clone(), Arc::downgrade(&dead)));
        // Once the probe's death is known, the watcher is subscribed.
        unregister(&mut client, probe).await;
        wait_for("the probe's death", || dead.is_dead(&probe.to_vec())).await;
        gcs.shutdown().await;
        // While no GCS runs, the victim's death lands in storage (as a GCS on a shared
        // Redis would have recorded it): no stream will ever announce it.
        storage
            .put(
                NODES_TABLE,
                &victim.to_vec(),
                &node(&victim.to_vec(), NodeState::Dead).encode_to_vec(),
            )
            .await
            .expect("stored");
        assert!(!dead.is_dead(&victim.to_vec()));
        let (gcs, _) = start_gcs(Some(bind), storage).await;
        wait_for("the death recorded while disconnected", || {
            dead.is_dead(&victim.to_vec())
        })
        .await;
        watcher.abort();
        gcs.shutdown().await;
    }
}
