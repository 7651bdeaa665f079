//! Clustered brokers: the metadata Raft group (DESIGN §4.6, openraft).
//!
//! - `log_store.rs`: the durable Raft log and vote;
//! - `state_machine.rs`: the catalog as the replicated state machine;
//! - `network.rs`: openraft's RPCs over the internal `strata.v1.Raft`
//!   service on the brokers' gRPC port (the server side is `grpc/raft.rs`);
//! - `membership.rs`: formation from the seed list, joining, removal;
//! - here: the node — writes (forwarded to the leader from a follower)
//!   and the cluster view.
//!
//! See "Cluster metadata" in ARCHITECTURE.md for the rules.

pub(crate) mod codec;
pub(crate) mod log_store;
pub(crate) mod membership;
pub(crate) mod network;
mod state_machine;

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use futures::future::BoxFuture;

use crate::catalog::{Applied, Catalog, CatalogCommand, CatalogError, StoreError};
use crate::config::{ClusterConfig, Config};
use crate::error::BrokerError;

pub(crate) type NodeId = u64;

/// A Raft group's type config and its `Raft` alias: the brokers' ids and
/// nodes, the group's request `D` and response `R`, openraft's defaults
/// for the rest (snapshots as `Cursor<Vec<u8>>`, tokio).
macro_rules! raft_group_types {
    ($(#[$doc:meta])* $config:ident, $raft:ident, $d:ty, $r:ty) => {
        openraft::declare_raft_types!(
            $(#[$doc])*
            pub(crate) $config:
                D = $d,
                R = $r,
                NodeId = $crate::cluster::NodeId,
                Node = openraft::BasicNode,
                SnapshotData = std::io::Cursor<Vec<u8>>,
        );

        pub(crate) type $raft = openraft::Raft<$config>;
    };
}
pub(crate) use raft_group_types;

raft_group_types!(
    /// The metadata group's types.
    TypeConfig,
    Raft,
    MetaRequest,
    MetaResponse
);

/// A replicated command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaRequest {
    Catalog(CatalogCommand),
}

/// What applying a log entry gave: for a catalog command, its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaResponse(pub Option<Result<Applied, CatalogError>>);

pub use crate::catalog::RaftApplied;

/// The outcome of applying one committed entry to the catalog.
pub(crate) type ApplyOutcome = Result<Option<Result<Applied, CatalogError>>, StoreError>;

/// What the metadata node needs from the broker that hosts it: the catalog
/// it replicates into. The broker implements it (`broker/replicated.rs`),
/// so this module never names the broker.
pub(crate) trait CatalogHost: Send + Sync + 'static {
    /// A copy of the catalog as applied so far.
    fn catalog(&self) -> BoxFuture<'_, Catalog>;
    /// Applies one committed entry (`cmd` is `None` for Raft's own
    /// entries) durably, with the Raft position it reaches.
    fn apply<'a>(&'a self, cmd: Option<&'a CatalogCommand>, raft: RaftApplied) -> BoxFuture<'a, ApplyOutcome>;
    /// Replaces the catalog with an installed snapshot.
    fn install(&self, catalog: Catalog) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// What starting a node takes from its broker.
pub(crate) struct NodeSetup<'a> {
    pub host: Arc<dyn CatalogHost>,
    pub config: &'a Config,
    /// The broker's filesystem (the metadata Raft log is kept on it).
    pub fs: crate::fs::Fs,
    /// The cluster-admin token peers present to each other.
    pub admin_token: Option<String>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// A forwarded write's answer, from the leader.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ForwardReply {
    Applied { index: u64, outcome: MetaResponse },
    NotLeader,
    NoQuorum,
}

/// One broker in the cluster view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub id: u64,
    pub address: String,
    pub zone: String,
    pub state: String,
    pub leader: bool,
    /// Partitions it owns.
    pub partitions: u32,
}

/// The cluster as one broker sees it.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub clustered: bool,
    pub brokers: Vec<BrokerInfo>,
    pub leader: Option<u64>,
    pub answered_by: u64,
    pub term: u64,
    /// "formed", or why this broker is still waiting for the first formation.
    pub formation: String,
    /// Partitions whose owner is not a member (its broker left the cluster).
    pub unowned_partitions: u32,
}

