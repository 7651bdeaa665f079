//! Per-broker limits on what the catalog may hold (`[limits]` in the
//! configuration): checked before a command is committed, so going over one
//! is a precise RESOURCE_EXHAUSTED naming the limit, never a broker that
//! runs out of memory or file descriptors later.

use super::Broker;
use crate::catalog::{Catalog, CatalogCommand};
use crate::error::BrokerError;

/// What the catalog holds, counted over every tenant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub topics: u64,
    pub partitions: u64,
    pub queues: u64,
    pub bindings: u64,
}

impl Counts {
    pub fn of(catalog: &Catalog) -> Counts {
        let mut c = Counts::default();
        for t in catalog.tenants.values() {
            c.topics += t.topics.len() as u64;
            c.partitions += t.topics.values().map(|r| u64::from(r.partitions)).sum::<u64>();
            c.queues += t.queues.len() as u64;
            c.bindings += t.queues.values().map(|q| q.bindings.len() as u64).sum::<u64>();
        }
        c
    }
}

impl Broker {
    /// Refuses `cmd` when applying it would take the catalog over a limit.
    pub(crate) fn check_limits(&self, catalog: &Catalog, cmd: &CatalogCommand) -> Result<(), BrokerError> {
        let l = &self.config.limits;
        let now = Counts::of(catalog);
        let over = |what: &'static str, name: &'static str, limit: u64, current: u64, adding: u64| {
            if current + adding > limit {
                Err(BrokerError::LimitExceeded { what, limit_name: name, limit, current })
            } else {
                Ok(())
            }
        };
        match cmd {
            CatalogCommand::CreateTopic { partitions, .. } => {
                over("topics", "limits.max_topics", l.max_topics, now.topics, 1)?;
                over("partitions", "limits.max_partitions", l.max_partitions, now.partitions, u64::from(*partitions))
            }
            CatalogCommand::AddPartitions { tenant, name, partitions } => {
                let existing =
                    catalog.tenants.get(tenant).and_then(|t| t.topics.get(name)).map_or(0, |t| u64::from(t.partitions));
                let adding = u64::from(*partitions).saturating_sub(existing);
                over("partitions", "limits.max_partitions", l.max_partitions, now.partitions, adding)
            }
            CatalogCommand::CreateQueue { .. } => over("queues", "limits.max_queues", l.max_queues, now.queues, 1),
            CatalogCommand::Bind { .. } => over("bindings", "limits.max_bindings", l.max_bindings, now.bindings, 1),
            _ => Ok(()),
        }
    }
}
