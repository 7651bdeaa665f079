//! The `strata.v1.Admin` service: tenants, topics, principals, tokens and
//! ACLs. Transport only.

use std::sync::Arc;

use std::sync::OnceLock;
use std::time::Instant;
use strata_proto::v1::{
    self as pb, AddPartitionsRequest, CreateTenantRequest, CreateTopicRequest, DeleteTenantRequest,
    DeleteTenantResponse, DeleteTopicRequest, DeleteTopicResponse, DescribeTopicRequest, ListTenantsRequest,
    ListTenantsResponse, ListTopicsRequest, ListTopicsResponse, PartitionDescription, TopicConfig, TopicDescription,
    TopicSummary, UpdateTopicConfigRequest, admin_server::Admin,
};
use tonic::{Request, Response, Status};

use super::auth::{self, Auth, Operation, Resource};
use super::status::{invalid, to_status};
use super::wire::{durability_from_pb, durability_to_pb};
use crate::acl::{AclBinding, AclOperation, PatternType, ResourceKind};
use crate::broker::{Broker, PrincipalView, TenantView, TopicOverrides, TopicView};
use crate::catalog::TopicSettings;
use crate::quota::TenantQuotas;

pub(crate) struct AdminService {
    broker: Arc<Broker>,
    auth: Auth,
}

/// When the service (so, near enough, the process) started: the uptime of
/// `GetServerInfo`.
static STARTED: OnceLock<Instant> = OnceLock::new();

impl AdminService {
    pub fn new(broker: Arc<Broker>, auth: Auth) -> Self {
        STARTED.get_or_init(Instant::now);
        AdminService { broker, auth }
    }
}

fn overrides(config: Option<TopicConfig>) -> Result<TopicOverrides, Status> {
    let Some(c) = config else { return Ok(TopicOverrides::default()) };
    let durability = durability_from_pb(c.durability)?;
    Ok(TopicOverrides {
        retention_ms: c.retention_ms,
        retention_bytes: c.retention_bytes,
        segment_bytes: c.segment_bytes,
        segment_ms: c.segment_ms,
        durability,
        local_retention_ms: c.local_retention_ms,
        local_retention_bytes: c.local_retention_bytes,
        replication_factor: None,
    })
}

fn config_to_pb(s: &TopicSettings) -> TopicConfig {
    TopicConfig {
        retention_ms: Some(s.retention_ms),
        retention_bytes: Some(s.retention_bytes),
        segment_bytes: Some(s.segment_bytes),
        segment_ms: Some(s.segment_ms),
        durability: durability_to_pb(s.durability),
        local_retention_ms: Some(s.local_retention_ms),
        local_retention_bytes: Some(s.local_retention_bytes),
    }
}

fn brokers_to_pb(brokers: Vec<crate::cluster::BrokerInfo>) -> Vec<pb::ClusterBroker> {
    brokers
        .into_iter()
        .map(|b| pb::ClusterBroker {
            id: b.id,
            address: b.address,
            zone: b.zone,
            state: b.state,
            metadata_leader: b.leader,
            partitions: Some(b.partitions),
        })
        .collect()
}

fn describe_to_pb(t: TopicView) -> TopicDescription {
    TopicDescription {
        tenant: t.tenant,
        name: t.name,
        topic_id: t.id.to_string(),
        partitions: t.partitions,
        config: Some(config_to_pb(&t.settings)),
        created_at_ms: t.created_at_ms,
        replication_factor: t.replication_factor,
        partition_details: t
            .partition_stats
            .iter()
            .enumerate()
            .map(|(p, s)| (p, s.unwrap_or_default(), s.is_none()))
            .map(|(p, s, elsewhere)| PartitionDescription {
                partition: p as u32,
                owner: t.owners.get(p).copied().flatten(),
                leader: match t.replicas.get(p) {
                    Some(r) => r.leader,
                    None => t.owners.get(p).copied().flatten(),
                },
                replicas: match t.replicas.get(p) {
                    Some(r) => r.replicas.clone(),
                    None => t.owners.get(p).copied().flatten().into_iter().collect(),
                },
                isr: match t.replicas.get(p) {
                    Some(r) => r.in_sync.clone(),
                    None => t.owners.get(p).copied().flatten().into_iter().collect(),
                },
                elsewhere,
                start_offset: s.start_offset,
                end_offset: s.high_watermark,
                size_bytes: s.size_bytes,
                segment_count: s.segments,
                local_start_offset: s.local_start_offset,
                local_size_bytes: s.local_bytes,
                remote_start_offset: s.remote_start_offset,
                remote_end_offset: s.remote_end_offset,
                remote_size_bytes: s.remote_bytes,
                remote_segment_count: s.remote_segments,
            })
            .collect(),
    }
}

