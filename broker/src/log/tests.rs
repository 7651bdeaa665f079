//! Tests of the partition log: append/read, group commit, recovery of torn
//! and corrupt tails, retention with injected time, timestamp lookup, and a
//! model-based property test that includes reopening.

use super::*;
use proptest::prelude::*;
use strata_proto::batch::{BatchBuilder, Compression, Limits, validate};

const LIMITS: Limits = Limits::new(1 << 20);

fn config(segment_bytes: u64, durability: Durability) -> LogConfig {
    LogConfig::for_tests(segment_bytes, durability)
}

fn batch(values: &[&str], ts: i64) -> (Vec<u8>, BatchHeader) {
    let mut b = BatchBuilder::new(Compression::None);
    for v in values {
        b.push(ts, None, Some(v.as_bytes()), &[]);
    }
    let bytes = b.finish().unwrap().to_vec();
    let header = validate(&bytes, LIMITS).unwrap();
    (bytes, header)
}

fn append(log: &PartitionLog, values: &[&str], ts: i64) -> Appended {
    let (mut bytes, header) = batch(values, ts);
    log.append(&mut bytes, &header, ts).unwrap()
}

/// Reads every record from `from` to the high watermark.
fn read_all(log: &PartitionLog, from: u64) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let r = log.read(next, 700).unwrap();
        if r.records.is_empty() {
            assert_eq!(r.next_offset, r.high_watermark);
            return out;
        }
        for b in BatchIter::new(r.records) {
            for rec in b.unwrap().records().unwrap() {
                if rec.offset >= next {
                    out.push((rec.offset, String::from_utf8(rec.value.unwrap().to_vec()).unwrap()));
                }
            }
        }
        next = r.next_offset;
    }
}

#[test]
fn append_and_read_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), config(1024, Durability::None), 0).unwrap();
    let mut expected = Vec::new();
    for i in 0..100 {
        let v = format!("value-{i}");
        let a = append(&log, &[&v], 1000 + i);
        assert_eq!(a.base_offset, i as u64);
        expected.push((i as u64, v));
    }
    assert!(log.stats().segments > 3, "small segments roll: {:?}", log.stats());
    assert_eq!(read_all(&log, 0), expected);
    assert_eq!(read_all(&log, 57), expected[57..].to_vec());
    let err = log.read(101, 1000).unwrap_err();
    assert!(matches!(err, LogError::OffsetOutOfRange { requested: 101, start: 0, end: 100 }), "{err}");
}

#[test]
fn a_batch_larger_than_max_bytes_is_returned_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), config(1 << 20, Durability::None), 0).unwrap();
    let big = "x".repeat(5000);
    append(&log, &[&big, &big], 1);
    let r = log.read(1, 10).unwrap();
    let batches: Vec<_> = BatchIter::new(r.records).collect();
    assert_eq!(batches.len(), 1);
    assert_eq!(r.next_offset, 2);
}

#[tokio::test]
async fn fsync_mode_publishes_only_after_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), config(1 << 20, Durability::Fsync), 0).unwrap();
    let a = append(&log, &["a", "b"], 5);
    // Not yet durable: readers see nothing.
    assert_eq!(log.high_watermark(), 0);
    assert!(log.read(0, 100).unwrap().records.is_empty());
    tokio::spawn(log.clone().run_syncer());
    log.wait_durable(a.last_offset + 1).await.unwrap();
    assert_eq!(log.high_watermark(), 2);
    // Many concurrent appends are covered by shared fsyncs.
    let mut waits = Vec::new();
    for i in 0..50 {
        let a = append(&log, &[&format!("v{i}")], 6);
        let log = log.clone();
        waits.push(tokio::spawn(async move { log.wait_durable(a.last_offset + 1).await }));
    }
    for w in waits {
        w.await.unwrap().unwrap();
    }
    assert_eq!(read_all(&log, 0).len(), 52);
    log.close();
}

