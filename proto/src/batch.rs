//! The Strata record batch format (version 1): how producers encode records,
//! how the broker validates and stamps them, and how consumers decode them.
//!
//! One format end to end: a producer encodes a batch once, the broker checks
//! it with [`validate`], writes the base offset into the header with
//! [`set_base_offset`] (outside the CRC, so no re-encoding) and stores the
//! bytes; fetches return them unchanged and consumers decode them with
//! [`BatchIter`] and [`RawBatch::records`].
//!
//! Layout (all integers little-endian):
//!
//! | offset | size | field | covered by CRC |
//! |---|---|---|---|
//! | 0  | 8 | base offset (set by the broker) | no |
//! | 8  | 4 | batch length: bytes after this field | no |
//! | 12 | 4 | leader epoch (set by the broker) | no |
//! | 16 | 1 | magic = 1 | no |
//! | 17 | 4 | CRC32C of bytes 21.. | no |
//! | 21 | 2 | attributes: bits 0-2 compression (0 none, 1 lz4); bit 3 [`TRACED`]; others zero | yes |
//! | 23 | 4 | last offset delta (record count - 1) | yes |
//! | 27 | 8 | base timestamp, ms | yes |
//! | 35 | 8 | max timestamp, ms | yes |
//! | 43 | 8 | producer id (-1: none) | yes |
//! | 51 | 2 | producer epoch (-1: none) | yes |
//! | 53 | 4 | base sequence (-1: none) | yes |
//! | 57 | 4 | record count | yes |
//! | 61 | … | records, compressed as a whole when the codec is not none | yes |
//!
//! A record: varint length of the rest, attributes (u8: bit 0
//! [`RECORD_TRACED`], others zero), zigzag varint
//! timestamp delta, varint offset delta, zigzag varint key length (-1: null)
//! and key, zigzag varint value length (-1: null) and value, varint header
//! count, then per header a varint key length and UTF-8 key and a zigzag
//! varint value length (-1: null) and value.
//!
//! Trace flags: a producer sets [`RECORD_TRACED`] on a record whose headers
//! carry a *sampled* W3C trace context, and [`TRACED`] on a batch holding
//! such a record, so the broker reads headers (to record its spans) only
//! where there is something to trace and never decodes the other records.
//! The flags are hints for tracing only; nothing else depends on them.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};

/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 61;
/// Bytes before the batch-length field ends; `total = LENGTH_PREFIX + batch_len`.
pub const LENGTH_PREFIX: usize = 12;
/// The only batch format version.
pub const MAGIC: u8 = 1;
const CRC_START: usize = 21;
/// The smallest encoded record: length, attributes, timestamp delta, offset
/// delta, null key, null value, header count (one byte each).
const MIN_RECORD_BYTES: usize = 7;
const COMPRESSION_MASK: u16 = 0b111;
/// Batch attribute: at least one record has [`RECORD_TRACED`] set.
pub const TRACED: u16 = 0b1000;
/// Record attribute: the record's headers carry a sampled trace context.
pub const RECORD_TRACED: u8 = 0b1;
/// Upper bound on a batch's decompressed record bytes, a guard against
/// decompression bombs independent of configured limits.
pub const MAX_UNCOMPRESSED_BYTES: usize = 256 * 1024 * 1024;

/// How the records of a batch are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Lz4,
}

impl Compression {
    fn from_attributes(attributes: u16) -> Result<Self, BatchError> {
        match attributes & COMPRESSION_MASK {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Lz4),
            other => Err(BatchError::UnknownCompression(other)),
        }
    }

    fn bits(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
        }
    }
}

/// Why a batch was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch is truncated: needs {needed} bytes, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("batch length field says {declared} bytes but the request holds {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("unsupported batch format version (magic byte {0}, expected {MAGIC})")]
    BadMagic(u8),
    #[error("batch CRC32C mismatch: header says {stored:#010x}, content gives {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unknown compression codec {0}")]
    UnknownCompression(u16),
    #[error("reserved attribute bits are set ({0:#06x})")]
    ReservedAttributes(u16),
    #[error("batch holds no records")]
    Empty,
    #[error("batch header declares {declared} records but last offset delta is {last_delta}")]
    InconsistentCount { declared: u32, last_delta: u32 },
    #[error("batch declares {declared} records but contains {found}")]
    CountMismatch { declared: u32, found: u32 },
    #[error("record {index} is malformed: {reason}")]
    MalformedRecord { index: u32, reason: &'static str },
    #[error("record {index} is {size} bytes, over the limit of {limit} bytes")]
    RecordTooLarge { index: u32, size: usize, limit: usize },
    #[error("batch max timestamp {declared} disagrees with its records (max {actual})")]
    TimestampMismatch { declared: i64, actual: i64 },
    #[error("lz4 decompression failed: {0}")]
    Decompression(String),
    #[error("decompressed size {size} exceeds the {limit}-byte limit")]
    DecompressedTooLarge { size: usize, limit: usize },
}

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub batch_len: u32,
    pub leader_epoch: u32,
    pub magic: u8,
    pub crc: u32,
    pub attributes: u16,
    pub last_offset_delta: u32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: u32,
}

