//! The HTTP/JSON gateway on the client port: etcd's grpc-gateway, so `curl` scripts written
//! for etcd (`POST /v3/kv/range` with a JSON body) work unchanged.
//!
//! Design: the gateway owns no service logic. Each request is decoded from JSON
//! ([`json`]), sent as a gRPC call through the very `tonic` [`Routes`] the client port serves,
//! in process (no socket), and the answer is encoded back to JSON. Every service registered in
//! [`crate::http::grpc_routes`] is therefore reachable here with identical behaviour (auth,
//! leader forwarding, size limits, error codes and texts), and this module is one table:
//! HTTP path → gRPC method, message types, and the call's shape. A method the routes do not
//! serve answers gRPC `Unimplemented`, which reaches the client as HTTP 501.
//!
//! Contract, as etcd 3.5's grpc-gateway (v1) behaves:
//! - `POST` only; the body is one JSON message (empty body = empty message). Unknown paths
//!   under `/v3/` answer 404 `Not Found`, another method on a known path 405.
//! - The `Authorization` header travels as the call's `token` metadata.
//! - Unary answers are the message; a failed call answers the HTTP status of its gRPC code
//!   with `{"error":..,"code":..,"message":..}`.
//! - Streaming answers (watch, lease keep-alive, election observe, snapshot) are one
//!   `{"result":{..}}` line per message, headers sent with the first; an error ends the stream
//!   with `{"error":{"grpc_code":..,"http_code":..,"message":..,"http_status":..}}` (and sets
//!   the HTTP status if nothing was sent before it).
//! - The bidirectional endpoints read their body as a stream of JSON messages, each sent as it
//!   arrives. When the body ends the gateway half-closes the call, except for `/v3/watch`: etcd's
//!   watch server ignores a half-close and keeps watching until the client leaves, whereas
//!   Strata's `WatchService` cancels its watchers on one, so for watch the gateway holds the
//!   request stream open until the HTTP client disconnects (its response body is dropped).

mod json;
mod range;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post, MethodRouter};
use axum::Router;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use strata_engine::proto::{etcdserverpb as pb, v3electionpb as election, v3lockpb as lock};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::service::Routes;
use tonic_prost::ProstCodec;

/// gRPC framing overhead etcd allows above `--max-request-bytes`; a JSON body may be a third
/// larger again than its message (base64), plus the field names.
const JSON_OVERHEAD_BYTES: usize = 1024 * 1024;

/// What to do with the gRPC request stream once the HTTP body has ended.
#[derive(Clone, Copy, Debug)]
enum BodyEnd {
    /// Half-close, as grpc-gateway does (lease keep-alive answers, then ends).
    HalfClose,
    /// Keep the stream open until the HTTP client leaves (etcd's watch outlives a half-close).
    HoldUntilClientLeaves,
}

#[derive(Clone, Debug)]
struct Gateway {
    grpc: Routes,
    message_bytes_max: usize,
}

/// The `/v3/...` endpoints, dispatching into `grpc` (the client port's gRPC routes).
pub fn router(grpc: Routes, max_request_bytes: usize) -> Router {
    let gw = Gateway {
        grpc,
        message_bytes_max: max_request_bytes.saturating_mul(2) + JSON_OVERHEAD_BYTES,
    };
    routes().with_state(gw)
}

