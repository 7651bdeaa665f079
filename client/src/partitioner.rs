//! Which partition a produced message goes to: a stable hash of the key, an
//! explicit choice, or — for keyless messages — one partition per batch,
//! rotating round-robin (Kafka's "sticky" partitioner).

use xxhash_rust::xxh3::xxh3_64;

/// The partition of `key` in a topic with `partitions` partitions:
/// `xxh3_64(key) % partitions` (XXH3, 64-bit, seed 0).
///
/// This mapping is part of Strata's contract: it never changes between client
/// versions, so every producer — in any language — that implements it sends a
/// key to the same partition. It changes only when the partition count does.
///
/// Returns 0 when `partitions` is 0.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    if partitions == 0 {
        return 0;
    }
    (xxh3_64(key) % u64::from(partitions)) as u32
}

/// Per-producer partition choice. Keyless messages stick to one partition
/// until the batch being filled for it is sealed, then move to the next
/// partition, so batches stay large however many partitions there are.
#[derive(Debug)]
pub(crate) struct Partitioner {
    partitions: u32,
    sticky: Option<u32>,
    next: u32,
}

impl Partitioner {
    pub(crate) fn new(partitions: u32) -> Self {
        Partitioner {
            partitions,
            sticky: None,
            // Start the rotation somewhere different per producer so that
            // many short-lived producers do not all hit partition 0 first.
            next: start_hint(partitions),
        }
    }

    /// Adopts a new partition count (it only grows; a smaller one is taken as
    /// is, since the broker is the authority).
    pub(crate) fn set_partitions(&mut self, partitions: u32) {
        if partitions == self.partitions {
            return;
        }
        self.partitions = partitions;
        if self.sticky.is_some_and(|p| p >= partitions) {
            self.sticky = None;
        }
    }

    /// The partition for one message, or `None` when the topic has no
    /// partitions at all.
    pub(crate) fn choose(&mut self, key: Option<&[u8]>, explicit: Option<u32>) -> Option<u32> {
        if let Some(p) = explicit {
            // Sent as asked even if beyond the partitions we know of: the
            // broker is the authority and answers UNKNOWN_PARTITION.
            return Some(p);
        }
        if self.partitions == 0 {
            return None;
        }
        if let Some(key) = key {
            return Some(partition_for_key(key, self.partitions));
        }
        if let Some(p) = self.sticky {
            return Some(p);
        }
        let p = self.next % self.partitions;
        self.next = (p + 1) % self.partitions;
        self.sticky = Some(p);
        Some(p)
    }

    /// Called when the open batch of `partition` is sealed: keyless messages
    /// move on to the next partition.
    pub(crate) fn batch_sealed(&mut self, partition: u32) {
        if self.sticky == Some(partition) {
            self.sticky = None;
        }
    }
}

fn start_hint(partitions: u32) -> u32 {
    if partitions == 0 {
        return 0;
    }
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    (nanos ^ std::process::id()) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_pinned() {
        // These values are a compatibility contract; never update them.
        // XXH3-64 of the empty input is the reference implementation's
        // published value, which ties the crate to the spec.
        assert_eq!(xxh3_64(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(xxh3_64(b"order-42"), PINNED_HASH);
        assert_eq!(partition_for_key(b"order-42", 12), (PINNED_HASH % 12) as u32);
        assert_eq!(partition_for_key(b"order-42", 12), PINNED_PARTITION_OF_12);
        assert_eq!(partition_for_key(b"", 7), PINNED_EMPTY_OF_7);
        assert_eq!(partition_for_key(b"anything", 1), 0);
        assert_eq!(partition_for_key(b"anything", 0), 0);
    }

    const PINNED_HASH: u64 = 8_776_571_816_221_789_756;
    const PINNED_PARTITION_OF_12: u32 = 4;
    const PINNED_EMPTY_OF_7: u32 = 4;

    #[test]
    fn keyed_messages_are_stable_and_in_range() {
        let mut p = Partitioner::new(8);
        for i in 0..1000u32 {
            let key = i.to_le_bytes();
            let a = p.choose(Some(&key), None).unwrap();
            assert!(a < 8);
            assert_eq!(a, p.choose(Some(&key), None).unwrap());
            assert_eq!(a, partition_for_key(&key, 8));
        }
    }

    #[test]
    fn keyless_messages_stick_until_the_batch_is_sealed_then_rotate() {
        let mut p = Partitioner::new(3);
        let first = p.choose(None, None).unwrap();
        assert_eq!(p.choose(None, None), Some(first));
        // Sealing another partition's batch does not move the sticky one.
        p.batch_sealed((first + 1) % 3);
        assert_eq!(p.choose(None, None), Some(first));
        let mut seen = vec![first];
        for _ in 0..2 {
            p.batch_sealed(*seen.last().unwrap());
            seen.push(p.choose(None, None).unwrap());
        }
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2], "round-robin visits every partition");
    }

    #[test]
    fn explicit_partition_wins_and_zero_partitions_has_no_choice() {
        let mut p = Partitioner::new(0);
        assert_eq!(p.choose(None, None), None);
        assert_eq!(p.choose(Some(b"k"), None), None);
        assert_eq!(p.choose(Some(b"k"), Some(5)), Some(5));
        p.set_partitions(2);
        assert!(p.choose(None, None).unwrap() < 2);
    }

    #[test]
    fn shrinking_drops_an_out_of_range_sticky_partition() {
        let mut p = Partitioner::new(4);
        let mut sticky = p.choose(None, None).unwrap();
        while sticky < 2 {
            p.batch_sealed(sticky);
            sticky = p.choose(None, None).unwrap();
        }
        p.set_partitions(2);
        assert!(p.choose(None, None).unwrap() < 2);
    }
}
