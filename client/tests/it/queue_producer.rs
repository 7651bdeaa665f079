//! The queue producer against real brokers: batching and pipelining of one
//! message per call, back-pressure by bytes, and a SIGKILLed broker process
//! in the middle of batches (nothing acknowledged is lost, nothing is stored
//! twice).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures::FutureExt as _;
use strata_client::{Client, QueueMessage, QueueOptions, QueueProducerConfig};

use crate::TestBroker;
use crate::process::{BrokerProcess, binary_or_skip as binary};

/// Receives and acks until `n` messages arrived or nothing came for a while;
/// returns how often each body arrived.
async fn drain(client: &Client, queue: &str, n: usize) -> BTreeMap<String, usize> {
    let receiver = client.receiver(queue).max_messages(1000);
    let mut seen = BTreeMap::new();
    let mut total = 0;
    loop {
        let wait = if total < n { Duration::from_secs(10) } else { Duration::from_millis(300) };
        let batch = receiver.poll(1000, wait).await.expect("receive");
        if batch.is_empty() {
            return seen;
        }
        total += batch.len();
        for d in &batch {
            *seen.entry(String::from_utf8_lossy(&d.body).into_owned()).or_insert(0) += 1;
        }
        receiver.ack_all(&batch).await.expect("ack");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_per_call_is_batched_and_every_answer_arrives() {
    let (broker, client) = TestBroker::with_client().await;
    client.create_queue("work", QueueOptions::new()).await.unwrap();
    let producer = client.queue_producer("work").await.unwrap();
    assert!(!producer.resends_are_exact(), "no dedup window: broken streams are not resent");
    let mut acks = Vec::new();
    for i in 0..5000 {
        acks.push(producer.enqueue(QueueMessage::new(format!("m{i}"))).await.unwrap());
    }
    let mut ids = Vec::new();
    for ack in acks {
        let r = ack.await.unwrap();
        assert!(!r.duplicate);
        ids.push(r.message_id);
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5000, "every message got its own id");
    producer.close().await.unwrap();
    assert!(producer.send(QueueMessage::new("late")).await.is_err(), "closed producers refuse");
    let seen = drain(&client, "work", 5000).await;
    assert_eq!(seen.len(), 5000);
    assert!(seen.values().all(|&c| c == 1));
    let err = client.queue_producer("missing").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    broker.stop().await;
}

/// Current-thread runtime: while the test enqueues without yielding, the
/// producer's task cannot send, so only the memory limit can stop `enqueue`.
#[tokio::test]
async fn back_pressure_bounds_the_bytes_held_by_the_producer() {
    let (broker, client) = TestBroker::with_client().await;
    client.create_queue("bounded", QueueOptions::new()).await.unwrap();
    let limit = 64 * 1024;
    let config = QueueProducerConfig { max_in_flight_bytes: limit, ..QueueProducerConfig::default() };
    let producer = client.queue_producer_with_config("bounded", config).await.unwrap();
    let body = vec![7u8; 1024];
    let mut acks = Vec::new();
    let blocked = loop {
        let mut next = Box::pin(producer.enqueue(QueueMessage::new(body.clone())));
        match (&mut next).now_or_never() {
            Some(ack) => acks.push(ack.unwrap()),
            None => break next,
        }
        assert!(producer.in_flight_bytes() <= limit, "held {} bytes", producer.in_flight_bytes());
        assert!(acks.len() <= limit / body.len(), "the memory limit was not enforced");
    };
    assert!(acks.len() >= limit / body.len() / 2, "only {} messages fit", acks.len());
    // Answers free memory: the blocked enqueue goes through.
    let last = tokio::time::timeout(Duration::from_secs(30), blocked).await.expect("unblocked").unwrap();
    for ack in acks {
        ack.await.unwrap();
    }
    last.await.unwrap();
    producer.flush().await.unwrap();
    assert_eq!(producer.in_flight_bytes(), 0);
    broker.stop().await;
}

/// Many small requests in flight on one stream: the broker appends them in
/// the order they were sent (while their fsyncs overlap), so every FIFO
/// group is received in the order the application enqueued it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_keep_the_order_of_every_fifo_group() {
    let (broker, client) = TestBroker::with_client().await;
    client.create_queue("ordered", QueueOptions::new().fifo(true)).await.unwrap();
    // One message per request: the most requests in flight at once.
    let config = QueueProducerConfig { batch_messages: 1, ..QueueProducerConfig::default() };
    let producer = client.queue_producer_with_config("ordered", config).await.unwrap();
    let (groups, per_group) = (4, 500);
    let mut acks = Vec::new();
    for i in 0..per_group {
        for g in 0..groups {
            let m = QueueMessage::new(format!("{g}:{i}")).group(format!("g{g}"));
            acks.push(producer.enqueue(m).await.unwrap());
        }
    }
    let mut last_id = None;
    for ack in acks {
        let id = ack.await.unwrap().message_id;
        assert!(last_id < Some(id), "ids follow the order of enqueue: {id} after {last_id:?}");
        last_id = Some(id);
    }
    let receiver = client.receiver("ordered").max_messages(100);
    let mut next = vec![0usize; groups];
    let mut received = 0;
    while received < groups * per_group {
        let batch = receiver.poll(100, Duration::from_secs(10)).await.expect("receive");
        assert!(!batch.is_empty(), "only {received} messages arrived");
        for d in &batch {
            let body = String::from_utf8_lossy(&d.body).into_owned();
            let (g, i) = body.split_once(':').expect("g:i");
            let (g, i): (usize, usize) = (g.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[g], "group g{g} out of order");
            next[g] += 1;
        }
        received += batch.len();
        receiver.ack_all(&batch).await.expect("ack");
    }
    broker.stop().await;
}

/// What a crash in the middle of batches left.
struct Crash {
    /// Every message's answer, in enqueue order (`m{i}` is message i).
    outcomes: Vec<Result<strata_client::SendResult, strata_client::Error>>,
    /// What the queue holds after the restart: body -> copies.
    seen: BTreeMap<String, usize>,
    /// Whether the producer resent in-flight requests (it had dedup ids).
    exact: bool,
    /// The restarted broker (killed on drop, before its folder is removed).
    _broker: BrokerProcess,
    _dir: tempfile::TempDir,
}

const CRASH_MESSAGES: usize = 20_000;

/// Enqueues `CRASH_MESSAGES` one per call into a new queue made with
/// `options`; once the queue holds some, SIGKILLs the broker and restarts
/// it on the same address and data; waits for every answer and drains the
/// queue.
async fn crash_mid_batch(bin: &Path, options: QueueOptions) -> Crash {
    const N: usize = CRASH_MESSAGES;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(bin, dir.path(), "127.0.0.1:0", &[], &[]);
    let url = format!("http://{}", broker.grpc);
    let client = Client::connect(&url).await.unwrap();
    client.create_queue("jobs", options).await.unwrap();
    let producer = client.queue_producer("jobs").await.unwrap();
    let exact = producer.resends_are_exact();
    let sender = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut acks = Vec::with_capacity(N);
            for i in 0..N {
                acks.push(producer.enqueue(QueueMessage::new(format!("m{i}"))).await.expect("enqueue"));
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            let mut outcomes = Vec::with_capacity(N);
            for ack in acks {
                outcomes.push(ack.await);
            }
            outcomes
        })
    };
    // Kill once the queue holds some but not all messages.
    strata_testkit::eventually("the queue to hold some messages", Duration::from_secs(60), || async {
        let stats = client.describe_queue("jobs").await.unwrap().stats.unwrap_or_default();
        (stats.visible > 1000).then_some(())
    })
    .await;
    broker.kill9();
    let broker = BrokerProcess::start(bin, dir.path(), &broker.grpc.clone(), &[], &[]);
    let outcomes = tokio::time::timeout(Duration::from_secs(120), sender).await.expect("answers in time").unwrap();
    producer.close().await.unwrap();
    let client = Client::connect(&url).await.unwrap();
    let seen = drain(&client, "jobs", N).await;
    let twice: Vec<&String> = seen.iter().filter(|(_, c)| **c > 1).map(|(b, _)| b).take(5).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    for (i, outcome) in outcomes.iter().enumerate() {
        if outcome.is_ok() {
            assert!(seen.contains_key(&format!("m{i}")), "m{i} was acknowledged but is lost");
        }
    }
    Crash { outcomes, seen, exact, _broker: broker, _dir: dir }
}

