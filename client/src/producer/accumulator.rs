//! Batch accumulation: one open record batch per partition, sealed when it
//! reaches `batch_bytes` or when it has waited `linger`. Pure bookkeeping with
//! time passed in, so it is tested without a runtime or a broker.
//!
//! For an idempotent producer a sealed batch stays unencoded until it is
//! first sent: the sender stamps the producer id, epoch and sequence then
//! (sequences must follow the order batches reach the broker), and encodes
//! it once. A batch that must be renumbered later gets its sequence patched
//! in place ([`SealedBatch::stamp`]); its records are never re-encoded.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_proto::batch::{BatchBuilder, Compression};
use strata_telemetry::MessageTrace;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::{Message, RecordMetadata};
use crate::error::Error;

/// Where one message's outcome is reported.
pub(crate) type AckSender = oneshot::Sender<Result<RecordMetadata, Error>>;

/// A message on its way into a batch, with the memory it reserved.
#[derive(Debug)]
pub(crate) struct PendingMessage {
    pub(crate) message: Message,
    pub(crate) timestamp_ms: i64,
    pub(crate) ack: AckSender,
    /// Released (returning memory to the producer) when the batch completes.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    /// The trace context to store with the message (tracing on); a sampled
    /// one marks the record `RECORD_TRACED`, so the broker traces it.
    pub(crate) trace: Option<MessageTrace>,
    /// Its encoded size in a batch (`BatchBuilder::record_size`).
    pub(crate) size: usize,
}

/// The most buffer an open batch reserves up front.
const MAX_PREALLOCATED: usize = 1 << 20;

/// A sealed batch's records: still open (idempotent producers stamp the
/// batch when it is first sent) or encoded.
#[derive(Debug)]
pub(crate) enum Payload {
    Open(BatchBuilder),
    Encoded(Bytes),
}

/// The idempotent-producer fields a batch was sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// The partition's numbering generation when the batch was stamped; a
    /// batch stamped in an older generation is renumbered before it is sent
    /// again.
    pub(crate) generation: u64,
    pub(crate) base_sequence: i32,
}

/// A batch ready to send: encoded once, resent as is on retries.
#[derive(Debug)]
pub(crate) struct SealedBatch {
    /// Sealing order; retries and resends go out in this order.
    pub(crate) seq: u64,
    pub(crate) partition: u32,
    pub(crate) payload: Payload,
    pub(crate) record_count: u32,
    /// Set once an idempotent producer has sent the batch.
    pub(crate) stamp: Option<Stamp>,
    pub(crate) acks: Vec<AckSender>,
    /// Held for its `Drop`: the batch's memory returns to the producer when
    /// the batch completes, whichever way.
    _memory: Option<OwnedSemaphorePermit>,
}

impl SealedBatch {
    /// The encoded batch, once there is one.
    pub(crate) fn bytes(&self) -> Option<&Bytes> {
        match &self.payload {
            Payload::Encoded(bytes) => Some(bytes),
            Payload::Open(_) => None,
        }
    }

    /// Gives the batch its idempotent-producer fields: an open batch is
    /// encoded with them; an encoded one (sent before under another
    /// numbering) gets its base sequence and CRC patched in place.
    pub(crate) fn stamp(&mut self, producer_id: i64, epoch: i16, stamp: Stamp) {
        let payload = std::mem::replace(&mut self.payload, Payload::Encoded(Bytes::new()));
        self.payload = match payload {
            Payload::Open(mut builder) => {
                builder.set_producer(producer_id, epoch, stamp.base_sequence);
                // Batches are sealed only when they hold records, so
                // `finish` always has something to encode.
                Payload::Encoded(builder.finish().unwrap_or_default())
            }
            Payload::Encoded(bytes) => Payload::Encoded(patch_base_sequence(&bytes, stamp.base_sequence)),
        };
        self.stamp = Some(stamp);
    }

    /// Reports success: record `i` got offset `base_offset + i`.
    pub(crate) fn succeed(self, base_offset: u64) {
        let partition = self.partition;
        for (i, ack) in self.acks.into_iter().enumerate() {
            let _ = ack.send(Ok(RecordMetadata { partition, offset: base_offset + i as u64 }));
        }
    }

    /// Reports the same failure to every message of the batch.
    pub(crate) fn fail(self, error: &Error) {
        for ack in self.acks {
            let _ = ack.send(Err(error.clone()));
        }
    }
}

fn patch_base_sequence(bytes: &Bytes, base_sequence: i32) -> Bytes {
    strata_proto::batch::with_base_sequence(bytes, base_sequence)
}

