//! openraft's RPCs (and the formation probe and forwarded writes) over the
//! internal `strata.v1.Raft` gRPC service. Payloads are openraft's messages
//! as JSON in `RaftPayload.json`, except AppendEntries requests, which are
//! binary (`codec.rs`); a reply carries `Result<Response, Error>` as JSON.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata_proto::v1::raft_client::RaftClient;
use strata_proto::v1::{HelloRequest, HelloResponse, RaftPayload};
use tonic::transport::{Channel, Endpoint};

use super::codec::StoreTypes;
use super::{ForwardReply, NodeId, TypeConfig};
use crate::catalog::CatalogCommand;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A join waits for the new broker to catch up on the leader.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(70);

/// Connections to peers by address (shared by every openraft client).
#[derive(Clone, Default)]
pub(crate) struct Network {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// TLS to peers (`https://`) when the broker serves TLS.
    tls: Option<crate::tls::PeerTls>,
    /// `Bearer <admin token>`, sent on every call when an admin token is
    /// configured (peers require it when authentication is required).
    bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    #[error("invalid peer address {0:?}")]
    Address(String),
    #[error("{0}")]
    Rpc(#[from] tonic::Status),
    #[error("cannot encode or decode a Raft message: {0}")]
    Codec(#[from] serde_json::Error),
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<RaftPayload, serde_json::Error> {
    Ok(RaftPayload { json: serde_json::to_vec(v)?.into(), group: String::new() })
}

pub(crate) fn decode<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, serde_json::Error> {
    serde_json::from_slice(&p.json)
}

impl Network {
    pub(crate) fn new(tls: Option<crate::tls::PeerTls>, admin_token: Option<&str>) -> Network {
        let bearer = admin_token.and_then(|t| format!("Bearer {t}").parse().ok());
        Network { channels: Arc::default(), tls, bearer }
    }

    fn client(&self, addr: &str) -> Result<RaftClient<Channel>, TransportError> {
        self.channel(addr).map(RaftClient::new)
    }

    /// The (lazily connecting) channel to the broker at `addr`.
    fn channel(&self, addr: &str) -> Result<Channel, TransportError> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|_| TransportError::Address(addr.to_owned()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint =
                endpoint.tls_config(tls.client_config()).map_err(|_| TransportError::Address(addr.to_owned()))?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Reads the stored batches of partition `id` from offset `from` (up to
    /// before `to`) from the broker at `addr`, through its public Fetch with
    /// the admin token: a replica installing a snapshot fetches what it
    /// lacks. Returns at least one batch unless the broker has none there.
    pub(crate) async fn fetch_batches(
        &self,
        addr: &str,
        id: &crate::partition::PartitionId,
        from: u64,
        to: u64,
    ) -> Result<Vec<bytes::Bytes>, TransportError> {
        use strata_proto::v1::fetch_request::Start;
        let mut client = strata_proto::v1::log_client::LogClient::new(self.channel(addr)?)
            .max_decoding_message_size(64 * 1024 * 1024);
        let mut request = self.request(strata_proto::v1::FetchRequest {
            tenant: id.tenant().to_string(),
            topic: id.topic().to_string(),
            partition: id.index(),
            start: Some(Start::Offset(from)),
            max_bytes: 4 * 1024 * 1024,
            max_wait_ms: 1,
            follow: false,
        });
        request.set_timeout(MEMBERSHIP_TIMEOUT);
        let mut stream = client.fetch(request).await?.into_inner();
        let mut out = Vec::new();
        while let Some(resp) = stream.message().await? {
            let mut records = resp.records;
            while let Ok(h) = strata_proto::batch::BatchHeader::parse(&records) {
                if h.total_len() > records.len() || h.base_offset >= to {
                    break;
                }
                out.push(records.split_to(h.total_len()));
            }
            if !out.is_empty() || resp.next_offset >= to {
                break;
            }
        }
        Ok(out)
    }

    /// A request carrying the admin token, when there is one.
    fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(body);
        if let Some(b) = &self.bearer {
            req.metadata_mut().insert("authorization", b.clone());
        }
        req
    }

    /// Asks the broker at `addr` who it is and whether it is in a cluster.
    pub(crate) async fn hello(&self, addr: &str, from_id: u64, from: &str) -> Result<HelloResponse, TransportError> {
        let mut client = self.client(addr)?;
        let mut req = self.request(HelloRequest { from_id, from_address: from.to_owned() });
        req.set_timeout(PROBE_TIMEOUT);
        Ok(client.hello(req).await?.into_inner())
    }

    /// Sends a membership request to the broker at `addr`; the answer is
    /// the request's reply type (see `membership.rs`).
    pub(crate) async fn membership(
        &self,
        addr: &str,
        req: &super::membership::MembershipRequest,
    ) -> Result<serde_json::Value, TransportError> {
        let mut client = self.client(addr)?;
        let mut request = self.request(encode(req)?);
        request.set_timeout(MEMBERSHIP_TIMEOUT);
        let reply = client.membership(request).await?.into_inner();
        Ok(decode(&reply)?)
    }

    /// Sends a catalog command to the leader at `addr`.
    pub(crate) async fn forward(&self, addr: &str, cmd: &CatalogCommand) -> Result<ForwardReply, TransportError> {
        let mut client = self.client(addr)?;
        let reply = client.forward(self.request(encode(cmd)?)).await?.into_inner();
        Ok(decode(&reply)?)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection<TypeConfig>;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection<TypeConfig> {
        Connection::new(self.clone(), Arc::from(""), target, node)
    }
}

/// The network of one replicated partition's group: the brokers' shared
/// connections, every message tagged with the group.
#[derive(Clone)]
pub(crate) struct GroupNetwork {
    pub network: Network,
    pub group: Arc<str>,
}

impl<C: StoreTypes> RaftNetworkFactory<C> for GroupNetwork {
    type Network = Connection<C>;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection<C> {
        Connection::new(self.network.clone(), self.group.clone(), target, node)
    }
}

/// openraft's view of one peer, for one group.
pub(crate) struct Connection<C> {
    target: NodeId,
    addr: String,
    network: Network,
    group: Arc<str>,
    _types: std::marker::PhantomData<fn() -> C>,
}

/// A request as JSON (all but AppendEntries).
#[allow(clippy::result_large_err)] // openraft's error type
fn json_payload<T: Serialize, E: std::error::Error>(
    req: &T,
) -> Result<RaftPayload, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
    encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl<C> Connection<C> {
    fn new(network: Network, group: Arc<str>, target: NodeId, node: &BasicNode) -> Self {
        Connection { target, addr: node.addr.clone(), network, group, _types: std::marker::PhantomData }
    }

    /// Sends an encoded request to the peer and decodes its answer.
    async fn send<Resp, E>(
        &self,
        mut payload: RaftPayload,
        option: &RPCOption,
        rpc: impl AsyncFnOnce(
            RaftClient<Channel>,
            tonic::Request<RaftPayload>,
        ) -> Result<tonic::Response<RaftPayload>, tonic::Status>,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = self.network.client(&self.addr).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        payload.group = self.group.to_string();
        let mut request = self.network.request(payload);
        request.set_timeout(option.hard_ttl());
        let reply = rpc(client, request).await.map_err(|s| {
            let e = TransportError::Rpc(s);
            match &e {
                TransportError::Rpc(s) if s.code() == tonic::Code::Unavailable => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                _ => RPCError::Network(NetworkError::new(&e)),
            }
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(reply.get_ref()).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(self.target, BasicNode { addr: self.addr.clone() }, e))
        })
    }
}

impl<C: StoreTypes> RaftNetwork<C> for Connection<C> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        // Entries travel in binary form (`codec.rs`).
        let json = super::codec::encode_append(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let payload = RaftPayload { json: json.into(), group: String::new() };
        self.send(payload, &option, async |mut c, r| c.append_entries(r).await).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.send(json_payload(&rpc)?, &option, async |mut c, r| c.install_snapshot(r).await).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.send(json_payload(&rpc)?, &option, async |mut c, r| c.vote(r).await).await
    }
}
