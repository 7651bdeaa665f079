//! Issue 12: every request answered, producer ids that cannot be forged,
//! malformed messages refused precisely, bounded resources.

use bytes::Bytes;
use strata_proto::v1::{CreateTopicRequest, ErrorCode, ProduceRequest, log_client::LogClient};
use tonic::Code;

use crate::harness::*;

async fn big_client(b: &TestBroker) -> LogClient<tonic::transport::Channel> {
    LogClient::new(channel(b.addr()).await).max_decoding_message_size(256 << 20).max_encoding_message_size(256 << 20)
}

fn req(topic: &str, batch: Bytes, request_id: u64) -> ProduceRequest {
    ProduceRequest { topic: topic.into(), batch, request_id, ..Default::default() }
}

/// Small, oversized, small on one stream: three answers, the middle one
/// RESOURCE_EXHAUSTED naming the limit, the third stored. Both just over the
/// limit (17 MiB) and far over it (100 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_on_a_stream_is_answered_and_the_stream_goes_on() {
    let b = TestBroker::start().await;
    create_topic(&b, "big", 1).await;
    let mut log = big_client(&b).await;
    let mut expected = Vec::new();
    for (round, mib) in [17usize, 100].into_iter().enumerate() {
        let round = round as u64 * 10;
        let first = format!("before-{mib}");
        let last = format!("after-{mib}");
        let reqs = vec![
            req("big", batch_of(std::slice::from_ref(&first)), round + 1),
            req("big", Bytes::from(vec![0x5a; mib << 20]), round + 2),
            req("big", batch_of(std::slice::from_ref(&last)), round + 3),
        ];
        let mut responses = log.produce_stream(tokio_stream::iter(reqs)).await.unwrap().into_inner();
        let mut answers = std::collections::BTreeMap::new();
        while let Some(r) = responses.message().await.unwrap() {
            assert!(answers.insert(r.request_id, r).is_none(), "one answer per request");
        }
        assert_eq!(answers.keys().copied().collect::<Vec<_>>(), vec![round + 1, round + 2, round + 3]);
        assert!(answers[&(round + 1)].error.is_none());
        assert!(answers[&(round + 3)].error.is_none(), "{:?}", answers[&(round + 3)].error);
        let e = answers[&(round + 2)].error.clone().expect("the oversized request gets an error");
        assert_eq!(e.status_code, Code::ResourceExhausted as i32, "{e:?}");
        let info = e.info.unwrap();
        assert_eq!(info.code, ErrorCode::BatchTooLarge as i32);
        assert_eq!(info.resource, "default/big/0");
        assert_eq!(info.metadata["limit"], ((16u64 << 20) + (1 << 20)).to_string());
        assert!(e.message.contains("over the 17825792-byte message limit"), "{}", e.message);
        expected.extend([first, last]);
    }
    let stored: Vec<String> = read_partition(&mut log, "big", 0, 0).await.iter().map(value).collect();
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_unary_produce_is_resource_exhausted() {
    let b = TestBroker::start().await;
    create_topic(&b, "big", 1).await;
    let mut log = big_client(&b).await;
    let err = log.produce(req("big", Bytes::from(vec![1; 20 << 20]), 9)).await.unwrap_err();
    assert_status(&err, Code::ResourceExhausted, ErrorCode::BatchTooLarge, "over the 17825792-byte message limit");
    // The connection is still good.
    log.produce(req("big", batch_of(&["ok".into()]), 10)).await.unwrap();
    // Another service's over-limit request (4 MiB default) is refused the same way.
    let mut admin =
        strata_proto::v1::admin_client::AdminClient::new(channel(b.addr()).await).max_encoding_message_size(64 << 20);
    let err = admin
        .create_topic(CreateTopicRequest { name: "x".repeat(5 << 20), partitions: 1, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(strata_proto::error_info(&err).unwrap().metadata["limit"], (4u64 << 20).to_string());
}

fn idempotent(topic: &str, partition: u32, id: i64, epoch: i32, seq: i32, value: &str) -> ProduceRequest {
    let mut bb = strata_proto::batch::BatchBuilder::new(strata_proto::batch::Compression::None);
    bb.set_producer(id, epoch as i16, seq);
    bb.push(now_ms(), None, Some(value.as_bytes()), &[]);
    produce_req(topic, partition, bb.finish().unwrap())
}

/// Forged producer ids are refused with nothing stored; the real owner of
/// the id, once issued, stores its first batch; an old epoch is refused on
/// every partition (also ones the new epoch never wrote to) and after a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_ids_and_epochs_are_issued_and_checked_by_the_broker() {
    let mut b = TestBroker::start().await;
    create_topic(&b, "ids", 3).await;
    let mut log = b.log().await;
    let init = |name: &str| strata_proto::v1::InitProducerRequest { tenant: String::new(), producer_name: name.into() };
    let first = log.init_producer(init("")).await.unwrap().into_inner();
    // Forge the next 20 ids, sequence 0, before they are issued.
    for forged in first.producer_id + 1..=first.producer_id + 20 {
        let err = log.produce(idempotent("ids", 0, forged, 0, 0, "forged")).await.unwrap_err();
        assert_status(&err, Code::FailedPrecondition, ErrorCode::UnknownProducerId, "never issued");
    }
    assert!(read_partition(&mut log, "ids", 0, 0).await.is_empty(), "nothing forged was stored");
    let real = log.init_producer(init("")).await.unwrap().into_inner();
    assert_eq!(real.producer_id, first.producer_id + 1);
    let stored = log.produce(idempotent("ids", 0, real.producer_id, 0, 0, "real")).await.unwrap().into_inner();
    assert!(!stored.duplicate, "the real producer's first batch is stored, not taken for a forged one");
    let values: Vec<String> = read_partition(&mut log, "ids", 0, 0).await.iter().map(value).collect();
    assert_eq!(values, ["real"]);
    // An epoch that was never issued is refused too.
    let err = log.produce(idempotent("ids", 1, real.producer_id, 3, 0, "future")).await.unwrap_err();
    assert_status(&err, Code::FailedPrecondition, ErrorCode::InvalidProducerEpoch, "issued at most epoch 0");

    // Fencing: epoch 0 writes to partition 0, then epoch 1 is issued and
    // writes only to partition 0; epoch 0 is refused on every partition.
    let old = log.init_producer(init("billing")).await.unwrap().into_inner();
    log.produce(idempotent("ids", 0, old.producer_id, old.producer_epoch, 0, "old")).await.unwrap();
    let new = log.init_producer(init("billing")).await.unwrap().into_inner();
    assert_eq!((new.producer_id, new.producer_epoch), (old.producer_id, old.producer_epoch + 1));
    log.produce(idempotent("ids", 0, new.producer_id, new.producer_epoch, 0, "new")).await.unwrap();
    let fenced_everywhere = |log: LogClient<tonic::transport::Channel>| async move {
        let mut log = log;
        for p in 0..3 {
            let err =
                log.produce(idempotent("ids", p, old.producer_id, old.producer_epoch, 1, "zombie")).await.unwrap_err();
            assert_status(&err, Code::FailedPrecondition, ErrorCode::ProducerFenced, "is fenced");
            assert_eq!(
                strata_proto::error_info(&err).unwrap().metadata["current_epoch"],
                new.producer_epoch.to_string()
            );
        }
    };
    fenced_everywhere(log.clone()).await;
    b.restart().await;
    let mut log = b.log().await;
    fenced_everywhere(log.clone()).await;
    // After the restart issued ids stay valid and unissued ones stay refused.
    log.produce(idempotent("ids", 2, new.producer_id, new.producer_epoch, 0, "after")).await.unwrap();
    let err = log.produce(idempotent("ids", 2, real.producer_id + 50, 0, 0, "forged")).await.unwrap_err();
    assert_status(&err, Code::FailedPrecondition, ErrorCode::UnknownProducerId, "never issued");
    let values: Vec<String> = read_partition(&mut log, "ids", 2, 0).await.iter().map(value).collect();
    assert_eq!(values, ["after"]);
}

/// Sends `body` as the raw message of a unary call to `path`, bypassing the
/// generated client's encoder; the answer decodes as `R`.
async fn raw_unary<R: prost::Message + Default + Send + 'static>(
    b: &TestBroker,
    path: &'static str,
    body: &'static [u8],
) -> Result<R, tonic::Status> {
    use tonic::codec::{Codec, EncodeBuf, Encoder};

    #[derive(Default)]
    struct Raw<R>(std::marker::PhantomData<R>);
    struct RawEncoder;
    impl Encoder for RawEncoder {
        type Item = Bytes;
        type Error = tonic::Status;
        fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            bytes::BufMut::put_slice(buf, &item);
            Ok(())
        }
    }
    impl<R: prost::Message + Default + Send + 'static> Codec for Raw<R> {
        type Encode = Bytes;
        type Decode = R;
        type Encoder = RawEncoder;
        type Decoder = strata_proto::codec::StrataDecoder<R>;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> Self::Decoder {
            strata_proto::codec::StrataCodec::<R, R>::default().decoder()
        }
    }

    let mut grpc = tonic::client::Grpc::new(channel(b.addr()).await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(Bytes::from_static(body)), path, Raw::<R>::default()).await.map(|r| r.into_inner())
}

