//! The client port: gRPC (HTTP/2) and the HTTP/JSON endpoints (HTTP/1.1) on one listener, as
//! etcd serves them. Connections are told apart by hyper's protocol detection; requests are
//! routed by path: `/etcdserverpb.*`, `/v3lockpb.*`, `/v3electionpb.*` to the gRPC services,
//! `/v3/...` to the JSON gateway ([`crate::gateway`]), and `/health`, `/version`, `/metrics`.
//!
//! An `https://` listener runs each connection's TLS handshake in a task of its own (a slow or
//! hostile client never holds up the accept loop), with a deadline; a failed handshake is
//! logged, rate-limited, and touches no other connection. Every request has the
//! [`CERT_USER`] metadata stripped, and with `--client-cert-auth` set to the verified
//! certificate's CN, so the gRPC services can authorise a request without a token as that
//! user; the JSON gateway builds its own requests and never carries it, as in etcd.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use strata_engine::node::ETCD_VERSION;
use strata_engine::proto::etcdserverpb::RangeRequest;
use strata_engine::request::Request;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::api::CERT_USER;
use crate::tls::{HandshakeLog, Port, PortTls};

use crate::api::Ctx;

/// The gRPC services, limited to etcd's receive size.
pub fn grpc_routes(ctx: &Ctx, max_request_bytes: usize) -> tonic::service::Routes {
    let mut routes = tonic::service::Routes::builder();
    crate::add_client_services!(routes, ctx, max_request_bytes);
    routes.routes()
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream a client connection runs on: plain TCP or TLS over it.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Who is at the other end of a client connection.
#[derive(Clone, Debug)]
pub struct ClientConn {
    pub remote: std::net::SocketAddr,
    /// The CN of a verified client certificate, with `--client-cert-auth` on.
    pub cert_user: Option<String>,
}

/// The client port's connections, after their TLS handshake if the port has TLS.
pub struct ClientListener {
    ready: mpsc::Receiver<(Box<dyn Io>, ClientConn)>,
}

impl ClientListener {
    /// Accepts on `listener`; with `tls`, hands out only connections whose handshake
    /// succeeded. The accept task ends when this is dropped.
    pub fn new(
        listener: TcpListener,
        tls: Option<Arc<PortTls>>,
    ) -> std::io::Result<ClientListener> {
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(accept_loop(listener, tls, tx));
        Ok(ClientListener { ready })
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<PortTls>>,
    ready: mpsc::Sender<(Box<dyn Io>, ClientConn)>,
) {
    let refused = Arc::new(HandshakeLog::default());
    loop {
        let (stream, remote) = tokio::select! {
            biased;
            _ = ready.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off, never spin.
                    tracing::warn!(error = %e, "accepting a client connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small answers must not wait for the client's delayed ACK (Nagle): etcd's listeners
        // set TCP_NODELAY too. Without it reads and watch events took ~40 ms each.
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls.clone() else {
            let conn = ClientConn {
                remote,
                cert_user: None,
            };
            if ready
                .send((Box::new(crate::authority::AuthorityFix::new(stream)), conn))
                .await
                .is_err()
            {
                return;
            }
            continue;
        };
        let (ready, refused) = (ready.clone(), refused.clone());
        tokio::spawn(async move {
            match handshake(&tls, stream).await {
                Ok((io, cert_user)) => {
                    let _ = ready.send((io, ClientConn { remote, cert_user })).await;
                }
                Err(e) => refused.refused(Port::Client, remote, &e),
            }
        });
    }
}

async fn handshake(
    tls: &PortTls,
    stream: TcpStream,
) -> std::io::Result<(Box<dyn Io>, Option<String>)> {
    let accept = tls.acceptor().accept(stream);
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))??;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.as_ref().to_vec());
    let user = crate::tls::identity::cert_user(tls.info().cert_auth, leaf.as_deref());
    Ok((Box::new(stream), user))
}

/// Strips [`CERT_USER`] from every request and sets it from the connection's verified
/// certificate, so only the TLS layer can name a user that way.
async fn cert_user_metadata(
    axum::extract::ConnectInfo(conn): axum::extract::ConnectInfo<ClientConn>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let headers = request.headers_mut();
    headers.remove(CERT_USER);
    if let Some(user) = conn
        .cert_user
        .and_then(|u| axum::http::HeaderValue::from_str(&u).ok())
    {
        headers.insert(CERT_USER, user);
    }
    next.run(request).await
}

/// Serves one client listener until shutdown.
pub async fn serve(
    listener: ClientListener,
    ctx: Ctx,
    max_request_bytes: usize,
    max_streams: u32,
    keepalive: crate::config::GrpcKeepalive,
    shutdown: watch::Receiver<bool>,
) {
    let grpc = grpc_routes(&ctx, max_request_bytes);
    let app = grpc
        .clone()
        .into_axum_router()
        .layer(axum::middleware::map_response(crate::range_body::splice))
        .layer(axum::middleware::map_response(grpc_go_size_status))
        .layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::clone(&ctx.handle.shared),
            crate::metrics::observe::observe,
        ))
        .layer(axum::middleware::from_fn(cert_user_metadata))
        .merge(crate::gateway::router(grpc, max_request_bytes))
        .merge(plain_routes(ctx.clone()));
    serve_app(
        listener,
        app,
        max_streams,
        Some(keepalive),
        shutdown,
        "client",
    )
    .await;
}

