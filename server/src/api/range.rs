//! Range, served in chunks at one revision, in bounded memory (etcd 3.7's `rangeStream` loop,
//! used here for unary Range too).
//!
//! A range over many keys is read as a series of engine requests: the first is the client's
//! own [`Request::Range`] with its limit cut to a chunk (linearizable or serializable as the
//! client asked; it pins the revision and counts the span once); each next one is a
//! [`Request::RangeChunk`] from just after the last key at that revision, which the engine
//! answers in O(chunk) without counting. The chunk's key limit adapts to the responses' size
//! as etcd's does: doubled while a chunk is under half the target bytes, cut by a third above
//! twice the target. Requests that must see every key before answering (any sort but key
//! order, revision filters) or that name one key are read in one piece, as etcd 3.7 does.
//!
//! The engine answers a chunk with its key-values as stored, already protobuf; unary Range
//! keeps them as `kvs` fields ([`EncodedRangeResponse`]) and the client listener sends them as
//! they are (`crate::range_body`), so a response exists once in memory, never as key-values
//! nor copied into the transport's buffer. Its bytes are held against the [`ReadBudget`] from
//! the moment its size is known (after the first chunk: bytes per key × keys to come) until
//! the transport has taken them. RangeStream messages are built the same way
//! ([`EncodedRangeStreamResponse`]); a stream waits at its start for room for the chunks it
//! may have queued (and holds more if its chunks turn out larger), and is cut when its
//! client takes nothing for `--grpc-keepalive-timeout` ([`super::Reads::stall_timeout`]).
//!
//! A compaction past the pinned revision between chunks makes the next chunk fail with
//! `Compacted`. A unary Range then starts over as a new read (it was never answered, so it
//! may linearize later), at most [`RESTARTS`] times; a stream already sent its first chunks
//! and ends with the error, as etcd's does.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use strata_engine::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
#[cfg(madsim)]
use strata_engine::proto::etcdserverpb::RangeStreamResponse;
use strata_engine::proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use strata_engine::proto::mvccpb::KeyValue;
use strata_engine::request::{Counting, EncodedRange, RangeChunk, Request, Response};
use strata_engine::EtcdError;
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::{status, Ctx};
use crate::read_budget::Grant;

/// The largest message a member sends (grpc-go's limit, which etcd's server keeps: a gRPC
/// message's length prefix is 32 bits); a larger unary answer fails as etcd's does.
pub const MAX_SEND_BYTES: usize = i32::MAX as usize;

/// How often a unary Range starts over after a compaction overtook it.
pub const RESTARTS: u32 = 3;

/// Chunks of a RangeStream that may be queued between this member and its client (the channel
/// and the transport's buffer), each holding its bytes of the budget.
const STREAM_CHUNKS_IN_FLIGHT: usize = 3;

/// Whether a request can be read in chunks (see the module docs).
fn splittable(req: &RangeRequest) -> bool {
    let key_order = req.sort_target == SortTarget::Key as i32
        && (req.sort_order == SortOrder::None as i32 || req.sort_order == SortOrder::Ascend as i32);
    let filters = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    !req.range_end.is_empty() && !req.count_only && key_order && !filters && req.limit >= 0
}

/// The engine requests of one range read, one chunk at a time.
struct Chunks<'a> {
    ctx: &'a Ctx,
    md: &'a MetadataMap,
    req: RangeRequest,
    /// Keys the client may still receive (`None`: no limit).
    left: Option<i64>,
    chunk_keys: i64,
    target_bytes: usize,
    /// The revision the first chunk read at; later chunks read there.
    pinned: Option<i64>,
    done: bool,
}

