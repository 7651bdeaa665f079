//! The client's error type: what went wrong talking to a broker, with the gRPC
//! code and the stable [`ErrorCode`] preserved so callers can branch on them.

use std::collections::HashMap;
use std::sync::Arc;

use strata_proto::batch::BatchError;
use strata_proto::v1::{ErrorCode, ErrorInfo, ItemError};

/// Everything the client library can fail with.
///
/// `Clone` because one failed batch fails every message in it, and each
/// message's delivery future gets its own copy.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server URL could not be parsed.
    #[error("invalid server URL {url:?}: {}", root_cause(&**cause))]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Kept out of `source()` because the message already names the
        /// root cause (error reporters would print it twice).
        cause: Arc<tonic::transport::Error>,
    },
    /// No connection could be established.
    #[error("cannot connect to {url}: {}", root_cause(&**cause))]
    Connect {
        /// The server URL.
        url: String,
        /// The transport error.
        cause: Arc<tonic::transport::Error>,
    },
    /// The broker (or the transport underneath) answered with an error status.
    #[error("{0}")]
    Server(Box<ServerError>),
    /// The broker sent a record batch that does not decode.
    #[error("invalid record batch from the broker: {0}")]
    Batch(#[from] BatchError),
    /// A record is too large to ever be sent.
    #[error("record of {size} bytes is larger than the {limit}-byte limit of one request")]
    RecordTooLarge {
        /// Its encoded size in bytes.
        size: usize,
        /// The largest request the client sends, in bytes.
        limit: usize,
    },
    /// A call did not complete in time.
    #[error("{operation} timed out after {timeout:?}")]
    Timeout {
        /// What timed out.
        operation: &'static str,
        /// How long it was given.
        timeout: std::time::Duration,
    },
    /// An argument was rejected before anything was sent.
    #[error("{0}")]
    InvalidArgument(String),
    /// The producer was closed (or its background task stopped) before the
    /// operation could complete.
    #[error("the producer is closed")]
    ProducerClosed,
    /// Another instance of this idempotent producer (same `producer_name`)
    /// started and took over: this one can never send again. Every pending
    /// and every later message fails with this error.
    #[error("the producer was fenced by a newer instance with the same producer name: {0}")]
    ProducerFenced(Box<ServerError>),
    /// The broker does not implement something the client needs.
    #[error("{0}")]
    Unsupported(String),
    /// The group consumer was closed.
    #[error("the group consumer is closed")]
    ConsumerClosed,
    /// Some receipts of an ack, nack or extend of several messages were not
    /// applied (the others were). A receipt is refused with
    /// [`ErrorCode::StaleReceipt`] when its lease expired and the message
    /// was (or may be) delivered again: see [`Error::is_stale_receipt`].
    #[error("{} of the receipts were not applied; first: {}", .0.len(), first_rejection(.0))]
    ReceiptsRejected(Vec<RejectedReceipt>),
    /// The request-reply queue of [`Client::call`](crate::Client::call)
    /// closed (the broker went away or ended the stream) while a call was
    /// waiting; the next call opens a new one.
    #[error("the reply queue closed: {0}")]
    ReplyQueueClosed(String),
    /// A group consumer was asked to commit while it is not a member of its
    /// group: it lost the membership in a rebalance and is rejoining. Its
    /// kind is [`ErrorKind::RebalanceInProgress`]; the records are read
    /// again by whoever gets the partitions.
    #[error("cannot commit: not a member of group {group} right now (rejoining after a rebalance)")]
    NotGroupMember {
        /// The group.
        group: String,
    },
}

/// One receipt an ack, nack or extend did not apply, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedReceipt {
    /// The message id of the receipt.
    pub message_id: u64,
    /// The delivery the receipt was for.
    pub delivery_count: u32,
    /// The broker's error for it.
    pub error: Box<ServerError>,
}

fn first_rejection(list: &[RejectedReceipt]) -> String {
    match list.first() {
        Some(r) => format!("message {} (delivery {}): {}", r.message_id, r.delivery_count, r.error),
        None => "-".to_owned(),
    }
}

/// An error status from the broker, with its structured details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The gRPC status code.
    pub code: tonic::Code,
    /// The human-readable message.
    pub message: String,
    /// The stable error code from the status details
    /// ([`ErrorCode::Unspecified`] when the broker attached none).
    pub error_code: ErrorCode,
    /// The resource the error is about, e.g. `default/orders/2` (may be empty).
    pub resource: String,
    /// Extra machine-readable facts from the broker.
    pub metadata: HashMap<String, String>,
    /// Whether the broker attached an `ErrorInfo` at all; statuses without one
    /// come from the transport (connection reset, refused stream, ...).
    pub has_details: bool,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.code.description())
        } else {
            // Messages from the transport can span several lines; keep the
            // error on one line so the CLI can print it as such.
            let mut first = true;
            for part in self.message.split_whitespace() {
                if !first {
                    f.write_str(" ")?;
                }
                f.write_str(part)?;
                first = false;
            }
            Ok(())
        }
    }
}