/// Bytes that are not the protobuf the method expects are the client's
/// fault: INVALID_ARGUMENT naming the message type, never INTERNAL; the
/// broker goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_invalid_argument() {
    let b = TestBroker::start().await;
    // Field 1 (name, a string) sent as a varint; then a truncated
    // length-delimited field; then a field number 0.
    for body in [&[0x08u8, 0x01][..], &[0x0a, 0x05, b'a'], &[0x00, 0x01]] {
        let body: &'static [u8] = Box::leak(body.to_vec().into_boxed_slice());
        let err = raw_unary::<strata_proto::v1::TopicDescription>(&b, "/strata.v1.Admin/CreateTopic", body)
            .await
            .unwrap_err();
        assert_status(&err, Code::InvalidArgument, ErrorCode::InvalidRequest, "CreateTopicRequest");
        assert!(!err.message().contains("failed to decode Protobuf"), "{}", err.message());
    }
    let produce = raw_unary::<strata_proto::v1::ProduceResponse>(&b, "/strata.v1.Log/Produce", &[0x12, 0x7f, 0x00])
        .await
        .unwrap_err();
    assert_status(&produce, Code::InvalidArgument, ErrorCode::InvalidRequest, "ProduceRequest");
    // A valid request on the same broker still works.
    create_topic(&b, "after", 1).await;
}

