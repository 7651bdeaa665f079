//! Discovery: where each partition and queue is served (the `GetMetadata`
//! RPC), answered from this broker's copy of the replicated catalog, and
//! the registration of this broker's address and zone in it.

use std::sync::Arc;

use super::Broker;
use crate::catalog::CatalogCommand;
use crate::cluster::ClusterView;
use crate::error::BrokerError;
use crate::names::TenantName;

/// An owner and where clients reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    /// `None` while unowned (the owner is not a member).
    pub owner: Option<u64>,
    pub address: String,
}

/// One topic's partitions' owners.
#[derive(Debug, Clone)]
pub struct TopicOwners {
    pub name: String,
    /// The ownership epoch (see `GetMetadata`): the topic's id today, as
    /// placement only changes when a topic is made again.
    pub epoch: u64,
    pub partitions: Vec<Owned>,
}

/// The answer to `GetMetadata`.
#[derive(Debug, Clone)]
pub struct MetadataView {
    pub cluster: ClusterView,
    pub topics: Vec<TopicOwners>,
    pub queues: Vec<(String, Owned)>,
    /// The coordinators of the groups asked for, in that order.
    pub groups: Vec<(String, Owned)>,
}

impl Broker {
    /// The owners of `topics` (empty: every topic) of `tenant`, of its
    /// queues if asked, and the coordinators of `groups`. Standalone, this
    /// broker owns everything.
    pub async fn metadata(
        &self,
        tenant: &str,
        topics: &[String],
        queues: bool,
        groups: &[String],
    ) -> Result<MetadataView, BrokerError> {
        let tenant = TenantName::resolve(tenant)?;
        let cluster = self.describe_cluster().await;
        let catalog = self.catalog_snapshot().await;
        let t = catalog
            .tenants
            .get(tenant.as_str())
            .ok_or_else(|| crate::catalog::CatalogError::UnknownTenant(tenant.to_string()))?;
        let address_of = |id: u64| cluster.brokers.iter().find(|b| b.id == id).map(|b| b.address.clone());
        let me = cluster.answered_by;
        let owned = |owner: Option<u64>| -> Owned {
            if !cluster.clustered {
                return Owned { owner: Some(me), address: address_of(me).unwrap_or_default() };
            }
            match owner.and_then(|o| address_of(o).map(|a| (o, a))) {
                Some((o, address)) => Owned { owner: Some(o), address },
                None => Owned::default(),
            }
        };
        let mut out = Vec::new();
        for (name, r) in &t.topics {
            if !topics.is_empty() && !topics.contains(name) {
                continue;
            }
            out.push(TopicOwners {
                name: name.clone(),
                epoch: r.id,
                partitions: (0..r.partitions).map(|p| owned(self.partition_leader(r, p))).collect(),
            });
        }
        for name in topics {
            if !t.topics.contains_key(name) {
                return Err(crate::catalog::CatalogError::UnknownTopic {
                    tenant: tenant.to_string(),
                    name: name.clone(),
                }
                .into());
            }
        }
        let queues =
            if queues { t.queues.iter().map(|(n, q)| (n.clone(), owned(q.owner))).collect() } else { Vec::new() };
        // The same pure function `check_group_coordinator` applies, over the
        // resolved tenant name, so the answer matches what the group's
        // calls will find.
        let voters = self.cluster().map(|c| c.voters()).unwrap_or_default();
        let mut coordinators = Vec::with_capacity(groups.len());
        for g in groups {
            let name = crate::names::parse_group_name(g)?;
            coordinators.push((g.clone(), owned(crate::catalog::group_coordinator(tenant.as_str(), &name, &voters))));
        }
        Ok(MetadataView { cluster, topics: out, queues, groups: coordinators })
    }

    /// Cluster mode: records this broker's address and zone in the catalog
    /// once there is a leader, and again whenever they differ from what the
    /// catalog holds (a zone file whose content changed, a registration
    /// lost), so placement knows its zone and every broker can report it.
    /// With a fixed zone it ends once registered; with `cluster.zone_file`
    /// it re-reads the file every few seconds until shutdown.
    pub(crate) async fn register_in_catalog(self: Arc<Self>) {
        const ZONE_FILE_POLL: std::time::Duration = std::time::Duration::from_secs(5);
        let Some(c) = self.cluster().cloned() else { return };
        let id = c.id();
        let cluster = &self.config.cluster;
        let follows_file = !cluster.zone_file.as_os_str().is_empty();
        let mut shutdown = self.shutdown_signal();
        const FIRST_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
        let mut backoff = crate::cluster::membership::Backoff(FIRST_RETRY);
        loop {
            let zone = cluster.current_zone();
            let mut registered = self
                .catalog_snapshot()
                .await
                .brokers
                .get(&id)
                .is_some_and(|r| r.address == cluster.advertised_address && r.zone == zone);
            if !registered && c.leader().is_some() {
                let cmd = CatalogCommand::RegisterBroker {
                    id,
                    address: cluster.advertised_address.clone(),
                    zone: zone.clone(),
                };
                match c.write(&cmd).await {
                    Ok(_) => {
                        tracing::info!(zone = %zone, "registered this broker's address and zone in the catalog");
                        registered = true;
                    }
                    Err(e) => tracing::debug!(error = %e, "registering this broker in the catalog; retrying"),
                }
            }
            if registered {
                if !follows_file {
                    return;
                }
                backoff = crate::cluster::membership::Backoff(FIRST_RETRY);
                tokio::select! {
                    _ = tokio::time::sleep(ZONE_FILE_POLL) => continue,
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
            if !backoff.wait(&mut shutdown).await {
                return;
            }
        }
    }
}
