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

/// A produced batch written to the log, waiting to become durable.
pub struct PendingAppend {
    partition: Arc<Partition>,
    produced: Produced,
    _permit: OwnedSemaphorePermit,
    /// Spans of the batch's sampled messages (tracing on).
    traced: Option<crate::telemetry::Published>,
}

impl PendingAppend {
    /// Resolves once the batch is durable per the topic's durability mode.
    pub async fn wait(self) -> Result<Produced, BrokerError> {
        let result = self.partition.wait_durable(self.produced.last_offset + 1).await;
        if let Some(t) = self.traced {
            t.finish(result.as_ref().err().map(|e| e.to_string()).as_deref());
        }
        result?;
        Ok(self.produced)
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
            let mut owned = batch.to_vec();
            part2.append(&mut owned, &header, now).map(|appended| (appended, traced))
        })
        .await
        .map_err(|source| BrokerError::TaskFailed { what: "append", source })??;
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
            produced: Produced {
                base_offset: appended.base_offset,
                last_offset: appended.last_offset,
                append_time_ms: appended.append_time_ms,
                duplicate: appended.duplicate,
            },
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
