//! Wire conversions shared by the services.

use strata_proto::v1 as pb;
use tonic::Status;

use super::status::invalid;
use crate::log::Durability;

pub(super) fn durability_to_pb(d: Durability) -> i32 {
    match d {
        Durability::Fsync => pb::Durability::Fsync as i32,
        Durability::None => pb::Durability::None as i32,
    }
}

/// A request's durability: `None` when unspecified (the default applies).
pub(super) fn durability_from_pb(durability: i32) -> Result<Option<Durability>, Status> {
    match pb::Durability::try_from(durability) {
        Ok(pb::Durability::Unspecified) => Ok(None),
        Ok(pb::Durability::Fsync) => Ok(Some(Durability::Fsync)),
        Ok(pb::Durability::None) => Ok(Some(Durability::None)),
        Err(_) => Err(invalid(format!("unknown durability {durability}"))),
    }
}