/// A flood of silent connections beyond `limits.max_connections`: the
/// extra ones are closed at once (a new client fails fast with UNAVAILABLE,
/// it does not hang), a client connected before keeps producing, and new
/// clients get in again once the flood closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_refused_quickly_while_existing_clients_keep_producing() {
    const LIMIT: u32 = 16;
    let b = TestBroker::start_with(|c| c.limits.max_connections = LIMIT).await;
    create_topic(&b, "busy", 1).await;
    let mut existing = log_client(b.addr()).await;
    existing.produce(req("busy", batch_of(&["before".to_string()]), 1)).await.unwrap();
    // Silent sockets: more than the limit leaves room for.
    let mut flood = Vec::new();
    for _ in 0..LIMIT * 3 {
        flood.push(tokio::net::TcpStream::connect(b.addr()).await.unwrap());
    }
    let refused = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            // Each attempt is a new connection: once the accepted silent
            // sockets hold every permit, it is closed at once.
            match tonic::transport::Channel::from_shared(format!("http://{}", b.addr())).unwrap().connect().await {
                Err(e) => break e.to_string(),
                Ok(ch) => {
                    let mut c = LogClient::new(ch);
                    if let Err(status) = c.produce(req("busy", batch_of(&["new".to_string()]), 2)).await {
                        // Closed by the server: tonic says UNAVAILABLE, or
                        // UNKNOWN/CANCELLED ("transport error", "connection
                        // closed") when the close races its request.
                        assert!(
                            matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled),
                            "{status:?}"
                        );
                        break status.to_string();
                    }
                }
            }
        }
    })
    .await
    .expect("a connection over the limit is refused promptly, not left hanging");
    assert!(!refused.is_empty());
    for i in 0..20u64 {
        existing.produce(req("busy", batch_of(&[format!("during-{i}")]), 10 + i)).await.expect("existing client");
    }
    drop(flood);
    strata_testkit::eventually(
        "a new client connects once the flood is gone",
        std::time::Duration::from_secs(20),
        || async {
            let ch =
                tonic::transport::Channel::from_shared(format!("http://{}", b.addr())).unwrap().connect().await.ok()?;
            LogClient::new(ch).produce(req("busy", batch_of(&["after".to_string()]), 99)).await.ok()
        },
    )
    .await;
}

