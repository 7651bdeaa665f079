//! The broker: a small shared context — catalog, configuration, clock,
//! metrics, shutdown, the registry of open topics and the cold tier — and
//! thin services over it, each in its own file:
//!
//! - `topics.rs`: tenant and topic administration;
//! - `produce.rs`: appends (validation, budget, idempotent producers);
//! - `fetch.rs`: reads, start positions, offset lookups and fetch sessions;
//! - `maintenance.rs`: retention, rolling and the cold-tier upload loop;
//! - `open.rs`: opening the data directory and recovering every partition.
//!
//! Transport-free: no `tonic::Status` in here (`grpc/status.rs` maps
//! [`BrokerError`]).
//!
//! Architecture invariant: the catalog is committed before the files follow
//! it (create: catalog then directories; delete: catalog then removal), so
//! after a crash start-up reconciles the disk to the catalog by creating
//! missing partition directories and removing orphaned ones.

mod acls;
mod fetch;
mod limits;
mod maintenance;
mod metadata;
mod open;
mod principals;
mod produce;
mod replicas;
mod replicated;
mod topics;

#[cfg(test)]
mod fault_tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{Semaphore, watch};

pub use fetch::{FetchOptions, OffsetQuery, StartAt};
pub use open::OpenError;
pub use principals::PrincipalView;
pub use produce::Produced;
pub use topics::{TenantView, TopicOverrides, TopicView};

use crate::catalog::{Applied, CatalogCommand, CatalogStore, TopicSettings};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::BrokerError;
use crate::locks::read_lock;
use crate::log::LogStats;
use crate::names::{TenantName, TopicName};
use crate::partition::{Partition, TopicRef};
use crate::tier::Tier;

/// Tenant, topic and, per partition, its stats and bytes waiting for upload.
pub(crate) type TopicStats = (String, String, Vec<(LogStats, u64)>);

/// An open topic: its catalog facts and its partitions.
pub(crate) struct Topic {
    pub name: TopicRef,
    pub id: u64,
    pub created_at_ms: i64,
    pub settings: RwLock<TopicSettings>,
    /// One slot per partition; `None` where another broker owns it
    /// (cluster mode: a broker opens only the partitions it owns).
    pub partitions: RwLock<Vec<Option<Arc<Partition>>>>,
    /// The catalog's owners (empty standalone).
    pub owners: RwLock<Vec<u64>>,
    /// Replicated topics: each partition's replicas (from the catalog).
    pub replicas: RwLock<Vec<Vec<u64>>>,
}

/// The queues of `catalog` another broker serves, with their owner.
pub(crate) fn remote_queues(
    config: &Config,
    catalog: &crate::catalog::Catalog,
) -> HashMap<(String, String), Option<u64>> {
    let mut out = HashMap::new();
    for (tenant, t) in &catalog.tenants {
        for (name, q) in &t.queues {
            if !owns(config, q.owner) {
                out.insert((tenant.clone(), name.clone()), q.owner);
            }
        }
    }
    out
}

/// The NOT_LEADER answer for a resource owned by `owner`, naming its
/// advertised address from the metadata membership (none when it is not a
/// member).
pub(crate) fn not_leader(
    cluster: Option<&crate::cluster::ClusterNode>,
    resource: String,
    owner: Option<u64>,
) -> BrokerError {
    let address = owner.and_then(|o| cluster.and_then(|c| c.address_of(o)));
    let owner = owner.filter(|_| address.is_some());
    BrokerError::NotLeader { resource, owner, address }
}

/// Whether a broker with `config` holds partition `p` of a topic placed on
/// `owners` / `replicas`: one of its replicas when the topic is replicated,
/// else its owner.
pub(crate) fn holds(config: &Config, owners: &[u64], replicas: &[Vec<u64>], p: u32) -> bool {
    match replicas.get(p as usize) {
        Some(r) => config.cluster.is_clustered() && r.contains(&(config.cluster.broker_id.unwrap_or(0) as u64)),
        None => owns(config, owners.get(p as usize).copied()),
    }
}

/// Whether a broker with `config` serves a resource placed on `owner`:
/// standalone, everything; clustered, what the catalog gave its id.
pub(crate) fn owns(config: &Config, owner: Option<u64>) -> bool {
    !config.cluster.is_clustered() || owner == Some(config.cluster.broker_id.unwrap_or(0) as u64)
}