fn principal_to_pb(p: PrincipalView) -> pb::Principal {
    pb::Principal {
        tenant: p.tenant,
        name: p.name,
        created_at_ms: p.created_at_ms,
        tokens: p.tokens.into_iter().map(|(id, issued_at_ms)| pb::TokenInfo { id, issued_at_ms }).collect(),
    }
}

fn tenant_to_pb(t: TenantView) -> pb::Tenant {
    let u = t.usage;
    pb::Tenant {
        name: t.name,
        created_at_ms: t.created_at_ms,
        topic_count: t.topic_count,
        quotas: Some(quotas_to_pb(t.quotas)),
        usage: Some(pb::TenantUsage {
            topics: u.topics,
            queues: u.queues,
            partitions: u.partitions,
            stored_bytes: u.stored_bytes,
            connections: u.connections,
        }),
    }
}

fn quotas_to_pb(q: TenantQuotas) -> pb::TenantQuotas {
    pb::TenantQuotas {
        max_topics: q.max_topics,
        max_queues: q.max_queues,
        max_partitions: q.max_partitions,
        max_stored_bytes: q.max_stored_bytes,
        produce_bytes_per_second: q.produce_bytes_per_second,
        consume_bytes_per_second: q.consume_bytes_per_second,
        requests_per_second: q.requests_per_second,
        max_connections: q.max_connections,
    }
}