/// Out of file descriptors: every create either succeeds whole or is refused
/// (RESOURCE_EXHAUSTED, no server path in the message) and leaves no trace —
/// not listed, not on disk, creatable again later — and the broker starts
/// again under the same limit with exactly the topics it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_refused_for_lack_of_files_leave_no_trace_and_the_broker_restarts_under_the_same_limit() {
    use std::collections::BTreeSet;
    use strata_proto::v1::{DescribeTopicRequest, ListTopicsRequest, admin_client::AdminClient};

    let dir = tempfile::tempdir().unwrap();
    let limit = 256;
    // The segment file cache would keep partitions from ever running out of
    // descriptors (`partitions_do_not_grow_the_open_files` proves that): make
    // it larger than the limit, so that creates still hit EMFILE here.
    let envs = [("STRATA_LIMITS_MAX_OPEN_SEGMENTS", "100000")];
    let mut broker = BrokerProcess::start_with_fd_limit(dir.path(), limit, &envs);
    let mut admin = AdminClient::new(channel(broker.addr).await);
    let mut created = BTreeSet::new();
    let mut refused = Vec::new();
    for i in 0..100 {
        let name = format!("t{i:03}");
        let request = CreateTopicRequest { name: name.clone(), partitions: 10, ..Default::default() };
        match admin.create_topic(request).await {
            Ok(_) => {
                created.insert(name);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                let data_dir = dir.path().display().to_string();
                assert!(!status.message().contains(&data_dir), "a server path reached the client: {status:?}");
                let describe = admin.describe_topic(DescribeTopicRequest { name: name.clone(), ..Default::default() });
                assert_eq!(describe.await.unwrap_err().code(), Code::NotFound, "{name} was refused but exists");
                refused.push(name);
                if refused.len() == 3 {
                    break;
                }
            }
        }
    }
    assert!(!refused.is_empty(), "{limit} open files were enough for 1000 partitions: the test proves nothing");
    assert!(!created.is_empty());
    let listed = |topics: Vec<strata_proto::v1::TopicSummary>| -> BTreeSet<String> {
        topics.into_iter().map(|t| t.name).collect()
    };
    let topics = admin.list_topics(ListTopicsRequest::default()).await.unwrap().into_inner().topics;
    assert_eq!(listed(topics), created, "exactly the acknowledged topics are listed");
    let on_disk = std::fs::read_dir(dir.path().join("topics").join("default"))
        .map(|d| d.count())
        .unwrap_or_else(|_| created.len());
    assert_eq!(on_disk, created.len(), "refused topics left directories behind");
    // Producing to an existing topic still works at the limit.
    let mut log = log_client(broker.addr).await;
    let first = created.iter().next().unwrap().clone();
    log.produce(req(&first, batch_of(&["at the limit".to_string()]), 1)).await.expect("produce at the limit");

    broker.kill9();
    let broker = BrokerProcess::start_with_fd_limit(dir.path(), limit, &envs);
    let mut admin = AdminClient::new(channel(broker.addr).await);
    let topics = admin.list_topics(ListTopicsRequest::default()).await.unwrap().into_inner().topics;
    assert_eq!(listed(topics), created, "after a restart under the same limit");
    let mut log = log_client(broker.addr).await;
    log.produce(req(&first, batch_of(&["after restart".to_string()]), 2)).await.expect("produce after restart");
}

