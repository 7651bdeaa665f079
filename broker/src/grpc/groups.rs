//! The `strata.v1.Groups` service: transport only. `Join` forwards a
//! member's messages to the coordinator and the coordinator's events back;
//! when the member's stream ends, the member leaves.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use strata_proto::v1::{
    self as pb, CommitOffsetsRequest, CommitOffsetsResponse, CoordinatorMessage, DeleteGroupRequest,
    DeleteGroupResponse, DescribeGroupRequest, FetchOffsetsRequest, FetchOffsetsResponse, GroupDescription,
    ListGroupsRequest, ListGroupsResponse, MemberMessage, PartitionOffset, ResetOffsetsRequest, ResetOffsetsResponse,
    StartPositionChoice, TopicPartitions, coordinator_message, groups_server::Groups, member_message,
    reset_offsets_request,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{self, Auth, Operation, Resource};
use super::status::{invalid, to_status};
use crate::group::{DEFAULT_SESSION_TIMEOUT, GroupCoordinator, JoinSpec, MemberEvent, OffsetCommit, ResetTo};

pub(crate) struct GroupsService {
    coordinator: Arc<GroupCoordinator>,
    auth: Auth,
}

impl GroupsService {
    pub fn new(coordinator: Arc<GroupCoordinator>, auth: Auth) -> Self {
        GroupsService { coordinator, auth }
    }
}

fn topic_partitions(list: Vec<(String, u32)>) -> Vec<TopicPartitions> {
    let mut out: Vec<TopicPartitions> = Vec::new();
    for (topic, p) in list {
        match out.last_mut() {
            Some(tp) if tp.topic == topic => tp.partitions.push(p),
            _ => out.push(TopicPartitions { topic, partitions: vec![p] }),
        }
    }
    out
}

