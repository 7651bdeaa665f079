//! Security reconciles: a Tenant's principals become broker principals with
//! exactly their declared ACLs and a token Secret per allowed namespace
//! (refused namespaces get nothing and a condition), tokens rotate on
//! request (the old one revoked once the Secrets hold the new one), and
//! removing a principal, a namespace or the Tenant removes what was made.
//! BrokerCluster: the generated admin token, and missing Secrets reported.

use serde_json::json;
use strata_client::{ConnectOptions, Message, TopicOptions};
use strata_operator::tenant::Tenant;

use crate::cluster::reconcile;
use crate::{CLUSTER_NS, TestEnv, cluster_path, path_of, secret_json, secret_value};

fn tenant_path() -> String {
    path_of("strata.dev/v1alpha1", "Tenant", CLUSTER_NS, "team-a")
}

/// A broker with cluster `main` and tenant `team-a` (principal in
/// `namespaces`) in the API, the tenant reconciled once.
async fn reconciled_tenant(namespaces: &[&str]) -> TestEnv {
    let env = TestEnv::with_broker().await;
    env.fake.insert(crate::cluster_json("main"));
    env.fake.insert(tenant(namespaces));
    env.reconcile::<Tenant>(&tenant_path()).await;
    env
}

fn secret_path(ns: &str, principal: &str) -> String {
    path_of("v1", "Secret", ns, &format!("strata-team-a-{principal}"))
}

/// Tenant `team-a` allowing `apps` and `web`, with principal `orders-app`
/// (Secrets in `namespaces`) allowed to produce and consume `orders*`.
fn tenant(namespaces: &[&str]) -> serde_json::Value {
    json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "team-a", "namespace": CLUSTER_NS},
        "spec": {
            "clusterRef": {"name": "main"},
            "allowedNamespaces": ["apps", "web"],
            "deletionPolicy": "Delete",
            "principals": [{
                "name": "orders-app",
                "namespaces": namespaces,
                "acls": [{"kind": "topic", "name": "orders", "patternType": "prefixed", "operations": ["produce", "consume"]}]
            }]
        }
    })
}

async fn as_token(env: &TestEnv, token: &str) -> strata_client::Client {
    strata_client::Client::connect_with(&env.url(), ConnectOptions::new().token(token)).await.unwrap()
}

fn token_in(env: &TestEnv, ns: &str, principal: &str) -> String {
    secret_value(&env.fake.get(&secret_path(ns, principal)).expect("the token Secret"), "token").unwrap()
}

fn status_principals(env: &TestEnv) -> serde_json::Value {
    env.fake.get(&tenant_path()).unwrap()["status"]["principals"].clone()
}

