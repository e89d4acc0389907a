//! A unary Range's response body on the client port: the key-values go out as the chunks the
//! engine read them in, never copied into one more buffer.
//!
//! tonic encodes a unary answer whole into a buffer of its own before sending a byte, which
//! for a full read of a large store would hold the answer twice (the chunks, and their copy).
//! Instead the listener takes the chunks out of the [`EncodedRangeResponse`] before tonic
//! encodes it ([`SplicedRange`]), lets tonic encode what is left (header, `more`, `count`: a
//! few dozen bytes), and sends that message's fields, then the chunks, under one gRPC length
//! prefix that counts both. Protobuf fields may come in any order, so the message decodes as
//! the one tonic would have sent.
//!
//! The answer's share of the read budget shrinks as chunks are handed to the transport: it
//! holds what is still to send plus the chunk being sent, and is released when the body is
//! dropped (sent, or the client gone).
//!
//! [`EncodedRangeResponse`]: crate::api::range::EncodedRangeResponse

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use bytes::{BufMut, BytesMut};
use http_body::Frame;

use crate::api::range::WireKvs;
use crate::read_budget::Grant;

/// gRPC's message prefix: a compressed flag and a big-endian 32-bit length.
const PREFIX_LEN: usize = 5;

/// Chunks are copied into the message's first DATA frame while it stays under this, so a
/// small answer goes out as one frame, as tonic sends it. (Clients count small frames: h2
/// sends GOAWAY `too_many_data_frames` to a peer that floods it with them, and counts every
/// empty one for good; no frame here is empty.)
const FIRST_FRAME_BYTES: usize = 16 * 1024;

/// A unary Range's budget and key-value chunks, riding in the response's extensions until
/// the client listener builds the body ([`splice`]). Extensions must be `Clone`; the parts are
/// taken once.
#[derive(Clone)]
pub struct SplicedRange(Arc<Mutex<Option<(Grant, WireKvs)>>>);

impl SplicedRange {
    pub fn new(grant: Grant, kvs: WireKvs) -> SplicedRange {
        SplicedRange(Arc::new(Mutex::new(Some((grant, kvs)))))
    }
}

/// The client listener's step for a Range answer: takes the chunks out of the message
/// before tonic encodes it and splices them back into the body. Other responses pass.
pub async fn splice(mut response: axum::response::Response) -> axum::response::Response {
    let Some(spliced) = response.extensions_mut().remove::<SplicedRange>() else {
        return response;
    };
    let Some((grant, kvs)) = spliced.0.lock().expect("spliced range lock").take() else {
        return response;
    };
    let chunks: VecDeque<Bytes> = kvs.take().into();
    response.map(|inner| Body::new(SplicedBody::new(inner, chunks, grant)))
}

/// Where a [`SplicedBody`] is.
enum Phase {
    /// Reading tonic's one message (prefix and fields) from the inner body.
    Message(BytesMut),
    /// Sending the chunks.
    Chunks,
    /// Passing on the rest of the inner body (its trailers).
    Rest,
}

struct SplicedBody {
    inner: Body,
    chunks: VecDeque<Bytes>,
    /// Bytes of `chunks` still to send.
    chunks_len: usize,
    grant: Grant,
    phase: Phase,
}

impl SplicedBody {
    fn new(inner: Body, mut chunks: VecDeque<Bytes>, grant: Grant) -> SplicedBody {
        chunks.retain(|c| !c.is_empty());
        let chunks_len = chunks.iter().map(Bytes::len).sum();
        SplicedBody {
            inner,
            chunks,
            chunks_len,
            grant,
            phase: Phase::Message(BytesMut::new()),
        }
    }

