//! The client listener's middleware that feeds [`super::grpc`]: a call is *started* when its
//! request arrives, each gRPC message is counted as it crosses the request body (received)
//! and the response body (sent), and the call is *handled* with the `grpc-status` it ends
//! with — in the response headers of a trailers-only answer, else in the trailers. Requests
//! that are not etcd gRPC methods (the JSON gateway, `/health`) pass untouched.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::Frame;

use super::grpc::MethodCounters;
use crate::driver::Shared;

/// Counts gRPC messages in a byte stream: each is a 5-byte prefix (compressed flag, length
/// big-endian) and its bytes.
#[derive(Debug, Default)]
struct MessageCounter {
    prefix: [u8; 5],
    prefix_len: usize,
    body_left: u64,
}

impl MessageCounter {
    /// Messages that start in `data`.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = data.len().min(self.body_left as usize);
                self.body_left -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = data.len().min(5 - self.prefix_len);
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == 5 {
                started += 1;
                self.prefix_len = 0;
                self.body_left = u64::from(u32::from_be_bytes(
                    self.prefix[1..5].try_into().expect("4 bytes"),
                ));
            }
        }
        started
    }
}

/// Which side of the call a body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

/// A body whose gRPC messages (and, for a response, closing status) are counted.
struct Counted {
    inner: Body,
    shared: Arc<Shared>,
    /// The method's place in [`super::grpc::GrpcMetrics`].
    method: usize,
    side: Side,
    counter: MessageCounter,
}

impl Counted {
    fn method(&self) -> &MethodCounters {
        self.shared.metrics.grpc.get(self.method)
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let messages = this.counter.feed(data);
                let metrics = &this.shared.metrics;
                let m = metrics.grpc.get(this.method);
                let (counter, bytes) = match this.side {
                    Side::Request => (&m.received, &metrics.client_grpc_received_bytes),
                    Side::Response => (&m.sent, &metrics.client_grpc_sent_bytes),
                };
                counter.fetch_add(messages, Ordering::Relaxed);
                bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            } else if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                this.method().handled(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn grpc_status(headers: &axum::http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The middleware (`axum::middleware::from_fn_with_state`).
pub async fn observe(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(index) = shared.metrics.grpc.index(request.uri().path()) else {
        return next.run(request).await;
    };
    let method = shared.metrics.grpc.get(index);
    method.started.fetch_add(1, Ordering::Relaxed);
    let counted = |body: Body, side: Side| {
        Body::new(Counted {
            inner: body,
            shared: Arc::clone(&shared),
            method: index,
            side,
            counter: MessageCounter::default(),
        })
    };
    let request = request.map(|body| counted(body, Side::Request));
    let response = next.run(request).await;
    if let Some(code) = grpc_status(response.headers()) {
        // A trailers-only answer: the call ended here.
        method.handled(code);
        return response;
    }
    response.map(|body| counted(body, Side::Response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_across_chunk_boundaries() {
        let message = |len: u32| {
            let mut m = vec![0u8];
            m.extend_from_slice(&len.to_be_bytes());
            m.extend(std::iter::repeat_n(7u8, len as usize));
            m
        };
        let mut stream = message(3);
        stream.extend(message(0));
        stream.extend(message(300));
        for split in [1, 2, 5, 7, 100, stream.len()] {
            let mut counter = MessageCounter::default();
            let total: u64 = stream.chunks(split).map(|c| counter.feed(c)).sum();
            assert_eq!(total, 3, "chunks of {split}");
        }
    }
}
