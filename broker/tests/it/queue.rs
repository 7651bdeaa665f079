//! Work queues over real gRPC: delivery, redelivery, dead letters, redrive,
//! bindings, request-reply, crash recovery and bad input.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use strata_proto::v1::{
    AckRequest, BindRequest, BindingFilter, CreateQueueRequest, CreateTopicRequest, DeleteQueueRequest,
    DescribeQueueRequest, ErrorCode, MessageHeader, NackRequest, OpenReplyQueueRequest, OutgoingMessage, QueueConfig,
    QueueDescription, Receipt, ReceiveRequest, ReceivedMessage, RedriveRequest, SendRequest,
    queues_client::QueuesClient, reply_queue_event,
};
use tonic::transport::Channel;

use crate::harness::*;

pub(crate) async fn queues(addr: std::net::SocketAddr) -> QueuesClient<Channel> {
    QueuesClient::new(channel(addr).await)
}

pub(crate) fn create_request(name: &str, config: QueueConfig) -> CreateQueueRequest {
    CreateQueueRequest { tenant: String::new(), name: name.into(), config: Some(config), if_not_exists: false }
}

pub(crate) async fn create(c: &mut QueuesClient<Channel>, name: &str, config: QueueConfig) -> QueueDescription {
    c.create_queue(create_request(name, config)).await.unwrap().into_inner()
}

/// Creates dead-letter queue `dlq`, then `name` whose messages go there
/// after `max_deliveries`.
async fn create_with_dead_letters(c: &mut QueuesClient<Channel>, name: &str, dlq: &str, max_deliveries: u32) {
    create(c, dlq, QueueConfig::default()).await;
    let config =
        QueueConfig { max_deliveries: Some(max_deliveries), dead_letter_queue: Some(dlq.into()), ..Default::default() };
    create(c, name, config).await;
}

pub(crate) fn text(body: &str) -> OutgoingMessage {
    OutgoingMessage { body: Bytes::from(body.to_owned()), ..Default::default() }
}

pub(crate) async fn send(c: &mut QueuesClient<Channel>, queue: &str, messages: Vec<OutgoingMessage>) -> Vec<u64> {
    let r = c.send(SendRequest { tenant: String::new(), queue: queue.into(), messages }).await.unwrap().into_inner();
    r.results.iter().map(|r| r.message_id).collect()
}

pub(crate) async fn receive(
    c: &mut QueuesClient<Channel>,
    queue: &str,
    max: u32,
    wait_ms: i64,
    vis: Option<i64>,
) -> Vec<ReceivedMessage> {
    c.receive(ReceiveRequest {
        tenant: String::new(),
        queue: queue.into(),
        max_messages: max,
        wait_ms,
        visibility_timeout_ms: vis,
        auto_ack: false,
    })
    .await
    .unwrap()
    .into_inner()
    .messages
}

pub(crate) async fn ack(c: &mut QueuesClient<Channel>, queue: &str, msgs: &[ReceivedMessage]) {
    let receipts: Vec<Receipt> = msgs.iter().map(|m| m.receipt.unwrap()).collect();
    let r = c.ack(AckRequest { tenant: String::new(), queue: queue.into(), receipts }).await.unwrap().into_inner();
    assert!(r.failed.is_empty(), "acks failed: {:?}", r.failed);
}

async fn describe(c: &mut QueuesClient<Channel>, queue: &str) -> QueueDescription {
    c.describe_queue(DescribeQueueRequest { tenant: String::new(), name: queue.into() }).await.unwrap().into_inner()
}

pub(crate) fn body(m: &ReceivedMessage) -> String {
    String::from_utf8(m.body.to_vec()).unwrap()
}

fn header<'a>(m: &'a ReceivedMessage, key: &str) -> Option<&'a str> {
    m.headers.iter().find(|h| h.key == key).map(|h| std::str::from_utf8(&h.value).unwrap())
}

