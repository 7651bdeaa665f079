//! Client integration tests: a real in-process broker on `127.0.0.1:0` with a
//! temporary data directory, the real client over real gRPC, and the real
//! `strata` binary as a child process.

mod acceptance;
mod cluster_cli;
mod group_cli;
mod groups;
mod hygiene;
mod idempotence;
mod isolation;
mod process;
mod queue_producer;
mod queues;
mod quotas;
mod replication;
mod routing;
mod security;
mod tier;
mod tracing;

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use strata_client::{
    Client, ConsumedRecord, Consumer, ConsumerConfig, Durability, ErrorCode, Message, Retention, StartFrom,
    TopicOptions, partition_for_key,
};

struct TestBroker {
    running: Option<strata_broker::RunningBroker>,
    url: String,
    _dir: tempfile::TempDir,
}

impl TestBroker {
    async fn start() -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = strata_broker::Config::default();
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        config.server.http_listen = "127.0.0.1:0".parse().expect("addr");
        config.storage.data_dir = dir.path().to_path_buf();
        let running = strata_broker::start(config).await.expect("broker starts");
        let url = format!("http://{}", running.grpc_addr());
        TestBroker { running: Some(running), url, _dir: dir }
    }

    async fn client(&self) -> Client {
        Client::connect(&self.url).await.expect("connect")
    }

    /// A started broker and a client of it.
    async fn with_client() -> (TestBroker, Client) {
        let broker = TestBroker::start().await;
        let client = broker.client().await;
        (broker, client)
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

async fn read(consumer: &mut Consumer, n: usize) -> Vec<ConsumedRecord> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let record = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("a record within 30 s")
            .expect("consumer still running")
            .expect("no error");
        out.push(record);
    }
    out
}

#[tokio::test]
async fn admin_calls_round_trip_and_errors_keep_their_codes() {
    let (broker, client) = TestBroker::with_client().await;
    let options = TopicOptions {
        retention: Some(Retention::Time(Duration::from_secs(3600))),
        retention_bytes: Some(-1),
        segment_bytes: Some(8 << 20),
        durability: Some(Durability::None),
        ..TopicOptions::default()
    };
    let created = client.create_topic("orders", 3, options).await.unwrap();
    assert_eq!(created.partitions, 3);
    let config = created.config.unwrap();
    assert_eq!(config.retention_ms, Some(3_600_000));
    assert_eq!(config.segment_bytes, Some(8 << 20));
    assert_eq!(config.durability, Durability::None as i32);

    let err = client.create_topic("orders", 3, TopicOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::AlreadyExists), "{err}");
    assert_eq!(err.error_code(), ErrorCode::TopicExists);
    let same = client.ensure_topic("orders", 1, TopicOptions::default()).await.unwrap();
    assert_eq!(same.partitions, 3);

    let topics = client.list_topics().await.unwrap();
    assert!(topics.iter().any(|t| t.name == "orders" && t.partitions == 3));
    let grown = client.add_partitions("orders", 5).await.unwrap();
    assert_eq!(grown.partitions, 5);
    assert_eq!(client.describe_topic("orders").await.unwrap().partition_details.len(), 5);

    client.delete_topic("orders").await.unwrap();
    let err = client.describe_topic("orders").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(err.error_code(), ErrorCode::UnknownTopic);
    let err = client.producer("orders").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    broker.stop().await;
}

#[tokio::test]
async fn produced_messages_are_consumed_in_key_order_with_headers() {
    let (broker, client) = TestBroker::with_client().await;
    client.create_topic("events", 3, TopicOptions::default()).await.unwrap();
    let producer = client.producer("events").await.unwrap();
    let mut acks = Vec::new();
    for i in 0..1000u32 {
        let msg =
            Message::new(format!("{i}")).with_key(format!("k{}", i % 10)).with_header("traceparent", format!("t{i}"));
        acks.push(producer.enqueue(msg).await.unwrap());
    }
    producer.flush().await.unwrap();
    for (i, ack) in acks.into_iter().enumerate() {
        let meta = ack.await.unwrap();
        let key = format!("k{}", i % 10);
        assert_eq!(meta.partition, partition_for_key(key.as_bytes(), 3));
    }
    producer.close().await.unwrap();

    let config = ConsumerConfig { start: StartFrom::Earliest, ..ConsumerConfig::default() };
    let mut consumer = client.consumer("events", config).await.unwrap();
    let records = read(&mut consumer, 1000).await;
    let mut last_per_key: HashMap<Vec<u8>, u32> = HashMap::new();
    for r in &records {
        let value: u32 = String::from_utf8_lossy(&r.value).parse().unwrap();
        let key = r.key.clone().unwrap().to_vec();
        if let Some(prev) = last_per_key.insert(key, value) {
            assert!(prev < value, "order kept per key");
        }
        assert_eq!(r.header("traceparent").unwrap(), format!("t{value}").as_bytes());
    }
    assert_eq!(last_per_key.len(), 10);
    assert!(consumer.is_caught_up());
    broker.stop().await;
}