/// The bounded cache of open segment files: 2,000 partitions, each
/// produced to and read back, while the broker process never holds more
/// than `limits.max_open_segments` segment files (plus its fixed set of
/// listeners, catalog and reserve); evicted files reopen on demand. Then the
/// same under a 256-file limit with the derived default, restart included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_do_not_grow_the_open_files() {
    use strata_proto::v1::admin_client::AdminClient;

    const TOPICS: u32 = 20;
    const PARTITIONS: u32 = 100;
    const MAX_OPEN: usize = 64;
    // Descriptors besides segment files that come and go while serving:
    // the client's connection, a catalog write's temporary file and
    // directory, an index or producer snapshot being written.
    const SLACK: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let broker =
        BrokerProcess::start_with_env(dir.path(), &[("STRATA_LIMITS_MAX_OPEN_SEGMENTS", &MAX_OPEN.to_string())]);
    let mut admin = AdminClient::new(channel(broker.addr).await);
    let mut log = log_client(broker.addr).await;
    let baseline = broker.open_fds();
    let mut most = baseline;
    for t in 0..TOPICS {
        let name = format!("t{t:02}");
        let request = CreateTopicRequest { name: name.clone(), partitions: PARTITIONS, ..Default::default() };
        admin.create_topic(request).await.unwrap();
        most = most.max(broker.open_fds());
        for p in 0..PARTITIONS {
            let value = format!("{name}/{p}");
            log.produce(produce_req(&name, p, batch_of(&[value]))).await.unwrap();
        }
        most = most.max(broker.open_fds());
    }
    let bound = baseline + MAX_OPEN + SLACK;
    assert!(most <= bound, "{most} descriptors open with {} partitions (bound {bound})", TOPICS * PARTITIONS);
    // Every partition reads back its record (most of their files were
    // evicted and are reopened now), and the bound still holds.
    for t in 0..TOPICS {
        let name = format!("t{t:02}");
        for p in 0..PARTITIONS {
            assert_eq!(first_values(&mut log, &name, p).await, [format!("{name}/{p}")]);
        }
        most = most.max(broker.open_fds());
    }
    assert!(most <= bound, "{most} descriptors open while reading (bound {bound})");
    eprintln!(
        "open files: {baseline} at start, at most {most} with {} partitions (bound {bound})",
        TOPICS * PARTITIONS
    );
    drop(broker);

    // The derived default under a 256-file limit (half of it for segment
    // files): the same 2,000 partitions open at a restart and take writes.
    let broker = BrokerProcess::start_with_fd_limit(dir.path(), 256, &[]);
    let mut log = log_client(broker.addr).await;
    for t in 0..TOPICS {
        let name = format!("t{t:02}");
        for p in 0..PARTITIONS {
            log.produce(produce_req(&name, p, batch_of(&["again".to_string()]))).await.unwrap();
        }
    }
    let records = read_partition(&mut log, "t19", 99, 0).await;
    assert_eq!(records.iter().map(value).collect::<Vec<_>>(), ["t19/99", "again"]);
}

