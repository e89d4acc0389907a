//! The client port: gRPC (HTTP/2) and the HTTP/JSON endpoints (HTTP/1.1) on one listener, as
//! etcd serves them. Connections are told apart by hyper's protocol detection; requests are
//! routed by path: `/etcdserverpb.*`, `/v3lockpb.*`, `/v3electionpb.*` to the gRPC services,
//! `/v3/...` to the JSON gateway ([`crate::gateway`]), and `/health`, `/version`, `/metrics`.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use strata_engine::node::ETCD_VERSION;
use strata_engine::proto::etcdserverpb::RangeRequest;
use strata_engine::request::Request;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::pb::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::api::pb::v3electionpb::election_server::ElectionServer;
use crate::api::pb::v3lockpb::lock_server::LockServer;
use crate::api::{auth, cluster, election, kv, lease, lock, maintenance, watch as watch_api, Ctx};

/// gRPC framing overhead etcd allows above `--max-request-bytes`.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The gRPC services, limited to etcd's receive size.
pub fn grpc_routes(ctx: &Ctx, max_request_bytes: usize) -> tonic::service::Routes {
    let max = max_request_bytes + GRPC_OVERHEAD_BYTES;
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(KvServer::new(kv::KvService(ctx.clone())).max_decoding_message_size(max))
        .add_service(
            WatchServer::new(watch_api::WatchService(ctx.clone())).max_decoding_message_size(max),
        )
        .add_service(
            LeaseServer::new(lease::LeaseService(ctx.clone())).max_decoding_message_size(max),
        )
        .add_service(
            ClusterServer::new(cluster::ClusterService(ctx.clone())).max_decoding_message_size(max),
        )
        .add_service(LockServer::new(lock::LockService(ctx.clone())).max_decoding_message_size(max))
        .add_service(
            ElectionServer::new(election::ElectionService(ctx.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            AuthServer::new(auth::AuthService {
                ctx: ctx.clone(),
                bcrypt_cost: ctx.bcrypt_cost,
            })
            .max_decoding_message_size(max),
        )
        .add_service(
            MaintenanceServer::new(maintenance::MaintenanceService(ctx.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(usize::MAX),
        );
    routes.routes()
}

/// Serves one client listener until shutdown.
pub async fn serve(
    listener: TcpListener,
    ctx: Ctx,
    max_request_bytes: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let grpc = grpc_routes(&ctx, max_request_bytes);
    let app = grpc
        .clone()
        .into_axum_router()
        .merge(crate::gateway::router(grpc, max_request_bytes))
        .merge(plain_routes(ctx.clone()));
    // Small answers must not wait for the client's delayed ACK (Nagle): etcd's listeners set
    // TCP_NODELAY too. Without it reads and watch events took ~40 ms each.
    let listener = axum::serve::ListenerExt::tap_io(listener, |s| {
        let _ = s.set_nodelay(true);
    });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "client listener failed");
    }
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
        ctx.handle.shared.metrics.render(),
    )
}
