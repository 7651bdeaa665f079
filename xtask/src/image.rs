//! `cargo xtask image`: the release binaries and the two container images
//! (`broker/Containerfile`, `operator/Containerfile`) built with buildah, and
//! `--check`, which unpacks each image and runs its entrypoint as the
//! image's own user on a read-only root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::{cargo, on_path};

/// The binaries the images carry (and the e2e suite runs).
pub const BINARIES: [&str; 3] = ["strata-broker", "strata", "strata-operator"];
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The user the images run as (distroless `nonroot`; the chart's runAsUser).
const USER: &str = "65532";

/// Options of `cargo xtask image`.
#[derive(Debug, Default)]
pub struct Options {
    /// `--base IMAGE`: the base image (default: the Containerfiles' own).
    pub base: Option<String>,
    /// `--local-base`: assemble the base from this machine's libraries
    /// (where no registry can be reached, as in CI).
    pub local_base: bool,
    /// `--check`: unpack the images and run them.
    pub check: bool,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--base" => o.base = Some(it.next().ok_or("--base needs an image")?.clone()),
                "--local-base" => o.local_base = true,
                "--check" => o.check = true,
                other => return Err(format!("unknown option {other} (--base IMAGE, --local-base, --check)")),
            }
        }
        Ok(o)
    }
}

/// The images: (Containerfile, name).
fn images() -> [(&'static str, String); 2] {
    [
        ("broker/Containerfile", format!("strata/strata-broker:{VERSION}")),
        ("operator/Containerfile", format!("strata/strata-operator:{VERSION}")),
    ]
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from)
}

/// Builds the release binaries once (images and e2e share them); their folder.
pub fn release_binaries() -> Result<PathBuf, String> {
    let mut args = vec!["build", "--release", "--locked"];
    for b in BINARIES {
        args.extend(["--bin", b]);
    }
    cargo(&args)?;
    Ok(target_dir().join("release"))
}

fn sh(cmd: &mut Command) -> Result<String, String> {
    let what = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// buildah, with `--storage-driver $STORAGE_DRIVER` when that is set (CI
/// uses `vfs`, which works inside any filesystem; buildah itself ignores
/// the variable).
fn buildah(args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("buildah");
    if let Some(driver) = std::env::var_os("STORAGE_DRIVER") {
        cmd.arg("--storage-driver").arg(driver);
    }
    sh(cmd.args(args))
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::copy(from, to).map(|_| ()).map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}

/// The build context: a folder holding only the binaries.
fn stage(bins: &Path) -> Result<PathBuf, String> {
    let ctx = target_dir().join("image");
    let _ = std::fs::remove_dir_all(&ctx);
    for b in BINARIES {
        copy(&bins.join(b), &ctx.join(b))?;
    }
    Ok(ctx)
}

/// A base image made of the shared libraries the binaries link (`ldd`),
/// `/etc/passwd` and `/etc/group` with user 65532, `nsswitch.conf` and the
/// CA certificates: what distroless/cc provides, without a registry.
fn local_base(bins: &Path) -> Result<String, String> {
    let dir = target_dir().join("image-base");
    let root = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&dir);
    let mut libs = Vec::new();
    for b in BINARIES {
        let out = sh(Command::new("ldd").arg(bins.join(b)))?;
        for line in out.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = line.split("=>").last().unwrap_or_default().split_whitespace().next().unwrap_or_default();
            if path.starts_with('/') && !libs.iter().any(|l| l == path) {
                libs.push(path.to_owned());
            }
        }
    }
    if libs.is_empty() {
        return Err("ldd found no shared libraries (a static build needs no base: use --base scratch)".into());
    }
    for lib in &libs {
        copy(Path::new(lib), &root.join(lib.trim_start_matches('/')))?;
    }
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).map_err(|e| e.to_string())?;
    let files = [
        ("passwd", "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"),
        ("group", "root:x:0:\nnonroot:x:65532:\n"),
        ("nsswitch.conf", "hosts: files dns\n"),
    ];
    for (name, text) in files {
        std::fs::write(etc.join(name), text).map_err(|e| e.to_string())?;
    }
    let certs = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if certs.is_file() {
        copy(certs, &etc.join("ssl/certs/ca-certificates.crt"))?;
    }
    for d in ["tmp", "home/nonroot"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::write(dir.join("Containerfile"), "FROM scratch\nCOPY rootfs/ /\n").map_err(|e| e.to_string())?;
    let tag = format!("localhost/strata-base:{VERSION}");
    buildah(&[
        "bud",
        "--quiet",
        "-f",
        &dir.join("Containerfile").display().to_string(),
        "-t",
        &tag,
        &dir.display().to_string(),
    ])?;
    println!(
        "image: local base {tag}: {} libraries from ldd ({}), passwd/group with user {USER}",
        libs.len(),
        libs.join(", ")
    );
    Ok(tag)
}

