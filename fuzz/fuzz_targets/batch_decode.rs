//! Fuzzes the record batch decoder: validation (what the broker runs on every
//! produce) and iteration plus record decoding (what consumers run on every
//! fetch) must never panic, and must agree: a batch that validates decodes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use strata_proto::batch::{BatchIter, Limits, validate};

fuzz_target!(|data: &[u8]| {
    let validated = validate(data, Limits::new(1 << 20));
    let mut batches = BatchIter::new(Bytes::copy_from_slice(data));
    let first = batches.next();
    if let Ok(header) = validated {
        let batch = first.expect("a valid batch is found").expect("and parses");
        let records = batch.records().expect("a valid batch decodes");
        assert_eq!(records.len() as u32, header.record_count);
    } else if let Some(Ok(batch)) = first {
        let _ = batch.records();
    }
    for b in batches.flatten() {
        let _ = b.records();
    }
});