#[test]
fn recovery_truncates_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = PartitionLog::open(dir.path(), config(1 << 20, Durability::None), 0).unwrap();
        for i in 0..10 {
            append(&log, &[&format!("v{i}")], i);
        }
        log.flush().unwrap();
    }
    let path = segment::log_path(dir.path(), 0);
    let full = std::fs::metadata(&path).unwrap().len();
    // A torn write: the last batch is cut in the middle.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(full - 7).unwrap();
    drop(f);
    let (log, report) = PartitionLog::open(dir.path(), config(1 << 20, Durability::None), 0).unwrap();
    assert_eq!(report.truncated.len(), 1, "{report:?}");
    assert_eq!(log.high_watermark(), 9);
    assert_eq!(read_all(&log, 0).len(), 9);
    // Appends continue right after the last valid batch.
    assert_eq!(append(&log, &["after"], 20).base_offset, 9);
    assert_eq!(read_all(&log, 9), vec![(9, "after".to_string())]);
}

#[test]
fn recovery_cuts_a_corrupt_batch_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = PartitionLog::open(dir.path(), config(1 << 20, Durability::None), 0).unwrap();
        for i in 0..10 {
            append(&log, &[&format!("value-{i}")], i);
        }
    }
    let path = segment::log_path(dir.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    // Flip a bit inside the last batch's payload and add trailing garbage.
    bytes[len - 3] ^= 0x10;
    bytes.extend_from_slice(&[0xAB; 40]);
    std::fs::write(&path, &bytes).unwrap();
    let (log, report) = PartitionLog::open(dir.path(), config(1 << 20, Durability::None), 0).unwrap();
    assert!(report.truncated[0].contains("CRC"), "{report:?}");
    assert_eq!(log.high_watermark(), 9);
    let values: Vec<String> = read_all(&log, 0).into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, (0..9).map(|i| format!("value-{i}")).collect::<Vec<_>>());
    assert!(std::fs::metadata(&path).unwrap().len() < len as u64);
}

#[test]
fn sealed_segment_index_is_rebuilt_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = PartitionLog::open(dir.path(), config(600, Durability::None), 0).unwrap();
        for i in 0..40 {
            append(&log, &[&format!("value-{i}")], i);
        }
    }
    let index = segment::index_path(dir.path(), 0);
    std::fs::remove_file(&index).unwrap();
    let (log, _) = PartitionLog::open(dir.path(), config(600, Durability::None), 0).unwrap();
    assert!(index.exists());
    assert_eq!(read_all(&log, 0).len(), 40);
}

#[test]
fn retention_by_time_deletes_whole_old_segments_never_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(500, Durability::None);
    cfg.retention_ms = 1000;
    let (log, _) = PartitionLog::open(dir.path(), cfg, 0).unwrap();
    // Old records (timestamps 0..) then new ones (timestamps 10_000..).
    for i in 0..20 {
        append(&log, &[&format!("old-{i}")], i);
    }
    for i in 0..20 {
        append(&log, &[&format!("new-{i}")], 10_000 + i);
    }
    let before = log.stats();
    let m = log.maintain(10_500).unwrap();
    assert!(!m.deleted_segments.is_empty());
    let after = log.stats();
    assert!(after.segments < before.segments);
    assert!(after.start_offset > 0 && after.start_offset <= 20, "{after:?}");
    // Every remaining record is readable from the new start; old ones are gone.
    let remaining = read_all(&log, after.start_offset);
    assert!(remaining.iter().all(|(o, _)| *o >= after.start_offset));
    assert_eq!(remaining.last().unwrap().1, "new-19");
    assert!(matches!(log.read(0, 100), Err(LogError::OffsetOutOfRange { .. })));
    // Far in the future everything sealed expires, but the active segment stays.
    log.maintain(1_000_000).unwrap();
    let s = log.stats();
    assert_eq!(s.segments, 1);
    assert_eq!(s.high_watermark, 40);
}

#[test]
fn retention_by_bytes_keeps_at_least_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(400, Durability::None);
    cfg.retention_bytes = 1200;
    let (log, _) = PartitionLog::open(dir.path(), cfg, 0).unwrap();
    for i in 0..60 {
        append(&log, &[&format!("v{i:03}")], i);
    }
    let before = log.stats().size_bytes;
    log.maintain(100).unwrap();
    let s = log.stats();
    assert!(s.size_bytes < before);
    assert!(s.size_bytes >= 1200, "{s:?}");
    assert_eq!(read_all(&log, s.start_offset).last().unwrap().0, 59);
}