fn quotas_from_pb(q: Option<pb::TenantQuotas>) -> TenantQuotas {
    let q = q.unwrap_or_default();
    TenantQuotas {
        max_topics: q.max_topics,
        max_queues: q.max_queues,
        max_partitions: q.max_partitions,
        max_stored_bytes: q.max_stored_bytes,
        produce_bytes_per_second: q.produce_bytes_per_second,
        consume_bytes_per_second: q.consume_bytes_per_second,
        requests_per_second: q.requests_per_second,
        max_connections: q.max_connections,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_tenant(&self, request: Request<CreateTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Admin, &mut r.name, Resource::Tenant).await?;
        let t =
            self.broker.create_tenant(&r.name, r.if_not_exists, quotas_from_pb(r.quotas)).await.map_err(to_status)?;
        Ok(Response::new(tenant_to_pb(t)))
    }

    async fn update_tenant(&self, request: Request<pb::UpdateTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Admin, &mut r.name, Resource::Tenant).await?;
        let t = self.broker.update_tenant(&r.name, quotas_from_pb(r.quotas)).await.map_err(to_status)?;
        Ok(Response::new(tenant_to_pb(t)))
    }

    async fn describe_tenant(
        &self,
        request: Request<pb::DescribeTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        // A principal may describe its own tenant (an empty name is it).
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Describe, &mut r.name, Resource::Tenant).await?;
        let t = self.broker.describe_tenant(&r.name).await.map_err(to_status)?;
        Ok(Response::new(tenant_to_pb(t)))
    }

    async fn list_tenants(
        &self,
        _request: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        // Authenticates; a principal sees its own tenant only (listing is
        // not an access to the default tenant).
        let only = self.auth.visible_tenant(&auth::Caller::of(&_request))?;
        let tenants = self
            .broker
            .list_tenants()
            .await
            .into_iter()
            .filter(|t| only.as_ref().is_none_or(|o| *o == t.name))
            .map(tenant_to_pb)
            .collect();
        Ok(Response::new(ListTenantsResponse { tenants }))
    }

    async fn delete_tenant(
        &self,
        request: Request<DeleteTenantRequest>,
    ) -> Result<Response<DeleteTenantResponse>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Admin, &mut r.name, Resource::Tenant).await?;
        self.broker.delete_tenant(&r.name).await.map_err(to_status)?;
        Ok(Response::new(DeleteTenantResponse {}))
    }

    async fn create_topic(&self, request: Request<CreateTopicRequest>) -> Result<Response<TopicDescription>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Admin, &mut r.tenant, Resource::Topic(&r.name)).await?;
        let mut o = overrides(r.config)?;
        o.replication_factor = (r.replication_factor > 0).then_some(r.replication_factor);
        let t =
            self.broker.create_topic(&r.tenant, &r.name, r.partitions, o, r.if_not_exists).await.map_err(to_status)?;
        Ok(Response::new(describe_to_pb(t)))
    }

    async fn list_topics(&self, request: Request<ListTopicsRequest>) -> Result<Response<ListTopicsResponse>, Status> {
        // Only the topics the caller may describe (as Kafka).
        let caller = self.auth.session(auth::Caller::of(&request))?;
        let mut r = request.into_inner();
        self.auth.authorize(&caller, Operation::Describe, &mut r.tenant, Resource::Tenant).await?;
        let topics = self.broker.list_topics(&r.tenant).await.map_err(to_status)?;
        Ok(Response::new(ListTopicsResponse {
            topics: topics
                .into_iter()
                .filter(|t| self.auth.permits(&caller, Operation::Describe, Resource::Topic(&t.name)))
                .map(|t| TopicSummary {
                    tenant: t.tenant,
                    name: t.name,
                    partitions: t.partitions,
                    durability: durability_to_pb(t.settings.durability),
                })
                .collect(),
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<TopicDescription>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Describe, &mut r.tenant, Resource::Topic(&r.name)).await?;
        let t = self.broker.describe_topic(&r.tenant, &r.name).map_err(to_status)?;
        Ok(Response::new(describe_to_pb(t)))
    }

    async fn add_partitions(
        &self,
        request: Request<AddPartitionsRequest>,
    ) -> Result<Response<TopicDescription>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Admin, &mut r.tenant, Resource::Topic(&r.name)).await?;
        let t = self.broker.add_partitions(&r.tenant, &r.name, r.partitions).await.map_err(to_status)?;
        Ok(Response::new(describe_to_pb(t)))
    }

    async fn update_topic_config(
        &self,
        request: Request<UpdateTopicConfigRequest>,
    ) -> Result<Response<TopicDescription>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Admin, &mut r.tenant, Resource::Topic(&r.name)).await?;
        let o = overrides(r.config)?;
        let t = self.broker.update_topic(&r.tenant, &r.name, o).await.map_err(to_status)?;
        Ok(Response::new(describe_to_pb(t)))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Admin, &mut r.tenant, Resource::Topic(&r.name)).await?;
        self.broker.delete_topic(&r.tenant, &r.name).await.map_err(to_status)?;
        Ok(Response::new(DeleteTopicResponse {}))
    }

    async fn describe_cluster(
        &self,
        request: Request<pb::DescribeClusterRequest>,
    ) -> Result<Response<pb::DescribeClusterResponse>, Status> {
        // Any authenticated caller: where the brokers are.
        let (caller, _) = auth::split(request);
        self.auth.authorize(&caller, Operation::Describe, &mut String::new(), Resource::Tenant).await?;
        let v = self.broker.describe_cluster().await;
        Ok(Response::new(pb::DescribeClusterResponse {
            clustered: v.clustered,
            brokers: brokers_to_pb(v.brokers),
            leader_id: v.leader,
            answered_by: v.answered_by,
            term: v.term,
            formation: v.formation,
            unowned_partitions: v.unowned_partitions,
        }))
    }

    async fn remove_broker(
        &self,
        request: Request<pb::RemoveBrokerRequest>,
    ) -> Result<Response<pb::RemoveBrokerResponse>, Status> {
        let (caller, r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Cluster, &mut String::new(), Resource::Tenant).await?;
        self.broker.remove_broker(r.broker_id).await.map_err(to_status)?;
        Ok(Response::new(pb::RemoveBrokerResponse {}))
    }

    async fn get_metadata(
        &self,
        request: Request<pb::GetMetadataRequest>,
    ) -> Result<Response<pb::GetMetadataResponse>, Status> {
        // Named topics must each be describable; listings show only those.
        let caller = self.auth.session(auth::Caller::of(&request))?;
        let mut r = request.into_inner();
        self.auth.authorize(&caller, Operation::Describe, &mut r.tenant, Resource::Tenant).await?;
        for t in &r.topics {
            self.auth.authorize(&caller, Operation::Describe, &mut r.tenant, Resource::Topic(t)).await?;
        }
        let mut m = self.broker.metadata(&r.tenant, &r.topics, r.queues, &r.groups).await.map_err(to_status)?;
        m.topics.retain(|t| self.auth.permits(&caller, Operation::Describe, Resource::Topic(&t.name)));
        m.queues.retain(|(q, _)| self.auth.permits(&caller, Operation::Describe, Resource::Queue(q)));
        m.groups.retain(|(g, _)| self.auth.permits(&caller, Operation::Describe, Resource::Group(g)));
        Ok(Response::new(pb::GetMetadataResponse {
            clustered: m.cluster.clustered,
            leader_id: m.cluster.leader,
            answered_by: m.cluster.answered_by,
            brokers: brokers_to_pb(m.cluster.brokers),
            topics: m
                .topics
                .into_iter()
                .map(|t| pb::TopicMetadata {
                    name: t.name,
                    partitions: t
                        .partitions
                        .into_iter()
                        .enumerate()
                        .map(|(p, o)| pb::PartitionOwner {
                            partition: p as u32,
                            owner_id: o.owner,
                            owner_address: o.address,
                            epoch: t.epoch,
                        })
                        .collect(),
                })
                .collect(),
            queues: m
                .queues
                .into_iter()
                .map(|(name, o)| pb::QueueMetadata { name, owner_id: o.owner, owner_address: o.address })
                .collect(),
            groups: m
                .groups
                .into_iter()
                .map(|(name, o)| pb::GroupMetadata { name, coordinator_id: o.owner, coordinator_address: o.address })
                .collect(),
        }))
    }

    async fn get_server_info(
        &self,
        request: Request<pb::GetServerInfoRequest>,
    ) -> Result<Response<pb::ServerInfo>, Status> {
        let (caller, _) = auth::split(request);
        self.auth.authorize(&caller, Operation::Describe, &mut String::new(), Resource::Tenant).await?;
        Ok(Response::new(pb::ServerInfo {
            version: crate::metrics::VERSION.to_owned(),
            api_version: "v1".to_owned(),
            uptime_seconds: STARTED.get().map(|t| t.elapsed().as_secs()).unwrap_or(0),
            build_target: crate::metrics::build_target().to_owned(),
        }))
    }

    async fn create_principal(
        &self,
        request: Request<pb::CreatePrincipalRequest>,
    ) -> Result<Response<pb::Principal>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Cluster, &mut r.tenant, Resource::Tenant).await?;
        let p = self.broker.create_principal(&r.tenant, &r.name, r.if_not_exists).await.map_err(to_status)?;
        Ok(Response::new(principal_to_pb(p)))
    }

    async fn list_principals(
        &self,
        request: Request<pb::ListPrincipalsRequest>,
    ) -> Result<Response<pb::ListPrincipalsResponse>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Cluster, &mut r.tenant, Resource::Tenant).await?;
        let principals = self.broker.list_principals(&r.tenant).await.map_err(to_status)?;
        Ok(Response::new(pb::ListPrincipalsResponse {
            principals: principals.into_iter().map(principal_to_pb).collect(),
        }))
    }

    async fn delete_principal(
        &self,
        request: Request<pb::DeletePrincipalRequest>,
    ) -> Result<Response<pb::DeletePrincipalResponse>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Cluster, &mut r.tenant, Resource::Tenant).await?;
        self.broker.delete_principal(&r.tenant, &r.name).await.map_err(to_status)?;
        Ok(Response::new(pb::DeletePrincipalResponse {}))
    }

    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Cluster, &mut r.tenant, Resource::Tenant).await?;
        let t = self.broker.issue_token(&r.tenant, &r.principal).await.map_err(to_status)?;
        Ok(Response::new(pb::IssueTokenResponse { token: t.token, id: t.id }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Cluster, &mut r.tenant, Resource::Tenant).await?;
        self.broker.revoke_token(&r.tenant, &r.principal, &r.token).await.map_err(to_status)?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn add_acl(&self, request: Request<pb::AddAclRequest>) -> Result<Response<pb::AddAclResponse>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Cluster, &mut r.tenant, Resource::Tenant).await?;
        let binding = acl_from_pb(r.acl)?;
        self.broker.add_acl(&r.tenant, binding).await.map_err(to_status)?;
        Ok(Response::new(pb::AddAclResponse {}))
    }

    async fn list_acls(&self, request: Request<pb::ListAclsRequest>) -> Result<Response<pb::ListAclsResponse>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Cluster, &mut r.tenant, Resource::Tenant).await?;
        let acls = self.broker.list_acls(&r.tenant, &r.principal).await.map_err(to_status)?;
        Ok(Response::new(pb::ListAclsResponse { acls: acls.into_iter().map(|(t, b)| acl_to_pb(t, b)).collect() }))
    }

    async fn remove_acl(
        &self,
        request: Request<pb::RemoveAclRequest>,
    ) -> Result<Response<pb::RemoveAclResponse>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Cluster, &mut r.tenant, Resource::Tenant).await?;
        let binding = acl_from_pb(r.acl)?;
        self.broker.remove_acl(&r.tenant, binding).await.map_err(to_status)?;
        Ok(Response::new(pb::RemoveAclResponse {}))
    }
}