impl ServerError {
    fn new(code: tonic::Code, message: String, info: Option<ErrorInfo>) -> Self {
        let has_details = info.is_some();
        let info = info.unwrap_or_default();
        ServerError {
            code,
            message,
            error_code: ErrorCode::try_from(info.code).unwrap_or(ErrorCode::Unspecified),
            resource: info.resource,
            metadata: info.metadata,
            has_details,
        }
    }
}

/// The innermost error of a chain: tonic's transport errors say only
/// "transport error" at the top, and the useful part (e.g. "Connection
/// refused") is at the bottom.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let info = strata_proto::error_info(&status);
        Error::Server(Box::new(ServerError::new(status.code(), status.message().to_owned(), info)))
    }
}

impl From<ItemError> for Error {
    fn from(item: ItemError) -> Self {
        Error::Server(Box::new(ServerError::from(item)))
    }
}

impl From<ItemError> for ServerError {
    fn from(item: ItemError) -> Self {
        ServerError::new(tonic::Code::from_i32(item.status_code), item.message, item.info)
    }
}

/// What an application should do about an [`Error`]; see [`Error::kind`].
///
/// ```
/// use strata_client::{Error, ErrorKind};
///
/// fn advice(error: &Error) -> &'static str {
///     match error.kind() {
///         ErrorKind::Retryable => "try again later",
///         ErrorKind::RebalanceInProgress => "carry on: the group consumer rejoins by itself",
///         // `ErrorKind` is non-exhaustive: treat unknown kinds as fatal.
///         _ => "give up and report",
///     }
/// }
/// assert_eq!(advice(&Error::ProducerClosed), "give up and report");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Transient: the same call may succeed later (broker unavailable or
    /// overloaded, connection broken, timeout).
    Retryable,
    /// The group is rebalancing and this member lost (or is about to lose)
    /// the partitions the call was about. A [`GroupConsumer`](crate::GroupConsumer)
    /// handles it itself (it rejoins and gets partitions back or gives them
    /// up); an application only learns that a commit did not happen.
    RebalanceInProgress,
    /// Retrying the same call will not help: bad input, missing resource,
    /// permissions, a fenced producer, a closed client object.
    Fatal,
}

impl Error {
    /// Whether this error is retryable, a rebalance in progress, or fatal.
    pub fn kind(&self) -> ErrorKind {
        if self.is_fenced_member() || matches!(self, Error::NotGroupMember { .. }) {
            ErrorKind::RebalanceInProgress
        } else if self.is_retryable() {
            ErrorKind::Retryable
        } else {
            ErrorKind::Fatal
        }
    }

