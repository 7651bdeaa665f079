//! [`Client::send_batch`]: one `Send` request per call, retried only when a retry
//! cannot enqueue a message twice.
//!
//! Delivery guarantee: the broker accepts all messages of a request or none
//! and answers once they are durable. A failure *before* the request reached
//! the broker (no connection, stream refused) or an explicit refusal
//! (shutting down, overloaded) stored nothing, so those are retried with
//! backoff. A failure *after* the request left (the connection broke, the
//! deadline passed) may hide a success: resending could enqueue the messages
//! twice, so such errors are returned — unless every message carries a
//! dedup id, in which case the broker drops the second copy (within the
//! queue's dedup window) and the retry is exact. Callers that resend after an
//! error get at-least-once delivery; give messages dedup ids to get
//! exactly-once enqueueing.

use strata_proto::v1 as pb;

use super::message::QueueMessage;
use crate::client::{Client, Queues};
use crate::error::{Error, ServerError};
use crate::retry::RetryConfig;
use crate::routing::Target;

pub use strata_proto::v1::SendResult;

impl Client {
    /// Sends messages to a queue in one request: all are enqueued or none.
    /// For one message per call at high rates use a
    /// [`QueueProducer`](crate::QueueProducer), which batches and pipelines.
    /// Returns one [`SendResult`] per message, in order (`duplicate` when a
    /// dedup id was already seen within the window).
    ///
    /// Retries (with backoff, about 20 s at most) only errors that cannot
    /// have stored anything, or any transient error when every message has
    /// a dedup id; see the module docs of `queue::send` for the at-least-once
    /// consequence.
    pub async fn send_batch(
        &self,
        queue: &str,
        messages: impl IntoIterator<Item = QueueMessage>,
    ) -> Result<Vec<SendResult>, Error> {
        // Tracing on: every message's context goes in its headers, and a
        // sampled one gets a `send` span (kept with the message's index).
        let mut spans = Vec::new();
        let messages: Vec<pb::OutgoingMessage> = messages
            .into_iter()
            .enumerate()
            .map(|(i, mut m)| {
                if let Some((trace, span)) = crate::telemetry::send_span(queue, m.body.len()) {
                    trace.write_into(&mut m.headers);
                    spans.extend(span.map(|s| (i, s)));
                }
                m.into_proto()
            })
            .collect();
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let all_deduplicated = messages.iter().all(|m| !m.dedup_id.is_empty());
        let expected = messages.len();
        let req = pb::SendRequest { tenant: self.tenant().to_owned(), queue: queue.to_owned(), messages };
        let mut backoff = RetryConfig::default().backoff();
        loop {
            // The request is cloned per attempt: cheap, since bodies are
            // `Bytes`. NOT_LEADER (nothing stored) is followed to the owner.
            let sent =
                self.rpc(Target::Queue(queue), req.clone(), |mut c: Queues, r| async move { c.send(r).await }).await;
            let err = match sent {
                Ok(resp) => {
                    let results = resp.results;
                    if results.len() != expected {
                        return Err(Error::Unsupported(format!(
                            "the broker answered a send of {expected} messages with {} results",
                            results.len()
                        )));
                    }
                    if !spans.is_empty() {
                        use strata_telemetry::{Attribute, Span, attr};
                        for (i, mut span) in spans.drain(..) {
                            span.set_attribute(Attribute::new(attr::MESSAGE_ID, results[i].message_id.to_string()));
                            span.end();
                        }
                    }
                    return Ok(results);
                }
                Err(e) => e,
            };
            let retry = if all_deduplicated { err.is_retryable() } else { stored_nothing(&err) };
            match backoff.next() {
                Some(delay) if retry => {
                    tracing::debug!(queue, error = %err, ?delay, "retrying send");
                    tokio::time::sleep(delay).await;
                }
                _ => return Err(err),
            }
        }
    }
}

/// Whether a failed send certainly enqueued nothing: the broker refused it
/// explicitly with a transient error, or it never reached the broker.
pub(crate) fn stored_nothing(err: &Error) -> bool {
    match err {
        Error::Connect { .. } => true,
        Error::Server(s) => server_stored_nothing(s),
        _ => false,
    }
}

fn server_stored_nothing(s: &ServerError) -> bool {
    if s.has_details {
        // The broker chose this answer; a request is all-or-nothing, so a
        // refusal stored nothing.
        return transient_refusal(s);
    }
    // Transport errors: tonic maps "could not connect" and an HTTP/2
    // REFUSED_STREAM (the server did not process the stream) to
    // UNAVAILABLE. A keep-alive timeout is UNAVAILABLE too but may come after
    // the request was processed, so it is excluded.
    s.code == tonic::Code::Unavailable && !s.message.contains("timed out") && !s.message.contains("keep-alive")
}

/// Whether the broker itself refused a request with a transient error (so,
/// requests being all-or-nothing, stored nothing).
pub(crate) fn transient_refusal(s: &ServerError) -> bool {
    use strata_proto::v1::ErrorCode;
    if s.error_code == ErrorCode::QuotaExceeded {
        // A tenant rate quota says when to retry; count and storage quotas
        // refuse again.
        return s.metadata.contains_key("retry_after_ms");
    }
    s.error_code == ErrorCode::ShuttingDown
        || (matches!(s.code, tonic::Code::Unavailable | tonic::Code::ResourceExhausted)
            && !matches!(s.error_code, ErrorCode::BatchTooLarge | ErrorCode::LimitExceeded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::v1::{ErrorCode, ErrorInfo};

    fn typed(code: tonic::Code, error_code: ErrorCode) -> Error {
        Error::from(strata_proto::status_with_info(
            code,
            "refused",
            ErrorInfo { code: error_code as i32, ..Default::default() },
        ))
    }

    #[test]
    fn only_errors_that_stored_nothing_are_safe_to_resend() {
        assert!(stored_nothing(&Error::from(tonic::Status::unavailable("tcp connect error"))));
        assert!(!stored_nothing(&Error::from(tonic::Status::unavailable("keep-alive timed out"))));
        // The connection broke mid-request: the broker may have stored it.
        assert!(!stored_nothing(&Error::from(tonic::Status::unknown("h2 protocol error"))));
        assert!(!stored_nothing(&Error::from(tonic::Status::cancelled("timeout expired"))));
        assert!(!stored_nothing(&Error::Timeout { operation: "send", timeout: std::time::Duration::ZERO }));
        assert!(stored_nothing(&typed(tonic::Code::FailedPrecondition, ErrorCode::ShuttingDown)));
        assert!(stored_nothing(&typed(tonic::Code::ResourceExhausted, ErrorCode::ResourceExhausted)));
        assert!(!stored_nothing(&typed(tonic::Code::NotFound, ErrorCode::UnknownQueue)));
        assert!(!stored_nothing(&typed(tonic::Code::InvalidArgument, ErrorCode::InvalidRequest)));
    }
}