#[tokio::test]
async fn send_receive_ack_and_redelivery_after_the_visibility_timeout() {
    let b = TestBroker::start().await;
    let mut c = queues(b.addr()).await;
    create(&mut c, "jobs", QueueConfig::default()).await;
    let ids = send(&mut c, "jobs", (0..10).map(|i| text(&format!("job-{i}"))).collect()).await;
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    let d = describe(&mut c, "jobs").await;
    assert_eq!(d.stats.unwrap().visible, 10);

    let got = receive(&mut c, "jobs", 4, 0, Some(300)).await;
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), ["job-0", "job-1", "job-2", "job-3"]);
    ack(&mut c, "jobs", &got[..2]).await;
    let s = describe(&mut c, "jobs").await.stats.unwrap();
    assert_eq!((s.visible, s.in_flight, s.acked_total), (6, 2, 2));

    let rest = receive(&mut c, "jobs", 10, 0, None).await;
    assert_eq!(rest.len(), 6);
    ack(&mut c, "jobs", &rest).await;

    // The two unacked leases run out; those messages come back with a
    // higher delivery count, and the old receipts are stale.
    let again = eventually("redelivery", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            let got = receive(&mut c, "jobs", 10, 100, None).await;
            (got.len() == 2).then_some(got)
        }
    })
    .await;
    assert_eq!(again.iter().map(body).collect::<Vec<_>>(), ["job-2", "job-3"]);
    assert!(again.iter().all(|m| m.receipt.unwrap().delivery_count == 2));
    let stale = c
        .ack(AckRequest { tenant: String::new(), queue: "jobs".into(), receipts: vec![got[2].receipt.unwrap()] })
        .await
        .unwrap()
        .into_inner();
    let f = &stale.failed[0];
    assert_eq!(f.error.as_ref().unwrap().info.as_ref().unwrap().code, ErrorCode::StaleReceipt as i32);
    ack(&mut c, "jobs", &again).await;
    let s = describe(&mut c, "jobs").await.stats.unwrap();
    assert_eq!((s.visible, s.in_flight, s.acked_total), (0, 0, 10));
}

/// A receive right after a send is served from the broker's recent-message
/// cache; a receive after a restart (or with the cache off) reads the log.
/// Every field a consumer sees is the same either way.
#[tokio::test]
async fn a_message_reads_back_the_same_from_the_cache_and_from_the_log() {
    let rich = || OutgoingMessage {
        body: Bytes::from_static(b"payload \x00\xff bytes"),
        headers: vec![
            MessageHeader { key: "trace".into(), value: Bytes::from_static(b"abc") },
            MessageHeader { key: "empty".into(), value: Bytes::new() },
        ],
        priority: 2,
        dedup_id: "order-17".into(),
        ttl_ms: Some(3_600_000),
        reply_to: "replies".into(),
        correlation_id: "c-1".into(),
        key: Bytes::from_static(b"customer-9"),
        ..Default::default()
    };
    let config = || QueueConfig { priorities: Some(3), ..Default::default() };
    // Only what depends on when and how often it was received is blanked.
    let seen = |mut m: ReceivedMessage| {
        assert!(m.enqueued_at_ms > 0 && m.receipt.is_some());
        m.receipt = None;
        m.visible_until_ms = 0;
        m
    };

    let mut cached = TestBroker::start().await;
    let mut c = queues(cached.addr()).await;
    create(&mut c, "q", config()).await;
    send(&mut c, "q", vec![rich()]).await;
    let from_cache = receive(&mut c, "q", 10, 0, Some(1)).await;
    assert_eq!(from_cache.len(), 1);
    let enqueued_at = from_cache[0].enqueued_at_ms;
    let from_cache = seen(from_cache[0].clone());
    assert_eq!(from_cache.body, rich().body);
    assert_eq!(from_cache.key, rich().key);
    assert_eq!(from_cache.headers, rich().headers);
    assert_eq!((from_cache.priority, from_cache.correlation_id.as_str()), (2, "c-1"));

    // After a restart the cache is empty: the lease ran out (1 ms), the
    // message is redelivered from the log.
    cached.restart().await;
    let c = queues(cached.addr()).await;
    let from_log = eventually("redelivery after restart", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move { receive(&mut c, "q", 10, 100, None).await.into_iter().next() }
    })
    .await;
    assert_eq!(from_log.enqueued_at_ms, enqueued_at);
    assert_eq!(seen(from_log), from_cache);

    // The cache off: every receive reads the log.
    let uncached = TestBroker::start_with(|c| c.storage.queue_cache_bytes = strata_broker::config::ByteSize(0)).await;
    let mut c = queues(uncached.addr()).await;
    create(&mut c, "q", config()).await;
    send(&mut c, "q", vec![rich()]).await;
    let got = receive(&mut c, "q", 10, 0, None).await;
    assert_eq!(got.len(), 1);
    let mut got = seen(got[0].clone());
    got.enqueued_at_ms = from_cache.enqueued_at_ms;
    assert_eq!(got, from_cache);
}

