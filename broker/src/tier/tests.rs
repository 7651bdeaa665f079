//! The tier conformance suite (CONVENTIONS #11): the same checks against
//! every backend — `memory://`, `file://` and a real S3-compatible server
//! (`moto_server`, started here on a free loopback port) — plus unit tests
//! of the manifest and the block cache.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload};
use strata_proto::batch::{BatchBuilder, BatchIter, Compression, Limits, validate};

use super::manifest::{Manifest, index_key, log_key, manifest_key, partition_prefix};
use super::*;
use crate::config::{ByteSize, TierConfig};
use crate::log::{Durability, LogConfig, PartitionLog};
use crate::names::{TenantName, TopicName};
use crate::partition::{Partition, PartitionId, TopicRef};

const LIMITS: Limits = Limits::new(1 << 20);

/// A tiered log whose local copies go as soon as they are uploaded.
fn log_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        index_interval_bytes: 512,
        local_retention_ms: 0,
        tiered: true,
        ..LogConfig::for_tests(segment_bytes, Durability::None)
    }
}

/// Appends `n` batches of 5 records each ("v<offset>-<pad>"), timestamps
/// 1000 + offset.
fn fill(log: &PartitionLog, n: u64, pad: usize) {
    for _ in 0..n {
        let next = log.high_watermark();
        let mut b = BatchBuilder::new(Compression::None);
        for i in 0..5 {
            let off = next + i;
            b.push(1000 + off as i64, None, Some(format!("v{off}-{}", "x".repeat(pad)).as_bytes()), &[]);
        }
        let mut bytes = b.finish().unwrap().to_vec();
        let header = validate(&bytes, LIMITS).unwrap();
        log.append(&mut bytes, &header, 1000 + next as i64).unwrap();
    }
}

/// Reads `[from, to)` through `remote`, decoding every batch.
async fn read_remote(remote: &RemotePartition, from: u64, to: u64, max_bytes: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut next = from;
    while next < to {
        let r = remote.read(next, max_bytes).await.unwrap().expect("the tier holds the offset");
        assert!(!r.bytes.is_empty());
        for b in BatchIter::new(r.bytes) {
            for rec in b.unwrap().records().unwrap() {
                if rec.offset >= next && rec.offset < to {
                    assert_eq!(rec.offset, out.len() as u64 + from, "contiguous");
                    out.push((rec.offset, String::from_utf8(rec.value.unwrap().to_vec()).unwrap()));
                }
            }
        }
        next = r.next_offset;
    }
    out
}

fn tier_config() -> TierConfig {
    TierConfig {
        multipart_threshold: ByteSize::mib(1),
        multipart_part_bytes: ByteSize::mib(5),
        cache_bytes: ByteSize::kib(256),
        read_block_bytes: ByteSize::kib(16),
        ..TierConfig::default()
    }
}

fn orders_partition(index: u32) -> PartitionId {
    let topic = TopicRef::new(TenantName::parse("default").unwrap(), TopicName::parse("orders").unwrap());
    PartitionId::new(topic, 7, index)
}