/// etcd's `google.api.http` bindings (`api/etcdserverpb/rpc.proto`, `v3lock.proto`,
/// `v3election.proto`), one line each.
#[rustfmt::skip]
fn routes() -> Router<Gateway> {
    use BodyEnd::*;
    Router::new()
        // KV
        .route("/v3/kv/range", range_unary())
        .route("/v3/kv/put", unary::<pb::PutRequest, pb::PutResponse>("/etcdserverpb.KV/Put"))
        .route("/v3/kv/deleterange", unary::<pb::DeleteRangeRequest, pb::DeleteRangeResponse>("/etcdserverpb.KV/DeleteRange"))
        .route("/v3/kv/txn", unary::<pb::TxnRequest, pb::TxnResponse>("/etcdserverpb.KV/Txn"))
        .route("/v3/kv/compaction", unary::<pb::CompactionRequest, pb::CompactionResponse>("/etcdserverpb.KV/Compact"))
        // Watch
        .route("/v3/watch", bidi::<pb::WatchRequest, pb::WatchResponse>("/etcdserverpb.Watch/Watch", HoldUntilClientLeaves))
        // Lease, with the `/v3/kv/lease/...` aliases etcd keeps from 3.2
        .route("/v3/lease/grant", unary::<pb::LeaseGrantRequest, pb::LeaseGrantResponse>("/etcdserverpb.Lease/LeaseGrant"))
        .route("/v3/lease/revoke", unary::<pb::LeaseRevokeRequest, pb::LeaseRevokeResponse>("/etcdserverpb.Lease/LeaseRevoke"))
        .route("/v3/kv/lease/revoke", unary::<pb::LeaseRevokeRequest, pb::LeaseRevokeResponse>("/etcdserverpb.Lease/LeaseRevoke"))
        .route("/v3/lease/keepalive", bidi::<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>("/etcdserverpb.Lease/LeaseKeepAlive", HalfClose))
        .route("/v3/lease/timetolive", unary::<pb::LeaseTimeToLiveRequest, pb::LeaseTimeToLiveResponse>("/etcdserverpb.Lease/LeaseTimeToLive"))
        .route("/v3/kv/lease/timetolive", unary::<pb::LeaseTimeToLiveRequest, pb::LeaseTimeToLiveResponse>("/etcdserverpb.Lease/LeaseTimeToLive"))
        .route("/v3/lease/leases", unary::<pb::LeaseLeasesRequest, pb::LeaseLeasesResponse>("/etcdserverpb.Lease/LeaseLeases"))
        .route("/v3/kv/lease/leases", unary::<pb::LeaseLeasesRequest, pb::LeaseLeasesResponse>("/etcdserverpb.Lease/LeaseLeases"))
        // Cluster
        .route("/v3/cluster/member/add", unary::<pb::MemberAddRequest, pb::MemberAddResponse>("/etcdserverpb.Cluster/MemberAdd"))
        .route("/v3/cluster/member/remove", unary::<pb::MemberRemoveRequest, pb::MemberRemoveResponse>("/etcdserverpb.Cluster/MemberRemove"))
        .route("/v3/cluster/member/update", unary::<pb::MemberUpdateRequest, pb::MemberUpdateResponse>("/etcdserverpb.Cluster/MemberUpdate"))
        .route("/v3/cluster/member/list", unary::<pb::MemberListRequest, pb::MemberListResponse>("/etcdserverpb.Cluster/MemberList"))
        .route("/v3/cluster/member/promote", unary::<pb::MemberPromoteRequest, pb::MemberPromoteResponse>("/etcdserverpb.Cluster/MemberPromote"))
        // Maintenance
        .route("/v3/maintenance/alarm", unary::<pb::AlarmRequest, pb::AlarmResponse>("/etcdserverpb.Maintenance/Alarm"))
        .route("/v3/maintenance/status", unary::<pb::StatusRequest, pb::StatusResponse>("/etcdserverpb.Maintenance/Status"))
        .route("/v3/maintenance/defragment", unary::<pb::DefragmentRequest, pb::DefragmentResponse>("/etcdserverpb.Maintenance/Defragment"))
        .route("/v3/maintenance/hash", unary::<pb::HashRequest, pb::HashResponse>("/etcdserverpb.Maintenance/Hash"))
        .route("/v3/maintenance/hashkv", unary::<pb::HashKvRequest, pb::HashKvResponse>("/etcdserverpb.Maintenance/HashKV"))
        .route("/v3/maintenance/snapshot", server_stream::<pb::SnapshotRequest, pb::SnapshotResponse>("/etcdserverpb.Maintenance/Snapshot"))
        .route("/v3/maintenance/transfer-leadership", unary::<pb::MoveLeaderRequest, pb::MoveLeaderResponse>("/etcdserverpb.Maintenance/MoveLeader"))
        .route("/v3/maintenance/downgrade", unary::<pb::DowngradeRequest, pb::DowngradeResponse>("/etcdserverpb.Maintenance/Downgrade"))
        // Auth
        .route("/v3/auth/enable", unary::<pb::AuthEnableRequest, pb::AuthEnableResponse>("/etcdserverpb.Auth/AuthEnable"))
        .route("/v3/auth/disable", unary::<pb::AuthDisableRequest, pb::AuthDisableResponse>("/etcdserverpb.Auth/AuthDisable"))
        .route("/v3/auth/status", unary::<pb::AuthStatusRequest, pb::AuthStatusResponse>("/etcdserverpb.Auth/AuthStatus"))
        .route("/v3/auth/authenticate", unary::<pb::AuthenticateRequest, pb::AuthenticateResponse>("/etcdserverpb.Auth/Authenticate"))
        .route("/v3/auth/user/add", unary::<pb::AuthUserAddRequest, pb::AuthUserAddResponse>("/etcdserverpb.Auth/UserAdd"))
        .route("/v3/auth/user/get", unary::<pb::AuthUserGetRequest, pb::AuthUserGetResponse>("/etcdserverpb.Auth/UserGet"))
        .route("/v3/auth/user/list", unary::<pb::AuthUserListRequest, pb::AuthUserListResponse>("/etcdserverpb.Auth/UserList"))
        .route("/v3/auth/user/delete", unary::<pb::AuthUserDeleteRequest, pb::AuthUserDeleteResponse>("/etcdserverpb.Auth/UserDelete"))
        .route("/v3/auth/user/changepw", unary::<pb::AuthUserChangePasswordRequest, pb::AuthUserChangePasswordResponse>("/etcdserverpb.Auth/UserChangePassword"))
        .route("/v3/auth/user/grant", unary::<pb::AuthUserGrantRoleRequest, pb::AuthUserGrantRoleResponse>("/etcdserverpb.Auth/UserGrantRole"))
        .route("/v3/auth/user/revoke", unary::<pb::AuthUserRevokeRoleRequest, pb::AuthUserRevokeRoleResponse>("/etcdserverpb.Auth/UserRevokeRole"))
        .route("/v3/auth/role/add", unary::<pb::AuthRoleAddRequest, pb::AuthRoleAddResponse>("/etcdserverpb.Auth/RoleAdd"))
        .route("/v3/auth/role/get", unary::<pb::AuthRoleGetRequest, pb::AuthRoleGetResponse>("/etcdserverpb.Auth/RoleGet"))
        .route("/v3/auth/role/list", unary::<pb::AuthRoleListRequest, pb::AuthRoleListResponse>("/etcdserverpb.Auth/RoleList"))
        .route("/v3/auth/role/delete", unary::<pb::AuthRoleDeleteRequest, pb::AuthRoleDeleteResponse>("/etcdserverpb.Auth/RoleDelete"))
        .route("/v3/auth/role/grant", unary::<pb::AuthRoleGrantPermissionRequest, pb::AuthRoleGrantPermissionResponse>("/etcdserverpb.Auth/RoleGrantPermission"))
        .route("/v3/auth/role/revoke", unary::<pb::AuthRoleRevokePermissionRequest, pb::AuthRoleRevokePermissionResponse>("/etcdserverpb.Auth/RoleRevokePermission"))
        // Lock and election (etcd's v3lock and v3election services)
        .route("/v3/lock/lock", unary::<lock::LockRequest, lock::LockResponse>("/v3lockpb.Lock/Lock"))
        .route("/v3/lock/unlock", unary::<lock::UnlockRequest, lock::UnlockResponse>("/v3lockpb.Lock/Unlock"))
        .route("/v3/election/campaign", unary::<election::CampaignRequest, election::CampaignResponse>("/v3electionpb.Election/Campaign"))
        .route("/v3/election/proclaim", unary::<election::ProclaimRequest, election::ProclaimResponse>("/v3electionpb.Election/Proclaim"))
        .route("/v3/election/leader", unary::<election::LeaderRequest, election::LeaderResponse>("/v3electionpb.Election/Leader"))
        .route("/v3/election/observe", server_stream::<election::LeaderRequest, election::LeaderResponse>("/v3electionpb.Election/Observe"))
        .route("/v3/election/resign", unary::<election::ResignRequest, election::ResignResponse>("/v3electionpb.Election/Resign"))
        .route("/v3/{*rest}", any(not_found))
}