impl<'a> Chunks<'a> {
    fn new(ctx: &'a Ctx, md: &'a MetadataMap, req: RangeRequest) -> Chunks<'a> {
        let left = (req.limit > 0).then_some(req.limit);
        Chunks {
            ctx,
            md,
            target_bytes: ctx.reads.chunk_bytes,
            req,
            left,
            chunk_keys: ctx.reads.first_chunk_keys,
            pinned: None,
            done: false,
        }
    }

    fn is_first(&self) -> bool {
        self.pinned.is_none()
    }

    /// The next chunk; `None` once the read is complete. The last chunk's `more` is the
    /// answer's `more`; the first chunk's `count` is the answer's `count`.
    async fn next(&mut self) -> Result<Option<EncodedRange>, EtcdError> {
        if self.done {
            return Ok(None);
        }
        let pause = self.ctx.reads.chunk_pause;
        if !self.is_first() && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let request = match self.pinned {
            None if !splittable(&self.req) => {
                self.done = true;
                Request::Range(self.req.clone())
            }
            None => Request::RangeChunk(RangeChunk {
                range: RangeRequest {
                    limit: self.chunk_limit(),
                    ..self.req.clone()
                },
                counting: Counting::Total,
            }),
            Some(revision) => Request::RangeChunk(RangeChunk {
                range: RangeRequest {
                    limit: self.chunk_limit(),
                    revision: if strata_engine::bugs::active(
                        self.ctx.handle.shared.config.bug,
                        strata_engine::bugs::Bug::RangeChunksUnpinned,
                    ) {
                        0
                    } else {
                        revision
                    },
                    serializable: true,
                    ..self.req.clone()
                },
                counting: Counting::Skip,
            }),
        };
        let resp = match self.ctx.call_raw(request, self.md).await? {
            Response::RangeChunk(r) => r,
            Response::Range(r) => EncodedRange {
                header: r.header,
                kvs: r.kvs.iter().map(Message::encode_to_vec).collect(),
                more: r.more,
                count: r.count,
            },
            other => panic!("the engine answered a range with {other:?}"),
        };
        if self.pinned.is_none() {
            let head = resp.header.as_ref().map_or(0, |h| h.revision);
            self.pinned = Some(if self.req.revision > 0 {
                self.req.revision
            } else {
                head
            });
        }
        let got = resp.kvs.len() as i64;
        if let Some(left) = &mut self.left {
            *left -= got;
        }
        match resp.kvs.last() {
            Some(last) if resp.more && self.left != Some(0) => {
                let last = KeyValue::decode(&last[..]).map_err(|e| {
                    let _ = e;
                    EtcdError::Corrupt
                })?;
                let mut next = last.key;
                next.push(0);
                self.req.key = next;
            }
            _ => self.done = true,
        }
        let bytes = resp.kvs.iter().map(Vec::len).sum::<usize>();
        if bytes < self.target_bytes / 2 {
            self.chunk_keys = self.chunk_keys.saturating_mul(2);
        } else if bytes > self.target_bytes.saturating_mul(2) {
            self.chunk_keys = (self.chunk_keys * 2 / 3).max(1);
        }
        Ok(Some(resp))
    }

    fn chunk_limit(&self) -> i64 {
        match self.left {
            Some(left) => left.min(self.chunk_keys),
            None => self.chunk_keys,
        }
    }

    /// Keys still to come after the chunks read so far, from the first chunk's count.
    fn keys_to_come(&self, count: i64, read: i64) -> i64 {
        let total = match self.req.limit {
            0 => count,
            limit => count.min(limit),
        };
        (total - read).max(0)
    }
}

/// A unary Range answer whose key-values are already wire bytes (see the module docs). It
/// encodes as the `RangeResponse` it stands for; decoding keeps the key-values as wire bytes
/// until [`EncodedRangeResponse::into_range_response`].
#[derive(Default)]
pub struct EncodedRangeResponse {
    pub header: Option<ResponseHeader>,
    kvs: WireKvs,
    pub more: bool,
    pub count: i64,
}

/// The `kvs` fields of an [`EncodedRangeResponse`], tag and length included, one `Bytes` per
/// chunk. Shared: the client listener takes them before the transport encodes the rest of
/// the message and sends them as they are (`crate::range_body`); whatever is still here when
/// the message is encoded is encoded with it (the JSON gateway's in-process calls).
#[derive(Clone, Default)]
pub struct WireKvs(std::sync::Arc<std::sync::Mutex<Vec<Bytes>>>);

impl WireKvs {
    /// The chunks, leaving none.
    pub fn take(&self) -> Vec<Bytes> {
        std::mem::take(&mut *self.0.lock().expect("kvs lock"))
    }

    fn push(&self, chunk: Bytes) {
        self.0.lock().expect("kvs lock").push(chunk);
    }

