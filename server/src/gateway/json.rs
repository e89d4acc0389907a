//! The JSON side of the gateway: request bodies in, response bodies and errors out, in the
//! shapes etcd's grpc-gateway (v1, `JSONPb{OrigName: true}`) produces, so scripts that parse
//! etcd's output parse Strata's.
//!
//! The field mapping itself is protobuf's JSON mapping, generated into `strata-engine` by
//! pbjson (feature `json`): proto field names out (`create_revision`), proto or lowerCamel
//! names in, 64-bit integers as strings out and strings or numbers in, `bytes` as base64,
//! enums as names out and names or numbers in, default values omitted, unknown fields ignored.
//! This module adds what pbjson leaves to the caller: `null` members read as the default (as
//! protojson does), an empty body reads as the empty message (grpc-gateway treats EOF so), and
//! a body may carry several messages back to back (the streaming endpoints).

use std::collections::VecDeque;

use axum::body::{Body, BodyDataStream};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tonic::{Code, Status};

/// The JSON messages of one request body, decoded as they arrive: a message is handed on as
/// soon as its closing brace is in, so a client may hold a streaming body open and send more.
pub struct Messages {
    body: BodyDataStream,
    buf: Vec<u8>,
    eof: bool,
    /// Bytes of a single message kept before the request is refused.
    message_bytes_max: usize,
    decoded: VecDeque<Value>,
    failed: Option<Status>,
}

impl Messages {
    pub fn new(body: Body, message_bytes_max: usize) -> Messages {
        Messages {
            body: body.into_data_stream(),
            buf: Vec::new(),
            eof: false,
            message_bytes_max,
            decoded: VecDeque::new(),
            failed: None,
        }
    }