#[tokio::test]
async fn consumers_start_at_offsets_and_timestamps() {
    let (broker, client) = TestBroker::with_client().await;
    client.create_topic("log", 1, TopicOptions::default()).await.unwrap();
    let producer = client.producer("log").await.unwrap();
    for i in 0..20i64 {
        producer.send(Message::new(format!("v{i}")).with_timestamp(1_000_000 + i * 10)).await.unwrap();
    }
    let by_offset = ConsumerConfig { start: StartFrom::Offset(7), ..ConsumerConfig::default() };
    let mut consumer = client.consumer("log", by_offset).await.unwrap();
    assert_eq!(read(&mut consumer, 1).await[0].offset, 7);

    let by_time = ConsumerConfig { start: StartFrom::Timestamp(1_000_000 + 125), ..ConsumerConfig::default() };
    let mut consumer = client.consumer("log", by_time).await.unwrap();
    let first = &read(&mut consumer, 1).await[0];
    assert_eq!((first.offset, first.timestamp_ms), (13, 1_000_130));
    broker.stop().await;
}

#[tokio::test]
async fn unknown_partitions_are_rejected_per_message() {
    let (broker, client) = TestBroker::with_client().await;
    client.create_topic("p", 2, TopicOptions::default()).await.unwrap();
    let producer = client.producer("p").await.unwrap();
    let err = producer.send(Message::new("x").with_partition(7)).await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::UnknownPartition, "{err}");
    assert!(producer.send(Message::new("fine")).await.is_ok());
    broker.stop().await;
}

/// The `strata` binary with `args`, pointed at `url` through
/// `STRATA_SERVER` (the test's own `STRATA_TENANT` cleared).
fn strata_command(url: &str, args: &[impl AsRef<std::ffi::OsStr>]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
    command.args(args).env("STRATA_SERVER", url).env_remove("STRATA_TENANT");
    command
}

/// Runs the `strata` binary with `stdin`, returning (exit code, stdout, stderr).
async fn strata(url: &str, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut child = strata_command(&url, &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strata");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(&stdin).expect("write stdin");
        drop(input);
        let out = child.wait_with_output().expect("strata runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

#[tokio::test]
async fn the_cli_creates_produces_consumes_and_reports_errors_on_one_line() {
    let broker = TestBroker::start().await;
    let url = broker.url.clone();

    let (code, out, _) = strata(&url, &["topic", "create", "cli", "--partitions", "2", "--retention", "7d"], b"").await;
    assert_eq!((code, out.as_str()), (0, "created topic cli with 2 partitions\n"));

    let input: String = (1..=500).map(|i| format!("{i}\n")).collect();
    let (code, _, err) = strata(&url, &["produce", "cli", "--key", "same"], input.as_bytes()).await;
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = strata(&url, &["consume", "cli", "--from", "earliest", "--count", "500"], b"").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, input, "one key, one partition: order kept");

    let (code, out, _) = strata(&url, &["topic", "list"], b"").await;
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["cli", "2", "fsync"]), "{out}");

    let (code, out, _) = strata(&url, &["topic", "describe", "cli"], b"").await;
    assert_eq!(code, 0);
    assert!(out.contains("PARTITION"), "{out}");

    for (args, expected_code) in [
        (&["topic", "describe", "missing"][..], 1),
        (&["produce", "missing"][..], 1),
        (&["topic", "create", "x", "--retention", "7x"][..], 2),
        (&["topic", "create", "cli"][..], 1),
    ] {
        let (code, out, err) = strata(&url, args, b"").await;
        assert_eq!(code, expected_code, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }

    let (code, out, err) = strata(&url, &["bench", "produce", "--count", "2000", "--size", "100", "--json"], b"").await;
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(report["messages"], 2000);
    assert!(report["msgs_per_sec"].as_f64().unwrap() > 0.0);
    broker.stop().await;
}