/// The broker is SIGKILLed while batches are in flight and restarted on the
/// same address and data. With a dedup window the producer resends what
/// was in flight (with its generated dedup ids) and every message is
/// acknowledged; the queue then holds every message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_broker_mid_batch_loses_no_acknowledged_message_and_stores_none_twice() {
    let Some(bin) = binary() else { return };
    let crash = crash_mid_batch(&bin, QueueOptions::new().dedup_window(Duration::from_secs(600))).await;
    assert!(crash.exact);
    let failed: Vec<String> =
        crash.outcomes.iter().filter_map(|o| o.as_ref().err()).map(ToString::to_string).take(3).collect();
    assert!(failed.is_empty(), "resends with dedup ids are exact, so none may fail: {failed:?}");
    assert_eq!(crash.seen.len(), CRASH_MESSAGES, "every message is stored");
    let duplicates = crash.outcomes.iter().filter(|o| o.as_ref().is_ok_and(|r| r.duplicate)).count();
    println!("{duplicates} resent messages were recognised as stored before the crash");
}

/// Without a dedup window a broken stream's requests are not resent (they
/// may have been stored): their futures fail, and nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dedup_window_a_crash_fails_in_flight_messages_but_never_duplicates() {
    let Some(bin) = binary() else { return };
    let crash = crash_mid_batch(&bin, QueueOptions::new()).await;
    assert!(!crash.exact, "no dedup window: broken streams are not resent");
    let acknowledged = crash.outcomes.iter().filter(|o| o.is_ok()).count();
    assert!(acknowledged > 1000, "messages before the crash were acknowledged");
}