    /// tonic's message with the chunks' length added to its prefix, and the first chunks if
    /// they are small, once all of it is in `got`; an error if it is not a message this body
    /// can extend.
    fn extended_message(&mut self, got: &mut BytesMut) -> Option<Result<Bytes, axum::Error>> {
        if got.len() < PREFIX_LEN {
            return None;
        }
        let len = u32::from_be_bytes(got[1..PREFIX_LEN].try_into().expect("4 bytes")) as usize;
        if got.len() < PREFIX_LEN + len {
            return None;
        }
        if got[0] != 0 || got.len() > PREFIX_LEN + len {
            return Some(Err(axum::Error::new(
                "a range answer was compressed or split into messages; its key-values cannot be spliced",
            )));
        }
        let Ok(total) = u32::try_from(len + self.chunks_len) else {
            return Some(Err(axum::Error::new(
                "a range answer is larger than a gRPC message can be",
            )));
        };
        let mut message = BytesMut::with_capacity(FIRST_FRAME_BYTES.max(PREFIX_LEN + len));
        message.put_u8(0);
        message.put_u32(total);
        message.put_slice(&got[PREFIX_LEN..]);
        while let Some(chunk) = self.chunks.front() {
            if message.len() + chunk.len() > FIRST_FRAME_BYTES {
                break;
            }
            message.put_slice(chunk);
            self.chunks_len -= chunk.len();
            self.chunks.pop_front();
        }
        self.grant
            .shrink_to((self.chunks_len + message.len()) as u64);
        Some(Ok(message.freeze()))
    }
}

