//! A tower layer that keeps oversized request messages away from tonic's
//! decoder, so that every request gets an answer whatever its size.
//!
//! Tonic refuses a message over its decoding limit by failing the whole
//! call: on `ProduceStream` the client saw the stream end OK with two batches
//! silently dropped. This layer parses the gRPC framing (a 1-byte compressed
//! flag and a 4-byte big-endian length before each message) of every request
//! body. Frames within the limit pass through untouched (zero-copy slices of
//! the incoming chunks). A frame over the limit is streamed past without
//! being buffered:
//! - on `Log/Produce` and `Log/ProduceStream` it is replaced by a small
//!   `ProduceRequest` holding the frame's small fields (tenant, topic,
//!   partition, request id: prost writes fields in number order, the batch is
//!   field 4 and the request id field 5, after it) plus `oversize_bytes`; the
//!   handler answers RESOURCE_EXHAUSTED with the request id and the stream
//!   goes on;
//! - on every other method the body fails with RESOURCE_EXHAUSTED naming the
//!   limit, which tonic returns as the call's status.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Frame;
use strata_proto::v1::{ErrorCode, ErrorInfo};
use tonic::body::Body;
use tonic::codegen::http;

/// Length-delimited fields longer than this are dropped from a sentinel.
const MAX_KEPT_FIELD: u64 = 4096;
/// At most this many bytes of small fields are kept for a sentinel.
const MAX_KEPT_TOTAL: usize = 64 * 1024;
/// `ProduceRequest.oversize_bytes` (log.proto).
const OVERSIZE_FIELD: u32 = 15;
/// Tonic's default decoding limit, for services that do not raise it.
pub(crate) const DEFAULT_LIMIT: usize = 4 * 1024 * 1024;

/// Per-path message limits: `large` for the Log and Queues services (whose
/// limit is raised to fit a batch), tonic's default elsewhere.
#[derive(Clone, Debug)]
pub(crate) struct OversizeLayer {
    pub large: usize,
    /// Named in the error (e.g. `limits.max_batch_bytes`).
    pub large_name: &'static str,
    pub large_reported: u64,
    /// The limit of the internal Raft service (replicated batches travel in
    /// its AppendEntries).
    pub raft: usize,
}

impl<S> tower::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;
    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize { inner, cfg: self.clone() }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Oversize<S> {
    inner: S,
    cfg: OversizeLayer,
}

impl<S> tower::Service<http::Request<Body>> for Oversize<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path();
        let mode = if path == "/strata.v1.Log/Produce" || path == "/strata.v1.Log/ProduceStream" {
            Mode::Sentinel
        } else {
            Mode::Fail
        };
        let (limit, name, reported) = if path.starts_with("/strata.v1.Log/") || path.starts_with("/strata.v1.Queues/") {
            (self.cfg.large, self.cfg.large_name, self.cfg.large_reported)
        } else if path.starts_with("/strata.v1.Raft/") {
            (self.cfg.raft, "the Raft message limit", self.cfg.raft as u64)
        } else {
            (DEFAULT_LIMIT, "the gRPC message limit", DEFAULT_LIMIT as u64)
        };
        let req = req.map(|inner| Body::new(FrameGuard::new(inner, limit, mode, name, reported)));
        self.inner.call(req)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Replace an oversized frame by a `ProduceRequest` sentinel.
    Sentinel,
    /// Fail the body with RESOURCE_EXHAUSTED.
    Fail,
}

enum State {
    /// Reading a frame prefix (`got` bytes of it so far).
    Prefix { buf: [u8; 5], got: usize },
    /// Forwarding `remaining` bytes of a frame within the limit.
    Pass { remaining: usize },
    /// Skipping an oversized frame, keeping its small fields.
    Skip { remaining: usize, size: usize, scan: Option<FieldScanner> },
    /// The body failed (Fail mode); nothing more is read.
    Failed,
}

/// A request body that never lets a frame over `limit` through.
pub(crate) struct FrameGuard<B> {
    inner: B,
    limit: usize,
    mode: Mode,
    limit_name: &'static str,
    reported_limit: u64,
    state: State,
    out: VecDeque<Bytes>,
}

impl<B> FrameGuard<B> {
    pub(crate) fn new(inner: B, limit: usize, mode: Mode, limit_name: &'static str, reported_limit: u64) -> Self {
        FrameGuard {
            inner,
            limit,
            mode,
            limit_name,
            reported_limit,
            state: State::Prefix { buf: [0; 5], got: 0 },
            out: VecDeque::new(),
        }
    }