    fn len(&self) -> usize {
        self.0
            .lock()
            .expect("kvs lock")
            .iter()
            .map(Bytes::len)
            .sum()
    }
}

const KVS_TAG: u32 = 2;

impl EncodedRangeResponse {
    /// Appends key-values given as encoded `mvccpb.KeyValue`s, as `kvs` fields.
    fn push_kvs(&mut self, kvs: &[Vec<u8>]) {
        use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
        if kvs.is_empty() {
            return;
        }
        let field_len =
            |kv: &Vec<u8>| key_len(KVS_TAG) + encoded_len_varint(kv.len() as u64) + kv.len();
        let len: usize = kvs.iter().map(field_len).sum();
        let mut buf = BytesMut::with_capacity(len);
        for kv in kvs {
            encode_key(KVS_TAG, WireType::LengthDelimited, &mut buf);
            encode_varint(kv.len() as u64, &mut buf);
            buf.put_slice(kv);
        }
        self.kvs.push(buf.freeze());
    }

    /// The bytes this response takes on the wire.
    pub fn wire_len(&self) -> usize {
        self.encoded_len()
    }

    /// Its key-values' wire bytes, for the transport to send as they are.
    pub fn wire_kvs(&self) -> WireKvs {
        self.kvs.clone()
    }

    /// The response as key-values (the JSON gateway's and the simulator's form).
    pub fn into_range_response(self) -> Result<RangeResponse, prost::DecodeError> {
        let mut kvs = Vec::new();
        for chunk in self.kvs.take() {
            let wrapped = RangeResponse::decode(chunk)?;
            kvs.extend(wrapped.kvs);
        }
        Ok(RangeResponse {
            header: self.header,
            kvs,
            more: self.more,
            count: self.count,
        })
    }
}

impl std::fmt::Debug for EncodedRangeResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedRangeResponse")
            .field("header", &self.header)
            .field("kvs_len", &self.kvs.len())
            .field("more", &self.more)
            .field("count", &self.count)
            .finish()
    }
}

impl Message for EncodedRangeResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(header) = &self.header {
            prost::encoding::message::encode(1, header, buf);
        }
        // Taken, not copied: the response is not held twice while the transport copies it.
        for chunk in self.kvs.take() {
            buf.put_slice(&chunk);
        }
        if self.more {
            prost::encoding::bool::encode(3, &self.more, buf);
        }
        if self.count != 0 {
            prost::encoding::int64::encode(4, &self.count, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            1 => prost::encoding::message::merge(
                wire_type,
                self.header.get_or_insert_with(ResponseHeader::default),
                buf,
                ctx,
            ),
            KVS_TAG => {
                let mut raw = Vec::new();
                prost::encoding::bytes::merge(wire_type, &mut raw, buf, ctx)?;
                let mut field = BytesMut::new();
                prost::encoding::bytes::encode(KVS_TAG, &raw, &mut field);
                self.kvs.push(field.freeze());
                Ok(())
            }
            3 => prost::encoding::bool::merge(wire_type, &mut self.more, buf, ctx),
            4 => prost::encoding::int64::merge(wire_type, &mut self.count, buf, ctx),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let header = self
            .header
            .as_ref()
            .map_or(0, |h| prost::encoding::message::encoded_len(1, h));
        let more = if self.more {
            prost::encoding::bool::encoded_len(3, &self.more)
        } else {
            0
        };
        let count = if self.count != 0 {
            prost::encoding::int64::encoded_len(4, &self.count)
        } else {
            0
        };
        header + self.kvs.len() + more + count
    }

    fn clear(&mut self) {
        *self = EncodedRangeResponse::default();
    }
}

/// A unary Range answer and the budget it holds until it is sent.
pub struct RangeAnswer {
    pub response: EncodedRangeResponse,
    pub grant: Grant,
}