#[test]
fn active_segment_rolls_by_age_and_then_expires() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(1 << 20, Durability::None);
    cfg.segment_ms = 100;
    cfg.retention_ms = 1000;
    let (log, _) = PartitionLog::open(dir.path(), cfg, 0).unwrap();
    append(&log, &["a"], 1_000);
    assert_eq!(log.maintain(1_050).unwrap(), Maintenance::default());
    let m = log.maintain(1_100).unwrap();
    assert!(m.rolled);
    assert!(m.deleted_segments.is_empty());
    let m = log.maintain(2_001).unwrap();
    assert_eq!(m.deleted_segments, vec![0]);
    let s = log.stats();
    assert_eq!((s.start_offset, s.high_watermark, s.segments), (1, 1, 1));
}

#[test]
fn timestamp_lookup_finds_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), config(700, Durability::None), 0).unwrap();
    for i in 0..50i64 {
        let (mut bytes, header) = {
            let mut b = BatchBuilder::new(Compression::None);
            b.push(i * 10, None, Some(b"x"), &[]);
            b.push(i * 10 + 5, None, Some(b"y"), &[]);
            let bytes = b.finish().unwrap().to_vec();
            let h = validate(&bytes, LIMITS).unwrap();
            (bytes, h)
        };
        log.append(&mut bytes, &header, 0).unwrap();
    }
    assert_eq!(log.offset_for_timestamp(0).unwrap(), (0, 0));
    assert_eq!(log.offset_for_timestamp(3).unwrap(), (1, 5));
    assert_eq!(log.offset_for_timestamp(6).unwrap(), (2, 10));
    assert_eq!(log.offset_for_timestamp(255).unwrap(), (51, 255));
    assert_eq!(log.offset_for_timestamp(10_000).unwrap(), (100, -1));
}

fn idem_batch(pid: i64, epoch: i16, seq: i32, values: &[&str]) -> (Vec<u8>, BatchHeader) {
    let mut b = BatchBuilder::new(Compression::None);
    b.set_producer(pid, epoch, seq);
    for v in values {
        b.push(1, None, Some(v.as_bytes()), &[]);
    }
    let bytes = b.finish().unwrap().to_vec();
    let header = validate(&bytes, LIMITS).unwrap();
    (bytes, header)
}

#[test]
fn idempotent_retries_are_stored_once_and_stale_epochs_are_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), config(1 << 20, Durability::None), 0).unwrap();
    let (mut b0, h0) = idem_batch(42, 0, 0, &["a", "b"]);
    let first = log.append(&mut b0.clone(), &h0, 1).unwrap();
    assert!(!first.duplicate);
    let retry = log.append(&mut b0, &h0, 2).unwrap();
    assert!(retry.duplicate);
    assert_eq!((retry.base_offset, retry.last_offset), (0, 1));
    assert_eq!(log.high_watermark(), 2, "nothing written twice");
    let (mut gap, hg) = idem_batch(42, 0, 5, &["x"]);
    assert!(matches!(
        log.append(&mut gap, &hg, 3),
        Err(LogError::Sequence(SequenceError::OutOfOrder { expected: 2, got: 5, .. }))
    ));
    let (mut e1, he1) = idem_batch(42, 1, 0, &["new-epoch"]);
    log.append(&mut e1, &he1, 4).unwrap();
    let (mut stale, hs) = idem_batch(42, 0, 2, &["zombie"]);
    assert!(matches!(
        log.append(&mut stale, &hs, 5),
        Err(LogError::Sequence(SequenceError::Fenced { current: 1, .. }))
    ));
    assert_eq!(read_all(&log, 0).len(), 3);
}

