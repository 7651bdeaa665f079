//! The one place where domain errors become gRPC statuses: a standard code,
//! the error's own message, and an `ErrorInfo` detail with a stable code.

use strata_proto::batch::BatchError;
use strata_proto::v1::{ErrorCode, ErrorInfo, ItemError};
use tonic::{Code, Status};

use crate::catalog::CatalogError;
use crate::error::BrokerError;
use crate::log::{LogError, SequenceError};
use crate::producer_ids::ProducerIdError;

fn classify(e: &BrokerError) -> (Code, ErrorCode, String) {
    use ErrorCode as E;
    match e {
        BrokerError::InvalidName(n) => (Code::InvalidArgument, E::InvalidName, n.name.clone()),
        BrokerError::Catalog(c) => match c {
            CatalogError::UnknownTenant(t) => (Code::NotFound, E::UnknownTenant, t.clone()),
            CatalogError::TenantExists(t) => (Code::AlreadyExists, E::TenantExists, t.clone()),
            CatalogError::TenantNotEmpty { name, .. } => (Code::FailedPrecondition, E::TenantNotEmpty, name.clone()),
            CatalogError::DefaultTenant => (Code::FailedPrecondition, E::InvalidRequest, "default".into()),
            CatalogError::UnknownTopic { tenant, name } => {
                (Code::NotFound, E::UnknownTopic, format!("{tenant}/{name}"))
            }
            CatalogError::TopicExists { tenant, name } => {
                (Code::AlreadyExists, E::TopicExists, format!("{tenant}/{name}"))
            }
            CatalogError::PartitionsCannotShrink { tenant, name, .. } => {
                (Code::FailedPrecondition, E::PartitionsCannotShrink, format!("{tenant}/{name}"))
            }
            CatalogError::ReplicationFactorTooLarge { tenant, name, .. } => {
                (Code::FailedPrecondition, E::InvalidReplicationFactor, format!("{tenant}/{name}"))
            }
            CatalogError::UnknownQueue { tenant, name } => {
                (Code::NotFound, E::UnknownQueue, format!("{tenant}/{name}"))
            }
            CatalogError::QueueExists { tenant, name } => {
                (Code::AlreadyExists, E::QueueExists, format!("{tenant}/{name}"))
            }
            CatalogError::UnknownDeadLetterQueue { tenant, name } => {
                (Code::InvalidArgument, E::InvalidConfig, format!("{tenant}/{name}"))
            }
            CatalogError::DeadLetterLoop { tenant, name, .. } => {
                (Code::InvalidArgument, E::InvalidConfig, format!("{tenant}/{name}"))
            }
            CatalogError::FifoImmutable { tenant, name } => {
                (Code::InvalidArgument, E::InvalidConfig, format!("{tenant}/{name}"))
            }
            CatalogError::QueueInUse { tenant, name, .. } => {
                (Code::FailedPrecondition, E::QueueInUse, format!("{tenant}/{name}"))
            }
            CatalogError::BindingExists { tenant, queue, .. } => {
                (Code::AlreadyExists, E::InvalidRequest, format!("{tenant}/{queue}"))
            }
            CatalogError::UnknownBinding { tenant, queue, .. } => {
                (Code::NotFound, E::UnknownBinding, format!("{tenant}/{queue}"))
            }
            CatalogError::UnknownPrincipal { tenant, name } => {
                (Code::NotFound, E::UnknownPrincipal, format!("{tenant}/{name}"))
            }
            CatalogError::PrincipalExists { name } => (Code::AlreadyExists, E::PrincipalExists, name.clone()),
            CatalogError::UnknownToken { principal, id } => {
                (Code::NotFound, E::UnknownToken, format!("{principal}/{id}"))
            }
            CatalogError::UnknownAcl { tenant, binding } => {
                (Code::NotFound, E::UnknownAcl, format!("{tenant}/{}", binding.principal))
            }
            CatalogError::QuotaExceeded { tenant, .. } => (Code::ResourceExhausted, E::QuotaExceeded, tenant.clone()),
        },
        BrokerError::Quota(q) => (Code::ResourceExhausted, E::QuotaExceeded, q.tenant.clone()),
        BrokerError::UnknownPartition { tenant, topic, partition, .. } => {
            (Code::NotFound, E::UnknownPartition, format!("{tenant}/{topic}/{partition}"))
        }
        BrokerError::InvalidConfig(_) | BrokerError::InvalidQueueConfig(_) => {
            (Code::InvalidArgument, E::InvalidConfig, String::new())
        }
        BrokerError::InvalidRequest(_) => (Code::InvalidArgument, E::InvalidRequest, String::new()),
        BrokerError::Batch { resource, source } => match source {
            BatchError::RecordTooLarge { .. } => (Code::InvalidArgument, E::RecordTooLarge, resource.clone()),
            _ => (Code::InvalidArgument, E::CorruptBatch, resource.clone()),
        },
        BrokerError::BatchTooLarge { resource, .. } | BrokerError::RequestTooLarge { resource, .. } => {
            (Code::ResourceExhausted, E::BatchTooLarge, resource.clone())
        }
        BrokerError::Log { resource, source } => match source {
            LogError::OffsetOutOfRange { .. } => (Code::OutOfRange, E::OffsetOutOfRange, resource.clone()),
            // Disk full, or out of file descriptors (EMFILE/ENFILE):
            // a resource ran out, nothing is wrong with the data.
            LogError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::StorageFull
                    || matches!(source.raw_os_error(), Some(23 | 24)) =>
            {
                (Code::ResourceExhausted, E::ResourceExhausted, resource.clone())
            }
            LogError::Closed => (Code::Unavailable, E::ShuttingDown, resource.clone()),
            LogError::Corrupt { .. } => (Code::DataLoss, E::Storage, resource.clone()),
            LogError::Io { .. } | LogError::Poisoned(_) => (Code::Unavailable, E::Storage, resource.clone()),
            LogError::Sequence(SequenceError::Fenced { .. }) => {
                (Code::FailedPrecondition, E::ProducerFenced, resource.clone())
            }
            LogError::Sequence(SequenceError::OutOfOrder { .. }) => {
                (Code::FailedPrecondition, E::OutOfOrderSequence, resource.clone())
            }
        },
        BrokerError::Producer { resource, source } => match source {
            ProducerIdError::Unknown { .. } => (Code::FailedPrecondition, E::UnknownProducerId, resource.clone()),
            ProducerIdError::Fenced { .. } => (Code::FailedPrecondition, E::ProducerFenced, resource.clone()),
            ProducerIdError::EpochNotIssued { .. } => {
                (Code::FailedPrecondition, E::InvalidProducerEpoch, resource.clone())
            }
        },
        BrokerError::CatalogStorage(_) => (Code::Unavailable, E::Storage, String::new()),
        BrokerError::OffsetStorage { group, .. } => (Code::Unavailable, E::Storage, group.clone()),
        BrokerError::ColdTier { resource, .. } => (Code::Unavailable, E::Storage, resource.clone()),
        // A task that panicked or was cancelled: the server's fault, not the request's.
        BrokerError::TaskFailed { .. } | BrokerError::Internal(_) => (Code::Internal, E::Unspecified, String::new()),
        BrokerError::ShuttingDown => (Code::Unavailable, E::ShuttingDown, String::new()),
        BrokerError::LimitExceeded { limit_name, .. } => {
            (Code::ResourceExhausted, E::LimitExceeded, (*limit_name).to_owned())
        }
        BrokerError::UnknownGroup { tenant, group } => (Code::NotFound, E::UnknownGroup, format!("{tenant}/{group}")),
        BrokerError::UnknownMember { member, .. } => (Code::FailedPrecondition, E::UnknownMember, member.clone()),
        BrokerError::FencedMember { member, .. } => (Code::FailedPrecondition, E::FencedMember, member.clone()),
        BrokerError::GroupNotEmpty { group, .. } => (Code::FailedPrecondition, E::GroupNotEmpty, group.clone()),
        BrokerError::ColdTierBacklog { resource, .. } => {
            (Code::ResourceExhausted, E::ResourceExhausted, resource.clone())
        }
        BrokerError::OffsetBeyondEnd { resource, .. } | BrokerError::OffsetOutOfRange { resource, .. } => {
            (Code::OutOfRange, E::OffsetOutOfRange, resource.clone())
        }
        BrokerError::QueueFull { queue, .. } => (Code::ResourceExhausted, E::ResourceExhausted, queue.clone()),
        BrokerError::QueueNotEmpty { queue, .. } => (Code::FailedPrecondition, E::QueueNotEmpty, queue.clone()),
        BrokerError::StaleReceipt { queue, .. } => (Code::FailedPrecondition, E::StaleReceipt, queue.clone()),
        BrokerError::NoMetadataQuorum { .. } => (Code::Unavailable, E::NoMetadataQuorum, String::new()),
        BrokerError::NoPartitionQuorum { resource, .. } => (Code::Unavailable, E::NoPartitionQuorum, resource.clone()),
        // Not a transient failure of this broker: the request belongs
        // elsewhere (the details say where), so a precondition, not UNAVAILABLE.
        BrokerError::NotLeader { resource, .. } => (Code::FailedPrecondition, E::NotLeader, resource.clone()),
        BrokerError::NotClustered => (Code::FailedPrecondition, E::InvalidRequest, String::new()),
        BrokerError::UnknownBroker { id } => (Code::NotFound, E::UnknownBroker, format!("broker/{id}")),
        BrokerError::LastBroker { id } => (Code::FailedPrecondition, E::LastBroker, format!("broker/{id}")),
    }
}

