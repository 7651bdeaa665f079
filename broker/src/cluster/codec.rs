//! The binary form of Raft entries, in the log files (`log_store.rs`) and
//! in AppendEntries messages (`network.rs`): a batch a producer sent travels
//! and is stored as its own bytes, not as base64 inside JSON.
//!
//! An entry is `[term u64][leader u64][index u64][kind u8][payload]`
//! (integers little-endian): kind 0 is a blank entry (no payload), 1 a
//! normal one (the payload in its own encoding, [`EntryData`]), 2 a
//! membership change (JSON).
//!
//! An AppendEntries message is `[0x00]['A'][header length u32][header
//! JSON: vote, previous log id, commit][entries, each [length u32][entry]]`.
//! JSON never starts with a zero byte, so a receiver tells both forms apart
//! and a broker of an older version refuses the binary form (it cannot
//! decode it) instead of misreading it.

use std::io;

use bytes::{Buf, Bytes};
use openraft::raft::AppendEntriesRequest;
use openraft::{BasicNode, CommittedLeaderId, EntryPayload, LogId, Membership, RaftTypeConfig, Vote};
use serde::{Deserialize, Serialize};

use super::NodeId;

/// The type configs the Raft log store (`log_store.rs`) serves: openraft's own entry type, ids
/// and nodes as the brokers use them.
pub(crate) trait StoreTypes:
    RaftTypeConfig<NodeId = NodeId, Node = BasicNode, Entry = openraft::Entry<Self>, D: Clone + EntryData>
{
}
impl<C: RaftTypeConfig<NodeId = NodeId, Node = BasicNode, Entry = openraft::Entry<C>, D: Clone + EntryData>> StoreTypes
    for C
{
}

