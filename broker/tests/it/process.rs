//! The `strata-broker` binary as a child process: SIGKILL while producers
//! run, a corrupted segment tail on disk, SIGTERM draining, and start-up
//! errors printed as one line.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use strata_proto::v1::{CreateTopicRequest, admin_client::AdminClient};
use tokio::sync::Mutex;

use crate::harness::*;

const PARTITIONS: u32 = 4;
const PER_BATCH: u64 = 10;

/// Producers send sequential batches ("p<partition>-<seq>") and record the
/// highest sequence acknowledged per partition. After SIGKILL and restart,
/// each partition must hold exactly seq 0..n in order with n >= acked: every
/// acknowledged record, no gap, no duplicate, no corrupt batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_producing_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments so the kill also lands around segment rolls.
    let mut broker = BrokerProcess::start(dir.path(), &[]);
    let mut admin = AdminClient::new(channel(broker.addr).await);
    admin
        .create_topic(CreateTopicRequest {
            name: "crash".into(),
            partitions: PARTITIONS,
            config: Some(strata_proto::v1::TopicConfig { segment_bytes: Some(64 * 1024), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap();
    let acked: Arc<Mutex<HashMap<u32, u64>>> = Arc::default();
    let total_acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..PARTITIONS {
        let acked = acked.clone();
        let total = total_acked.clone();
        let addr = broker.addr;
        tasks.push(tokio::spawn(async move {
            let mut log = log_client(addr).await;
            let mut seq = 0u64;
            loop {
                let vals: Vec<String> =
                    (seq..seq + PER_BATCH).map(|s| format!("p{p}-{s:08}-{}", "z".repeat(100))).collect();
                match log.produce(produce_req("crash", p, batch_of(&vals))).await {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        assert_eq!(resp.base_offset, seq, "offsets follow the sequence");
                        seq += PER_BATCH;
                        acked.lock().await.insert(p, seq);
                        total.fetch_add(PER_BATCH, Ordering::Relaxed);
                    }
                    Err(_) => return, // the broker is gone
                }
            }
        }));
    }
    // Let a good amount of data be acknowledged, then kill -9 mid-stream.
    eventually("acknowledged records", Duration::from_secs(60), || {
        let n = total_acked.load(Ordering::Relaxed);
        async move { (n >= 4000).then_some(()) }
    })
    .await;
    broker.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().await.clone();

    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut log = log_client(broker.addr).await;
    for p in 0..PARTITIONS {
        let records = read_partition(&mut log, "crash", p, 0).await;
        let want = acked.get(&p).copied().unwrap_or(0);
        assert!(records.len() as u64 >= want, "partition {p}: {} records, {want} acknowledged", records.len());
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.offset, i as u64);
            let v = value(r);
            assert!(v.starts_with(&format!("p{p}-{i:08}-")), "partition {p} offset {i}: {v}");
        }
    }
}

/// Garbage appended to the active segment while the broker is down (a torn
/// write) is cut at restart; the data before it is served intact and new
/// appends continue at the right offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_segment_tail_is_cut_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, mut log) = BrokerProcess::with_topic(dir.path(), "torn", 1).await;
    for i in 0..5 {
        log.produce(produce_req("torn", 0, batch_of(&[format!("ok-{i}")]))).await.unwrap();
    }
    broker.kill9();
    let seg = walk(dir.path()).into_iter().find(|p| p.extension().is_some_and(|e| e == "log")).unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let good_len = bytes.len();
    // Half of a plausible batch header, then random bytes.
    bytes.extend_from_slice(&5u64.to_le_bytes());
    bytes.extend_from_slice(&500u32.to_le_bytes());
    bytes.extend_from_slice(&[0x5A; 37]);
    std::fs::write(&seg, &bytes).unwrap();

    let broker = BrokerProcess::start(dir.path(), &[]);
    assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, good_len, "tail truncated");
    let mut log = log_client(broker.addr).await;
    let got: Vec<String> = read_partition(&mut log, "torn", 0, 0).await.iter().map(value).collect();
    assert_eq!(got, (0..5).map(|i| format!("ok-{i}")).collect::<Vec<_>>());
    let resp = log.produce(produce_req("torn", 0, batch_of(&["after".into()]))).await.unwrap().into_inner();
    assert_eq!(resp.base_offset, 5);
}

