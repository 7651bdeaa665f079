//! `/metrics` after a known workload: the counters and gauges match it.

use std::collections::HashMap;

use bytes::Bytes;
use strata_proto::v1::{
    AckRequest, CreateQueueRequest, CreateTopicRequest, NackRequest, OutgoingMessage, QueueConfig, ReceiveRequest,
    ResetOffsetsRequest, SendRequest, groups_client::GroupsClient, queues_client::QueuesClient, reset_offsets_request,
};

use crate::harness::*;
use strata_testkit::http_get;

fn recv(queue: &str, max_messages: u32) -> ReceiveRequest {
    ReceiveRequest {
        tenant: String::new(),
        queue: queue.into(),
        max_messages,
        wait_ms: 1000,
        visibility_timeout_ms: None,
        auto_ack: false,
    }
}

fn create_req(name: impl Into<String>, config: QueueConfig) -> CreateQueueRequest {
    CreateQueueRequest { tenant: String::new(), name: name.into(), config: Some(config), if_not_exists: false }
}

/// Parses the Prometheus text format into `name{labels}` -> value.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad metrics line {line:?}"));
        out.insert(series.to_owned(), value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}")));
    }
    out
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or_else(|| {
        let mut names: Vec<_> = m.keys().filter(|k| k.starts_with(series.split('{').next().unwrap())).collect();
        names.sort();
        panic!("no series {series}; similar: {names:?}")
    })
}

