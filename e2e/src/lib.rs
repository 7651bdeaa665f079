//! Harness of the end-to-end suite: a real Kubernetes control plane (etcd,
//! kube-apiserver and kube-controller-manager started by
//! `../shared/k8s/start-control-plane.sh`), kubesim as the node that runs the
//! cluster's pods as local processes of the built binaries, a moto S3 server
//! the pods can reach, and `kubectl`. [`Cluster`] stops and removes all of it
//! — processes, network namespaces, bridge, temporary folder — when it is
//! dropped, also when a step failed.
//!
//! Where the pieces are: `STRATA_K8S_DIR` (default `../shared/k8s` beside
//! the repository, where CI lays `shared/`) and `STRATA_E2E_BIN_DIR` (default
//! `target/release`: `strata-broker`, `strata`, `strata-operator`, built by
//! `cargo xtask e2e`). A missing piece makes the suite print
//! `skipped: <reason>`, or fail when `CI` is set.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// The node kubesim registers.
pub const NODE: &str = "kubesim-0";

/// What the suite needs on this machine, found.
#[derive(Debug, Clone)]
pub struct Prerequisites {
    /// The repository (for `crds/`, `charts/`, `examples/`).
    pub repo: PathBuf,
    /// `shared/k8s`: the control-plane scripts and kubesim.
    pub k8s_dir: PathBuf,
    /// Folder with `strata-broker`, `strata` and `strata-operator`.
    pub bin_dir: PathBuf,
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

impl Prerequisites {
    /// Finds every piece; `Err` names the first one missing and how to get it.
    pub fn find() -> Result<Prerequisites, String> {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let repo = repo.canonicalize().unwrap_or(repo);
        let k8s_dir = std::env::var_os("STRATA_K8S_DIR").map_or_else(|| repo.join("../shared/k8s"), PathBuf::from);
        require_files(&k8s_dir, &["start-control-plane.sh", "stop-control-plane.sh", "kubesim/kubesim.py"], |f| {
            format!("no Kubernetes control plane: {f} is missing (set STRATA_K8S_DIR to the shared/k8s folder)")
        })?;
        let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        if uid.ok().as_deref() != Some("0") {
            return Err("kubesim needs root (it creates network namespaces)".into());
        }
        for (cmd, how) in [
            ("etcd", "apt-get install etcd-server"),
            ("kubectl", "apt-get install kubernetes-client"),
            ("ip", "apt-get install iproute2"),
            ("openssl", "apt-get install openssl"),
            ("curl", "apt-get install curl"),
            ("xz", "apt-get install xz-utils"),
            ("python3", "apt-get install python3"),
            ("moto_server", "pip install 'moto[server]'"),
        ] {
            if !on_path(cmd) {
                return Err(format!("{cmd} is not on PATH ({how})"));
            }
        }
        let modules = Command::new("python3").args(["-c", "import kubernetes, helm_python"]).output();
        if !modules.is_ok_and(|o| o.status.success()) {
            return Err(
                "python3 cannot import kubernetes and helm_python (pip install 'kubernetes==35.0.0' helm-python-sdk)"
                    .into(),
            );
        }
        let bin_dir = std::env::var_os("STRATA_E2E_BIN_DIR").map_or_else(|| repo.join("target/release"), PathBuf::from);
        require_files(&bin_dir, &["strata-broker", "strata", "strata-operator"], |b| {
            format!("{b} is missing (cargo xtask e2e builds it, or set STRATA_E2E_BIN_DIR)")
        })?;
        Ok(Prerequisites { repo, k8s_dir, bin_dir })
    }
}

/// `Err(missing(path))` for the first of `names` in `dir` that is not a file.
fn require_files(dir: &Path, names: &[&str], missing: impl Fn(std::path::Display<'_>) -> String) -> Result<(), String> {
    match names.iter().map(|n| dir.join(n)).find(|p| !p.is_file()) {
        Some(path) => Err(missing(path.display())),
        None => Ok(()),
    }
}

/// Prints `skipped: <reason>`, or panics when `CI` is set: in CI nothing skips.
pub fn skip_or_fail(reason: &str) {
    assert!(std::env::var_os("CI").is_none(), "the end-to-end suite cannot run in CI: {reason}");
    println!("skipped: {reason}");
}

/// Numbered steps, each printed as it passes with the time it took.
#[derive(Debug)]
pub struct Steps {
    n: usize,
    started: Instant,
    last: Instant,
}

impl Default for Steps {
    fn default() -> Self {
        let now = Instant::now();
        Steps { n: 0, started: now, last: now }
    }
}

impl Steps {
    pub fn pass(&mut self, what: &str) {
        self.n += 1;
        let now = Instant::now();
        println!(
            "e2e step {:>2} passed: {what} ({:.1} s, {:.0} s in all)",
            self.n,
            (now - self.last).as_secs_f64(),
            (now - self.started).as_secs_f64()
        );
        let _ = std::io::stdout().flush();
        self.last = now;
    }
}

/// Calls `f` until it returns `Some`, every 250 ms, failing after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn run(mut cmd: Command, input: Option<&[u8]>) -> anyhow::Result<String> {
    let what = format!("{cmd:?}");
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot start {what}"))?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().context("stdin")?;
        let input = input.to_vec();
        // Written from a thread so a child that prints before reading cannot deadlock us.
        std::thread::spawn(move || stdin.write_all(&input));
    }
    let Output { status, stdout, stderr } = child.wait_with_output()?;
    if !status.success() {
        bail!("{what} failed ({status}): {}{}", String::from_utf8_lossy(&stderr), String::from_utf8_lossy(&stdout));
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).stderr(Stdio::null()).status();
}