    fn too_large(&self, size: usize) -> tonic::Status {
        let mut info =
            ErrorInfo { code: ErrorCode::BatchTooLarge as i32, resource: String::new(), ..Default::default() };
        info.metadata.insert("limit".into(), self.reported_limit.to_string());
        info.metadata.insert("limit_name".into(), self.limit_name.to_owned());
        strata_proto::status_with_info(
            tonic::Code::ResourceExhausted,
            format!(
                "request message is {size} bytes, over the {}-byte limit ({})",
                self.reported_limit, self.limit_name
            ),
            info,
        )
    }

    /// Splits one incoming chunk into frames; queues what goes on.
    fn feed(&mut self, mut chunk: Bytes) -> Result<(), tonic::Status> {
        while !chunk.is_empty() {
            match &mut self.state {
                State::Prefix { buf, got } => {
                    let n = (5 - *got).min(chunk.len());
                    buf[*got..*got + n].copy_from_slice(&chunk[..n]);
                    *got += n;
                    chunk.advance(n);
                    if *got < 5 {
                        continue;
                    }
                    let compressed = buf[0] != 0;
                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                    if len <= self.limit {
                        self.out.push_back(Bytes::copy_from_slice(&buf[..]));
                        self.state = if len == 0 {
                            State::Prefix { buf: [0; 5], got: 0 }
                        } else {
                            State::Pass { remaining: len }
                        };
                    } else if self.mode == Mode::Fail {
                        self.state = State::Failed;
                        return Err(self.too_large(len));
                    } else {
                        let scan = (!compressed).then(FieldScanner::default);
                        self.state = State::Skip { remaining: len, size: len, scan };
                    }
                }
                State::Pass { remaining } => {
                    let n = (*remaining).min(chunk.len());
                    self.out.push_back(chunk.split_to(n));
                    *remaining -= n;
                    if *remaining == 0 {
                        self.state = State::Prefix { buf: [0; 5], got: 0 };
                    }
                }
                State::Skip { remaining, size, scan } => {
                    let n = (*remaining).min(chunk.len());
                    let part = chunk.split_to(n);
                    if let Some(s) = scan {
                        s.feed(&part);
                    }
                    *remaining -= n;
                    if *remaining == 0 {
                        let kept = scan.take().map(|s| s.kept).unwrap_or_default();
                        let frame = sentinel(&kept, *size as u64);
                        self.out.push_back(frame);
                        self.state = State::Prefix { buf: [0; 5], got: 0 };
                    }
                }
                State::Failed => return Ok(()),
            }
        }
        Ok(())
    }
}

/// A framed `ProduceRequest` made of the kept fields plus `oversize_bytes`.
fn sentinel(kept: &[u8], size: u64) -> Bytes {
    let mut msg = BytesMut::with_capacity(kept.len() + 16);
    msg.put_slice(kept);
    prost::encoding::encode_key(OVERSIZE_FIELD, prost::encoding::WireType::Varint, &mut msg);
    prost::encoding::encode_varint(size.max(1), &mut msg);
    let mut frame = BytesMut::with_capacity(msg.len() + 5);
    frame.put_u8(0);
    frame.put_u32(msg.len() as u32);
    frame.put_slice(&msg);
    frame.freeze()
}

impl<B> http_body::Body for FrameGuard<B>
where
    B: http_body::Body<Data = Bytes, Error = tonic::Status> + Unpin,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(b) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if matches!(this.state, State::Failed) {
                return Poll::Ready(None);
            }
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(status) = this.feed(data) {
                            return Poll::Ready(Some(Err(status)));
                        }
                    }
                    // Trailers (gRPC requests have none, but pass them on).
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.out.is_empty() && (matches!(self.state, State::Failed) || self.inner.is_end_stream())
    }
}

/// Streams over one protobuf message, keeping the raw bytes (key and value)
/// of every field except length-delimited ones over `MAX_KEPT_FIELD`.
#[derive(Default)]
struct FieldScanner {
    kept: Vec<u8>,
    /// The field being read.
    field: Vec<u8>,
    step: Step,
    /// Set once the message is not valid protobuf: nothing more is kept.
    broken: bool,
}

#[derive(Default, Clone, Copy)]
enum Step {
    #[default]
    Key,
    /// A varint value (wire type 0).
    Varint,
    /// The length of a length-delimited value.
    Len,
    /// `n` value bytes, kept or skipped.
    Value { n: u64, keep: bool },
}

