//! Fault injection below the partition log, through the filesystem seam
//! (`crate::fs::fault::FaultFs`): fsync failure, short writes, a full disk,
//! and power loss (a model test).

use std::path::Path;

use proptest::prelude::*;
use strata_proto::batch::{BatchBuilder, Compression, Limits, validate};
use strata_proto::v1::ErrorCode;

use super::*;
use crate::error::BrokerError;
use crate::fs::fault::FaultFs;

const LIMITS: Limits = Limits::new(1 << 20);

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig::for_tests(segment_bytes, Durability::Fsync)
}

fn batch(values: &[String]) -> (Vec<u8>, BatchHeader) {
    let mut b = BatchBuilder::new(Compression::None);
    for v in values {
        b.push(1000, None, Some(v.as_bytes()), &[]);
    }
    let bytes = b.finish().unwrap().to_vec();
    let header = validate(&bytes, LIMITS).unwrap();
    (bytes, header)
}

fn try_append(log: &PartitionLog, values: &[&str]) -> Result<Appended, LogError> {
    let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
    let (mut bytes, header) = batch(&values);
    log.append(&mut bytes, &header, 1000)
}

/// Appends `values` as one batch and flushes: they are durable (or the test fails).
fn append_flushed(log: &PartitionLog, values: &[&str]) {
    try_append(log, values).unwrap();
    log.flush().unwrap();
}

fn open(fs: &FaultFs, dir: &str, segment_bytes: u64) -> (Arc<PartitionLog>, RecoveryReport) {
    // A small cache: the tests also exercise evicted and reopened handles.
    let files = crate::fs::SegmentFiles::new(fs.fs(), 2);
    PartitionLog::open_in(&files, Path::new(dir), config(segment_bytes), 1000).unwrap()
}

/// Every record value up to the high watermark, checking that offsets run
/// 0, 1, 2, … without gaps.
fn values(log: &PartitionLog) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = log.start_offset();
    loop {
        let r = log.read(next, 1 << 16).unwrap();
        if r.records.is_empty() {
            return out;
        }
        for b in BatchIter::new(r.records) {
            for rec in b.unwrap().records().unwrap() {
                if rec.offset >= next {
                    assert_eq!(rec.offset, out.len() as u64, "offsets without gaps or duplicates");
                    out.push(String::from_utf8(rec.value.unwrap().to_vec()).unwrap());
                }
            }
        }
        next = r.next_offset;
    }
}

fn status_of(e: LogError) -> tonic::Status {
    crate::grpc::status::to_status(BrokerError::Log { resource: "default/t/0".into(), source: e })
}

#[tokio::test]
async fn a_failed_fsync_poisons_the_partition_and_loses_nothing_acknowledged() {
    let fs = FaultFs::new();
    let (p0, _) = open(&fs, "/data/t-0", 1 << 20);
    let (p1, _) = open(&fs, "/data/t-1", 1 << 20);
    tokio::spawn(p0.clone().run_syncer());
    tokio::spawn(p1.clone().run_syncer());
    let a = try_append(&p0, &["a"]).unwrap();
    p0.wait_durable(a.last_offset + 1).await.unwrap();

    fs.set_faults(|f| f.fail_sync = Some("/data/t-0/".into()));
    let b = try_append(&p0, &["b"]).unwrap();
    let err = p0.wait_durable(b.last_offset + 1).await.unwrap_err();
    assert!(matches!(err, LogError::Poisoned(_)), "{err}");
    assert_eq!(p0.high_watermark(), 1, "the batch whose fsync failed is never acknowledged");
    let status = status_of(err);
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(strata_proto::error_code(&status), ErrorCode::Storage);
    assert!(fs.stats().failed_syncs >= 1);

    // fsync is never retried to pretend success: even with the disk healthy
    // again, the partition refuses writes until it is reopened.
    fs.clear_faults();
    let err = try_append(&p0, &["c"]).unwrap_err();
    assert!(matches!(err, LogError::Poisoned(_)), "{err}");
    assert!(matches!(p0.wait_durable(b.last_offset + 1).await, Err(LogError::Poisoned(_))));
    assert_eq!(p0.high_watermark(), 1);

    // The other partition keeps serving.
    let x = try_append(&p1, &["x"]).unwrap();
    p1.wait_durable(x.last_offset + 1).await.unwrap();
    assert_eq!(values(&p1), ["x"]);

    // Power loss, reopen: what was acknowledged is there, the partition works.
    p0.close();
    p1.close();
    fs.power_loss();
    let (p0, _) = open(&fs, "/data/t-0", 1 << 20);
    assert_eq!(values(&p0), ["a"]);
    try_append(&p0, &["d"]).unwrap();
    p0.flush().unwrap();
    assert_eq!(values(&p0), ["a", "d"]);
    let (p1, _) = open(&fs, "/data/t-1", 1 << 20);
    assert_eq!(values(&p1), ["x"]);
}