/// The values of the first fetch response from offset 0 (a partition that
/// holds records answers them at once; no wait for the long poll to end).
async fn first_values(log: &mut LogClient<tonic::transport::Channel>, topic: &str, partition: u32) -> Vec<String> {
    let mut stream = log.fetch(fetch_req(topic, partition, 0)).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().expect("a fetch response");
    let mut values = Vec::new();
    for batch in strata_proto::batch::BatchIter::new(resp.records) {
        values.extend(batch.unwrap().records().unwrap().iter().map(value));
    }
    values
}

/// The catalog's limits: going over one is RESOURCE_EXHAUSTED with
/// LIMIT_EXCEEDED naming the limit, and nothing is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_limits_refuse_precisely_and_make_nothing() {
    use strata_proto::v1::{
        AddPartitionsRequest, BindRequest, CreateQueueRequest, ListQueuesRequest, ListTopicsRequest,
        ResetOffsetsRequest, admin_client::AdminClient, groups_client::GroupsClient, queues_client::QueuesClient,
        reset_offsets_request,
    };
    let b = TestBroker::start_with(|c| {
        c.limits.max_topics = 2;
        c.limits.max_partitions = 5;
        c.limits.max_queues = 1;
        c.limits.max_bindings = 1;
        c.limits.max_groups = 1;
    })
    .await;
    let mut admin = AdminClient::new(channel(b.addr()).await);
    let topic =
        |name: &str, partitions: u32| CreateTopicRequest { name: name.into(), partitions, ..Default::default() };
    admin.create_topic(topic("a", 3)).await.unwrap();
    let err = admin.create_topic(topic("b", 3)).await.unwrap_err();
    assert_status(&err, Code::ResourceExhausted, ErrorCode::LimitExceeded, "limits.max_partitions");
    assert_eq!(strata_proto::error_info(&err).unwrap().metadata["limit"], "5");
    admin.create_topic(topic("b", 2)).await.unwrap();
    let err = admin.create_topic(topic("c", 1)).await.unwrap_err();
    assert_status(&err, Code::ResourceExhausted, ErrorCode::LimitExceeded, "limits.max_topics");
    let err = admin
        .add_partitions(AddPartitionsRequest { name: "a".into(), partitions: 4, ..Default::default() })
        .await
        .unwrap_err();
    assert_status(&err, Code::ResourceExhausted, ErrorCode::LimitExceeded, "limits.max_partitions");
    let topics = admin.list_topics(ListTopicsRequest::default()).await.unwrap().into_inner().topics;
    let names: Vec<_> = topics.iter().map(|t| (t.name.as_str(), t.partitions)).collect();
    assert_eq!(names, vec![("a", 3), ("b", 2)], "refused changes made nothing");

    let mut queues = QueuesClient::new(channel(b.addr()).await);
    let queue = |name: &str| CreateQueueRequest { name: name.into(), ..Default::default() };
    queues.create_queue(queue("q1")).await.unwrap();
    let err = queues.create_queue(queue("q2")).await.unwrap_err();
    assert_status(&err, Code::ResourceExhausted, ErrorCode::LimitExceeded, "limits.max_queues");
    assert_eq!(queues.list_queues(ListQueuesRequest::default()).await.unwrap().into_inner().queues.len(), 1);
    let bind = || BindRequest { queue: "q1".into(), topic: "a".into(), ..Default::default() };
    queues.bind(bind()).await.unwrap();
    let err = queues.bind(BindRequest { topic: "b".into(), ..bind() }).await.unwrap_err();
    assert_status(&err, Code::ResourceExhausted, ErrorCode::LimitExceeded, "limits.max_bindings");

    let mut groups = GroupsClient::new(channel(b.addr()).await);
    let reset = |group: &str| ResetOffsetsRequest {
        group: group.into(),
        topic: "a".into(),
        to: Some(reset_offsets_request::To::Offset(0)),
        ..Default::default()
    };
    groups.reset_offsets(reset("g1")).await.unwrap();
    let err = groups.reset_offsets(reset("g2")).await.unwrap_err();
    assert_status(&err, Code::ResourceExhausted, ErrorCode::LimitExceeded, "limits.max_groups");
}
