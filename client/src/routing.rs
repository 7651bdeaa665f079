//! Routing in a cluster: the shared connection pool (one HTTP/2 channel per
//! broker address) and the route table (which broker serves each partition,
//! queue and consumer group), learned from `GetMetadata` and corrected by
//! NOT_LEADER answers.
//!
//! Rules every caller keeps:
//! - A request for a partition, queue or group goes to the address the
//!   table names; an unknown route is looked up first (`resolve`), and a
//!   failed look-up falls back to a bootstrap broker, whose NOT_LEADER
//!   answer then carries the owner.
//! - NOT_LEADER with an `owner_address` moves the route at once
//!   (`learn`); NOT_LEADER without one (unowned) or a broken connection
//!   drops the route so the next request looks it up again.
//! - A standalone broker (or one too old to know `GetMetadata`) serves
//!   everything: every route is the bootstrap connection, at no extra cost.
//! - Metadata look-ups try the broker that answered last, then every other
//!   broker known (bootstrap list and the brokers metadata named), so the
//!   loss of one broker never strands a client that knows another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::{ErrorCode, GetMetadataRequest, GetMetadataResponse};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::connect::{ConnectOptions, Credentials, Transport, endpoint};
use crate::error::Error;

/// NOT_LEADER redirects one request follows before its error is reported
/// (two brokers disagreeing about an owner must not loop forever).
pub(crate) const MAX_REDIRECTS: usize = 8;

/// What a request is about, for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    /// A topic's partition: served by its owner.
    Partition(&'a str, u32),
    /// A queue: served by its owner.
    Queue(&'a str),
    /// A consumer group: served by its coordinator.
    Group(&'a str),
}

/// What a failed request taught the route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Learned {
    /// NOT_LEADER naming another owner: the route now points there; send again.
    Moved(Arc<str>),
    /// NOT_LEADER without an owner (unowned) or naming the broker already
    /// asked: the route was dropped.
    NoOwner,
    /// Not a routing error.
    Nothing,
}

type Key = (Arc<str>, String);

#[derive(Debug, Default)]
struct Table {
    /// `None` until the first metadata answer; `Some(false)` standalone.
    clustered: Option<bool>,
    partitions: HashMap<Key, Vec<Option<Arc<str>>>>,
    queues: HashMap<Key, Option<Arc<str>>>,
    groups: HashMap<Key, Option<Arc<str>>>,
}

/// The connection pool and route table shared by a client and its clones.
pub(crate) struct Router {
    /// TLS settings every connection uses.
    options: ConnectOptions,
    /// `http` or `https`, for addresses learned from brokers.
    scheme: &'static str,
    credentials: Credentials,
    /// Brokers to ask for metadata: the bootstrap list first, then those
    /// metadata named. The first one is the one that answered last.
    known: RwLock<Vec<Arc<str>>>,
    /// The bootstrap URLs not yet identified (which broker answers there),
    /// with the failed attempts so far (given up after three).
    unidentified: Mutex<Vec<(Arc<str>, u8)>>,
    /// A broker's advertised address → the bootstrap URL the user gave for
    /// the same broker. Advertised names (a pod's DNS name) often resolve
    /// only inside the cluster's network, while the user's URL (a pod IP, a
    /// port-forward) is known to work from here.
    aliases: RwLock<HashMap<String, Arc<str>>>,
    pool: Mutex<HashMap<Arc<str>, Channel>>,
    table: RwLock<Table>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("known", &self.known).field("table", &self.table).finish()
    }
}

impl Router {
    /// A router whose first bootstrap broker is already connected.
    pub(crate) fn new(
        options: ConnectOptions,
        credentials: Credentials,
        first: (Arc<str>, Channel),
        others: Vec<Arc<str>>,
    ) -> Router {
        let scheme = if first.0.starts_with("https://") { "https" } else { "http" };
        let mut known = vec![first.0.clone()];
        known.extend(others.into_iter().filter(|u| *u != first.0));
        Router {
            options,
            scheme,
            credentials,
            unidentified: Mutex::new(known.iter().map(|u| (u.clone(), 0)).collect()),
            known: RwLock::new(known),
            aliases: RwLock::new(HashMap::new()),
            pool: Mutex::new(HashMap::from([first])),
            table: RwLock::new(Table::default()),
        }
    }