#[test]
fn producer_state_survives_rolls_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(400, Durability::None);
    let mut batches = Vec::new();
    {
        let (log, _) = PartitionLog::open(dir.path(), cfg, 0).unwrap();
        for i in 0..20 {
            let v = format!("value-{i:04}");
            let (mut b, h) = idem_batch(7, 0, i, &[&v]);
            batches.push((b.clone(), h));
            log.append(&mut b, &h, 1).unwrap();
        }
        assert!(log.stats().segments > 3);
        log.flush().unwrap();
    }
    let (log, _) = PartitionLog::open(dir.path(), cfg, 0).unwrap();
    // The last batch, retried after the restart, is recognised.
    let (mut last, h) = batches[19].clone();
    let r = log.append(&mut last, &h, 2).unwrap();
    assert!(r.duplicate);
    assert_eq!(r.base_offset, 19);
    // And the sequence continues where it was.
    let (mut next, hn) = idem_batch(7, 0, 20, &["next"]);
    assert_eq!(log.append(&mut next, &hn, 3).unwrap().base_offset, 20);
    let (mut gap, hg) = idem_batch(7, 0, 30, &["gap"]);
    assert!(log.append(&mut gap, &hg, 4).is_err());
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<String>),
    Read(usize),
    Reopen,
    Maintain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec("[a-z]{0,40}", 1..5).prop_map(Op::Append),
        2 => (0usize..1000).prop_map(Op::Read),
        1 => Just(Op::Reopen),
        1 => Just(Op::Maintain),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The log behaves like a vector of records, across rolls and reopens.
    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..60), seg in 200u64..2000) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(seg, Durability::None);
        let (mut log, _) = PartitionLog::open(dir.path(), cfg, 0).unwrap();
        let mut model: Vec<String> = Vec::new();
        for op in ops {
            match op {
                Op::Append(values) => {
                    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
                    let a = append(&log, &refs, 1);
                    prop_assert_eq!(a.base_offset, model.len() as u64);
                    model.extend(values);
                }
                Op::Read(at) => {
                    let from = if model.is_empty() { 0 } else { at % (model.len() + 1) };
                    let got = read_all(&log, from as u64);
                    let want: Vec<(u64, String)> = model.iter().cloned().enumerate().skip(from).map(|(i, v)| (i as u64, v)).collect();
                    prop_assert_eq!(got, want);
                }
                Op::Reopen => {
                    log.flush().unwrap();
                    log.close();
                    drop(log);
                    log = PartitionLog::open(dir.path(), cfg, 0).unwrap().0;
                }
                Op::Maintain => {
                    // No retention configured: maintenance must not lose data.
                    log.maintain(2).unwrap();
                }
            }
            prop_assert_eq!(log.high_watermark(), model.len() as u64);
        }
    }
}

/// A replicated partition's log rolls only on appends (so every replica
/// rolls at the same offsets), and never uploads past a segment the cold
/// tier ends inside (which would leave a gap).
#[test]
fn a_replicated_log_rolls_only_on_appends_and_uploads_leave_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_ms: 1_000, replicated: true, tiered: true, ..config(1 << 20, Durability::None) };
    let (log, _) = PartitionLog::open(dir.path(), cfg, 0).unwrap();
    append(&log, &["a"], 1_000);
    // Old by the local clock: a replicated log does not roll on its own.
    assert!(!log.maintain(10_000).unwrap().rolled);
    // An append at a later (leader) time rolls it, on every replica alike.
    append(&log, &["b1", "b2"], 2_000);
    append(&log, &["c"], 3_000);
    append(&log, &["d"], 4_000);
    let ranges: Vec<(u64, u64)> = log.lock().sealed.iter().map(|s| (s.base_offset, s.next_offset)).collect();
    assert_eq!(ranges, [(0, 1), (1, 3), (3, 4)]);
    assert_eq!(log.next_to_upload(0).map(|s| s.base_offset), Some(0));
    // The tier ends inside segment 1..3 (another replica rolled elsewhere):
    // the next segment is not uploaded, which would leave a gap.
    log.set_uploaded_end(2);
    assert!(log.next_to_upload(0).is_none());
    log.set_uploaded_end(3);
    assert_eq!(log.next_to_upload(0).map(|s| s.base_offset), Some(3));

    // Unreplicated, the same log rolls on its own clock.
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_ms: 1_000, ..config(1 << 20, Durability::None) };
    let (log, _) = PartitionLog::open(dir.path(), cfg, 0).unwrap();
    append(&log, &["a"], 1_000);
    assert!(log.maintain(10_000).unwrap().rolled);
}
