//! Strata's public wire contract: the generated `strata.v1` gRPC types and
//! services, and the record batch format that travels inside them as bytes.
//!
//! Everything here is an API boundary (see ARCHITECTURE.md): changes must stay
//! wire compatible.

pub mod batch;
pub mod codec;

/// Generated code for package `strata.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("strata.v1");

    /// Encoded `FileDescriptorSet` of every Strata proto, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/strata_descriptor.bin"));
}

use prost::Message;

/// Builds a `tonic::Status` whose details carry an encoded [`v1::ErrorInfo`].
pub fn status_with_info(code: tonic::Code, message: impl Into<String>, info: v1::ErrorInfo) -> tonic::Status {
    tonic::Status::with_details(code, message, info.encode_to_vec().into())
}

/// Reads the [`v1::ErrorInfo`] a Strata broker attached to a status, if any.
pub fn error_info(status: &tonic::Status) -> Option<v1::ErrorInfo> {
    if status.details().is_empty() {
        return None;
    }
    v1::ErrorInfo::decode(status.details()).ok()
}

/// The stable error code of a status, `Unspecified` when none is attached.
pub fn error_code(status: &tonic::Status) -> v1::ErrorCode {
    error_info(status).and_then(|i| v1::ErrorCode::try_from(i.code).ok()).unwrap_or(v1::ErrorCode::Unspecified)
}