impl BatchHeader {
    /// Parses the fixed header at the start of `buf` without checking the CRC.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated { needed: HEADER_LEN, available: buf.len() });
        }
        let mut b = buf;
        let base_offset = b.get_u64_le();
        let batch_len = b.get_u32_le();
        let leader_epoch = b.get_u32_le();
        let magic = b.get_u8();
        if magic != MAGIC {
            return Err(BatchError::BadMagic(magic));
        }
        let header = BatchHeader {
            base_offset,
            batch_len,
            leader_epoch,
            magic,
            crc: b.get_u32_le(),
            attributes: b.get_u16_le(),
            last_offset_delta: b.get_u32_le(),
            base_timestamp: b.get_i64_le(),
            max_timestamp: b.get_i64_le(),
            producer_id: b.get_i64_le(),
            producer_epoch: b.get_i16_le(),
            base_sequence: b.get_i32_le(),
            record_count: b.get_u32_le(),
        };
        if (batch_len as usize) < HEADER_LEN - LENGTH_PREFIX {
            return Err(BatchError::LengthMismatch { declared: batch_len as usize + LENGTH_PREFIX, actual: buf.len() });
        }
        Ok(header)
    }

    /// Total size of the batch in bytes, header included.
    pub fn total_len(&self) -> usize {
        LENGTH_PREFIX + self.batch_len as usize
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.last_offset_delta)
    }

    /// Offset right after the last record.
    pub fn next_offset(&self) -> u64 {
        self.last_offset() + 1
    }

    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_attributes(self.attributes)
    }

    /// Whether a record of the batch carries a sampled trace context.
    pub fn is_traced(&self) -> bool {
        self.attributes & TRACED != 0
    }

    /// Whether the batch carries idempotent-producer fields.
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }
}

/// Limits applied by [`validate`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest encoded record (key, value, headers and framing) accepted.
    pub max_record_bytes: usize,
    /// Largest decompressed record area of a compressed batch: bounds the
    /// memory one small compressed request can make the broker allocate.
    pub max_uncompressed_bytes: usize,
}

impl Limits {
    /// Default decompressed-size bound.
    pub const DEFAULT_MAX_UNCOMPRESSED: usize = 64 * 1024 * 1024;

    pub const fn new(max_record_bytes: usize) -> Limits {
        Limits { max_record_bytes, max_uncompressed_bytes: Self::DEFAULT_MAX_UNCOMPRESSED }
    }
}

/// Fully validates that `buf` is exactly one well-formed batch: length, magic,
/// CRC, attributes, record framing, count and size limits, timestamps.
///
/// Never panics, whatever the input.
pub fn validate(buf: &[u8], limits: Limits) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf)?;
    if header.total_len() != buf.len() {
        return Err(BatchError::LengthMismatch { declared: header.total_len(), actual: buf.len() });
    }
    check_crc(buf, &header)?;
    let compression = header.compression()?;
    if header.attributes & !(COMPRESSION_MASK | TRACED) != 0 {
        return Err(BatchError::ReservedAttributes(header.attributes));
    }
    if header.record_count == 0 {
        return Err(BatchError::Empty);
    }
    if header.last_offset_delta != header.record_count - 1 {
        return Err(BatchError::InconsistentCount {
            declared: header.record_count,
            last_delta: header.last_offset_delta,
        });
    }
    let payload = decompress(compression, &buf[HEADER_LEN..], limits.max_uncompressed_bytes)?;
    let mut reader = RecordReader::new(&header, payload.as_ref());
    reader.collect_headers = false;
    let mut max_ts = i64::MIN;
    let mut index = 0u32;
    while let Some(span) = reader.next_span()? {
        if span.len > limits.max_record_bytes {
            return Err(BatchError::RecordTooLarge { index, size: span.len, limit: limits.max_record_bytes });
        }
        max_ts = max_ts.max(span.timestamp);
        index += 1;
    }
    if max_ts != header.max_timestamp {
        return Err(BatchError::TimestampMismatch { declared: header.max_timestamp, actual: max_ts });
    }
    Ok(header)
}