/// Waits for `child` to exit, up to `timeout`; true if it did.
fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A private /24 for kubesim's bridge that no address or route of this host
/// uses (so a developer's own kubesim on the default 10.244.0.0/24 is left alone).
fn free_pod_range() -> anyhow::Result<u8> {
    let ip = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(args);
        run(c, None)
    };
    let used = ip(&["-o", "addr"])? + &ip(&["route"])?;
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let seed = (seed ^ std::process::id()) as usize;
    (0..200)
        .map(|i| u8::try_from(20 + (seed + i * 37) % 200).unwrap_or(20))
        .find(|x| !used.contains(&format!("10.244.{x}.")))
        .context("no free 10.244.x.0/24 range for the pod network")
}

/// A control plane, kubesim and moto, removed on drop.
pub struct Cluster {
    pub prereq: Prerequisites,
    dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    control_plane: Option<PathBuf>,
    kubesim: Option<Child>,
    moto: Option<Child>,
    /// moto's port on loopback; pods reach it as `host.kubesim.internal:<port>`.
    pub moto_port: u16,
    /// kubesim's bridge.
    pub bridge: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("dir", &self.dir.path()).field("bridge", &self.bridge).finish()
    }
}

impl Cluster {
    /// Starts moto, the control plane and kubesim (images mapped to the
    /// built binaries), and waits for the node to be Ready.
    pub fn start(prereq: &Prerequisites) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("strata-e2e.").tempdir()?;
        let octet = free_pod_range()?;
        let mut cluster = Cluster {
            prereq: prereq.clone(),
            kubeconfig: dir.path().join("control-plane/admin.kubeconfig"),
            dir,
            control_plane: None,
            kubesim: None,
            moto: None,
            moto_port: 0,
            bridge: format!("kse2e{octet}"),
        };