/// Bounds shared by every message type the table names.
trait Req: Message + DeserializeOwned + Default + Send + Sync + 'static {}
impl<T: Message + DeserializeOwned + Default + Send + Sync + 'static> Req for T {}
trait Resp: Message + Serialize + Default + Send + Sync + 'static {}
impl<T: Message + Serialize + Default + Send + Sync + 'static> Resp for T {}

fn unary<Q: Req, A: Resp>(method: &'static str) -> MethodRouter<Gateway> {
    unary_answering::<Q, A, _>(method, |answer| json::message(answer.get_ref()))
}

/// `/v3/kv/range`: as [`unary`], but the answer keeps its key-values as wire bytes until its
/// JSON is written, a batch at a time ([`range`]); the call's extensions (its share of the
/// read budget) live as long as the body.
fn range_unary() -> MethodRouter<Gateway> {
    unary_answering::<pb::RangeRequest, crate::api::range::EncodedRangeResponse, _>(
        "/etcdserverpb.KV/Range",
        |answer| {
            let (_, answer, extensions) = answer.into_parts();
            range::response(answer, extensions)
        },
    )
}

/// A unary call whose answer `render` turns into the HTTP response.
fn unary_answering<Q, A, F>(method: &'static str, render: F) -> MethodRouter<Gateway>
where
    Q: Req,
    A: Message + Default + Send + Sync + 'static,
    F: Fn(tonic::Response<A>) -> Response + Clone + Send + Sync + 'static,
{
    endpoint(move |gw: Gateway, headers: HeaderMap, body: Body| {
        let render = render.clone();
        async move {
            let mut msgs = json::Messages::new(body, gw.message_bytes_max);
            let msg: Q = match msgs.first_or_default().await {
                Ok(m) => m,
                Err(s) => return json::error(&s),
            };
            let mut grpc = gw.client().await;
            let call = grpc.unary(
                request(msg, &headers),
                path(method),
                ProstCodec::<Q, A>::default(),
            );
            match call.await {
                Ok(answer) => render(answer),
                Err(s) => json::error(&s),
            }
        }
    })
}

fn server_stream<Q: Req, A: Resp>(method: &'static str) -> MethodRouter<Gateway> {
    endpoint(
        move |gw: Gateway, headers: HeaderMap, body: Body| async move {
            let mut msgs = json::Messages::new(body, gw.message_bytes_max);
            let msg: Q = match msgs.first_or_default().await {
                Ok(m) => m,
                Err(s) => return json::error(&s),
            };
            let mut grpc = gw.client().await;
            let call = grpc.server_streaming(
                request(msg, &headers),
                path(method),
                ProstCodec::<Q, A>::default(),
            );
            match call.await {
                Ok(answers) => streamed(answers.into_inner(), ()).await,
                Err(s) => json::error(&s),
            }
        },
    )
}

fn bidi<Q: Req, A: Resp>(method: &'static str, end: BodyEnd) -> MethodRouter<Gateway> {
    endpoint(
        move |gw: Gateway, headers: HeaderMap, body: Body| async move {
            let mut msgs = json::Messages::new(body, gw.message_bytes_max);
            // A first message that does not decode fails the request, as in grpc-gateway; later
            // ones that do not decode end the request stream.
            let first: Option<Q> = match msgs.next().await {
                Ok(m) => m,
                Err(s) => return json::error(&s),
            };
            let (tx, rx) = mpsc::channel(16);
            let (client_present, client_gone) = oneshot::channel::<()>();
            if let Some(m) = first {
                tx.send(m).await.expect("the receiver is held below");
            }
            tokio::spawn(feed(msgs, tx, client_gone, end));
            let outbound = ReceiverStream::new(rx);
            let mut grpc = gw.client().await;
            let call = grpc.streaming(
                request(outbound, &headers),
                path(method),
                ProstCodec::<Q, A>::default(),
            );
            match call.await {
                Ok(answers) => streamed(answers.into_inner(), client_present).await,
                Err(s) => json::error(&s),
            }
        },
    )
}

/// A `POST` route for `handle`; other methods answer 405 as grpc-gateway does.
fn endpoint<F, Fut>(handle: F) -> MethodRouter<Gateway>
where
    F: Fn(Gateway, HeaderMap, Body) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    post(move |State(gw): State<Gateway>, headers: HeaderMap, body: Body| handle(gw, headers, body))
        .fallback(|| async { (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n") })
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "Not Found\n")
}

impl Gateway {
    /// A gRPC client whose transport is the routes themselves. The server side enforces
    /// etcd's size limits, so the client imposes none of its own.
    async fn client(&self) -> tonic::client::Grpc<Routes> {
        let mut grpc = tonic::client::Grpc::new(self.grpc.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        if let Err(never) = grpc.ready().await {
            match never {}
        }
        grpc
    }
}

fn path(method: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(method)
}

/// The call with the client's credentials: etcd's gateway forwards `Authorization`, and
/// etcd's servers (and Strata's `api::token`) take it as the auth token.
fn request<T>(msg: T, headers: &HeaderMap) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if let Some(token) = token {
        req.metadata_mut().insert("token", token);
    }
    req
}

/// Sends the body's remaining messages into the call, then half-closes or holds it open.
async fn feed<Q: Req>(
    mut msgs: json::Messages,
    tx: mpsc::Sender<Q>,
    mut client_gone: oneshot::Receiver<()>,
    end: BodyEnd,
) {
    loop {
        tokio::select! {
            _ = &mut client_gone => return,
            next = msgs.next::<Q>() => match next {
                Ok(Some(m)) => {
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "gateway: request stream ended by a bad message");
                    break;
                }
            },
        }
    }
    if let BodyEnd::HoldUntilClientLeaves = end {
        let _ = client_gone.await;
        tracing::debug!("gateway: the client left, closing its stream");
    }
    drop(tx);
}

/// A streamed answer. Headers go out with the first message (or error), so a call that fails
/// at once answers with the error's HTTP status. `guard` lives as long as the response body:
/// dropping it tells [`feed`] the client has left.
async fn streamed<A: Resp, G: Send + 'static>(
    mut answers: tonic::Streaming<A>,
    guard: G,
) -> Response {
    let first = answers.next().await;
    let code = match &first {
        Some(Err(s)) => json::http_status(s.code()),
        _ => StatusCode::OK,
    };
    let lines = futures::stream::iter(first)
        .chain(answers)
        .scan(false, |failed, item| {
            if *failed {
                return std::future::ready(None);
            }
            let line = match item {
                Ok(msg) => json::result_line(&msg),
                Err(s) => {
                    *failed = true;
                    json::error_line(&s)
                }
            };
            std::future::ready(Some(line))
        });
    let body = guarded(lines, guard).map(Ok::<Bytes, std::convert::Infallible>);
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}

/// `stream`, carrying `guard` until it is dropped.
fn guarded<S: Stream + Send + 'static, G: Send + 'static>(
    stream: S,
    guard: G,
) -> impl Stream<Item = S::Item> + Send + 'static {
    stream.map(move |item| {
        let _guard = &guard;
        item
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorization_header_becomes_the_token() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "abc.123".parse().unwrap());
        let req = request((), &headers);
        assert_eq!(
            crate::api::token(req.metadata()).as_deref(),
            Some("abc.123")
        );
        assert_eq!(
            crate::api::token(request((), &HeaderMap::new()).metadata()),
            None
        );
    }
}
