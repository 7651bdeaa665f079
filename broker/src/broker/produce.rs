//! Appends: validation, the in-flight budget, the cold-tier backlog check,
//! idempotent producers, and the durability wait.

use std::sync::Arc;

use bytes::Bytes;
use strata_proto::batch::{self, Limits};
use tokio::sync::OwnedSemaphorePermit;

use super::Broker;
use crate::catalog::{Applied, CatalogCommand};
use crate::error::BrokerError;
use crate::names::TenantName;
use crate::partition::Partition;

/// The outcome of an acknowledged produce.
#[derive(Debug, Clone, Copy)]
pub struct Produced {
    pub base_offset: u64,
    pub last_offset: u64,
    pub append_time_ms: i64,
    /// A retried idempotent batch that was already stored.
    pub duplicate: bool,
}

/// A produced batch written to the log (or proposed to its replicas),
/// waiting to become durable.
pub struct PendingAppend {
    partition: Arc<Partition>,
    state: Pending,
    _permit: OwnedSemaphorePermit,
    /// Spans of the batch's sampled messages (tracing on).
    traced: Option<crate::telemetry::Published>,
}

enum Pending {
    /// Appended to the local log: durable once the log's durability allows.
    Local(Produced),
    /// Proposed to the partition's Raft group: stored once committed (on a
    /// majority) and applied here, which gives the offsets.
    Replicated(Box<ReplicatedAppend>),
}

struct ReplicatedAppend {
    proposal: crate::replication::Proposal,
    timeout: std::time::Duration,
    broker: Arc<crate::metrics::Metrics>,
    quotas: Arc<crate::quota::Quotas>,
    bytes: u64,
    /// NOT_LEADER answers name this broker's view of the leader.
    not_leader: Box<dyn Fn(Option<u64>) -> BrokerError + Send + Sync>,
}

impl PendingAppend {
    /// Resolves once the batch is durable per the topic's durability mode
    /// (replicated: committed on a majority of its replicas).
    pub async fn wait(self) -> Result<Produced, BrokerError> {
        let result = match self.state {
            Pending::Local(produced) => self.partition.wait_durable(produced.last_offset + 1).await.map(|()| produced),
            Pending::Replicated(r) => replicated_outcome(&self.partition, *r).await,
        };
        if let Some(t) = self.traced {
            t.finish(result.as_ref().err().map(|e| e.to_string()).as_deref());
        }
        result
    }
}

async fn replicated_outcome(partition: &Partition, r: ReplicatedAppend) -> Result<Produced, BrokerError> {
    use crate::replication::{BatchOutcome, WriteError};
    let resource = || partition.id().to_string();
    let no_quorum = |why: String| BrokerError::NoPartitionQuorum {
        resource: resource(),
        waited_ms: r.timeout.as_millis() as u64,
        why,
    };
    let outcome = tokio::time::timeout(r.timeout, crate::replication::outcome(r.proposal))
        .await
        .map_err(|_| no_quorum("timed out".into()))?;
    match outcome {
        Ok(BatchOutcome::Appended { base_offset, last_offset, append_time_ms, duplicate }) => {
            if !duplicate {
                let labels = partition.labels();
                r.broker.messages_in.get_or_create(&labels).inc_by(last_offset - base_offset + 1);
                r.broker.bytes_in.get_or_create(&labels).inc_by(r.bytes);
                r.quotas.add_stored(&labels.tenant, r.bytes);
            }
            Ok(Produced { base_offset, last_offset, append_time_ms, duplicate })
        }
        Ok(BatchOutcome::Refused(source)) => {
            Err(BrokerError::Log { resource: resource(), source: crate::log::LogError::Sequence(source) })
        }
        Ok(BatchOutcome::Nothing) => Err(BrokerError::Internal(format!("{}: a batch applied as nothing", resource()))),
        Err(WriteError::NotLeader(leader)) => Err((r.not_leader)(leader)),
        Err(WriteError::Stopped(why)) => Err(no_quorum(why)),
    }
}

