//! Administration calls on [`Client`]: tenants, topics and their settings.

use std::sync::Arc;
use std::time::Duration;

use strata_proto::v1::{
    AddPartitionsRequest, CreateTenantRequest, CreateTopicRequest, DeleteTenantRequest, DeleteTopicRequest,
    DescribeTopicRequest, Durability, ErrorCode, GetServerInfoRequest, ListOffsetsRequest, ListTenantsRequest,
    ListTopicsRequest, ServerInfo, StartPosition, Tenant, TopicConfig, TopicDescription, TopicSummary,
    UpdateTopicConfigRequest, list_offsets_request, list_offsets_response,
};

use crate::client::Client;
use crate::error::{Error, if_exists};

/// How long a topic keeps data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep data forever.
    Infinite,
    /// Delete data older than this (whole segments, oldest first).
    Time(Duration),
}

impl From<Duration> for Retention {
    fn from(d: Duration) -> Self {
        Retention::Time(d)
    }
}

/// Settings for [`Client::create_topic`] and [`Client::update_topic`]. Every
/// `None` means "the broker default" on create and "unchanged" on update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicOptions {
    /// Total retention by age.
    pub retention: Option<Retention>,
    /// Total retention by size per partition, in bytes; `-1` means no limit.
    pub retention_bytes: Option<i64>,
    /// Roll the active segment at this size.
    pub segment_bytes: Option<u64>,
    /// When a produce is acknowledged; see [`Durability`].
    pub durability: Option<Durability>,
    /// Tiered storage: how long data stays on the broker's local disk
    /// (older data is read from the cold tier). Setting a local retention
    /// makes the topic tiered.
    pub local_retention: Option<Retention>,
    /// Tiered storage: local bytes kept per partition; `-1` means no limit.
    pub local_retention_bytes: Option<i64>,
    /// Copies of each partition on distinct brokers (create only; `None`:
    /// the broker default, 1). A produce to a replicated partition is
    /// acknowledged once a majority of its replicas has it durable.
    pub replication_factor: Option<u32>,
}

impl TopicOptions {
    pub(crate) fn to_config(&self) -> TopicConfig {
        TopicConfig {
            retention_ms: self.retention.map(retention_ms),
            retention_bytes: self.retention_bytes,
            segment_bytes: self.segment_bytes,
            durability: self.durability.unwrap_or(Durability::Unspecified) as i32,
            local_retention_ms: self.local_retention.map(retention_ms),
            local_retention_bytes: self.local_retention_bytes,
            ..TopicConfig::default()
        }
    }
}

fn retention_ms(r: Retention) -> i64 {
    match r {
        Retention::Infinite => -1,
        Retention::Time(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
    }
}

/// Offsets of one partition as reported by `ListOffsets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// The partition number.
    pub partition: u32,
    /// The resolved offset for the query.
    pub offset: u64,
    /// Timestamp of the record at `offset`, -1 when unknown.
    pub timestamp_ms: i64,
    /// The first offset still stored (older records were removed by retention).
    pub log_start_offset: u64,
    /// The offset the next produced record will get.
    pub high_watermark: u64,
}

impl From<list_offsets_response::Result> for PartitionOffsets {
    fn from(r: list_offsets_response::Result) -> Self {
        PartitionOffsets {
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            log_start_offset: r.log_start_offset,
            high_watermark: r.high_watermark,
        }
    }
}

