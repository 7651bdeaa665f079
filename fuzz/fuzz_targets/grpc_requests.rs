//! Fuzzes the gRPC request decoders the broker runs on every call (the
//! codec of `strata_proto::codec`): any bytes give a request or
//! INVALID_ARGUMENT naming the type, never a panic or another code; what
//! decodes re-encodes to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use strata_proto::codec::decode;
use strata_proto::v1::*;

fn check<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    match decode::<M>(bytes) {
        Ok(m) => assert_eq!(M::decode(m.encode_to_vec().as_slice()).ok(), Some(m)),
        Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 8 {
        0 => check::<ProduceRequest>(bytes),
        1 => check::<FetchRequest>(bytes),
        2 => check::<CreateTopicRequest>(bytes),
        3 => check::<SendRequest>(bytes),
        4 => check::<ReceiveRequest>(bytes),
        5 => check::<AckRequest>(bytes),
        6 => check::<MemberMessage>(bytes),
        _ => check::<CommitOffsetsRequest>(bytes),
    }
});