/// The gRPC status for a domain error.
pub(crate) fn to_status(e: BrokerError) -> Status {
    let (code, error_code, resource) = classify(&e);
    if matches!(code, Code::Unavailable | Code::DataLoss) || error_code == ErrorCode::Storage {
        tracing::warn!(error = %e, "request failed");
    }
    let message = client_message(&e);
    let mut info = ErrorInfo { code: error_code as i32, resource, ..Default::default() };
    match &e {
        BrokerError::Batch { source: BatchError::RecordTooLarge { limit, .. }, .. } => {
            info.metadata.insert("limit".into(), limit.to_string());
        }
        BrokerError::BatchTooLarge { limit, .. } => {
            info.metadata.insert("limit".into(), limit.to_string());
            info.metadata.insert("limit_name".into(), "limits.max_batch_bytes".into());
        }
        BrokerError::RequestTooLarge { limit, .. } => {
            info.metadata.insert("limit".into(), limit.to_string());
            info.metadata.insert("limit_name".into(), "limits.max_batch_bytes + 1MiB".into());
        }
        BrokerError::LimitExceeded { limit_name, limit, .. } => {
            info.metadata.insert("limit".into(), limit.to_string());
            info.metadata.insert("limit_name".into(), (*limit_name).into());
        }
        BrokerError::ColdTierBacklog { waiting, budget, .. } => {
            info.metadata.insert("waiting_bytes".into(), waiting.to_string());
            info.metadata.insert("limit".into(), budget.to_string());
        }
        BrokerError::Log { source: LogError::Sequence(SequenceError::OutOfOrder { expected, .. }), .. } => {
            info.metadata.insert("expected_sequence".into(), expected.to_string());
        }
        BrokerError::Log { source: LogError::Sequence(SequenceError::Fenced { current, .. }), .. } => {
            info.metadata.insert("current_epoch".into(), current.to_string());
        }
        BrokerError::Producer {
            source: ProducerIdError::Fenced { current, .. } | ProducerIdError::EpochNotIssued { current, .. },
            ..
        } => {
            info.metadata.insert("current_epoch".into(), current.to_string());
        }
        BrokerError::NotLeader { owner, address, .. } => {
            if let (Some(id), Some(a)) = (owner, address) {
                info.metadata.insert("owner_id".into(), id.to_string());
                info.metadata.insert("owner_address".into(), a.clone());
            }
        }
        BrokerError::Log { source: LogError::OffsetOutOfRange { start, end, .. }, .. } => {
            info.metadata.insert("log_start_offset".into(), start.to_string());
            info.metadata.insert("high_watermark".into(), end.to_string());
        }
        BrokerError::Catalog(CatalogError::QuotaExceeded { quota, limit, usage, .. }) => {
            info.metadata.insert("quota".into(), quota.clone());
            info.metadata.insert("limit".into(), limit.to_string());
            info.metadata.insert("usage".into(), usage.to_string());
        }
        BrokerError::Quota(q) => quota_metadata(&mut info, q),
        _ => {}
    }
    strata_proto::status_with_info(code, message, info)
}