#[tokio::test]
async fn exhausted_messages_go_to_the_dead_letter_queue_and_redrive_brings_them_back() {
    let b = TestBroker::start().await;
    let mut c = queues(b.addr()).await;
    create_with_dead_letters(&mut c, "jobs", "jobs-dlq", 2).await;
    let mut poison = text("poison");
    poison.headers.push(MessageHeader { key: "tenant-id".into(), value: Bytes::from_static(b"42") });
    send(&mut c, "jobs", vec![poison, text("fine")]).await;
    for _ in 0..2 {
        let got = receive(&mut c, "jobs", 10, 1000, None).await;
        let receipts: Vec<Receipt> = got.iter().filter(|m| body(m) == "poison").map(|m| m.receipt.unwrap()).collect();
        ack(&mut c, "jobs", &got.iter().filter(|m| body(m) == "fine").cloned().collect::<Vec<_>>()).await;
        c.nack(NackRequest { tenant: String::new(), queue: "jobs".into(), receipts, delay_ms: None }).await.unwrap();
    }
    let dead = eventually("the dead letter", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            let got = receive(&mut c, "jobs-dlq", 10, 100, Some(1000)).await;
            (!got.is_empty()).then_some(got)
        }
    })
    .await;
    assert_eq!(dead.len(), 1);
    let m = &dead[0];
    assert_eq!(body(m), "poison");
    assert_eq!(header(m, "tenant-id"), Some("42"), "original headers are kept");
    assert_eq!(header(m, "x-strata-dead-letter-source"), Some("jobs"));
    assert_eq!(header(m, "x-strata-delivery-count"), Some("2"));
    assert_eq!(header(m, "x-strata-original-message-id"), Some("0"));
    assert!(header(m, "x-strata-dead-letter-reason").unwrap().contains("max_deliveries 2"));
    let s = describe(&mut c, "jobs").await.stats.unwrap();
    assert_eq!((s.dead_lettered, s.visible, s.in_flight), (1, 0, 0));

    // Give the lease back, then redrive.
    c.nack(NackRequest {
        tenant: String::new(),
        queue: "jobs-dlq".into(),
        receipts: vec![m.receipt.unwrap()],
        delay_ms: Some(0),
    })
    .await
    .unwrap();
    let moved = c
        .redrive(RedriveRequest { tenant: String::new(), dead_letter_queue: "jobs-dlq".into(), max_messages: 0 })
        .await
        .unwrap()
        .into_inner()
        .moved;
    assert_eq!(moved, 1);
    let back = receive(&mut c, "jobs", 10, 1000, None).await;
    assert_eq!(back.len(), 1);
    assert_eq!(body(&back[0]), "poison");
    assert_eq!(header(&back[0], "tenant-id"), Some("42"));
    assert_eq!(header(&back[0], "x-strata-dead-letter-reason"), None, "dead-letter headers are removed");
    assert_eq!(describe(&mut c, "jobs-dlq").await.stats.unwrap().visible, 0);
}