fn to_message(ev: MemberEvent) -> Result<CoordinatorMessage, Status> {
    let kind = match ev {
        MemberEvent::Joined { member_id, generation, heartbeat_interval, session_timeout } => {
            coordinator_message::Kind::Joined(pb::Joined {
                member_id,
                generation,
                heartbeat_interval_ms: heartbeat_interval.as_millis() as u32,
                session_timeout_ms: session_timeout.as_millis() as u32,
            })
        }
        MemberEvent::Assignment { generation, partitions } => coordinator_message::Kind::Assignment(pb::Assignment {
            generation,
            partitions: partitions
                .into_iter()
                .map(|(topic, partitions)| TopicPartitions { topic, partitions })
                .collect(),
        }),
        MemberEvent::Removed { reason } => return Err(Status::aborted(format!("removed from the group: {reason}"))),
    };
    Ok(CoordinatorMessage { kind: Some(kind) })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Groups for GroupsService {
    type JoinStream = BoxStream<CoordinatorMessage>;

    async fn join(&self, request: Request<Streaming<MemberMessage>>) -> Result<Response<Self::JoinStream>, Status> {
        let caller = auth::Caller::of(&request);
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| invalid("the stream ended before a join message"))?;
        let Some(member_message::Kind::Join(mut join)) = first.kind else {
            return Err(invalid("the first message of a Join stream must be `join`"));
        };
        self.auth.authorize(&caller, Operation::Consume, &mut join.tenant, Resource::Group(&join.group)).await?;
        // Members learn the subscribed topics' partitions.
        for topic in &join.topics {
            self.auth.authorize(&caller, Operation::Describe, &mut join.tenant, Resource::Topic(topic)).await?;
        }
        let session_timeout = match join.session_timeout_ms {
            0 => DEFAULT_SESSION_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let (tx, mut rx) = mpsc::channel::<MemberEvent>(64);
        let spec = JoinSpec { topics: join.topics, session_timeout, client_id: join.client_id };
        let (key, member_id) = self.coordinator.join(&join.tenant, &join.group, spec, tx).await.map_err(to_status)?;
        let coordinator = self.coordinator.clone();
        tokio::spawn(async move {
            // Ends when the member is gone (closed, killed, network error): it
            // leaves now rather than at its session timeout.
            while let Ok(Some(msg)) = inbound.message().await {
                match msg.kind {
                    Some(member_message::Kind::Heartbeat(_)) => coordinator.heartbeat(&key, &member_id).await,
                    Some(member_message::Kind::Revoked(r)) => {
                        coordinator.revocation_done(&key, &member_id, r.generation).await
                    }
                    Some(member_message::Kind::Leave(_)) => break,
                    Some(member_message::Kind::Join(_)) | None => {
                        tracing::debug!(member = %member_id, "ignoring unexpected group message");
                    }
                }
            }
            coordinator.leave(&key, &member_id).await;
        });
        let outbound = async_stream(move |out: mpsc::Sender<Result<CoordinatorMessage, Status>>| async move {
            while let Some(ev) = rx.recv().await {
                let removed = matches!(ev, MemberEvent::Removed { .. });
                if out.send(to_message(ev)).await.is_err() || removed {
                    break;
                }
            }
        });
        Ok(Response::new(outbound))
    }

    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        // Kafka's rule: READ on the group and on each committed topic.
        let caller = self.auth.session(auth::Caller::of(&request))?;
        let mut r = request.into_inner();
        self.auth.authorize(&caller, Operation::Consume, &mut r.tenant, Resource::Group(&r.group)).await?;
        for o in &r.offsets {
            self.auth.authorize(&caller, Operation::Consume, &mut r.tenant, Resource::Topic(&o.topic)).await?;
        }
        let offsets = r
            .offsets
            .into_iter()
            .map(|o| OffsetCommit { topic: o.topic, partition: o.partition, offset: o.offset, metadata: o.metadata })
            .collect();
        self.coordinator.commit(&r.tenant, &r.group, &r.member_id, r.generation, offsets).await.map_err(to_status)?;
        Ok(Response::new(CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        let caller = self.auth.session(auth::Caller::of(&request))?;
        let mut r = request.into_inner();
        self.auth.authorize(&caller, Operation::Describe, &mut r.tenant, Resource::Group(&r.group)).await?;
        let wanted: std::collections::HashSet<(String, u32)> =
            r.partitions.iter().flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.clone(), *p))).collect();
        let offsets = self
            .coordinator
            .fetch_offsets(&r.tenant, &r.group)
            .await
            .map_err(to_status)?
            .into_iter()
            .filter(|o| wanted.is_empty() || wanted.contains(&(o.topic.clone(), o.partition)))
            // Only the topics the caller may describe (as Kafka).
            .filter(|o| self.auth.permits(&caller, Operation::Describe, Resource::Topic(&o.topic)))
            .map(|o| PartitionOffset { topic: o.topic, partition: o.partition, offset: o.offset, metadata: o.metadata })
            .collect();
        Ok(Response::new(FetchOffsetsResponse { offsets }))
    }

    async fn list_groups(&self, request: Request<ListGroupsRequest>) -> Result<Response<ListGroupsResponse>, Status> {
        let caller = self.auth.session(auth::Caller::of(&request))?;
        let mut r = request.into_inner();
        self.auth.authorize(&caller, Operation::Describe, &mut r.tenant, Resource::Tenant).await?;
        let groups = self
            .coordinator
            .list(&r.tenant)
            .await
            .map_err(to_status)?
            .into_iter()
            .filter(|(group, _, _)| self.auth.permits(&caller, Operation::Describe, Resource::Group(group)))
            .map(|(group, members, state)| pb::GroupSummary { group, members: members as u32, state: state.to_owned() })
            .collect();
        Ok(Response::new(ListGroupsResponse { groups }))
    }

    async fn describe_group(
        &self,
        request: Request<DescribeGroupRequest>,
    ) -> Result<Response<GroupDescription>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Describe, &mut r.tenant, Resource::Group(&r.group)).await?;
        let v = self.coordinator.describe(&r.tenant, &r.group).await.map_err(to_status)?;
        Ok(Response::new(GroupDescription {
            tenant: v.tenant,
            group: v.group,
            state: v.state.to_owned(),
            members: v
                .members
                .into_iter()
                .map(|m| pb::GroupMember {
                    member_id: m.member_id,
                    client_id: m.client_id,
                    generation: m.generation,
                    assigned: topic_partitions(m.assigned),
                    revoking: topic_partitions(m.revoking),
                })
                .collect(),
            partitions: v
                .partitions
                .into_iter()
                .map(|p| pb::PartitionLag {
                    topic: p.topic,
                    partition: p.partition,
                    committed_offset: p.committed.map_or(-1, |c| c as i64),
                    end_offset: p.end_offset,
                    lag: p.lag,
                    member_id: p.owner.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn reset_offsets(
        &self,
        request: Request<ResetOffsetsRequest>,
    ) -> Result<Response<ResetOffsetsResponse>, Status> {
        let caller = self.auth.session(auth::Caller::of(&request))?;
        let mut r = request.into_inner();
        self.auth.authorize(&caller, Operation::Admin, &mut r.tenant, Resource::Group(&r.group)).await?;
        if !r.topic.is_empty() {
            self.auth.authorize(&caller, Operation::Describe, &mut r.tenant, Resource::Topic(&r.topic)).await?;
        }
        let to = match r.to {
            None => return Err(invalid("reset needs a target: earliest, latest, an offset or a timestamp")),
            Some(reset_offsets_request::To::Position(p)) => match StartPositionChoice::try_from(p) {
                Ok(StartPositionChoice::Earliest) => ResetTo::Earliest,
                Ok(StartPositionChoice::Latest) => ResetTo::Latest,
                _ => return Err(invalid(format!("unknown reset position {p}"))),
            },
            Some(reset_offsets_request::To::Offset(o)) => ResetTo::Offset(o),
            Some(reset_offsets_request::To::TimestampMs(ts)) => ResetTo::Timestamp(ts),
        };
        let offsets = self
            .coordinator
            .reset(&r.tenant, &r.group, &r.topic, r.partitions, to, r.force)
            .await
            .map_err(to_status)?
            .into_iter()
            .map(|o| PartitionOffset { topic: o.topic, partition: o.partition, offset: o.offset, metadata: o.metadata })
            .collect();
        Ok(Response::new(ResetOffsetsResponse { offsets }))
    }

    async fn delete_group(
        &self,
        request: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        let (caller, mut r) = auth::split(request);
        self.auth.authorize(&caller, Operation::Admin, &mut r.tenant, Resource::Group(&r.group)).await?;
        self.coordinator.delete(&r.tenant, &r.group).await.map_err(to_status)?;
        Ok(Response::new(DeleteGroupResponse {}))
    }
}

/// A response stream fed by a task writing into a bounded channel.
fn async_stream<F, Fut>(f: F) -> BoxStream<CoordinatorMessage>
where
    F: FnOnce(mpsc::Sender<Result<CoordinatorMessage, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
