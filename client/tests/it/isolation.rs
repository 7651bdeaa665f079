//! Tenant isolation and ACLs against a real `strata-broker` process with
//! `--auth required` (DESIGN §4.5, issue 16):
//! - the isolation matrix: for every RPC of the Log, Admin, Queues and
//!   Groups services (enumerated from the proto descriptor, so a new RPC
//!   without a row fails the test), a principal of tenant `a` holding every
//!   ACL of its own tenant, aimed at tenant `b`'s resources, is refused
//!   PERMISSION_DENIED or NOT_FOUND and never gets data; listings show only
//!   its own tenant's; the matrix is printed;
//! - ACLs: produce-only on the prefix `orders.` produces to `orders.eu` but
//!   cannot consume it nor touch `payments`; the ACL removed (with the CLI),
//!   the next request is refused.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;

use prost::Message as _;
use strata_client::{
    Acl, AclOperation, AclPatternType, AclResourceKind, Client, ConnectOptions, ErrorCode, Message, TopicOptions,
};
use strata_proto::v1 as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::process::{BrokerProcess, binary_or_skip as binary};

const ADMIN_TOKEN: &str = "isolation-admin-token-0123456789";

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, Bearer>;

/// Raw generated clients of the four services, as one caller.
#[derive(Clone)]
struct Raw {
    log: pb::log_client::LogClient<Svc>,
    admin: pb::admin_client::AdminClient<Svc>,
    queues: pb::queues_client::QueuesClient<Svc>,
    groups: pb::groups_client::GroupsClient<Svc>,
}

impl Raw {
    async fn connect(url: &str, token: &str) -> Raw {
        let channel = Channel::from_shared(url.to_owned()).unwrap().connect().await.unwrap();
        let bearer = Bearer(format!("Bearer {token}").parse().unwrap());
        Raw {
            log: pb::log_client::LogClient::with_interceptor(channel.clone(), bearer.clone()),
            admin: pb::admin_client::AdminClient::with_interceptor(channel.clone(), bearer.clone()),
            queues: pb::queues_client::QueuesClient::with_interceptor(channel.clone(), bearer.clone()),
            groups: pb::groups_client::GroupsClient::with_interceptor(channel, bearer),
        }
    }
}

/// What one matrix call did.
enum Outcome {
    /// Refused with this status (and no data).
    Refused(Code, ErrorCode, String),
    /// Answered: a leak unless the row says the RPC carries no tenant data.
    Answered(String),
}

type Call = Pin<Box<dyn Future<Output = Outcome> + Send>>;

fn refused(s: Status) -> Outcome {
    Outcome::Refused(s.code(), strata_proto::error_code(&s), s.message().to_owned())
}

fn unary<T: std::fmt::Debug>(r: Result<tonic::Response<T>, Status>) -> Outcome {
    match r {
        Ok(resp) => Outcome::Answered(format!("{:?}", resp.into_inner())),
        Err(s) => refused(s),
    }
}

fn item_refused(e: Option<pb::ItemError>, what: String) -> Outcome {
    match e {
        Some(e) => Outcome::Refused(
            Code::from_i32(e.status_code),
            e.info.map_or(ErrorCode::Unspecified, |i| i.code()),
            e.message,
        ),
        None => Outcome::Answered(what),
    }
}

/// The `Service/Method` names of a service in the compiled descriptor.
fn proto_methods() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut services = BTreeSet::new();
    let mut methods = BTreeSet::new();
    for f in set.file.iter().filter(|f| f.package() == "strata.v1") {
        for s in &f.service {
            services.insert(s.name().to_owned());
            if s.name() == "Raft" {
                continue;
            }
            for m in &s.method {
                methods.insert(format!("{}/{}", s.name(), m.name()));
            }
        }
    }
    // A new service fails here until the matrix covers it. Raft is
    // broker-to-broker (cluster admin only, checked by `Operation::Cluster`)
    // and not served by a standalone broker.
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        ["Admin", "Groups", "Log", "Queues", "Raft"],
        "a new service needs rows in the isolation matrix"
    );
    methods
}

