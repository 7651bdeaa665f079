//! The gRPC codec of every Strata service: prost encoding, with decode
//! failures reported as what they are.
//!
//! tonic's stock prost codec answers a message that is not valid protobuf
//! with `INTERNAL` and the decoder's text. On a server that blames itself
//! for the client's bytes; Strata answers `INVALID_ARGUMENT` with the stable
//! code `INVALID_REQUEST` and the message type, so clients can tell a bad
//! request from a server fault (which stays `INTERNAL`). The generated
//! clients use the same codec: a malformed answer from a server is reported
//! the same way, naming the type that could not be read.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

use crate::v1::{ErrorCode, ErrorInfo};

/// [`ProstCodec`]'s encoding with [`StrataDecoder`]'s decoding.
#[derive(Debug, Clone, Default)]
pub struct StrataCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Codec for StrataCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrataDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrataDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`; bytes that are not a valid `U` are `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Default)]
pub struct StrataDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for StrataDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| malformed::<U>(&e))
    }
}

/// Decodes one message as the codec does: a `U`, or `INVALID_ARGUMENT`
/// naming the type (used by the fuzz targets and tests).
pub fn decode<U: Message + Default>(bytes: &[u8]) -> Result<U, Status> {
    U::decode(bytes).map_err(|e| malformed::<U>(&e))
}

/// The status of a message of type `U` that failed to decode.
fn malformed<U>(error: &prost::DecodeError) -> Status {
    let full = std::any::type_name::<U>();
    let name = full.rsplit("::").next().unwrap_or(full);
    let info = ErrorInfo { code: ErrorCode::InvalidRequest as i32, resource: name.to_owned(), ..Default::default() };
    crate::status_with_info(
        tonic::Code::InvalidArgument,
        format!("malformed message: the bytes are not a valid {name} ({})", reason(error)),
        info,
    )
}

/// The reason prost gives, without its "failed to decode Protobuf message"
/// prefix.
fn reason(error: &prost::DecodeError) -> String {
    let text = error.to_string();
    text.strip_prefix("failed to decode Protobuf message: ").unwrap_or(&text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::ProduceRequest;

    #[test]
    fn invalid_bytes_are_the_request_s_fault() {
        // Field 1 (tenant, a string) with wire type 0 (varint): invalid.
        let err = ProduceRequest::decode(&[0x08, 0x01][..]).unwrap_err();
        let status = malformed::<ProduceRequest>(&err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("ProduceRequest"), "{}", status.message());
        assert!(!status.message().contains("failed to decode Protobuf"), "{}", status.message());
        assert_eq!(crate::error_code(&status), ErrorCode::InvalidRequest);
    }
}