fn acl_from_pb(acl: Option<pb::Acl>) -> Result<AclBinding, Status> {
    let Some(a) = acl else { return Err(invalid("the request needs an `acl`")) };
    let kind = match pb::AclResourceKind::try_from(a.resource_kind) {
        Ok(pb::AclResourceKind::Topic) => ResourceKind::Topic,
        Ok(pb::AclResourceKind::Queue) => ResourceKind::Queue,
        Ok(pb::AclResourceKind::Group) => ResourceKind::Group,
        _ => return Err(invalid(format!("acl.resource_kind must be topic, queue or group, got {}", a.resource_kind))),
    };
    let pattern = match pb::AclPatternType::try_from(a.pattern_type) {
        Ok(pb::AclPatternType::Unspecified | pb::AclPatternType::Literal) => PatternType::Literal,
        Ok(pb::AclPatternType::Prefixed) => PatternType::Prefixed,
        Err(_) => return Err(invalid(format!("unknown acl.pattern_type {}", a.pattern_type))),
    };
    let operation = match pb::AclOperation::try_from(a.operation) {
        Ok(pb::AclOperation::All) => AclOperation::All,
        Ok(pb::AclOperation::Produce) => AclOperation::Produce,
        Ok(pb::AclOperation::Consume) => AclOperation::Consume,
        Ok(pb::AclOperation::Admin) => AclOperation::Admin,
        Ok(pb::AclOperation::Describe) => AclOperation::Describe,
        _ => {
            return Err(invalid(format!(
                "acl.operation must be all, produce, consume, admin or describe, got {}",
                a.operation
            )));
        }
    };
    if a.principal.is_empty() {
        return Err(invalid("acl.principal is empty (name a principal, or `*` for all of the tenant's)"));
    }
    Ok(AclBinding { principal: a.principal, kind, pattern, name: a.resource_name, operation })
}

fn acl_to_pb(tenant: String, b: AclBinding) -> pb::Acl {
    pb::Acl {
        tenant,
        principal: b.principal,
        resource_kind: match b.kind {
            ResourceKind::Topic => pb::AclResourceKind::Topic,
            ResourceKind::Queue => pb::AclResourceKind::Queue,
            ResourceKind::Group => pb::AclResourceKind::Group,
        } as i32,
        pattern_type: match b.pattern {
            PatternType::Literal => pb::AclPatternType::Literal,
            PatternType::Prefixed => pb::AclPatternType::Prefixed,
        } as i32,
        resource_name: b.name,
        operation: match b.operation {
            AclOperation::All => pb::AclOperation::All,
            AclOperation::Produce => pb::AclOperation::Produce,
            AclOperation::Consume => pb::AclOperation::Consume,
            AclOperation::Admin => pb::AclOperation::Admin,
            AclOperation::Describe => pb::AclOperation::Describe,
        } as i32,
    }
}