/// The conformance suite: upload, manifest round trip, range reads through
/// the index at every batch boundary, idempotent re-upload, multipart,
/// timestamp lookup, orphan clean-up, total retention, corruption.
async fn conformance(url: &str, cfg: TierConfig) {
    let store = Arc::new(ColdStore::open(url, &cfg).unwrap());
    store.probe().await.unwrap();
    let cache = Arc::new(BlockCache::new(cfg.cache_bytes.0, cfg.read_block_bytes.0));
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), log_config(8 * 1024), 0).unwrap();
    fill(&log, 150, 40);
    let prefix = partition_prefix("default", "orders", 7, 0);
    let remote = RemotePartition::load(store.clone(), cache.clone(), prefix.clone()).await.unwrap();
    assert_eq!(remote.range().segments, 0, "a partition with no manifest has an empty tier");
    let limits =
        UploadLimits { multipart_threshold: cfg.multipart_threshold.0, part_bytes: 5 << 20, part_concurrency: 2 };
    let mut uploaded = 0;
    let mut after = 0;
    let part = Partition::new(orders_partition(0), log.clone());
    part.attach_remote(Arc::new(RemotePartition::load(store.clone(), cache.clone(), prefix.clone()).await.unwrap()));
    let attached = part.remote().unwrap().clone();
    while let Some(seg) = log.next_to_upload(after) {
        after = seg.next_offset;
        assert!(upload_segment(&attached, &seg, limits, 5).await.unwrap());
        uploaded += 1;
        // Idempotent: the same segment again changes nothing.
        assert!(!upload_segment(&attached, &seg, limits, 6).await.unwrap());
    }
    assert!(uploaded >= 3, "several sealed segments: {uploaded}");
    let end = attached.uploaded_end();
    assert!(end > 0 && end < log.high_watermark());

    // The manifest is durable in the store: a fresh load sees it.
    let reloaded = RemotePartition::load(store.clone(), cache.clone(), prefix.clone()).await.unwrap();
    assert_eq!(reloaded.manifest(), attached.manifest());
    assert_eq!(reloaded.range().start, Some(0));
    assert_eq!(reloaded.range().segments, uploaded);

    // Local retention may now delete the uploaded copies (local retention 0),
    // once the log knows how far the tier reaches (as `upload_pending` tells it).
    log.set_uploaded_end(end);
    part.maintain(i64::MAX / 4).unwrap();
    assert_eq!(log.local_start(), end, "uploaded segments left the disk, the rest stayed");
    let stats = part.stats();
    assert_eq!(stats.start_offset, 0, "log start accounts for the tier");
    assert_eq!((stats.remote_start_offset, stats.remote_end_offset), (0, end));

    // Every offset reads back identically, with small and large fetches.
    let want: Vec<(u64, String)> = (0..end).map(|o| (o, format!("v{o}-{}", "x".repeat(40)))).collect();
    assert_eq!(read_remote(&reloaded, 0, end, 300).await, want);
    assert_eq!(read_remote(&reloaded, 0, end, 1 << 20).await, want);
    for from in [1, 7, end / 2, end - 1] {
        let got = read_remote(&reloaded, from, end, 500).await;
        assert_eq!(got, want[from as usize..], "from {from}");
    }
    assert!(reloaded.read(end, 1000).await.unwrap().is_none(), "nothing past the tier's end");
    assert!(cache.used() <= cfg.cache_bytes.0, "the cache stays within its budget");

    // Timestamp lookup through the uploaded time index.
    let batch = reloaded.find_by_time(1000 + 42, end).await.unwrap().unwrap();
    let first = BatchIter::new(batch).next().unwrap().unwrap().records().unwrap();
    assert!(first.iter().any(|r| r.offset == 42 && r.timestamp_ms == 1042));

    // Multipart: a segment over the threshold goes up in parts (11 MiB,
    // parts of 5 MiB: three parts).
    let big_dir = tempfile::tempdir().unwrap();
    let (big, _) = PartitionLog::open(big_dir.path(), log_config(12 << 20), 0).unwrap();
    let big_prefix = partition_prefix("default", "orders", 7, 1);
    let bigp = Partition::new(orders_partition(1), big.clone());
    bigp.attach_remote(Arc::new(
        RemotePartition::load(store.clone(), cache.clone(), big_prefix.clone()).await.unwrap(),
    ));
    // About 11 MiB, then more than fits: the first segment is sealed.
    fill(&big, 2700, 1000);
    let seg = big.next_to_upload(0).expect("a sealed segment");
    assert!(seg.size > 10 << 20, "segment is {} bytes", seg.size);
    assert!(upload_segment(bigp.remote().unwrap(), &seg, limits, 1).await.unwrap());
    let meta = store.store.head(&log_key(&big_prefix, 0)).await.unwrap();
    assert_eq!(meta.size, seg.size);
    let tail = read_remote(bigp.remote().unwrap(), seg.next_offset - 3, seg.next_offset, 4096).await;
    assert_eq!(tail.len(), 3);
    assert!(tail[2].1.starts_with(&format!("v{}-", seg.next_offset - 1)));

    // Orphans: objects the manifest does not name are removed; named ones
    // and other partitions' objects stay.
    let stray_log = log_key(&prefix, 999_999);
    let stray_index = index_key(&prefix, 999_999);
    for key in [&stray_log, &stray_index] {
        store.store.put(key, PutPayload::from_static(b"half an upload")).await.unwrap();
    }
    let removed = reloaded.remove_orphans().await.unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(store.store.head(&stray_log).await.is_err());
    assert!(store.store.head(&log_key(&prefix, 0)).await.is_ok());
    assert!(store.store.head(&log_key(&big_prefix, 0)).await.is_ok(), "another partition's object stays");
    assert!(store.store.head(&manifest_key(&prefix)).await.is_ok());

    // Corruption: a flipped byte inside a batch is a CRC error, never data.
    let key = log_key(&prefix, 0);
    let mut bytes = store.store.get(&key).await.unwrap().bytes().await.unwrap().to_vec();
    bytes[200] ^= 0x40;
    store.store.put(&key, PutPayload::from(bytes)).await.unwrap();
    let fresh =
        RemotePartition::load(store.clone(), Arc::new(BlockCache::new(1 << 20, 4096)), prefix.clone()).await.unwrap();
    match fresh.read(0, 1 << 20).await {
        Err(TierError::Corrupt { reason, .. }) => assert!(reason.contains("CRC"), "{reason}"),
        other => panic!("expected a CRC error, got {other:?}"),
    }

    // Total retention: by time, oldest first; manifest first, then objects.
    let first_seg = attached.manifest().segments[0];
    let deleted = attached.apply_retention(first_seg.max_timestamp + 1 + 10, 10, -1, 0).await.unwrap();
    assert_eq!(deleted, vec![0]);
    assert!(store.store.head(&log_key(&prefix, 0)).await.is_err(), "object deleted");
    assert!(store.store.head(&index_key(&prefix, 0)).await.is_err());
    let after_retention = RemotePartition::load(store.clone(), cache.clone(), prefix.clone()).await.unwrap();
    assert_eq!(after_retention.range().start, Some(first_seg.next_offset));
    // By bytes: keep at most one segment's worth.
    let one = after_retention.manifest().segments.last().map(|s| s.log_size + s.index_size).unwrap();
    attached.apply_retention(0, -1, one as i64, 0).await.unwrap();
    assert_eq!(attached.range().segments, 1);
    let left: Vec<_> = futures::TryStreamExt::try_collect(store.store.list(Some(&prefix))).await.unwrap();
    assert_eq!(left.len(), 3, "manifest, one .log, one .index: {left:?}");
}