fn start_broker(bin: &std::path::Path, dir: &std::path::Path) -> BrokerProcess {
    let admin_file = dir.join("admin-token");
    std::fs::write(&admin_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    BrokerProcess::start(
        bin,
        &dir.join("data"),
        "127.0.0.1:0",
        &["--auth", "required", "--admin-token-file", admin_file.to_str().unwrap()],
        &[],
    )
}

/// [`start_broker`] in a temporary directory; the broker's URL and a client
/// with the admin token.
async fn admin_broker(bin: &std::path::Path) -> (tempfile::TempDir, BrokerProcess, String, Client) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(bin, dir.path());
    let url = format!("http://{}", broker.grpc);
    let admin = Client::connect_with(&url, ConnectOptions::new().token(ADMIN_TOKEN)).await.unwrap();
    (dir, broker, url, admin)
}

fn acl(principal: &str, kind: AclResourceKind, pattern: AclPatternType, name: &str, op: AclOperation) -> Acl {
    Acl {
        tenant: String::new(),
        principal: principal.to_owned(),
        resource_kind: kind as i32,
        pattern_type: pattern as i32,
        resource_name: name.to_owned(),
        operation: op as i32,
    }
}

/// Tenant `t` with a topic, a queue and a group holding data, and a
/// principal `p-<t>` allowed everything in `t` (by ACLs on `*`); returns
/// the principal's token.
async fn tenant_with_data(admin: &Client, raw: &mut Raw, t: &str) -> String {
    admin.create_tenant(t).await.unwrap();
    let c = admin.with_tenant(t);
    c.create_topic(&format!("{t}-topic"), 1, TopicOptions::default()).await.unwrap();
    c.producer(&format!("{t}-topic")).await.unwrap().send(Message::new(format!("secret of {t}"))).await.unwrap();
    let q = pb::CreateQueueRequest { tenant: t.into(), name: format!("{t}-queue"), ..Default::default() };
    raw.queues.create_queue(q).await.unwrap();
    let m = pb::OutgoingMessage { body: format!("queued secret of {t}").into(), ..Default::default() };
    raw.queues
        .send(pb::SendRequest { tenant: t.into(), queue: format!("{t}-queue"), messages: vec![m] })
        .await
        .unwrap();
    let offsets =
        vec![pb::PartitionOffset { topic: format!("{t}-topic"), partition: 0, offset: 1, metadata: String::new() }];
    let commit =
        pb::CommitOffsetsRequest { tenant: t.into(), group: format!("{t}-group"), offsets, ..Default::default() };
    raw.groups.commit_offsets(commit).await.unwrap();
    let principal = format!("p-{t}");
    admin.create_principal(t, &principal).await.unwrap();
    for kind in [AclResourceKind::Topic, AclResourceKind::Queue, AclResourceKind::Group] {
        admin.add_acl(t, acl(&principal, kind, AclPatternType::Literal, "*", AclOperation::All)).await.unwrap();
    }
    admin.issue_token(t, &principal).await.unwrap().0
}