pub struct Broker {
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    catalog: tokio::sync::Mutex<CatalogStore>,
    topics: RwLock<HashMap<TopicRef, Arc<Topic>>>,
    produce_budget: Arc<Semaphore>,
    shutdown: watch::Sender<bool>,
    ready: AtomicBool,
    metrics: Arc<crate::metrics::Metrics>,
    /// The cold tier (absent with `tier.cold_store = "none"`).
    tier: Option<Arc<Tier>>,
    /// Cluster mode: the metadata Raft node (catalog writes go through it).
    cluster: std::sync::OnceLock<Arc<crate::cluster::ClusterNode>>,
    /// Cluster mode: the Raft groups of the replicated partitions this
    /// broker holds a replica of.
    groups: Arc<crate::replication::Groups>,
    /// Issued producer ids and the latest epoch of each named producer.
    producer_ids: Arc<crate::producer_ids::ProducerRegistry>,
    /// Cluster mode: queues the catalog places on other brokers (and their
    /// owner), for NOT_LEADER answers; follows the catalog.
    remote_queues: RwLock<HashMap<(String, String), Option<u64>>>,
    /// Bumped whenever `remote_queues` changes (queues that became this
    /// broker's are opened by the queue manager).
    queue_owners: watch::Sender<u64>,
    /// Descriptors released to undo a create that ran out of them.
    spare_fds: crate::fds::SpareFds,
    /// Open segment files of every partition and queue, bounded by
    /// `limits.max_open_segments`.
    segment_files: Arc<crate::fs::SegmentFiles>,
    /// The admin token and the catalog's principals and token hashes.
    credentials: Arc<crate::security::Credentials>,
    /// Tenant quotas: limits (from the catalog), rates, stored bytes and
    /// connections on this broker.
    quotas: Arc<crate::quota::Quotas>,
    /// The bytes each tenant's queues store (set by the queue manager), for
    /// the stored-bytes quota.
    queue_usage: std::sync::OnceLock<Box<dyn Fn() -> HashMap<String, u64> + Send + Sync>>,
    _dir_lock: std::fs::File,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("data_dir", &self.config.storage.data_dir).finish()
    }
}