/// Serves a unary Range (see the module docs).
pub async fn range(ctx: &Ctx, md: &MetadataMap, req: RangeRequest) -> Result<RangeAnswer, Status> {
    let mut restarts = 0;
    loop {
        match range_once(ctx, md, req.clone()).await {
            Err((EtcdError::Compacted, true)) if req.revision <= 0 && restarts < RESTARTS => {
                restarts += 1;
            }
            Err((e, _)) => return Err(status(e)),
            Ok(answer) if answer.response.wire_len() > MAX_SEND_BYTES => {
                return Err(Status::resource_exhausted(format!(
                    "grpc: trying to send message larger than max ({} vs. {MAX_SEND_BYTES})",
                    answer.response.wire_len()
                )));
            }
            Ok(answer) => return Ok(answer),
        }
    }
}

/// One attempt of [`range`]; an error says whether it came after the first chunk.
async fn range_once(
    ctx: &Ctx,
    md: &MetadataMap,
    req: RangeRequest,
) -> Result<RangeAnswer, (EtcdError, bool)> {
    let mut chunks = Chunks::new(ctx, md, req);
    let mut answer = EncodedRangeResponse::default();
    let mut grant: Option<Grant> = None;
    let mut read = 0i64;
    loop {
        let first = chunks.is_first();
        let chunk = match chunks.next().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => return Err((e, !first)),
        };
        read += chunk.kvs.len() as i64;
        answer.push_kvs(&chunk.kvs);
        answer.more = chunk.more;
        if first {
            answer.header = chunk.header;
            answer.count = chunk.count;
        }
        let bytes = answer.wire_len() as u64;
        match &mut grant {
            Some(g) => g.grow_to(bytes),
            None if chunks.done => grant = Some(ctx.reads.budget.force(bytes)),
            None => {
                // The first chunk tells the size of what is to come: wait for room for all of it.
                let per_key = bytes / (read.max(1) as u64);
                let to_come = chunks.keys_to_come(answer.count, read) as u64;
                let expected = bytes + per_key.saturating_mul(to_come);
                grant = Some(ctx.reads.budget.acquire(expected).await);
            }
        }
    }
    Ok(RangeAnswer {
        response: answer,
        grant: grant.unwrap_or_else(|| ctx.reads.budget.force(0)),
    })
}

/// A RangeStream: the header, then the chunks, each a [`RangeStreamResponse`], merging into
/// what Range would answer (etcd 3.7's layout: the first data message carries the revision,
/// the last `count` and `more`). The first chunk is read before the stream starts, so a
/// request the member refuses (permissions, a compacted or future revision, a learner asked
/// for a linearizable read) fails the call itself.
pub async fn range_stream(
    ctx: &Ctx,
    md: &MetadataMap,
    req: RangeRequest,
) -> Result<RangeStream, Status> {
    let ctx = ctx.clone();
    let md = md.clone();
    let mut chunks = Chunks::new(&ctx, &md, req);
    let first = chunks.next().await.map_err(status)?.expect("a first chunk");
    let Chunks {
        req,
        left,
        chunk_keys,
        pinned,
        done,
        ..
    } = chunks;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer_stalled = stalled.clone();
    tokio::spawn(async move {
        let tx = Sender {
            tx,
            stalled: producer_stalled,
            timeout: ctx.reads.stall_timeout,
        };
        let mut chunks = Chunks {
            ctx: &ctx,
            md: &md,
            target_bytes: ctx.reads.chunk_bytes,
            req,
            left,
            chunk_keys,
            pinned,
            done,
        };
        // The stream holds room for the chunks it may have queued, from the start: like a
        // unary read it waits once, before it holds anything, so it cannot wait on itself.
        let mut grant = ctx
            .reads
            .budget
            .acquire((STREAM_CHUNKS_IN_FLIGHT * ctx.reads.chunk_bytes) as u64)
            .await;
        let mut recent: VecDeque<u64> = VecDeque::new();
        let header = first.header.unwrap_or_default();
        let opening = EncodedRange {
            header: Some(ResponseHeader {
                revision: 0,
                ..header
            }),
            kvs: Vec::new(),
            more: false,
            count: 0,
        };
        let count = first.count;
        let mut next = Some(Ok(EncodedRange {
            header: Some(ResponseHeader {
                revision: header.revision,
                ..ResponseHeader::default()
            }),
            count: 0,
            ..first
        }));
        if send(&tx, stream_message(opening)).await.is_err() {
            return;
        }
        while let Some(chunk) = next.take() {
            let mut chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = send(&tx, Err(e)).await;
                    return;
                }
            };
            next = match chunks.next().await {
                // Only the first data message names the revision: the others carry key-values
                // (and the last, count and more), as etcd 3.7's do.
                Ok(Some(c)) => Some(Ok(EncodedRange { header: None, ..c })),
                Ok(None) => None,
                Err(e) => Some(Err(status(e))),
            };
            if next.is_none() {
                chunk.count = count;
            } else {
                chunk.more = false;
            }
            if recent.len() == STREAM_CHUNKS_IN_FLIGHT {
                recent.pop_front();
            }
            recent.push_back(chunk.kvs.iter().map(Vec::len).sum::<usize>() as u64);
            grant.grow_to(recent.iter().sum());
            let message = stream_message(chunk);
            let failed = message.is_err();
            if send(&tx, message).await.is_err() || failed {
                return;
            }
        }
    });
    let messages = futures::stream::unfold(Some((rx, stalled)), |state| async move {
        let (mut rx, stalled) = state?;
        match rx.recv().await {
            Some(message) => Some((message, Some((rx, stalled)))),
            // The producer stopped before the end: say so, never end as if complete.
            None if stalled.load(std::sync::atomic::Ordering::SeqCst) => {
                Some((Err(Status::unavailable(STALLED_MESSAGE)), None))
            }
            None => None,
        }
    });
    Ok(Box::pin(messages))
}