/// Every RPC, called by a principal of `a` on tenant `b`'s resources.
fn matrix(raw: &Raw) -> Vec<(&'static str, &'static str, Call)> {
    let b = || "b".to_owned();
    let topic = || "b-topic".to_owned();
    let queue = || "b-queue".to_owned();
    let group = || "b-group".to_owned();
    let receipt = || vec![pb::Receipt::default()];
    let message = || vec![pb::OutgoingMessage { body: "x".into(), ..Default::default() }];
    // An ACL allowing everything on every topic of `b`.
    let all_topics =
        |principal| Some(acl(principal, AclResourceKind::Topic, AclPatternType::Literal, "*", AclOperation::All));
    let mut rows: Vec<(&'static str, &'static str, Call)> = Vec::new();
    macro_rules! row {
        ($svc:literal, $method:literal, $client:ident, |$c:ident| $body:expr) => {{
            let mut $c = raw.$client.clone();
            rows.push(($svc, $method, Box::pin(async move { $body })));
        }};
    }
    // Log
    row!("Log", "Produce", log, |c| unary(
        c.produce(pb::ProduceRequest { tenant: b(), topic: topic(), batch: vec![0; 64].into(), ..Default::default() })
            .await
    ));
    row!("Log", "ProduceStream", log, |c| {
        let req = pb::ProduceRequest { tenant: b(), topic: topic(), request_id: 7, ..Default::default() };
        match c.produce_stream(tokio_stream::iter(vec![req])).await {
            Err(s) => refused(s),
            Ok(resp) => {
                let mut s = resp.into_inner();
                match s.message().await {
                    Ok(Some(r)) => item_refused(r.error.clone(), format!("{r:?}")),
                    Ok(None) => Outcome::Answered("stream ended without an answer".into()),
                    Err(s) => refused(s),
                }
            }
        }
    });
    row!("Log", "Fetch", log, |c| {
        let req = pb::FetchRequest {
            tenant: b(),
            topic: topic(),
            start: Some(pb::fetch_request::Start::Offset(0)),
            ..Default::default()
        };
        match c.fetch(req).await {
            Err(s) => refused(s),
            Ok(resp) => match resp.into_inner().message().await {
                Ok(first) => Outcome::Answered(format!("{first:?}")),
                Err(s) => refused(s),
            },
        }
    });
    row!("Log", "ListOffsets", log, |c| unary(
        c.list_offsets(pb::ListOffsetsRequest { tenant: b(), topic: topic(), ..Default::default() }).await
    ));
    row!("Log", "InitProducer", log, |c| unary(
        c.init_producer(pb::InitProducerRequest { tenant: b(), producer_name: "x".into() }).await
    ));
    // Admin
    row!("Admin", "CreateTenant", admin, |c| unary(
        c.create_tenant(pb::CreateTenantRequest { name: "c".into(), ..Default::default() }).await
    ));
    row!("Admin", "ListTenants", admin, |c| match c.list_tenants(pb::ListTenantsRequest {}).await {
        Err(s) => refused(s),
        Ok(r) => {
            let names: Vec<String> = r.into_inner().tenants.into_iter().map(|t| t.name).collect();
            if names == ["a"] {
                Outcome::Refused(Code::Ok, ErrorCode::Unspecified, "lists only its own tenant: [a]".into())
            } else {
                Outcome::Answered(format!("{names:?}"))
            }
        }
    });
    row!("Admin", "DeleteTenant", admin, |c| unary(c.delete_tenant(pb::DeleteTenantRequest { name: b() }).await));
    row!("Admin", "UpdateTenant", admin, |c| unary(
        c.update_tenant(pb::UpdateTenantRequest { name: b(), quotas: Some(pb::TenantQuotas::default()) }).await
    ));
    row!("Admin", "DescribeTenant", admin, |c| unary(c.describe_tenant(pb::DescribeTenantRequest { name: b() }).await));
    row!("Admin", "CreateTopic", admin, |c| unary(
        c.create_topic(pb::CreateTopicRequest { tenant: b(), name: "new".into(), partitions: 1, ..Default::default() })
            .await
    ));
    row!("Admin", "ListTopics", admin, |c| unary(c.list_topics(pb::ListTopicsRequest { tenant: b() }).await));
    row!("Admin", "DescribeTopic", admin, |c| unary(
        c.describe_topic(pb::DescribeTopicRequest { tenant: b(), name: topic() }).await
    ));
    row!("Admin", "AddPartitions", admin, |c| unary(
        c.add_partitions(pb::AddPartitionsRequest { tenant: b(), name: topic(), partitions: 2 }).await
    ));
    row!("Admin", "UpdateTopicConfig", admin, |c| unary(
        c.update_topic_config(pb::UpdateTopicConfigRequest { tenant: b(), name: topic(), ..Default::default() }).await
    ));
    row!("Admin", "DeleteTopic", admin, |c| unary(
        c.delete_topic(pb::DeleteTopicRequest { tenant: b(), name: topic() }).await
    ));
    row!("Admin", "GetServerInfo", admin, |c| unary(c.get_server_info(pb::GetServerInfoRequest {}).await));
    row!("Admin", "DescribeCluster", admin, |c| unary(c.describe_cluster(pb::DescribeClusterRequest {}).await));
    row!("Admin", "RemoveBroker", admin, |c| unary(c.remove_broker(pb::RemoveBrokerRequest { broker_id: 0 }).await));
    row!("Admin", "CreatePrincipal", admin, |c| unary(
        c.create_principal(pb::CreatePrincipalRequest { tenant: b(), name: "intruder".into(), if_not_exists: false })
            .await
    ));
    row!("Admin", "ListPrincipals", admin, |c| unary(
        c.list_principals(pb::ListPrincipalsRequest { tenant: b() }).await
    ));
    row!("Admin", "DeletePrincipal", admin, |c| unary(
        c.delete_principal(pb::DeletePrincipalRequest { tenant: b(), name: "p-b".into() }).await
    ));
    row!("Admin", "IssueToken", admin, |c| unary(
        c.issue_token(pb::IssueTokenRequest { tenant: b(), principal: "p-b".into() }).await
    ));
    row!("Admin", "RevokeToken", admin, |c| unary(
        c.revoke_token(pb::RevokeTokenRequest { tenant: b(), principal: "p-b".into(), token: "x".into() }).await
    ));
    row!("Admin", "AddAcl", admin, |c| unary(
        c.add_acl(pb::AddAclRequest { tenant: b(), acl: all_topics("p-a") }).await
    ));
    row!("Admin", "ListAcls", admin, |c| unary(
        c.list_acls(pb::ListAclsRequest { tenant: b(), principal: String::new() }).await
    ));
    row!("Admin", "RemoveAcl", admin, |c| unary(
        c.remove_acl(pb::RemoveAclRequest { tenant: b(), acl: all_topics("p-b") }).await
    ));
    row!("Admin", "GetMetadata", admin, |c| unary(
        c.get_metadata(pb::GetMetadataRequest { tenant: b(), topics: vec![], queues: true, groups: vec![group()] })
            .await
    ));
    // Queues
    row!("Queues", "CreateQueue", queues, |c| unary(
        c.create_queue(pb::CreateQueueRequest { tenant: b(), name: "new".into(), ..Default::default() }).await
    ));
    row!("Queues", "UpdateQueue", queues, |c| unary(
        c.update_queue(pb::UpdateQueueRequest { tenant: b(), name: queue(), ..Default::default() }).await
    ));
    row!("Queues", "ListQueues", queues, |c| unary(c.list_queues(pb::ListQueuesRequest { tenant: b() }).await));
    row!("Queues", "DescribeQueue", queues, |c| unary(
        c.describe_queue(pb::DescribeQueueRequest { tenant: b(), name: queue() }).await
    ));
    row!("Queues", "DeleteQueue", queues, |c| unary(
        c.delete_queue(pb::DeleteQueueRequest { tenant: b(), name: queue(), ..Default::default() }).await
    ));
    row!("Queues", "PurgeQueue", queues, |c| unary(
        c.purge_queue(pb::PurgeQueueRequest { tenant: b(), name: queue() }).await
    ));
    row!("Queues", "Redrive", queues, |c| unary(
        c.redrive(pb::RedriveRequest { tenant: b(), dead_letter_queue: queue(), max_messages: 0 }).await
    ));
    row!("Queues", "Bind", queues, |c| unary(
        c.bind(pb::BindRequest { tenant: b(), queue: queue(), topic: topic(), filter: None }).await
    ));
    row!("Queues", "Unbind", queues, |c| unary(
        c.unbind(pb::UnbindRequest { tenant: b(), queue: queue(), topic: topic(), filter: None }).await
    ));
    row!("Queues", "Send", queues, |c| unary(
        c.send(pb::SendRequest { tenant: b(), queue: queue(), messages: message() }).await
    ));
    row!("Queues", "SendStream", queues, |c| {
        let req = pb::SendStreamRequest { tenant: b(), queue: queue(), messages: message(), request_id: 1 };
        match c.send_stream(tokio_stream::iter(vec![req])).await {
            Err(s) => refused(s),
            Ok(resp) => match resp.into_inner().message().await {
                Ok(Some(r)) => item_refused(r.error.clone(), format!("{r:?}")),
                Ok(None) => Outcome::Answered("stream ended without an answer".into()),
                Err(s) => refused(s),
            },
        }
    });
    row!("Queues", "Receive", queues, |c| unary(
        c.receive(pb::ReceiveRequest { tenant: b(), queue: queue(), max_messages: 10, ..Default::default() }).await
    ));
    row!("Queues", "Ack", queues, |c| unary(
        c.ack(pb::AckRequest { tenant: b(), queue: queue(), receipts: receipt() }).await
    ));
    row!("Queues", "Nack", queues, |c| unary(
        c.nack(pb::NackRequest { tenant: b(), queue: queue(), receipts: receipt(), delay_ms: None }).await
    ));
    row!("Queues", "ExtendVisibility", queues, |c| unary(
        c.extend_visibility(pb::ExtendVisibilityRequest {
            tenant: b(),
            queue: queue(),
            receipts: receipt(),
            visibility_timeout_ms: 1000,
        })
        .await
    ));
    row!("Queues", "Peek", queues, |c| unary(
        c.peek(pb::PeekRequest { tenant: b(), queue: queue(), max_messages: 10 }).await
    ));
    row!("Queues", "OpenReplyQueue", queues, |c| match c
        .open_reply_queue(pb::OpenReplyQueueRequest { tenant: b() })
        .await
    {
        Err(s) => refused(s),
        Ok(resp) => match resp.into_inner().message().await {
            Ok(first) => Outcome::Answered(format!("{first:?}")),
            Err(s) => refused(s),
        },
    });
    // Groups
    row!("Groups", "Join", groups, |c| {
        let join = pb::JoinGroup { tenant: b(), group: group(), topics: vec![topic()], ..Default::default() };
        let first = pb::MemberMessage { kind: Some(pb::member_message::Kind::Join(join)) };
        // The stream stays open (a member would heartbeat): the answer is
        // the status of the call or the first event.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(first).await.unwrap();
        let outcome = match c.join(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            Err(s) => refused(s),
            Ok(resp) => match resp.into_inner().message().await {
                Ok(first) => Outcome::Answered(format!("{first:?}")),
                Err(s) => refused(s),
            },
        };
        drop(tx);
        outcome
    });
    row!("Groups", "CommitOffsets", groups, |c| unary(
        c.commit_offsets(pb::CommitOffsetsRequest {
            tenant: b(),
            group: group(),
            offsets: vec![pb::PartitionOffset { topic: topic(), partition: 0, offset: 0, metadata: String::new() }],
            ..Default::default()
        })
        .await
    ));
    row!("Groups", "FetchOffsets", groups, |c| unary(
        c.fetch_offsets(pb::FetchOffsetsRequest { tenant: b(), group: group(), partitions: vec![] }).await
    ));
    row!("Groups", "ListGroups", groups, |c| unary(c.list_groups(pb::ListGroupsRequest { tenant: b() }).await));
    row!("Groups", "DescribeGroup", groups, |c| unary(
        c.describe_group(pb::DescribeGroupRequest { tenant: b(), group: group() }).await
    ));
    row!("Groups", "ResetOffsets", groups, |c| unary(
        c.reset_offsets(pb::ResetOffsetsRequest {
            tenant: b(),
            group: group(),
            topic: topic(),
            to: Some(pb::reset_offsets_request::To::Offset(0)),
            ..Default::default()
        })
        .await
    ));
    row!("Groups", "DeleteGroup", groups, |c| unary(
        c.delete_group(pb::DeleteGroupRequest { tenant: b(), group: group() }).await
    ));
    rows
}

