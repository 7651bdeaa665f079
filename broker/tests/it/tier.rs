//! Tiered storage through the real broker: SIGKILL during an upload, an
//! object-store outage (a TCP proxy in front of moto_server, cut and
//! restored), a corrupted remote object, offsets and timestamps below the
//! local start, and start-up refusals for unusable cold stores.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_proto::v1::{
    CreateTopicRequest, DescribeTopicRequest, ListOffsetsRequest, PartitionDescription, StartPosition, TopicConfig,
    admin_client::AdminClient, list_offsets_request, log_client::LogClient,
};
use tonic::transport::Channel;

use crate::harness::*;

/// Creates tiered topic `name` on `broker`; an admin and a log client.
async fn create_tiered(broker: &TestBroker, name: &str) -> (AdminClient<Channel>, LogClient<Channel>) {
    let mut admin = broker.admin().await;
    admin.create_topic(tiered_topic(name)).await.unwrap();
    (admin, broker.log().await)
}

fn tiered_topic(name: &str) -> CreateTopicRequest {
    CreateTopicRequest {
        name: name.into(),
        partitions: 1,
        config: Some(TopicConfig { segment_bytes: Some(4096), local_retention_ms: Some(1), ..Default::default() }),
        ..Default::default()
    }
}

async fn partition0(admin: &mut AdminClient<Channel>, topic: &str) -> PartitionDescription {
    let d = admin
        .describe_topic(DescribeTopicRequest { name: topic.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    d.partition_details.into_iter().find(|p| p.partition == 0).unwrap()
}

/// Values "<tag>-<n:06>-<padding>", ten per batch: about 1.2 KiB per batch.
fn values(tag: &str, first: u64) -> Vec<String> {
    (first..first + 10).map(|n| format!("{tag}-{n:06}-{}", "p".repeat(100))).collect()
}

/// Every file under `dir`, relative to it.
fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The manifest of a partition in a `file://` cold store, as (base → (next, log size, index size)).
fn manifest(partition_dir: &Path) -> Option<BTreeMap<u64, (u64, u64, u64)>> {
    let text = std::fs::read(partition_dir.join("manifest.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(v["format"], "strata-tier-manifest");
    assert_eq!(v["version"], 1);
    Some(
        v["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let n = |k: &str| s[k].as_u64().unwrap();
                (n("base_offset"), (n("next_offset"), n("log_size"), n("index_size")))
            })
            .collect(),
    )
}

/// The one partition directory of topic `t` in a `file://` cold store.
fn cold_partition_dir(cold: &Path, topic: &str) -> Option<PathBuf> {
    let tenant = cold.join("default");
    let dir = std::fs::read_dir(&tenant)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&format!("{topic}.")))?;
    Some(dir.path().join("0"))
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("strata.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// SIGKILL while a segment is half uploaded (its index object is up, the
/// log object is not, the manifest does not name it), then restart: the
/// orphan is removed, the segment is uploaded again, the manifest is
/// consistent with the objects, and every acknowledged record reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_upload_loses_no_segment_and_leaves_no_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let cold = tempfile::tempdir().unwrap();
    let conf = tempfile::tempdir().unwrap();
    let cold_url = format!("file://{}", cold.path().display());
    // Every put takes 300 ms: a kill lands inside an upload deterministically.
    let slow = write_config(
        conf.path(),
        "[tier]\ninject_put_latency = \"300ms\"\nupload_interval = \"20ms\"\n[storage]\nmaintenance_interval = \"50ms\"\n",
    );
    let mut broker = BrokerProcess::start(dir.path(), &["--cold-store", &cold_url, "--config", &slow]);
    let mut admin = AdminClient::new(channel(broker.addr).await);
    admin.create_topic(tiered_topic("crash")).await.unwrap();
    let mut log = log_client(broker.addr).await;
    let mut acked = 0u64;
    for _ in 0..40 {
        let resp = log.produce(produce_req("crash", 0, batch_of(&values("c", acked)))).await.unwrap().into_inner();
        assert_eq!(resp.base_offset, acked);
        acked += 10;
    }
    // Wait until an index object is up that no manifest names yet: the log
    // object's put is in progress.
    let pdir = eventually("the partition's cold directory", Duration::from_secs(30), || {
        let d = cold_partition_dir(cold.path(), "crash");
        async move { d }
    })
    .await;
    let half = eventually("a half-uploaded segment", Duration::from_secs(60), || {
        // Files first, then the manifest: an index named by a manifest
        // written in between is not mistaken for a half upload.
        let listed = files(&pdir);
        let named = manifest(&pdir).unwrap_or_default();
        let found = listed.into_iter().find_map(|f| {
            let name = f.to_string_lossy().into_owned();
            let base: u64 = name.strip_suffix(".index")?.parse().ok()?;
            (!named.contains_key(&base)).then_some(base)
        });
        async move { found }
    })
    .await;
    broker.kill9();
    let named = manifest(&pdir).unwrap_or_default();
    assert!(!named.contains_key(&half), "segment {half} is not in the manifest at the kill");
    assert!(pdir.join(format!("{half:020}.index")).exists(), "its index object is an orphan");

    // Restart at full speed.
    let broker = BrokerProcess::start(dir.path(), &["--cold-store", &cold_url]);
    let admin = AdminClient::new(channel(broker.addr).await);
    // Caught up: every sealed segment uploaded and gone from the disk.
    let p = eventually("uploads to catch up", Duration::from_secs(60), || {
        let mut admin = admin.clone();
        async move {
            let p = partition0(&mut admin, "crash").await;
            (p.remote_end_offset > half && p.remote_end_offset == p.local_start_offset).then_some(p)
        }
    })
    .await;
    assert_eq!(p.remote_start_offset, 0);
    assert_eq!(p.start_offset, 0);
    // The manifest is consistent: contiguous from 0, sizes match the objects.
    let named = manifest(&pdir).unwrap();
    let mut expect = 0;
    for (&base, &(next, log_size, index_size)) in &named {
        assert_eq!(base, expect, "segments are contiguous");
        assert_eq!(std::fs::metadata(pdir.join(format!("{base:020}.log"))).unwrap().len(), log_size);
        assert_eq!(std::fs::metadata(pdir.join(format!("{base:020}.index"))).unwrap().len(), index_size);
        expect = next;
    }
    assert_eq!(expect, p.remote_end_offset);
    assert!(named.contains_key(&half), "the interrupted segment was uploaded again");
    // No orphan: every object in the store is named by the manifest.
    for f in files(cold.path()) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name == "manifest.json" {
            continue;
        }
        let base: u64 = name.split('.').next().unwrap().parse().unwrap_or_else(|_| panic!("stray object {f:?}"));
        assert!(named.contains_key(&base), "orphaned object {f:?}");
    }
    // Every acknowledged record, in order, most of them from the cold tier.
    let mut log = log_client(broker.addr).await;
    let records = read_partition(&mut log, "crash", 0, 0).await;
    assert!(records.len() as u64 >= acked);
    for (i, r) in records.iter().enumerate() {
        assert!(value(r).starts_with(&format!("c-{i:06}-")), "offset {i}: {}", value(r));
    }
}

/// Object store outage: producing continues on local disk, then at the
/// upload budget produce is refused with RESOURCE_EXHAUSTED and a clear
/// message; nothing acknowledged is lost; once the store is back, uploads
/// catch up by themselves and the local disk drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_outage_fills_the_budget_then_uploads_catch_up() {
    let Some(moto) = Moto::start_or_skip() else { return };
    moto.create_bucket("outage");
    let proxy = Proxy::start(moto.addr).await;
    let budget = 32 * 1024;
    let endpoint = format!("http://{}", proxy.addr);
    let broker = TestBroker::start_with(|c| {
        c.tier.cold_store = "s3://outage/cluster".into();
        c.tier.s3.endpoint = endpoint.clone();
        c.tier.s3.allow_http = true;
        c.tier.s3.region = "us-east-1".into();
        c.tier.s3.access_key_id = "testing".into();
        c.tier.s3.secret_access_key = "testing".into();
        c.tier.max_pending_bytes = strata_broker::config::ByteSize(budget);
        c.tier.upload_interval = strata_broker::config::HumanDuration(Duration::from_millis(20));
        c.tier.max_retry_backoff = strata_broker::config::HumanDuration(Duration::from_millis(300));
        c.tier.request_timeout = strata_broker::config::HumanDuration(Duration::from_secs(2));
        c.tier.connect_timeout = strata_broker::config::HumanDuration(Duration::from_secs(1));
        c.storage.maintenance_interval = strata_broker::config::HumanDuration(Duration::from_millis(50));
    })
    .await;
    let (mut admin, mut log) = create_tiered(&broker, "out").await;
    let mut acked = 0u64;
    for _ in 0..10 {
        log.produce(produce_req("out", 0, batch_of(&values("o", acked)))).await.unwrap();
        acked += 10;
    }
    eventually("first uploads", Duration::from_secs(30), || {
        let mut admin = admin.clone();
        async move { (partition0(&mut admin, "out").await.remote_end_offset > 0).then_some(()) }
    })
    .await;

    proxy.cut();
    let before_cut = acked;
    let deadline = Instant::now() + Duration::from_secs(60);
    let refusal = loop {
        assert!(Instant::now() < deadline, "produce was never refused; {acked} records acknowledged");
        match log.produce(produce_req("out", 0, batch_of(&values("o", acked)))).await {
            Ok(resp) => {
                assert_eq!(resp.into_inner().base_offset, acked);
                acked += 10;
            }
            Err(status) => break status,
        }
    };
    assert_eq!(refusal.code(), tonic::Code::ResourceExhausted, "{refusal:?}");
    assert!(refusal.message().contains("bytes waiting for upload, over the budget of"), "{}", refusal.message());
    assert!(acked > before_cut + 20, "producing continued during the outage: {before_cut} -> {acked}");
    let during = partition0(&mut admin, "out").await;
    assert!(during.local_size_bytes >= budget, "the data waits on local disk: {during:?}");

    proxy.restore();
    // Uploads catch up by themselves and the disk drains; produce works again.
    let after = eventually("uploads to catch up", Duration::from_secs(60), || {
        let mut admin = admin.clone();
        async move {
            let p = partition0(&mut admin, "out").await;
            (p.remote_end_offset == p.local_start_offset && p.remote_end_offset + 40 >= p.end_offset).then_some(p)
        }
    })
    .await;
    assert!(after.local_size_bytes < during.local_size_bytes, "disk drained: {after:?}");
    let resp = eventually("produce accepted again", Duration::from_secs(30), || {
        let mut log = log.clone();
        let batch = batch_of(&values("o", acked));
        async move { log.produce(produce_req("out", 0, batch)).await.ok() }
    })
    .await;
    assert_eq!(resp.into_inner().base_offset, acked);
    acked += 10;
    let records = read_partition(&mut log, "out", 0, 0).await;
    assert_eq!(records.len() as u64, acked, "every acknowledged record, nothing else");
    for (i, r) in records.iter().enumerate() {
        assert!(value(r).starts_with(&format!("o-{i:06}-")), "offset {i}: {}", value(r));
    }
}

