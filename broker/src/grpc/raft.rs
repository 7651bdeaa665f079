//! The internal `strata.v1.Raft` service: openraft's RPCs between brokers,
//! forwarded metadata writes and the formation probe. Transport only.

use std::sync::Arc;

use strata_proto::v1::{HelloRequest, HelloResponse, RaftPayload, raft_server::Raft};
use tonic::{Request, Response, Status};

use super::auth::{self, Auth, Operation, Resource};
use crate::catalog::CatalogCommand;
use crate::cluster::ClusterNode;
use crate::cluster::codec::decode_append;
use crate::cluster::membership::MembershipRequest;
use crate::cluster::network::{decode, encode};
use crate::replication::{Groups, ReplicaGroup};

pub(crate) struct RaftService {
    node: Arc<ClusterNode>,
    /// The replicated partitions' groups on this broker.
    groups: Arc<Groups>,
    auth: Auth,
}

impl RaftService {
    pub fn new(node: Arc<ClusterNode>, groups: Arc<Groups>, auth: Auth) -> Self {
        RaftService { node, groups, auth }
    }

    /// Only brokers (holding the admin token) speak Raft and change the
    /// membership.
    async fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.auth.authorize(&auth::Caller::of(request), Operation::Cluster, &mut String::new(), Resource::Tenant).await
    }

    /// The payload of an admitted caller.
    async fn payload<T: serde::de::DeserializeOwned>(&self, request: &Request<RaftPayload>) -> Result<T, Status> {
        self.admit(request).await?;
        decode(request.get_ref()).map_err(bad_payload)
    }
}

fn bad_payload(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("undecodable Raft payload: {e}"))
}

fn reply<T: serde::Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    encode(v).map(Response::new).map_err(|e| Status::internal(format!("cannot encode a Raft reply: {e}")))
}

/// The replicated partition a message is for (`None`: the metadata group).
/// A group this broker does not run (yet, or any more) answers UNAVAILABLE,
/// which the sender treats as an unreachable peer and retries.
fn partition_group(groups: &Groups, request: &Request<RaftPayload>) -> Result<Option<Arc<ReplicaGroup>>, Status> {
    let group = &request.get_ref().group;
    if group.is_empty() {
        return Ok(None);
    }
    groups.get(group).map(Some).ok_or_else(|| Status::unavailable(format!("no replica of group {group} here")))
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let group = partition_group(&self.groups, &request)?;
        self.admit(&request).await?;
        let bytes = request.into_inner().json;
        match group {
            None => reply(&self.node.raft().append_entries(decode_append(bytes).map_err(bad_payload)?).await),
            Some(g) => reply(&g.raft().append_entries(decode_append(bytes).map_err(bad_payload)?).await),
        }
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        match partition_group(&self.groups, &request)? {
            None => reply(&self.node.raft().vote(self.payload(&request).await?).await),
            Some(g) => reply(&g.raft().vote(self.payload(&request).await?).await),
        }
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        match partition_group(&self.groups, &request)? {
            None => reply(&self.node.raft().install_snapshot(self.payload(&request).await?).await),
            Some(g) => reply(&g.raft().install_snapshot(self.payload(&request).await?).await),
        }
    }

    async fn forward(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let cmd: CatalogCommand = self.payload(&request).await?;
        let deadline = self.node.forward_deadline();
        reply(&self.node.write_as_leader(&cmd, deadline).await)
    }

    async fn membership(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req: MembershipRequest = self.payload(&request).await?;
        let answer = match req {
            MembershipRequest::Join(join) => serde_json::to_value(self.node.handle_join(join).await),
            MembershipRequest::Remove { broker_id, forwarded } => {
                serde_json::to_value(self.node.handle_remove(broker_id, forwarded).await)
            }
        };
        reply(&answer.map_err(|e| Status::internal(format!("cannot encode a membership reply: {e}")))?)
    }

    async fn hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        self.admit(&request).await?;
        Ok(Response::new(HelloResponse {
            broker_id: self.node.id(),
            advertised_address: self.node.address().to_owned(),
            initialized: self.node.has_state(),
            leader_id: self.node.leader(),
        }))
    }
}