/// The details of a quota refusal: which quota, its limit and the usage,
/// and for a rate when to retry.
fn quota_metadata(info: &mut ErrorInfo, q: &crate::quota::QuotaExceeded) {
    info.metadata.insert("quota".into(), q.quota.name().into());
    info.metadata.insert("limit".into(), q.limit.to_string());
    info.metadata.insert("usage".into(), q.usage.to_string());
    if let Some(after) = q.retry_after {
        info.metadata.insert("retry_after_ms".into(), after.as_millis().max(1).to_string());
    }
}

/// The status of a quota refusal (for the gRPC layer's own checks).
pub(crate) fn quota_status(q: crate::quota::QuotaExceeded) -> Status {
    to_status(BrokerError::Quota(q))
}

/// The message a client reads. Storage failures name the resource and the
/// operating system's reason but never a server path (the broker's log has
/// the whole error, logged by [`to_status`]).
fn client_message(e: &BrokerError) -> String {
    const SEE_LOG: &str = "the broker's log has the details";
    match e {
        BrokerError::Log { resource, source } => match source {
            LogError::Io { source, .. } => format!("{resource}: storage error: {source} ({SEE_LOG})"),
            LogError::Corrupt { position, reason, .. } => {
                format!("{resource}: corrupt data at byte {position} of a segment: {reason} ({SEE_LOG})")
            }
            LogError::Poisoned(_) => {
                format!("{resource}: the partition stopped accepting writes after a storage failure ({SEE_LOG})")
            }
            _ => e.to_string(),
        },
        BrokerError::CatalogStorage(_) => format!("the broker could not store its catalog ({SEE_LOG})"),
        BrokerError::OffsetStorage { group, action, source } => {
            format!("consumer group {group}: {action} offsets failed: {} ({SEE_LOG})", source.kind())
        }
        _ => e.to_string(),
    }
}

