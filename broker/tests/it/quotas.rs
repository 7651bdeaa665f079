//! Tenant quotas over real gRPC against an in-process broker: count quotas
//! (topics, partitions incl. AddPartitions, queues) refused with the quota
//! named and nothing made, stored bytes refused at the limit and freed by
//! retention, a byte rate that throttles then refuses with `retry_after_ms`,
//! requests/s, and connections counted per tenant.

use std::time::Duration;

use strata_proto::v1::{
    AddPartitionsRequest, CreateQueueRequest, CreateTenantRequest, CreateTopicRequest, DescribeTenantRequest,
    ErrorCode, ListTopicsRequest, TenantQuotas, TopicConfig, UpdateTenantRequest, UpdateTopicConfigRequest,
    admin_client::AdminClient, queues_client::QueuesClient,
};
use strata_testkit::eventually;

use crate::harness::{TestBroker, batch_of, channel};
use strata_testkit::http_get;

fn quota_of(err: &tonic::Status) -> (ErrorCode, String, String, String) {
    let info = strata_proto::error_info(err).unwrap_or_default();
    let get = |k: &str| info.metadata.get(k).cloned().unwrap_or_default();
    (strata_proto::error_code(err), get("quota"), get("limit"), get("usage"))
}

async fn create_tenant(admin: &mut AdminClient<tonic::transport::Channel>, name: &str, quotas: TenantQuotas) {
    let req = CreateTenantRequest { name: name.into(), if_not_exists: false, quotas: Some(quotas) };
    admin.create_tenant(req).await.unwrap();
}

fn topic(tenant: &str, name: &str, partitions: u32) -> CreateTopicRequest {
    CreateTopicRequest { tenant: tenant.into(), name: name.into(), partitions, ..Default::default() }
}

