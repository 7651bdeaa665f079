//! Test harness: an in-process broker on ephemeral ports, a child-process
//! broker, raw gRPC clients, batch helpers and a TCP proxy that can be cut.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use strata_proto::batch::{BatchBuilder, BatchIter, Compression, Record};
use strata_proto::v1::{FetchRequest, ProduceRequest, admin_client::AdminClient, fetch_request, log_client::LogClient};
use tonic::transport::Channel;

pub struct TestBroker {
    pub running: Option<strata_broker::RunningBroker>,
    pub dir: tempfile::TempDir,
}

pub fn test_config(data_dir: &Path) -> strata_broker::Config {
    let mut c = strata_broker::Config::default();
    c.storage.data_dir = data_dir.to_path_buf();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.http_listen = "127.0.0.1:0".parse().unwrap();
    c
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut strata_broker::Config)) -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let running = strata_broker::start(config).await.unwrap();
        TestBroker { running: Some(running), dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.as_ref().unwrap().grpc_addr()
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.running.as_ref().unwrap().http_addr()
    }

    pub async fn log(&self) -> LogClient<Channel> {
        log_client(self.addr()).await
    }

    /// A started broker with topic `name` of `partitions`, and a log client.
    pub async fn with_topic(name: &str, partitions: u32) -> (TestBroker, LogClient<Channel>) {
        let b = TestBroker::start().await;
        create_topic(&b, name, partitions).await;
        let log = b.log().await;
        (b, log)
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(channel(self.addr()).await)
    }

    /// Stops gracefully and starts again on the same data directory.
    pub async fn restart(&mut self) {
        self.running.take().unwrap().shutdown().await;
        let config = test_config(self.dir.path());
        self.running = Some(strata_broker::start(config).await.unwrap());
    }
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

pub async fn log_client(addr: SocketAddr) -> LogClient<Channel> {
    LogClient::new(channel(addr).await).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20)
}

pub fn batch_of(values: &[String]) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    for v in values {
        b.push(now_ms(), None, Some(v.as_bytes()), &[]);
    }
    b.finish().unwrap()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

pub fn produce_req(topic: &str, partition: u32, batch: Bytes) -> ProduceRequest {
    ProduceRequest { topic: topic.into(), partition, batch, ..Default::default() }
}

pub fn fetch_req(topic: &str, partition: u32, offset: u64) -> FetchRequest {
    FetchRequest {
        tenant: String::new(),
        topic: topic.into(),
        partition,
        start: Some(fetch_request::Start::Offset(offset)),
        max_bytes: 64 * 1024,
        max_wait_ms: 50,
        follow: true,
    }
}

/// Reads a partition from `from` up to its high watermark, decoding (and so
/// CRC-checking) every batch. Panics on any corrupt batch.
pub async fn read_partition(client: &mut LogClient<Channel>, topic: &str, partition: u32, from: u64) -> Vec<Record> {
    let mut stream = client.fetch(fetch_req(topic, partition, from)).await.unwrap().into_inner();
    let mut out: Vec<Record> = Vec::new();
    let mut next = from;
    while let Some(resp) = stream.message().await.unwrap() {
        for batch in BatchIter::new(resp.records.clone()) {
            for r in batch.unwrap().records().unwrap() {
                if r.offset >= next {
                    assert_eq!(r.offset, next, "offsets are contiguous");
                    next = r.offset + 1;
                    out.push(r);
                }
            }
        }
        if resp.records.is_empty() && resp.next_offset >= resp.high_watermark {
            break;
        }
    }
    out
}

pub fn value(r: &Record) -> String {
    String::from_utf8(r.value.as_ref().unwrap().to_vec()).unwrap()
}

pub use strata_testkit::eventually;

/// A `strata-broker` child process.
pub struct BrokerProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

pub fn broker_bin() -> &'static str {
    env!("CARGO_BIN_EXE_strata-broker")
}