/// This broker's metadata Raft node.
pub struct ClusterNode {
    id: NodeId,
    address: String,
    config: ClusterConfig,
    raft: Raft,
    log: log_store::LogStore<TypeConfig>,
    network: network::Network,
    /// Why formation is waiting (shown until the broker is in a cluster).
    formation: std::sync::Mutex<String>,
    /// The broker whose catalog this node replicates.
    host: Weak<dyn CatalogHost>,
    /// The data directory held a standalone broker's catalog at start: this
    /// broker may only found a cluster (of itself; see `membership.rs`).
    standalone_data: bool,
    /// Membership changes one at a time (on the leader).
    membership_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode").field("id", &self.id).field("address", &self.address).finish()
    }
}

/// Why the metadata node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot open the metadata Raft log in {path}: {source}")]
    Log { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot start the metadata Raft node: {0}")]
    Raft(String),
}

impl ClusterNode {
    /// Starts the node for `broker` (clustered config) and, in the
    /// background, the formation check.
    pub(crate) async fn start(setup: NodeSetup<'_>) -> Result<Arc<ClusterNode>, ClusterError> {
        let NodeSetup { host, config: broker_config, fs, admin_token, shutdown } = setup;
        let config = broker_config.cluster.clone();
        let id = config.broker_id.unwrap_or(0) as NodeId;
        let catalog = host.catalog().await;
        // A standalone catalog can become a cluster's (see membership.rs);
        // applying another cluster's log on top of it would diverge.
        let standalone_data = catalog.raft.is_none() && catalog.holds_data();
        let dir = broker_config.storage.data_dir.join("meta").join("raft");
        let log =
            log_store::LogStore::open(&fs, &dir).map_err(|source| ClusterError::Log { path: dir.clone(), source })?;
        let raft_config = openraft::Config {
            cluster_name: "strata-metadata".into(),
            heartbeat_interval: 150,
            election_timeout_min: 700,
            election_timeout_max: 1400,
            install_snapshot_timeout: 5_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.snapshot_every / 5,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let peer_tls = crate::tls::PeerTls::from_config(&broker_config.tls)
            .map_err(|e| ClusterError::Raft(format!("cannot set up TLS to peers: {e}")))?;
        let network = network::Network::new(peer_tls, admin_token.as_deref());
        let weak_host = Arc::downgrade(&host);
        let sm = state_machine::StateMachine::new(weak_host.clone());
        let raft = Raft::new(id, Arc::new(raft_config), network.clone(), log.clone(), sm)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let node = Arc::new(ClusterNode {
            id,
            address: config.advertised_address.clone(),
            config,
            raft,
            log,
            network,
            formation: std::sync::Mutex::new("probing the seeds".into()),
            host: weak_host,
            standalone_data,
            membership_lock: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(membership::form_or_join(Arc::downgrade(&node), shutdown.clone()));
        tokio::spawn(membership::adopt_standalone_catalog(Arc::downgrade(&node), shutdown));
        tokio::spawn(report_leader_changes(node.raft.metrics(), id));
        Ok(node)
    }

    pub(crate) fn id(&self) -> NodeId {
        self.id
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The connections to peers (shared by every group).
    pub(crate) fn network(&self) -> &network::Network {
        &self.network
    }

    fn set_formation(&self, why: String) {
        *self.formation.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }

    /// The broker has Raft state (a vote or log entries).
    pub(crate) fn has_state(&self) -> bool {
        self.log.has_state()
    }

    /// The advertised address of member `id` (from the Raft membership).
    pub(crate) fn address_of(&self, id: NodeId) -> Option<String> {
        self.raft.metrics().borrow().membership_config.membership().get_node(&id).map(|n| n.addr.clone())
    }

    /// The voters of the metadata group.
    pub(crate) fn voters(&self) -> Vec<NodeId> {
        self.raft.metrics().borrow().membership_config.membership().voter_ids().collect()
    }

    /// The current metadata leader, if any is known.
    pub(crate) fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Stops the Raft node (on broker shutdown).
    pub(crate) async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }

    /// Commits `cmd` through Raft: directly on the leader, forwarded from a
    /// follower. Returns once this broker applied it; UNAVAILABLE
    /// ([`BrokerError::NoMetadataQuorum`]) after the write timeout.
    pub(crate) async fn write(&self, cmd: &CatalogCommand) -> Result<Applied, BrokerError> {
        let timeout = self.config.write_timeout.0;
        let deadline = Instant::now() + timeout;
        let no_quorum = || BrokerError::NoMetadataQuorum { waited_ms: timeout.as_millis() as u64 };
        let mut metrics = self.raft.metrics();
        loop {
            if Instant::now() >= deadline {
                return Err(no_quorum());
            }
            let (leader, leader_addr) = {
                let m = metrics.borrow_and_update();
                let leader = m.current_leader;
                let addr = leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
                (leader, addr)
            };
            let outcome = match (leader, leader_addr) {
                (Some(l), _) if l == self.id => match self.write_as_leader(cmd, deadline).await {
                    ForwardReply::Applied { outcome, .. } => Some(outcome),
                    ForwardReply::NoQuorum => return Err(no_quorum()),
                    ForwardReply::NotLeader => None,
                },
                (Some(_), Some(addr)) => {
                    match tokio::time::timeout_at(deadline, self.network.forward(&addr, cmd)).await {
                        Err(_) => return Err(no_quorum()),
                        Ok(Ok(ForwardReply::Applied { index, outcome })) => {
                            self.wait_applied(index, deadline).await.map_err(|()| no_quorum())?;
                            Some(outcome)
                        }
                        Ok(Ok(ForwardReply::NoQuorum)) => return Err(no_quorum()),
                        Ok(Ok(ForwardReply::NotLeader)) | Ok(Err(_)) => None,
                    }
                }
                _ => None,
            };
            match outcome {
                Some(MetaResponse(Some(result))) => return result.map_err(BrokerError::from),
                Some(MetaResponse(None)) => {
                    return Err(BrokerError::Internal("a catalog command was applied without an outcome".into()));
                }
                None => {
                    // No (reachable) leader yet: wait for a change, briefly.
                    let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
                    let _ = tokio::time::timeout(wait, metrics.changed()).await;
                }
            }
        }
    }

    /// Appends `cmd` if this broker is the leader (also serves forwarded writes).
    pub(crate) async fn write_as_leader(&self, cmd: &CatalogCommand, deadline: Instant) -> ForwardReply {
        match tokio::time::timeout_at(deadline, self.raft.client_write(MetaRequest::Catalog(cmd.clone()))).await {
            Err(_) => ForwardReply::NoQuorum,
            Ok(Ok(resp)) => ForwardReply::Applied { index: resp.log_id.index, outcome: resp.data },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => ForwardReply::NotLeader,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metadata write failed");
                ForwardReply::NoQuorum
            }
        }
    }

    /// Deadline for a forwarded write served by this broker.
    pub(crate) fn forward_deadline(&self) -> Instant {
        Instant::now() + self.config.write_timeout.0
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ()> {
        let mut metrics = self.raft.metrics();
        loop {
            if metrics.borrow_and_update().last_applied.is_some_and(|l| l.index >= index) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(()),
            }
        }
    }

    /// The cluster as this broker sees it.
    pub(crate) fn view(&self) -> ClusterView {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut brokers: BTreeMap<u64, BrokerInfo> = BTreeMap::new();
        for (id, node) in membership.nodes() {
            let state = if Some(*id) == m.current_leader {
                "leader"
            } else if voters.contains(id) {
                "follower"
            } else {
                "learner"
            };
            brokers.insert(
                *id,
                BrokerInfo {
                    id: *id,
                    address: node.addr.clone(),
                    zone: String::new(),
                    state: state.into(),
                    leader: Some(*id) == m.current_leader,
                    partitions: 0,
                },
            );
        }
        brokers.entry(self.id).or_insert_with(|| BrokerInfo {
            id: self.id,
            address: self.address.clone(),
            zone: String::new(),
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Candidate => "candidate",
                _ => "joining",
            }
            .into(),
            leader: false,
            partitions: 0,
        });
        let formation = if membership.nodes().next().is_some() {
            "formed".to_owned()
        } else {
            self.formation.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
        };
        ClusterView {
            clustered: true,
            brokers: brokers.into_values().collect(),
            leader: m.current_leader,
            answered_by: self.id,
            term: m.current_term,
            formation,
            unowned_partitions: 0,
        }
    }
}

/// Logs each change of metadata leader (openraft's own logs are quiet).
async fn report_leader_changes(
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    me: NodeId,
) {
    let mut last: Option<NodeId> = None;
    loop {
        let (leader, term) = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.current_term)
        };
        if leader != last {
            match leader {
                Some(l) if l == me => tracing::info!(term, "this broker is the metadata leader"),
                Some(l) => tracing::info!(leader = l, term, "metadata leader elected"),
                None => tracing::warn!(previous = ?last, "no metadata leader"),
            }
            last = leader;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