/// `cargo xtask image [--base IMAGE] [--local-base] [--check]`.
pub fn run(opts: &Options) -> Result<(), String> {
    let bins = release_binaries()?;
    let ctx = stage(&bins)?;
    if !on_path("buildah") {
        if std::env::var_os("CI").is_some() {
            return Err("buildah is not installed (apt-get install buildah)".into());
        }
        println!("buildah is not installed; with Docker or Podman, build the images with:");
        for (file, name) in images() {
            let base = opts.base.as_ref().map(|b| format!(" --build-arg BASE={b}")).unwrap_or_default();
            println!("  docker build{base} -f {file} -t {name} {}", ctx.display());
        }
        if opts.check {
            println!("skipped: image checks need buildah");
        }
        return Ok(());
    }
    let base = if opts.local_base { Some(local_base(&bins)?) } else { opts.base.clone() };
    for (file, name) in images() {
        let started = Instant::now();
        let mut args = vec!["bud".to_owned(), "--quiet".into(), "-f".into(), file.into(), "-t".into(), name.clone()];
        if let Some(b) = &base {
            args.extend(["--build-arg".into(), format!("BASE={b}")]);
        }
        args.push(ctx.display().to_string());
        let id = buildah(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        println!(
            "image: built {name} from {file} ({}, {:.1} s)",
            &id[..id.len().min(12)],
            started.elapsed().as_secs_f64()
        );
    }
    if opts.check {
        check()?;
    }
    Ok(())
}

/// The image's user, entrypoint and default arguments.
fn config(image: &str) -> Result<(String, Vec<String>), String> {
    let json = buildah(&["inspect", "--type", "image", image])?;
    let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| format!("image config of {image}: {e}"))?;
    let v = &v["OCIv1"]["config"];
    let user = v["User"].as_str().unwrap_or_default().to_owned();
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
    };
    let mut argv = strings("Entrypoint");
    argv.extend(strings("Cmd"));
    Ok((user, argv))
}

/// Unpacks `image` (a working container, mounted) and runs `script` in new
/// mount and network namespaces with `$ROOT` set to its root.
fn in_unpacked(image: &str, script: &str) -> Result<String, String> {
    let ctr = buildah(&["from", "--quiet", "--pull-never", image])?;
    let result = buildah(&["mount", &ctr]).and_then(|root| {
        sh(Command::new("unshare")
            .args(["--mount", "--net", "--fork", "--", "bash", "-euo", "pipefail", "-c", script])
            .env("ROOT", root))
    });
    let _ = buildah(&["umount", &ctr]);
    let _ = buildah(&["rm", &ctr]);
    result
}

fn quote(argv: &[String]) -> String {
    argv.iter().map(|a| format!("'{}'", a.replace('\'', r"'\''"))).collect::<Vec<_>>().join(" ")
}

/// Runs each image's entrypoint unpacked, as the image's user, on a
/// read-only root: the broker must serve /readyz; the CLI and the
/// operator must run.
pub fn check() -> Result<(), String> {
    let [(_, broker), (_, operator)] = images();
    let (user, argv) = config(&broker)?;
    if user.split(':').next() != Some(USER) {
        return Err(format!("{broker} runs as user {user:?}, not {USER}"));
    }
    let started = Instant::now();
    // The root read-only (a bind mount remounted ro), the data directory a
    // tmpfs owned by the user (a volume in Kubernetes), loopback up.
    let script = format!(
        r#"
ip link set lo up
mount --bind "$ROOT" "$ROOT" && mount -o remount,bind,ro "$ROOT"
mount -t tmpfs -o mode=0700,uid={USER},gid={USER} tmpfs "$ROOT/var/lib/strata"
if touch "$ROOT/probe" 2>/dev/null; then echo "root is writable" >&2; exit 1; fi
chroot --userspec={user} "$ROOT" {argv} >"$ROOT/var/lib/strata/broker.log" 2>&1 &
pid=$!
ready=""
for _ in $(seq 1 300); do
  if ready=$(curl -fsS --max-time 1 http://127.0.0.1:7071/readyz 2>/dev/null); then break; fi
  kill -0 $pid 2>/dev/null || {{ echo "the broker exited:" >&2; cat "$ROOT/var/lib/strata/broker.log" >&2; exit 1; }}
  sleep 0.1
done
[ -n "$ready" ] || {{ echo "no /readyz within 30 s" >&2; cat "$ROOT/var/lib/strata/broker.log" >&2; exit 1; }}
uid=$(awk '/^Uid:/ {{print $2 "/" $3}}' /proc/$pid/status)
cli=$(chroot --userspec={user} "$ROOT" /usr/local/bin/strata --version)
topic=$(chroot --userspec={user} "$ROOT" /usr/local/bin/strata --server http://127.0.0.1:7070 topic create image-check --partitions 1 2>&1)
kill -TERM $pid; wait $pid || true
echo "uid=$uid readyz=$ready cli=$cli topic=$topic"
"#,
        argv = quote(&argv)
    );
    let out = in_unpacked(&broker, &script)?;
    println!(
        "image check: {broker} unpacked; `{}` ran as user {user} on a read-only root (data dir a tmpfs): {out} ({:.1} s)",
        argv.join(" "),
        started.elapsed().as_secs_f64()
    );
    if !out.contains(&format!("uid={USER}/{USER}")) {
        return Err(format!("the broker did not run as {USER}: {out}"));
    }

    let (user, argv) = config(&operator)?;
    if user.split(':').next() != Some(USER) {
        return Err(format!("{operator} runs as user {user:?}, not {USER}"));
    }
    let entry = quote(&argv[..1]);
    let script = format!(
        r#"
mount --bind "$ROOT" "$ROOT" && mount -o remount,bind,ro "$ROOT"
version=$(chroot --userspec={user} "$ROOT" {entry} --version)
crds=$(chroot --userspec={user} "$ROOT" {entry} crds | grep -c '^kind: CustomResourceDefinition')
echo "version=$version crds=$crds"
"#
    );
    let out = in_unpacked(&operator, &script)?;
    if !out.contains("crds=5") {
        return Err(format!("{operator}: expected 5 CRDs from `strata-operator crds`: {out}"));
    }
    println!("image check: {operator} unpacked; its entrypoint ran as user {user} on a read-only root: {out}");
    Ok(())
}