#[tokio::test]
async fn principals_get_a_token_secret_per_namespace_and_exactly_their_acls() {
    let env = reconciled_tenant(&["apps", "web"]).await;
    assert_eq!(env.ready(&tenant_path()).0, "True", "{:?}", env.ready(&tenant_path()));

    // One token, in a Secret in each namespace.
    let apps = env.fake.get(&secret_path("apps", "orders-app")).unwrap();
    let web = env.fake.get(&secret_path("web", "orders-app")).unwrap();
    let token = secret_value(&apps, "token").unwrap();
    assert!(token.starts_with("strata_"), "{token}");
    assert_eq!(secret_value(&web, "token").unwrap(), token);
    assert_eq!(secret_value(&apps, "tenant").as_deref(), Some("team-a"));
    assert_eq!(secret_value(&apps, "principal").as_deref(), Some("orders-app"));
    assert_eq!(secret_value(&apps, "server").as_deref(), Some("http://main.strata.svc:7070"));
    assert!(apps["data"].get("ca.crt").is_none(), "no TLS, no CA");
    let st = status_principals(&env);
    let token_id = st[0]["tokenId"].as_str().unwrap().to_owned();
    assert_eq!(apps["metadata"]["annotations"]["strata.dev/token-id"], token_id.as_str());
    assert_eq!(st[0]["secrets"], json!(["apps/strata-team-a-orders-app", "web/strata-team-a-orders-app"]));

    // The token is the principal's: it produces to the tenant's orders*
    // topics, and nothing else.
    let admin = env.client().await;
    let in_a = admin.with_tenant("team-a");
    in_a.create_topic("orders-eu", 1, TopicOptions::default()).await.unwrap();
    in_a.create_topic("payments", 1, TopicOptions::default()).await.unwrap();
    admin.create_tenant("team-b").await.unwrap();
    admin.with_tenant("team-b").create_topic("orders-eu", 1, TopicOptions::default()).await.unwrap();
    let app = as_token(&env, &token).await;
    let sent = app.producer("orders-eu").await.unwrap().send(Message::new("from the Secret")).await.unwrap();
    assert_eq!(sent.offset, 0);
    let err = app.describe_topic("payments").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    let err = app.with_tenant("team-b").producer("orders-eu").await.map(|_| ()).unwrap_err();
    assert!(matches!(err.code(), Some(tonic::Code::PermissionDenied | tonic::Code::NotFound)), "{err}");

    // A binding added out of band goes; a declared one removed comes back;
    // a spec change is applied exactly.
    let acls = admin.list_acls("team-a", "orders-app").await.unwrap();
    assert_eq!(acls.len(), 2, "{acls:?}");
    let stray = strata_client::Acl {
        principal: "orders-app".into(),
        resource_kind: strata_client::AclResourceKind::Topic as i32,
        resource_name: "payments".into(),
        operation: strata_client::AclOperation::Admin as i32,
        ..Default::default()
    };
    admin.add_acl("team-a", stray).await.unwrap();
    admin.remove_acl("team-a", acls[0].clone()).await.unwrap();
    env.reconcile::<Tenant>(&tenant_path()).await;
    let mut now = admin.list_acls("team-a", "orders-app").await.unwrap();
    now.sort_by_key(|a| a.operation);
    let mut before = acls.clone();
    before.sort_by_key(|a| a.operation);
    assert_eq!(now, before);
    env.fake.update_spec(
        &tenant_path(),
        json!({"principals": [{"name": "orders-app", "namespaces": ["apps", "web"],
            "acls": [{"kind": "topic", "name": "orders-eu", "operations": ["produce"]}]}]}),
    );
    env.reconcile::<Tenant>(&tenant_path()).await;
    let now = admin.list_acls("team-a", "orders-app").await.unwrap();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(
        (now[0].resource_name.as_str(), now[0].operation),
        ("orders-eu", strata_client::AclOperation::Produce as i32)
    );
    // Nothing else changed: same token, same Secrets.
    assert_eq!(token_in(&env, "apps", "orders-app"), token);
    assert_eq!(status_principals(&env)[0]["tokenId"], token_id.as_str());
}

#[tokio::test]
async fn a_namespace_the_tenant_does_not_allow_gets_no_secret_and_a_condition() {
    let env = reconciled_tenant(&["apps", "elsewhere"]).await;
    let (status, reason, message) = env.ready(&tenant_path());
    assert_eq!((status.as_str(), reason.as_str()), ("False", "NamespaceNotAllowed"), "{message}");
    assert!(message.contains("principal orders-app: elsewhere"), "{message}");
    assert!(env.fake.get(&secret_path("apps", "orders-app")).is_some(), "the allowed namespace is served");
    assert!(env.fake.get(&secret_path("elsewhere", "orders-app")).is_none());
    let event = env.fake.events().into_iter().find(|e| e["reason"] == "NamespaceNotAllowed").expect("a Warning event");
    assert_eq!(event["type"], "Warning");
    assert_eq!(status_principals(&env)[0]["secrets"], json!(["apps/strata-team-a-orders-app"]));

    // Allowing it later serves it.
    env.fake.update_spec(&tenant_path(), json!({"allowedNamespaces": ["apps", "web", "elsewhere"]}));
    env.reconcile::<Tenant>(&tenant_path()).await;
    assert_eq!(env.ready(&tenant_path()).0, "True");
    assert_eq!(token_in(&env, "elsewhere", "orders-app"), token_in(&env, "apps", "orders-app"));
}

