//! Leader election against the fake API: one holder at a time, renewal,
//! takeover after expiry, and the loser of a race backs off.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;
use strata_operator::leader::{LeaseConfig, LeaseLock};

use crate::{FakeApi, path_of};

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig {
        name: "strata-operator".into(),
        namespace: "ops".into(),
        identity: identity.into(),
        duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    }
}

/// The path of the operator's lease.
fn lease_path() -> String {
    path_of("coordination.k8s.io/v1", "Lease", "ops", "strata-operator")
}

/// The operator's lease with this `spec`.
fn lease(spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "strata-operator", "namespace": "ops"},
        "spec": spec
    })
}

#[tokio::test]
async fn one_leader_at_a_time_and_takeover_after_expiry() {
    let (client, fake) = FakeApi::start();
    let a = LeaseLock::new(client.clone(), config("a"));
    let b = LeaseLock::new(client, config("b"));
    let path = lease_path();
    let t0 = Timestamp::now();

    assert!(a.try_acquire(t0).await.unwrap(), "a creates the lease");
    assert!(!b.try_acquire(t0).await.unwrap(), "b waits for a valid lease");
    assert!(a.try_acquire(t0 + SignedDuration::from_secs(5)).await.unwrap(), "a renews");
    assert_eq!(fake.get(&path).unwrap()["spec"]["holderIdentity"], "a");

    // a stops renewing; after the lease duration b takes over.
    let later = Timestamp::now() + SignedDuration::from_secs(30);
    assert!(b.try_acquire(later).await.unwrap());
    let lease = fake.get(&path).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert!(!a.try_acquire(later).await.unwrap(), "a lost it");
}

#[tokio::test]
async fn a_stale_update_loses_the_race() {
    let (client, fake) = FakeApi::start();
    let path = lease_path();
    fake.insert(lease(json!({"holderIdentity": "", "leaseDurationSeconds": 15})));
    let a = LeaseLock::new(client, config("a"));
    assert!(a.try_acquire(Timestamp::now()).await.unwrap());
    // Everyone's PUTs carry the resourceVersion they read: the fake answers
    // 409 to a stale one (checked here on the request log).
    let put = fake.requests().into_iter().find(|r| r.method == http::Method::PUT).unwrap();
    assert!(put.body["metadata"]["resourceVersion"].is_string());
    assert_eq!(fake.get(&path).unwrap()["spec"]["holderIdentity"], "a");
}

#[tokio::test(start_paused = true)]
async fn run_elected_runs_the_work_only_while_leading() {
    let (client, fake) = FakeApi::start();
    let path = lease_path();
    // Someone else holds a fresh lease.
    let renewed = Timestamp::now().to_string();
    fake.insert(lease(json!({"holderIdentity": "other", "leaseDurationSeconds": 15, "renewTime": renewed})));
    let lock = LeaseLock::new(client, config("a"));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let work = async move {
        let _ = started_tx.send(());
        std::future::pending::<()>().await;
    };
    let leading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let l = leading.clone();
    let task = tokio::spawn(async move {
        lock.run_elected(
            work,
            async {
                let _ = stop_rx.await;
            },
            move |v| l.store(v, std::sync::atomic::Ordering::SeqCst),
        )
        .await
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!leading.load(std::sync::atomic::Ordering::SeqCst), "never leads while another holds a valid lease");
    // The other holder goes away (releases the lease).
    fake.update_spec(&path, json!({"holderIdentity": null}));
    started_rx.await.unwrap();
    assert!(leading.load(std::sync::atomic::Ordering::SeqCst));
    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(fake.get(&path).unwrap()["spec"]["holderIdentity"].is_null(), "released on shutdown");
}
