//! Clustered brokers as real child processes on loopback: formation from
//! seed lists started in any order, catalog writes replicated to every
//! broker (with their partition directories), failover of the metadata
//! leader after SIGKILL, a restarted broker catching up, writes without a
//! majority failing with UNAVAILABLE, an isolated broker (peers reach each
//! other through proxies that are cut) refusing writes and rejoining without
//! a divergent catalog, and bad cluster flags refused.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_proto::batch::{BatchBuilder, Compression};
use strata_proto::v1::{
    CreateTenantRequest, CreateTopicRequest, DescribeClusterRequest, DescribeClusterResponse, DescribeTopicRequest,
    ErrorCode, GetMetadataRequest, ListTenantsRequest, ListTopicsRequest, admin_client::AdminClient,
};
use strata_testkit::{eventually, free_port, http, wait_until};
use tonic::transport::Channel;

use crate::harness::{BrokerProcess, Proxy, broker_bin, log_client, now_ms, produce_req};

pub(crate) struct Member {
    pub(crate) id: u64,
    port: u16,
    pub(crate) dir: tempfile::TempDir,
    process: Option<BrokerProcess>,
    pub(crate) http: Option<SocketAddr>,
    write_timeout: &'static str,
    snapshot_every: &'static str,
    /// Where peers reach this broker (a proxy in front of it), when not its
    /// own port.
    pub(crate) advertise: Option<SocketAddr>,
    /// `cluster.zone_file`, when set.
    pub(crate) zone_file: Option<std::path::PathBuf>,
}

impl Member {
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub(crate) fn advertised(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.addr())
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.as_ref().unwrap().child.id()
    }

    pub(crate) fn start(&mut self, peers: &str) {
        let listen = self.addr().to_string();
        let advertised = self.advertised().to_string();
        let mut child = Command::new(broker_bin())
            .args(["--listen", &listen, "--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.dir.path())
            .args(["--broker-id", &self.id.to_string(), "--advertised-address", &advertised, "--peers", peers])
            .env("STRATA_LOG_LEVEL", "warn")
            .env("STRATA_CLUSTER_WRITE_TIMEOUT", self.write_timeout)
            .env("STRATA_CLUSTER_SNAPSHOT_EVERY", self.snapshot_every)
            .envs(self.zone_file.iter().map(|f| ("STRATA_CLUSTER_ZONE_FILE", f.as_os_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("unexpected first line from broker {}: {line:?}", self.id))
                .parse()
                .unwrap()
        };
        assert_eq!(field("grpc="), self.addr());
        self.http = Some(field("http="));
        self.process = Some(BrokerProcess { child, addr: self.addr() });
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
    }

    pub(crate) fn topic_dirs(&self, topic: &str) -> Vec<String> {
        let dir = self.dir.path().join("topics").join("default");
        let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
        let mut found = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{topic}.")) {
                let mut parts: Vec<String> = std::fs::read_dir(e.path())
                    .unwrap()
                    .flatten()
                    .map(|p| p.file_name().to_string_lossy().into_owned())
                    .collect();
                parts.sort();
                found.extend(parts.into_iter().map(|p| format!("{name}/{p}")));
            }
        }
        found
    }
}

pub(crate) fn members(n: u64, write_timeout: &'static str) -> Vec<Member> {
    (1..=n)
        .map(|id| Member {
            id,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            process: None,
            http: None,
            write_timeout,
            snapshot_every: "5000",
            advertise: None,
            zone_file: None,
        })
        .collect()
}

pub(crate) async fn admin(addr: SocketAddr) -> Option<AdminClient<Channel>> {
    let ch = Channel::from_shared(format!("http://{addr}")).unwrap().connect_timeout(Duration::from_secs(1));
    ch.connect().await.ok().map(AdminClient::new)
}

pub(crate) async fn describe(addr: SocketAddr) -> Option<DescribeClusterResponse> {
    let mut c = admin(addr).await?;
    c.describe_cluster(DescribeClusterRequest {}).await.ok().map(|r| r.into_inner())
}