/// Committed group offsets are acknowledged only once durable: they survive
/// SIGKILL of the broker, and describe shows lag 0 for a group that consumed
/// and committed everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_sigkill() {
    use strata_proto::v1::{
        CommitOffsetsRequest, DescribeGroupRequest, FetchOffsetsRequest, PartitionOffset, groups_client::GroupsClient,
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, mut log) = BrokerProcess::with_topic(dir.path(), "paid", 2).await;
    for p in 0..2 {
        log.produce(produce_req("paid", p, batch_of(&(0..5).map(|i| format!("v{i}")).collect::<Vec<_>>())))
            .await
            .unwrap();
    }
    let mut groups = GroupsClient::new(channel(broker.addr).await);
    let offsets = (0..2)
        .map(|p| PartitionOffset { topic: "paid".into(), partition: p, offset: 5, metadata: format!("m{p}") })
        .collect();
    groups
        .commit_offsets(CommitOffsetsRequest { group: "billing".into(), offsets, ..Default::default() })
        .await
        .unwrap();
    broker.kill9();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut groups = GroupsClient::new(channel(broker.addr).await);
    let fetched = groups
        .fetch_offsets(FetchOffsetsRequest { group: "billing".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.offsets.len(), 2);
    assert!(fetched.offsets.iter().all(|o| o.offset == 5 && o.metadata == format!("m{}", o.partition)));
    let d = groups
        .describe_group(DescribeGroupRequest { group: "billing".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.state, "Empty");
    assert_eq!(d.partitions.len(), 2);
    assert!(d.partitions.iter().all(|p| p.lag == 0 && p.committed_offset == 5 && p.end_offset == 5), "{d:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, mut log) = BrokerProcess::with_topic(dir.path(), "term", 1).await;
    log.produce(produce_req("term", 0, batch_of(&["before".into()]))).await.unwrap();
    // A following fetch stream must not keep the broker from stopping.
    let _stream = log.fetch(fetch_req("term", 0, 0)).await.unwrap().into_inner();
    let status = Command::new("kill").args(["-TERM", &broker.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = broker.child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut log = log_client(broker.addr).await;
    assert_eq!(read_partition(&mut log, "term", 0, 0).await.len(), 1);
}

#[test]
fn bad_configuration_is_one_line_on_stderr_and_a_failure_exit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("strata.toml");
    std::fs::write(&cfg, "[storage]\ndata_dri = \"/tmp/x\"\n").unwrap();
    let cfg = cfg.to_str().unwrap();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--config", cfg], vec![], "unknown field `data_dri`"),
        (vec!["--config", "/nonexistent/strata.toml"], vec![], "cannot read config file"),
        (vec![], vec![("STRATA_LIMITS_MAX_RECORD_BYTES", "huge")], "not a size"),
        (vec!["--listen", "not-an-address"], vec![], "invalid value"),
    ];
    for (args, envs, expected) in cases {
        let (ok, stderr) = run_broker(&args, &envs);
        assert!(!ok, "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        if !args.contains(&"--listen") {
            assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
            assert!(stderr.starts_with("error: "), "{stderr}");
        }
    }
}

#[test]
fn a_second_broker_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = BrokerProcess::start(dir.path(), &[]);
    let (ok, stderr) = run_broker(
        &["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap()],
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("in use by another strata-broker"), "{stderr}");
}

#[test]
fn print_config_shows_the_embedded_defaults() {
    let out = Command::new(broker_bin()).arg("--print-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("listen = \"127.0.0.1:7070\""), "{text}");
    assert!(text.contains("http_listen = \"127.0.0.1:7071\""), "{text}");
    assert!(text.contains("data_dir = \"./strata-data\""), "{text}");
    assert!(text.contains("durability = \"fsync\""), "{text}");
}