fn check_crc(buf: &[u8], header: &BatchHeader) -> Result<(), BatchError> {
    let computed = crc32c::crc32c(&buf[CRC_START..]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch { stored: header.crc, computed });
    }
    Ok(())
}

/// Writes the base offset into a batch's header (outside the CRC).
pub fn set_base_offset(buf: &mut [u8], base_offset: u64) {
    buf[0..8].copy_from_slice(&base_offset.to_le_bytes());
}

/// Returns a copy of an encoded batch with another base sequence and its
/// CRC32C recomputed (the sequence is covered by the CRC). Idempotent
/// producers use it to renumber a batch that was encoded before its
/// sequence was known. A buffer too short to be a batch is returned
/// unchanged (the broker refuses it).
pub fn with_base_sequence(batch: &[u8], base_sequence: i32) -> Bytes {
    const BASE_SEQUENCE_AT: usize = 53;
    if batch.len() < HEADER_LEN {
        return Bytes::copy_from_slice(batch);
    }
    let mut buf = batch.to_vec();
    buf[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&base_sequence.to_le_bytes());
    let crc = crc32c::crc32c(&buf[CRC_START..]);
    buf[17..21].copy_from_slice(&crc.to_le_bytes());
    Bytes::from(buf)
}

/// Writes the leader epoch into a batch's header (outside the CRC).
pub fn set_leader_epoch(buf: &mut [u8], epoch: u32) {
    buf[12..16].copy_from_slice(&epoch.to_le_bytes());
}

fn decompress(compression: Compression, data: &[u8], limit: usize) -> Result<std::borrow::Cow<'_, [u8]>, BatchError> {
    match compression {
        Compression::None => Ok(std::borrow::Cow::Borrowed(data)),
        Compression::Lz4 => {
            if data.len() < 4 {
                return Err(BatchError::Decompression("missing size prefix".into()));
            }
            let size = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
            if size > limit.min(MAX_UNCOMPRESSED_BYTES) {
                return Err(BatchError::DecompressedTooLarge { size, limit: limit.min(MAX_UNCOMPRESSED_BYTES) });
            }
            lz4_flex::block::decompress(&data[4..], size)
                .map(std::borrow::Cow::Owned)
                .map_err(|e| BatchError::Decompression(e.to_string()))
        }
    }
}

/// One header of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: String,
    pub value: Option<Bytes>,
}

/// A decoded record with its absolute offset and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

impl Record {
    /// The first header with this key.
    pub fn header(&self, key: &str) -> Option<&Bytes> {
        self.headers.iter().find(|h| h.key == key).and_then(|h| h.value.as_ref())
    }
}

/// Position of one record inside the (decompressed) record area.
struct RecordSpan {
    /// Encoded size of the record body.
    len: usize,
    timestamp: i64,
    key: Option<(usize, usize)>,
    value: Option<(usize, usize)>,
    headers: Vec<(String, Option<(usize, usize)>)>,
}

/// Walks the records of one batch, checking framing as it goes.
struct RecordReader<'a> {
    data: &'a [u8],
    pos: usize,
    index: u32,
    count: u32,
    base_timestamp: i64,
    /// Collect headers (`false`: only check them, as `validate` does).
    collect_headers: bool,
}

impl<'a> RecordReader<'a> {
    fn new(header: &BatchHeader, data: &'a [u8]) -> Self {
        RecordReader {
            data,
            pos: 0,
            index: 0,
            count: header.record_count,
            base_timestamp: header.base_timestamp,
            collect_headers: true,
        }
    }

    fn malformed(&self, reason: &'static str) -> BatchError {
        BatchError::MalformedRecord { index: self.index, reason }
    }

    /// Skips the next record if its attributes don't have `wanted` set,
    /// reading only its length and attributes. `Ok(true)`: skipped.
    fn skip_unless(&mut self, wanted: u8) -> Result<bool, BatchError> {
        if self.index == self.count || self.pos >= self.data.len() {
            return Ok(false);
        }
        let mut cur = &self.data[self.pos..];
        let before = cur.len();
        let len = decode_varint(&mut cur).map_err(|_| self.malformed("bad length varint"))?;
        let body_start = self.pos + (before - cur.len());
        let body_end = usize::try_from(len)
            .ok()
            .and_then(|len| body_start.checked_add(len))
            .filter(|end| *end <= self.data.len() && *end > body_start)
            .ok_or_else(|| self.malformed("length runs past the end of the batch"))?;
        if self.data[body_start] & wanted != 0 {
            return Ok(false);
        }
        self.pos = body_end;
        self.index += 1;
        Ok(true)
    }

