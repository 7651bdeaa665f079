//! The producer ids and epochs this broker issued, so that a batch is
//! accepted only from a producer `InitProducer` really registered.
//!
//! The catalog is the durable record: ids below `next_producer_id` were
//! issued (ids are handed out in order, so the issued set is one range), and
//! `named_producers` holds each named producer's latest epoch. This registry
//! is the in-memory copy checked on every idempotent batch, before the
//! partition's own producer table: so an old epoch is fenced on every
//! partition, including ones the new epoch never wrote to, and after a
//! restart (the registry is rebuilt from the catalog at open).

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::catalog::Catalog;

/// Why a batch's producer id or epoch is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerIdError {
    #[error("producer id {producer_id} was never issued by InitProducer (issued ids are below {issued})")]
    Unknown { producer_id: i64, issued: i64 },
    #[error("producer {producer_id} is fenced: epoch {epoch} is older than the current epoch {current}")]
    Fenced { producer_id: i64, epoch: i16, current: i16 },
    #[error("producer {producer_id} sent epoch {epoch}, but InitProducer issued at most epoch {current}")]
    EpochNotIssued { producer_id: i64, epoch: i16, current: i16 },
}

#[derive(Debug, Default)]
pub(crate) struct ProducerRegistry {
    /// Ids below this were issued.
    issued: AtomicI64,
    /// Named producers: id -> latest epoch. Anonymous ids have epoch 0.
    epochs: RwLock<HashMap<i64, i16>>,
    /// Woken by every `sync`.
    changed: tokio::sync::Notify,
}

impl ProducerRegistry {
    pub fn from_catalog(catalog: &Catalog) -> ProducerRegistry {
        let r = ProducerRegistry::default();
        r.sync(catalog);
        r
    }

    /// Takes the catalog's view (after an `InitProducer` commit).
    pub fn sync(&self, catalog: &Catalog) {
        let mut epochs = self.epochs.write().unwrap_or_else(|p| p.into_inner());
        for (id, epoch) in catalog.named_producers.values() {
            epochs.insert(*id, *epoch);
        }
        self.issued.fetch_max(catalog.next_producer_id, Ordering::AcqRel);
        drop(epochs);
        self.changed.notify_waiters();
    }

    /// Cluster mode: waits (until `deadline` at the latest) while `check`
    /// says the id or epoch was not issued *yet* — issued through another
    /// broker, which answered once a majority stored it, and not applied
    /// here so far. The caller checks again afterwards either way.
    pub async fn wait_issued(&self, producer_id: i64, epoch: i16, deadline: tokio::time::Instant) {
        loop {
            let changed = self.changed.notified();
            match self.check(producer_id, epoch) {
                Err(ProducerIdError::Unknown { .. } | ProducerIdError::EpochNotIssued { .. }) => {}
                _ => return,
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    /// Checks a batch's producer id and epoch (only for batches that carry one).
    pub fn check(&self, producer_id: i64, epoch: i16) -> Result<(), ProducerIdError> {
        let issued = self.issued.load(Ordering::Acquire);
        if producer_id >= issued {
            return Err(ProducerIdError::Unknown { producer_id, issued });
        }
        let current = self.epochs.read().unwrap_or_else(|p| p.into_inner()).get(&producer_id).copied().unwrap_or(0);
        if epoch < current {
            return Err(ProducerIdError::Fenced { producer_id, epoch, current });
        }
        if epoch > current {
            return Err(ProducerIdError::EpochNotIssued { producer_id, epoch, current });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogCommand;

    #[test]
    fn only_issued_ids_and_the_latest_epoch_pass() {
        let mut c = Catalog::default();
        let r = ProducerRegistry::from_catalog(&c);
        assert_eq!(r.check(0, 0), Err(ProducerIdError::Unknown { producer_id: 0, issued: 0 }));
        c.apply(&CatalogCommand::InitProducer { tenant: "default".into(), name: None }).unwrap();
        c.apply(&CatalogCommand::InitProducer { tenant: "default".into(), name: Some("billing".into()) }).unwrap();
        c.apply(&CatalogCommand::InitProducer { tenant: "default".into(), name: Some("billing".into()) }).unwrap();
        r.sync(&c);
        assert_eq!(r.check(0, 0), Ok(()));
        assert!(matches!(r.check(0, 1), Err(ProducerIdError::EpochNotIssued { current: 0, .. })));
        assert_eq!(r.check(1, 1), Ok(()));
        assert!(matches!(r.check(1, 0), Err(ProducerIdError::Fenced { current: 1, .. })));
        assert!(matches!(r.check(2, 0), Err(ProducerIdError::Unknown { issued: 2, .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_an_id_issued_elsewhere_ends_when_it_is_applied_or_at_the_deadline() {
        let r = std::sync::Arc::new(ProducerRegistry::default());
        // Nothing arrives: the wait ends at its deadline (paused time jumps).
        let start = tokio::time::Instant::now();
        r.wait_issued(0, 0, start + std::time::Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(5));
        // The id is applied while a produce waits: the wait ends then.
        let waiter = {
            let r = r.clone();
            tokio::spawn(async move {
                r.wait_issued(0, 0, tokio::time::Instant::now() + std::time::Duration::from_secs(60)).await;
                tokio::time::Instant::now()
            })
        };
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let mut c = Catalog::default();
        c.apply(&CatalogCommand::InitProducer { tenant: "default".into(), name: None }).unwrap();
        let applied_at = tokio::time::Instant::now();
        r.sync(&c);
        assert_eq!(waiter.await.unwrap(), applied_at);
        assert_eq!(r.check(0, 0), Ok(()));
        // A fenced epoch is final: no wait.
        let before = tokio::time::Instant::now();
        c.apply(&CatalogCommand::InitProducer { tenant: "default".into(), name: Some("p".into()) }).unwrap();
        c.apply(&CatalogCommand::InitProducer { tenant: "default".into(), name: Some("p".into()) }).unwrap();
        r.sync(&c);
        r.wait_issued(1, 0, before + std::time::Duration::from_secs(60)).await;
        assert_eq!(before.elapsed(), std::time::Duration::ZERO);
    }
}