#[tokio::test]
async fn rotation_issues_a_new_token_updates_the_secrets_then_revokes_the_old_one() {
    let env = reconciled_tenant(&["apps", "web"]).await;
    let old = token_in(&env, "apps", "orders-app");
    let old_id = status_principals(&env)[0]["tokenId"].as_str().unwrap().to_owned();
    let admin = env.client().await;
    admin.with_tenant("team-a").create_topic("orders", 1, TopicOptions::default()).await.unwrap();
    let before = as_token(&env, &old).await;
    before.describe_topic("orders").await.unwrap();

    // Reconciling again without a request changes nothing.
    env.reconcile::<Tenant>(&tenant_path()).await;
    assert_eq!(token_in(&env, "apps", "orders-app"), old);

    env.fake.update_meta(&tenant_path(), json!({"annotations": {"strata.dev/rotate-tokens": "2026-12-06"}}));
    env.reconcile::<Tenant>(&tenant_path()).await;
    assert_eq!(env.ready(&tenant_path()).0, "True");
    let new = token_in(&env, "apps", "orders-app");
    assert_ne!(new, old);
    assert_eq!(token_in(&env, "web", "orders-app"), new, "every Secret holds the new token");
    let st = env.fake.get(&tenant_path()).unwrap()["status"].clone();
    let new_id = st["principals"][0]["tokenId"].as_str().unwrap().to_owned();
    assert_ne!(new_id, old_id);
    assert_eq!(st["tokensRotatedFor"], "2026-12-06");
    assert_eq!(
        env.fake.get(&secret_path("web", "orders-app")).unwrap()["metadata"]["annotations"]["strata.dev/token-id"],
        new_id.as_str()
    );
    // The old token is revoked (the next request with it is refused), the
    // new one works, and the broker holds exactly one token.
    let err = before.describe_topic("orders").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");
    as_token(&env, &new).await.describe_topic("orders").await.unwrap();
    let principals = admin.list_principals("team-a").await.unwrap();
    let ids: Vec<&str> = principals[0].tokens.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [new_id.as_str()]);

    // The same annotation value again is no new request.
    env.reconcile::<Tenant>(&tenant_path()).await;
    assert_eq!(token_in(&env, "apps", "orders-app"), new);
}

#[tokio::test]
async fn removing_a_namespace_a_principal_or_the_tenant_removes_what_was_made() {
    let env = TestEnv::with_broker().await;
    env.fake.insert(crate::cluster_json("main"));
    let mut t = tenant(&["apps", "web"]);
    t["spec"]["principals"].as_array_mut().unwrap().push(json!({"name": "audit", "namespaces": ["web"], "acls": []}));
    env.fake.insert(t);
    env.reconcile::<Tenant>(&tenant_path()).await;
    assert_eq!(env.ready(&tenant_path()).0, "True");
    let admin = env.client().await;
    let names = |ps: Vec<strata_proto::v1::Principal>| ps.into_iter().map(|p| p.name).collect::<Vec<_>>();
    assert_eq!(names(admin.list_principals("team-a").await.unwrap()), ["audit", "orders-app"]);
    assert!(env.fake.get(&secret_path("web", "audit")).is_some());

    // orders-app loses namespace web.
    env.fake.update_spec(
        &tenant_path(),
        json!({"principals": [
            {"name": "orders-app", "namespaces": ["apps"], "acls": []},
            {"name": "audit", "namespaces": ["web"], "acls": []}
        ]}),
    );
    env.reconcile::<Tenant>(&tenant_path()).await;
    assert!(env.fake.get(&secret_path("web", "orders-app")).is_none());
    assert!(env.fake.get(&secret_path("apps", "orders-app")).is_some());

    // audit goes: its Secret and the broker principal (and its token).
    let audit_token = token_in(&env, "web", "audit");
    env.fake.update_spec(
        &tenant_path(),
        json!({"principals": [{"name": "orders-app", "namespaces": ["apps"], "acls": []}]}),
    );
    env.reconcile::<Tenant>(&tenant_path()).await;
    assert!(env.fake.get(&secret_path("web", "audit")).is_none());
    assert_eq!(names(admin.list_principals("team-a").await.unwrap()), ["orders-app"]);
    let err = as_token(&env, &audit_token).await.list_topics().await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");

    // The Tenant goes (policy Delete): the broker tenant with its principals, and the Secrets.
    let orders_token = token_in(&env, "apps", "orders-app");
    env.fake.delete(&tenant_path());
    env.reconcile::<Tenant>(&tenant_path()).await;
    assert!(env.fake.get(&tenant_path()).is_none(), "the finalizer was released");
    assert!(env.fake.get(&secret_path("apps", "orders-app")).is_none());
    assert!(!admin.list_tenants().await.unwrap().iter().any(|t| t.name == "team-a"));
    assert!(admin.list_principals("").await.unwrap().iter().all(|p| p.tenant != "team-a"));
    let err = as_token(&env, &orders_token).await.list_topics().await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");
}