#[tokio::test]
async fn count_quotas_refuse_creates_naming_the_quota_and_describe_reports_usage() {
    let b = TestBroker::start().await;
    let mut admin = b.admin().await;
    let quotas =
        TenantQuotas { max_topics: Some(2), max_partitions: Some(3), max_queues: Some(1), ..Default::default() };
    create_tenant(&mut admin, "t", quotas).await;
    admin.create_topic(topic("t", "a", 2)).await.unwrap();
    let err = admin.create_topic(topic("t", "b", 2)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert_eq!(quota_of(&err), (ErrorCode::QuotaExceeded, "max_partitions".into(), "3".into(), "2".into()));
    admin.create_topic(topic("t", "b", 1)).await.unwrap();
    let err = admin.create_topic(topic("t", "c", 1)).await.unwrap_err();
    assert_eq!(quota_of(&err).1, "max_topics");
    let grow = AddPartitionsRequest { tenant: "t".into(), name: "a".into(), partitions: 3 };
    let err = admin.add_partitions(grow).await.unwrap_err();
    assert_eq!(quota_of(&err), (ErrorCode::QuotaExceeded, "max_partitions".into(), "3".into(), "3".into()));
    // Nothing half-made: the refused topic does not exist, `a` kept 2.
    let names: Vec<String> = admin
        .list_topics(ListTopicsRequest { tenant: "t".into() })
        .await
        .unwrap()
        .into_inner()
        .topics
        .into_iter()
        .map(|t| format!("{}:{}", t.name, t.partitions))
        .collect();
    assert_eq!(names, ["a:2", "b:1"]);
    let mut queues = QueuesClient::new(channel(b.addr()).await);
    let q = |name: &str| CreateQueueRequest { tenant: "t".into(), name: name.into(), ..Default::default() };
    queues.create_queue(q("q1")).await.unwrap();
    let err = queues.create_queue(q("q2")).await.unwrap_err();
    assert_eq!(quota_of(&err).1, "max_queues");
    // Describe: quotas and usage.
    let t = admin.describe_tenant(DescribeTenantRequest { name: "t".into() }).await.unwrap().into_inner();
    assert_eq!(t.quotas, Some(quotas));
    let u = t.usage.unwrap();
    assert_eq!((u.topics, u.queues, u.partitions), (2, 1, 3));
    // Update replaces the set: max_partitions is gone, max_topics raised.
    let raised = TenantQuotas { max_topics: Some(3), max_queues: Some(1), ..Default::default() };
    let t = admin.update_tenant(UpdateTenantRequest { name: "t".into(), quotas: Some(raised) }).await.unwrap();
    assert_eq!(t.into_inner().quotas, Some(raised));
    admin.create_topic(topic("t", "c", 8)).await.unwrap();
    // Bad input: a zero rate, an unknown tenant.
    let zero = TenantQuotas { requests_per_second: Some(0), ..Default::default() };
    let err = admin.update_tenant(UpdateTenantRequest { name: "t".into(), quotas: Some(zero) }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = admin.describe_tenant(DescribeTenantRequest { name: "nope".into() }).await.unwrap_err();
    assert_eq!(strata_proto::error_code(&err), ErrorCode::UnknownTenant);
    // Metrics: the refusals by tenant and quota, limits and usage.
    let m = http_get(b.http_addr(), "/metrics").await;
    assert!(m.contains(r#"strata_tenant_quota{tenant="t",quota="max_topics"} 3"#), "{m}");
    assert!(m.contains(r#"strata_tenant_usage{tenant="t",resource="topics"} 3"#), "{m}");
}

#[tokio::test]
async fn stored_bytes_refuse_produce_at_the_limit_and_free_with_retention() {
    let b = TestBroker::start_with(|c| c.storage.maintenance_interval.0 = Duration::from_millis(100)).await;
    let mut admin = b.admin().await;
    create_tenant(&mut admin, "s", TenantQuotas { max_stored_bytes: Some(8192), ..Default::default() }).await;
    let config = TopicConfig { segment_bytes: Some(1024), ..Default::default() };
    admin.create_topic(CreateTopicRequest { config: Some(config), ..topic("s", "t", 1) }).await.unwrap();
    let mut log = b.log().await;
    let produce = |n: usize| {
        let batch = batch_of(&[format!("{n:0>500}")]);
        strata_proto::v1::ProduceRequest {
            tenant: "s".into(),
            topic: "t".into(),
            partition: 0,
            batch,
            ..Default::default()
        }
    };
    let mut refused = None;
    for n in 0..100 {
        if let Err(e) = log.produce(produce(n)).await {
            refused = Some((n, e));
            break;
        }
    }
    let (n, err) = refused.expect("produce never refused by max_stored_bytes");
    assert!(n >= 8192 / 600, "refused after only {n} batches");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let (code, quota, limit, usage) = quota_of(&err);
    assert_eq!((code, quota.as_str(), limit.as_str()), (ErrorCode::QuotaExceeded, "max_stored_bytes", "8192"));
    assert!(usage.parse::<u64>().unwrap() >= 8192, "{usage}");
    // Retention frees it: keep ~1 KiB; the next maintenance tick deletes
    // the older segments and recomputes the usage.
    let retention = TopicConfig { retention_bytes: Some(1024), ..Default::default() };
    let update = UpdateTopicConfigRequest { tenant: "s".into(), name: "t".into(), config: Some(retention) };
    admin.update_topic_config(update).await.unwrap();
    eventually("produce to be accepted again after retention", Duration::from_secs(10), || {
        let mut log = log.clone();
        async move { log.produce(produce(1000)).await.ok() }
    })
    .await;
    let t = admin.describe_tenant(DescribeTenantRequest { name: "s".into() }).await.unwrap().into_inner();
    assert!(t.usage.unwrap().stored_bytes < 8192, "{t:?}");
}

#[tokio::test]
async fn a_byte_rate_throttles_then_refuses_with_retry_after_and_spares_other_tenants() {
    // The default maximum throttle: 1 s.
    let b = TestBroker::start().await;
    let mut admin = b.admin().await;
    let rate =
        TenantQuotas { produce_bytes_per_second: Some(20_000), requests_per_second: Some(50), ..Default::default() };
    create_tenant(&mut admin, "slow", rate).await;
    create_tenant(&mut admin, "fast", TenantQuotas::default()).await;
    for t in ["slow", "fast"] {
        admin.create_topic(topic(t, "t", 1)).await.unwrap();
    }
    let req = |tenant: &str, bytes: usize| strata_proto::v1::ProduceRequest {
        tenant: tenant.into(),
        topic: "t".into(),
        partition: 0,
        batch: batch_of(&["x".repeat(bytes)]),
        ..Default::default()
    };
    let log = b.log().await;
    // A second's worth passes at once; the next 8 KB must wait ~350 ms.
    let first = log.clone().produce(req("slow", 19_000)).await.unwrap().into_inner();
    assert_eq!(first.throttle_ms, 0);
    let second = log.clone().produce(req("slow", 8_000)).await.unwrap().into_inner();
    assert!(second.throttle_ms > 0, "not throttled: {second:?}");
    // A client that will not slow down: 20 batches of 5 KB at once need 5 s,
    // far over the 1 s maximum; the surplus is refused, naming the quota
    // and when to retry.
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let mut log = log.clone();
            let r = req("slow", 5_000);
            tokio::spawn(async move { log.produce(r).await })
        })
        .collect();
    let mut refusals = 0;
    for h in burst {
        if let Err(e) = h.await.unwrap() {
            assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
            let info = strata_proto::error_info(&e).unwrap();
            assert_eq!(info.metadata["quota"], "produce_bytes_per_second");
            assert!(info.metadata["retry_after_ms"].parse::<u64>().unwrap() > 0);
            refusals += 1;
        }
    }
    assert!(refusals > 0, "nothing refused");
    // The other tenant is not limited meanwhile.
    let other = log.clone().produce(req("fast", 200_000)).await.unwrap().into_inner();
    assert_eq!(other.throttle_ms, 0);
    // Requests/s: 200 listing calls at once against 50/s with 1 s of throttle.
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let mut admin = admin.clone();
            tokio::spawn(async move { admin.list_topics(ListTopicsRequest { tenant: "slow".into() }).await })
        })
        .collect();
    let mut refused = 0;
    for h in calls {
        if let Err(e) = h.await.unwrap() {
            assert_eq!(strata_proto::error_info(&e).unwrap().metadata["quota"], "requests_per_second");
            refused += 1;
        }
    }
    assert!(refused > 0, "requests_per_second refused nothing");
    let m = http_get(b.http_addr(), "/metrics").await;
    assert!(m.contains(r#"strata_quota_rejections_total{tenant="slow",quota="produce_bytes_per_second"}"#), "{m}");
    assert!(m.contains(r#"strata_quota_throttle_seconds_total{tenant="slow",quota="produce_bytes_per_second"}"#));
    assert!(!m.contains(r#"tenant="fast",quota="produce_bytes_per_second""#));
}

#[tokio::test]
async fn connections_over_the_quota_are_refused_at_their_first_call() {
    let b = TestBroker::start().await;
    // Anonymous callers count for the default tenant.
    let mut first = b.admin().await;
    let one = TenantQuotas { max_connections: Some(1), ..Default::default() };
    first.update_tenant(UpdateTenantRequest { name: "default".into(), quotas: Some(one) }).await.unwrap();
    let mut second = b.admin().await;
    let err = second.list_topics(ListTopicsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert_eq!(quota_of(&err), (ErrorCode::QuotaExceeded, "max_connections".into(), "1".into(), "1".into()));
    // The first connection still works; once it closes, the second gets in.
    first.list_topics(ListTopicsRequest::default()).await.unwrap();
    drop(first);
    eventually("the second connection to be admitted", Duration::from_secs(10), || {
        let mut second = second.clone();
        async move { second.list_topics(ListTopicsRequest::default()).await.ok() }
    })
    .await;
    let t = second.describe_tenant(DescribeTenantRequest::default()).await.unwrap().into_inner();
    assert_eq!(t.usage.unwrap().connections, 1);
}
