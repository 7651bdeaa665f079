//! Work queues end to end against a real in-process broker: the client
//! library (admin, send, receive, ack/nack/extend, stale receipts, dedup,
//! request-reply and its temporary queue) and the `strata` CLI as child
//! processes (send/receive round trip, `queue describe` counts, competing
//! consumers, a SIGKILLed consumer, bad input, `bench queue`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use strata_client::{BindingFilter, Client, Delivery, Error, ErrorCode, QueueMessage, QueueOptions, TopicOptions};

use crate::process::LineCollector;
use crate::{TestBroker, strata, strata_command};

use strata_testkit::eventually;

/// Runs `strata` and expects success; returns stdout.
async fn ok(url: &str, args: &[&str], stdin: &[u8]) -> String {
    let (code, out, err) = strata(url, args, stdin).await;
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

/// Runs `strata` and expects a one-line error with exit code 1; returns it.
async fn fails(url: &str, args: &[&str], stdin: &[u8]) -> String {
    let (code, out, err) = strata(url, args, stdin).await;
    assert_eq!(code, 1, "{args:?}: {out} {err}");
    assert!(out.is_empty(), "{args:?}: {out}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    err
}

/// The value of a `key: value` line of `queue describe`.
fn field(describe: &str, key: &str) -> String {
    describe
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {key:?} in\n{describe}"))
}

fn numbered(n: usize) -> String {
    (1..=n).map(|i| format!("m{i}\n")).collect()
}

fn set(text: &str) -> BTreeSet<String> {
    text.lines().map(str::to_owned).collect()
}

/// Receives from `receiver` until `n` messages arrived (each receive long
/// polls), acking none.
async fn receive_n(receiver: &strata_client::Receiver, n: usize) -> Vec<Delivery> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} messages arrived", out.len());
        out.extend(receiver.receive().await.expect("receive"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_round_trip_and_refusals_keep_their_codes() {
    let (broker, client) = TestBroker::with_client().await;
    client.create_queue("jobs-dlq", QueueOptions::new()).await.unwrap();
    let options = QueueOptions::new()
        .visibility_timeout(Duration::from_secs(45))
        .max_deliveries(3)
        .dead_letter_queue("jobs-dlq")
        .retry_backoff(Duration::from_secs(1), Duration::from_secs(60))
        .dedup_window(Duration::from_secs(300))
        .priorities(10);
    let created = client.create_queue("jobs", options.clone()).await.unwrap();
    let config = created.config.unwrap();
    assert_eq!(config.visibility_timeout_ms, Some(45_000));
    assert_eq!(config.max_deliveries, Some(3));
    assert_eq!(config.dead_letter_queue.as_deref(), Some("jobs-dlq"));
    assert_eq!((config.retry_backoff_min_ms, config.retry_backoff_max_ms), (Some(1000), Some(60_000)));
    assert_eq!(config.priorities, Some(10));
    assert!(!created.temporary);

    let err = client.create_queue("jobs", QueueOptions::new()).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::AlreadyExists), "{err}");
    assert_eq!(err.error_code(), ErrorCode::QueueExists);
    let same = client.ensure_queue("jobs", QueueOptions::new()).await.unwrap();
    assert_eq!(same.queue_id, created.queue_id);

    let updated = client.update_queue("jobs", QueueOptions::new().visibility_timeout(Duration::from_secs(5))).await;
    let updated = updated.unwrap().config.unwrap();
    assert_eq!(updated.visibility_timeout_ms, Some(5000));
    assert_eq!(updated.max_deliveries, Some(3), "unset settings stay as they were");

    let names: BTreeSet<String> = client.list_queues().await.unwrap().into_iter().map(|q| q.name).collect();
    assert_eq!(names, ["jobs".to_owned(), "jobs-dlq".to_owned()].into());

    // Bindings show in describe and go away with unbind.
    client.create_topic("orders", 1, TopicOptions::default()).await.unwrap();
    client.bind("jobs", "orders", BindingFilter::pattern("eu.*.#")).await.unwrap();
    let bindings = client.describe_queue("jobs").await.unwrap().bindings;
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0].topic, "orders");
    assert_eq!(BindingFilter::from(bindings[0].filter.clone().unwrap()), BindingFilter::pattern("eu.*.#"));
    let err = client.unbind("jobs", "orders", BindingFilter::key("other")).await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::UnknownBinding, "{err}");
    client.unbind("jobs", "orders", BindingFilter::pattern("eu.*.#")).await.unwrap();
    assert!(client.describe_queue("jobs").await.unwrap().bindings.is_empty());

    // Dedup: the second send with the same id is accepted but not enqueued.
    let first = client.send_batch("jobs", [QueueMessage::new("a").dedup_id("x")]).await.unwrap();
    let second = client.send_batch("jobs", [QueueMessage::new("a").dedup_id("x")]).await.unwrap();
    assert!(!first[0].duplicate);
    assert!(second[0].duplicate);
    client.send_batch("jobs", [QueueMessage::new("b"), QueueMessage::new("c")]).await.unwrap();
    assert_eq!(client.describe_queue("jobs").await.unwrap().stats.unwrap().visible, 3);

    let err = client.delete_queue("jobs", true).await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::QueueNotEmpty, "{err}");
    let err = client.delete_queue("jobs-dlq", false).await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::QueueInUse, "{err}");
    assert_eq!(client.purge_queue("jobs").await.unwrap(), 3);
    client.delete_queue("jobs", true).await.unwrap();
    let err = client.describe_queue("jobs").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(err.error_code(), ErrorCode::UnknownQueue);
    client.delete_queue("jobs-dlq", false).await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_and_stale_receipts_are_typed_errors() {
    let (broker, client) = TestBroker::with_client().await;
    client.create_queue("work", QueueOptions::new()).await.unwrap();
    let sent = client.send_batch("work", [QueueMessage::new("one").header("h", "v"), QueueMessage::new("two")]).await;
    assert_eq!(sent.unwrap().len(), 2);

    // A 1 s lease that is never acked: the message comes back, delivered
    // a second time, and the first receipt is stale.
    let short = client.receiver("work").visibility_timeout(Duration::from_secs(1)).wait(Duration::from_secs(10));
    let first = receive_n(&short, 1).await.remove(0);
    assert_eq!(first.delivery_count(), 1);
    assert!(first.visible_until.is_some());
    let other = client.receiver("work").max_messages(10).wait(Duration::from_secs(10));
    let second = receive_n(&other, 1).await.remove(0);
    assert_ne!(second.body, first.body, "the leased message is invisible to others");
    other.ack(&second).await.unwrap();
    let again = receive_n(&other, 1).await.remove(0);
    assert_eq!(again.body, first.body);
    assert_eq!(again.receipt.message_id, first.receipt.message_id);
    assert_eq!(again.delivery_count(), 2);

    let err = short.ack(&first).await.unwrap_err();
    assert!(err.is_stale_receipt(), "{err}");
    assert_eq!(err.error_code(), ErrorCode::StaleReceipt);
    // Several receipts: the current one is applied, the stale one listed.
    let err = other.ack_all(&[first.clone(), again.clone()]).await.unwrap_err();
    let Error::ReceiptsRejected(rejected) = &err else { panic!("{err:?}") };
    assert_eq!(rejected.len(), 1, "{err}");
    assert_eq!((rejected[0].message_id, rejected[0].delivery_count), (first.receipt.message_id, 1));
    assert!(err.is_stale_receipt());
    let stats = client.describe_queue("work").await.unwrap().stats.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (0, 0));

    // Nack with a delay, extend, and auto-ack.
    client.send_batch("work", [QueueMessage::new("three")]).await.unwrap();
    let d = receive_n(&other, 1).await.remove(0);
    other.extend(&d, Duration::from_secs(60)).await.unwrap();
    other.nack(&d, Some(Duration::from_secs(3600))).await.unwrap();
    let stats = client.describe_queue("work").await.unwrap().stats.unwrap();
    assert_eq!((stats.visible, stats.in_flight, stats.delayed), (0, 0, 1));
    let err = other.extend(&d, Duration::from_secs(1)).await.unwrap_err();
    assert!(err.is_stale_receipt(), "{err}");
    client.purge_queue("work").await.unwrap();
    client.send_batch("work", [QueueMessage::new("four")]).await.unwrap();
    let auto = client.receiver("work").auto_ack(true).wait(Duration::from_secs(10));
    let d = receive_n(&auto, 1).await.remove(0);
    assert_eq!(&d.body[..], b"four");
    assert_eq!(d.visible_until, None);
    let stats = client.describe_queue("work").await.unwrap().stats.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (0, 0));

    let err = client.send_batch("missing", [QueueMessage::new("x")]).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_matches_by_correlation_id_and_the_reply_queue_goes_away() {
    let broker = TestBroker::start().await;
    let server = broker.client().await;
    server.create_queue("rpc", QueueOptions::new()).await.unwrap();

    // The responder answers "<body>|<correlation id>".
    let responder = {
        let client = server.clone();
        tokio::spawn(async move {
            let receiver = client.receiver("rpc").max_messages(10).wait(Duration::from_secs(1));
            loop {
                let Ok(requests) = receiver.receive().await else { return };
                for r in &requests {
                    let body = format!(
                        "{}|{}",
                        String::from_utf8_lossy(&r.body),
                        r.correlation_id.clone().unwrap_or_default()
                    );
                    client.reply(r, QueueMessage::new(body)).await.expect("reply");
                }
                receiver.ack_all(&requests).await.expect("ack");
            }
        })
    };

    let caller = Client::connect(&broker.url).await.unwrap();
    let clone = caller.clone();
    let timeout = Duration::from_secs(30);
    let (a, b) = tokio::join!(
        caller.call("rpc", QueueMessage::new("alpha"), timeout),
        clone.call("rpc", QueueMessage::new("beta"), timeout),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    for (reply, expected) in [(&a, "alpha"), (&b, "beta")] {
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        let (body, id) = text.split_once('|').unwrap();
        assert_eq!(body, expected, "each call gets its own reply");
        assert_eq!(reply.correlation_id.as_deref(), Some(id));
    }
    assert_ne!(a.correlation_id, b.correlation_id);

    // One reply queue for the client and its clones, listed as temporary.
    let name = caller.reply_queue_name().await.unwrap();
    assert_eq!(clone.reply_queue_name().await.unwrap(), name);
    let listed = server.list_queues().await.unwrap();
    assert!(listed.iter().any(|q| q.name == name && q.temporary), "{listed:?}");

    // No responder on this queue: the call times out cleanly.
    server.create_queue("nobody", QueueOptions::new()).await.unwrap();
    let err = caller.call("nobody", QueueMessage::new("?"), Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    // A request without reply_to cannot be answered.
    server.create_queue("plain", QueueOptions::new()).await.unwrap();
    server.send_batch("plain", [QueueMessage::new("plain")]).await.unwrap();
    let plain = receive_n(&server.receiver("plain").wait(Duration::from_secs(10)), 1).await.remove(0);
    assert_eq!(plain.reply_to, None);
    let err = server.reply(&plain, QueueMessage::new("x")).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");

    // The last handle goes: the broker deletes the reply queue.
    drop(caller);
    drop(clone);
    eventually("the reply queue to disappear", Duration::from_secs(30), || async {
        let gone = matches!(server.describe_queue(&name).await, Err(e) if e.is_not_found());
        let listed = server.list_queues().await.unwrap().iter().any(|q| q.name == name);
        (gone && !listed).then_some(())
    })
    .await;
    responder.abort();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_send_receive_and_describe_counts() {
    let broker = TestBroker::start().await;
    let url = broker.url.clone();
    let out = ok(&url, &["queue", "create", "jobs", "--visibility-timeout", "30s", "--priorities", "10"], b"").await;
    assert_eq!(out, "created queue jobs\n");

    let input = numbered(1200);
    assert_eq!(ok(&url, &["send", "jobs"], input.as_bytes()).await, "");
    let d = ok(&url, &["queue", "describe", "jobs"], b"").await;
    assert_eq!(field(&d, "visible"), "1200", "{d}");
    assert_eq!(field(&d, "in flight"), "0", "{d}");
    assert_eq!(field(&d, "visibility timeout"), "30s", "{d}");
    assert_ne!(field(&d, "oldest message"), "", "{d}");

    let part = ok(&url, &["receive", "jobs", "--count", "500"], b"").await;
    assert_eq!(part.lines().count(), 500);
    let rest = ok(&url, &["receive", "jobs", "--wait", "1s"], b"").await;
    assert_eq!(rest.lines().count(), 700);
    let mut all = set(&part);
    all.extend(set(&rest));
    assert_eq!(all, set(&input), "every line exactly once");

    // In flight (--no-ack) and delayed messages show in describe and list.
    ok(&url, &["send", "jobs"], b"a\nb\nc\n").await;
    ok(&url, &["send", "jobs", "--delay", "1h", "--priority", "9", "--header", "k=v"], b"later\n").await;
    let held = ok(&url, &["receive", "jobs", "--count", "3", "--no-ack"], b"").await;
    assert_eq!(set(&held), set("a\nb\nc\n"));
    let d = ok(&url, &["queue", "describe", "jobs"], b"").await;
    assert_eq!(
        (field(&d, "visible"), field(&d, "in flight"), field(&d, "delayed")),
        ("0".into(), "3".into(), "1".into()),
        "{d}"
    );
    assert_eq!(ok(&url, &["queue", "list"], b"").await, "jobs  0  3  1  0\n");
    assert_eq!(ok(&url, &["queue", "purge", "jobs"], b"").await, "purged 4 messages from queue jobs\n");
    assert_eq!(ok(&url, &["queue", "delete", "jobs"], b"").await, "deleted queue jobs\n");
    assert_eq!(ok(&url, &["queue", "list"], b"").await, "");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_dead_letters_redrives_and_binds() {
    let (broker, client) = TestBroker::with_client().await;
    let url = broker.url.clone();
    ok(&url, &["queue", "create", "jobs-dlq"], b"").await;
    ok(&url, &["queue", "create", "jobs", "--max-deliveries", "1", "--dead-letter", "jobs-dlq"], b"").await;
    ok(&url, &["send", "jobs"], b"poison\n").await;
    let receiver = client.receiver("jobs").wait(Duration::from_secs(10));
    let d = receive_n(&receiver, 1).await.remove(0);
    receiver.nack(&d, None).await.unwrap();
    // After its one delivery the message is parked in the dead-letter queue.
    let dlq = eventually("the message in the DLQ", Duration::from_secs(30), || async {
        let d = client.describe_queue("jobs-dlq").await.unwrap();
        (d.stats.unwrap().visible == 1).then_some(d)
    })
    .await;
    assert_eq!(dlq.stats.unwrap().visible, 1);
    let d = ok(&url, &["queue", "describe", "jobs"], b"").await;
    assert_eq!(field(&d, "dead-lettered"), "1", "{d}");
    assert_eq!(field(&d, "dead-letter queue"), "jobs-dlq", "{d}");
    assert_eq!(field(&d, "max deliveries"), "1", "{d}");

    assert_eq!(ok(&url, &["queue", "redrive", "jobs-dlq"], b"").await, "moved 1 messages out of jobs-dlq\n");
    assert_eq!(ok(&url, &["receive", "jobs", "--wait", "10s", "--count", "1"], b"").await, "poison\n");

    ok(&url, &["topic", "create", "orders"], b"").await;
    let out = ok(&url, &["queue", "bind", "jobs", "--topic", "orders", "--key", "eu"], b"").await;
    assert_eq!(out, "bound queue jobs to topic orders (key=eu)\n");
    ok(&url, &["queue", "bind", "jobs", "--topic", "orders", "--header", "region=eu"], b"").await;
    let d = ok(&url, &["queue", "describe", "jobs"], b"").await;
    assert!(d.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["orders", "key=eu"]), "{d}");
    assert!(d.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["orders", "header:region=eu"]), "{d}");
    ok(&url, &["queue", "unbind", "jobs", "--topic", "orders", "--key", "eu"], b"").await;
    ok(&url, &["queue", "unbind", "jobs", "--topic", "orders", "--header", "region=eu"], b"").await;
    let d = ok(&url, &["queue", "describe", "jobs"], b"").await;
    assert!(d.contains("no bindings"), "{d}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_cli_consumers_receive_disjoint_sets_that_cover_everything() {
    let broker = TestBroker::start().await;
    let url = broker.url.clone();
    ok(&url, &["queue", "create", "shared"], b"").await;
    let input = numbered(3000);
    ok(&url, &["send", "shared"], input.as_bytes()).await;

    let consumers: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { ok(&url, &["receive", "shared", "--wait", "2s", "--batch", "20"], b"").await })
        })
        .collect();
    let mut union = BTreeSet::new();
    let mut total = 0;
    for c in consumers {
        let out = c.await.unwrap();
        total += out.lines().count();
        union.extend(set(&out));
    }
    assert_eq!(total, 3000, "no message was received twice");
    assert_eq!(union, set(&input), "every message was received");
    let d = ok(&url, &["queue", "describe", "shared"], b"").await;
    assert_eq!((field(&d, "visible"), field(&d, "in flight")), ("0".into(), "0".into()), "{d}");
    broker.stop().await;
}

