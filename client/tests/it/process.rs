//! Real `strata-broker` processes for the tests that restart, kill or
//! configure one themselves (the common case is `TestBroker`).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The broker binary built next to the CLI (by `cargo test --workspace`).
/// Runs the `strata` CLI against `url` with these environment variables
/// (`STRATA_TOKEN` and `STRATA_TENANT` of the test's own environment are
/// cleared first); (success, stdout, stderr).
pub fn run_cli(url: &str, env: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["--server", url])
        .args(args)
        .env_remove("STRATA_TOKEN")
        .env_remove("STRATA_TENANT")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn broker_binary() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_strata")).with_file_name("strata-broker");
    p.exists().then_some(p)
}

/// The broker binary, or `None` after printing why the test is skipped
/// (never in CI, where a missing binary fails the test).
pub fn binary_or_skip() -> Option<PathBuf> {
    let bin = broker_binary();
    if bin.is_none() {
        assert!(std::env::var_os("CI").is_none(), "strata-broker binary missing in CI");
        println!("skipped: strata-broker binary not built (run `cargo test --workspace`)");
    }
    bin
}

/// A broker process, killed (SIGKILL) when dropped.
pub struct BrokerProcess {
    pub child: Child,
    /// The gRPC and HTTP listeners' addresses, from its first line.
    pub grpc: String,
    pub http: String,
}

impl BrokerProcess {
    /// Starts `bin` on `data`, its gRPC listener at `listen` (`127.0.0.1:0`
    /// for a free port), with extra `args` and `env`; returns once it
    /// printed where it listens.
    pub fn start(bin: &Path, data: &Path, listen: &str, args: &[&str], env: &[(&str, &str)]) -> BrokerProcess {
        let mut child = Command::new(bin)
            .args(["--listen", listen, "--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(args)
            .envs(env.iter().copied())
            .env("STRATA_LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("broker starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("listening line");
        let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).map(str::to_owned);
        let grpc = field("grpc=").unwrap_or_else(|| panic!("no listening line: {line:?}"));
        let http = field("http=").unwrap_or_else(|| panic!("no http listener in {line:?}"));
        BrokerProcess { child, grpc, http }
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process (a `strata consume` or `receive`) whose stdout lines are
/// collected as they come; killed (SIGKILL) when dropped.
pub struct LineCollector {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl LineCollector {
    /// Spawns `command` with stdin closed, stdout collected and stderr
    /// passed through.
    pub fn spawn(command: &mut Command) -> LineCollector {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the child process runs");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => sink.lock().unwrap().push(l),
                    Err(_) => break,
                }
            }
        });
        LineCollector { child, lines, reader: Some(reader) }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// How many lines were printed so far.
    pub fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// SIGKILL, then wait for every line it printed and return them all.
    pub fn kill9(&mut self) -> Vec<String> {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.lines()
    }
}

impl Drop for LineCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
