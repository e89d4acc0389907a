//! `/v3/kv/range`'s answer, written as JSON while it is sent.
//!
//! The gateway's other unary answers are decoded into their message and encoded into one JSON
//! body. A full read of a large store would then be held three times over (the call's wire
//! bytes, the key-values, the JSON). Here the call's answer is decoded with its key-values
//! left as wire bytes ([`EncodedRangeResponse`]), and the body writes them out a batch at a
//! time: a key-value is decoded just before its JSON is written, and its bytes are dropped
//! once written. The output is byte for byte what [`super::json::message`] writes for the
//! same `RangeResponse` (fields in proto order, defaults omitted), which the tests check.
//!
//! The call's extensions, which hold its share of the read budget, live until the body is
//! sent or dropped.

use std::collections::VecDeque;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use prost::Message;
use strata_engine::proto::etcdserverpb::RangeResponse;

use crate::api::range::EncodedRangeResponse;

/// JSON written per body frame, about.
const BATCH_BYTES: usize = 64 * 1024;

/// The answer as a streamed JSON body; `keep` lives as long as the body.
pub fn response<K: Send + 'static>(answer: EncodedRangeResponse, keep: K) -> Response {
    let kvs: VecDeque<Bytes> = answer.wire_kvs().take().into();
    let mut fields = Fields::default();
    let mut head = vec![b'{'];
    if let Some(header) = &answer.header {
        fields.open(&mut head, "header");
        serde_json::to_writer(&mut head, header).expect("a response header encodes");
    }
    let mut tail = Vec::new();
    if !kvs.is_empty() {
        fields.open(&mut head, "kvs");
        head.push(b'[');
        tail.push(b']');
    }
    if answer.more {
        fields.open(&mut tail, "more");
        tail.extend_from_slice(b"true");
    }
    if answer.count != 0 {
        fields.open(&mut tail, "count");
        tail.extend_from_slice(format!("\"{}\"", answer.count).as_bytes());
    }
    tail.push(b'}');

    let state = KvsJson {
        kvs,
        written: 0,
        _keep: keep,
    };
    let kvs = futures::stream::try_unfold(state, |mut state| async move {
        Ok::<_, std::io::Error>(state.next_batch()?.map(|batch| (batch, state)))
    });
    let head = futures::stream::once(async { Ok(Bytes::from(head)) });
    let tail = futures::stream::once(async { Ok(Bytes::from(tail)) });
    use futures::StreamExt as _;
    let body = Body::from_stream(head.chain(kvs).chain(tail));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// Separates an object's fields.
#[derive(Default)]
struct Fields {
    any: bool,
}

impl Fields {
    fn open(&mut self, out: &mut Vec<u8>, name: &str) {
        if self.any {
            out.push(b',');
        }
        self.any = true;
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
    }
}

/// The key-values still to write.
struct KvsJson<K> {
    /// `kvs` fields of the answer, as wire bytes.
    kvs: VecDeque<Bytes>,
    /// Key-values written so far.
    written: usize,
    _keep: K,
}

impl<K> KvsJson<K> {
    /// The next key-values as JSON array members; `None` once all are written.
    fn next_batch(&mut self) -> Result<Option<Bytes>, std::io::Error> {
        let mut out = Vec::new();
        while out.len() < BATCH_BYTES {
            let Some(fields) = self.kvs.pop_front() else {
                break;
            };
            // Wire bytes of `kvs` fields decode as a RangeResponse holding just those.
            let part = RangeResponse::decode(fields).map_err(std::io::Error::other)?;
            for kv in &part.kvs {
                if self.written > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut out, kv)?;
                self.written += 1;
            }
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use strata_engine::proto::etcdserverpb::ResponseHeader;
    use strata_engine::proto::mvccpb::KeyValue;

    async fn streamed(resp: &RangeResponse) -> String {
        let answer = EncodedRangeResponse::decode(resp.encode_to_vec().as_slice()).unwrap();
        let body = response(answer, ()).into_body().collect().await.unwrap();
        String::from_utf8(body.to_bytes().to_vec()).unwrap()
    }

    fn kv(i: usize) -> KeyValue {
        KeyValue {
            key: format!("key{i}").into_bytes(),
            value: vec![b'v'; i % 300],
            create_revision: 2,
            mod_revision: 2 + i as i64,
            version: 1,
            lease: (i % 3) as i64,
        }
    }

    #[tokio::test]
    async fn streamed_json_is_what_the_whole_message_encodes_to() {
        let header = Some(ResponseHeader {
            cluster_id: 14841639068965178418,
            member_id: 1,
            revision: 9,
            raft_term: 2,
        });
        let shapes = [
            RangeResponse::default(),
            RangeResponse {
                header,
                ..Default::default()
            },
            RangeResponse {
                header: Some(ResponseHeader::default()),
                more: true,
                ..Default::default()
            },
            RangeResponse {
                count: 5,
                ..Default::default()
            },
            RangeResponse {
                kvs: vec![kv(1)],
                ..Default::default()
            },
            RangeResponse {
                header,
                kvs: (0..1000).map(kv).collect(),
                more: true,
                count: 2000,
            },
        ];
        for resp in shapes {
            let whole = String::from_utf8(serde_json::to_vec(&resp).unwrap()).unwrap();
            assert_eq!(streamed(&resp).await, whole);
        }
    }

    #[tokio::test]
    async fn what_it_keeps_lives_until_the_body_is_sent() {
        let resp = RangeResponse {
            kvs: (0..500).map(kv).collect(),
            ..Default::default()
        };
        let answer = EncodedRangeResponse::decode(resp.encode_to_vec().as_slice()).unwrap();
        let keep = std::sync::Arc::new(());
        let body = response(answer, keep.clone()).into_body();
        assert_eq!(std::sync::Arc::strong_count(&keep), 2);
        body.collect().await.unwrap();
        assert_eq!(std::sync::Arc::strong_count(&keep), 1);
    }
}