/// The same error as a per-item error inside a streaming response.
pub(crate) fn to_item_error(e: BrokerError) -> ItemError {
    status_to_item_error(&to_status(e))
}

/// A status (a domain error's, or a refusal) as a per-item error.
pub(crate) fn status_to_item_error(status: &Status) -> ItemError {
    ItemError {
        status_code: status.code() as i32,
        message: status.message().to_owned(),
        info: strata_proto::error_info(status),
    }
}

/// Shorthand for request validation failures in the transport layer.
pub(crate) fn invalid(message: impl Into<String>) -> Status {
    to_status(BrokerError::InvalidRequest(message.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_failures_never_show_server_paths() {
        let path = std::path::PathBuf::from("/srv/secret-data/default/t-1/00000000000000000000.log");
        let errors = [
            BrokerError::Log {
                resource: "default/t/0".into(),
                source: LogError::Io { path: path.clone(), source: std::io::Error::from_raw_os_error(5) },
            },
            BrokerError::Log {
                resource: "default/t/0".into(),
                source: LogError::Corrupt { path: path.clone(), position: 7, reason: "bad crc".into() },
            },
            BrokerError::Log {
                resource: "default/t/0".into(),
                source: LogError::Poisoned(format!("fsync of {} failed", path.display())),
            },
        ];
        for e in errors {
            let status = to_status(e);
            assert!(!status.message().contains("/srv"), "{}", status.message());
            assert!(status.message().contains("default/t/0"), "{}", status.message());
            assert_eq!(strata_proto::error_code(&status), ErrorCode::Storage);
        }
        let emfile = to_status(BrokerError::Log {
            resource: "default/t/0".into(),
            source: LogError::Io { path, source: std::io::Error::from_raw_os_error(24) },
        });
        assert!(emfile.message().contains("Too many open files"), "{}", emfile.message());
        assert!(!emfile.message().contains("/srv"), "{}", emfile.message());
        assert_eq!(emfile.code(), Code::ResourceExhausted, "out of descriptors is a resource running out");
    }
}
