//! The group consumer's background task: owns the `Groups.Join` stream,
//! sends heartbeats, forwards the coordinator's assignments to the
//! [`super::GroupConsumer`], writes its `revoked` answers, and rejoins with
//! backoff (as a new member) when the stream ends.
//!
//! The task never touches partitions itself: stopping fetchers, committing
//! and callbacks happen in the application's task (inside `next()`), which
//! knows how far each partition was read. Heartbeats do not depend on the
//! application, so a slow consumer keeps its membership; revocations do,
//! so an application must call `next()` at least once per session timeout
//! while a rebalance is in progress.
//!
//! Each membership (one successful join) is a *session*, numbered from 1;
//! events carry their session and `revoked` answers of an ended session are
//! dropped, so nothing of an old membership leaks into a new one.

use std::sync::Arc;
use std::time::Duration;

use strata_proto::v1::{
    CoordinatorMessage, Heartbeat, JoinGroup, LeaveGroup, MemberMessage, RevocationDone, coordinator_message,
    member_message,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;

use crate::client::Client;
use crate::error::Error;
use crate::retry::RetryConfig;
use crate::routing::{Learned, MAX_REDIRECTS, Target};

/// What the task tells the group consumer.
#[derive(Debug)]
pub(crate) enum MemberEvent {
    /// A membership started.
    Joined { session: u64, member_id: String },
    /// The complete set of partitions the member owns from now on.
    Assignment { session: u64, generation: u64, partitions: Vec<(String, u32)> },
    /// The membership ended; every partition is lost. A rejoin follows.
    Lost { session: u64, error: Error },
    /// A rejoin failed with an error the application should see (a
    /// transient one is only logged); the task keeps trying.
    JoinFailed(Error),
}

/// What the group consumer asks the task to do.
#[derive(Debug)]
pub(crate) enum MemberCommand {
    /// The member has released what the assignment of `generation` took away.
    Revoked { session: u64, generation: u64 },
    /// Leave the group, end the stream, then answer.
    Leave(oneshot::Sender<()>),
}

/// How to join.
#[derive(Debug, Clone)]
pub(crate) struct JoinParams {
    pub(crate) client: Client,
    pub(crate) group: String,
    pub(crate) topics: Vec<String>,
    pub(crate) session_timeout: Duration,
    pub(crate) client_id: String,
    pub(crate) retry: RetryConfig,
    pub(crate) request_timeout: Duration,
}

/// One open Join stream after `joined`.
pub(crate) struct Session {
    tx: mpsc::Sender<MemberMessage>,
    rx: Streaming<CoordinatorMessage>,
    pub(crate) member_id: String,
    heartbeat_interval: Duration,
    generation: u64,
}

fn message(kind: member_message::Kind) -> MemberMessage {
    MemberMessage { kind: Some(kind) }
}

/// Opens a Join stream to the group's coordinator and waits for `joined`,
/// following NOT_LEADER answers to the coordinator they name (heartbeats
/// and assignments then ride on that stream).
pub(crate) async fn join(params: &JoinParams) -> Result<Session, Error> {
    let target = Target::Group(&params.group);
    let mut url = params.client.route(target).await;
    for _ in 0..MAX_REDIRECTS {
        let error = match join_at(params, &url).await {
            Ok(session) => return Ok(session),
            Err(e) => e,
        };
        match params.client.learn(target, &url, &error) {
            Learned::Moved(next) => url = next,
            Learned::NoOwner | Learned::Nothing => return Err(error),
        }
    }
    join_at(params, &url).await
}

async fn join_at(params: &JoinParams, url: &Arc<str>) -> Result<Session, Error> {
    let (tx, rx) = mpsc::channel(16);
    let join = JoinGroup {
        tenant: params.client.tenant().to_owned(),
        group: params.group.clone(),
        topics: params.topics.clone(),
        session_timeout_ms: u32::try_from(params.session_timeout.as_millis()).unwrap_or(u32::MAX),
        client_id: params.client_id.clone(),
    };
    // The broker reads `join` before it answers the call.
    tx.send(message(member_message::Kind::Join(join)))
        .await
        .map_err(|_| Error::from(tonic::Status::internal("the join stream closed before it opened")))?;
    let timeout = params.request_timeout;
    let timed_out = || Error::Timeout { operation: "joining the group", timeout };
    let mut rpc = params.client.groups_rpc_at(url);
    let mut stream =
        tokio::time::timeout(timeout, rpc.join(ReceiverStream::new(rx))).await.map_err(|_| timed_out())??.into_inner();
    let first = tokio::time::timeout(timeout, stream.message()).await.map_err(|_| timed_out())??;
    match first.and_then(|m| m.kind) {
        Some(coordinator_message::Kind::Joined(joined)) => {
            let heartbeat_interval = match joined.heartbeat_interval_ms {
                0 => params.session_timeout / 3,
                ms => Duration::from_millis(u64::from(ms)),
            };
            Ok(Session {
                tx,
                rx: stream,
                member_id: joined.member_id,
                heartbeat_interval: heartbeat_interval.max(Duration::from_millis(10)),
                generation: joined.generation,
            })
        }
        other => Err(Error::from(tonic::Status::internal(format!(
            "the group coordinator answered a join with {other:?} instead of `joined`"
        )))),
    }
}

enum SessionEnd {
    Left,
    Lost(Error),
}

/// Runs memberships until the consumer leaves or goes away. `first` is the
/// membership the consumer's constructor established (session 1).
pub(crate) async fn run(
    params: JoinParams,
    first: Session,
    events: mpsc::UnboundedSender<MemberEvent>,
    mut commands: mpsc::UnboundedReceiver<MemberCommand>,
) {
    let mut session_no = 1;
    let mut next = Some(first);
    loop {
        let session = match next.take() {
            Some(s) => s,
            None => match rejoin(&params, &events, &mut commands).await {
                Some(s) => s,
                None => return,
            },
        };
        if events.send(MemberEvent::Joined { session: session_no, member_id: session.member_id.clone() }).is_err() {
            return;
        }
        match serve(session, session_no, &events, &mut commands, params.session_timeout).await {
            SessionEnd::Left => return,
            SessionEnd::Lost(error) => {
                tracing::info!(group = %params.group, %error, "group membership ended; rejoining");
                if events.send(MemberEvent::Lost { session: session_no, error }).is_err() {
                    return;
                }
                session_no += 1;
            }
        }
    }
}

/// Joins again with backoff; `None` when the consumer left or went away.
async fn rejoin(
    params: &JoinParams,
    events: &mpsc::UnboundedSender<MemberEvent>,
    commands: &mut mpsc::UnboundedReceiver<MemberCommand>,
) -> Option<Session> {
    let mut backoff = params.retry.backoff();
    loop {
        // Never give up: once the retries are used up, keep trying at the
        // longest delay.
        let delay = backoff.next().unwrap_or(params.retry.max_delay);
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                cmd = commands.recv() => match cmd {
                    // Answers of the lost membership have nothing to do.
                    Some(MemberCommand::Revoked { .. }) => {}
                    Some(MemberCommand::Leave(done)) => {
                        let _ = done.send(());
                        return None;
                    }
                    None => return None,
                },
            }
        }
        match join(params).await {
            Ok(session) => return Some(session),
            Err(error) if error.is_retryable() => {
                tracing::debug!(group = %params.group, %error, "rejoining the group failed; retrying");
            }
            Err(error) => {
                tracing::warn!(group = %params.group, %error, "rejoining the group failed; retrying");
                if events.send(MemberEvent::JoinFailed(error)).is_err() {
                    return None;
                }
            }
        }
    }
}