impl Broker {
    /// Opens the data directory with the system clock.
    pub async fn open(config: Config) -> Result<Arc<Broker>, OpenError> {
        Broker::open_with_clock(config, Arc::new(crate::clock::SystemClock)).await
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The cache of open segment files every log of this broker uses.
    pub(crate) fn segment_files(&self) -> &Arc<crate::fs::SegmentFiles> {
        &self.segment_files
    }

    /// What callers may authenticate with.
    pub(crate) fn credentials(&self) -> &Arc<crate::security::Credentials> {
        &self.credentials
    }

    /// The configured cluster-admin token (brokers present it to each other).
    pub(crate) fn admin_token(&self) -> Option<&str> {
        self.credentials.admin_token()
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Wall-clock ms from the broker's clock.
    /// Closes the reserve of file descriptors until the guard drops: for
    /// undoing work that failed because the process ran out of them.
    pub(crate) fn release_spare_fds(&self) -> crate::fds::Released<'_> {
        self.spare_fds.release()
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub(crate) fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    pub(crate) fn quotas(&self) -> &Arc<crate::quota::Quotas> {
        &self.quotas
    }

    /// Tells the broker how to count the bytes of each tenant's queues
    /// (once, by the queue manager).
    pub(crate) fn set_queue_usage(&self, f: Box<dyn Fn() -> HashMap<String, u64> + Send + Sync>) {
        let _ = self.queue_usage.set(f);
    }

    /// Recomputes each tenant's stored bytes on this broker from its
    /// partitions' stats (hot + cold) and its queues' logs.
    pub(crate) fn refresh_stored_usage(&self) {
        let mut usage: HashMap<String, u64> = self.queue_usage.get().map(|f| f()).unwrap_or_default();
        for (tenant, _, parts) in self.partition_stats() {
            *usage.entry(tenant).or_default() += parts.iter().map(|(s, _)| s.size_bytes).sum::<u64>();
        }
        self.quotas.set_stored(&usage);
    }

    /// Every topic's partitions with their stats and bytes waiting for
    /// upload (for metrics).
    pub(crate) fn partition_stats(&self) -> Vec<TopicStats> {
        read_lock(&self.topics)
            .values()
            .map(|t| {
                let parts = read_lock(&t.partitions)
                    .iter()
                    .flatten()
                    .map(|p| (p.stats(), if p.config().tiered { p.pending_upload_bytes() } else { 0 }))
                    .collect();
                (t.name.tenant.to_string(), t.name.topic.to_string(), parts)
            })
            .collect()
    }

    /// Ready: recovered, not shutting down and, in cluster mode, a member
    /// of a cluster that has a metadata leader.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.cluster.get().is_none_or(|c| c.leader().is_some())
    }

    /// The metadata Raft node (cluster mode).
    pub(crate) fn cluster(&self) -> Option<&Arc<crate::cluster::ClusterNode>> {
        self.cluster.get()
    }

    /// Removes broker `id` from the cluster's metadata group.
    pub async fn remove_broker(&self, id: u64) -> Result<(), BrokerError> {
        match self.cluster() {
            Some(c) => c.remove(id).await,
            None => Err(BrokerError::NotClustered),
        }
    }

    /// The cluster as this broker sees it (standalone: itself alone), with
    /// each broker's zone and the partitions it owns from the catalog.
    pub async fn describe_cluster(&self) -> crate::cluster::ClusterView {
        if let Some(c) = self.cluster() {
            let mut view = c.view();
            let catalog = self.catalog_snapshot().await;
            let owned = catalog.owned_partitions();
            for b in &mut view.brokers {
                if let Some(r) = catalog.brokers.get(&b.id) {
                    b.zone = r.zone.clone();
                }
                b.partitions = owned.get(&b.id).copied().unwrap_or(0);
            }
            view.unowned_partitions = catalog.unowned_partitions();
            return view;
        }
        let partitions = read_lock(&self.topics).values().map(|t| read_lock(&t.partitions).len() as u32).sum();
        let id = self.config.cluster.broker_id.unwrap_or(0) as u64;
        let address = if self.config.cluster.advertised_address.is_empty() {
            self.config.server.listen.to_string()
        } else {
            self.config.cluster.advertised_address.clone()
        };
        crate::cluster::ClusterView {
            clustered: false,
            brokers: vec![crate::cluster::BrokerInfo {
                id,
                address,
                zone: self.config.cluster.current_zone(),
                state: "standalone".into(),
                leader: true,
                partitions,
            }],
            leader: Some(id),
            answered_by: id,
            term: 0,
            formation: "standalone".into(),
            unowned_partitions: 0,
        }
    }

    /// Attaches the metadata Raft node once, at start.
    pub(crate) fn set_cluster(&self, node: Arc<crate::cluster::ClusterNode>) {
        let _ = self.cluster.set(node);
    }

    /// A receiver that turns true when the broker starts shutting down.
    /// Changes whenever the set of queues other brokers serve changes.
    pub(crate) fn queue_owners_changed(&self) -> watch::Receiver<u64> {
        self.queue_owners.subscribe()
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Resolves once shutdown has begun.
    pub(crate) async fn until_shutdown(&self) {
        let mut rx = self.shutdown.subscribe();
        if rx.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn check_running(&self) -> Result<(), BrokerError> {
        if *self.shutdown.borrow() { Err(BrokerError::ShuttingDown) } else { Ok(()) }
    }

    /// Stops accepting new work: not ready, new appends refused, fetch and
    /// produce streams end. In-flight appends still complete.
    pub fn shutdown(&self) {
        self.ready.store(false, Ordering::Release);
        self.shutdown.send_replace(true);
    }

    /// Flushes every partition to disk and closes it (after `shutdown`).
    pub async fn close(&self) {
        // Replicated partitions' Raft nodes stop first: nothing applies to a
        // closed log.
        self.stop_replica_groups().await;
        let partitions = self.all_partitions();
        let _ = tokio::task::spawn_blocking(move || {
            for p in partitions {
                if let Err(e) = p.flush() {
                    tracing::error!(dir = %p.dir().display(), error = %e, "flush on shutdown failed");
                }
                p.close();
            }
        })
        .await;
    }

    fn all_partitions(&self) -> Vec<Arc<Partition>> {
        read_lock(&self.topics)
            .values()
            .flat_map(|t| read_lock(&t.partitions).iter().flatten().cloned().collect::<Vec<_>>())
            .collect()
    }

    // ---- lookup -------------------------------------------------------

    fn topic(&self, tenant: &str, topic: &str) -> Result<Arc<Topic>, BrokerError> {
        let key = TopicRef::new(TenantName::resolve(tenant)?, TopicName::parse(topic)?);
        let topics = read_lock(&self.topics);
        if let Some(t) = topics.get(&key) {
            return Ok(t.clone());
        }
        drop(topics);
        // Distinguish an unknown tenant from an unknown topic.
        let catalog = self.catalog.try_lock();
        if let Ok(c) = catalog
            && !c.catalog().tenants.contains_key(key.tenant.as_str())
        {
            return Err(crate::catalog::CatalogError::UnknownTenant(key.tenant.to_string()).into());
        }
        Err(crate::catalog::CatalogError::UnknownTopic { tenant: key.tenant.to_string(), name: key.topic.to_string() }
            .into())
    }

    /// How many partitions a topic has.
    pub fn partition_count(&self, tenant: &str, topic: &str) -> Result<u32, BrokerError> {
        Ok(read_lock(&self.topic(tenant, topic)?.partitions).len() as u32)
    }

    /// One partition of a topic.
    pub(crate) fn partition(&self, tenant: &str, topic: &str, partition: u32) -> Result<Arc<Partition>, BrokerError> {
        let t = self.topic(tenant, topic)?;
        let parts = read_lock(&t.partitions);
        match parts.get(partition as usize) {
            Some(Some(p)) => Ok(p.clone()),
            Some(None) => {
                let owner = read_lock(&t.owners).get(partition as usize).copied();
                Err(self.not_leader(format!("{}/{}/{partition}", t.name.tenant, t.name.topic), owner))
            }
            None => Err(BrokerError::UnknownPartition {
                tenant: t.name.tenant.to_string(),
                topic: t.name.topic.to_string(),
                partition,
                partitions: parts.len() as u32,
            }),
        }
    }

    /// Cluster mode: NOT_LEADER unless this broker coordinates the group.
    pub(crate) fn check_group_coordinator(&self, tenant: &str, group: &str) -> Result<(), BrokerError> {
        let Some(c) = self.cluster() else { return Ok(()) };
        let owner = crate::catalog::group_coordinator(tenant, group, &c.voters());
        if self.owns(owner) { Ok(()) } else { Err(self.not_leader(format!("{tenant}/{group}"), owner)) }
    }

    /// Cluster mode: NOT_LEADER for a queue the catalog places on another broker.
    pub(crate) fn check_queue_owner(&self, tenant: &str, queue: &str) -> Result<(), BrokerError> {
        if self.cluster().is_none() {
            return Ok(());
        }
        let owner = crate::locks::read_lock(&self.remote_queues).get(&(tenant.to_owned(), queue.to_owned())).copied();
        match owner {
            Some(owner) => Err(self.not_leader(format!("{tenant}/{queue}"), owner)),
            None => Ok(()),
        }
    }

    /// Whether this broker serves a resource placed on `owner`.
    pub(crate) fn owns(&self, owner: Option<u64>) -> bool {
        owns(&self.config, owner)
    }

    /// The NOT_LEADER answer for a resource owned by `owner` (its advertised
    /// address from the membership, when it is a member).
    pub(crate) fn not_leader(&self, resource: String, owner: Option<u64>) -> BrokerError {
        not_leader(self.cluster().map(|c| &**c), resource, owner)
    }

    // ---- catalog ------------------------------------------------------

    /// Commits a catalog command for another domain module (queues).
    pub(crate) async fn commit_catalog(&self, cmd: &CatalogCommand) -> Result<Applied, BrokerError> {
        self.check_running()?;
        if let Some(c) = self.cluster() {
            self.check_limits(&self.catalog_snapshot().await, cmd)?;
            return c.write(cmd).await;
        }
        let mut store = self.catalog.lock().await;
        self.check_limits(store.catalog(), cmd)?;
        Ok(store.commit(cmd)?)
    }

    /// A copy of the catalog (it is small).
    pub(crate) async fn catalog_snapshot(&self) -> crate::catalog::Catalog {
        self.catalog.lock().await.catalog().clone()
    }
}