#[tokio::test]
async fn metrics_match_a_known_workload() {
    let b = TestBroker::start_with(|c| c.limits.max_queue_messages = 10).await;
    let mut admin = b.admin().await;
    admin
        .create_topic(CreateTopicRequest {
            tenant: String::new(),
            name: "m".into(),
            partitions: 2,
            config: None,
            if_not_exists: false,
            replication_factor: 0,
        })
        .await
        .unwrap();
    let mut log = b.log().await;
    let mut bytes_in = 0;
    for (p, n) in [(0, 10), (0, 10), (0, 10), (1, 5)] {
        let batch = batch_of(&(0..n).map(|i| format!("v{i}")).collect::<Vec<_>>());
        bytes_in += batch.len();
        log.produce(produce_req("m", p, batch)).await.unwrap();
    }
    let read = read_partition(&mut log, "m", 0, 0).await;
    assert_eq!(read.len(), 30);

    let mut q = QueuesClient::new(channel(b.addr()).await);
    q.create_queue(create_req("jobs", QueueConfig::default())).await.unwrap();
    let msgs = (0..7).map(|i| OutgoingMessage { body: Bytes::from(format!("j{i}")), ..Default::default() }).collect();
    q.send(SendRequest { tenant: String::new(), queue: "jobs".into(), messages: msgs }).await.unwrap();
    let got = q.receive(recv("jobs", 10)).await.unwrap().into_inner().messages;
    assert_eq!(got.len(), 7);
    let receipts = got[..4].iter().map(|m| m.receipt.unwrap()).collect();
    q.ack(AckRequest { tenant: String::new(), queue: "jobs".into(), receipts }).await.unwrap();
    // One message given back and received again: a redelivery.
    q.nack(NackRequest {
        tenant: String::new(),
        queue: "jobs".into(),
        receipts: vec![got[4].receipt.unwrap()],
        delay_ms: Some(0),
    })
    .await
    .unwrap();
    let again = q.receive(recv("jobs", 10)).await.unwrap().into_inner().messages;
    assert_eq!(again.len(), 1);
    // Over the limit of 10 messages per queue: refused and counted.
    let more = (0..8).map(|i| OutgoingMessage { body: Bytes::from(format!("x{i}")), ..Default::default() }).collect();
    let full = q.send(SendRequest { tenant: String::new(), queue: "jobs".into(), messages: more }).await.unwrap_err();
    assert_eq!(full.code(), tonic::Code::ResourceExhausted, "{}", full.message());
    // A dead letter.
    for (name, config) in [
        ("parked", QueueConfig::default()),
        (
            "fragile",
            QueueConfig { max_deliveries: Some(1), dead_letter_queue: Some("parked".into()), ..Default::default() },
        ),
    ] {
        q.create_queue(create_req(name, config)).await.unwrap();
    }
    q.send(SendRequest {
        tenant: String::new(),
        queue: "fragile".into(),
        messages: vec![OutgoingMessage { body: Bytes::from_static(b"f"), ..Default::default() }],
    })
    .await
    .unwrap();
    let f = q.receive(recv("fragile", 1)).await.unwrap().into_inner().messages;
    q.nack(NackRequest {
        tenant: String::new(),
        queue: "fragile".into(),
        receipts: vec![f[0].receipt.unwrap()],
        delay_ms: None,
    })
    .await
    .unwrap();
    eventually("the dead letter", std::time::Duration::from_secs(10), || {
        let body = http_get(b.http_addr(), "/metrics");
        async move {
            body.await
                .contains("strata_queue_messages_dead_lettered_total{tenant=\"default\",queue=\"fragile\"} 1")
                .then_some(())
        }
    })
    .await;

    let mut groups = GroupsClient::new(channel(b.addr()).await);
    groups
        .reset_offsets(ResetOffsetsRequest {
            tenant: String::new(),
            group: "g".into(),
            topic: "m".into(),
            to: Some(reset_offsets_request::To::Offset(10)),
            force: false,
            partitions: vec![0],
        })
        .await
        .unwrap();

    let body = http_get(b.http_addr(), "/metrics").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let text = body.split_once("\r\n\r\n").unwrap().1;
    let m = parse(text);
    let t = r#"{tenant="default",topic="m"}"#;
    assert_eq!(get(&m, &format!("strata_topic_messages_in_total{t}")), 35.0);
    assert_eq!(get(&m, &format!("strata_topic_in_bytes_total{t}")), bytes_in as f64);
    assert_eq!(get(&m, &format!("strata_topic_messages_out_total{t}")), 30.0);
    assert_eq!(get(&m, r#"strata_log_end_offset{tenant="default",topic="m",partition="0"}"#), 30.0);
    assert_eq!(get(&m, r#"strata_log_end_offset{tenant="default",topic="m",partition="1"}"#), 5.0);
    let jq = r#"{tenant="default",queue="jobs"}"#;
    assert_eq!(get(&m, &format!("strata_queue_messages_sent_total{jq}")), 7.0);
    assert_eq!(get(&m, &format!("strata_queue_deliveries_total{jq}")), 8.0);
    assert_eq!(get(&m, &format!("strata_queue_redeliveries_total{jq}")), 1.0);
    assert_eq!(get(&m, r#"strata_limit_rejections_total{reason="queue_full"}"#), 1.0);
    assert_eq!(get(&m, &format!("strata_queue_messages_acked_total{jq}")), 4.0);
    assert_eq!(get(&m, &format!("strata_queue_in_flight_messages{jq}")), 3.0);
    assert_eq!(get(&m, &format!("strata_queue_visible_messages{jq}")), 0.0);
    // 30 - 10 on partition 0, plus partition 1 (no commit: all 5 records).
    assert_eq!(get(&m, r#"strata_consumer_group_lag{tenant="default",group="g",topic="m"}"#), 25.0);
    assert_eq!(get(&m, r#"strata_rpc_duration_seconds_count{method="/strata.v1.Log/Produce"}"#), 4.0);
    assert!(text.contains("# TYPE strata_rpc_duration_seconds histogram"), "{text}");

    // The Grafana dashboard shipped in the chart only queries metrics that exist.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/strata-operator/dashboards/strata-brokers.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let mut rest = target["expr"].as_str().unwrap();
            while let Some(i) = rest.find("strata_") {
                let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[i + name.len()..];
                names.insert(name);
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let family = ["_bucket", "_total"].iter().fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "the dashboard uses {name}, which /metrics does not export"
        );
    }
}