    /// The next message, `None` once the body ends.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Status> {
        loop {
            if let Some(value) = self.decoded.pop_front() {
                return decode(value).map(Some);
            }
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            if self.eof && self.buf.is_empty() {
                return Ok(None);
            }
            if !self.eof {
                self.read().await?;
            }
            self.parse();
        }
    }

    /// The first message of the body, or the empty message for an empty body (grpc-gateway
    /// reads EOF so); anything after the first message is ignored, as its decoder does.
    pub async fn first_or_default<T: DeserializeOwned + Default>(&mut self) -> Result<T, Status> {
        while !self.eof {
            self.read().await?;
        }
        Ok(self.next().await?.unwrap_or_default())
    }

    async fn read(&mut self) -> Result<(), Status> {
        match self.body.next().await {
            Some(Ok(chunk)) => {
                if self.buf.len() + chunk.len() > self.message_bytes_max {
                    return Err(Status::resource_exhausted(format!(
                        "request body exceeds {} bytes (see --max-request-bytes)",
                        self.message_bytes_max
                    )));
                }
                self.buf.extend_from_slice(&chunk);
            }
            Some(Err(e)) => {
                return Err(Status::invalid_argument(format!(
                    "reading the request body: {e}"
                )))
            }
            None => self.eof = true,
        }
        Ok(())
    }

    /// Moves every complete JSON value in the buffer to `decoded`. A value cut short waits for
    /// the next read, or fails once the body has ended; after a failure nothing more is read
    /// (the values before it still count).
    fn parse(&mut self) {
        let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        let mut used = 0;
        loop {
            match values.next() {
                Some(Ok(v)) => {
                    used = values.byte_offset();
                    self.decoded.push_back(v);
                }
                Some(Err(e)) if e.is_eof() && !self.eof => break,
                Some(Err(e)) => {
                    self.failed = Some(malformed(e));
                    self.eof = true;
                    used = self.buf.len();
                    break;
                }
                None => {
                    used = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..used);
    }
}

fn malformed(e: serde_json::Error) -> Status {
    Status::invalid_argument(format!("malformed JSON request body: {e}"))
}

/// One message from its JSON value; `null` members are dropped first, so they read as the
/// field's default.
pub fn decode<T: DeserializeOwned>(mut value: Value) -> Result<T, Status> {
    drop_nulls(&mut value);
    serde_json::from_value(value)
        .map_err(|e| Status::invalid_argument(format!("invalid JSON request: {e}")))
}

fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(members) => {
            members.retain(|_, v| !v.is_null());
            members.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// A unary answer: the message itself.
pub fn message<T: Serialize>(msg: &T) -> Response {
    match serde_json::to_vec(msg) {
        Ok(body) => json(StatusCode::OK, body),
        Err(e) => error(&Status::internal(format!("encoding the response: {e}"))),
    }
}

/// One line of a streamed answer: `{"result":<message>}` and a newline.
pub fn result_line<T: Serialize>(msg: &T) -> Bytes {
    match serde_json::to_vec(msg) {
        Ok(encoded) => {
            let mut line = Vec::with_capacity(encoded.len() + 12);
            line.extend_from_slice(br#"{"result":"#);
            line.extend_from_slice(&encoded);
            line.extend_from_slice(b"}\n");
            line.into()
        }
        Err(e) => error_line(&Status::internal(format!("encoding the response: {e}"))),
    }
}

/// grpc-gateway v1's error body (its `internal.Error`, fields in proto order, empty text
/// omitted as jsonpb omits defaults).
#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    error: &'a str,
    code: i32,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
}

/// grpc-gateway v1's `StreamError`, the last line of a stream that failed.
#[derive(Serialize)]
struct StreamError<'a> {
    grpc_code: i32,
    http_code: u16,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    http_status: &'a str,
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    error: StreamError<'a>,
}

/// The last line of a stream that failed: `{"error":{"grpc_code":..,"http_code":..,..}}`.
pub fn error_line(status: &Status) -> Bytes {
    let http = http_status(status.code());
    let line = ErrorLine {
        error: StreamError {
            grpc_code: status.code() as i32,
            http_code: http.as_u16(),
            message: status.message(),
            http_status: http.canonical_reason().unwrap_or(""),
        },
    };
    let mut bytes = serde_json::to_vec(&line).expect("a struct of strings and numbers encodes");
    bytes.push(b'\n');
    bytes.into()
}

/// A failed call: the HTTP status for its gRPC code and grpc-gateway v1's error body, e.g.
/// `{"error":"etcdserver: mvcc: required revision has been compacted","code":11,"message":..}`.
pub fn error(status: &Status) -> Response {
    let body = ErrorBody {
        error: status.message(),
        code: status.code() as i32,
        message: status.message(),
    };
    let body = serde_json::to_vec(&body).expect("a struct of strings and numbers encodes");
    json(http_status(status.code()), body)
}

fn json(code: StatusCode, body: Vec<u8>) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// grpc-gateway v1's `HTTPStatusFromCode`.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use strata_engine::proto::etcdserverpb::{
        compare, CompactionRequest, Compare, PutRequest, RangeRequest, RangeResponse,
        ResponseHeader, TxnRequest, WatchRequest,
    };
    use strata_engine::proto::mvccpb::KeyValue;

    use super::*;

    fn encode<T: Serialize>(msg: &T) -> String {
        serde_json::to_string(msg).expect("encode")
    }

    fn parse<T: DeserializeOwned>(text: &str) -> Result<T, Status> {
        decode(serde_json::from_str(text).expect("valid JSON"))
    }

    #[test]
    fn range_response_reads_as_etcd_writes_it() {
        let resp = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 14841639068965178418,
                member_id: 10276657743932975437,
                revision: 2,
                raft_term: 2,
            }),
            kvs: vec![KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: b"bar".to_vec(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        // etcd 3.5's own output for the same answer, byte for byte.
        assert_eq!(
            encode(&resp),
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"2","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
        );
    }

    #[test]
    fn defaults_are_omitted_and_enums_are_names() {
        assert_eq!(encode(&RangeRequest::default()), "{}");
        let cmp = Compare {
            result: compare::CompareResult::Greater as i32,
            target: compare::CompareTarget::Mod as i32,
            key: b"k".to_vec(),
            range_end: vec![],
            target_union: Some(compare::TargetUnion::ModRevision(5)),
        };
        assert_eq!(
            encode(&cmp),
            r#"{"result":"GREATER","target":"MOD","key":"aw==","mod_revision":"5"}"#
        );
    }

    #[test]
    fn proto_and_camel_names_strings_and_numbers_are_accepted() {
        let snake: RangeRequest =
            parse(r#"{"key":"Zm9v","range_end":"Zm9w","limit":"10","keys_only":true}"#).unwrap();
        let camel: RangeRequest =
            parse(r#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":10,"keysOnly":true}"#).unwrap();
        assert_eq!(snake, camel);
        assert_eq!(snake.key, b"foo");
        assert_eq!(snake.range_end, b"fop");
        assert_eq!(snake.limit, 10);
        // etcd's own capitalised names (`ID`, `TTL`) and its JSON names both work.
        let put: PutRequest = parse(r#"{"key":"YQ==","lease":"7587"}"#).unwrap();
        assert_eq!(put.lease, 7587);
    }

    #[test]
    fn enums_by_name_or_number_and_oneofs_by_member() {
        let txn: TxnRequest = parse(
            r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":3,"value":"YmFy"}],
                "success":[{"request_put":{"key":"Zm9v","value":"YmFy"}}]}"#,
        )
        .unwrap();
        assert_eq!(txn.compare[0].target, compare::CompareTarget::Value as i32);
        assert_eq!(
            txn.compare[0].target_union,
            Some(compare::TargetUnion::Value(b"bar".to_vec()))
        );
        assert_eq!(txn.success.len(), 1);
        let watch: WatchRequest =
            parse(r#"{"create_request":{"key":"Zm9v","start_revision":3}}"#).unwrap();
        assert!(watch.request_union.is_some());
    }

    #[test]
    fn nulls_read_as_defaults_and_unknown_fields_are_ignored() {
        let c: CompactionRequest =
            parse(r#"{"revision":null,"physical":true,"unknown":{"x":1}}"#).unwrap();
        assert_eq!(c.revision, 0);
        assert!(c.physical);
    }

    #[test]
    fn wrong_types_are_invalid_argument() {
        let bad = parse::<RangeRequest>(r#"{"limit":"ten"}"#).unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        let bad = parse::<RangeRequest>(r#"{"key":"%%%"}"#).unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
    }

    fn body(chunks: &'static [&'static str]) -> Body {
        let chunks = chunks
            .iter()
            .map(|c| Ok::<_, std::io::Error>(Bytes::from(*c)));
        Body::from_stream(futures::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_body_carries_messages_split_anywhere() {
        let mut msgs = Messages::new(
            body(&[
                r#"{"key":"YQ=="} {"ke"#,
                r#"y":"Yg=="}"#,
                "\n",
                r#"{"key":"Yw=="}"#,
            ]),
            1 << 20,
        );
        let mut keys = vec![];
        while let Some(r) = msgs.next::<RangeRequest>().await.unwrap() {
            keys.push(r.key);
        }
        assert_eq!(keys, [b"a", b"b", b"c"]);
    }

    #[tokio::test]
    async fn an_empty_body_is_the_empty_message_and_truncation_is_refused() {
        let mut empty = Messages::new(body(&[" \n"]), 1 << 20);
        let r: RangeRequest = empty.first_or_default().await.unwrap();
        assert_eq!(r, RangeRequest::default());
        let mut cut = Messages::new(body(&[r#"{"key":"YQ=="#]), 1 << 20);
        let e = cut.first_or_default::<RangeRequest>().await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("malformed JSON"), "{}", e.message());
        let mut big = Messages::new(body(&[r#"{"key":"YWFhYWFhYWFh"}"#]), 8);
        let e = big.first_or_default::<RangeRequest>().await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn errors_take_grpc_gateway_shapes() {
        let s = Status::out_of_range("etcdserver: mvcc: required revision has been compacted");
        let resp = error(&s);
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"error":"etcdserver: mvcc: required revision has been compacted","code":11,"message":"etcdserver: mvcc: required revision has been compacted"}"#
        );
        let line = error_line(&Status::unavailable("etcdserver: no leader"));
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"etcdserver: no leader\",\"http_status\":\"Service Unavailable\"}}\n"
        );
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(
            http_status(Code::FailedPrecondition),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn a_streamed_message_is_one_result_line() {
        let line = result_line(&CompactionRequest {
            revision: 3,
            physical: false,
        });
        assert_eq!(&line[..], b"{\"result\":{\"revision\":\"3\"}}\n");
    }

    /// Request bodies as clients send them: one message, several back to back, nested
    /// messages, every JSON shape a field may take.
    fn gateway_seeds() -> Vec<Vec<u8>> {
        [
            r#"{"key":"Zm9v","value":"YmFy","lease":"7"}"#,
            r#"{"key":"Zm9v","range_end":"AA==","limit":10,"sort_order":"DESCEND","revision":"3"}"#,
            r#"{"compare":[{"key":"YQ==","target":"VALUE","result":"EQUAL","value":"MQ=="}],"success":[{"request_put":{"key":"YQ==","value":"Mg=="}}],"failure":[{"request_range":{"key":"YQ=="}}]}"#,
            r#"{"create_request":{"key":"Zm9v","start_revision":1,"prev_kv":true,"filters":["NOPUT"]}} {"progress_request":{}} {"cancel_request":{"watch_id":"1"}}"#,
            r#"{"ID":"123","TTL":"10"}"#,
            r#"{"name":"root","password":"x"}"#,
            "",
            "{}",
            r#"{"key":null,"nested":{"a":[1,2,{"b":null}]}}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    /// Decodes every message of a body as `T` until the body ends or fails.
    async fn drain<T: DeserializeOwned>(chunks: Vec<Bytes>, max: usize) {
        let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
        let mut messages = Messages::new(Body::from_stream(stream), max);
        for _ in 0..1000 {
            match messages.next::<T>().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
        panic!("a body of bounded size yielded 1000 messages");
    }

    /// Whatever bytes a client posts, in whatever chunks, the gateway's reader yields
    /// messages, the end, or an error with a gRPC status: never a panic or a hang.
    #[test]
    fn fuzz_gateway_bodies() {
        use proptest::prelude::*;
        use strata_engine::proto::etcdserverpb::{
            AuthenticateRequest, LeaseGrantRequest, PutRequest, RangeRequest, TxnRequest,
            WatchRequest,
        };
        let corpus = crate::fuzzing::corpus("gateway", gateway_seeds());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        proptest!(crate::fuzzing::config(), |(input in crate::fuzzing::inputs(corpus), split in 1usize..64)| {
            let chunks: Vec<Bytes> = input.chunks(split).map(Bytes::copy_from_slice).collect();
            rt.block_on(async {
                let max = 512;
                drain::<PutRequest>(chunks.clone(), max).await;
                drain::<RangeRequest>(chunks.clone(), max).await;
                drain::<TxnRequest>(chunks.clone(), max).await;
                drain::<WatchRequest>(chunks.clone(), max).await;
                drain::<LeaseGrantRequest>(chunks.clone(), max).await;
                drain::<AuthenticateRequest>(chunks, max).await;
            });
        });
    }
}
