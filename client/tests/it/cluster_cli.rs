//! `strata cluster describe [--json]` against a real three-broker cluster
//! (in-process brokers on loopback) and against a standalone broker.

use std::time::Duration;

use strata_testkit::{eventually, free_port};

use super::{TestBroker, strata};

async fn start_member(id: i64, port: u16, peers: &[String]) -> (strata_broker::RunningBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = strata_broker::Config::default();
    config.server.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    config.server.http_listen = "127.0.0.1:0".parse().expect("addr");
    config.storage.data_dir = dir.path().to_path_buf();
    config.cluster.broker_id = Some(id);
    config.cluster.advertised_address = format!("127.0.0.1:{port}");
    config.cluster.peers = peers.to_vec();
    config.validate().expect("valid cluster config");
    (strata_broker::start(config).await.expect("broker starts"), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_describe_lists_every_broker_and_marks_the_leader() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut brokers = Vec::new();
    for (i, port) in ports.iter().enumerate().rev() {
        brokers.push(start_member(i as i64 + 1, *port, &peers).await);
    }
    // Each broker answers with the same three brokers and one leader.
    let mut views = Vec::new();
    for p in &peers {
        let url = format!("http://{p}");
        let view: serde_json::Value = eventually("a formed cluster in --json", Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let (code, out, _) = strata(&url, &["cluster", "describe", "--json"], b"").await;
                let v: serde_json::Value = serde_json::from_str(&out).ok()?;
                (code == 0 && v["leader_id"].is_u64() && v["brokers"].as_array()?.len() == 3).then_some(v)
            }
        })
        .await;
        assert_eq!(view["clustered"], true);
        assert_eq!(view["formation"], "formed");
        views.push(view);
    }
    let leader = views[0]["leader_id"].as_u64().unwrap();
    for v in &views {
        assert_eq!(v["leader_id"].as_u64(), Some(leader));
        let brokers = v["brokers"].as_array().unwrap();
        let ids: Vec<u64> = brokers.iter().map(|b| b["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, [1, 2, 3]);
        for (b, p) in brokers.iter().zip(&peers) {
            assert_eq!(b["address"], p.as_str());
            assert_eq!(b["metadata_leader"], b["id"].as_u64() == Some(leader));
            assert_eq!(b["partitions"], 0, "no topic yet: nothing owned");
        }
    }
    // The table: a header and one row per broker, the leader starred.
    let (code, out, err) = strata(&format!("http://{}", peers[2]), &["cluster", "describe"], b"").await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for w in ["ID", "ADDRESS", "ZONE", "STATE", "LEADER", "PARTITIONS"] {
        assert!(lines[0].contains(w), "{out}");
    }
    let starred: Vec<&&str> = lines[1..].iter().filter(|l| l.contains('*')).collect();
    assert_eq!(starred.len(), 1, "{out}");
    assert!(starred[0].starts_with(&format!("{leader} ")) && starred[0].contains("leader"), "{out}");
    // A topic created through one broker is listed through another.
    let (code, _, err) =
        strata(&format!("http://{}", peers[0]), &["topic", "create", "shared", "--partitions", "2"], b"").await;
    assert_eq!(code, 0, "{err}");
    let url = format!("http://{}", peers[1]);
    eventually("the topic through another broker", Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let (code, out, _) = strata(&url, &["topic", "list"], b"").await;
            (code == 0 && out.contains("shared")).then_some(())
        }
    })
    .await;
    for (running, _dir) in brokers {
        running.shutdown().await;
    }
}

#[tokio::test]
async fn cluster_describe_on_a_standalone_broker_shows_itself() {
    let broker = TestBroker::start().await;
    let (code, out, err) = strata(&broker.url, &["cluster", "describe"], b"").await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[1].contains("standalone") && lines[1].contains('*'), "{out}");
    let (code, out, _) = strata(&broker.url, &["cluster", "describe", "--json"], b"").await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["clustered"], false);
    assert_eq!(v["brokers"].as_array().unwrap().len(), 1);
    broker.stop().await;
}