/// A group's entry payload in binary form.
pub(crate) trait EntryData: Sized {
    /// Appends the encoded payload to `out`.
    fn encode_to(&self, out: &mut Vec<u8>) -> io::Result<()>;
    /// Decodes a payload (all of `bytes`); may keep slices of `bytes`.
    fn decode_from(bytes: Bytes) -> io::Result<Self>;
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

const BLANK: u8 = 0;
const NORMAL: u8 = 1;
const MEMBERSHIP: u8 = 2;
const ENTRY_HEADER_LEN: usize = 25;

/// Appends `entry` in binary form to `out`.
pub(crate) fn encode_entry<C: StoreTypes>(entry: &openraft::Entry<C>, out: &mut Vec<u8>) -> io::Result<()> {
    put_log_id(&entry.log_id, out);
    match &entry.payload {
        EntryPayload::Blank => out.push(BLANK),
        EntryPayload::Normal(d) => {
            out.push(NORMAL);
            d.encode_to(out)?;
        }
        EntryPayload::Membership(m) => {
            out.push(MEMBERSHIP);
            serde_json::to_writer(&mut *out, m).map_err(io::Error::other)?;
        }
    }
    Ok(())
}

/// Decodes an entry [`encode_entry`] wrote (all of `bytes`).
pub(crate) fn decode_entry<C: StoreTypes>(mut bytes: Bytes) -> io::Result<openraft::Entry<C>> {
    if bytes.len() < ENTRY_HEADER_LEN {
        return Err(invalid(format!("a Raft entry of {} bytes is too short", bytes.len())));
    }
    let log_id = get_log_id(&mut bytes);
    let payload = match bytes.get_u8() {
        BLANK => EntryPayload::Blank,
        NORMAL => EntryPayload::Normal(C::D::decode_from(bytes)?),
        MEMBERSHIP => {
            let m: Membership<NodeId, BasicNode> = serde_json::from_slice(&bytes).map_err(invalid)?;
            EntryPayload::Membership(m)
        }
        other => return Err(invalid(format!("unknown Raft entry kind {other}"))),
    };
    Ok(openraft::Entry { log_id, payload })
}

pub(crate) fn put_log_id(id: &LogId<NodeId>, out: &mut Vec<u8>) {
    out.extend_from_slice(&id.leader_id.term.to_le_bytes());
    out.extend_from_slice(&id.leader_id.node_id.to_le_bytes());
    out.extend_from_slice(&id.index.to_le_bytes());
}

/// Reads a log id [`put_log_id`] wrote; the caller checked 24 bytes are there.
pub(crate) fn get_log_id(bytes: &mut impl Buf) -> LogId<NodeId> {
    let term = bytes.get_u64_le();
    let node = bytes.get_u64_le();
    let index = bytes.get_u64_le();
    LogId::new(CommittedLeaderId::new(term, node), index)
}

const APPEND_MAGIC: [u8; 2] = [0, b'A'];

#[derive(Serialize, Deserialize)]
struct AppendHeader {
    vote: Vote<NodeId>,
    prev_log_id: Option<LogId<NodeId>>,
    leader_commit: Option<LogId<NodeId>>,
}

/// Encodes an AppendEntries request in binary form.
pub(crate) fn encode_append<C: StoreTypes>(req: &AppendEntriesRequest<C>) -> io::Result<Vec<u8>> {
    let header = serde_json::to_vec(&AppendHeader {
        vote: req.vote,
        prev_log_id: req.prev_log_id,
        leader_commit: req.leader_commit,
    })
    .map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(64 + header.len());
    out.extend_from_slice(&APPEND_MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    for e in &req.entries {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        encode_entry(e, &mut out)?;
        let len = u32::try_from(out.len() - at - 4).map_err(|_| invalid("a Raft entry over 4 GiB"))?;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    Ok(out)
}

/// Decodes an AppendEntries request: the binary form, or JSON (what
/// brokers before the binary form sent).
pub(crate) fn decode_append<C: StoreTypes>(mut bytes: Bytes) -> io::Result<AppendEntriesRequest<C>> {
    if !bytes.starts_with(&APPEND_MAGIC) {
        return serde_json::from_slice(&bytes).map_err(invalid);
    }
    bytes.advance(APPEND_MAGIC.len());
    let header_len = take_len(&mut bytes)?;
    let header: AppendHeader = serde_json::from_slice(&bytes.split_to(header_len)).map_err(invalid)?;
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let len = take_len(&mut bytes)?;
        entries.push(decode_entry(bytes.split_to(len))?);
    }
    Ok(AppendEntriesRequest {
        vote: header.vote,
        prev_log_id: header.prev_log_id,
        entries,
        leader_commit: header.leader_commit,
    })
}

/// Reads a u32 length and checks that many bytes follow.
fn take_len(bytes: &mut Bytes) -> io::Result<usize> {
    if bytes.len() < 4 {
        return Err(invalid("a truncated Raft message"));
    }
    let len = bytes.get_u32_le() as usize;
    if bytes.len() < len {
        return Err(invalid("a truncated Raft message"));
    }
    Ok(len)
}

/// Metadata commands stay JSON inside the binary entry (small, and
/// readable when debugging).
impl EntryData for super::MetaRequest {
    fn encode_to(&self, out: &mut Vec<u8>) -> io::Result<()> {
        serde_json::to_writer(out, self).map_err(io::Error::other)
    }

    fn decode_from(bytes: Bytes) -> io::Result<Self> {
        serde_json::from_slice(&bytes).map_err(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogCommand;
    use crate::cluster::{MetaRequest, TypeConfig};

    fn entries() -> Vec<openraft::Entry<TypeConfig>> {
        let id = |i| LogId::new(CommittedLeaderId::new(3, 7), i);
        let members = Membership::new(vec![[1, 2, 3].into()], None);
        vec![
            openraft::Entry { log_id: id(1), payload: EntryPayload::Blank },
            openraft::Entry { log_id: id(2), payload: EntryPayload::Membership(members) },
            openraft::Entry {
                log_id: id(3),
                payload: EntryPayload::Normal(MetaRequest::Catalog(CatalogCommand::CreateTenant {
                    name: "acme".into(),
                    at_ms: 5,
                    quotas: Default::default(),
                })),
            },
        ]
    }

    #[test]
    fn append_requests_round_trip_in_both_forms_and_truncation_is_an_error() {
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 7),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 0)),
            entries: entries(),
            leader_commit: None,
        };
        let binary = encode_append(&req).unwrap();
        assert_eq!(binary[0], 0);
        let back = decode_append::<TypeConfig>(Bytes::from(binary.clone())).unwrap();
        assert_eq!(format!("{back:?}"), format!("{req:?}"));
        let json = serde_json::to_vec(&req).unwrap();
        let back = decode_append::<TypeConfig>(Bytes::from(json)).unwrap();
        assert_eq!(format!("{back:?}"), format!("{req:?}"));
        for cut in [3, 10, binary.len() - 1] {
            assert!(decode_append::<TypeConfig>(Bytes::copy_from_slice(&binary[..cut])).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn short_or_unknown_entries_are_refused() {
        let mut out = Vec::new();
        encode_entry(&entries()[0], &mut out).unwrap();
        assert!(decode_entry::<TypeConfig>(Bytes::copy_from_slice(&out[..10])).is_err());
        out[24] = 9;
        assert!(decode_entry::<TypeConfig>(Bytes::from(out)).is_err());
    }
}