/// RPCs that name no tenant resource and answer cluster-level facts to any
/// authenticated caller (no tenant's data in them; checked below).
const TENANTLESS: [&str; 2] = ["Admin/GetServerInfo", "Admin/DescribeCluster"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_matrix_every_rpc_of_every_service() {
    let Some(bin) = binary() else { return };
    let (_dir, _broker, url, admin) = admin_broker(&bin).await;
    let mut as_admin = Raw::connect(&url, ADMIN_TOKEN).await;
    let token_a = tenant_with_data(&admin, &mut as_admin, "a").await;
    tenant_with_data(&admin, &mut as_admin, "b").await;

    let as_a = Raw::connect(&url, &token_a).await;
    let rows = matrix(&as_a);
    let covered: BTreeSet<String> = rows.iter().map(|(s, m, _)| format!("{s}/{m}")).collect();
    assert_eq!(covered, proto_methods(), "every RPC of Log, Admin, Queues and Groups has exactly one row");

    let mut table = vec![format!("{:<30} {:<20} {:<26} DETAIL", "RPC (principal of a -> b)", "STATUS", "ERROR CODE")];
    let mut leaks = Vec::new();
    for (svc, method, call) in rows {
        let name = format!("{svc}/{method}");
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(20), call).await.expect("answered");
        match outcome {
            Outcome::Refused(code, ec, msg) => {
                let ok = matches!(code, Code::PermissionDenied | Code::NotFound)
                    || (name == "Admin/ListTenants" && code == Code::Ok);
                if !ok {
                    leaks.push(format!("{name}: {code:?} {msg}"));
                }
                if matches!(code, Code::PermissionDenied) {
                    assert!(!msg.contains("secret"), "{name}: {msg}");
                }
                table.push(format!("{name:<30} {:<20} {:<26} {msg}", format!("{code:?}"), format!("{ec:?}")));
            }
            Outcome::Answered(what) if TENANTLESS.contains(&name.as_str()) => {
                assert!(!what.contains("b-") && !what.contains("tenant"), "{name} shows tenant data: {what}");
                table.push(format!("{name:<30} {:<20} {:<26} cluster facts only", "Ok (no tenant)", "-"));
            }
            Outcome::Answered(what) => {
                leaks.push(format!("{name}: answered {what}"));
                table.push(format!("{name:<30} {:<20} {:<26} LEAK: {what}", "Ok", "-"));
            }
        }
    }
    println!("{}", table.join("\n"));
    assert!(leaks.is_empty(), "tenant b reachable from a:\n{}", leaks.join("\n"));

    // B's data is intact (nothing above changed it).
    let b = admin.with_tenant("b");
    assert_eq!(b.describe_topic("b-topic").await.unwrap().partition_details[0].end_offset, 1);
    assert_eq!(b.describe_topic("b-topic").await.unwrap().partitions, 1);
    let q = pb::DescribeQueueRequest { tenant: "b".into(), name: "b-queue".into() };
    assert_eq!(as_admin.queues.describe_queue(q).await.unwrap().into_inner().stats.unwrap().visible, 1);

    // Listings, with the empty tenant meaning the principal's own: only a's.
    let mut a = as_a.clone();
    let topics = a.admin.list_topics(pb::ListTopicsRequest::default()).await.unwrap().into_inner().topics;
    assert_eq!(topics.iter().map(|t| (t.tenant.as_str(), t.name.as_str())).collect::<Vec<_>>(), [("a", "a-topic")]);
    let queues = a.queues.list_queues(pb::ListQueuesRequest::default()).await.unwrap().into_inner().queues;
    assert_eq!(queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["a-queue"]);
    let groups = a.groups.list_groups(pb::ListGroupsRequest::default()).await.unwrap().into_inner().groups;
    assert_eq!(groups.iter().map(|g| g.group.as_str()).collect::<Vec<_>>(), ["a-group"]);
    let meta =
        a.admin.get_metadata(pb::GetMetadataRequest { queues: true, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(meta.topics.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a-topic"]);
    assert_eq!(meta.queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["a-queue"]);
    // Its own tenant: described (quotas and usage), never updated (the
    // cluster admin's).
    let own = a.admin.describe_tenant(pb::DescribeTenantRequest::default()).await.unwrap().into_inner();
    assert_eq!((own.name.as_str(), own.usage.unwrap().topics), ("a", 1));
    let update = pb::UpdateTenantRequest { name: "a".into(), quotas: None };
    assert_eq!(a.admin.update_tenant(update).await.unwrap_err().code(), Code::PermissionDenied);
    // And the empty tenant reaches a's own data (the default tenant is not a's).
    let fetched = a
        .log
        .fetch(pb::FetchRequest {
            start: Some(pb::fetch_request::Start::Offset(0)),
            topic: "a-topic".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert!(!fetched.records.is_empty(), "a's own message");
    let received = a
        .queues
        .receive(pb::ReceiveRequest { queue: "a-queue".into(), max_messages: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(received.len(), 1);
    assert_eq!(&received[0].body[..], b"queued secret of a");
    let err = a.admin.describe_topic(pb::DescribeTopicRequest { tenant: "default".into(), name: "x".into() }).await;
    assert_eq!(err.unwrap_err().code(), Code::PermissionDenied, "the default tenant is another tenant");
}

/// Runs the `strata` CLI with the admin token; (status, stdout, stderr).
fn cli(url: &str, args: &[&str]) -> (bool, String, String) {
    crate::process::run_cli(url, &[("STRATA_TOKEN", ADMIN_TOKEN)], args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_acl_grants_produce_only_and_its_removal_refuses_the_next_request() {
    let Some(bin) = binary() else { return };
    let (dir, broker, url, admin) = admin_broker(&bin).await;
    admin.create_tenant("shop").await.unwrap();
    let shop = admin.with_tenant("shop");
    for t in ["orders.eu", "payments"] {
        shop.create_topic(t, 1, TopicOptions::default()).await.unwrap();
    }
    admin.create_principal("shop", "writer").await.unwrap();
    let (token, _) = admin.issue_token("shop", "writer").await.unwrap();

    // No ACL yet: deny by default, even to describe its own tenant's topic.
    let writer = Client::connect_with(&url, ConnectOptions::new().token(token.clone())).await.unwrap();
    let err = writer.describe_topic("orders.eu").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    assert_eq!(err.error_code(), ErrorCode::PermissionDenied);

    // The CLI grants produce on the prefix `orders.`, lists it, and refuses
    // a bad binding with one line.
    let grant =
        ["--tenant", "shop", "--principal", "writer", "--topic", "orders.", "--prefix", "--operation", "produce"];
    let (ok, out, err) = cli(&url, &[&["acl", "add"][..], &grant[..]].concat());
    assert!(ok, "{err}");
    assert!(out.contains("granted"), "{out}");
    let (ok, out, err) = cli(&url, &["acl", "list", "--tenant", "shop"]);
    assert!(ok, "{err}");
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["TENANT", "PRINCIPAL", "RESOURCE", "PATTERN", "NAME", "OPERATION"], "{out}");
    assert_eq!(rows[1..], [vec!["shop", "writer", "topic", "prefixed", "orders.", "produce"]], "{out}");
    let (ok, out, err) = cli(&url, &["acl", "list", "--tenant", "shop", "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json[0]["name"], "orders.");
    assert_eq!(json[0]["pattern"], "prefixed");
    let (ok, _, err) = cli(
        &url,
        &["acl", "add", "--tenant", "shop", "--principal", "nobody", "--topic", "x", "--operation", "produce"],
    );
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("nobody"), "{err}");
    let (ok, _, err) = cli(
        &url,
        &["acl", "add", "--tenant", "shop", "--principal", "writer", "--topic", "bad/name", "--operation", "produce"],
    );
    assert!(!ok);
    assert!(err.contains("invalid topic name"), "{err}");

    // Produce to orders.eu (the empty tenant is the writer's own: shop)...
    let producer = writer.producer("orders.eu").await.unwrap();
    assert_eq!(producer.send(Message::new("first")).await.unwrap().offset, 0);
    assert_eq!(writer.describe_topic("orders.eu").await.unwrap().tenant, "shop", "describe implied by produce");
    // ... but not consume it, nor touch payments.
    // (The consumer starts: describe is implied; its fetch is refused.)
    let config = strata_client::ConsumerConfig { start: strata_client::StartFrom::Earliest, ..Default::default() };
    let mut consumer = writer.consumer("orders.eu", config).await.unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(20), consumer.next()).await.expect("an answer");
    let err = first.expect("an item").map(|r| r.offset).unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    let err = writer.producer("payments").await.map(|_| ()).unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    let err = writer.describe_topic("payments").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    let err = writer.delete_topic("orders.eu").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "no admin from produce: {err}");
    let listed: Vec<String> = writer.list_topics().await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(listed, ["orders.eu"], "payments is not listed");

    // Remove the ACL with the CLI: the next request is refused, on the
    // open producer's stream too.
    let (ok, out, err) = cli(&url, &[&["acl", "remove"][..], &grant[..]].concat());
    assert!(ok, "{err}");
    assert!(out.contains("removed"), "{out}");
    let err = producer.send(Message::new("after removal")).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    let err = writer.describe_topic("orders.eu").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    // Removing it again: NOT_FOUND with its own code.
    let (ok, _, err) = cli(&url, &[&["acl", "remove"][..], &grant[..]].concat());
    assert!(!ok);
    assert!(err.contains("no ACL"), "{err}");
    let gone = acl("writer", AclResourceKind::Topic, AclPatternType::Prefixed, "orders.", AclOperation::Produce);
    let err = admin.remove_acl("shop", gone).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    assert_eq!(err.error_code(), ErrorCode::UnknownAcl);
    // Only one message ever landed.
    assert_eq!(shop.describe_topic("orders.eu").await.unwrap().partition_details[0].end_offset, 1);

    // A restart keeps the ACLs (they are catalog state).
    admin
        .add_acl(
            "shop",
            acl("writer", AclResourceKind::Topic, AclPatternType::Literal, "payments", AclOperation::Consume),
        )
        .await
        .unwrap();
    drop(broker);
    let broker = BrokerProcess::start(
        &bin,
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--auth", "required", "--admin-token-file", dir.path().join("admin-token").to_str().unwrap()],
        &[],
    );
    let url = format!("http://{}", broker.grpc);
    let writer = Client::connect_with(&url, ConnectOptions::new().token(token)).await.unwrap();
    assert_eq!(writer.describe_topic("payments").await.unwrap().name, "payments");
    let err = writer.describe_topic("orders.eu").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
}