impl Broker {
    /// Validates and appends one batch; the returned handle resolves once it
    /// is durable. Appends to one partition happen in call order.
    pub async fn append(
        &self,
        tenant: &str,
        topic: &str,
        partition: u32,
        batch: Bytes,
    ) -> Result<PendingAppend, BrokerError> {
        self.check_running()?;
        let part = self.partition(tenant, topic, partition)?;
        // A replicated partition takes produces on its leader only.
        let group = self.replica_group(&part);
        if let Some(g) = &group
            && !g.is_leader()
        {
            return Err(self.not_leader(part.id().to_string(), g.leader()));
        }
        let labels = part.labels();
        self.quotas.check_stored(&labels.tenant)?;
        if let Some(tier) = &self.tier
            && tier.backlog() > tier.budget()
            && part.config().tiered
        {
            self.metrics.rejections.get_or_create(&crate::metrics::RejectLabels { reason: "cold_tier_backlog" }).inc();
            return Err(BrokerError::ColdTierBacklog {
                resource: part.id().to_string(),
                waiting: tier.backlog(),
                budget: tier.budget(),
                reason: tier.last_error().unwrap_or_else(|| "uploads are behind".into()),
            });
        }
        let limit = self.config.limits.max_batch_bytes.0;
        if batch.len() as u64 > limit {
            return Err(BrokerError::BatchTooLarge { resource: part.id().to_string(), size: batch.len(), limit });
        }
        let permit = self
            .produce_budget
            .clone()
            .acquire_many_owned(batch.len().max(1) as u32)
            .await
            .map_err(|_| BrokerError::ShuttingDown)?;
        let limits = Limits {
            max_record_bytes: self.config.limits.max_record_bytes.0 as usize,
            max_uncompressed_bytes: self.config.limits.max_uncompressed_batch_bytes.0 as usize,
        };
        let part2 = part.clone();
        let now = self.now_ms();
        let bytes_len = batch.len() as u64;
        let topic_label = labels.topic.clone();
        let producer_ids = self.producer_ids.clone();
        if self.config.cluster.is_clustered()
            && let Ok(h) = strata_proto::batch::BatchHeader::parse(&batch)
            && h.has_producer_id()
        {
            let deadline = tokio::time::Instant::now() + self.config.cluster.write_timeout.0;
            producer_ids.wait_issued(h.producer_id, h.producer_epoch, deadline).await;
        }
        let replicated = group.is_some();
        let (appended, traced) = tokio::task::spawn_blocking(move || {
            let header = batch::validate(&batch, limits)
                .map_err(|source| BrokerError::Batch { resource: part2.id().to_string(), source })?;
            if header.has_producer_id() {
                producer_ids
                    .check(header.producer_id, header.producer_epoch)
                    .map_err(|source| BrokerError::Producer { resource: part2.id().to_string(), source })?;
            }
            // `publish` spans for the records that carry a sampled context,
            // once the batch is known to be well-formed.
            let traced = (strata_telemetry::enabled() && header.is_traced())
                .then(|| crate::telemetry::batch_spans(&batch, "publish", &topic_label, partition));
            if replicated {
                // Appended when the entry applies, on every replica.
                return Ok((Err(batch), traced));
            }
            let mut owned = batch.to_vec();
            part2.append(&mut owned, &header, now).map(|appended| (Ok(appended), traced))
        })
        .await
        .map_err(|source| BrokerError::TaskFailed { what: "append", source })??;
        let appended = match (appended, group) {
            (Ok(a), _) => a,
            (Err(batch), Some(g)) => {
                let proposal = g.propose(batch, now);
                let traced = traced.filter(|s| !s.is_empty()).map(|spans| {
                    crate::telemetry::Published::new(spans.into_iter().map(|(_, s)| s).collect(), &labels.topic)
                });
                let resource = part.id().to_string();
                let cluster = self.cluster().cloned();
                let not_leader =
                    move |leader: Option<u64>| super::not_leader(cluster.as_deref(), resource.clone(), leader);
                return Ok(PendingAppend {
                    partition: part,
                    state: Pending::Replicated(Box::new(ReplicatedAppend {
                        proposal,
                        timeout: self.config.cluster.write_timeout.0,
                        broker: self.metrics.clone(),
                        quotas: self.quotas.clone(),
                        bytes: bytes_len,
                        not_leader: Box::new(not_leader),
                    })),
                    _permit: permit,
                    traced,
                });
            }
            (Err(_), None) => return Err(BrokerError::Internal("a local append was not made".into())),
        };
        let traced = traced.filter(|s| !s.is_empty()).map(|mut spans| {
            use strata_telemetry::{Attribute, Span, attr};
            for (delta, span) in &mut spans {
                span.set_attribute(Attribute::new(attr::MESSAGE_ID, (appended.base_offset + *delta).to_string()));
            }
            crate::telemetry::Published::new(spans.into_iter().map(|(_, s)| s).collect(), &labels.topic)
        });
        if !appended.duplicate {
            let n = appended.last_offset - appended.base_offset + 1;
            self.metrics.messages_in.get_or_create(&labels).inc_by(n);
            self.metrics.bytes_in.get_or_create(&labels).inc_by(bytes_len);
            self.quotas.add_stored(&labels.tenant, bytes_len);
        }
        Ok(PendingAppend {
            partition: part,
            state: Pending::Local(Produced {
                base_offset: appended.base_offset,
                last_offset: appended.last_offset,
                append_time_ms: appended.append_time_ms,
                duplicate: appended.duplicate,
            }),
            _permit: permit,
            traced,
        })
    }

    /// Appends and waits for durability.
    pub async fn produce(
        &self,
        tenant: &str,
        topic: &str,
        partition: u32,
        batch: Bytes,
    ) -> Result<Produced, BrokerError> {
        self.append(tenant, topic, partition, batch).await?.wait().await
    }

    /// Registers an idempotent producer (see `InitProducer` in log.proto).
    pub async fn init_producer(&self, tenant: &str, name: &str) -> Result<(i64, i16), BrokerError> {
        self.check_running()?;
        let tenant = TenantName::resolve(tenant)?;
        let name = if name.is_empty() { None } else { Some(crate::names::parse_group_name(name)?) };
        let cmd = CatalogCommand::InitProducer { tenant: tenant.to_string(), name };
        if self.cluster().is_some() {
            // Every broker's registry follows when it applies the entry.
            return match self.commit_catalog(&cmd).await? {
                Applied::Producer { id, epoch } => Ok((id, epoch)),
                other => Err(BrokerError::Internal(format!("InitProducer committed as {other:?}"))),
            };
        }
        let mut store = self.catalog.lock().await;
        match store.commit(&cmd)? {
            Applied::Producer { id, epoch } => {
                self.producer_ids.sync(store.catalog());
                Ok((id, epoch))
            }
            other => Err(BrokerError::Internal(format!("InitProducer committed as {other:?}"))),
        }
    }
}