/// (leader, sorted (id, address, state)) as one broker reports it.
pub(crate) type Summary = (u64, Vec<(u64, String, String)>);

fn summary(v: &DescribeClusterResponse) -> Option<Summary> {
    let mut brokers: Vec<_> = v.brokers.iter().map(|b| (b.id, b.address.clone(), b.state.clone())).collect();
    brokers.sort();
    Some((v.leader_id?, brokers))
}

/// Waits until every running member reports the same leader and `n` voting
/// brokers.
pub(crate) async fn agreed(members: &[&Member], n: usize, timeout: Duration) -> Summary {
    eventually("the brokers to agree on one cluster with a leader", timeout, || async {
        let mut seen: Option<Summary> = None;
        for m in members {
            let s = summary(&describe(m.addr()).await?)?;
            // One leader, and every other broker a voting follower (a broker
            // just admitted is a learner until the leader promotes it).
            let voters = s.1.iter().all(|b| b.2 == "leader" || b.2 == "follower");
            if s.1.len() != n || !voters || s.1.iter().filter(|b| b.2 == "leader").count() != 1 {
                return None;
            }
            match &seen {
                Some(prev) if *prev != s => return None,
                _ => seen = Some(s),
            }
        }
        seen
    })
    .await
}

/// Creates an unreplicated topic (these tests are about the catalog and
/// placement; `replication.rs` covers replicated partitions).
pub(crate) async fn create_topic(addr: SocketAddr, name: &str, partitions: u32) -> Result<(), tonic::Status> {
    let mut c = admin(addr).await.ok_or_else(|| tonic::Status::unavailable("connect"))?;
    let req = CreateTopicRequest { name: name.into(), partitions, replication_factor: 1, ..Default::default() };
    c.create_topic(req).await.map(|_| ())
}

/// Each partition's owner id, as broker `addr` reports it (metadata RPC).
pub(crate) async fn owners(addr: SocketAddr, topic: &str) -> Option<Vec<(Option<u64>, String)>> {
    let mut c = admin(addr).await?;
    let req = GetMetadataRequest { topics: vec![topic.into()], ..Default::default() };
    let m = c.get_metadata(req).await.ok()?.into_inner();
    Some(m.topics.first()?.partitions.iter().map(|p| (p.owner_id, p.owner_address.clone())).collect())
}

