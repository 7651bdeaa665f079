//! The fetch machinery shared by [`super::Consumer`] and the group consumer:
//! a set of assigned topic partitions, one fetcher task per partition, the
//! records of the fetch response being handed out, and each partition's
//! progress. Partitions can be added and removed at any time; removing one
//! stops its fetcher and drops its buffered records at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use strata_proto::v1::fetch_request;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::fetcher::{self, FetchEvent, FetchSpec};
use super::{ConsumedRecord, PartitionProgress};
use crate::client::Client;
use crate::error::Error;
use crate::retry::RetryConfig;

/// A topic partition. The topic is shared with every record read from it.
pub(crate) type TopicPartition = (Arc<str>, u32);

/// How fetchers fetch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FetchSettings {
    pub(crate) max_bytes: u32,
    pub(crate) max_wait: Duration,
    pub(crate) retry: RetryConfig,
    pub(crate) request_timeout: Duration,
}

/// Aborts a fetcher task when its assignment goes away.
#[derive(Debug)]
struct Assignment {
    generation: u64,
    task: JoinHandle<()>,
}

impl Drop for Assignment {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Records of one fetch response being handed out.
#[derive(Debug)]
struct Current {
    tp: TopicPartition,
    records: std::vec::IntoIter<ConsumedRecord>,
    next_offset: Option<u64>,
}

/// A fetch failure reported by a partition's fetcher.
#[derive(Debug)]
pub(crate) struct FetchFailure {
    pub(crate) tp: TopicPartition,
    pub(crate) error: Error,
    /// The fetcher stopped; the partition is no longer assigned.
    pub(crate) fatal: bool,
}

/// The assigned partitions and their fetchers.
#[derive(Debug)]
pub(crate) struct FetchSet {
    client: Client,
    settings: FetchSettings,
    events: mpsc::Receiver<FetchEvent>,
    events_tx: mpsc::Sender<FetchEvent>,
    assignments: HashMap<TopicPartition, Assignment>,
    /// Numbers every assignment, so events of a replaced or removed one are
    /// recognised and dropped.
    next_generation: u64,
    current: Option<Current>,
    progress: BTreeMap<TopicPartition, PartitionProgress>,
}

impl FetchSet {
    /// An empty set. `capacity` bounds the fetch responses waiting for the
    /// application, so a slow application slows the fetch streams (HTTP/2
    /// flow control) instead of growing memory.
    pub(crate) fn new(client: Client, settings: FetchSettings, capacity: usize) -> FetchSet {
        let (events_tx, events) = mpsc::channel(capacity.max(1));
        FetchSet {
            client,
            settings,
            events,
            events_tx,
            assignments: HashMap::new(),
            next_generation: 0,
            current: None,
            progress: BTreeMap::new(),
        }
    }

    /// Starts (or restarts) reading a partition from `start`; `position` is
    /// the first offset to deliver when known.
    pub(crate) fn assign(&mut self, tp: TopicPartition, start: fetch_request::Start, position: Option<u64>) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let settings = self.settings;
        let spec = FetchSpec {
            client: self.client.clone(),
            topic: tp.0.clone(),
            partition: tp.1,
            generation,
            start,
            position,
            max_bytes: settings.max_bytes,
            max_wait: settings.max_wait,
            retry: settings.retry,
            stall_timeout: settings.max_wait + settings.request_timeout,
        };
        let task = tokio::spawn(fetcher::run(spec, self.events_tx.clone()));
        if self.current.as_ref().is_some_and(|c| c.tp == tp) {
            self.current = None;
        }
        // Replacing an assignment aborts the old fetcher.
        self.assignments.insert(tp.clone(), Assignment { generation, task });
        self.progress.insert(
            tp.clone(),
            PartitionProgress { partition: tp.1, position, high_watermark: None, log_start_offset: None },
        );
    }

    /// Stops reading a partition: its fetcher stops and its buffered
    /// records are dropped. Returns how far it was read.
    pub(crate) fn unassign(&mut self, tp: &TopicPartition) -> Option<PartitionProgress> {
        self.assignments.remove(tp);
        if self.current.as_ref().is_some_and(|c| &c.tp == tp) {
            self.current = None;
        }
        self.progress.remove(tp)
    }

    /// Whether no partition is being read.
    pub(crate) fn is_empty(&self) -> bool {
        self.assignments.is_empty()
    }

    /// The next fetcher event, waiting for one. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Option<FetchEvent> {
        self.events.recv().await
    }

    /// The next fetcher event if one is already here.
    pub(crate) fn try_recv(&mut self) -> Option<FetchEvent> {
        self.events.try_recv().ok()
    }

    /// Takes in one fetcher event; returns the failure it carries, if any.
    /// Events of partitions no longer assigned (or reassigned since) are
    /// dropped.
    pub(crate) fn load(&mut self, event: FetchEvent) -> Option<FetchFailure> {
        match event {
            FetchEvent::Records {
                generation,
                topic,
                partition,
                records,
                next_offset,
                high_watermark,
                log_start_offset,
            } => {
                let tp = (topic, partition);
                if !self.is_current(&tp, generation) {
                    return None;
                }
                if let Some(p) = self.progress.get_mut(&tp) {
                    p.high_watermark = Some(high_watermark);
                    p.log_start_offset = Some(log_start_offset);
                }
                self.current = Some(Current { tp, records: records.into_iter(), next_offset });
                None
            }
            FetchEvent::Error { generation, topic, partition, error, fatal } => {
                let tp = (topic, partition);
                if !self.is_current(&tp, generation) {
                    return None;
                }
                if fatal {
                    self.assignments.remove(&tp);
                }
                Some(FetchFailure { tp, error, fatal })
            }
        }
    }

    fn is_current(&self, tp: &TopicPartition, generation: u64) -> bool {
        self.assignments.get(tp).is_some_and(|a| a.generation == generation)
    }

    /// The next record of the response being handed out, if any, advancing
    /// its partition's position.
    pub(crate) fn take_buffered(&mut self) -> Option<ConsumedRecord> {
        let current = self.current.as_mut()?;
        match current.records.next() {
            Some(record) => {
                if let Some(p) = self.progress.get_mut(&current.tp) {
                    p.position = Some(record.offset + 1);
                }
                Some(record)
            }
            None => {
                if let (Some(next), Some(p)) = (current.next_offset, self.progress.get_mut(&current.tp)) {
                    p.position = Some(p.position.map_or(next, |pos| pos.max(next)));
                }
                self.current = None;
                None
            }
        }
    }

    /// Progress of every assigned partition, in topic and partition order.
    pub(crate) fn progress(&self) -> impl Iterator<Item = (&TopicPartition, &PartitionProgress)> {
        self.progress.iter()
    }
}