#[tokio::test]
async fn the_admin_token_secret_is_generated_once_and_owned_by_the_cluster() {
    let env = TestEnv::without_broker().await;
    let admin_path = path_of("v1", "Secret", CLUSTER_NS, "main-admin-token");
    env.fake.remove(&admin_path);
    env.fake.insert(crate::cluster_json("main"));
    reconcile(&env).await;
    let secret = env.fake.get(&admin_path).expect("the generated admin token");
    let token = secret_value(&secret, "token").unwrap();
    assert!(token.starts_with("strata_") && token.len() == "strata_".len() + 43, "{token}");
    let owner = &secret["metadata"]["ownerReferences"][0];
    assert_eq!((owner["kind"].as_str(), owner["name"].as_str()), (Some("BrokerCluster"), Some("main")));
    assert!(env.fake.event_reasons().iter().any(|r| r == "AdminTokenCreated"));
    // The pods mount it; the StatefulSet was applied.
    let sts = env.fake.get(&path_of("apps/v1", "StatefulSet", CLUSTER_NS, "main")).unwrap();
    let volumes = sts["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "main-admin-token"), "{volumes:?}");
    // Never replaced.
    reconcile(&env).await;
    assert_eq!(secret_value(&env.fake.get(&admin_path).unwrap(), "token").unwrap(), token);
}

#[tokio::test]
async fn missing_user_named_secrets_are_reported_and_nothing_is_applied() {
    let env = TestEnv::without_broker().await;
    let mut c = crate::cluster_json("main");
    c["spec"]["auth"] = json!({"adminTokenSecret": "ops-token"});
    env.fake.insert(c);
    reconcile(&env).await;
    let (status, reason, message) = env.ready(&cluster_path("main"));
    assert_eq!((status.as_str(), reason.as_str()), ("False", "SecretNotFound"), "{message}");
    assert!(message.contains("spec.auth.adminTokenSecret: Secret strata/ops-token not found"), "{message}");
    assert!(env.fake.event_reasons().iter().any(|r| r == "SecretNotFound"));
    let sts = path_of("apps/v1", "StatefulSet", CLUSTER_NS, "main");
    assert!(env.fake.get(&sts).is_none(), "no pods that would fail to start");
    assert!(env.fake.get(&path_of("v1", "Secret", CLUSTER_NS, "main-admin-token-x")).is_none());

    // The Secret arrives; TLS names one that is missing, then lacks ca.crt
    // under clientAuth: require.
    env.fake.insert(secret_json(CLUSTER_NS, "ops-token", &[("token", "strata_ops")]));
    env.fake.update_spec(&cluster_path("main"), json!({"tls": {"secretName": "main-tls", "clientAuth": "require"}}));
    reconcile(&env).await;
    let (_, reason, message) = env.ready(&cluster_path("main"));
    assert_eq!(reason, "SecretNotFound", "{message}");
    assert!(message.contains("spec.tls.secretName: Secret strata/main-tls not found"), "{message}");
    env.fake.insert(secret_json(CLUSTER_NS, "main-tls", &[("tls.crt", "cert"), ("tls.key", "key")]));
    reconcile(&env).await;
    let (_, reason, message) = env.ready(&cluster_path("main"));
    assert_eq!(reason, "SecretKeyNotFound", "{message}");
    assert!(message.ends_with("has no key ca.crt"), "{message}");
    assert!(env.fake.get(&sts).is_none());

    env.fake.insert(secret_json(CLUSTER_NS, "main-tls", &[("tls.crt", "c"), ("tls.key", "k"), ("ca.crt", "ca")]));
    reconcile(&env).await;
    let sts = env.fake.get(&sts).expect("applied once every Secret is there");
    let volumes = sts["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "ops-token"));
    assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "main-tls"));
    let bc = env.fake.get(&cluster_path("main")).unwrap();
    assert_eq!(bc["status"]["clientUrl"], "https://main.strata.svc:7070");
}

#[tokio::test]
async fn a_tenant_on_a_cluster_without_its_admin_token_waits_for_it() {
    let env = TestEnv::with_broker().await;
    env.fake.remove(&path_of("v1", "Secret", CLUSTER_NS, "main-admin-token"));
    env.fake.insert(crate::cluster_json("main"));
    env.fake.insert(tenant(&["apps"]));
    env.reconcile::<Tenant>(&tenant_path()).await;
    let (status, reason, message) = env.ready(&tenant_path());
    assert_eq!((status.as_str(), reason.as_str()), ("False", "SecretNotFound"), "{message}");
    assert!(message.contains("main-admin-token"), "{message}");
    // With the wrong token the broker refuses the operator.
    env.fake.insert(secret_json(CLUSTER_NS, "main-admin-token", &[("token", "strata_wrong")]));
    env.reconcile::<Tenant>(&tenant_path()).await;
    let (status, _, message) = env.ready(&tenant_path());
    assert_eq!(status, "False");
    assert!(message.contains("not valid"), "{message}");
}
