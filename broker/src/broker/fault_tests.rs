//! The broker on the fault-injecting filesystem: what a producer is told
//! when the disk fails under one partition, and what the gRPC layer maps it
//! to.

use std::time::Duration;

use bytes::Bytes;
use strata_proto::batch::{BatchBuilder, Compression};
use strata_proto::v1::ErrorCode;

use super::*;
use crate::fs::fault::FaultFs;

fn batch(value: &str) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    b.push(1_000, None, Some(value.as_bytes()), &[]);
    b.finish().unwrap()
}

/// Produce as the gRPC handler does: append, then wait for durability; the
/// answer (with a deadline: a hang fails the test) as a gRPC status.
async fn produce(broker: &Broker, partition: u32, value: &str) -> Result<u64, tonic::Status> {
    let pending = broker.append("", "t", partition, batch(value)).await.map_err(crate::grpc::status::to_status)?;
    let answer = tokio::time::timeout(Duration::from_secs(10), pending.wait())
        .await
        .expect("the producer waiting on its fsync was never answered");
    answer.map(|p| p.base_offset).map_err(crate::grpc::status::to_status)
}

#[tokio::test]
async fn a_failed_fsync_answers_its_producer_and_stops_only_that_partition() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::Config::default();
    config.storage.data_dir = dir.path().to_path_buf();
    config.tier.cold_store = "none".into();
    let fs = FaultFs::new();
    let broker = Broker::open_on(config, Arc::new(crate::clock::SystemClock), fs.fs()).await.unwrap();
    broker.create_topic("", "t", 2, TopicOverrides::default(), false).await.unwrap();
    assert_eq!(produce(&broker, 0, "a").await.unwrap(), 0);

    // Partition 0's segment fails its fsync.
    fs.set_faults(|f| f.fail_sync = Some("/t.1/0/".into()));
    let status = produce(&broker, 0, "b").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(strata_proto::error_code(&status), ErrorCode::Storage);
    let data_dir = dir.path().display().to_string();
    assert!(!status.message().contains(&data_dir) && !status.message().contains("/t.1/"), "{status:?}");
    // Refused from now on, precisely, even with the disk healthy again.
    fs.clear_faults();
    let status = produce(&broker, 0, "c").await.unwrap_err();
    assert_eq!((status.code(), strata_proto::error_code(&status)), (tonic::Code::Unavailable, ErrorCode::Storage));
    assert_eq!(broker.partition("", "t", 0).unwrap().high_watermark(), 1, "only the acknowledged batch is visible");
    // The other partition of the same broker keeps working.
    assert_eq!(produce(&broker, 1, "x").await.unwrap(), 0);
    assert_eq!(produce(&broker, 1, "y").await.unwrap(), 1);

    // A full disk: RESOURCE_EXHAUSTED, and produce resumes when space returns.
    let used = fs.used();
    fs.set_faults(|f| f.capacity = Some(used + 10));
    let status = produce(&broker, 1, &"z".repeat(500)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(strata_proto::error_code(&status), ErrorCode::ResourceExhausted);
    fs.clear_faults();
    assert_eq!(produce(&broker, 1, &"z".repeat(500)).await.unwrap(), 2);
}
