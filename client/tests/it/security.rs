//! TLS and authentication against real `strata-broker` processes on
//! loopback: plaintext refused under TLS, the CA-trusting client served, an
//! mTLS principal kept to its tenant, a certificate replaced on disk served
//! without restart (checked by the served certificate's bytes), bearer
//! tokens (none, garbage, admin, issued via the CLI) and a token rotation
//! under a running producer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SerialNumber,
};
use strata_client::{Client, ConnectOptions, ErrorCode, Message, TopicOptions};
use strata_testkit::http_get;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::process::{BrokerProcess, binary_or_skip as binary, run_cli as cli};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "strata test CA");
    let cert = params.self_signed(&key).unwrap();
    Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
}

/// (certificate PEM, key PEM, certificate DER)
fn leaf(ca: &Ca, cn: &str, names: &[&str], serial: u64, server: bool) -> (String, String, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.serial_number = Some(SerialNumber::from(serial));
    params.extended_key_usages = if server {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn start(bin: &Path, data: &Path, args: &[&str], env: &[(&str, &str)]) -> BrokerProcess {
    BrokerProcess::start(bin, data, "127.0.0.1:0", args, env)
}

/// A broker certificate (of `localhost` and `127.0.0.1`, signed by `ca`)
/// written to `dir` as `tls.crt` and `tls.key`, next to `ca.crt`: their
/// paths, and the certificate's DER.
fn write_broker_tls(dir: &Path, ca: &Ca) -> (PathBuf, PathBuf, PathBuf, Vec<u8>) {
    let (cert_pem, key_pem, der) = leaf(ca, "broker", &["localhost", "127.0.0.1"], 1, true);
    let (cert, key, ca_file) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    std::fs::write(&ca_file, &ca.pem).unwrap();
    (cert, key, ca_file, der)
}

/// The files of a TLS broker with a required admin token: a temporary
/// folder, a CA, the broker certificate of [`write_broker_tls`] and the
/// admin token file.
struct TlsSetup {
    dir: tempfile::TempDir,
    ca: Ca,
    cert: PathBuf,
    key: PathBuf,
    ca_file: PathBuf,
    first_der: Vec<u8>,
    admin_file: PathBuf,
}

fn tls_setup() -> TlsSetup {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let (cert, key, ca_file, first_der) = write_broker_tls(dir.path(), &ca);
    let admin_file = write_admin_token(dir.path());
    TlsSetup { dir, ca, cert, key, ca_file, first_der, admin_file }
}

fn write_admin_token(dir: &Path) -> PathBuf {
    let p = dir.join("admin-token");
    std::fs::write(&p, format!("{ADMIN_TOKEN}\n")).unwrap();
    p
}

/// A raw TLS connection trusting `ca_pem`: the certificate the server presents.
async fn served_certificate(addr: &str, ca_pem: &str, alpn: &[u8]) -> Vec<u8> {
    let (_, der) = tls_connect(addr, ca_pem, alpn).await;
    der
}

async fn tls_connect(
    addr: &str,
    ca_pem: &str,
    alpn: &[u8],
) -> (tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Vec<u8>) {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (tls, der)
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mtls_principals_and_certificate_reload() {
    let Some(bin) = binary() else { return };
    let TlsSetup { dir, ca, cert, key, ca_file, first_der, admin_file } = tls_setup();
    let data = dir.path().join("data");
    let broker = start(
        &bin,
        &data,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-client-ca",
            ca_file.to_str().unwrap(),
            "--auth",
            "required",
            "--admin-token-file",
            admin_file.to_str().unwrap(),
        ],
        &[("STRATA_TLS_RELOAD_INTERVAL", "100ms")],
    );

    // A plaintext client gets no service from a TLS listener.
    let plain = tokio::time::timeout(Duration::from_secs(15), async {
        Client::connect(&format!("http://{}", broker.grpc)).await?.list_tenants().await
    })
    .await
    .expect("the plaintext attempt ends");
    assert!(plain.is_err(), "plaintext must be refused: {plain:?}");

    // The CA-trusting client with the admin token administers.
    let url = format!("https://{}", broker.grpc);
    let admin =
        Client::connect_with(&url, ConnectOptions::new().ca_pem(ca.pem.clone()).token(ADMIN_TOKEN)).await.unwrap();
    for t in ["a", "b"] {
        admin.create_tenant(t).await.unwrap();
        admin.with_tenant(t).create_topic("orders", 1, TopicOptions::default()).await.unwrap();
    }
    admin.create_principal("a", "alice").await.unwrap();
    let produce = strata_client::Acl {
        principal: "alice".into(),
        resource_kind: strata_client::AclResourceKind::Topic as i32,
        resource_name: "orders".into(),
        operation: strata_client::AclOperation::Produce as i32,
        ..Default::default()
    };
    admin.add_acl("a", produce).await.unwrap();

    // TLS without credentials: UNAUTHENTICATED.
    let anonymous = Client::connect_with(&url, ConnectOptions::new().ca_pem(ca.pem.clone())).await.unwrap();
    let err = anonymous.list_tenants().await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");
    assert_eq!(err.error_code(), ErrorCode::Unauthenticated);

    // CN=alice (a principal of tenant a) by certificate alone.
    let (alice_cert, alice_key, _) = leaf(&ca, "alice", &[], 10, false);
    let alice =
        Client::connect_with(&url, ConnectOptions::new().ca_pem(ca.pem.clone()).identity_pem(alice_cert, alice_key))
            .await
            .unwrap();
    let in_a = alice.with_tenant("a");
    let producer = in_a.producer("orders").await.unwrap();
    let meta = producer.send(Message::new("hello from alice")).await.unwrap();
    assert_eq!(meta.offset, 0);
    let tenants = alice.list_tenants().await.unwrap();
    assert_eq!(tenants.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a"], "only its own tenant is listed");
    let in_b = alice.with_tenant("b");
    let err = in_b.describe_topic("orders").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    let err = in_b.producer("orders").await.map(|_| ()).unwrap_err();
    assert!(matches!(err.code(), Some(tonic::Code::PermissionDenied | tonic::Code::NotFound)), "{err}");
    let err = in_b.delete_topic("orders").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    let err = alice.create_tenant("c").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    let err = alice.issue_token("a", "alice").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    // A certificate from another CA is refused by the handshake.
    let other = self::ca();
    let (mallory_cert, mallory_key, _) = leaf(&other, "alice", &[], 11, false);
    let forged = async {
        Client::connect_with(&url, ConnectOptions::new().ca_pem(ca.pem.clone()).identity_pem(mallory_cert, mallory_key))
            .await?
            .list_tenants()
            .await
    };
    assert!(tokio::time::timeout(Duration::from_secs(15), forged).await.unwrap().is_err());

    // The HTTP listener serves TLS too; probes need no credentials.
    assert_eq!(served_certificate(&broker.http, &ca.pem, b"http/1.1").await, first_der);
    let (mut tls, _) = tls_connect(&broker.http, &ca.pem, b"http/1.1").await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Replace the certificate on disk (key first, as a Secret update may
    // land): new connections get the new one, without a restart.
    assert_eq!(served_certificate(&broker.grpc, &ca.pem, b"h2").await, first_der);
    let (cert2_pem, key2_pem, second_der) = leaf(&ca, "broker", &["localhost", "127.0.0.1"], 2, true);
    assert_ne!(first_der, second_der);
    std::fs::write(&key, &key2_pem).unwrap();
    std::fs::write(&cert, &cert2_pem).unwrap();
    let addr = broker.grpc.clone();
    let ca_pem = ca.pem.clone();
    wait_until("the new certificate to be served", || {
        let (addr, ca_pem, second) = (addr.clone(), ca_pem.clone(), second_der.clone());
        async move { served_certificate(&addr, &ca_pem, b"h2").await == second }
    })
    .await;
    // And the established client keeps working; a new one connects.
    assert_eq!(producer.send(Message::new("after the rotation")).await.unwrap().offset, 1);
    let again =
        Client::connect_with(&url, ConnectOptions::new().ca_pem(ca.pem.clone()).token(ADMIN_TOKEN)).await.unwrap();
    assert_eq!(again.with_tenant("a").describe_topic("orders").await.unwrap().name, "orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_authenticate_and_rotate_under_a_running_producer() {
    let Some(bin) = binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let admin_file = write_admin_token(dir.path());
    let broker = start(
        &bin,
        &dir.path().join("data"),
        &["--auth", "required", "--admin-token-file", admin_file.to_str().unwrap()],
        &[],
    );
    let url = format!("http://{}", broker.grpc);

    // No token, a garbage token: UNAUTHENTICATED, for reads and writes.
    let nobody = Client::connect(&url).await.unwrap();
    let err = nobody.list_topics().await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");
    let err = nobody.delete_tenant("default").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");
    let garbage = Client::connect_with(&url, ConnectOptions::new().token("garbage")).await.unwrap();
    let err = garbage.create_tenant("x").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");

    // The admin token works; the CLI issues a token: the token alone on stdout.
    let admin = Client::connect_with(&url, ConnectOptions::new().token(ADMIN_TOKEN)).await.unwrap();
    admin.create_tenant("shop").await.unwrap();
    admin.with_tenant("shop").create_topic("orders", 1, TopicOptions::default()).await.unwrap();
    let admin_env = [("STRATA_TOKEN", ADMIN_TOKEN)];
    let (ok, out, err) = cli(&url, &admin_env, &["--tenant", "shop", "principal", "create", "app"]);
    assert!(ok, "{err}");
    assert!(out.contains("created principal app"), "{out}");
    let (ok, out, err) = cli(&url, &admin_env, &["token", "issue", "--tenant", "shop", "--principal", "app"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "only the token on stdout: {out:?}");
    let first = out.trim().to_owned();
    assert!(first.starts_with("strata_") && first.len() == 50, "{first}");
    let (ok, _, err) = cli(
        &url,
        &admin_env,
        &["acl", "add", "--tenant", "shop", "--principal", "app", "--topic", "orders", "--operation", "produce"],
    );
    assert!(ok, "{err}");
    // Without the admin token the CLI fails with one line.
    let (ok, _, err) = cli(&url, &[], &["token", "issue", "--tenant", "shop", "--principal", "app"]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A producer with the first token runs while the token rotates.
    let client =
        Client::connect_with(&url, ConnectOptions::new().token(first.clone())).await.unwrap().with_tenant("shop");
    let producer = client.producer("orders").await.unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let (count_tx, count_rx) = tokio::sync::watch::channel(0u64);
    let running = tokio::spawn({
        let producer = producer.clone();
        async move {
            let mut n = 0u64;
            loop {
                if *stop_rx.borrow_and_update() {
                    return Ok::<u64, strata_client::Error>(n);
                }
                producer.send(Message::new(format!("m{n}"))).await?;
                n += 1;
                count_tx.send_replace(n);
            }
        }
    });
    let wait_for = |target: u64| {
        let mut rx = count_rx.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|n| *n >= target)).await.unwrap().unwrap();
        }
    };
    wait_for(20).await;
    let (second, second_id) = admin.issue_token("shop", "app").await.unwrap();
    client.set_token(Some(&second)).unwrap();
    let seen = *count_rx.borrow();
    wait_for(seen + 20).await;
    let (ok, _, err) = cli(&url, &admin_env, &["--tenant", "shop", "token", "revoke", "--principal", "app", &first]);
    assert!(ok, "{err}");
    let seen = *count_rx.borrow();
    wait_for(seen + 20).await;
    stop_tx.send_replace(true);
    let sent = running.await.unwrap().expect("the producer never failed");
    assert!(sent >= 60);

    // The revoked token is refused on the next request; the second works.
    let revoked = Client::connect_with(&url, ConnectOptions::new().token(first.clone())).await.unwrap();
    let err = revoked.with_tenant("shop").describe_topic("orders").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");
    let listed = admin.list_principals("shop").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].tokens.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), [second_id.as_str()]);
    let described = client.describe_topic("orders").await.unwrap();
    assert_eq!(described.partition_details[0].end_offset, sent);
    // A principal of one tenant cannot see the other's topics.
    let err = client.with_tenant("default").list_topics().await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");

    // Metrics stay open by default, the probes always.
    let body = http_get(&broker.http, "/healthz").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
}

/// `tls.require_client_cert`: a gRPC connection without a client
/// certificate is refused by the handshake, one with a certificate of the CA
/// is served; the HTTP listener never requires one, so probes stay open
/// (what a BrokerCluster with `clientAuth: require` relies on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_guard_grpc_but_not_the_probes() {
    let Some(bin) = binary() else { return };
    let TlsSetup { dir, ca, cert, key, ca_file, admin_file, .. } = tls_setup();
    let broker = start(
        &bin,
        &dir.path().join("data"),
        &["--auth", "required", "--admin-token-file", admin_file.to_str().unwrap()],
        // All of [tls] from the environment: the configuration is checked
        // before command-line flags are applied.
        &[
            ("STRATA_TLS_CERT", cert.to_str().unwrap()),
            ("STRATA_TLS_KEY", key.to_str().unwrap()),
            ("STRATA_TLS_CLIENT_CA", ca_file.to_str().unwrap()),
            ("STRATA_TLS_REQUIRE_CLIENT_CERT", "true"),
        ],
    );
    let url = format!("https://{}", broker.grpc);

    let without = async {
        Client::connect_with(&url, ConnectOptions::new().ca_pem(ca.pem.clone()).token(ADMIN_TOKEN))
            .await?
            .list_tenants()
            .await
    };
    let refused = tokio::time::timeout(Duration::from_secs(15), without).await.expect("the attempt ends");
    assert!(refused.is_err(), "a gRPC client without a certificate must be refused: {refused:?}");

    let (client_cert, client_key, _) = leaf(&ca, "operator", &[], 2, false);
    let with = Client::connect_with(
        &url,
        ConnectOptions::new().ca_pem(ca.pem.clone()).identity_pem(client_cert, client_key).token(ADMIN_TOKEN),
    )
    .await
    .unwrap();
    assert!(with.list_tenants().await.unwrap().iter().any(|t| t.name == "default"));

    // The probes: HTTPS without a client certificate.
    let (mut tls, _) = tls_connect(&broker.http, &ca.pem, b"http/1.1").await;
    tls.write_all(b"GET /readyz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
