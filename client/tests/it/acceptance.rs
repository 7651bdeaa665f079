//! End-to-end acceptance runs of the `strata` CLI against a real broker:
//! the README's first steps with 100,000 messages, and a consumer group of
//! three CLI processes, one of which is killed with SIGKILL mid-stream.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use strata_client::Message;
use strata_proto::v1::{DescribeGroupRequest, GroupDescription, groups_client::GroupsClient};

use crate::TestBroker;
use crate::process::LineCollector;

fn strata(url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
    c.arg("--server").arg(url);
    c
}

/// Runs a CLI command to completion off the async runtime.
async fn run(url: &str, args: &[&str], stdin: Option<Vec<u8>>) -> (bool, String, String) {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = strata(&url)
            .args(&args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("strata runs");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin");
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        let out = child.wait_with_output().expect("strata finishes");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

/// A broker with a topic the CLI created; the broker and its URL.
async fn broker_with_topic(topic: &str, partitions: &str) -> (TestBroker, String) {
    let broker = TestBroker::start().await;
    let url = broker.url.clone();
    let (ok, out, err) = run(&url, &["topic", "create", topic, "--partitions", partitions], None).await;
    assert!(ok, "{err}");
    assert!(out.contains(topic), "{out}");
    (broker, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_flow_with_100000_messages_keeps_per_partition_order() {
    let (broker, url) = broker_with_topic("orders", "3").await;

    let input: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    let (ok, _, err) = run(&url, &["produce", "orders"], Some(input.into_bytes())).await;
    assert!(ok, "produce failed: {err}");

    let (ok, out, err) = run(&url, &["consume", "orders", "--from", "earliest", "--count", "100000"], None).await;
    assert!(ok, "{err}");
    let values: Vec<u64> = out.lines().map(|l| l.parse().expect("a number per line")).collect();
    assert_eq!(values.len(), 100_000);
    let distinct: BTreeSet<u64> = values.iter().copied().collect();
    assert_eq!(distinct, (1..=100_000).collect::<BTreeSet<u64>>(), "every value exactly once");

    // Within each partition the order is the produce order.
    let client = broker.client().await;
    let described = client.describe_topic("orders").await.expect("describe");
    let mut total = 0;
    for p in described.partition_details {
        let n = p.end_offset.to_string();
        let part = p.partition.to_string();
        let (ok, out, err) =
            run(&url, &["consume", "orders", "--from", "earliest", "--partition", &part, "--count", &n], None).await;
        assert!(ok, "{err}");
        let vals: Vec<u64> = out.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(vals.len() as u64, p.end_offset);
        assert!(vals.windows(2).all(|w| w[0] < w[1]), "partition {} is in produce order", p.partition);
        total += vals.len();
    }
    assert_eq!(total, 100_000);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_are_one_line_and_a_failure_exit() {
    let (broker, url) = broker_with_topic("t", "1").await;
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["topic", "create", "bad name", "--partitions", "1"], "invalid topic name"),
        (vec!["topic", "create", "zero", "--partitions", "0"], "0"),
        (vec!["topic", "create", "x", "--retention", "soon"], "soon"),
        (vec!["topic", "describe", "missing"], "does not exist"),
        (vec!["consume", "missing", "--count", "1"], "does not exist"),
        (vec!["consume", "t", "--from", "5", "--count", "1"], "out of range"),
        (vec!["topic", "delete", "missing"], "does not exist"),
    ];
    for (args, expected) in cases {
        let (ok, _, err) = run(&url, &args, None).await;
        assert!(!ok, "{args:?} should fail");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    // A record over the broker's 1 MiB limit.
    let big = format!("{}\n", "x".repeat(2 << 20));
    let (ok, _, err) = run(&url, &["produce", "t"], Some(big.into_bytes())).await;
    assert!(!ok);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // No broker at all.
    let (ok, _, err) = run("http://127.0.0.1:1", &["topic", "list"], None).await;
    assert!(!ok);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    broker.stop().await;
}

/// A `strata consume --group` child process whose printed lines are collected.
fn group_consumer(url: &str, topic: &str, group: &str) -> LineCollector {
    LineCollector::spawn(strata(url).args(["consume", topic, "--group", group, "--from", "earliest"]))
}

async fn describe(url: &str, group: &str) -> Option<GroupDescription> {
    let mut g = GroupsClient::connect(url.to_owned()).await.ok()?;
    g.describe_group(DescribeGroupRequest { group: group.into(), ..Default::default() })
        .await
        .ok()
        .map(|r| r.into_inner())
}

use strata_testkit::wait_until as wait_for;

fn owned_counts(d: &GroupDescription) -> Vec<usize> {
    let mut c: Vec<usize> = d.members.iter().map(|m| m.assigned.iter().map(|tp| tp.partitions.len()).sum()).collect();
    c.sort_unstable();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_group_member_loses_nothing_and_only_uncommitted_messages_repeat() {
    let (broker, url) = broker_with_topic("jobs", "6").await;
    let mut consumers: Vec<LineCollector> = (0..3).map(|_| group_consumer(&url, "jobs", "workers")).collect();
    wait_for("three members with two partitions each", Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            describe(&url, "workers").await.is_some_and(|d| d.state == "Stable" && owned_counts(&d) == vec![2, 2, 2])
        }
    })
    .await;

    // A steady stream of messages (paced so that the kill lands mid-stream).
    let client = broker.client().await;
    let producer = client.producer("jobs").await.expect("producer");
    const TOTAL: usize = 60_000;
    let feeder = tokio::spawn(async move {
        let mut deliveries = Vec::new();
        for chunk in 0..TOTAL / 200 {
            for i in chunk * 200..(chunk + 1) * 200 {
                deliveries.push(producer.enqueue(Message::new(format!("m-{i:06}"))).await.expect("enqueue"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for d in deliveries {
            d.await.expect("acknowledged");
        }
    });
    // Kill the first process while it consumes, once it has committed
    // something, so the test can tell committed (never redelivered) from
    // uncommitted (redelivered) messages.
    let victim = format!("strata-cli/{}", consumers[0].id());
    wait_for("the victim to consume and commit", Duration::from_secs(60), || {
        let url = url.clone();
        let victim = victim.clone();
        let consumed = consumers[0].count();
        async move {
            if consumed < 2_000 {
                return false;
            }
            let Some(d) = describe(&url, "workers").await else { return false };
            let Some(m) = d.members.iter().find(|m| m.client_id == victim) else { return false };
            let mine: Vec<u32> = m.assigned.iter().flat_map(|tp| tp.partitions.clone()).collect();
            !mine.is_empty()
                && d.partitions.iter().filter(|p| mine.contains(&p.partition)).any(|p| p.committed_offset > 0)
        }
    })
    .await;
    let killed_lines = consumers[0].kill9();
    wait_for("its partitions to move to the two others", Duration::from_secs(30), || {
        let url = url.clone();
        async move { describe(&url, "workers").await.is_some_and(|d| d.state == "Stable" && owned_counts(&d) == vec![3, 3]) }
    })
    .await;
    feeder.await.expect("all messages acknowledged");
    let all: BTreeSet<String> = (0..TOTAL).map(|i| format!("m-{i:06}")).collect();
    wait_for("every message to be consumed", Duration::from_secs(120), || {
        let mut seen: BTreeSet<String> = killed_lines.iter().cloned().collect();
        for c in &consumers[1..] {
            seen.extend(c.lines());
        }
        let done = seen.len() == TOTAL;
        async move { done }
    })
    .await;

    // No loss, and the only repeats are messages the killed member printed
    // but had not committed: each survivor printed every value at most once.
    let mut printed_by: HashMap<String, usize> = HashMap::new();
    let mut seen = BTreeSet::new();
    for c in &consumers[1..] {
        let lines = c.lines();
        let distinct: BTreeSet<&String> = lines.iter().collect();
        assert_eq!(distinct.len(), lines.len(), "a survivor never repeats a message");
        for l in lines {
            *printed_by.entry(l.clone()).or_default() += 1;
            seen.insert(l);
        }
    }
    let killed: BTreeSet<String> = killed_lines.iter().cloned().collect();
    assert_eq!(killed.len(), killed_lines.len(), "the killed member never repeated a message");
    seen.extend(killed.iter().cloned());
    assert_eq!(seen, all, "no message lost");
    let duplicates: Vec<&String> = killed.iter().filter(|v| printed_by.contains_key(*v)).collect();
    assert!(printed_by.values().all(|n| *n == 1), "survivors never printed the same message twice between them");
    let mut by_count: BTreeMap<&str, usize> = BTreeMap::new();
    by_count.insert("killed member printed", killed.len());
    by_count.insert("printed again after the kill (consumed, not committed)", duplicates.len());
    println!("group SIGKILL test: {by_count:?}");
    assert!(duplicates.len() < killed.len(), "committed messages were not redelivered");
    drop(consumers);
    broker.stop().await;
}
