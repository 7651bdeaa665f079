//! Fuzzes what a queue reads back from its directory: the state snapshot
//! (`state.snap`: header, CRC32C, payload), journal entries and message
//! metadata. Decoding never panics; what decodes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_broker::fuzzing::{journal_entry, message_meta, queue_snapshot};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 3 {
        0 => queue_snapshot(bytes),
        1 => journal_entry(bytes),
        _ => message_meta(bytes),
    }
});