    /// The gRPC status code, when the error came from the broker.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Server(s) | Error::ProducerFenced(s) => Some(s.code),
            Error::Connect { .. } => Some(tonic::Code::Unavailable),
            Error::Timeout { .. } => Some(tonic::Code::DeadlineExceeded),
            _ => None,
        }
    }

    /// The stable Strata error code ([`ErrorCode::Unspecified`] when none).
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Error::Server(s) => s.error_code,
            Error::ProducerFenced(_) => ErrorCode::ProducerFenced,
            Error::RecordTooLarge { .. } => ErrorCode::RecordTooLarge,
            _ => ErrorCode::Unspecified,
        }
    }

    /// The broker's structured error, if this is one.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            Error::Server(s) | Error::ProducerFenced(s) => Some(s),
            _ => None,
        }
    }

    /// Whether a commit or other group call was refused because the member
    /// is no longer part of the group (`UNKNOWN_MEMBER`) or does not own the
    /// partition any more (`FENCED_MEMBER`).
    pub fn is_fenced_member(&self) -> bool {
        matches!(self.error_code(), ErrorCode::UnknownMember | ErrorCode::FencedMember)
    }

    /// Whether an ack, nack or extend was refused because the receipt is not
    /// the one of the message's current delivery (its lease expired, so it
    /// was, or will be, delivered again). For several receipts: whether
    /// every rejected one was stale.
    pub fn is_stale_receipt(&self) -> bool {
        match self {
            Error::ReceiptsRejected(list) => {
                !list.is_empty() && list.iter().all(|r| r.error.error_code == ErrorCode::StaleReceipt)
            }
            other => other.error_code() == ErrorCode::StaleReceipt,
        }
    }

    /// How long the broker asked to wait before retrying (a tenant rate
    /// quota refused the request: `retry_after_ms` in its details).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        let s = self.server_error()?;
        s.metadata.get("retry_after_ms")?.parse().ok().map(std::time::Duration::from_millis)
    }

    /// The tenant quota that refused the call (`max_topics`,
    /// `produce_bytes_per_second`, ...), when one did.
    pub fn quota(&self) -> Option<&str> {
        let s = self.server_error().filter(|s| s.error_code == ErrorCode::QuotaExceeded)?;
        s.metadata.get("quota").map(String::as_str)
    }

    /// Whether the resource named in the call does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(tonic::Code::NotFound)
    }

    /// Whether trying again later may succeed: the broker is unavailable,
    /// shutting down, overloaded, or the connection broke.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Timeout { .. } => true,
            Error::Server(s) => {
                if s.error_code == ErrorCode::ShuttingDown {
                    return true;
                }
                // A request over a size or count limit fails again the same way.
                if matches!(s.error_code, ErrorCode::BatchTooLarge | ErrorCode::LimitExceeded) {
                    return false;
                }
                // A tenant quota: a rate quota says when to retry (wait that
                // long, nothing was stored); a count or storage quota fails
                // again until an administrator or retention changes it.
                if s.error_code == ErrorCode::QuotaExceeded {
                    return self.retry_after().is_some();
                }
                match s.code {
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Aborted
                    | tonic::Code::ResourceExhausted => true,
                    // A broken HTTP/2 connection surfaces as Unknown or
                    // Cancelled without details; an error the broker itself
                    // chose always carries an ErrorInfo.
                    tonic::Code::Unknown | tonic::Code::Cancelled => !s.has_details,
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

/// The outcome of a delete that may find nothing: `Ok(false)` when the
/// broker said the resource (`missing`) does not exist.
pub(crate) fn if_exists(result: Result<(), Error>, missing: ErrorCode) -> Result<bool, Error> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.error_code() == missing => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keeps_code_message_and_error_code() {
        let status = strata_proto::status_with_info(
            tonic::Code::NotFound,
            "topic default/orders does not exist",
            ErrorInfo {
                code: ErrorCode::UnknownTopic as i32,
                resource: "default/orders".into(),
                metadata: HashMap::new(),
            },
        );
        let err = Error::from(status);
        assert_eq!(err.code(), Some(tonic::Code::NotFound));
        assert_eq!(err.error_code(), ErrorCode::UnknownTopic);
        assert!(err.is_not_found());
        assert!(!err.is_retryable());
        assert_eq!(err.to_string(), "topic default/orders does not exist");
        assert_eq!(err.server_error().map(|s| s.resource.as_str()), Some("default/orders"));
    }

    #[test]
    fn retryable_classification() {
        assert!(Error::from(tonic::Status::unavailable("down")).is_retryable());
        assert!(Error::from(tonic::Status::unknown("h2 reset")).is_retryable());
        assert!(!Error::from(tonic::Status::invalid_argument("bad")).is_retryable());
        let typed_unknown = strata_proto::status_with_info(
            tonic::Code::Unknown,
            "odd",
            ErrorInfo { code: ErrorCode::Storage as i32, ..Default::default() },
        );
        assert!(!Error::from(typed_unknown).is_retryable());
        let shutting_down = Error::from(ItemError {
            status_code: tonic::Code::FailedPrecondition as i32,
            message: "broker is shutting down".into(),
            info: Some(ErrorInfo { code: ErrorCode::ShuttingDown as i32, ..Default::default() }),
        });
        assert!(shutting_down.is_retryable());
    }

    #[test]
    fn a_rate_quota_is_retryable_after_retry_after_a_count_quota_is_not() {
        let quota = |name: &str, retry: Option<&str>| {
            let mut info = ErrorInfo { code: ErrorCode::QuotaExceeded as i32, ..Default::default() };
            info.metadata.insert("quota".into(), name.into());
            if let Some(ms) = retry {
                info.metadata.insert("retry_after_ms".into(), ms.into());
            }
            Error::from(strata_proto::status_with_info(tonic::Code::ResourceExhausted, "over", info))
        };
        let rate = quota("produce_bytes_per_second", Some("250"));
        assert!(rate.is_retryable());
        assert_eq!(rate.kind(), ErrorKind::Retryable);
        assert_eq!(rate.retry_after(), Some(std::time::Duration::from_millis(250)));
        assert_eq!(rate.quota(), Some("produce_bytes_per_second"));
        let count = quota("max_topics", None);
        assert!(!count.is_retryable());
        assert_eq!(count.kind(), ErrorKind::Fatal);
        assert_eq!(count.retry_after(), None);
        let stored = quota("max_stored_bytes", None);
        assert!(!stored.is_retryable());
    }

    #[test]
    fn kinds_tell_fatal_retryable_and_rebalance_apart() {
        assert_eq!(Error::from(tonic::Status::unavailable("down")).kind(), ErrorKind::Retryable);
        assert_eq!(Error::InvalidArgument("bad".into()).kind(), ErrorKind::Fatal);
        assert_eq!(Error::NotGroupMember { group: "g".into() }.kind(), ErrorKind::RebalanceInProgress);
        let fenced = strata_proto::status_with_info(
            tonic::Code::FailedPrecondition,
            "generation 3 is not current",
            ErrorInfo { code: ErrorCode::FencedMember as i32, ..Default::default() },
        );
        assert_eq!(Error::from(fenced).kind(), ErrorKind::RebalanceInProgress);
    }

    #[test]
    fn multi_line_messages_print_on_one_line() {
        let err = Error::from(tonic::Status::unavailable("line one\n  line two"));
        assert_eq!(err.to_string(), "line one line two");
    }
}