    fn next_span(&mut self) -> Result<Option<RecordSpan>, BatchError> {
        if self.index == self.count {
            if self.pos != self.data.len() {
                return Err(BatchError::CountMismatch { declared: self.count, found: self.count + 1 });
            }
            return Ok(None);
        }
        if self.pos == self.data.len() {
            return Err(BatchError::CountMismatch { declared: self.count, found: self.index });
        }
        let mut cur = &self.data[self.pos..];
        let before = cur.len();
        let len = decode_varint(&mut cur).map_err(|_| self.malformed("bad length varint"))?;
        let len = usize::try_from(len).map_err(|_| self.malformed("length overflows"))?;
        let body_start = self.pos + (before - cur.len());
        let body_end = body_start
            .checked_add(len)
            .filter(|end| *end <= self.data.len())
            .ok_or_else(|| self.malformed("length runs past the end of the batch"))?;
        let mut body = &self.data[body_start..body_end];
        let body_len = body.len();
        if body.is_empty() {
            return Err(self.malformed("empty record"));
        }
        let attributes = body.get_u8();
        if attributes & !RECORD_TRACED != 0 {
            return Err(self.malformed("reserved record attributes set"));
        }
        let collect = self.collect_headers;
        let ts_delta = zigzag_decode(decode_varint(&mut body).map_err(|_| self.malformed("bad timestamp delta"))?);
        let timestamp =
            self.base_timestamp.checked_add(ts_delta).ok_or_else(|| self.malformed("timestamp overflows"))?;
        let offset_delta = decode_varint(&mut body).map_err(|_| self.malformed("bad offset delta"))?;
        if offset_delta != u64::from(self.index) {
            return Err(self.malformed("offset delta out of sequence"));
        }
        let key = self.read_nullable(&mut body, body_start, body_len)?;
        let value = self.read_nullable(&mut body, body_start, body_len)?;
        let header_count = decode_varint(&mut body).map_err(|_| self.malformed("bad header count"))?;
        if header_count > body.len() as u64 {
            return Err(self.malformed("header count exceeds record size"));
        }
        let mut headers = Vec::with_capacity(if collect { header_count as usize } else { 0 });
        for _ in 0..header_count {
            let key_len = decode_varint(&mut body).map_err(|_| self.malformed("bad header key length"))?;
            let key_len = usize::try_from(key_len).map_err(|_| self.malformed("header key overflows"))?;
            if key_len > body.len() {
                return Err(self.malformed("header key runs past the record"));
            }
            let key = &body[..key_len];
            // Header keys are almost always ASCII: check that first, cheaply.
            if !key.is_ascii() && std::str::from_utf8(key).is_err() {
                return Err(self.malformed("header key is not UTF-8"));
            }
            let key = collect.then(|| String::from_utf8_lossy(key).into_owned());
            body.advance(key_len);
            let value = self.read_nullable(&mut body, body_start, body_len)?;
            if let Some(key) = key {
                headers.push((key, value));
            }
        }
        if !body.is_empty() {
            return Err(self.malformed("trailing bytes inside record"));
        }
        self.pos = body_end;
        self.index += 1;
        Ok(Some(RecordSpan { len, timestamp, key, value, headers }))
    }

    /// Reads a zigzag length (-1 = null) and returns the absolute byte range.
    fn read_nullable(
        &self,
        body: &mut &[u8],
        body_start: usize,
        body_len: usize,
    ) -> Result<Option<(usize, usize)>, BatchError> {
        let len = zigzag_decode(decode_varint(body).map_err(|_| self.malformed("bad field length"))?);
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| self.malformed("negative field length"))?;
        if len > body.len() {
            return Err(self.malformed("field runs past the record"));
        }
        let start = body_start + (body_len - body.len());
        body.advance(len);
        Ok(Some((start, start + len)))
    }
}