/// A `strata receive` child whose stdout lines are collected as they come.
fn receive_process(url: &str, args: &[&str]) -> LineCollector {
    LineCollector::spawn(&mut strata_command(url, args))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_consumer_loses_nothing_its_messages_come_back_after_the_timeout() {
    let (broker, client) = TestBroker::with_client().await;
    let url = broker.url.clone();
    ok(&url, &["queue", "create", "tasks", "--visibility-timeout", "1s"], b"").await;
    let input = numbered(50);
    ok(&url, &["send", "tasks"], input.as_bytes()).await;

    // The victim leases everything, prints it, never acks, and is killed
    // while it still holds the leases (waiting for more).
    let mut victim = receive_process(&url, &["receive", "tasks", "--no-ack", "--wait", "60s", "--batch", "50"]);
    let expected = set(&input);
    let held = eventually("the victim to print every message", Duration::from_secs(30), || {
        let lines = victim.lines();
        let done = lines.iter().cloned().collect::<BTreeSet<String>>() == expected;
        async move { done.then_some(lines) }
    })
    .await;
    victim.kill9();
    assert!(held.len() >= 50);

    // Another consumer gets every one of them once the leases expire.
    let out = ok(&url, &["receive", "tasks", "--count", "50", "--wait", "30s"], b"").await;
    assert_eq!(out.lines().count(), 50, "{out}");
    assert_eq!(set(&out), set(&input), "no message was lost");
    let stats = client.describe_queue("tasks").await.unwrap().stats.unwrap();
    assert_eq!((stats.visible, stats.in_flight, stats.acked_total), (0, 0, 50));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queue_input_through_the_cli_is_a_one_line_error() {
    let broker = TestBroker::start().await;
    let url = broker.url.clone();
    ok(&url, &["queue", "create", "q", "--priorities", "10"], b"").await;
    ok(&url, &["topic", "create", "t"], b"").await;

    let err = fails(&url, &["queue", "describe", "missing"], b"").await;
    assert!(err.contains("missing"), "{err}");
    let err = fails(&url, &["send", "missing"], b"x\n").await;
    assert!(err.contains("missing") && err.contains("line 1"), "{err}");
    let err = fails(&url, &["receive", "missing", "--wait", "0s"], b"").await;
    assert!(err.contains("missing"), "{err}");
    fails(&url, &["queue", "purge", "missing"], b"").await;
    fails(&url, &["queue", "delete", "missing"], b"").await;
    fails(&url, &["queue", "redrive", "missing"], b"").await;
    let err = fails(&url, &["queue", "create", "q2", "--dead-letter", "nope"], b"").await;
    assert!(err.contains("nope"), "{err}");
    let err = fails(&url, &["queue", "create", "selfish", "--dead-letter", "selfish"], b"").await;
    assert!(err.contains("selfish"), "{err}");
    let err = fails(&url, &["queue", "bind", "q", "--topic", "t", "--pattern", "eu.#x"], b"").await;
    assert!(err.contains("eu.#x"), "{err}");
    fails(&url, &["queue", "bind", "q", "--topic", "no-such-topic"], b"").await;
    let err = fails(&url, &["send", "q", "--priority", "50"], b"x\n").await;
    assert!(err.contains("priority"), "{err}");
    let err = fails(&url, &["queue", "create", "q3", "--visibility-timeout", "100000d"], b"").await;
    assert!(err.contains("visibility"), "{err}");
    fails(&url, &["queue", "create", "q4", "--ttl", "1000y"], b"").await;
    fails(&url, &["queue", "create", "bad name"], b"").await;
    fails(&url, &["queue", "create", "q"], b"").await;
    // Nothing was half-created.
    let names: Vec<String> = ok(&url, &["queue", "list"], b"")
        .await
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["q"]);

    // Usage errors exit 2, still on one line.
    for args in [
        &["queue", "create", "x", "--retry-backoff", "60s..1s"][..],
        &["send", "q", "--delay", "-5s"],
        &["queue", "create", "x", "--priorities", "300"],
    ] {
        let (code, _, err) = strata(&url, args, b"").await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_queue_reports_throughput_and_both_latencies() {
    let broker = TestBroker::start().await;
    let url = broker.url.clone();
    let out = ok(&url, &["bench", "queue", "--count", "3000", "--size", "100", "--batch", "50", "--json"], b"").await;
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(report["benchmark"], "queue");
    assert_eq!(report["messages"], 3000);
    assert!(report["msgs_per_sec"].as_f64().unwrap() > 0.0);
    for key in ["p99_ms", "e2e_p50_ms", "e2e_p99_ms", "e2e_p999_ms"] {
        assert!(report[key].as_f64().is_some(), "{key} in {report}");
    }
    // The temporary benchmark queue was deleted.
    assert_eq!(ok(&url, &["queue", "list"], b"").await, "");
    broker.stop().await;
}