impl Client {
    /// Creates a topic; fails with `ALREADY_EXISTS` when it exists.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        options: TopicOptions,
    ) -> Result<TopicDescription, Error> {
        self.create_topic_inner(name, partitions, &options, false).await
    }

    /// Creates a topic unless one with this name exists; either way returns
    /// the topic's description (the existing topic keeps its settings).
    pub async fn ensure_topic(
        &self,
        name: &str,
        partitions: u32,
        options: TopicOptions,
    ) -> Result<TopicDescription, Error> {
        self.create_topic_inner(name, partitions, &options, true).await
    }

    async fn create_topic_inner(
        &self,
        name: &str,
        partitions: u32,
        options: &TopicOptions,
        if_not_exists: bool,
    ) -> Result<TopicDescription, Error> {
        let req = CreateTopicRequest {
            tenant: self.tenant().to_owned(),
            name: name.to_owned(),
            partitions,
            config: Some(options.to_config()),
            if_not_exists,
            replication_factor: options.replication_factor.unwrap_or(0),
        };
        Ok(self.admin_rpc().create_topic(self.request(req)).await?.into_inner())
    }

    /// Lists the tenant's topics.
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>, Error> {
        let req = ListTopicsRequest { tenant: self.tenant().to_owned() };
        Ok(self.admin_rpc().list_topics(self.request(req)).await?.into_inner().topics)
    }

    /// Describes a topic: settings and per-partition offsets and sizes.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, Error> {
        let req = DescribeTopicRequest { tenant: self.tenant().to_owned(), name: name.to_owned() };
        Ok(self.admin_rpc().describe_topic(self.request(req)).await?.into_inner())
    }

    /// Grows a topic to `partitions` partitions in total.
    pub async fn add_partitions(&self, name: &str, partitions: u32) -> Result<TopicDescription, Error> {
        let req = AddPartitionsRequest { tenant: self.tenant().to_owned(), name: name.to_owned(), partitions };
        Ok(self.admin_rpc().add_partitions(self.request(req)).await?.into_inner())
    }

    /// Changes the settings given in `options`, leaving the others unchanged.
    pub async fn update_topic(&self, name: &str, options: TopicOptions) -> Result<TopicDescription, Error> {
        let req = UpdateTopicConfigRequest {
            tenant: self.tenant().to_owned(),
            name: name.to_owned(),
            config: Some(options.to_config()),
        };
        Ok(self.admin_rpc().update_topic_config(self.request(req)).await?.into_inner())
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), Error> {
        let req = DeleteTopicRequest { tenant: self.tenant().to_owned(), name: name.to_owned() };
        self.admin_rpc().delete_topic(self.request(req)).await?;
        Ok(())
    }

    /// Deletes a topic unless it does not exist; `true` when it was deleted.
    ///
    /// ```no_run
    /// # async fn demo(client: strata_client::Client) -> Result<(), strata_client::Error> {
    /// let deleted = client.delete_topic_if_exists("scratch").await?;
    /// println!("deleted: {deleted}");
    /// # Ok(()) }
    /// ```
    pub async fn delete_topic_if_exists(&self, name: &str) -> Result<bool, Error> {
        if_exists(self.delete_topic(name).await, ErrorCode::UnknownTopic)
    }

    /// What the broker is: version, API revision, uptime, build target.
    ///
    /// ```no_run
    /// # async fn demo(client: strata_client::Client) -> Result<(), strata_client::Error> {
    /// let info = client.server_info().await?;
    /// println!("broker {} (API {})", info.version, info.api_version);
    /// # Ok(()) }
    /// ```
    pub async fn server_info(&self) -> Result<ServerInfo, Error> {
        Ok(self.admin_rpc().get_server_info(self.request(GetServerInfoRequest {})).await?.into_inner())
    }

    /// Creates a tenant; fails with `ALREADY_EXISTS` when it exists.
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant, Error> {
        self.create_tenant_with_quotas(name, strata_proto::v1::TenantQuotas::default()).await
    }

    /// Creates a tenant with quotas (unset ones are unlimited). Cluster
    /// admins only.
    pub async fn create_tenant_with_quotas(
        &self,
        name: &str,
        quotas: strata_proto::v1::TenantQuotas,
    ) -> Result<Tenant, Error> {
        let req = CreateTenantRequest { name: name.to_owned(), if_not_exists: false, quotas: Some(quotas) };
        Ok(self.admin_rpc().create_tenant(self.request(req)).await?.into_inner())
    }

    /// Replaces a tenant's quotas with `quotas` (a quota left unset becomes
    /// unlimited). Cluster admins only.
    pub async fn update_tenant(&self, name: &str, quotas: strata_proto::v1::TenantQuotas) -> Result<Tenant, Error> {
        let req = strata_proto::v1::UpdateTenantRequest { name: name.to_owned(), quotas: Some(quotas) };
        Ok(self.admin_rpc().update_tenant(self.request(req)).await?.into_inner())
    }

    /// A tenant with its quotas and usage (empty name: the caller's own).
    pub async fn describe_tenant(&self, name: &str) -> Result<Tenant, Error> {
        let req = strata_proto::v1::DescribeTenantRequest { name: name.to_owned() };
        Ok(self.admin_rpc().describe_tenant(self.request(req)).await?.into_inner())
    }

    /// The brokers of the cluster as the broker this client talks to knows
    /// them (a standalone broker lists itself alone).
    pub async fn describe_cluster(&self) -> Result<strata_proto::v1::DescribeClusterResponse, Error> {
        let req = strata_proto::v1::DescribeClusterRequest {};
        Ok(self.admin_rpc().describe_cluster(self.request(req)).await?.into_inner())
    }

    /// Removes broker `id`, gone for good, from the cluster (cluster admins
    /// only); the partitions it owned are then reported unowned.
    ///
    /// ```no_run
    /// # async fn f(client: strata_client::Client) -> Result<(), strata_client::Error> {
    /// client.remove_broker(2).await?;
    /// # Ok(()) }
    /// ```
    pub async fn remove_broker(&self, id: u64) -> Result<(), Error> {
        let req = strata_proto::v1::RemoveBrokerRequest { broker_id: id };
        self.admin_rpc().remove_broker(self.request(req)).await?;
        Ok(())
    }

    /// Where the tenant's topics (all, or those named) and queues are
    /// served: the brokers and each partition's and queue's owner.
    pub async fn metadata(
        &self,
        topics: &[&str],
        queues: bool,
    ) -> Result<strata_proto::v1::GetMetadataResponse, Error> {
        let req = strata_proto::v1::GetMetadataRequest {
            tenant: self.tenant().to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            queues,
            groups: Vec::new(),
        };
        Ok(self.admin_rpc().get_metadata(self.request(req)).await?.into_inner())
    }

    /// How many partitions `topic` has, learning where each is served on
    /// the way (brokers without `GetMetadata` are asked `DescribeTopic`).
    pub(crate) async fn topic_partitions(&self, topic: &str) -> Result<u32, Error> {
        let m = self.refresh_route(crate::routing::Target::Partition(topic, 0)).await?;
        match m.topics.iter().find(|t| t.name == topic) {
            Some(t) => Ok(t.partitions.len() as u32),
            None => Ok(self.describe_topic(topic).await?.partitions),
        }
    }

    /// Lists tenants.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, Error> {
        Ok(self.admin_rpc().list_tenants(self.request(ListTenantsRequest {})).await?.into_inner().tenants)
    }

    /// Creates a principal of `tenant` (empty: `default`). Cluster admins only.
    pub async fn create_principal(&self, tenant: &str, name: &str) -> Result<strata_proto::v1::Principal, Error> {
        let req = strata_proto::v1::CreatePrincipalRequest {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            if_not_exists: false,
        };
        Ok(self.admin_rpc().create_principal(self.request(req)).await?.into_inner())
    }

    /// The principals of `tenant` (empty: every tenant) with their token ids.
    pub async fn list_principals(&self, tenant: &str) -> Result<Vec<strata_proto::v1::Principal>, Error> {
        let req = strata_proto::v1::ListPrincipalsRequest { tenant: tenant.to_owned() };
        Ok(self.admin_rpc().list_principals(self.request(req)).await?.into_inner().principals)
    }

    /// Deletes a principal and revokes its tokens.
    pub async fn delete_principal(&self, tenant: &str, name: &str) -> Result<(), Error> {
        let req = strata_proto::v1::DeletePrincipalRequest { tenant: tenant.to_owned(), name: name.to_owned() };
        self.admin_rpc().delete_principal(self.request(req)).await?;
        Ok(())
    }

    /// Issues a new bearer token for a principal: `(token, id)`. The token
    /// is shown only here; the broker keeps its hash.
    pub async fn issue_token(&self, tenant: &str, principal: &str) -> Result<(String, String), Error> {
        let req = strata_proto::v1::IssueTokenRequest { tenant: tenant.to_owned(), principal: principal.to_owned() };
        let r = self.admin_rpc().issue_token(self.request(req)).await?.into_inner();
        Ok((r.token, r.id))
    }

    /// Revokes a token, named by its id or by the token itself.
    pub async fn revoke_token(&self, tenant: &str, principal: &str, token: &str) -> Result<(), Error> {
        let req = strata_proto::v1::RevokeTokenRequest {
            tenant: tenant.to_owned(),
            principal: principal.to_owned(),
            token: token.to_owned(),
        };
        self.admin_rpc().revoke_token(self.request(req)).await?;
        Ok(())
    }

    /// Grants `acl` in `tenant` (empty: `default`); granting twice changes
    /// nothing. Cluster admins only.
    pub async fn add_acl(&self, tenant: &str, acl: strata_proto::v1::Acl) -> Result<(), Error> {
        let req = strata_proto::v1::AddAclRequest { tenant: tenant.to_owned(), acl: Some(acl) };
        self.admin_rpc().add_acl(self.request(req)).await?;
        Ok(())
    }

    /// The ACL bindings of `tenant` (empty: every tenant), of `principal`
    /// only when not empty (with the `*` bindings that apply to it).
    pub async fn list_acls(&self, tenant: &str, principal: &str) -> Result<Vec<strata_proto::v1::Acl>, Error> {
        let req = strata_proto::v1::ListAclsRequest { tenant: tenant.to_owned(), principal: principal.to_owned() };
        Ok(self.admin_rpc().list_acls(self.request(req)).await?.into_inner().acls)
    }

    /// Removes exactly this binding (NOT_FOUND, `UnknownAcl`, when absent).
    pub async fn remove_acl(&self, tenant: &str, acl: strata_proto::v1::Acl) -> Result<(), Error> {
        let req = strata_proto::v1::RemoveAclRequest { tenant: tenant.to_owned(), acl: Some(acl) };
        self.admin_rpc().remove_acl(self.request(req)).await?;
        Ok(())
    }

    /// Deletes a tenant; the broker refuses while it still owns resources.
    pub async fn delete_tenant(&self, name: &str) -> Result<(), Error> {
        let req = DeleteTenantRequest { name: name.to_owned() };
        self.admin_rpc().delete_tenant(self.request(req)).await?;
        Ok(())
    }

    /// Resolves offsets of a topic's partitions: each query is a partition and
    /// what to resolve; an empty list asks for earliest and latest of every
    /// partition.
    pub async fn list_offsets(
        &self,
        topic: &str,
        queries: Vec<list_offsets_request::Query>,
    ) -> Result<Vec<PartitionOffsets>, Error> {
        use crate::routing::{Learned, Target};
        let mut queries = queries;
        let mut attempts = 0;
        loop {
            if queries.is_empty() && !self.router().standalone() {
                // In a cluster each owner answers for its own partitions, so
                // "every partition" is spelled out.
                let n = self.topic_partitions(topic).await?;
                for partition in 0..n {
                    for position in [StartPosition::Earliest, StartPosition::Latest] {
                        queries.push(list_offsets_request::Query {
                            partition,
                            spec: Some(list_offsets_request::query::Spec::Position(position as i32)),
                        });
                    }
                }
            }
            // Queries grouped by the broker serving their partition, keeping
            // each one's place in the answer.
            let mut by_broker: Vec<(Arc<str>, Vec<usize>)> = Vec::new();
            if queries.is_empty() {
                by_broker.push((self.router().any(), Vec::new()));
            }
            for (i, q) in queries.iter().enumerate() {
                let url = self.route(Target::Partition(topic, q.partition)).await;
                match by_broker.iter_mut().find(|(u, _)| *u == url) {
                    Some((_, list)) => list.push(i),
                    None => by_broker.push((url, vec![i])),
                }
            }
            let mut answers: Vec<Option<PartitionOffsets>> = vec![None; queries.len()];
            let mut extra = Vec::new();
            let mut redirected = None;
            for (url, indexes) in &by_broker {
                let req = ListOffsetsRequest {
                    tenant: self.tenant().to_owned(),
                    topic: topic.to_owned(),
                    queries: indexes.iter().map(|i| queries[*i]).collect(),
                };
                match self.log_rpc_at(url).list_offsets(self.request(req)).await {
                    Ok(r) => {
                        let results = r.into_inner().results;
                        if indexes.is_empty() {
                            extra.extend(results.into_iter().map(PartitionOffsets::from));
                        } else {
                            for (i, result) in indexes.iter().zip(results) {
                                answers[*i] = Some(PartitionOffsets::from(result));
                            }
                        }
                    }
                    Err(status) => {
                        let error = Error::from(status);
                        let first = indexes.first().map_or(0, |i| queries[*i].partition);
                        let learned = self.learn(Target::Partition(topic, first), url, &error);
                        if attempts < crate::routing::MAX_REDIRECTS && learned != Learned::Nothing {
                            redirected = Some(error);
                            break;
                        }
                        return Err(error);
                    }
                }
            }
            if redirected.is_some() {
                // Another owner than the table said: look the topic up again.
                attempts += 1;
                let _ = self.refresh_route(Target::Partition(topic, 0)).await;
                continue;
            }
            return Ok(answers.into_iter().flatten().chain(extra).collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_map_to_config() {
        let cfg = TopicOptions::default().to_config();
        assert_eq!(cfg.retention_ms, None);
        assert_eq!(cfg.durability, Durability::Unspecified as i32);

        let cfg = TopicOptions {
            retention: Some(Retention::Infinite),
            retention_bytes: Some(-1),
            segment_bytes: Some(64 << 20),
            durability: Some(Durability::None),
            local_retention: Some(Retention::Time(Duration::from_secs(3600))),
            local_retention_bytes: Some(1 << 30),
            replication_factor: Some(3),
        }
        .to_config();
        assert_eq!(cfg.local_retention_ms, Some(3_600_000));
        assert_eq!(cfg.local_retention_bytes, Some(1 << 30));
        assert_eq!(cfg.retention_ms, Some(-1));
        assert_eq!(cfg.retention_bytes, Some(-1));
        assert_eq!(cfg.segment_bytes, Some(64 << 20));
        assert_eq!(cfg.durability, Durability::None as i32);

        let week = Duration::from_secs(7 * 24 * 3600);
        let cfg = TopicOptions { retention: Some(week.into()), ..Default::default() }.to_config();
        assert_eq!(cfg.retention_ms, Some(604_800_000));
    }
}