#[test]
fn a_failed_fsync_while_sealing_a_segment_poisons_too() {
    let fs = FaultFs::new();
    let (log, _) = open(&fs, "/data/t-0", 300);
    append_flushed(&log, &["first"]);
    try_append(&log, &[&"x".repeat(100)]).unwrap();
    fs.set_faults(|f| f.fail_sync = Some("00000000000000000000.log".into()));
    // This append rolls: sealing fsyncs the old segment, which fails.
    let err = try_append(&log, &[&"y".repeat(200)]).unwrap_err();
    assert!(matches!(err, LogError::Poisoned(_)), "{err}");
    assert_eq!(log.high_watermark(), 1);
    fs.clear_faults();
    assert!(matches!(try_append(&log, &["z"]), Err(LogError::Poisoned(_))));
    fs.power_loss();
    let (log, _) = open(&fs, "/data/t-0", 300);
    assert_eq!(values(&log), ["first"]);
}

/// The producer waiting for the fsync of a batch gets an answer when the
/// fsync fails while sealing its segment (an append by someone else rolled
/// it): an error, never a hang and never a success.
#[tokio::test]
async fn a_producer_waiting_on_a_segment_whose_seal_fails_gets_an_error() {
    let fs = FaultFs::new();
    let (log, _) = open(&fs, "/data/t-0", 300);
    // No group-commit task: the only fsync of the first batch is the seal.
    let a = try_append(&log, &[&"x".repeat(100)]).unwrap();
    let waiter = tokio::spawn({
        let log = log.clone();
        async move { log.wait_durable(a.last_offset + 1).await }
    });
    // The waiter is parked on the high watermark before the fault.
    tokio::task::yield_now().await;
    fs.set_faults(|f| f.fail_sync = Some("00000000000000000000.log".into()));
    let err = try_append(&log, &[&"y".repeat(200)]).unwrap_err();
    assert!(matches!(err, LogError::Poisoned(_)), "{err}");
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
        .await
        .expect("the waiting producer was never answered")
        .unwrap();
    assert!(matches!(answer, Err(LogError::Poisoned(_))), "{answer:?}");
    assert_eq!(log.high_watermark(), 0, "nothing was acknowledged");
}

#[test]
fn a_short_write_is_not_acknowledged_and_recovery_cuts_a_torn_tail() {
    let fs = FaultFs::new();
    let (log, _) = open(&fs, "/data/t-0", 1 << 20);
    append_flushed(&log, &["a"]);

    // A short write the log can undo: refused, cut back, the next one works.
    fs.set_faults(|f| f.short_write = Some(".log".into()));
    let err = try_append(&log, &["b-never-stored"]).unwrap_err();
    assert!(matches!(&err, LogError::Io { source, .. } if source.kind() == io::ErrorKind::WriteZero), "{err}");
    assert_eq!(fs.stats().short_writes, 1);
    assert_eq!(log.end_offset(), 1, "no offset was taken by the failed batch");
    let seg = segment::log_path(Path::new("/data/t-0"), 0);
    let len_before = fs.contents(&seg).unwrap().len();
    append_flushed(&log, &["c"]);
    assert_eq!(values(&log), ["a", "c"]);
    assert!(fs.contents(&seg).unwrap().len() > len_before);

    // A short write that cannot be undone (truncation fails too): the
    // partition stops writing; after a crash that kept the torn bytes,
    // recovery cuts them and everything acknowledged is there.
    fs.set_faults(|f| {
        f.short_write = Some(".log".into());
        f.fail_truncate = Some(".log".into());
    });
    assert!(try_append(&log, &["d-torn"]).is_err());
    assert!(matches!(try_append(&log, &["e"]), Err(LogError::Poisoned(_))));
    assert_eq!(log.high_watermark(), 2);
    fs.clear_faults();
    fs.process_crash();
    let (log, report) = open(&fs, "/data/t-0", 1 << 20);
    assert_eq!(report.truncated.len(), 1, "{:?}", report.truncated);
    assert_eq!(values(&log), ["a", "c"]);
    append_flushed(&log, &["f"]);
    assert_eq!(values(&log), ["a", "c", "f"]);
}

