//! The replicated state machine: the broker's catalog. Applying an entry
//! commits it to the catalog file together with the applied log id and
//! membership (one atomic, fsynced write), then the broker's local view
//! follows (`CatalogHost::apply`, the broker's `apply_replicated`). A
//! snapshot is the catalog file.

// openraft's trait signatures fix the error type (`StorageError`, large).
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::{Arc, Weak};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError, StoredMembership,
};

use super::{CatalogHost, MetaRequest, MetaResponse, NodeId, RaftApplied, TypeConfig};
use crate::catalog::Catalog;

type Entry = openraft::Entry<TypeConfig>;

pub(crate) struct StateMachine {
    host: Weak<dyn CatalogHost>,
}

impl StateMachine {
    pub(crate) fn new(host: Weak<dyn CatalogHost>) -> Self {
        StateMachine { host }
    }
}

fn gone() -> StorageError<NodeId> {
    StorageIOError::read_state_machine(openraft::AnyError::error("the broker is shutting down")).into()
}

fn host(w: &Weak<dyn CatalogHost>) -> Result<Arc<dyn CatalogHost>, StorageError<NodeId>> {
    w.upgrade().ok_or_else(gone)
}

fn snapshot_of(catalog: &Catalog) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
    let raft = catalog.raft.clone().unwrap_or_default();
    let bytes =
        serde_json::to_vec(catalog).map_err(|e| StorageIOError::read_state_machine(openraft::AnyError::new(&e)))?;
    let snapshot_id = match raft.last_applied {
        Some(l) => format!("{}-{}", l.leader_id.term, l.index),
        None => "empty".into(),
    };
    Ok(Snapshot {
        meta: SnapshotMeta { last_log_id: raft.last_applied, last_membership: raft.membership, snapshot_id },
        snapshot: Box::new(Cursor::new(bytes)),
    })
}

pub(crate) struct SnapshotBuilder {
    host: Weak<dyn CatalogHost>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let catalog = host(&self.host)?.catalog().await;
        snapshot_of(&catalog)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>> {
        let raft = host(&self.host)?.catalog().await.raft.unwrap_or_default();
        Ok((raft.last_applied, raft.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<MetaResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let host = host(&self.host)?;
        let mut out = Vec::new();
        for entry in entries {
            let mut raft = host.catalog().await.raft.unwrap_or_default();
            raft.last_applied = Some(entry.log_id);
            let cmd = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(MetaRequest::Catalog(cmd)) => Some(cmd),
                EntryPayload::Membership(m) => {
                    raft.membership = StoredMembership::new(Some(entry.log_id), m);
                    None
                }
            };
            let outcome = host
                .apply(cmd.as_ref(), raft)
                .await
                .map_err(|e| StorageIOError::apply(entry.log_id, openraft::AnyError::error(e.to_string())))?;
            out.push(MetaResponse(outcome));
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { host: self.host.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut catalog: Catalog = serde_json::from_slice(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), openraft::AnyError::new(&e)))?;
        catalog.raft = Some(RaftApplied { last_applied: meta.last_log_id, membership: meta.last_membership.clone() });
        host(&self.host)?.install(catalog).await.map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), openraft::AnyError::error(e.to_string()))
        })?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        // The catalog file is always a complete, durable snapshot of what
        // was applied.
        let catalog = host(&self.host)?.catalog().await;
        if catalog.raft.as_ref().is_none_or(|r| r.last_applied.is_none()) {
            return Ok(None);
        }
        snapshot_of(&catalog).map(Some)
    }
}