/// A RangeStream message as the transport sends it: its key-values as the engine read them
/// (production), or decoded (the simulator's transport passes messages as values).
#[cfg(not(madsim))]
pub type StreamMessage = EncodedRangeStreamResponse;
#[cfg(madsim)]
pub type StreamMessage = RangeStreamResponse;

#[cfg(not(madsim))]
fn stream_message(chunk: EncodedRange) -> Result<StreamMessage, Status> {
    let mut range_response = EncodedRangeResponse {
        header: chunk.header,
        more: chunk.more,
        count: chunk.count,
        ..EncodedRangeResponse::default()
    };
    range_response.push_kvs(&chunk.kvs);
    Ok(EncodedRangeStreamResponse {
        range_response: Some(range_response),
    })
}

#[cfg(madsim)]
fn stream_message(chunk: EncodedRange) -> Result<StreamMessage, Status> {
    let kvs = chunk
        .kvs
        .iter()
        .map(|kv| KeyValue::decode(&kv[..]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| status(EtcdError::Corrupt))?;
    Ok(RangeStreamResponse {
        range_response: Some(RangeResponse {
            header: chunk.header,
            kvs,
            more: chunk.more,
            count: chunk.count,
        }),
    })
}

/// A `RangeStreamResponse` whose key-values are wire bytes ([`EncodedRangeResponse`]).
#[derive(Debug, Default)]
pub struct EncodedRangeStreamResponse {
    pub range_response: Option<EncodedRangeResponse>,
}

impl Message for EncodedRangeStreamResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(range_response) = &self.range_response {
            prost::encoding::message::encode(1, range_response, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            1 => prost::encoding::message::merge(
                wire_type,
                self.range_response.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        self.range_response
            .as_ref()
            .map_or(0, |r| prost::encoding::message::encoded_len(1, r))
    }

    fn clear(&mut self) {
        self.range_response = None;
    }
}

/// The messages of a RangeStream, as tonic serves them.
pub type RangeStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<StreamMessage, Status>> + Send>>;

/// What a client of a stream cut for stalling reads once it reads again.
pub const STALLED_MESSAGE: &str =
    "etcdserver: range stream cut: the client took no message within the keepalive timeout";

/// The producing end of a RangeStream.
struct Sender {
    tx: tokio::sync::mpsc::Sender<Result<StreamMessage, Status>>,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    timeout: Duration,
}

/// Sends one message of a stream; an error if the client went away or took nothing for
/// its timeout (then the stream is marked cut, and ends with an error).
async fn send(tx: &Sender, message: Result<StreamMessage, Status>) -> Result<(), ()> {
    match tokio::time::timeout(tx.timeout, tx.tx.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(()),
        Err(_) => {
            tx.stalled.store(true, std::sync::atomic::Ordering::SeqCst);
            Err(())
        }
    }
}