/// Serves one `--listen-metrics-urls` listener until shutdown: `/metrics` and the health
/// endpoints only, as etcd's metrics listeners do.
pub async fn serve_metrics(listener: ClientListener, ctx: Ctx, shutdown: watch::Receiver<bool>) {
    serve_app(
        listener,
        plain_routes(ctx),
        u32::MAX,
        None,
        shutdown,
        "metrics",
    )
    .await;
}

/// Serves `app` on `listener` until `shutdown` turns true, then lets requests in flight end.
/// Each connection speaks HTTP/1.1 or HTTP/2 (gRPC), with at most `max_streams` concurrent
/// HTTP/2 streams (`--max-concurrent-streams`, announced in the SETTINGS frame as grpc-go
/// does) and, with `keepalive`, pings an idle HTTP/2 connection every interval and closes it
/// when a ping goes unanswered for the timeout (grpc-go's server keepalive, as etcd sets it);
/// it carries its [`ClientConn`] to the handlers as axum's `ConnectInfo`.
async fn serve_app(
    mut listener: ClientListener,
    app: Router,
    max_streams: u32,
    keepalive: Option<crate::config::GrpcKeepalive>,
    mut shutdown: watch::Receiver<bool>,
    what: &str,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use tower::ServiceExt as _;
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(max_streams);
    if let Some(keepalive) = keepalive {
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(keepalive.interval)
            .keep_alive_timeout(keepalive.timeout);
    }
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (io, conn) = tokio::select! {
            accepted = listener.ready.recv() => match accepted {
                Some(accepted) => accepted,
                None => break,
            },
            _ = shutdown.changed() => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(conn.clone()));
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "client connection ended");
            }
        });
    }
    tracing::debug!(
        listener = what,
        "listener stopped; waiting for requests in flight"
    );
    graceful.shutdown().await;
}

/// tonic refuses a message over the receive limit with `OUT_OF_RANGE` in its own words; etcd
/// (grpc-go) answers `RESOURCE_EXHAUSTED` "grpc: received message larger than max (N vs. M)",
/// and clients match on the code. Rewrites that one status wherever tonic puts it: in the
/// headers of a trailers-only answer (unary calls) or in the trailers that end a stream.
async fn grpc_go_size_status(response: axum::response::Response) -> axum::response::Response {
    use http_body_util::BodyExt as _;
    let (mut parts, body) = response.into_parts();
    rewrite_size_status(&mut parts.headers);
    let body = body.map_frame(|frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            rewrite_size_status(&mut trailers);
            http_body::Frame::trailers(trailers)
        }
        Err(frame) => frame,
    });
    axum::response::Response::from_parts(parts, axum::body::Body::new(body))
}