#[tokio::test]
async fn bindings_route_exactly_the_matching_topic_messages() {
    let b = TestBroker::start().await;
    let mut admin = b.admin().await;
    admin
        .create_topic(CreateTopicRequest {
            tenant: String::new(),
            name: "events".into(),
            partitions: 2,
            config: None,
            if_not_exists: false,
            replication_factor: 0,
        })
        .await
        .unwrap();
    let mut c = queues(b.addr()).await;
    let filters: [(&str, BindingFilter); 4] = [
        ("direct", BindingFilter { key: Some("orders.eu.created".into()), ..Default::default() }),
        ("pattern", BindingFilter { pattern: Some("orders.*.#".into()), ..Default::default() }),
        (
            "headers",
            BindingFilter {
                headers: [("kind".to_string(), "audit".to_string())].into_iter().collect(),
                ..Default::default()
            },
        ),
        ("fanout", BindingFilter::default()),
    ];
    for (q, f) in &filters {
        create(&mut c, q, QueueConfig::default()).await;
        c.bind(BindRequest {
            tenant: String::new(),
            queue: (*q).into(),
            topic: "events".into(),
            filter: Some(f.clone()),
        })
        .await
        .unwrap();
    }
    // (key, header kind, value)
    let records = [
        ("orders.eu.created", None, "m1"),
        ("orders.us", None, "m2"),
        ("orders", None, "m3"),
        ("users.eu.created", Some("audit"), "m4"),
        ("orders.eu.created.v2", Some("other"), "m5"),
    ];
    let mut log = b.log().await;
    for (i, (key, kind, value)) in records.iter().enumerate() {
        let mut builder = strata_proto::batch::BatchBuilder::new(strata_proto::batch::Compression::None);
        let headers: Vec<(&str, Option<&[u8]>)> = kind.iter().map(|k| ("kind", Some(k.as_bytes()))).collect();
        builder.push(now_ms(), Some(key.as_bytes()), Some(value.as_bytes()), &headers);
        log.produce(produce_req("events", (i % 2) as u32, builder.finish().unwrap())).await.unwrap();
    }
    let want: BTreeMap<&str, BTreeSet<&str>> = [
        ("direct", ["m1"].into()),
        ("pattern", ["m1", "m2", "m5"].into()),
        ("headers", ["m4"].into()),
        ("fanout", ["m1", "m2", "m3", "m4", "m5"].into()),
    ]
    .into();
    for (q, expected) in want {
        let n = expected.len();
        eventually(&format!("routing into {q}"), Duration::from_secs(10), || {
            let mut c = c.clone();
            async move {
                let d = describe(&mut c, q).await.stats.unwrap();
                (d.visible as usize >= n).then_some(())
            }
        })
        .await;
        let msgs = receive(&mut c, q, 100, 0, None).await;
        let bodies: BTreeSet<String> = msgs.iter().map(body).collect();
        assert_eq!(bodies, expected.iter().map(|s| s.to_string()).collect(), "queue {q}");
        if q == "direct" {
            assert_eq!(&msgs[0].key[..], b"orders.eu.created", "the routing key is kept");
        }
    }
}