#[derive(Debug)]
struct OpenBatch {
    id: u64,
    builder: BatchBuilder,
    acks: Vec<AckSender>,
    permit: Option<OwnedSemaphorePermit>,
}

/// The open batches of one producer.
#[derive(Debug)]
pub(crate) struct Accumulator {
    batch_bytes: usize,
    linger: Duration,
    compression: Compression,
    /// Leave sealed batches open for the sender to stamp (idempotence).
    stamp_at_send: bool,
    open: HashMap<u32, OpenBatch>,
    /// Linger deadlines in creation order; since `linger` is fixed they are
    /// also in deadline order. Entries of batches sealed early go stale and
    /// are skipped by comparing batch ids.
    deadlines: VecDeque<(Instant, u32, u64)>,
    next_id: u64,
    next_seq: u64,
}

impl Accumulator {
    pub(crate) fn new(batch_bytes: usize, linger: Duration, compression: Compression, stamp_at_send: bool) -> Self {
        Accumulator {
            batch_bytes: batch_bytes.max(1),
            linger,
            compression,
            stamp_at_send,
            open: HashMap::new(),
            deadlines: VecDeque::new(),
            next_id: 0,
            next_seq: 0,
        }
    }

    /// Whether no batch is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The sequence number the next sealed batch will get.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Adds a message to `partition`'s open batch. A batch that the message
    /// would overflow is sealed first, and a batch the message fills is
    /// sealed right after; sealed batches are pushed to `out`.
    pub(crate) fn append(&mut self, partition: u32, msg: PendingMessage, now: Instant, out: &mut Vec<SealedBatch>) {
        let PendingMessage { message, timestamp_ms, ack, permit, trace, size } = msg;
        let headers = super::record_headers(&message.headers, trace.as_ref());
        let traced = trace.as_ref().is_some_and(MessageTrace::is_sampled);
        let key = message.key.as_deref();
        let value = Some(&message.value[..]);

        let overflows = self
            .open
            .get(&partition)
            .is_some_and(|open| !open.builder.is_empty() && open.builder.size() + size > self.batch_bytes);
        if overflows {
            self.seal(partition, out);
        }
        let batch = match self.open.entry(partition) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let id = self.next_id;
                self.next_id += 1;
                self.deadlines.push_back((now + self.linger, partition, id));
                // Room for a full batch up front (as Kafka's producer does):
                // a batch is then encoded without regrowing its buffer.
                let builder = BatchBuilder::with_capacity(self.compression, self.batch_bytes.min(MAX_PREALLOCATED));
                e.insert(OpenBatch { id, builder, acks: Vec::new(), permit: None })
            }
        };
        batch.builder.push_record(timestamp_ms, key, value, headers, traced);
        batch.acks.push(ack);
        match (&mut batch.permit, permit) {
            (Some(held), Some(p)) => held.merge(p),
            (slot @ None, p) => *slot = p,
            (Some(_), None) => {}
        }
        if batch.builder.size() >= self.batch_bytes {
            self.seal(partition, out);
        }
    }

    /// Seals every batch whose linger has expired at `now`, except those of
    /// partitions `hold` says cannot send now (their pipeline is full): as
    /// in Kafka's producer, such a batch stays open and keeps filling until
    /// it can go (the caller asks again when a slot frees) or is full.
    pub(crate) fn expire(&mut self, now: Instant, hold: impl Fn(u32) -> bool, out: &mut Vec<SealedBatch>) {
        let mut held = Vec::new();
        while let Some(&(deadline, partition, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if self.open.get(&partition).is_some_and(|b| b.id == id) {
                if hold(partition) {
                    held.push((deadline, partition, id));
                } else {
                    self.seal(partition, out);
                }
            }
        }
        for entry in held.into_iter().rev() {
            self.deadlines.push_front(entry);
        }
    }

    /// When the oldest open batch's linger expires, after `now` (batches
    /// already expired and held wait for a slot, not for a time).
    pub(crate) fn next_deadline(&mut self, now: Instant) -> Option<Instant> {
        let open = &self.open;
        self.deadlines.retain(|(_, partition, id)| open.get(partition).is_some_and(|b| b.id == *id));
        self.deadlines.iter().map(|(deadline, _, _)| *deadline).find(|d| *d > now)
    }

    /// Seals every open batch (flush and close), oldest first.
    pub(crate) fn seal_all(&mut self, out: &mut Vec<SealedBatch>) {
        while let Some((_, partition, id)) = self.deadlines.pop_front() {
            if self.open.get(&partition).is_some_and(|b| b.id == id) {
                self.seal(partition, out);
            }
        }
        // Every open batch has a deadline entry, so nothing is left; this
        // keeps the invariant even if that ever changes.
        let rest: Vec<u32> = self.open.keys().copied().collect();
        for partition in rest {
            self.seal(partition, out);
        }
    }

    fn seal(&mut self, partition: u32, out: &mut Vec<SealedBatch>) {
        let Some(batch) = self.open.remove(&partition) else {
            return;
        };
        if batch.builder.is_empty() {
            return;
        }
        let record_count = batch.builder.len();
        let payload = if self.stamp_at_send {
            Payload::Open(batch.builder)
        } else {
            match batch.builder.finish() {
                Some(bytes) => Payload::Encoded(bytes),
                None => return,
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        out.push(SealedBatch {
            seq,
            partition,
            payload,
            record_count,
            stamp: None,
            acks: batch.acks,
            _memory: batch.permit,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::batch::BatchIter;

    fn msg(value: &[u8]) -> (PendingMessage, oneshot::Receiver<Result<RecordMetadata, Error>>) {
        let (tx, rx) = oneshot::channel();
        let message = Message::new(Bytes::copy_from_slice(value));
        (
            PendingMessage {
                size: message.encoded_size(None),
                message,
                timestamp_ms: 1_000,
                ack: tx,
                permit: None,
                trace: None,
            },
            rx,
        )
    }

    fn values(batch: &SealedBatch) -> Vec<Vec<u8>> {
        let raw = BatchIter::new(batch.bytes().unwrap().clone()).next().unwrap().unwrap();
        raw.records().unwrap().into_iter().map(|r| r.value.unwrap().to_vec()).collect()
    }

    #[test]
    fn batches_fill_up_to_batch_bytes_then_seal() {
        let t0 = Instant::now();
        // Each 100-byte value costs a bit over 100 bytes; 61 is the header.
        let mut acc = Accumulator::new(61 + 250, Duration::from_secs(60), Compression::None, false);
        let mut out = Vec::new();
        for i in 0..5u8 {
            acc.append(0, msg(&[i; 100]).0, t0, &mut out);
        }
        // Two records fit per batch; the third seals the first batch.
        assert_eq!(out.len(), 2);
        assert_eq!(values(&out[0]), vec![vec![0u8; 100], vec![1u8; 100]]);
        assert_eq!(values(&out[1]), vec![vec![2u8; 100], vec![3u8; 100]]);
        assert_eq!((out[0].seq, out[1].seq), (0, 1));
        assert!(!acc.is_empty());
        acc.seal_all(&mut out);
        assert_eq!(values(&out[2]), vec![vec![4u8; 100]]);
        assert!(acc.is_empty());
    }

    #[test]
    fn an_oversized_record_gets_a_batch_of_its_own() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(200, Duration::from_secs(60), Compression::None, false);
        let mut out = Vec::new();
        acc.append(0, msg(b"small").0, t0, &mut out);
        acc.append(0, msg(&[7; 1000]).0, t0, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(values(&out[0]), vec![b"small".to_vec()]);
        assert_eq!(values(&out[1]), vec![vec![7u8; 1000]]);
    }

    /// A 5 ms linger, and message "a" in partition 1's open batch at `t0`.
    fn lingering_with_a_on_1() -> (Instant, Duration, Accumulator, Vec<SealedBatch>) {
        let t0 = Instant::now();
        let linger = Duration::from_millis(5);
        let mut acc = Accumulator::new(1 << 20, linger, Compression::None, false);
        let mut out = Vec::new();
        acc.append(1, msg(b"a").0, t0, &mut out);
        (t0, linger, acc, out)
    }

    #[test]
    fn linger_seals_batches_in_creation_order() {
        let (t0, linger, mut acc, mut out) = lingering_with_a_on_1();
        acc.append(2, msg(b"b").0, t0 + Duration::from_millis(2), &mut out);
        acc.append(1, msg(b"c").0, t0 + Duration::from_millis(3), &mut out);
        assert_eq!(acc.next_deadline(t0), Some(t0 + linger));
        acc.expire(t0 + Duration::from_millis(4), |_| false, &mut out);
        assert!(out.is_empty());
        acc.expire(t0 + linger, |_| false, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].partition, 1);
        assert_eq!(values(&out[0]), vec![b"a".to_vec(), b"c".to_vec()]);
        assert_eq!(acc.next_deadline(t0), Some(t0 + Duration::from_millis(7)));
        acc.expire(t0 + Duration::from_millis(7), |_| false, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].partition, 2);
        assert_eq!(acc.next_deadline(t0), None);
    }

    #[test]
    fn a_held_partition_keeps_filling_its_expired_batch_until_released() {
        let (t0, linger, mut acc, mut out) = lingering_with_a_on_1();
        acc.append(2, msg(b"b").0, t0, &mut out);
        // Partition 1's pipeline is full: only partition 2's batch goes.
        acc.expire(t0 + linger, |p| p == 1, &mut out);
        assert_eq!(out.iter().map(|b| b.partition).collect::<Vec<_>>(), [2]);
        // Held and expired: no timer for it (a freed slot brings it back).
        assert_eq!(acc.next_deadline(t0 + linger), None);
        acc.append(1, msg(b"c").0, t0 + Duration::from_millis(6), &mut out);
        acc.append(3, msg(b"d").0, t0 + Duration::from_millis(6), &mut out);
        assert_eq!(acc.next_deadline(t0 + linger), Some(t0 + Duration::from_millis(11)));
        acc.expire(t0 + Duration::from_millis(7), |_| false, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].partition, 1);
        assert_eq!(values(&out[1]), vec![b"a".to_vec(), b"c".to_vec()], "one batch, still filled while held");
        assert_eq!(acc.next_deadline(t0 + Duration::from_millis(7)), Some(t0 + Duration::from_millis(11)));
    }

    #[test]
    fn stale_deadlines_of_batches_sealed_by_size_are_skipped() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(61 + 120, Duration::from_millis(5), Compression::None, false);
        let mut out = Vec::new();
        acc.append(0, msg(&[1; 100]).0, t0, &mut out);
        // Sealed by size at t0+1; the new open batch lingers until t0+6.
        acc.append(0, msg(&[2; 100]).0, t0 + Duration::from_millis(1), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(acc.next_deadline(t0), Some(t0 + Duration::from_millis(6)));
        acc.expire(t0 + Duration::from_millis(5), |_| false, &mut out);
        assert_eq!(out.len(), 1);
        acc.expire(t0 + Duration::from_millis(6), |_| false, &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn outcomes_reach_every_message() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(1 << 20, Duration::ZERO, Compression::Lz4, false);
        let mut out = Vec::new();
        let (m1, r1) = msg(b"x");
        let (m2, r2) = msg(b"y");
        acc.append(3, m1, t0, &mut out);
        acc.append(3, m2, t0, &mut out);
        acc.expire(t0, |_| false, &mut out);
        let batch = out.pop().unwrap();
        assert_eq!(batch.partition, 3);
        batch.succeed(40);
        assert_eq!(r1.blocking_recv().unwrap().unwrap(), RecordMetadata { partition: 3, offset: 40 });
        assert_eq!(r2.blocking_recv().unwrap().unwrap().offset, 41);

        let (m3, r3) = msg(b"z");
        acc.append(0, m3, t0, &mut out);
        acc.seal_all(&mut out);
        out.pop().unwrap().fail(&Error::InvalidArgument("nope".into()));
        assert!(r3.blocking_recv().unwrap().is_err());
    }

    #[test]
    fn idempotent_batches_are_stamped_when_sent_and_renumbered_in_place() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(1 << 20, Duration::ZERO, Compression::Lz4, true);
        let mut out = Vec::new();
        acc.append(2, msg(b"a").0, t0, &mut out);
        acc.append(2, msg(b"b").0, t0, &mut out);
        acc.seal_all(&mut out);
        let mut batch = out.pop().unwrap();
        assert!(batch.bytes().is_none(), "left open for the sender");
        assert_eq!(batch.record_count, 2);

        batch.stamp(7, 3, Stamp { generation: 0, base_sequence: 40 });
        let limits = strata_proto::batch::Limits::new(1 << 20);
        let header = strata_proto::batch::validate(batch.bytes().unwrap(), limits).unwrap();
        assert_eq!((header.producer_id, header.producer_epoch, header.base_sequence), (7, 3, 40));
        assert_eq!(values(&batch), vec![b"a".to_vec(), b"b".to_vec()]);

        batch.stamp(7, 3, Stamp { generation: 1, base_sequence: 12 });
        let header = strata_proto::batch::validate(batch.bytes().unwrap(), limits).unwrap();
        assert_eq!((header.producer_id, header.producer_epoch, header.base_sequence), (7, 3, 12));
        assert_eq!(batch.stamp, Some(Stamp { generation: 1, base_sequence: 12 }));
        assert_eq!(values(&batch), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(patch_base_sequence(&Bytes::from_static(b"short"), 1), Bytes::from_static(b"short"));
    }
}