fn rewrite_size_status(headers: &mut axum::http::HeaderMap) {
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    if status.code() != tonic::Code::OutOfRange {
        return;
    }
    let Some((found, limit)) = tonic_too_large(status.message()) else {
        return;
    };
    let etcd = tonic::Status::resource_exhausted(format!(
        "grpc: received message larger than max ({found} vs. {limit})"
    ));
    headers.remove(tonic::Status::GRPC_MESSAGE);
    headers.remove(tonic::Status::GRPC_STATUS_DETAILS);
    if etcd.add_header(headers).is_err() {
        tracing::warn!("could not rewrite a message-size status");
    }
}

/// `(found, limit)` from tonic's "Error, decoded message length too large: found N bytes, the
/// limit is: M bytes".
fn tonic_too_large(message: &str) -> Option<(u64, u64)> {
    let rest = message.strip_prefix("Error, decoded message length too large: found ")?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, limit.parse().ok()?))
}

fn plain_routes(ctx: Ctx) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/readyz", get(health))
        .route("/livez", get(livez))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

/// etcd's `/health`: healthy when the member has a leader, no alarm is raised and a
/// linearizable read succeeds within a second.
async fn health(State(ctx): State<Ctx>) -> impl IntoResponse {
    let view = ctx.handle.shared.view();
    let reason = if view.alarms {
        Some("ALARM NOSPACE".to_string())
    } else if view.leader.is_none() {
        Some("RAFT NO LEADER".to_string())
    } else {
        let probe = Request::Range(RangeRequest {
            key: b"health".to_vec(),
            keys_only: true,
            limit: 1,
            ..Default::default()
        });
        match tokio::time::timeout(Duration::from_secs(1), ctx.handle.call(probe, None)).await {
            Ok(Ok(_)) => None,
            // Permission errors still prove the member serves reads.
            Ok(Err(e))
                if e.code() == strata_engine::GrpcCode::PermissionDenied
                    || e.code() == strata_engine::GrpcCode::Unauthenticated
                    || e.code() == strata_engine::GrpcCode::InvalidArgument =>
            {
                None
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("timed out reading from the cluster".to_string()),
        }
    };
    let (code, body) = match reason {
        None => (
            StatusCode::OK,
            r#"{"health":"true","reason":""}"#.to_string(),
        ),
        Some(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": r}).to_string(),
        ),
    };
    (code, [("content-type", "application/json")], body)
}

async fn livez() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn version() -> impl IntoResponse {
    let body = serde_json::json!({
        "etcdserver": ETCD_VERSION,
        "etcdcluster": ETCD_VERSION,
        "storage": ETCD_VERSION,
    });
    ([("content-type", "application/json")], body.to_string())
}

async fn metrics(State(ctx): State<Ctx>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        ctx.handle.shared.metrics.render() + &ctx.reads.render_metrics(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonic_size_refusal_becomes_grpc_go_resource_exhausted() {
        let mut headers = axum::http::HeaderMap::new();
        tonic::Status::out_of_range(
            "Error, decoded message length too large: found 3145739 bytes, the limit is: 2097152 bytes",
        )
        .add_header(&mut headers)
        .unwrap();
        rewrite_size_status(&mut headers);
        let status = tonic::Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "grpc: received message larger than max (3145739 vs. 2097152)"
        );
    }

    #[test]
    fn other_statuses_are_left_alone() {
        for status in [
            tonic::Status::out_of_range("etcdserver: mvcc: required revision is a future revision"),
            tonic::Status::invalid_argument("etcdserver: request is too large"),
        ] {
            let mut headers = axum::http::HeaderMap::new();
            status.add_header(&mut headers).unwrap();
            let before = headers.clone();
            rewrite_size_status(&mut headers);
            assert_eq!(headers, before);
        }
    }
}