pub(crate) async fn topic_partitions(addr: SocketAddr, name: &str) -> Option<u32> {
    let mut c = admin(addr).await?;
    let r = c.describe_topic(DescribeTopicRequest { name: name.into(), ..Default::default() }).await.ok()?;
    Some(r.into_inner().partitions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_form_one_cluster_replicate_the_catalog_and_fail_over() {
    let mut members = members(3, "5s");
    let peers = members.iter().map(|m| m.addr().to_string()).collect::<Vec<_>>().join(",");
    // Started in shuffled order: the broker that forms the cluster (id 1)
    // comes last, after the others already probed for it.
    for i in [2, 1, 0] {
        members[i].start(&peers);
    }
    let all: Vec<&Member> = members.iter().collect();
    let (leader, brokers) = agreed(&all, 3, Duration::from_secs(30)).await;
    assert_eq!(brokers.iter().map(|b| b.0).collect::<Vec<_>>(), [1, 2, 3]);
    for m in &members {
        let (id, addr, _) = &brokers[(m.id - 1) as usize];
        assert_eq!((*id, addr.as_str()), (m.id, m.addr().to_string().as_str()));
        let http_addr = m.http.unwrap();
        wait_until("/readyz 200", Duration::from_secs(10), || async move {
            http(http_addr, "GET /readyz HTTP/1.1").is_some_and(|l| l.contains(" 200"))
        })
        .await;
    }
    println!("formed one cluster; metadata leader is broker {leader}");

    // A topic created through broker 1 exists on all three, with its partition directories.
    create_topic(members[0].addr(), "orders", 3).await.unwrap();
    assert_eq!(topic_partitions(members[0].addr(), "orders").await, Some(3));
    for m in &members[1..] {
        let addr = m.addr();
        wait_until("the topic on every broker", Duration::from_secs(10), || async move {
            topic_partitions(addr, "orders").await == Some(3)
        })
        .await;
    }
    // Placement: one partition each (least loaded, then lowest id), the
    // same answer from every broker, and each broker opened only its own.
    let expected: Vec<(Option<u64>, String)> = members.iter().map(|m| (Some(m.id), m.addr().to_string())).collect();
    for m in &members {
        assert_eq!(owners(m.addr(), "orders").await.unwrap(), expected, "metadata from broker {}", m.id);
        let dirs = m.topic_dirs("orders");
        assert_eq!(dirs.len(), 1, "broker {}: {dirs:?}", m.id);
        assert!(dirs[0].ends_with(&format!("/{}", m.id - 1)), "broker {}: {dirs:?}", m.id);
    }
    // A producer id issued through broker 1 is known to brokers 2 and 3,
    // which serve their own partitions.
    let mut log1 = log_client(members[0].addr()).await;
    let init = strata_proto::v1::InitProducerRequest { tenant: String::new(), producer_name: String::new() };
    let producer = log1.init_producer(init).await.unwrap().into_inner();
    for m in &members[1..] {
        let mut bb = BatchBuilder::new(Compression::None);
        bb.set_producer(producer.producer_id, producer.producer_epoch as i16, 0);
        bb.push(now_ms(), None, Some(b"idempotent"), &[]);
        let mut log = log_client(m.addr()).await;
        let p = (m.id - 1) as u32;
        let r = log.produce(produce_req("orders", p, bb.finish().unwrap())).await.unwrap().into_inner();
        assert_eq!(r.base_offset, 0, "broker {}", m.id);
    }
    // A produce to a broker that does not own the partition: NOT_LEADER
    // naming the owner and its address; nothing stored.
    let mut log2 = log_client(members[1].addr()).await;
    let mut bb = BatchBuilder::new(Compression::None);
    bb.push(now_ms(), None, Some(b"misrouted"), &[]);
    let err = log2.produce(produce_req("orders", 0, bb.finish().unwrap())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(strata_proto::error_code(&err), ErrorCode::NotLeader, "{err:?}");
    let info = strata_proto::error_info(&err).unwrap();
    assert_eq!(info.resource, "default/orders/0");
    assert_eq!(info.metadata.get("owner_id").map(String::as_str), Some("1"), "{info:?}");
    assert_eq!(info.metadata.get("owner_address"), Some(&members[0].addr().to_string()), "{info:?}");
    let mut log1b = log_client(members[0].addr()).await;
    let ends = log1b
        .list_offsets(strata_proto::v1::ListOffsetsRequest {
            topic: "orders".into(),
            queries: vec![strata_proto::v1::list_offsets_request::Query {
                partition: 0,
                spec: Some(strata_proto::v1::list_offsets_request::query::Spec::Position(
                    strata_proto::v1::StartPosition::Latest as i32,
                )),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ends.results[0].offset, 0, "the misrouted batch was not stored anywhere");
    // Six partitions through broker 1: 2/2/2, and describe shows owners.
    create_topic(members[0].addr(), "six", 6).await.unwrap();
    for m in &members {
        let addr = m.addr();
        let six = eventually("the six partitions' owners on every broker", Duration::from_secs(10), || async move {
            owners(addr, "six").await.filter(|o| o.len() == 6)
        })
        .await;
        for id in 1..=3 {
            assert_eq!(six.iter().filter(|o| o.0 == Some(id)).count(), 2, "broker {}: {six:?}", m.id);
        }
        let mut c = admin(addr).await.unwrap();
        let d = c.describe_topic(DescribeTopicRequest { name: "six".into(), ..Default::default() }).await.unwrap();
        let d = d.into_inner();
        let shown: Vec<Option<u64>> = d.partition_details.iter().map(|p| p.owner).collect();
        assert_eq!(shown, six.iter().map(|o| o.0).collect::<Vec<_>>());
        assert!(d.partition_details.iter().all(|p| p.elsewhere == (p.owner != Some(m.id))));
        let v = describe(addr).await.unwrap();
        assert!(v.brokers.iter().all(|b| b.partitions == Some(3)), "3 + 6 partitions on 3 brokers: {v:?}");
    }
    // The same name again: the replicated outcome is the catalog's refusal.
    let err = create_topic(members[1].addr(), "orders", 1).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");

    // SIGKILL the metadata leader: a new one within 5 s.
    let li = (leader - 1) as usize;
    members[li].kill9();
    let killed_at = Instant::now();
    let survivors: Vec<&Member> = members.iter().filter(|m| m.id != leader).collect();
    let new_leader = eventually("a new metadata leader", Duration::from_secs(15), || async {
        for m in &survivors {
            if let Some(l) = describe(m.addr()).await.and_then(|v| v.leader_id)
                && l != leader
            {
                return Some(l);
            }
        }
        None
    })
    .await;
    let failover = killed_at.elapsed();
    println!("metadata failover: broker {leader} killed, broker {new_leader} leads after {failover:?}");
    assert!(failover < Duration::from_secs(5), "failover took {failover:?}");

    // Admin calls on the survivors work (through a follower: forwarded).
    let follower = survivors.iter().find(|m| m.id != new_leader).unwrap();
    create_topic(follower.addr(), "after-failover", 2).await.unwrap();
    for m in &survivors {
        let addr = m.addr();
        wait_until("the new topic on the survivors", Duration::from_secs(10), || async move {
            topic_partitions(addr, "after-failover").await == Some(2)
        })
        .await;
    }

    // The killed broker restarts with the same id and catches up.
    members[li].start(&peers);
    let restarted = members[li].addr();
    wait_until("the restarted broker to catch up", Duration::from_secs(20), || async move {
        topic_partitions(restarted, "after-failover").await == Some(2)
    })
    .await;
    let placed = owners(restarted, "after-failover").await.unwrap();
    let mine = placed.iter().filter(|o| o.0 == Some(members[li].id)).count();
    assert_eq!(members[li].topic_dirs("after-failover").len(), mine, "{placed:?}");
    let all: Vec<&Member> = members.iter().collect();
    let (_, brokers) = agreed(&all, 3, Duration::from_secs(20)).await;
    assert_eq!(brokers.len(), 3);

    // Without a majority a write fails with UNAVAILABLE, in bounded time.
    let (l2, _) = agreed(&all, 3, Duration::from_secs(20)).await;
    let keep = members.iter().position(|m| m.id != l2).unwrap();
    for (i, m) in members.iter_mut().enumerate() {
        if i != keep {
            m.kill9();
        }
    }
    let started = Instant::now();
    let err = create_topic(members[keep].addr(), "no-quorum", 1).await.unwrap_err();
    let waited = started.elapsed();
    println!("write without a majority: {:?} after {waited:?}", err.code());
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(waited < Duration::from_secs(15), "waited {waited:?}");
    let http_addr = members[keep].http.unwrap();
    wait_until("/readyz 503 without a leader", Duration::from_secs(10), || async move {
        http(http_addr, "GET /readyz HTTP/1.1").is_some_and(|l| l.contains(" 503"))
    })
    .await;
}

/// The first formation waits for every seed and for distinct ids; until
/// then there is no leader, `/readyz` is 503 and writes fail UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_formation_needs_every_seed_and_distinct_ids() {
    let mut members = members(3, "1s");
    let peers = members.iter().map(|m| m.addr().to_string()).collect::<Vec<_>>().join(",");
    members[0].start(&peers);
    members[1].start(&peers);
    let (first, missing) = (members[0].addr(), members[2].addr().to_string());
    let formation = |addr: SocketAddr| async move { describe(addr).await.map(|v| v.formation).unwrap_or_default() };
    wait_until("broker 1 to wait for the missing seed", Duration::from_secs(20), || {
        let missing = missing.clone();
        async move {
            let f = formation(first).await;
            f.contains(&missing) && f.contains("not reachable")
        }
    })
    .await;
    let v = describe(first).await.unwrap();
    assert_eq!(v.leader_id, None, "{v:?}");
    let http_addr = members[0].http.unwrap();
    assert!(http(http_addr, "GET /readyz HTTP/1.1").is_some_and(|l| l.contains(" 503")));
    let err = create_topic(members[1].addr(), "early", 1).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    // The third seed comes up with broker 2's id: still no cluster.
    members[2].id = 2;
    members[2].start(&peers);
    wait_until("broker 1 to report the id clash", Duration::from_secs(20), || async move {
        formation(first).await.contains("both have id 2")
    })
    .await;
    assert_eq!(describe(first).await.unwrap().leader_id, None);
    let err = create_topic(first, "clash", 1).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    // With its own id the cluster forms, exactly once.
    members[2].kill9();
    members[2].id = 3;
    members[2].start(&peers);
    let all: Vec<&Member> = members.iter().collect();
    let (leader, brokers) = agreed(&all, 3, Duration::from_secs(30)).await;
    assert_eq!(brokers.iter().map(|b| b.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(leader, 1, "the lowest id formed the cluster and leads its first term");
    for m in &members {
        assert_eq!(describe(m.addr()).await.unwrap().formation, "formed");
    }
    create_topic(members[2].addr(), "formed", 1).await.unwrap();
}

fn refused(args: &[&str], dir: &Path) -> String {
    let out = Command::new(broker_bin())
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: one line on stderr, got {stderr:?}");
    stderr
}

#[test]
fn bad_cluster_flags_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let e = refused(&["--broker-id", "1", "--advertised-address", "a:1", "--peers", "a:1,b:2,a:1"], dir.path());
    assert!(e.contains("own address a:1 twice"), "{e}");
    let e = refused(&["--broker-id", "1", "--advertised-address", "a:1", "--peers", "b:2,c:3,b:2"], dir.path());
    assert!(e.contains("names b:2 twice"), "{e}");
    let e = refused(&["--broker-id", "70000", "--advertised-address", "a:1", "--peers", "b:2"], dir.path());
    assert!(e.contains("between 0 and 65535"), "{e}");
    let e = refused(&["--broker-id", "-1", "--advertised-address", "a:1", "--peers", "b:2"], dir.path());
    assert!(e.contains("between 0 and 65535"), "{e}");
    let e = refused(&["--broker-id", "1", "--peers", "b:2"], dir.path());
    assert!(e.contains("needs cluster.advertised_address"), "{e}");
    let e = refused(&["--broker-id", "1", "--advertised-address", "a:1", "--peers", "b"], dir.path());
    assert!(e.contains("not HOST:PORT"), "{e}");
}

/// With frequent snapshots the leader purges its log; a broker that was down
/// meanwhile catches up from a snapshot (its log never holds the early
/// entries) and opens the partitions it owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_broker_catches_up_from_a_snapshot() {
    let mut members = members(3, "5s");
    let peers = members.iter().map(|m| m.addr().to_string()).collect::<Vec<_>>().join(",");
    for m in members.iter_mut() {
        m.snapshot_every = "5";
        m.start(&peers);
    }
    let all: Vec<&Member> = members.iter().collect();
    let (leader, _) = agreed(&all, 3, Duration::from_secs(30)).await;
    let lagging = members.iter().position(|m| m.id != leader).unwrap();
    members[lagging].kill9();
    let via = members.iter().find(|m| m.process.is_some()).unwrap().addr();
    for i in 0..20 {
        create_topic(via, &format!("early-{i:02}"), 1).await.unwrap();
    }
    members[lagging].start(&peers);
    let addr = members[lagging].addr();
    wait_until("the lagging broker to catch up", Duration::from_secs(30), || async move {
        topic_partitions(addr, "early-19").await == Some(1) && topic_partitions(addr, "early-00").await == Some(1)
    })
    .await;
    // It opened exactly the partitions placement gave it (some of them).
    let me = members[lagging].id;
    let mut mine = 0;
    for i in 0..20 {
        let topic = format!("early-{i:02}");
        let owned = owners(addr, &topic).await.unwrap().iter().filter(|o| o.0 == Some(me)).count();
        mine += owned;
        assert_eq!(members[lagging].topic_dirs(&topic).len(), owned, "{topic}");
    }
    assert!(mine > 0, "broker {me} owns none of the 20 topics");
    // The early entries reached it inside a snapshot (the leader had
    // purged them from its log).
    let http = members[lagging].http.unwrap();
    let metrics = strata_testkit::http_get(http, "/metrics").await;
    let installed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("strata_metadata_snapshots_installed_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(installed.is_some_and(|n| n >= 1.0), "no snapshot installed: {installed:?}");
}

/// Everything a broker reports about the catalog: its cluster view, its
/// topics, their owners and the tenants (`answered_by` cleared).
async fn catalog_view(addr: SocketAddr) -> Option<String> {
    let mut c = admin(addr).await?;
    let cluster = summary(&c.describe_cluster(DescribeClusterRequest {}).await.ok()?.into_inner())?;
    let mut topics = c.list_topics(ListTopicsRequest::default()).await.ok()?.into_inner().topics;
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    let mut meta = c.get_metadata(GetMetadataRequest::default()).await.ok()?.into_inner();
    meta.answered_by = 0;
    meta.topics.sort_by(|a, b| a.name.cmp(&b.name));
    let mut tenants: Vec<String> =
        c.list_tenants(ListTenantsRequest {}).await.ok()?.into_inner().tenants.into_iter().map(|t| t.name).collect();
    tenants.sort();
    Some(format!("{cluster:?}\n{topics:?}\n{meta:?}\n{tenants:?}"))
}

/// A metadata write sent to an isolated broker: UNAVAILABLE with
/// NO_METADATA_QUORUM within the write timeout (2 s), never a hang.
async fn refused_while_isolated(addr: SocketAddr, topic: &str) {
    let started = Instant::now();
    let err = create_topic(addr, topic, 1).await.unwrap_err();
    let waited = started.elapsed();
    println!("CreateTopic {topic} on the isolated broker: {:?} after {waited:?}", err.code());
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(strata_proto::error_code(&err), ErrorCode::NoMetadataQuorum, "{err:?}");
    assert!(waited < Duration::from_secs(6), "waited {waited:?}");
    let mut c = admin(addr).await.unwrap();
    let started = Instant::now();
    let req = CreateTenantRequest { name: format!("{topic}-tenant"), if_not_exists: false, ..Default::default() };
    let err = c.create_tenant(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(strata_proto::error_code(&err), ErrorCode::NoMetadataQuorum, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(6), "waited {:?}", started.elapsed());
}

/// Isolates `members[x]` (it stays up): its proxy refuses every peer, and
/// the other brokers' proxies refuse it. The test still reaches it directly.
pub(crate) fn isolate(members: &[Member], proxies: &[Proxy], x: usize) {
    let pid = members[x].pid();
    for (i, p) in proxies.iter().enumerate() {
        if i == x { p.cut() } else { p.cut_from(pid) }
    }
}

/// Starts `n` brokers (write timeout 2 s) that reach each other only
/// through a proxy in front of each (see `isolate`).
pub(crate) async fn behind_proxies(n: u64) -> (Vec<Member>, Vec<Proxy>) {
    let mut members = members(n, "2s");
    let mut proxies = Vec::new();
    for m in members.iter_mut() {
        let proxy = Proxy::start(m.addr()).await;
        m.advertise = Some(proxy.addr);
        proxies.push(proxy);
    }
    let peers = members.iter().map(|m| m.advertised().to_string()).collect::<Vec<_>>().join(",");
    for m in members.iter_mut() {
        m.start(&peers);
    }
    (members, proxies)
}

/// Isolates one broker behind cut proxies, first the metadata leader, then
/// a follower: it refuses metadata writes with UNAVAILABLE, the majority
/// elects a leader (timed) and accepts writes; after healing all three
/// report the same catalog and the refused writes exist nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_broker_refuses_metadata_writes_and_rejoins_without_divergence() {
    let (members, proxies) = behind_proxies(3).await;
    let all: Vec<&Member> = members.iter().collect();
    let (_, brokers) = agreed(&all, 3, Duration::from_secs(30)).await;
    let advertised: Vec<String> = members.iter().map(|m| m.advertised().to_string()).collect();
    assert_eq!(brokers.iter().map(|b| b.1.clone()).collect::<Vec<_>>(), advertised, "peers meet through the proxies");
    create_topic(members[1].addr(), "before", 3).await.unwrap();
    for m in &members {
        let addr = m.addr();
        wait_until("the topic on every broker", Duration::from_secs(10), || async move {
            topic_partitions(addr, "before").await == Some(3)
        })
        .await;
    }

    for round in ["leader", "follower"] {
        let all: Vec<&Member> = members.iter().collect();
        let (current, _) = agreed(&all, 3, Duration::from_secs(30)).await;
        let x = match round {
            "leader" => (current - 1) as usize,
            _ => members.iter().position(|m| m.id != current).unwrap(),
        };
        let xid = members[x].id;
        isolate(&members, &proxies, x);
        let cut_at = Instant::now();
        println!("round {round}: isolated broker {xid} (metadata leader {current})");

        // The isolated broker refuses metadata writes, while (concurrently)
        // the majority elects a leader, and again once it has one.
        let majority: Vec<&Member> = members.iter().filter(|m| m.id != xid).collect();
        let elected = async {
            let l = eventually("a leader on the majority side", Duration::from_secs(15), || async {
                let mut seen = None;
                for m in &majority {
                    let l = describe(m.addr()).await?.leader_id?;
                    if l == xid || seen.is_some_and(|s| s != l) {
                        return None;
                    }
                    seen = Some(l);
                }
                seen
            })
            .await;
            (l, cut_at.elapsed())
        };
        let refused = format!("refused-{round}-1");
        let ((new_leader, election), ()) = tokio::join!(elected, refused_while_isolated(members[x].addr(), &refused));
        println!("round {round}: the majority agrees on leader {new_leader} {election:?} after the cut");
        assert!(election < Duration::from_secs(5), "the majority took {election:?} to elect a leader");
        if round == "follower" {
            assert_eq!(new_leader, current, "isolating a follower keeps the leader");
        }
        let during = format!("during-{round}");
        create_topic(majority[0].addr(), &during, 2).await.unwrap();
        create_topic(majority[1].addr(), &format!("{during}-b"), 1).await.unwrap();
        refused_while_isolated(members[x].addr(), &format!("refused-{round}-2")).await;
        assert_eq!(topic_partitions(members[x].addr(), &during).await, None, "no catalog reaches it");

        // Heal: it rejoins and every broker reports the same catalog.
        for p in &proxies {
            p.restore();
        }
        let healed_at = Instant::now();
        let addr = members[x].addr();
        let during2 = during.clone();
        wait_until("the isolated broker to catch up", Duration::from_secs(30), || {
            let during = during2.clone();
            async move { topic_partitions(addr, &during).await == Some(2) }
        })
        .await;
        let views = eventually("one catalog on all three", Duration::from_secs(30), || async {
            let mut views = Vec::new();
            for m in &members {
                views.push(catalog_view(m.addr()).await?);
            }
            views.iter().all(|v| *v == views[0]).then_some(views)
        })
        .await;
        let all: Vec<&Member> = members.iter().collect();
        let (healed, _) = agreed(&all, 3, Duration::from_secs(10)).await;
        println!("round {round}: healed, one catalog (leader {healed}) after {:?}", healed_at.elapsed());
        for name in ["before", during.as_str(), &format!("{during}-b")] {
            assert!(views[0].contains(&format!("name: \"{name}\"")), "{name} missing: {}", views[0]);
        }
        // Neither refused topic (nor tenant: listed in the view) exists anywhere.
        for m in &members {
            for n in 1..=2 {
                let refused = format!("refused-{round}-{n}");
                assert_eq!(topic_partitions(m.addr(), &refused).await, None, "{refused} on broker {}", m.id);
                assert!(!views[0].contains(&refused), "{refused}: {}", views[0]);
                let dirs = m.topic_dirs(&refused);
                assert!(dirs.is_empty(), "broker {}: {dirs:?}", m.id);
            }
        }
        // The rejoined broker takes writes again.
        create_topic(members[x].addr(), &format!("after-{round}"), 1).await.unwrap();
        for m in &members {
            let addr = m.addr();
            let name = format!("after-{round}");
            wait_until("the write through the rejoined broker everywhere", Duration::from_secs(10), || {
                let name = name.clone();
                async move { topic_partitions(addr, &name).await == Some(1) }
            })
            .await;
        }
    }
}

/// A quota set through one broker is enforced by another: UpdateTenant is a
/// catalog command, replicated like every other, and the count check runs
/// where the entry is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_set_on_one_broker_is_enforced_by_another() {
    use strata_proto::v1::{DescribeTenantRequest, TenantQuotas, UpdateTenantRequest};
    let mut members = members(3, "5s");
    let peers = members.iter().map(|m| m.addr().to_string()).collect::<Vec<_>>().join(",");
    for m in members.iter_mut() {
        m.start(&peers);
    }
    let all: Vec<&Member> = members.iter().collect();
    agreed(&all, 3, Duration::from_secs(30)).await;
    let (a, b) = (members[0].addr(), members[1].addr());
    let mut on_a = admin(a).await.unwrap();
    on_a.create_tenant(CreateTenantRequest { name: "q".into(), ..Default::default() }).await.unwrap();
    let quotas = TenantQuotas { max_topics: Some(1), ..Default::default() };
    on_a.update_tenant(UpdateTenantRequest { name: "q".into(), quotas: Some(quotas) }).await.unwrap();
    eventually("broker 2 to know tenant q's quota", Duration::from_secs(10), || async move {
        let mut c = admin(b).await?;
        let t = c.describe_tenant(DescribeTenantRequest { name: "q".into() }).await.ok()?.into_inner();
        (t.quotas == Some(quotas)).then_some(())
    })
    .await;
    let mut on_b = admin(b).await.unwrap();
    let topic =
        |name: &str| CreateTopicRequest { tenant: "q".into(), name: name.into(), partitions: 1, ..Default::default() };
    on_b.create_topic(topic("first")).await.unwrap();
    let err = on_b.create_topic(topic("second")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert_eq!(strata_proto::error_code(&err), ErrorCode::QuotaExceeded, "{err:?}");
    assert_eq!(strata_proto::error_info(&err).unwrap().metadata["quota"], "max_topics");
    // The third broker agrees: nothing of the refused create exists.
    let c = members[2].addr();
    wait_until("broker 3 to list exactly the first topic", Duration::from_secs(10), || async move {
        let Some(mut c) = admin(c).await else { return false };
        let Ok(r) = c.list_topics(ListTopicsRequest { tenant: "q".into() }).await else { return false };
        r.into_inner().topics.iter().map(|t| t.name.as_str()).collect::<Vec<_>>() == ["first"]
    })
    .await;
}