#[tokio::test]
async fn request_reply_matches_by_correlation_id_and_the_reply_queue_goes_with_the_caller() {
    let b = TestBroker::start().await;
    let mut c = queues(b.addr()).await;
    create(&mut c, "rpc", QueueConfig::default()).await;
    let mut stream = c.open_reply_queue(OpenReplyQueueRequest { tenant: String::new() }).await.unwrap().into_inner();
    let Some(reply_queue_event::Event::Opened(reply_to)) = stream.message().await.unwrap().unwrap().event else {
        panic!("the first event names the queue");
    };
    let d = describe(&mut c, &reply_to).await;
    assert!(d.temporary);
    // Two requests; a responder answers them in reverse order.
    for (corr, q) in [("c1", "2+2"), ("c2", "3+3")] {
        let m = OutgoingMessage {
            body: Bytes::from_static(q.as_bytes()),
            reply_to: reply_to.clone(),
            correlation_id: corr.into(),
            ..Default::default()
        };
        send(&mut c, "rpc", vec![m]).await;
    }
    let reqs = receive(&mut c, "rpc", 10, 1000, None).await;
    assert_eq!(reqs.len(), 2);
    for r in reqs.iter().rev() {
        let answer = if body(r) == "2+2" { "4" } else { "6" };
        let reply = OutgoingMessage {
            body: Bytes::from_static(answer.as_bytes()),
            correlation_id: r.correlation_id.clone(),
            ..Default::default()
        };
        send(&mut c, &r.reply_to, vec![reply]).await;
    }
    ack(&mut c, "rpc", &reqs).await;
    let mut replies = HashMap::new();
    while replies.len() < 2 {
        let ev = stream.message().await.unwrap().unwrap();
        if let Some(reply_queue_event::Event::Message(m)) = ev.event {
            replies.insert(m.correlation_id.clone(), body(&m));
        }
    }
    assert_eq!(replies["c1"], "4");
    assert_eq!(replies["c2"], "6");
    drop(stream);
    eventually("the reply queue to disappear", Duration::from_secs(10), || {
        let mut c = c.clone();
        let name = reply_to.clone();
        async move {
            let r = c.describe_queue(DescribeQueueRequest { tenant: String::new(), name }).await;
            matches!(r, Err(s) if s.code() == tonic::Code::NotFound).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn bad_queue_input_gets_precise_errors() {
    let b = TestBroker::start().await;
    let mut c = queues(b.addr()).await;
    let code = |s: tonic::Status| (s.code(), strata_proto::error_code(&s), s.message().to_owned());
    let create_err = |name: &'static str, config: QueueConfig| {
        let mut c = c.clone();
        async move { code(c.create_queue(create_request(name, config)).await.unwrap_err()) }
    };
    let (k, e, m) =
        create_err("a", QueueConfig { dead_letter_queue: Some("missing".into()), ..Default::default() }).await;
    assert_eq!((k, e), (tonic::Code::InvalidArgument, ErrorCode::InvalidConfig), "{m}");
    assert!(m.contains("missing"), "{m}");
    let (k, _, m) = create_err("a", QueueConfig { dead_letter_queue: Some("a".into()), ..Default::default() }).await;
    assert_eq!(k, tonic::Code::InvalidArgument);
    assert!(m.contains("loop"), "{m}");
    let (k, _, m) = create_err("a", QueueConfig { visibility_timeout_ms: Some(-5), ..Default::default() }).await;
    assert_eq!(k, tonic::Code::InvalidArgument, "{m}");
    let (k, _, m) = create_err("a", QueueConfig { delay_ms: Some(i64::MAX / 2), ..Default::default() }).await;
    assert!(k == tonic::Code::InvalidArgument && m.contains("365 days"), "{m}");
    let (k, _, m) = create_err("a", QueueConfig { priorities: Some(1000), ..Default::default() }).await;
    assert!(k == tonic::Code::InvalidArgument && m.contains("priorities"), "{m}");
    let (k, _, m) = create_err("bad name!", QueueConfig::default()).await;
    assert_eq!(k, tonic::Code::InvalidArgument, "{m}");

    // A loop through two queues.
    create(&mut c, "x", QueueConfig::default()).await;
    create(&mut c, "y", QueueConfig { dead_letter_queue: Some("x".into()), ..Default::default() }).await;
    let s = c
        .update_queue(strata_proto::v1::UpdateQueueRequest {
            tenant: String::new(),
            name: "x".into(),
            config: Some(QueueConfig { dead_letter_queue: Some("y".into()), ..Default::default() }),
        })
        .await
        .unwrap_err();
    assert!(s.message().contains("x -> y -> x"), "{}", s.message());
    // A dead-letter queue in use cannot be deleted.
    let s = c
        .delete_queue(DeleteQueueRequest { tenant: String::new(), name: "x".into(), if_empty: false })
        .await
        .unwrap_err();
    assert_eq!(strata_proto::error_code(&s), ErrorCode::QueueInUse, "{}", s.message());

    let s = c
        .send(SendRequest { tenant: String::new(), queue: "nope".into(), messages: vec![text("a")] })
        .await
        .unwrap_err();
    assert_eq!((s.code(), strata_proto::error_code(&s)), (tonic::Code::NotFound, ErrorCode::UnknownQueue));
    let bad_priority = OutgoingMessage { priority: 3, ..text("a") };
    let s = c
        .send(SendRequest { tenant: String::new(), queue: "x".into(), messages: vec![text("ok"), bad_priority] })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("priority 3 is out of range"), "{}", s.message());
    assert_eq!(describe(&mut c, "x").await.stats.unwrap().visible, 0, "a refused request enqueues nothing");
    let s = c
        .bind(BindRequest {
            tenant: String::new(),
            queue: "x".into(),
            topic: "t".into(),
            filter: Some(BindingFilter { pattern: Some("a..b".into()), ..Default::default() }),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{}", s.message());
    let s = c
        .receive(ReceiveRequest {
            tenant: String::new(),
            queue: "x".into(),
            max_messages: 1,
            wait_ms: -1,
            visibility_timeout_ms: None,
            auto_ack: false,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn dedup_ids_within_the_window_are_enqueued_once() {
    let b = TestBroker::start().await;
    let mut c = queues(b.addr()).await;
    create(&mut c, "d", QueueConfig { dedup_window_ms: Some(60_000), ..Default::default() }).await;
    let m = |id: &str| OutgoingMessage { dedup_id: id.into(), ..text(id) };
    let first = c
        .send(SendRequest { tenant: String::new(), queue: "d".into(), messages: vec![m("a"), m("b"), m("a")] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.results.iter().map(|r| r.duplicate).collect::<Vec<_>>(), [false, false, true]);
    assert_eq!(first.results[2].message_id, first.results[0].message_id);
    let again = c
        .send(SendRequest { tenant: String::new(), queue: "d".into(), messages: vec![m("b")] })
        .await
        .unwrap()
        .into_inner();
    assert!(again.results[0].duplicate);
    assert_eq!(again.results[0].message_id, first.results[1].message_id);
    assert_eq!(describe(&mut c, "d").await.stats.unwrap().visible, 2);
}

#[tokio::test]
async fn sigkill_with_messages_in_flight_acked_and_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = BrokerProcess::start(dir.path(), &[]);
    let mut c = queues(p.addr).await;
    create_with_dead_letters(&mut c, "work", "dlq", 1).await;
    send(&mut c, "work", (0..300).map(|i| text(&i.to_string())).collect()).await;
    // 100 acked, 100 in flight, 50 nacked into the DLQ, 50 never received.
    let got = receive(&mut c, "work", 250, 1000, Some(600_000)).await;
    assert_eq!(got.len(), 250);
    ack(&mut c, "work", &got[..100]).await;
    let receipts: Vec<Receipt> = got[200..250].iter().map(|m| m.receipt.unwrap()).collect();
    c.nack(NackRequest { tenant: String::new(), queue: "work".into(), receipts, delay_ms: None }).await.unwrap();
    eventually("dead letters", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move { (describe(&mut c, "dlq").await.stats.unwrap().visible == 50).then_some(()) }
    })
    .await;
    p.kill9();

    let p = BrokerProcess::start(dir.path(), &[]);
    let mut c = queues(p.addr).await;
    let s = describe(&mut c, "work").await.stats.unwrap();
    assert_eq!(s.visible + s.in_flight + s.delayed, 150, "{s:?}");
    assert_eq!(s.dead_lettered, 50);
    assert_eq!(s.acked_total, 100);
    assert_eq!(describe(&mut c, "dlq").await.stats.unwrap().visible, 50);
    let all = receive(&mut c, "work", 1000, 1000, None).await;
    let bodies: BTreeSet<u32> = all.iter().map(|m| body(m).parse().unwrap()).collect();
    assert_eq!(bodies, (100..200).chain(250..300).collect(), "unacked come back; acked and dead-lettered never do");
    for m in &all {
        let n: u32 = body(m).parse().unwrap();
        let want = if n < 200 { 2 } else { 1 };
        assert_eq!(m.receipt.unwrap().delivery_count, want, "delivery count of {n} survives the crash");
    }
}

#[tokio::test]
async fn snapshots_trim_finished_segments_and_restarts_keep_the_state() {
    let mut b =
        TestBroker::start_with(|c| c.topic_defaults.segment_bytes = strata_broker::config::ByteSize(4096)).await;
    let mut c = queues(b.addr()).await;
    create(&mut c, "big", QueueConfig::default()).await;
    for chunk in 0..10 {
        send(&mut c, "big", (0..100).map(|i| text(&format!("{:04}", chunk * 100 + i))).collect()).await;
    }
    let segments = |dir: &std::path::Path| {
        walk_files(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "log")).count()
    };
    let messages_dir = b.dir.path().join("queues");
    let before = segments(&messages_dir);
    let got = receive(&mut c, "big", 1000, 1000, Some(600_000)).await;
    assert_eq!(got.len(), 1000);
    ack(&mut c, "big", &got[..900]).await;
    // A graceful restart snapshots the state and trims both logs.
    b.restart().await;
    let after = segments(&messages_dir);
    assert!(after < before, "finished segments are deleted: {before} -> {after}");
    let mut c = queues(b.addr()).await;
    let s = describe(&mut c, "big").await.stats.unwrap();
    assert_eq!((s.visible, s.acked_total, s.sent_total), (100, 900, 1000), "{s:?}");
    let rest = receive(&mut c, "big", 1000, 1000, None).await;
    assert_eq!(rest.iter().map(body).collect::<Vec<_>>(), (900..1000).map(|i| format!("{i:04}")).collect::<Vec<_>>());
    ack(&mut c, "big", &rest[..50]).await;
    b.restart().await;
    let mut c = queues(b.addr()).await;
    let rest = receive(&mut c, "big", 1000, 1000, None).await;
    assert_eq!(rest.iter().map(body).collect::<Vec<_>>(), (950..1000).map(|i| format!("{i:04}")).collect::<Vec<_>>());
    assert!(rest.iter().all(|m| m.receipt.unwrap().delivery_count == 3));
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(walk_files(&p)) } else { out.push(p) }
        }
    }
    out
}