#[test]
fn a_full_disk_is_resource_exhausted_and_produce_resumes_when_space_returns() {
    let fs = FaultFs::new();
    let (log, _) = open(&fs, "/data/t-0", 1200);
    append_flushed(&log, &["a"]);
    let used = fs.used();
    fs.set_faults(|f| f.capacity = Some(used + 100));
    let err = try_append(&log, &[&"b".repeat(500)]).unwrap_err();
    assert!(matches!(&err, LogError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull), "{err}");
    assert_eq!(fs.used(), used, "the part that fitted was cut back");
    let status = status_of(err);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(strata_proto::error_code(&status), ErrorCode::ResourceExhausted);
    assert_eq!(log.end_offset(), 1);

    // Space returns: produce works again without a reopen.
    fs.clear_faults();
    append_flushed(&log, &[&"c".repeat(500)]);

    // Full again at a roll (new segment, producer snapshot): refused, and
    // the roll is retried once space returns.
    fs.set_faults(|f| f.capacity = Some(fs.used()));
    let err = try_append(&log, &[&"d".repeat(900)]).unwrap_err();
    assert!(matches!(&err, LogError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull), "{err}");
    fs.clear_faults();
    append_flushed(&log, &[&"e".repeat(900)]);
    assert!(log.stats().segments >= 2, "{:?}", log.stats());
    let got = values(&log);
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], "a");
    assert!(got[1].starts_with('c') && got[2].starts_with('e'));

    fs.power_loss();
    let (log, _) = open(&fs, "/data/t-0", 1200);
    assert_eq!(values(&log), got);
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Flush,
    PowerLoss,
    ProcessCrash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..4).prop_map(Op::Append),
        2 => Just(Op::Flush),
        1 => Just(Op::PowerLoss),
        1 => Just(Op::ProcessCrash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random appends, fsyncs and crashes (a power loss drops every write
    /// not yet fsynced): after each reopen every acknowledged record (below
    /// the high watermark when the crash came) is there, in order, and
    /// what survived is a prefix of what was written: no gaps, no duplicates.
    #[test]
    fn acknowledged_records_survive_power_loss(ops in proptest::collection::vec(op(), 1..50), seg in 200u64..1500) {
        let fs = FaultFs::new();
        let dir = "/data/t-0";
        let (mut log, _) = open(&fs, dir, seg);
        let mut written: Vec<String> = Vec::new();
        let mut n = 0;
        for op in ops {
            match op {
                Op::Append(k) => {
                    let vals: Vec<String> = (0..k).map(|_| { n += 1; format!("v{n}") }).collect();
                    let (mut bytes, header) = batch(&vals);
                    log.append(&mut bytes, &header, 1000).unwrap();
                    written.extend(vals);
                }
                Op::Flush => log.flush().unwrap(),
                Op::PowerLoss | Op::ProcessCrash => {
                    let acked = log.high_watermark() as usize;
                    log.close();
                    if matches!(op, Op::PowerLoss) { fs.power_loss() } else { fs.process_crash() }
                    log = open(&fs, dir, seg).0;
                    let got = values(&log);
                    prop_assert!(got.len() >= acked, "lost acknowledged records: {} < {acked}", got.len());
                    prop_assert_eq!(&got[..], &written[..got.len()]);
                    if matches!(op, Op::ProcessCrash) {
                        prop_assert_eq!(got.len(), written.len(), "a killed process loses nothing written");
                    }
                    written = got;
                }
            }
            prop_assert!(log.high_watermark() as usize <= written.len());
        }
    }
}

/// A lazy append asks for no fsync of its own: its bytes stay above the
/// high watermark (and a power loss may take them) until the next append
/// that asks for one, whose group commit makes both durable.
#[tokio::test]
async fn a_lazy_append_becomes_durable_with_the_next_synced_one() {
    let fs = FaultFs::new();
    let (log, _) = open(&fs, "/data/j-0", 1 << 20);
    tokio::spawn(log.clone().run_syncer());
    let a = try_append(&log, &["a"]).unwrap();
    log.wait_durable(a.last_offset + 1).await.unwrap();
    let syncs = fs.stats().syncs;

    let (mut bytes, header) = batch(&["lazy".to_owned()]);
    let lazy = log.append_lazily(&mut bytes, &header, 1000).unwrap();
    assert_eq!(lazy.base_offset, 1);
    assert_eq!(log.high_watermark(), 1, "not published before it is durable");
    assert_eq!(fs.stats().syncs, syncs, "no fsync asked for");

    // Power loss now may lose it, and loses nothing else.
    log.close();
    fs.power_loss();
    let (log, _) = open(&fs, "/data/j-0", 1 << 20);
    tokio::spawn(log.clone().run_syncer());
    assert_eq!(values(&log), ["a"]);

    // A lazy append followed by a synced one: one group commit covers both.
    let (mut bytes, header) = batch(&["lazy".to_owned()]);
    log.append_lazily(&mut bytes, &header, 1000).unwrap();
    let c = try_append(&log, &["c"]).unwrap();
    log.wait_durable(c.last_offset + 1).await.unwrap();
    log.close();
    fs.power_loss();
    let (log, _) = open(&fs, "/data/j-0", 1 << 20);
    assert_eq!(values(&log), ["a", "lazy", "c"]);
}