fn zigzag_encode(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn zigzag_decode(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// One batch inside a buffer of stored batches.
#[derive(Debug, Clone)]
pub struct RawBatch {
    pub header: BatchHeader,
    /// The whole batch, header included.
    pub bytes: Bytes,
}

impl RawBatch {
    /// Checks the CRC and decodes every record. Records share memory with the
    /// batch when it is not compressed.
    pub fn records(&self) -> Result<Vec<Record>, BatchError> {
        check_crc(&self.bytes, &self.header)?;
        self.decode(false)
    }

    /// The records whose headers carry a sampled trace context
    /// ([`RECORD_TRACED`]); none, without decoding anything, unless the batch
    /// is [`TRACED`]. For tracing only: the CRC is not checked (the broker
    /// calls this on batches it has validated, or is about to hand to a
    /// consumer that checks them).
    pub fn traced_records(&self) -> Result<Vec<Record>, BatchError> {
        if !self.header.is_traced() {
            return Ok(Vec::new());
        }
        self.decode(true)
    }

    fn decode(&self, traced_only: bool) -> Result<Vec<Record>, BatchError> {
        let compression = self.header.compression()?;
        let payload = match compression {
            Compression::None => self.bytes.slice(HEADER_LEN..),
            Compression::Lz4 => {
                Bytes::from(decompress(compression, &self.bytes[HEADER_LEN..], MAX_UNCOMPRESSED_BYTES)?.into_owned())
            }
        };
        let mut reader = RecordReader::new(&self.header, &payload);
        // The count comes from the input: never let it size an allocation
        // beyond what the payload can hold (a record takes at least 7 bytes).
        let plausible = (payload.len() / MIN_RECORD_BYTES).saturating_add(1);
        let capacity = if traced_only { 0 } else { (self.header.record_count as usize).min(plausible) };
        let mut out = Vec::with_capacity(capacity);
        let slice = |r: Option<(usize, usize)>| r.map(|(s, e)| payload.slice(s..e));
        loop {
            // Records without a sampled trace context are stepped over
            // without being decoded.
            while traced_only && reader.skip_unless(RECORD_TRACED)? {}
            let offset = self.header.base_offset + u64::from(reader.index);
            let Some(span) = reader.next_span()? else { break };
            out.push(Record {
                offset,
                timestamp_ms: span.timestamp,
                key: slice(span.key),
                value: slice(span.value),
                headers: span.headers.into_iter().map(|(key, v)| RecordHeader { key, value: slice(v) }).collect(),
            });
        }
        Ok(out)
    }
}

/// Iterates over the batches in a buffer of concatenated batches (a fetch
/// response or a segment's data). Stops with an error at the first batch whose
/// header is unreadable or that is cut short.
pub struct BatchIter {
    buf: Bytes,
    failed: bool,
}

impl BatchIter {
    pub fn new(buf: Bytes) -> Self {
        BatchIter { buf, failed: false }
    }
}

impl Iterator for BatchIter {
    type Item = Result<RawBatch, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() || self.failed {
            return None;
        }
        let header = match BatchHeader::parse(&self.buf) {
            Ok(h) => h,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        let total = header.total_len();
        if total > self.buf.len() {
            self.failed = true;
            return Some(Err(BatchError::Truncated { needed: total, available: self.buf.len() }));
        }
        let bytes = self.buf.split_to(total);
        Some(Ok(RawBatch { header, bytes }))
    }
}

/// A record header as [`BatchBuilder`] takes it: key and (nullable) value.
pub type HeaderRef<'a> = (&'a str, Option<&'a [u8]>);

/// Encodes records into one batch. Producers fill one per partition and send
/// it when it is big or old enough.
#[derive(Debug)]
pub struct BatchBuilder {
    compression: Compression,
    records: BytesMut,
    count: u32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    traced: bool,
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> Self {
        Self::with_capacity(compression, 0)
    }

    /// A builder whose buffer holds `capacity` bytes of batch before it
    /// grows (records are encoded after room for the header, so an
    /// uncompressed batch is finished without copying).
    pub fn with_capacity(compression: Compression, capacity: usize) -> Self {
        let mut records = BytesMut::with_capacity(capacity.max(HEADER_LEN));
        records.put_bytes(0, HEADER_LEN);
        BatchBuilder {
            traced: false,
            compression,
            records,
            count: 0,
            base_timestamp: 0,
            max_timestamp: i64::MIN,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }

    /// Marks the batch as coming from an idempotent producer.
    pub fn set_producer(&mut self, producer_id: i64, epoch: i16, base_sequence: i32) {
        self.producer_id = producer_id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
    }

    /// Number of records added so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size of the batch if it were finished now without compression.
    pub fn size(&self) -> usize {
        self.records.len()
    }

    /// Size one record would add to the batch.
    pub fn record_size(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[HeaderRef<'_>]) -> usize {
        Self::record_size_of(key, value, headers.iter().copied())
    }

    /// [`BatchBuilder::record_size`] with the headers from an iterator.
    pub fn record_size_of<'h>(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl Iterator<Item = HeaderRef<'h>>,
    ) -> usize {
        let (body, _) = Self::body_len(0, 0, key, value, headers);
        encoded_len_varint(body as u64) + body
    }

    fn body_len<'h>(
        ts_delta: i64,
        offset_delta: u32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl Iterator<Item = HeaderRef<'h>>,
    ) -> (usize, u64) {
        let nullable = |f: Option<&[u8]>| match f {
            None => 1,
            Some(b) => encoded_len_varint(zigzag_encode(b.len() as i64)) + b.len(),
        };
        let (count, header_bytes) = headers.fold((0u64, 0usize), |(n, bytes), (k, v)| {
            (n + 1, bytes + encoded_len_varint(k.len() as u64) + k.len() + nullable(v))
        });
        let len = 1
            + encoded_len_varint(zigzag_encode(ts_delta))
            + encoded_len_varint(u64::from(offset_delta))
            + nullable(key)
            + nullable(value)
            + encoded_len_varint(count)
            + header_bytes;
        (len, count)
    }

    /// Appends one record.
    pub fn push(&mut self, timestamp_ms: i64, key: Option<&[u8]>, value: Option<&[u8]>, headers: &[HeaderRef<'_>]) {
        self.push_record(timestamp_ms, key, value, headers.iter().copied(), false);
    }

    /// Appends one record; `traced` says its headers carry a sampled trace
    /// context (sets [`RECORD_TRACED`] on it and [`TRACED`] on the batch).
    pub fn push_record<'h>(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl Iterator<Item = HeaderRef<'h>> + Clone,
        traced: bool,
    ) {
        self.traced |= traced;
        if self.count == 0 {
            self.base_timestamp = timestamp_ms;
        }
        let ts_delta = timestamp_ms.wrapping_sub(self.base_timestamp);
        let (body, header_count) = Self::body_len(ts_delta, self.count, key, value, headers.clone());
        let buf = &mut self.records;
        buf.reserve(body + 10);
        encode_varint(body as u64, buf);
        buf.put_u8(if traced { RECORD_TRACED } else { 0 });
        encode_varint(zigzag_encode(ts_delta), buf);
        encode_varint(u64::from(self.count), buf);
        put_nullable(buf, key);
        put_nullable(buf, value);
        encode_varint(header_count, buf);
        for (k, v) in headers {
            encode_varint(k.len() as u64, buf);
            buf.put_slice(k.as_bytes());
            put_nullable(buf, v);
        }
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        self.count += 1;
    }

    /// Finishes the batch. Returns `None` when it holds no records.
    pub fn finish(self) -> Option<Bytes> {
        if self.count == 0 {
            return None;
        }
        let mut buf = match self.compression {
            Compression::None => self.records,
            Compression::Lz4 => {
                let records = &self.records[HEADER_LEN..];
                let compressed = lz4_flex::block::compress(records);
                let mut out = BytesMut::with_capacity(HEADER_LEN + 4 + compressed.len());
                out.put_bytes(0, HEADER_LEN);
                out.put_u32_le(records.len() as u32);
                out.put_slice(&compressed);
                out
            }
        };
        let total = buf.len();
        let mut h = &mut buf[..HEADER_LEN];
        h.put_u64_le(0);
        h.put_u32_le((total - LENGTH_PREFIX) as u32);
        h.put_u32_le(0);
        h.put_u8(MAGIC);
        h.put_u32_le(0); // CRC, filled below
        h.put_u16_le(self.compression.bits() | if self.traced { TRACED } else { 0 });
        h.put_u32_le(self.count - 1);
        h.put_i64_le(self.base_timestamp);
        h.put_i64_le(self.max_timestamp);
        h.put_i64_le(self.producer_id);
        h.put_i16_le(self.producer_epoch);
        h.put_i32_le(self.base_sequence);
        h.put_u32_le(self.count);
        let crc = crc32c::crc32c(&buf[CRC_START..]);
        buf[17..21].copy_from_slice(&crc.to_le_bytes());
        Some(buf.freeze())
    }
}

fn put_nullable(buf: &mut BytesMut, field: Option<&[u8]>) {
    match field {
        None => encode_varint(zigzag_encode(-1), buf),
        Some(b) => {
            encode_varint(zigzag_encode(b.len() as i64), buf);
            buf.put_slice(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits::new(1 << 20);

    fn sample(compression: Compression) -> Bytes {
        let mut b = BatchBuilder::new(compression);
        b.push(1000, Some(b"k1"), Some(b"hello"), &[("traceparent", Some(b"00-abc"))]);
        b.push(999, None, Some(b""), &[]);
        b.push(1005, Some(b"k3"), None, &[("h", None)]);
        b.finish().unwrap()
    }

    #[test]
    fn roundtrip_uncompressed_and_lz4() {
        for c in [Compression::None, Compression::Lz4] {
            let mut bytes = sample(c).to_vec();
            set_base_offset(&mut bytes, 42);
            let header = validate(&bytes, LIMITS).unwrap();
            assert_eq!(header.base_offset, 42);
            assert_eq!(header.record_count, 3);
            assert_eq!(header.max_timestamp, 1005);
            let batch = BatchIter::new(Bytes::from(bytes)).next().unwrap().unwrap();
            let recs = batch.records().unwrap();
            assert_eq!(recs.len(), 3);
            assert_eq!(recs[0].offset, 42);
            assert_eq!(recs[0].value.as_deref(), Some(&b"hello"[..]));
            assert_eq!(recs[0].header("traceparent").map(|b| &b[..]), Some(&b"00-abc"[..]));
            assert_eq!(recs[1].key, None);
            assert_eq!(recs[1].timestamp_ms, 999);
            assert_eq!(recs[2].value, None);
            assert_eq!(recs[2].offset, 44);
        }
    }

    #[test]
    fn only_records_marked_traced_are_decoded_for_tracing() {
        for c in [Compression::None, Compression::Lz4] {
            let mut b = BatchBuilder::new(c);
            b.push(1, None, Some(b"a"), &[("traceparent", Some(b"unsampled"))]);
            b.push_record(2, None, Some(b"b"), [("traceparent", Some(&b"sampled"[..]))].into_iter(), true);
            b.push(3, None, Some(b"c"), &[]);
            let mut bytes = b.finish().unwrap().to_vec();
            set_base_offset(&mut bytes, 10);
            let header = validate(&bytes, LIMITS).unwrap();
            assert!(header.is_traced());
            let batch = BatchIter::new(Bytes::from(bytes)).next().unwrap().unwrap();
            let traced = batch.traced_records().unwrap();
            assert_eq!(traced.len(), 1);
            assert_eq!((traced[0].offset, traced[0].value.as_deref()), (11, Some(&b"b"[..])));
            assert_eq!(traced[0].header("traceparent").map(|v| &v[..]), Some(&b"sampled"[..]));
            // Ordinary decoding is unaffected by the flags.
            assert_eq!(batch.records().unwrap().len(), 3);
        }
        let plain = sample(Compression::None);
        assert!(!validate(&plain, LIMITS).unwrap().is_traced());
        let batch = BatchIter::new(plain).next().unwrap().unwrap();
        assert!(batch.traced_records().unwrap().is_empty(), "an unflagged batch is not decoded");
    }

    #[test]
    fn reserved_record_attribute_bits_are_refused() {
        let mut b = BatchBuilder::new(Compression::None);
        b.push_record(1, None, Some(b"v"), std::iter::empty(), true);
        let mut bytes = b.finish().unwrap().to_vec();
        // The record's attribute byte follows its one-byte length.
        assert_eq!(bytes[HEADER_LEN + 1], RECORD_TRACED);
        bytes[HEADER_LEN + 1] = 0b10;
        let crc = crc32c::crc32c(&bytes[CRC_START..]);
        bytes[17..21].copy_from_slice(&crc.to_le_bytes());
        assert!(
            matches!(
                validate(&bytes, LIMITS),
                Err(BatchError::MalformedRecord { reason: "reserved record attributes set", .. })
            ),
            "{:?}",
            validate(&bytes, LIMITS)
        );
        // And batch attribute bits above TRACED.
        let mut bytes = sample(Compression::None).to_vec();
        bytes[21] |= 0b1_0000;
        let crc = crc32c::crc32c(&bytes[CRC_START..]);
        bytes[17..21].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(validate(&bytes, LIMITS), Err(BatchError::ReservedAttributes(_))));
    }

    #[test]
    fn crc_covers_content_but_not_offset() {
        let mut bytes = sample(Compression::None).to_vec();
        set_base_offset(&mut bytes, u64::MAX - 10);
        set_leader_epoch(&mut bytes, 7);
        validate(&bytes, LIMITS).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        assert!(matches!(validate(&bytes, LIMITS), Err(BatchError::CrcMismatch { .. })));
    }

    #[test]
    fn renumbering_keeps_the_batch_valid() {
        let mut b = BatchBuilder::new(Compression::None);
        b.set_producer(9, 1, 0);
        b.push(1, None, Some(b"v"), &[]);
        let renumbered = with_base_sequence(&b.finish().unwrap(), 41);
        let header = validate(&renumbered, LIMITS).unwrap();
        assert_eq!((header.producer_id, header.producer_epoch, header.base_sequence), (9, 1, 41));
    }

    /// Found by `cargo fuzz`: a header claiming billions of records (with a
    /// CRC that matches) must not make the decoder allocate for them.
    #[test]
    fn a_huge_record_count_is_an_error_not_an_allocation() {
        let mut bytes = sample(Compression::None).to_vec();
        let count: u32 = 0xFFFF_FFF0;
        bytes[23..27].copy_from_slice(&(count - 1).to_le_bytes());
        bytes[57..61].copy_from_slice(&count.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[CRC_START..]);
        bytes[17..21].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(validate(&bytes, LIMITS), Err(BatchError::CountMismatch { .. })));
        let batch = BatchIter::new(Bytes::from(bytes)).next().unwrap().unwrap();
        assert!(matches!(batch.records(), Err(BatchError::CountMismatch { .. })));
    }

    #[test]
    fn decompressed_size_is_bounded() {
        let mut b = BatchBuilder::new(Compression::Lz4);
        b.push(1, None, Some(&[0u8; 100_000]), &[]);
        let bytes = b.finish().unwrap();
        assert!(bytes.len() < 10_000, "zeros compress well");
        let tight = Limits { max_uncompressed_bytes: 50_000, ..LIMITS };
        assert!(matches!(validate(&bytes, tight), Err(BatchError::DecompressedTooLarge { limit: 50_000, .. })));
        validate(&bytes, LIMITS).unwrap();
    }

    #[test]
    fn record_limit_is_enforced() {
        let mut b = BatchBuilder::new(Compression::None);
        b.push(1, None, Some(&[0u8; 2000]), &[]);
        let bytes = b.finish().unwrap();
        let err = validate(&bytes, Limits::new(1000)).unwrap_err();
        assert!(matches!(err, BatchError::RecordTooLarge { index: 0, .. }), "{err}");
    }

    #[test]
    fn truncated_and_padded_batches_are_rejected() {
        let bytes = sample(Compression::None);
        for cut in [0, 10, HEADER_LEN - 1, HEADER_LEN, bytes.len() - 1] {
            assert!(validate(&bytes[..cut], LIMITS).is_err(), "cut at {cut}");
        }
        let mut padded = bytes.to_vec();
        padded.push(0);
        assert!(matches!(validate(&padded, LIMITS), Err(BatchError::LengthMismatch { .. })));
    }

    #[test]
    fn record_size_estimate_matches_encoding() {
        let mut b = BatchBuilder::new(Compression::None);
        let before = b.size();
        b.push(0, Some(b"key"), Some(b"value"), &[("a", Some(b"b"))]);
        assert_eq!(b.size() - before, BatchBuilder::record_size(Some(b"key"), Some(b"value"), &[("a", Some(b"b"))]));
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = validate(&data, LIMITS);
            for b in BatchIter::new(Bytes::from(data)).flatten() { let _ = b.records(); }
        }

        #[test]
        fn corrupting_any_covered_byte_is_detected(flip in 0usize..1000, bit in 0u8..8) {
            let bytes = sample(Compression::Lz4);
            let idx = CRC_START + flip % (bytes.len() - CRC_START);
            let mut bad = bytes.to_vec();
            bad[idx] ^= 1 << bit;
            prop_assert!(validate(&bad, LIMITS).is_err());
        }

        #[test]
        fn builder_roundtrips(records in proptest::collection::vec(
            (any::<i32>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
             proptest::option::of(proptest::collection::vec(any::<u8>(), 0..50))), 1..30),
            lz4 in any::<bool>()) {
            let mut b = BatchBuilder::new(if lz4 { Compression::Lz4 } else { Compression::None });
            for (ts, k, v) in &records {
                b.push(i64::from(*ts), k.as_deref(), v.as_deref(), &[]);
            }
            let bytes = b.finish().unwrap();
            validate(&bytes, LIMITS).unwrap();
            let decoded = BatchIter::new(bytes).next().unwrap().unwrap().records().unwrap();
            prop_assert_eq!(decoded.len(), records.len());
            for (d, (ts, k, v)) in decoded.iter().zip(&records) {
                prop_assert_eq!(d.timestamp_ms, i64::from(*ts));
                prop_assert_eq!(d.key.as_deref(), k.as_deref());
                prop_assert_eq!(d.value.as_deref(), v.as_deref());
            }
        }
    }
}
