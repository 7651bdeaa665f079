//! The `strata` CLI's group commands as a child process against a real
//! broker: `consume --group` resumes where a previous run stopped, `group
//! list|describe|reset|delete` and their errors.

use strata_client::{Client, GroupConsumerConfig, Message, TopicOptions};

use crate::{TestBroker, strata};

/// v0..v9 in partition 0, one second apart from 2023-11-14T22:13:20Z.
const BASE_MS: i64 = 1_700_000_000_000;

async fn fill(client: &Client, topic: &str) {
    client.create_topic(topic, 1, TopicOptions::default()).await.unwrap();
    let producer = client.producer(topic).await.unwrap();
    for i in 0..10i64 {
        producer.send(Message::new(format!("v{i}")).with_timestamp(BASE_MS + i * 1000)).await.unwrap();
    }
    producer.close().await.unwrap();
}

/// A broker whose topic holds `v0` to `v9` (see [`fill`]), a client and the
/// broker's URL.
async fn broker_with(topic: &str) -> (TestBroker, Client, String) {
    let (broker, client) = TestBroker::with_client().await;
    let url = broker.url.clone();
    fill(&client, topic).await;
    (broker, client, url)
}

fn lines(values: &[&str]) -> String {
    values.iter().map(|v| format!("{v}\n")).collect()
}