#[tokio::test]
async fn conformance_memory() {
    conformance("memory://", tier_config()).await;
}

#[tokio::test]
async fn conformance_file() {
    let dir = tempfile::tempdir().unwrap();
    conformance(&format!("file://{}", dir.path().display()), tier_config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_s3_moto() {
    let Some(moto) = Moto::start_or_skip() else { return };
    moto.create_bucket("strata-conformance");
    let mut cfg = tier_config();
    configure_for_moto(&moto, &mut cfg);
    conformance("s3://strata-conformance/cluster-a", cfg).await;
}

#[tokio::test]
async fn invalid_urls_and_unusable_stores_are_refused_clearly() {
    let cfg = TierConfig::default();
    for (url, expect) in [
        ("not a url", "invalid cold-store URL"),
        ("ftp://host/x", "unsupported scheme"),
        ("s3:///no-bucket", "names no bucket"),
        ("file://relative/path", "invalid cold-store URL"),
    ] {
        let err = ColdStore::open(url, &cfg).unwrap_err().to_string();
        assert!(err.contains(expect), "{url}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
    // An endpoint nobody listens on: the probe fails with the store's reason.
    let port = free_port();
    let mut cfg = TierConfig::default();
    cfg.s3.endpoint = format!("http://127.0.0.1:{port}");
    cfg.s3.allow_http = true;
    cfg.s3.region = "us-east-1".into();
    cfg.s3.access_key_id = "k".into();
    cfg.s3.secret_access_key = "s".into();
    cfg.connect_timeout = crate::config::HumanDuration(Duration::from_secs(1));
    cfg.request_timeout = crate::config::HumanDuration(Duration::from_secs(2));
    let store = ColdStore::open("s3://bucket/p", &cfg).unwrap();
    let err = store.probe().await.unwrap_err().to_string();
    assert!(err.contains("not usable"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn manifest_round_trip_and_checks() {
    let mut m = Manifest::empty();
    m.segments.push(super::manifest::RemoteSegment {
        base_offset: 0,
        next_offset: 10,
        log_size: 100,
        index_size: 64,
        max_timestamp: 5,
        uploaded_at_ms: 1,
    });
    m.segments.push(super::manifest::RemoteSegment { base_offset: 20, next_offset: 30, ..m.segments[0] });
    let back = Manifest::decode(&m.encode()).unwrap();
    assert_eq!(back, m);
    assert_eq!((back.start(), back.end(), back.bytes()), (Some(0), 30, 328));
    assert_eq!(back.segment_at_or_after(5).unwrap().base_offset, 0);
    assert_eq!(back.segment_at_or_after(15).unwrap().base_offset, 20, "a gap continues at the next segment");
    assert!(back.segment_at_or_after(30).is_none());
    let text = String::from_utf8(m.encode().to_vec()).unwrap();
    assert!(
        Manifest::decode(text.replace("\"version\": 1", "\"version\": 2").as_bytes()).unwrap_err().contains("version")
    );
    assert!(Manifest::decode(text.replace("strata-tier-manifest", "other").as_bytes()).is_err());
    assert!(Manifest::decode(text.replace("\"base_offset\": 20", "\"base_offset\": 5").as_bytes()).is_err(), "overlap");
    assert!(Manifest::decode(b"{not json").is_err());
}

#[test]
fn block_cache_evicts_least_recently_used_within_its_budget() {
    let cache = BlockCache::new(300, 100);
    let block = |n: u8| Bytes::from(vec![n; 100]);
    for i in 0..3u8 {
        cache.insert(("a".into(), u64::from(i)), block(i));
    }
    assert!(cache.get(&("a".into(), 0)).is_some(), "touch block 0");
    cache.insert(("a".into(), 3), block(3));
    assert_eq!(cache.used(), 300);
    assert!(cache.get(&("a".into(), 1)).is_none(), "the least recently used block went");
    assert!(cache.get(&("a".into(), 0)).is_some());
    cache.evict_object("a");
    assert_eq!(cache.used(), 0);
    cache.insert(("b".into(), 0), Bytes::from(vec![0; 301]));
    assert_eq!(cache.used(), 0, "a block larger than the cache is not kept");
}

// ---- moto_server ------------------------------------------------------------

pub(crate) use strata_testkit::{Moto, free_port};

/// Points a tier configuration at `moto`.
pub(crate) fn configure_for_moto(moto: &Moto, cfg: &mut TierConfig) {
    cfg.s3.endpoint = moto.endpoint();
    cfg.s3.allow_http = true;
    cfg.s3.region = "us-east-1".into();
    cfg.s3.access_key_id = "testing".into();
    cfg.s3.secret_access_key = "testing".into();
}
