//! The gRPC API against an in-process broker: produce/fetch semantics,
//! long polls, timestamps, administration, and precise errors for bad input.

use std::time::Duration;

use strata_proto::batch::{BatchBuilder, Compression};
use strata_proto::v1::{
    AddPartitionsRequest, CreateTenantRequest, CreateTopicRequest, DeleteTenantRequest, DeleteTopicRequest,
    DescribeTopicRequest, ErrorCode, FetchRequest, ListOffsetsRequest, ListTopicsRequest, ProduceRequest,
    StartPosition, TopicConfig, UpdateTopicConfigRequest, fetch_request, list_offsets_request,
};
use strata_testkit::http_get;
use tonic::Code;

use crate::harness::*;

fn values(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_then_fetch_returns_records_in_order() {
    let (b, mut log) = TestBroker::with_topic("orders", 3).await;
    let mut expected = Vec::new();
    for i in 0..20 {
        let vals = values(5, &format!("b{i}"));
        let resp = log.produce(produce_req("orders", 1, batch_of(&vals))).await.unwrap().into_inner();
        assert_eq!(resp.base_offset, i * 5);
        assert_eq!(resp.last_offset, i * 5 + 4);
        expected.extend(vals);
    }
    let got: Vec<String> = read_partition(&mut log, "orders", 1, 0).await.iter().map(value).collect();
    assert_eq!(got, expected);
    // From the middle of a batch: the batch comes whole, the reader skips.
    let got = read_partition(&mut log, "orders", 1, 7).await;
    assert_eq!(got[0].offset, 7);
    assert_eq!(got.len(), 93);
    // Other partitions are empty.
    assert!(read_partition(&mut log, "orders", 0, 0).await.is_empty());
    let d = b
        .admin()
        .await
        .describe_topic(DescribeTopicRequest { name: "orders".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.partition_details[1].end_offset, 100);
    assert_eq!(d.partition_details[0].end_offset, 0);
    assert!(d.partition_details[1].size_bytes > 100 * 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_graceful_restart() {
    let mut b = TestBroker::start().await;
    create_topic(&b, "keep", 2).await;
    let mut log = b.log().await;
    log.produce(produce_req("keep", 0, batch_of(&values(3, "x")))).await.unwrap();
    b.restart().await;
    let mut log = b.log().await;
    let got: Vec<String> = read_partition(&mut log, "keep", 0, 0).await.iter().map(value).collect();
    assert_eq!(got, values(3, "x"));
    let resp = log.produce(produce_req("keep", 0, batch_of(&values(1, "y")))).await.unwrap().into_inner();
    assert_eq!(resp.base_offset, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_fetch_long_polls_until_data_arrives() {
    let (b, mut log) = TestBroker::with_topic("live", 1).await;
    let mut req = fetch_req("live", 0, 0);
    req.max_wait_ms = 60_000;
    let mut stream = log.fetch(req).await.unwrap().into_inner();
    let mut producer = b.log().await;
    producer.produce(produce_req("live", 0, batch_of(&values(2, "late")))).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(resp.next_offset, 2);
    assert_eq!(resp.high_watermark, 2);
    assert!(!resp.records.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_at_the_end_without_follow_returns_an_empty_response_after_max_wait() {
    let (_b, mut log) = TestBroker::with_topic("quiet", 1).await;
    let mut req = fetch_req("quiet", 0, 0);
    req.follow = false;
    req.max_wait_ms = 10;
    let mut stream = log.fetch(req).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    assert!(resp.records.is_empty());
    assert_eq!(resp.high_watermark, 0);
    assert!(stream.message().await.unwrap().is_none(), "stream ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_produce_stream_keeps_order_and_echoes_request_ids() {
    let (_b, mut log) = TestBroker::with_topic("pipe", 2).await;
    let reqs: Vec<ProduceRequest> = (0..200u64)
        .map(|i| ProduceRequest {
            topic: "pipe".into(),
            partition: (i % 2) as u32,
            batch: batch_of(&[format!("m{i}")]),
            request_id: i,
            ..Default::default()
        })
        .collect();
    let mut responses = log.produce_stream(tokio_stream::iter(reqs)).await.unwrap().into_inner();
    let mut seen = std::collections::HashMap::new();
    while let Some(r) = responses.message().await.unwrap() {
        assert!(r.error.is_none(), "{:?}", r.error);
        seen.insert(r.request_id, (r.partition, r.base_offset));
        if seen.len() == 200 {
            break;
        }
    }
    for i in 0..200u64 {
        assert_eq!(seen[&i], ((i % 2) as u32, i / 2), "request {i}");
    }
    let got: Vec<String> = read_partition(&mut log, "pipe", 0, 0).await.iter().map(value).collect();
    assert_eq!(got, (0..200).step_by(2).map(|i| format!("m{i}")).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_stream_reports_a_bad_batch_and_keeps_going() {
    let (_b, mut log) = TestBroker::with_topic("mixed", 1).await;
    let reqs = vec![
        ProduceRequest { topic: "mixed".into(), batch: batch_of(&["a".into()]), request_id: 1, ..Default::default() },
        ProduceRequest { topic: "nope".into(), batch: batch_of(&["b".into()]), request_id: 2, ..Default::default() },
        ProduceRequest { topic: "mixed".into(), batch: batch_of(&["c".into()]), request_id: 3, ..Default::default() },
    ];
    let mut responses = log.produce_stream(tokio_stream::iter(reqs)).await.unwrap().into_inner();
    let mut by_id = std::collections::HashMap::new();
    while by_id.len() < 3 {
        let r = responses.message().await.unwrap().unwrap();
        by_id.insert(r.request_id, r);
    }
    assert!(by_id[&1].error.is_none());
    let err = by_id[&2].error.as_ref().unwrap();
    assert_eq!(err.status_code, Code::NotFound as i32);
    assert_eq!(err.info.as_ref().unwrap().code, ErrorCode::UnknownTopic as i32);
    assert_eq!(by_id[&3].base_offset, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_and_list_offsets_by_timestamp() {
    let (_b, mut log) = TestBroker::with_topic("timed", 1).await;
    for i in 0..10i64 {
        let mut bb = BatchBuilder::new(Compression::Lz4);
        bb.push(1_000 * i, None, Some(format!("t{i}").as_bytes()), &[]);
        log.produce(produce_req("timed", 0, bb.finish().unwrap())).await.unwrap();
    }
    let offsets = log
        .list_offsets(ListOffsetsRequest {
            topic: "timed".into(),
            queries: vec![list_offsets_request::Query {
                partition: 0,
                spec: Some(list_offsets_request::query::Spec::TimestampMs(4_500)),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(offsets.results[0].offset, 5);
    assert_eq!(offsets.results[0].timestamp_ms, 5_000);
    let mut req = fetch_req("timed", 0, 0);
    req.start = Some(fetch_request::Start::TimestampMs(7_000));
    let mut stream = log.fetch(req).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let first = strata_proto::batch::BatchIter::new(resp.records).next().unwrap().unwrap().records().unwrap();
    assert_eq!(value(&first[0]), "t7");
    // Latest and earliest positions.
    let mut req = fetch_req("timed", 0, 0);
    req.start = Some(fetch_request::Start::Position(StartPosition::Latest as i32));
    req.follow = false;
    req.max_wait_ms = 1;
    let resp = log.fetch(req).await.unwrap().into_inner().message().await.unwrap().unwrap();
    assert_eq!((resp.next_offset, resp.high_watermark), (10, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_administration() {
    let b = TestBroker::start().await;
    let mut admin = b.admin().await;
    let created = admin
        .create_topic(CreateTopicRequest {
            name: "cfg".into(),
            partitions: 2,
            config: Some(TopicConfig {
                retention_ms: Some(3_600_000),
                segment_bytes: Some(1 << 20),
                durability: strata_proto::v1::Durability::None as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let cfg = created.config.unwrap();
    assert_eq!(cfg.retention_ms, Some(3_600_000));
    assert_eq!(cfg.segment_bytes, Some(1 << 20));
    assert_eq!(cfg.retention_bytes, Some(-1));
    assert_eq!(cfg.durability, strata_proto::v1::Durability::None as i32);
    // Idempotent create.
    admin
        .create_topic(CreateTopicRequest {
            name: "cfg".into(),
            partitions: 2,
            if_not_exists: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let grown = admin
        .add_partitions(AddPartitionsRequest { name: "cfg".into(), partitions: 5, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.partitions, 5);
    assert_eq!(grown.partition_details.len(), 5);
    let updated = admin
        .update_topic_config(UpdateTopicConfigRequest {
            name: "cfg".into(),
            config: Some(TopicConfig { retention_bytes: Some(1 << 30), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let cfg = updated.config.unwrap();
    assert_eq!(cfg.retention_bytes, Some(1 << 30));
    assert_eq!(cfg.retention_ms, Some(3_600_000), "unset fields stay unchanged");
    let list = admin.list_topics(ListTopicsRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.topics.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), vec!["cfg"]);
    // Delete, then the name is free again and starts empty.
    let mut log = b.log().await;
    log.produce(produce_req("cfg", 0, batch_of(&values(3, "old")))).await.unwrap();
    admin.delete_topic(DeleteTopicRequest { name: "cfg".into(), ..Default::default() }).await.unwrap();
    let err = log.produce(produce_req("cfg", 0, batch_of(&values(1, "x")))).await.unwrap_err();
    assert_status(err, Code::NotFound, ErrorCode::UnknownTopic, "default/cfg");
    create_topic(&b, "cfg", 1).await;
    assert!(read_partition(&mut log, "cfg", 0, 0).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_isolate_topics() {
    let b = TestBroker::start().await;
    let mut admin = b.admin().await;
    admin
        .create_tenant(CreateTenantRequest { name: "team-a".into(), if_not_exists: false, ..Default::default() })
        .await
        .unwrap();
    admin
        .create_topic(CreateTopicRequest {
            tenant: "team-a".into(),
            name: "orders".into(),
            partitions: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let default_topics = admin.list_topics(ListTopicsRequest::default()).await.unwrap().into_inner();
    assert!(default_topics.topics.is_empty());
    let err = admin.delete_tenant(DeleteTenantRequest { name: "team-a".into() }).await.unwrap_err();
    assert_status(err, Code::FailedPrecondition, ErrorCode::TenantNotEmpty, "team-a");
    let err = admin.delete_tenant(DeleteTenantRequest { name: "default".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = admin
        .create_tenant(CreateTenantRequest { name: "team-a".into(), if_not_exists: false, ..Default::default() })
        .await
        .unwrap_err();
    assert_status(err, Code::AlreadyExists, ErrorCode::TenantExists, "team-a");
    let err = admin
        .create_topic(CreateTopicRequest {
            tenant: "ghost".into(),
            name: "x".into(),
            partitions: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(err, Code::NotFound, ErrorCode::UnknownTenant, "ghost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_input_gets_precise_errors() {
    let b = TestBroker::start().await;
    let mut admin = b.admin().await;
    for name in ["", "a/b", "..", "has space", &"x".repeat(250)] {
        let err = admin
            .create_topic(CreateTopicRequest { name: name.into(), partitions: 1, ..Default::default() })
            .await
            .unwrap_err();
        assert_status(err, Code::InvalidArgument, ErrorCode::InvalidName, "invalid topic name");
    }
    let err = admin
        .create_topic(CreateTopicRequest { name: "zero".into(), partitions: 0, ..Default::default() })
        .await
        .unwrap_err();
    assert_status(err, Code::InvalidArgument, ErrorCode::InvalidConfig, "partitions must be between 1");
    let err = admin
        .create_topic(CreateTopicRequest {
            name: "bad-seg".into(),
            partitions: 1,
            config: Some(TopicConfig { segment_bytes: Some(10), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(err, Code::InvalidArgument, ErrorCode::InvalidConfig, "segment_bytes");
    let err = admin
        .create_topic(CreateTopicRequest {
            name: "bad-ret".into(),
            partitions: 1,
            config: Some(TopicConfig { retention_ms: Some(-5), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(err, Code::InvalidArgument, ErrorCode::InvalidConfig, "retention_ms");
    create_topic(&b, "dup", 2).await;
    let err = admin
        .create_topic(CreateTopicRequest { name: "dup".into(), partitions: 2, ..Default::default() })
        .await
        .unwrap_err();
    assert_status(err, Code::AlreadyExists, ErrorCode::TopicExists, "default/dup");
    let err = admin
        .add_partitions(AddPartitionsRequest { name: "dup".into(), partitions: 1, ..Default::default() })
        .await
        .unwrap_err();
    assert_status(err, Code::FailedPrecondition, ErrorCode::PartitionsCannotShrink, "only grow");
    let err =
        admin.describe_topic(DescribeTopicRequest { name: "missing".into(), ..Default::default() }).await.unwrap_err();
    assert_status(err, Code::NotFound, ErrorCode::UnknownTopic, "default/missing");
    let err = admin
        .create_tenant(CreateTenantRequest { name: "Bad_Tenant".into(), if_not_exists: false, ..Default::default() })
        .await
        .unwrap_err();
    assert_status(err, Code::InvalidArgument, ErrorCode::InvalidName, "invalid tenant name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_produce_input_gets_precise_errors_and_writes_nothing() {
    let b = TestBroker::start_with(|c| c.limits.max_record_bytes = strata_broker::config::ByteSize(1000)).await;
    create_topic(&b, "strict", 2).await;
    let mut log = b.log().await;
    // Over the record size limit.
    let err = log.produce(produce_req("strict", 0, batch_of(&["x".repeat(2000)]))).await.unwrap_err();
    assert_status(err, Code::InvalidArgument, ErrorCode::RecordTooLarge, "over the limit of 1000 bytes");
    // A corrupted batch (one payload bit flipped).
    let mut bad = batch_of(&values(3, "c")).to_vec();
    let n = bad.len();
    bad[n - 2] ^= 1;
    let err = log.produce(produce_req("strict", 0, bad.into())).await.unwrap_err();
    assert_status(err, Code::InvalidArgument, ErrorCode::CorruptBatch, "CRC32C mismatch");
    // Garbage and empty batches.
    let err = log.produce(produce_req("strict", 0, vec![1u8, 2, 3].into())).await.unwrap_err();
    assert_status(err, Code::InvalidArgument, ErrorCode::CorruptBatch, "truncated");
    let err = log.produce(produce_req("strict", 0, bytes::Bytes::new())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Unknown topic and partition.
    let err = log.produce(produce_req("ghost", 0, batch_of(&values(1, "g")))).await.unwrap_err();
    assert_status(err, Code::NotFound, ErrorCode::UnknownTopic, "default/ghost");
    let err = log.produce(produce_req("strict", 7, batch_of(&values(1, "g")))).await.unwrap_err();
    assert_status(err, Code::NotFound, ErrorCode::UnknownPartition, "has no partition 7 (it has 2)");
    let err = log.produce(produce_req("bad name", 0, batch_of(&values(1, "g")))).await.unwrap_err();
    assert_status(err, Code::InvalidArgument, ErrorCode::InvalidName, "invalid topic name");
    // Nothing of the above was written.
    let d = b
        .admin()
        .await
        .describe_topic(DescribeTopicRequest { name: "strict".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(d.partition_details.iter().all(|p| p.end_offset == 0));
    // A good batch still lands at offset 0.
    let ok = log.produce(produce_req("strict", 0, batch_of(&values(1, "ok")))).await.unwrap().into_inner();
    assert_eq!(ok.base_offset, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_fetch_input_gets_precise_errors() {
    let (_b, mut log) = TestBroker::with_topic("f", 1).await;
    log.produce(produce_req("f", 0, batch_of(&values(4, "v")))).await.unwrap();
    let err = log.fetch(fetch_req("f", 0, 5)).await.unwrap_err();
    assert_status(
        err,
        Code::OutOfRange,
        ErrorCode::OffsetOutOfRange,
        "offset 5 is out of range: the partition holds offsets 0 to 4",
    );
    let info = strata_proto::error_info(&log.fetch(fetch_req("f", 0, 99)).await.unwrap_err()).unwrap();
    assert_eq!(info.metadata["high_watermark"], "4");
    let err = log.fetch(FetchRequest { topic: "f".into(), start: None, ..Default::default() }).await.unwrap_err();
    assert_status(err, Code::InvalidArgument, ErrorCode::InvalidRequest, "needs a start");
    let err = log
        .fetch(FetchRequest {
            topic: "f".into(),
            start: Some(fetch_request::Start::Position(42)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = log.fetch(fetch_req("f", 3, 0)).await.unwrap_err();
    assert_status(err, Code::NotFound, ErrorCode::UnknownPartition, "no partition 3");
    let err = log.fetch(fetch_req("nope", 0, 0)).await.unwrap_err();
    assert_status(err, Code::NotFound, ErrorCode::UnknownTopic, "default/nope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_at_the_transport_limit() {
    let b = TestBroker::start_with(|c| {
        c.limits.max_batch_bytes = strata_broker::config::ByteSize::mib(1);
        c.limits.max_inflight_produce_bytes = strata_broker::config::ByteSize::mib(1);
    })
    .await;
    create_topic(&b, "big", 1).await;
    let mut log = b.log().await;
    let err = log.produce(produce_req("big", 0, batch_of(&vec!["y".repeat(1000); 1100]))).await.unwrap_err();
    assert_status(err, Code::ResourceExhausted, ErrorCode::BatchTooLarge, "over the 1048576-byte limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_probes_answer() {
    let b = TestBroker::start().await;
    let ch = channel(b.addr()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest { service: "strata.v1.Log".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let mut refl = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(ch);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let text = format!("{resp:?}");
    for svc in ["strata.v1.Log", "strata.v1.Admin", "grpc.health.v1.Health"] {
        assert!(text.contains(svc), "reflection lists {svc}: {text}");
    }
    let body = http_get(b.http_addr(), "/readyz").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let body = http_get(b.http_addr(), "/healthz").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producers_store_retries_once_and_fence_zombies() {
    let (_b, mut log) = TestBroker::with_topic("idem", 1).await;
    let init = |name: &str| strata_proto::v1::InitProducerRequest { tenant: String::new(), producer_name: name.into() };
    let a = log.init_producer(init("")).await.unwrap().into_inner();
    let a2 = log.init_producer(init("")).await.unwrap().into_inner();
    assert_ne!(a.producer_id, a2.producer_id, "anonymous producers get distinct ids");
    let mut bb = BatchBuilder::new(Compression::None);
    bb.set_producer(a.producer_id, a.producer_epoch as i16, 0);
    bb.push(now_ms(), None, Some(b"once"), &[]);
    let batch = bb.finish().unwrap();
    let first = log.produce(produce_req("idem", 0, batch.clone())).await.unwrap().into_inner();
    let retry = log.produce(produce_req("idem", 0, batch)).await.unwrap().into_inner();
    assert!(!first.duplicate && retry.duplicate);
    assert_eq!(first.base_offset, retry.base_offset);
    assert_eq!(read_partition(&mut log, "idem", 0, 0).await.len(), 1);
    // A named producer: each init bumps the epoch and fences the older one.
    let old = log.init_producer(init("billing")).await.unwrap().into_inner();
    let new = log.init_producer(init("billing")).await.unwrap().into_inner();
    assert_eq!(old.producer_id, new.producer_id);
    assert_eq!(new.producer_epoch, old.producer_epoch + 1);
    let send = |epoch: i32, seq: i32| {
        let mut bb = BatchBuilder::new(Compression::None);
        bb.set_producer(new.producer_id, epoch as i16, seq);
        bb.push(now_ms(), None, Some(b"x"), &[]);
        produce_req("idem", 0, bb.finish().unwrap())
    };
    log.produce(send(new.producer_epoch, 0)).await.unwrap();
    let err = log.produce(send(old.producer_epoch, 1)).await.unwrap_err();
    assert_status(err, Code::FailedPrecondition, ErrorCode::ProducerFenced, "is fenced");
    let err = log.produce(send(new.producer_epoch, 5)).await.unwrap_err();
    assert_status(err, Code::FailedPrecondition, ErrorCode::OutOfOrderSequence, "sequence 5 where 1 was expected");
    assert_eq!(
        strata_proto::error_info(&log.produce(send(new.producer_epoch, 7)).await.unwrap_err()).unwrap().metadata["expected_sequence"],
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_none_topics_acknowledge_and_read_back() {
    let b = TestBroker::start().await;
    b.admin()
        .await
        .create_topic(CreateTopicRequest {
            name: "fast".into(),
            partitions: 1,
            config: Some(TopicConfig { durability: strata_proto::v1::Durability::None as i32, ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut log = b.log().await;
    for i in 0..10 {
        log.produce(produce_req("fast", 0, batch_of(&[format!("n{i}")]))).await.unwrap();
    }
    assert_eq!(read_partition(&mut log, "fast", 0, 0).await.len(), 10);
}

mod groups {
    use super::*;
    use strata_proto::v1::{
        CommitOffsetsRequest, DescribeGroupRequest, JoinGroup, MemberMessage, PartitionOffset, ResetOffsetsRequest,
        coordinator_message, groups_client::GroupsClient, member_message, reset_offsets_request,
    };
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    fn join_msg(topics: &[&str]) -> MemberMessage {
        MemberMessage {
            kind: Some(member_message::Kind::Join(JoinGroup {
                group: "g".into(),
                topics: topics.iter().map(|t| t.to_string()).collect(),
                session_timeout_ms: 5_000,
                client_id: "it".into(),
                ..Default::default()
            })),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_joins_gets_partitions_commits_and_leaves_when_its_stream_ends() {
        let b = TestBroker::start().await;
        create_topic(&b, "gt", 3).await;
        b.log().await.produce(produce_req("gt", 1, batch_of(&values(4, "x")))).await.unwrap();
        let mut groups = GroupsClient::new(channel(b.addr()).await);
        let (tx, rx) = mpsc::channel(8);
        tx.send(join_msg(&["gt"])).await.unwrap();
        let mut events = groups.join(ReceiverStream::new(rx)).await.unwrap().into_inner();
        let Some(coordinator_message::Kind::Joined(joined)) = events.message().await.unwrap().unwrap().kind else {
            panic!("expected joined")
        };
        assert_eq!(joined.heartbeat_interval_ms, 5_000 / 3);
        let Some(coordinator_message::Kind::Assignment(a)) = events.message().await.unwrap().unwrap().kind else {
            panic!("expected an assignment")
        };
        assert_eq!(a.partitions[0].partitions, vec![0, 1, 2]);
        let commit = |generation: u64, offset: u64| CommitOffsetsRequest {
            group: "g".into(),
            member_id: joined.member_id.clone(),
            generation,
            offsets: vec![PartitionOffset { topic: "gt".into(), partition: 1, offset, metadata: String::new() }],
            ..Default::default()
        };
        groups.commit_offsets(commit(a.generation, 4)).await.unwrap();
        let err = groups.commit_offsets(commit(a.generation, 9)).await.unwrap_err();
        assert_status(err, Code::OutOfRange, ErrorCode::OffsetOutOfRange, "beyond the log end (4)");
        let err = groups.commit_offsets(commit(a.generation + 5, 1)).await.unwrap_err();
        assert_status(err, Code::FailedPrecondition, ErrorCode::FencedMember, "newer than its current");
        // A reset while the member is active is refused.
        let reset = ResetOffsetsRequest {
            group: "g".into(),
            topic: "gt".into(),
            to: Some(reset_offsets_request::To::Offset(0)),
            ..Default::default()
        };
        let err = groups.reset_offsets(reset.clone()).await.unwrap_err();
        assert_status(err, Code::FailedPrecondition, ErrorCode::GroupNotEmpty, "1 active member");
        // Dropping the stream is leaving the group.
        drop(tx);
        drop(events);
        let mut g2 = groups.clone();
        eventually("the member to leave", Duration::from_secs(20), || {
            let mut g = g2.clone();
            async move {
                let d = g
                    .describe_group(DescribeGroupRequest { group: "g".into(), ..Default::default() })
                    .await
                    .ok()?
                    .into_inner();
                (d.state == "Empty").then_some(())
            }
        })
        .await;
        let d = g2
            .describe_group(DescribeGroupRequest { group: "g".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let p1 = d.partitions.iter().find(|p| p.partition == 1).unwrap();
        assert_eq!((p1.committed_offset, p1.lag), (4, 0));
        // Partitions it never committed show too (committed -1).
        assert_eq!(d.partitions.len(), 3);
        assert!(d.partitions.iter().filter(|p| p.partition != 1).all(|p| p.committed_offset == -1 && p.lag == 0));
        // Now the reset works; the old member's commits are refused.
        g2.reset_offsets(reset).await.unwrap();
        let err = g2.commit_offsets(commit(a.generation, 2)).await.unwrap_err();
        assert_status(err, Code::FailedPrecondition, ErrorCode::UnknownMember, "must rejoin");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_group_requests_get_precise_errors() {
        let b = TestBroker::start().await;
        create_topic(&b, "gt", 1).await;
        let mut groups = GroupsClient::new(channel(b.addr()).await);
        let err = groups.join(tokio_stream::iter(vec![join_msg(&["missing"])])).await.unwrap_err();
        assert_status(err, Code::NotFound, ErrorCode::UnknownTopic, "default/missing");
        let hb = MemberMessage { kind: Some(member_message::Kind::Heartbeat(Default::default())) };
        let err = groups.join(tokio_stream::iter(vec![hb])).await.unwrap_err();
        assert_status(err, Code::InvalidArgument, ErrorCode::InvalidRequest, "first message");
        let err = groups
            .describe_group(DescribeGroupRequest { group: "nobody".into(), ..Default::default() })
            .await
            .unwrap_err();
        assert_status(err, Code::NotFound, ErrorCode::UnknownGroup, "default/nobody");
        let err = groups
            .describe_group(DescribeGroupRequest { group: "bad/name".into(), ..Default::default() })
            .await
            .unwrap_err();
        assert_status(err, Code::InvalidArgument, ErrorCode::InvalidName, "invalid group name");
        let mut bad_timeout = join_msg(&["gt"]);
        if let Some(member_message::Kind::Join(j)) = &mut bad_timeout.kind {
            j.session_timeout_ms = 10;
        }
        let err = groups.join(tokio_stream::iter(vec![bad_timeout])).await.unwrap_err();
        assert_status(err, Code::InvalidArgument, ErrorCode::InvalidRequest, "session timeout");
        let err = groups
            .reset_offsets(ResetOffsetsRequest {
                group: "g".into(),
                topic: "gt".into(),
                to: None,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_status(err, Code::InvalidArgument, ErrorCode::InvalidRequest, "needs a target");
    }
}