/// Runs `strata` and expects success; returns stdout.
async fn ok(url: &str, args: &[&str]) -> String {
    let (code, out, err) = strata(url, args, b"").await;
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

/// Runs `strata` and expects a one-line error; returns it.
async fn fails(url: &str, args: &[&str]) -> String {
    let (code, out, err) = strata(url, args, b"").await;
    assert_eq!(code, 1, "{args:?}: {out} {err}");
    assert!(out.is_empty(), "{args:?}: {out}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    err
}

/// The data rows of a table (header skipped), split into cells.
fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines().skip(1).map(|l| l.split_whitespace().map(str::to_owned).collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_with_a_group_resumes_where_the_previous_run_stopped() {
    let (broker, _client, url) = broker_with("cg").await;
    let consume = ["consume", "cg", "--group", "readers", "--from", "earliest", "--count", "4"];
    assert_eq!(ok(&url, &consume).await, lines(&["v0", "v1", "v2", "v3"]));
    assert_eq!(ok(&url, &consume).await, lines(&["v4", "v5", "v6", "v7"]));
    // --from only applies without a committed offset.
    let latest = ["consume", "cg", "--group", "readers", "--from", "latest", "--count", "2"];
    assert_eq!(ok(&url, &latest).await, lines(&["v8", "v9"]));

    let out = ok(&url, &["group", "describe", "readers"]).await;
    assert!(out.contains("state:    Empty"), "{out}");
    let table = out.split("\n\n").last().unwrap_or_default();
    assert_eq!(rows(table), vec![vec!["cg", "0", "10", "10", "0", "-"]], "{out}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_list_describe_reset_and_delete() {
    let (broker, client, url) = broker_with("orders").await;
    let consume = |n: &'static str| ["consume", "orders", "--group", "billing", "--from", "earliest", "--count", n];
    assert_eq!(ok(&url, &consume("3")).await, lines(&["v0", "v1", "v2"]));

    let out = ok(&url, &["group", "list"]).await;
    assert_eq!(out, "billing  0  Empty\n");

    let out = ok(&url, &["group", "describe", "billing"]).await;
    let table = out.split("\n\n").last().unwrap_or_default();
    assert!(table.starts_with("TOPIC"), "{out}");
    assert_eq!(rows(table), vec![vec!["orders", "0", "3", "10", "7", "-"]], "{out}");

    // Every form of --to; each prints the new offsets.
    for (to, offset, next) in [
        ("earliest", "0", "v0"),
        ("latest", "10", ""),
        ("6", "6", "v6"),
        ("@1700000002000", "2", "v2"),
        ("2023-11-14T22:13:25Z", "5", "v5"),
        // Between two records: the first one after it.
        ("@1700000007500", "8", "v8"),
    ] {
        let out = ok(&url, &["group", "reset", "billing", "--topic", "orders", "--to", to]).await;
        assert_eq!(rows(&out), vec![vec!["orders", "0", offset]], "--to {to}: {out}");
        if !next.is_empty() {
            assert_eq!(ok(&url, &consume("1")).await, lines(&[next]), "--to {to}");
        }
    }
    let out = ok(&url, &["group", "reset", "billing", "--topic", "orders", "--to", "4", "--partition", "0"]).await;
    assert_eq!(rows(&out), vec![vec!["orders", "0", "4"]]);

    // Refused while a member is active, unless --force.
    let mut member = client.group_consumer("billing", ["orders"], GroupConsumerConfig::default()).await.unwrap();
    let out = ok(&url, &["group", "list"]).await;
    assert_eq!(out, "billing  1  Stable\n");
    let out = ok(&url, &["group", "describe", "billing"]).await;
    assert!(out.contains("MEMBER"), "{out}");
    let err = fails(&url, &["group", "reset", "billing", "--topic", "orders", "--to", "earliest"]).await;
    assert!(err.contains("--force"), "{err}");
    let err = fails(&url, &["group", "delete", "billing"]).await;
    assert!(err.contains("consumers"), "{err}");
    let out = ok(&url, &["group", "reset", "billing", "--topic", "orders", "--to", "earliest", "--force"]).await;
    assert_eq!(rows(&out), vec![vec!["orders", "0", "0"]]);
    // The member was removed; it rejoins in the background until closed.
    member.close().await.unwrap();
    assert_eq!(ok(&url, &consume("2")).await, lines(&["v0", "v1"]));

    let out = ok(&url, &["group", "delete", "billing"]).await;
    assert_eq!(out, "deleted group billing\n");
    let err = fails(&url, &["group", "describe", "billing"]).await;
    assert!(err.contains("billing"), "{err}");
    assert_eq!(ok(&url, &["group", "list"]).await, "");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_input_is_a_one_line_error() {
    let (broker, _client, url) = broker_with("t").await;
    fails(&url, &["group", "describe", "nobody"]).await;
    fails(&url, &["group", "delete", "nobody"]).await;
    let err = fails(&url, &["group", "reset", "g", "--topic", "missing", "--to", "earliest"]).await;
    assert!(err.contains("missing"), "{err}");
    let err = fails(&url, &["group", "reset", "g", "--topic", "t", "--to", "999"]).await;
    assert!(err.contains("999"), "{err}");
    fails(&url, &["group", "reset", "g", "--topic", "t", "--to", "0", "--partition", "5"]).await;
    fails(&url, &["consume", "missing", "--group", "g", "--count", "1"]).await;
    fails(&url, &["consume", "t", "--group", "bad name", "--count", "1"]).await;
    // Usage errors exit 2, still on one line.
    let (code, _, err) = strata(&url, &["group", "reset", "g", "--topic", "t", "--to", "someday"], b"").await;
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_group_reports_both_rates_and_reads_every_message() {
    let broker = TestBroker::start().await;
    let url = broker.url.clone();
    for extra in [&[][..], &["--backlog"][..]] {
        let mut args = vec!["bench", "group", "--duration", "500ms", "--size", "100", "--partitions", "2", "--json"];
        args.extend_from_slice(extra);
        let out = ok(&url, &args).await;
        let report: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
        assert_eq!(report["benchmark"], "group", "{report}");
        assert_eq!((report["producers"].as_u64(), report["consumers"].as_u64()), (Some(2), Some(2)), "{report}");
        let produced = report["messages"].as_u64().unwrap();
        assert!(produced > 0, "{report}");
        // Nothing is lost; a rebalance may repeat records, never skip them.
        assert!(report["consumed_messages"].as_u64().unwrap() >= produced, "{report}");
        assert!(report["msgs_per_sec"].as_f64().unwrap() > 0.0, "{report}");
        assert!(report["consume_msgs_per_sec"].as_f64().unwrap() > 0.0, "{report}");
        assert_eq!(report["backlog"].as_bool(), Some(!extra.is_empty()), "{report}");
    }
    // The temporary topic and group are gone afterwards.
    let client = broker.client().await;
    assert!(client.list_topics().await.unwrap().iter().all(|t| !t.name.starts_with("bench-")));
    assert!(client.list_groups().await.unwrap().iter().all(|g| !g.group.starts_with("bench-")));
    broker.stop().await;
}
