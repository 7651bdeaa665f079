//! Test support shared by the workspace's test suites (a dev-dependency
//! only): a real S3-compatible server (`moto_server`) on a free loopback
//! port, and polling a condition with a deadline instead of sleeping.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released), for a child process
/// that must be told its port before it starts. It is taken from below the
/// kernel's ephemeral range, so no other socket of this machine (a port-0
/// bind, an outgoing connection) can be handed the same port between its
/// release here and the child's bind; successive calls walk the range from
/// a random start, so concurrent test processes rarely meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let below = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|lo| *lo > FIRST + 1_000)
        .unwrap_or(32_768);
    let span = below - FIRST;
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        use std::hash::{BuildHasher, RandomState};
        let start = (RandomState::new().hash_one(std::process::id()) % u64::from(span)) as u32;
        let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let port = FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether this run is CI, where a test may not skip for missing infrastructure.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Polls `f` until it returns `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `f` until it returns true, panicking with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(what, timeout, || {
        let fut = f();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// A `moto_server` child process on a free loopback port, killed on drop.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    pub addr: SocketAddr,
}

impl Moto {
    /// Starts moto and waits (with a deadline) until it answers HTTP.
    /// `None` when `moto_server` is not installed — except in CI, where that
    /// is a failure (nothing may skip there).
    pub fn start() -> Option<Moto> {
        let port = free_port();
        let spawned = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) if in_ci() => panic!("moto_server is required in CI (pip install 'moto[server]'): {e}"),
            Err(_) => return None,
        };
        let mut moto = Moto { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http(moto.addr, "GET / HTTP/1.1").is_some() {
                return Some(moto);
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "moto_server did not answer within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Moto::start`], saying on stdout that the test is skipped when
    /// `moto_server` is not installed.
    pub fn start_or_skip() -> Option<Moto> {
        let moto = Moto::start();
        if moto.is_none() {
            println!("skipped: moto_server not installed");
        }
        moto
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let status = http(self.addr, &format!("PUT /{bucket} HTTP/1.1")).expect("moto answers");
        assert!(status.contains(" 200"), "create bucket: {status}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET over a raw socket (no HTTP client dependency):
/// the whole response, status line, headers and body.
pub async fn http_get(addr: impl tokio::net::ToSocketAddrs, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Sends one bodiless HTTP request; returns the status line.
pub fn http(addr: SocketAddr, request_line: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "{request_line}\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().filter(|l| l.starts_with("HTTP/")).map(str::to_owned)
}