/// Serves one membership until it ends.
async fn serve(
    mut session: Session,
    session_no: u64,
    events: &mpsc::UnboundedSender<MemberEvent>,
    commands: &mut mpsc::UnboundedReceiver<MemberCommand>,
    session_timeout: Duration,
) -> SessionEnd {
    let mut heartbeat = tokio::time::interval(session.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; joining was the first sign of life.
    heartbeat.tick().await;
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                let beat = message(member_message::Kind::Heartbeat(Heartbeat { generation: session.generation }));
                // A full queue means the stream is stuck; its end shows up
                // on the receiving side.
                let _ = session.tx.try_send(beat);
            }
            msg = session.rx.message() => match msg {
                Ok(Some(CoordinatorMessage { kind: Some(coordinator_message::Kind::Assignment(a)) })) => {
                    session.generation = session.generation.max(a.generation);
                    let partitions = a
                        .partitions
                        .into_iter()
                        .flat_map(|tp| {
                            let topic = tp.topic;
                            tp.partitions.into_iter().map(move |p| (topic.clone(), p))
                        })
                        .collect();
                    let event = MemberEvent::Assignment { session: session_no, generation: a.generation, partitions };
                    if events.send(event).is_err() {
                        return SessionEnd::Left;
                    }
                }
                Ok(Some(other)) => tracing::debug!(?other, "ignoring an unexpected group coordinator message"),
                Ok(None) => {
                    return SessionEnd::Lost(Error::from(tonic::Status::unavailable("the broker ended the group stream")));
                }
                Err(status) => return SessionEnd::Lost(status.into()),
            },
            cmd = commands.recv() => match cmd {
                Some(MemberCommand::Revoked { session: s, generation }) => {
                    if s == session_no {
                        let answer = message(member_message::Kind::Revoked(RevocationDone { generation }));
                        if session.tx.send(answer).await.is_err() {
                            return SessionEnd::Lost(Error::from(tonic::Status::unavailable("the group stream closed")));
                        }
                    }
                }
                Some(MemberCommand::Leave(done)) => {
                    leave(session, session_timeout).await;
                    let _ = done.send(());
                    return SessionEnd::Left;
                }
                None => {
                    // The consumer was dropped without close(): ending the
                    // stream makes the broker remove the member at once.
                    return SessionEnd::Left;
                }
            },
        }
    }
}

/// Sends `leave`, ends the stream, and waits (bounded) until the broker has
/// ended its side, i.e. has removed the member.
async fn leave(session: Session, limit: Duration) {
    let Session { tx, mut rx, .. } = session;
    let _ = tx.send(message(member_message::Kind::Leave(LeaveGroup {}))).await;
    drop(tx);
    let drained = async { while let Ok(Some(_)) = rx.message().await {} };
    let _ = tokio::time::timeout(limit, drained).await;
}