    /// The channel to `url`, made (lazily connecting) on first use and
    /// shared afterwards.
    pub(crate) fn channel(&self, url: &Arc<str>) -> Transport {
        let mut pool = self.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let channel = pool
            .entry(url.clone())
            .or_insert_with(|| match endpoint(url, &self.options) {
                Ok(e) => e.connect_lazy(),
                Err(error) => {
                    // A broker advertised an address that is no URL: calls
                    // on it fail (UNAVAILABLE) instead of panicking.
                    tracing::warn!(%url, %error, "unusable broker address");
                    Endpoint::from_static("http://invalid.invalid:1").connect_lazy()
                }
            })
            .clone();
        InterceptedService::new(channel, self.credentials.clone())
    }

    /// The broker general requests (admin, metadata) go to: the one that
    /// answered last.
    pub(crate) fn any(&self) -> Arc<str> {
        read(&self.known).first().cloned().unwrap_or_else(|| "http://invalid".into())
    }

    /// Every broker the client knows, the one that answered last first.
    pub(crate) fn known(&self) -> Vec<Arc<str>> {
        read(&self.known).clone()
    }

    /// The broker serving `target`, if known (standalone: the bootstrap one).
    pub(crate) fn cached(&self, tenant: &str, target: Target<'_>) -> Option<Arc<str>> {
        let table = read(&self.table);
        if table.clustered == Some(false) {
            return Some(self.any());
        }
        let key = |name: &str| (Arc::<str>::from(tenant), name.to_owned());
        match target {
            Target::Partition(topic, p) => {
                table.partitions.get(&key(topic)).and_then(|v| v.get(p as usize).cloned()).flatten()
            }
            Target::Queue(q) => table.queues.get(&key(q)).cloned().flatten(),
            Target::Group(g) => table.groups.get(&key(g)).cloned().flatten(),
        }
    }

    /// Whether the cluster is known to be a standalone broker.
    pub(crate) fn standalone(&self) -> bool {
        read(&self.table).clustered == Some(false)
    }

    /// Applies a NOT_LEADER answer (or not) from `asked` about `target`.
    pub(crate) fn learn(&self, tenant: &str, target: Target<'_>, asked: &str, error: &Error) -> Learned {
        let Some(server) = error.server_error().filter(|s| s.error_code == ErrorCode::NotLeader) else {
            return Learned::Nothing;
        };
        let owner = server.metadata.get("owner_address").filter(|a| !a.is_empty()).map(|a| self.url_of(a));
        let owner = owner.filter(|o| &**o != asked);
        self.set(tenant, target, owner.clone());
        match owner {
            Some(url) => {
                tracing::debug!(?target, owner = %url, "NOT_LEADER: following the owner");
                Learned::Moved(url)
            }
            None => Learned::NoOwner,
        }
    }

    /// Forgets the route of `target` (its broker did not answer), so the
    /// next request looks it up again.
    pub(crate) fn forget(&self, tenant: &str, target: Target<'_>) {
        if !self.standalone() {
            self.set(tenant, target, None);
        }
    }

    pub(crate) fn set(&self, tenant: &str, target: Target<'_>, url: Option<Arc<str>>) {
        let mut table = write(&self.table);
        let key = |name: &str| (Arc::<str>::from(tenant), name.to_owned());
        match target {
            Target::Partition(topic, p) => {
                if let Some(slot) = table.partitions.get_mut(&key(topic)).and_then(|v| v.get_mut(p as usize)) {
                    *slot = url;
                } else if let Some(url) = url {
                    let v = table.partitions.entry(key(topic)).or_default();
                    if v.len() <= p as usize {
                        v.resize(p as usize + 1, None);
                    }
                    v[p as usize] = Some(url);
                }
            }
            Target::Queue(q) => {
                table.queues.insert(key(q), url);
            }
            Target::Group(g) => {
                table.groups.insert(key(g), url);
            }
        }
    }

    /// The URL of a broker's advertised `host:port`, with the bootstrap
    /// URL's scheme; the user's own URL for a broker given at bootstrap.
    pub(crate) fn url_of(&self, address: &str) -> Arc<str> {
        if let Some(url) = read(&self.aliases).get(address) {
            return url.clone();
        }
        if address.contains("://") { address.into() } else { format!("{}://{address}", self.scheme).into() }
    }