impl HttpBody for SplicedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        loop {
            match &mut this.phase {
                Phase::Message(got) => {
                    let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(None) if got.is_empty() => return Poll::Ready(None),
                        Poll::Ready(None) => {
                            return Poll::Ready(Some(Err(axum::Error::new(
                                "a range answer's message ended early",
                            ))))
                        }
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                        Poll::Ready(Some(Ok(frame))) => frame,
                    };
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        // Trailers before any message: the call failed; nothing to splice.
                        Err(frame) => {
                            this.phase = Phase::Rest;
                            return Poll::Ready(Some(Ok(frame)));
                        }
                    };
                    let mut got = std::mem::take(got);
                    got.put_slice(&data);
                    match this.extended_message(&mut got) {
                        None => this.phase = Phase::Message(got),
                        Some(message) => {
                            this.phase = Phase::Chunks;
                            return Poll::Ready(Some(message.map(Frame::data)));
                        }
                    }
                }
                Phase::Chunks => match this.chunks.pop_front() {
                    Some(chunk) => {
                        // Hold what is still to send and the chunk handed over now.
                        this.chunks_len -= chunk.len();
                        this.grant.shrink_to((this.chunks_len + chunk.len()) as u64);
                        return Poll::Ready(Some(Ok(Frame::data(chunk))));
                    }
                    None => this.phase = Phase::Rest,
                },
                Phase::Rest => return Pin::new(&mut this.inner).poll_frame(cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.phase, Phase::Rest) && self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::range::EncodedRangeResponse;
    use crate::read_budget::ReadBudget;
    use futures::StreamExt as _;
    use http_body_util::BodyExt as _;
    use prost::Message;
    use strata_engine::proto::etcdserverpb::{RangeResponse, ResponseHeader};
    use strata_engine::proto::mvccpb::KeyValue;

    fn kv(i: u8) -> KeyValue {
        KeyValue {
            key: vec![b'k', i],
            value: vec![i; 100],
            create_revision: 2,
            mod_revision: i64::from(i) + 2,
            version: 1,
            lease: 0,
        }
    }

    fn framed(msg: &[u8]) -> Bytes {
        let mut framed = BytesMut::new();
        framed.put_u8(0);
        framed.put_u32(msg.len() as u32);
        framed.put_slice(msg);
        framed.freeze()
    }

    fn ok_trailers() -> Frame<Bytes> {
        let mut trailers = axum::http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        Frame::trailers(trailers)
    }

    /// The body tonic sends for `msg`: one prefixed message, encoded when first polled (as
    /// tonic's is), then trailers.
    fn tonic_body<M: Message + Send + 'static>(msg: M) -> Body {
        let message = futures::stream::once(async move {
            Ok::<_, axum::Error>(Frame::data(framed(&msg.encode_to_vec())))
        });
        let trailers = futures::stream::once(async { Ok(ok_trailers()) });
        Body::new(http_body_util::StreamBody::new(message.chain(trailers)))
    }

    #[tokio::test]
    async fn the_spliced_answer_decodes_as_the_whole_message() {
        let whole = RangeResponse {
            header: Some(ResponseHeader {
                revision: 9,
                ..Default::default()
            }),
            kvs: (0..5).map(kv).collect(),
            more: true,
            count: 7,
        };
        let answer = EncodedRangeResponse::decode(whole.encode_to_vec().as_slice()).unwrap();
        let budget = ReadBudget::new(1 << 20);
        let grant = budget.force(answer.wire_len() as u64);
        let kvs = answer.wire_kvs();
        let mut response = axum::response::Response::new(tonic_body(answer));
        response
            .extensions_mut()
            .insert(SplicedRange::new(grant, kvs));
        let collected = splice(response).await.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers pass");
        assert_eq!(trailers["grpc-status"], "0");
        let bytes = collected.to_bytes();
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(bytes[0], 0);
        assert_eq!(len, bytes.len() - PREFIX_LEN);
        assert_eq!(RangeResponse::decode(&bytes[PREFIX_LEN..]).unwrap(), whole);
        assert_eq!(budget.usage().in_use, 0, "the budget is released");
    }

    #[tokio::test]
    async fn without_the_listener_the_message_is_encoded_whole() {
        // The JSON gateway calls the routes in process: nothing takes the chunks.
        let whole = RangeResponse {
            kvs: (0..3).map(kv).collect(),
            count: 3,
            ..Default::default()
        };
        let answer = EncodedRangeResponse::decode(whole.encode_to_vec().as_slice()).unwrap();
        assert_eq!(answer.encode_to_vec(), whole.encode_to_vec());
    }

    #[tokio::test]
    async fn small_chunks_ride_the_first_frame_none_is_empty_and_the_budget_shrinks() {
        let budget = ReadBudget::new(1 << 20);
        let sizes = [100, 0, 200, 20_000, 30];
        let chunks: VecDeque<Bytes> = sizes.iter().map(|&n| Bytes::from(vec![7; n])).collect();
        let mut body = SplicedBody::new(
            tonic_body(RangeResponse::default()),
            chunks,
            budget.force(20_335),
        );
        // The small chunks ride in the first frame; the large one goes as it is.
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), PREFIX_LEN + 300);
        assert_eq!(first[0], 0);
        assert_eq!(&first[1..PREFIX_LEN], &20_330u32.to_be_bytes());
        assert_eq!(
            budget.usage().in_use,
            20_335,
            "what is to send and what was handed over"
        );
        let large = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(large.len(), 20_000);
        assert_eq!(budget.usage().in_use, 20_030);
        let last = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(last.len(), 30, "no frame is empty");
        assert_eq!(budget.usage().in_use, 30);
        assert!(body.frame().await.unwrap().unwrap().is_trailers());
        drop(body);
        assert_eq!(budget.usage().in_use, 0);

        // A small answer is one frame, as tonic sends it.
        let chunks: VecDeque<Bytes> = vec![Bytes::from(vec![1; 300]), Bytes::new()].into();
        let mut body = SplicedBody::new(
            tonic_body(RangeResponse::default()),
            chunks,
            budget.force(305),
        );
        let only = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(only.len(), PREFIX_LEN + 300);
        assert!(body.frame().await.unwrap().unwrap().is_trailers());
        drop(body);

        // A call that failed sends trailers only: they pass, the chunks are dropped.
        let mut trailers = axum::http::HeaderMap::new();
        trailers.insert("grpc-status", "8".parse().unwrap());
        let failed = Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            vec![Ok::<_, axum::Error>(Frame::trailers(trailers))],
        )));
        let chunks: VecDeque<Bytes> = vec![Bytes::from(vec![1; 300])].into();
        let mut body = SplicedBody::new(failed, chunks, budget.force(300));
        assert!(body.frame().await.unwrap().unwrap().is_trailers());
        assert!(body.frame().await.is_none());
    }
}