/// Runs the broker binary to its exit (a refused configuration, a bad
/// flag); (success, stderr).
pub fn run_broker(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(broker_bin()).args(args).envs(envs.iter().copied()).stdin(Stdio::null()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

impl BrokerProcess {
    pub fn start(data_dir: &Path, extra: &[&str]) -> BrokerProcess {
        Self::spawn(Command::new(broker_bin()), data_dir, extra)
    }

    /// Starts the broker under an open-file limit (soft and hard: the
    /// broker cannot raise it), with `envs` (`STRATA_*` overrides).
    pub fn start_with_fd_limit(data_dir: &Path, limit: u32, envs: &[(&str, &str)]) -> BrokerProcess {
        let mut sh = Command::new("sh");
        sh.args(["-c", &format!("ulimit -n {limit} && exec \"$0\" \"$@\""), broker_bin()]);
        sh.envs(envs.iter().copied());
        Self::spawn(sh, data_dir, &[])
    }

    /// Starts the broker with `envs` (`STRATA_*` overrides).
    pub fn start_with_env(data_dir: &Path, envs: &[(&str, &str)]) -> BrokerProcess {
        let mut command = Command::new(broker_bin());
        command.envs(envs.iter().copied());
        Self::spawn(command, data_dir, &[])
    }

    /// Starts the broker on `data_dir`, creates topic `name` of
    /// `partitions`; the process and a log client of it.
    pub async fn with_topic(data_dir: &Path, name: &str, partitions: u32) -> (BrokerProcess, LogClient<Channel>) {
        let broker = BrokerProcess::start(data_dir, &[]);
        let mut admin = AdminClient::new(channel(broker.addr).await);
        let topic = strata_proto::v1::CreateTopicRequest { name: name.into(), partitions, ..Default::default() };
        admin.create_topic(topic).await.unwrap();
        let log = log_client(broker.addr).await;
        (broker, log)
    }

    /// Descriptors the broker process holds open right now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).unwrap().count()
    }

    fn spawn(mut command: Command, data_dir: &Path, extra: &[&str]) -> BrokerProcess {
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("STRATA_LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("grpc="))
            .unwrap_or_else(|| panic!("unexpected first line from broker: {line:?}"))
            .parse()
            .unwrap();
        BrokerProcess { child, addr }
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL on Unix
        self.child.wait().unwrap();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a topic in the default tenant.
pub async fn create_topic(b: &TestBroker, name: &str, partitions: u32) {
    b.admin()
        .await
        .create_topic(strata_proto::v1::CreateTopicRequest { name: name.into(), partitions, ..Default::default() })
        .await
        .unwrap();
}

/// Asserts a status's code, its stable error code and a part of its message.
pub fn assert_status(
    err: impl std::borrow::Borrow<tonic::Status>,
    code: tonic::Code,
    error_code: strata_proto::v1::ErrorCode,
    text: &str,
) {
    let err = err.borrow();
    assert_eq!(err.code(), code, "{err:?}");
    assert_eq!(strata_proto::error_code(err), error_code, "{err:?}");
    assert!(err.message().contains(text), "message {:?} should mention {text:?}", err.message());
}

/// A TCP proxy in front of `target` (an object store, a broker's gRPC port).
/// `cut` drops every connection and refuses new ones while keeping the
/// port; `cut_from` does that only for connections opened by the given
/// processes (so one broker can be isolated from a peer that others still
/// reach through the same address); `restore` heals both.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<Cut>,
}

#[derive(Default)]
struct Cut {
    all: bool,
    /// Processes whose connections are refused.
    from: Vec<u32>,
}

impl Cut {
    fn blocks(&self, peer: SocketAddr, local: SocketAddr) -> bool {
        self.all || (!self.from.is_empty() && socket_owner(peer, local, &self.from).is_some())
    }
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = tokio::sync::watch::channel(Cut::default());
        let rx = cut.subscribe();
        tokio::spawn(async move {
            while let Ok((mut inbound, peer)) = listener.accept().await {
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let blocked = move |c: &Cut| c.blocks(peer, addr);
                    if blocked(&rx.borrow()) {
                        return; // dropped: connection reset
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(blocked) => {}
                    }
                });
            }
        });
        Proxy { addr, cut }
    }

    pub fn cut(&self) {
        self.cut.send_modify(|c| c.all = true);
    }

    /// Refuses (and drops) the connections process `pid` opened to this proxy.
    pub fn cut_from(&self, pid: u32) {
        self.cut.send_modify(|c| c.from.push(pid));
    }

    pub fn restore(&self) {
        self.cut.send_replace(Cut::default());
    }
}

/// Which of `pids` owns the IPv4 loopback socket connected from `peer` to
/// `local` (the proxy's side of an accepted connection): the socket's inode
/// from `/proc/net/tcp`, then the process holding a descriptor on it.
fn socket_owner(peer: SocketAddr, local: SocketAddr, pids: &[u32]) -> Option<u32> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_ne_bytes(v4.ip().octets()), v4.port()),
        SocketAddr::V6(_) => String::new(),
    };
    let (from, to) = (hex(peer), hex(local));
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == from && f[2] == to).then(|| f[9].to_owned())
    })?;
    let link = std::path::PathBuf::from(format!("socket:[{inode}]"));
    pids.iter().copied().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == link)))
            .unwrap_or(false)
    })
}