/// Reads below the local start come from the cold tier: earliest offsets
/// and timestamp lookups account for it; a corrupted remote object is a
/// DATA_LOSS error, never bad bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_reads_offsets_timestamps_and_corruption() {
    let cold = tempfile::tempdir().unwrap();
    let cold_url = format!("file://{}", cold.path().display());
    let broker = TestBroker::start_with(|c| {
        c.tier.cold_store = cold_url.clone();
        c.tier.upload_interval = strata_broker::config::HumanDuration(Duration::from_millis(20));
        c.storage.maintenance_interval = strata_broker::config::HumanDuration(Duration::from_millis(50));
    })
    .await;
    let (admin, mut log) = create_tiered(&broker, "cold").await;
    let mut first_ts = 0;
    for i in 0..30u64 {
        let resp = log.produce(produce_req("cold", 0, batch_of(&values("k", i * 10)))).await.unwrap().into_inner();
        if i == 3 {
            first_ts = resp.log_append_time_ms;
        }
    }
    let p = eventually("most data only remote", Duration::from_secs(30), || {
        let mut admin = admin.clone();
        async move {
            let p = partition0(&mut admin, "cold").await;
            (p.local_start_offset >= 200 && p.remote_end_offset == p.local_start_offset).then_some(p)
        }
    })
    .await;
    assert_eq!((p.start_offset, p.remote_start_offset), (0, 0), "{p:?}");
    let offsets = log
        .list_offsets(ListOffsetsRequest {
            topic: "cold".into(),
            queries: vec![
                list_offsets_request::Query {
                    partition: 0,
                    spec: Some(list_offsets_request::query::Spec::Position(StartPosition::Earliest as i32)),
                },
                list_offsets_request::Query {
                    partition: 0,
                    spec: Some(list_offsets_request::query::Spec::TimestampMs(first_ts)),
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(offsets.results[0].offset, 0, "earliest is the cold tier's start");
    assert_eq!(offsets.results[0].log_start_offset, 0);
    // Records carry client timestamps at or before their append time, so
    // the first record at or after batch 3's append time is in batch 4 at
    // the latest: far below the local start, found in the cold tier.
    let by_time = &offsets.results[1];
    assert!(by_time.offset <= 40 && by_time.timestamp_ms >= first_ts, "{by_time:?}");
    let all = read_partition(&mut log, "cold", 0, 0).await;
    assert_eq!(all.len(), 300);
    let from_mid = read_partition(&mut log, "cold", 0, 55).await;
    assert_eq!(value(&from_mid[0]), format!("k-000055-{}", "p".repeat(100)), "a fetch inside a remote batch");

    // Flip one byte inside a batch of the first remote segment.
    let pdir = cold_partition_dir(cold.path(), "cold").unwrap();
    let seg = pdir.join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[300] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    // A new broker (empty cache) on the same stores.
    let mut broker = broker;
    broker.running.take().unwrap().shutdown().await;
    let mut config = test_config(broker.dir.path());
    config.tier.cold_store = cold_url.clone();
    broker.running = Some(strata_broker::start(config).await.unwrap());
    let mut log = broker.log().await;
    let mut stream = log.fetch(fetch_req("cold", 0, 0)).await.unwrap().into_inner();
    let err = loop {
        match stream.message().await {
            Ok(Some(resp)) => assert!(resp.records.is_empty(), "no bytes from a corrupt batch"),
            Ok(None) => panic!("stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
    assert!(err.message().contains("CRC"), "{}", err.message());
    // Data past the corrupt segment is still served.
    let tail = read_partition(&mut log, "cold", 0, 250).await;
    assert_eq!(tail.len(), 50);
}

/// An invalid cold-store URL, an unreachable endpoint, a missing bucket:
/// the broker refuses to start with one clear line and a failure exit.
#[test]
fn an_unusable_cold_store_is_one_line_and_a_failure_exit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let closed_endpoint = format!("http://{closed}");
    let moto = Moto::start();
    if let Some(m) = &moto {
        m.create_bucket("exists");
    }
    let moto_endpoint = moto.as_ref().map(|m| format!("http://{}", m.addr));
    let s3_env = |endpoint: &str| {
        vec![
            ("STRATA_TIER_S3_ENDPOINT".to_owned(), endpoint.to_owned()),
            ("STRATA_TIER_S3_ALLOW_HTTP".to_owned(), "true".to_owned()),
            ("STRATA_TIER_S3_REGION".to_owned(), "us-east-1".to_owned()),
            ("STRATA_TIER_S3_ACCESS_KEY_ID".to_owned(), "testing".to_owned()),
            ("STRATA_TIER_S3_SECRET_ACCESS_KEY".to_owned(), "testing".to_owned()),
            ("STRATA_TIER_CONNECT_TIMEOUT".to_owned(), "1s".to_owned()),
            ("STRATA_TIER_REQUEST_TIMEOUT".to_owned(), "3s".to_owned()),
        ]
    };
    type Case<'a> = (&'a str, Vec<(String, String)>, &'a str);
    let mut cases: Vec<Case> = vec![
        ("ftp://example/x", vec![], "invalid cold-store URL \"ftp://example/x\": unsupported scheme"),
        ("s3:///no-bucket", vec![], "names no bucket"),
        ("s3://bucket/prefix", s3_env(&closed_endpoint), "is not usable"),
    ];
    match &moto_endpoint {
        Some(e) => cases.push(("s3://no-such-bucket/p", s3_env(e), "is not usable")),
        None => println!("skipped (missing-bucket case): moto_server not installed"),
    }
    for (url, env, expected) in cases {
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (ok, stderr) = run_broker(
            &["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir", data, "--cold-store", url],
            &envs,
        );
        assert!(!ok, "{url} should be refused");
        assert!(stderr.contains(expected), "{url}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
    }
    // With the bucket there, the same settings start.
    if let Some(e) = &moto_endpoint {
        let env = s3_env(e);
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut child = Command::new(broker_bin())
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir", data])
            .args(["--cold-store", "s3://exists/p"])
            .envs(envs)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(line.starts_with("strata-broker listening"), "{line}");
    }
}

// ---- moto_server ------------------------------------------------------------

use strata_testkit::Moto;