        // moto first: kubesim forwards its port from the bridge address.
        cluster.moto_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let moto_log = std::fs::File::create(cluster.dir.path().join("moto.log"))?;
        cluster.moto = Some(
            Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &cluster.moto_port.to_string()])
                // Pods address it as host.kubesim.internal: path-style
                // buckets, not "host" as a virtual-hosted bucket name.
                .env("S3_IGNORE_SUBDOMAIN_BUCKETNAME", "true")
                .stdin(Stdio::null())
                .stdout(moto_log.try_clone()?)
                .stderr(moto_log)
                .spawn()
                .context("starting moto_server")?,
        );

        let state = cluster.dir.path().join("control-plane");
        cluster.control_plane = Some(state.clone());
        let log = std::fs::File::create(cluster.dir.path().join("control-plane.log"))?;
        let out = Command::new(prereq.k8s_dir.join("start-control-plane.sh"))
            .arg(&state)
            .env("BRIDGE_IP", format!("10.244.{octet}.1"))
            .stdin(Stdio::null())
            .stderr(log)
            .output()
            .context("running start-control-plane.sh")?;
        if !out.status.success() {
            bail!(
                "start-control-plane.sh failed ({}): {}",
                out.status,
                std::fs::read_to_string(cluster.dir.path().join("control-plane.log")).unwrap_or_default()
            );
        }
        if !cluster.kubeconfig.is_file() {
            bail!("start-control-plane.sh wrote no {}", cluster.kubeconfig.display());
        }

        let hosts = cluster.dir.path().join("hosts");
        std::fs::write(&hosts, "")?;
        let log = std::fs::File::create(cluster.dir.path().join("kubesim.log"))?;
        let bin = |b: &str| prereq.bin_dir.join(b).display().to_string();
        let version = env!("CARGO_PKG_VERSION");
        cluster.kubesim = Some(
            Command::new("python3")
                .arg(prereq.k8s_dir.join("kubesim/kubesim.py"))
                .arg("--state-dir")
                .arg(cluster.kubesim_state())
                .arg("run")
                .arg("--kubeconfig")
                .arg(&cluster.kubeconfig)
                .args(["--bridge", &cluster.bridge, "--cidr", &format!("10.244.{octet}.0/24")])
                .arg("--hosts-file")
                .arg(&hosts)
                .args(["--expose-host-port", &cluster.moto_port.to_string()])
                // The image names of the chart and the examples, exactly.
                .args(["--image", &format!("strata/strata-broker:{version}={}", bin("strata-broker"))])
                .args(["--image", &format!("strata/strata-operator:{version}={}", bin("strata-operator"))])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting kubesim")?,
        );
        wait_for(&format!("node {NODE} Ready"), Duration::from_secs(60), || {
            if let Some(Ok(Some(status))) = cluster.kubesim.as_mut().map(Child::try_wait) {
                bail!("kubesim exited ({status}): {}", cluster.kubesim_log_tail(30));
            }
            let node = cluster.kubectl(&["get", "node", NODE, "-o", "json", "--ignore-not-found"])?;
            Ok((!node.trim().is_empty() && condition(&serde_json::from_str(&node)?, "Ready") == Some("True".into()))
                .then_some(()))
        })?;
        wait_for("moto to answer", Duration::from_secs(30), || {
            Ok(std::net::TcpStream::connect(("127.0.0.1", cluster.moto_port)).is_ok().then_some(()))
        })?;
        Ok(cluster)
    }

    fn kubesim_state(&self) -> PathBuf {
        self.dir.path().join("kubesim")
    }

    pub fn tempdir(&self) -> &Path {
        self.dir.path()
    }

    /// `kubectl ARGS` against this cluster; its stdout.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_in(args, None)
    }

    /// `kubectl ARGS` with `input` on stdin.
    pub fn kubectl_in(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", &self.kubeconfig).args(["--request-timeout=30s"]).args(args);
        run(c, input.map(str::as_bytes))
    }

    /// `kubectl get ARGS -o json`, parsed.
    pub fn get(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&a)?)?)
    }

    /// `kubesim ARGS` (status, kill, logs …) on this cluster's node.
    pub fn kubesim(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut c = Command::new("python3");
        c.arg(self.prereq.k8s_dir.join("kubesim/kubesim.py")).arg("--state-dir").arg(self.kubesim_state()).args(args);
        run(c, None)
    }

    /// The `strata` CLI, at most `timeout` long.
    pub fn strata(&self, args: &[&str], input: Option<&str>, timeout: Duration) -> anyhow::Result<String> {
        let mut c = Command::new("timeout");
        c.arg(format!("{}s", timeout.as_secs())).arg(self.prereq.bin_dir.join("strata")).args(args);
        run(c, input.map(str::as_bytes))
    }

    /// Every log file kubesim kept of the containers of pods in `namespace`
    /// (deleted pods and restarted containers included): (file, text).
    pub fn container_logs(&self, namespace: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let logs = self.kubesim_state().join("logs");
        for pod in std::fs::read_dir(&logs).with_context(|| format!("{}", logs.display()))? {
            let pod = pod?.path();
            if !pod.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{namespace}_"))) {
                continue;
            }
            for container in std::fs::read_dir(&pod)? {
                for file in std::fs::read_dir(container?.path())? {
                    let file = file?.path();
                    out.push((file.display().to_string(), std::fs::read_to_string(&file).unwrap_or_default()));
                }
            }
        }
        Ok(out)
    }

    fn kubesim_log_tail(&self, n: usize) -> String {
        tail(&std::fs::read_to_string(self.dir.path().join("kubesim.log")).unwrap_or_default(), n)
    }

    /// What to look at when a step failed: kubesim's log, the pods, the
    /// strata objects, and the last lines of every container log.
    pub fn diagnostics(&self) -> String {
        let mut s = format!("---- kubesim log (last 40 lines)\n{}\n", self.kubesim_log_tail(40));
        for args in [
            &["get", "pods,statefulsets,deployments,pvc", "-A", "-o", "wide"][..],
            &["get", "brokerclusters,tenants,topics,queues,consumergroups", "-A", "-o", "wide"][..],
            &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
        ] {
            s +=
                &format!("---- kubectl {}\n{}\n", args.join(" "), self.kubectl(args).unwrap_or_else(|e| e.to_string()));
        }
        for ns in ["strata-system", "strata"] {
            for (file, text) in self.container_logs(ns).unwrap_or_default() {
                s += &format!("---- {file} (last 30 lines)\n{}\n", tail(&text, 30));
            }
        }
        s
    }

    /// Stops kubesim (which removes its pods' processes, namespaces, veths
    /// and bridge), the control plane and moto; checks the bridge is gone.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.teardown();
        let left = Command::new("ip").args(["link", "show", &self.bridge]).output()?;
        if left.status.success() {
            bail!("kubesim left its bridge {} behind", self.bridge);
        }
        Ok(())
    }

    fn teardown(&mut self) {
        if let Some(mut k) = self.kubesim.take() {
            signal(k.id(), "-TERM");
            if !wait_exit(&mut k, Duration::from_secs(60)) {
                eprintln!("e2e: kubesim did not stop within 60 s; killing it and running kubesim cleanup");
                let _ = k.kill();
                let _ = k.wait();
            }
            // Removes whatever its ledger still lists (nothing after a clean stop).
            if let Err(e) = self.kubesim(&["cleanup", "--purge"]) {
                eprintln!("e2e: kubesim cleanup: {e}");
            }
        }
        if let Some(state) = self.control_plane.take()
            && state.join("pids").exists()
        {
            let _ = Command::new(self.prereq.k8s_dir.join("stop-control-plane.sh"))
                .arg(&state)
                .arg("--purge")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut m) = self.moto.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The status of condition `type_` of a Kubernetes object.
pub fn condition(obj: &Value, type_: &str) -> Option<String> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?["status"].as_str().map(str::to_owned)
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