    /// Asks each bootstrap URL not identified yet which broker it reaches
    /// (`DescribeCluster.answered_by`), so that broker is reached at the
    /// user's URL rather than at its advertised address.
    async fn identify_bootstrap(&self, timeout: Duration) {
        let pending = std::mem::take(&mut *self.unidentified.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let mut still = Vec::new();
        for (url, attempts) in pending {
            let mut rpc = AdminClient::new(self.channel(&url));
            let mut req = tonic::Request::new(strata_proto::v1::DescribeClusterRequest {});
            req.set_timeout(timeout);
            match tokio::time::timeout(timeout, rpc.describe_cluster(req)).await {
                Ok(Ok(view)) => {
                    let view = view.into_inner();
                    let me = view.brokers.iter().find(|b| b.id == view.answered_by);
                    if let Some(b) = me.filter(|b| !b.address.is_empty() && self.url_of(&b.address) != url) {
                        write(&self.aliases).insert(b.address.clone(), url.clone());
                    }
                }
                // A broker from before clustering, or one that refuses:
                // nothing to learn there.
                Ok(Err(status)) if !Error::from(status.clone()).is_retryable() => {}
                _ if attempts < 2 => still.push((url, attempts + 1)),
                _ => {}
            }
        }
        self.unidentified.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(still);
    }

    /// Asks the brokers in turn (the last one that answered first) for the
    /// metadata `request` asks about, and updates the table with it.
    pub(crate) async fn refresh(
        &self,
        tenant: &str,
        request: GetMetadataRequest,
        timeout: Duration,
    ) -> Result<GetMetadataResponse, Error> {
        self.identify_bootstrap(timeout).await;
        let mut last_error = None;
        for url in self.known() {
            let mut rpc = AdminClient::new(self.channel(&url));
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(timeout);
            match tokio::time::timeout(timeout, rpc.get_metadata(req)).await {
                Ok(Ok(response)) => {
                    let response = response.into_inner();
                    self.answered(&url, tenant, &request, &response);
                    return Ok(response);
                }
                Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                    // A broker from before clustering: it serves everything.
                    write(&self.table).clustered = Some(false);
                    self.promote(&url);
                    return Ok(GetMetadataResponse::default());
                }
                Ok(Err(status)) => {
                    let error = Error::from(status);
                    if !error.is_retryable() {
                        // The broker answered (unknown topic, denied, ...):
                        // another one would say the same.
                        return Err(error);
                    }
                    tracing::debug!(broker = %url, %error, "metadata look-up failed; trying the next broker");
                    last_error = Some(error);
                }
                Err(_) => {
                    tracing::debug!(broker = %url, "metadata look-up timed out; trying the next broker");
                    last_error = Some(Error::Timeout { operation: "looking up cluster metadata", timeout });
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::InvalidArgument("no broker address is known".into())))
    }

    /// Records a metadata answer from `url`.
    fn answered(&self, url: &Arc<str>, tenant: &str, request: &GetMetadataRequest, m: &GetMetadataResponse) {
        self.promote(url);
        if !m.clustered {
            write(&self.table).clustered = Some(false);
            return;
        }
        let owner = |address: &str| (!address.is_empty()).then(|| self.url_of(address));
        {
            let mut known = write(&self.known);
            for b in &m.brokers {
                if b.address.is_empty() {
                    continue;
                }
                let url = self.url_of(&b.address);
                if !known.contains(&url) {
                    known.push(url);
                }
            }
        }
        let tenant: Arc<str> = tenant.into();
        let mut table = write(&self.table);
        table.clustered = Some(true);
        for t in &m.topics {
            let mut owners = vec![None; t.partitions.len()];
            for p in &t.partitions {
                if let Some(slot) = owners.get_mut(p.partition as usize) {
                    *slot = owner(&p.owner_address);
                }
            }
            table.partitions.insert((tenant.clone(), t.name.clone()), owners);
        }
        if request.queues {
            table.queues.retain(|(t, _), _| *t != tenant);
            for q in &m.queues {
                table.queues.insert((tenant.clone(), q.name.clone()), owner(&q.owner_address));
            }
        }
        for g in &m.groups {
            table.groups.insert((tenant.clone(), g.name.clone()), owner(&g.coordinator_address));
        }
    }

    /// Puts `url` first among the known brokers: it answered.
    fn promote(&self, url: &Arc<str>) {
        let mut known = write(&self.known);
        if known.first() != Some(url) {
            known.retain(|u| u != url);
            known.insert(0, url.clone());
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
