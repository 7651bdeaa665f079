//! Tenant quotas against a real `strata-broker` process with tokens: tenant
//! A's producer over its byte rate is throttled (the throttle metric grows,
//! every message is stored once), and with the client's retry off it is
//! refused with QUOTA_EXCEEDED naming `produce_bytes_per_second` and a
//! `retry_after`; tenant B's producer keeps succeeding meanwhile. Then the
//! CLI: create, update and describe with quotas; bad values refused with one
//! line on stderr.

use std::time::Duration;

use strata_client::{
    Acl, AclOperation, AclPatternType, AclResourceKind, Client, ConnectOptions, ErrorCode, Message, ProducerConfig,
    RetryConfig, TopicOptions,
};

use crate::process::{BrokerProcess, binary_or_skip as binary, run_cli as cli};

const ADMIN_TOKEN: &str = "quota-admin-token-0123456789";
const RATE: u64 = 64 * 1024;

/// The value of one series of `/metrics` (0 when absent).
async fn metric(http: &str, series: &str) -> f64 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// A principal of `tenant` allowed to produce to topic `t`, and its client.
async fn tenant_client(admin: &Client, url: &str, tenant: &str) -> Client {
    admin.with_tenant(tenant).create_topic("t", 1, TopicOptions::default()).await.unwrap();
    let principal = format!("{tenant}-app");
    admin.create_principal(tenant, &principal).await.unwrap();
    let acl = Acl {
        principal: principal.clone(),
        resource_kind: AclResourceKind::Topic as i32,
        pattern_type: AclPatternType::Literal as i32,
        resource_name: "t".into(),
        operation: AclOperation::Produce as i32,
        ..Default::default()
    };
    admin.add_acl(tenant, acl).await.unwrap();
    let (token, _) = admin.issue_token(tenant, &principal).await.unwrap();
    Client::connect_with(url, ConnectOptions::new().token(token)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abusive_tenant_is_throttled_then_refused_while_another_keeps_producing() {
    let Some(bin) = binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let admin_file = dir.path().join("admin-token");
    std::fs::write(&admin_file, ADMIN_TOKEN).unwrap();
    let broker = BrokerProcess::start(
        &bin,
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--auth", "required", "--admin-token-file", admin_file.to_str().unwrap()],
        &[("STRATA_QUOTAS_MAX_THROTTLE", "500ms")],
    );
    let url = format!("http://{}", broker.grpc);
    let admin = Client::connect_with(&url, ConnectOptions::new().token(ADMIN_TOKEN)).await.unwrap();
    let quotas = strata_client::TenantQuotas { produce_bytes_per_second: Some(RATE), ..Default::default() };
    admin.create_tenant_with_quotas("a", quotas).await.unwrap();
    admin.create_tenant("b").await.unwrap();
    let a = tenant_client(&admin, &url, "a").await;
    let b = tenant_client(&admin, &url, "b").await;

    // B produces all along.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let b_running = tokio::spawn(async move {
        let producer = b.producer("t").await.unwrap();
        let mut n = 0u64;
        while !*stop_rx.borrow() {
            producer.send(Message::new(vec![b'b'; 4096])).await.expect("tenant b's produce never fails");
            n += 1;
        }
        n
    });

    // A's producer (retry on) sends 3 s worth at once: throttled, every
    // message acknowledged, stored once.
    let config = ProducerConfig { batch_bytes: 16 * 1024, ..Default::default() };
    let producer = a.producer_with_config("t", config).await.unwrap();
    let n = (3 * RATE / 4096) as usize;
    let mut acks = Vec::new();
    for _ in 0..n {
        acks.push(producer.enqueue(Message::new(vec![b'a'; 4096])).await.unwrap());
    }
    producer.flush().await.unwrap();
    let mut offsets = Vec::new();
    for ack in acks {
        offsets.push(ack.await.expect("throttled, then stored").offset);
    }
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), n, "each message stored once");
    let throttled =
        metric(&broker.http, r#"strata_quota_throttle_seconds_total{tenant="a",quota="produce_bytes_per_second"} "#)
            .await;
    let refused_retried =
        metric(&broker.http, r#"strata_quota_rejections_total{tenant="a",quota="produce_bytes_per_second"} "#).await;
    println!("tenant a: throttled {throttled:.2} s, refused-then-retried {refused_retried} batches");
    assert!(throttled > 0.0 || refused_retried > 0.0, "tenant a was neither throttled nor refused");

    // A client that will not slow down: retry off, a second's worth per
    // round at full speed. Refused, naming the quota and when to retry.
    let config = ProducerConfig { retry: RetryConfig::none(), batch_bytes: RATE as usize, ..Default::default() };
    let raw = a.producer_with_config("t", config).await.unwrap();
    let mut refusal = None;
    for _ in 0..20 {
        let sends: Vec<_> = (0..16).map(|_| raw.send(Message::new(vec![b'x'; 4096]))).collect();
        if let Some(e) = futures::future::join_all(sends).await.into_iter().find_map(Result::err) {
            refusal = Some(e);
            break;
        }
    }
    let e = refusal.expect("the abusive producer was never refused");
    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted), "{e}");
    assert_eq!(e.error_code(), ErrorCode::QuotaExceeded, "{e}");
    assert_eq!(e.quota(), Some("produce_bytes_per_second"), "{e}");
    assert!(e.retry_after().is_some_and(|d| d > Duration::ZERO), "{e}");
    assert!(e.is_retryable(), "a rate refusal is retryable after retry_after");

    stop_tx.send_replace(true);
    let b_sent = b_running.await.unwrap();
    assert!(b_sent > 0);
    let b_throttled =
        metric(&broker.http, r#"strata_quota_throttle_seconds_total{tenant="b",quota="produce_bytes_per_second"} "#)
            .await;
    assert_eq!(b_throttled, 0.0, "tenant b is never throttled");
    println!("tenant b sent {b_sent} messages meanwhile, none refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_updates_and_describes_tenant_quotas() {
    let Some(bin) = binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&bin, &dir.path().join("data"), "127.0.0.1:0", &[], &[]);
    let url = format!("http://{}", broker.grpc);
    let (ok, out, err) = cli(
        &url,
        &[],
        &[
            "tenant",
            "create",
            "shop",
            "--max-topics",
            "2",
            "--max-stored-bytes",
            "1GiB",
            "--produce-rate",
            "10MiB/s",
            "--requests-per-second",
            "100",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "created tenant shop\n");
    let (ok, out, err) = cli(&url, &[], &["tenant", "describe", "shop", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["quotas"]["max_topics"], 2);
    assert_eq!(v["quotas"]["max_stored_bytes"], 1u64 << 30);
    assert_eq!(v["quotas"]["produce_bytes_per_second"], 10u64 << 20);
    assert_eq!(v["quotas"]["max_queues"], serde_json::Value::Null);
    assert_eq!(v["usage"]["topics"], 0);
    // Update: one quota changed, one cleared, the others kept.
    let (ok, out, err) =
        cli(&url, &[], &["tenant", "update", "shop", "--max-topics", "5", "--clear-quota", "requests_per_second"]);
    assert!(ok, "{err}");
    assert!(out.contains("updated tenant shop"), "{out}");
    let (ok, out, _) = cli(&url, &[], &["tenant", "describe", "shop"]);
    assert!(ok);
    let row = |name: &str| {
        out.lines().find(|l| l.starts_with(name)).map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
    };
    assert_eq!(row("max_topics").as_deref(), Some("5 0"), "{out}");
    assert_eq!(row("requests_per_second").as_deref(), Some("unlimited -"), "{out}");
    let stored = row("max_stored_bytes").unwrap_or_default();
    assert!(stored.starts_with('1') && stored.contains("GiB") && stored.ends_with("0 B"), "{out}");
    let (ok, out, _) = cli(&url, &[], &["tenant", "list"]);
    assert!(ok);
    assert!(out.lines().any(|l| l.starts_with("shop") && l.contains("0/5")), "{out}");
    // The quota is enforced through the CLI too.
    for i in 0..5 {
        let (ok, _, err) = cli(&url, &[], &["--tenant", "shop", "topic", "create", &format!("t{i}")]);
        assert!(ok, "{err}");
    }
    let (ok, _, err) = cli(&url, &[], &["--tenant", "shop", "topic", "create", "t5"]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("max_topics"), "{err}");
    // Bad values: one line on stderr, non-zero exit.
    for args in [
        &["tenant", "create", "x", "--max-topics", "-1"][..],
        &["tenant", "create", "x", "--produce-rate", "fast"][..],
        &["tenant", "create", "x", "--requests-per-second", "0"][..],
        &["tenant", "update", "shop", "--clear-quota", "max_nothing"][..],
        &["tenant", "describe", "nope"][..],
    ] {
        let (ok, out, err) = cli(&url, &[], args);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error"), "{args:?}: {err}");
    }
}