impl FieldScanner {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.broken {
            match self.step {
                Step::Key | Step::Varint | Step::Len => {
                    let b = data[0];
                    data = &data[1..];
                    self.field.push(b);
                    if b & 0x80 != 0 {
                        if self.field.len() > 20 {
                            self.broken = true;
                        }
                        continue;
                    }
                    let v = last_varint(&self.field);
                    self.step = match self.step {
                        Step::Key => match v & 7 {
                            0 => Step::Varint,
                            1 => Step::Value { n: 8, keep: true },
                            2 => Step::Len,
                            5 => Step::Value { n: 4, keep: true },
                            _ => {
                                self.broken = true;
                                Step::Key
                            }
                        },
                        Step::Varint => {
                            self.finish_field(true);
                            Step::Key
                        }
                        Step::Len if v == 0 => {
                            self.finish_field(true);
                            Step::Key
                        }
                        Step::Len => Step::Value { n: v, keep: v <= MAX_KEPT_FIELD },
                        Step::Value { .. } => unreachable!("value bytes are not varints"),
                    };
                }
                Step::Value { n, keep } => {
                    let take = (n.min(data.len() as u64)) as usize;
                    if keep {
                        self.field.extend_from_slice(&data[..take]);
                    }
                    data = &data[take..];
                    let n = n - take as u64;
                    if n == 0 {
                        self.finish_field(keep);
                        self.step = Step::Key;
                    } else {
                        self.step = Step::Value { n, keep };
                    }
                }
            }
        }
    }

    fn finish_field(&mut self, keep: bool) {
        if keep && self.kept.len() + self.field.len() <= MAX_KEPT_TOTAL {
            self.kept.extend_from_slice(&self.field);
        }
        self.field.clear();
    }
}

/// The value of the varint that ends `buf` (the key before it, if any, was
/// already complete, so the varint starts after the last byte < 0x80 that
/// precedes it).
fn last_varint(buf: &[u8]) -> u64 {
    let end = buf.len();
    let mut start = end - 1;
    while start > 0 && buf[start - 1] & 0x80 != 0 {
        start -= 1;
    }
    let mut v = 0u64;
    for (i, b) in buf[start..end].iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use strata_proto::v1::ProduceRequest;

    fn framed(m: &ProduceRequest) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Feeds `input` in chunks of `chunk` bytes and collects what comes out.
    fn run(input: &[u8], chunk: usize, limit: usize, mode: Mode) -> Result<Vec<u8>, tonic::Status> {
        let mut g = FrameGuard::new((), limit, mode, "test", limit as u64);
        for c in input.chunks(chunk) {
            g.feed(Bytes::copy_from_slice(c))?;
        }
        Ok(g.out.into_iter().flat_map(|b| b.to_vec()).collect())
    }

    fn unframe(mut bytes: &[u8]) -> Vec<ProduceRequest> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
            out.push(ProduceRequest::decode(&bytes[5..5 + len]).unwrap());
            bytes = &bytes[5 + len..];
        }
        out
    }

    #[test]
    fn small_frames_pass_and_large_ones_become_sentinels() {
        let small = |id| ProduceRequest {
            tenant: "t".into(),
            topic: "orders".into(),
            partition: 3,
            batch: Bytes::from(vec![7u8; 100]),
            request_id: id,
            ..Default::default()
        };
        let big = ProduceRequest { batch: Bytes::from(vec![1u8; 10_000]), ..small(2) };
        let mut input = framed(&small(1));
        input.extend(framed(&big));
        input.extend(framed(&small(3)));
        for chunk in [1, 3, 7, 100, 4096, input.len()] {
            let out = unframe(&run(&input, chunk, 1000, Mode::Sentinel).unwrap());
            assert_eq!(out.len(), 3, "chunk {chunk}");
            assert_eq!(out[0], small(1));
            assert_eq!(out[2], small(3));
            let expected = ProduceRequest { batch: Bytes::new(), oversize_bytes: big.encoded_len() as u64, ..small(2) };
            assert_eq!(out[1], expected, "chunk {chunk}");
        }
    }

    #[test]
    fn fail_mode_refuses_with_resource_exhausted() {
        let big = ProduceRequest { batch: Bytes::from(vec![1u8; 10_000]), ..Default::default() };
        let err = run(&framed(&big), 64, 1000, Mode::Fail).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert_eq!(strata_proto::error_info(&err).unwrap().metadata["limit"], "1000");
    }

    #[test]
    fn garbage_in_an_oversized_frame_still_yields_a_sentinel() {
        let mut input = vec![0u8];
        input.extend_from_slice(&5000u32.to_be_bytes());
        input.extend(std::iter::repeat_n(0xffu8, 5000));
        let out = unframe(&run(&input, 333, 1000, Mode::Sentinel).unwrap());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].oversize_bytes, 5000);
    }
}
