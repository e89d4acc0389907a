//! etcd's v3 gRPC services over the driver. Every handler turns its request into an engine
//! [`Request`], runs it through [`Handle::call`] and maps errors to etcd's gRPC status code and
//! text (clients match on both). Requests the engine answers only on the leader (`LeaseKeepAlive`,
//! `LeaseTimeToLive`, `MemberPromote`, `MoveLeader`) are forwarded to the leader's client URL
//! once, so a follower gives the same answer the leader would.

pub mod auth;
pub mod cluster;
pub mod election;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod range;
pub mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use strata_engine::proto::etcdserverpb::ResponseHeader;
use strata_engine::request::{Request, Response};
use strata_engine::{Credential, EtcdError, GrpcCode};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::driver::Handle;

/// gRPC framing overhead etcd allows above `--max-request-bytes`.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Adds etcd's gRPC services over `ctx` to `builder` (tonic's `RoutesBuilder` in production,
/// madsim's `Server` in the simulator: both have `add_service`), each refusing requests
/// above `max_request_bytes` plus [`GRPC_OVERHEAD_BYTES`] as etcd does. The one list of the
/// client port's services, whichever runtime serves them.
#[macro_export]
macro_rules! add_client_services {
    ($builder:expr, $ctx:expr, $max_request_bytes:expr) => {{
        use $crate::api::pb::etcdserverpb::{
            auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
            lease_server::LeaseServer, maintenance_server::MaintenanceServer,
            watch_server::WatchServer,
        };
        use $crate::api::pb::v3electionpb::election_server::ElectionServer;
        use $crate::api::pb::v3lockpb::lock_server::LockServer;
        use $crate::api::{auth, cluster, election, kv, lease, lock, maintenance, watch};
        let ctx: &$crate::api::Ctx = $ctx;
        let max = $max_request_bytes + $crate::api::GRPC_OVERHEAD_BYTES;
        $builder
            .add_service(KvServer::new(kv::KvService(ctx.clone())).max_decoding_message_size(max))
            .add_service(
                WatchServer::new(watch::WatchService(ctx.clone())).max_decoding_message_size(max),
            )
            .add_service(
                LeaseServer::new(lease::LeaseService(ctx.clone())).max_decoding_message_size(max),
            )
            .add_service(
                ClusterServer::new(cluster::ClusterService(ctx.clone()))
                    .max_decoding_message_size(max),
            )
            .add_service(
                LockServer::new(lock::LockService(ctx.clone())).max_decoding_message_size(max),
            )
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
            )
    }};
}

/// The generated service stubs (messages come from `strata-engine`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod v3lockpb {
        tonic::include_proto!("v3lockpb");
    }
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
    }
}

/// Metadata key a forwarded request carries, so it is never forwarded twice.
const FORWARDED: &str = "strata-forwarded";

/// Metadata key the client listener sets to the CN of the verified client certificate when
/// `--client-cert-auth` is on (and strips from every request, so no client can claim one).
pub const CERT_USER: &str = "strata-cert-cn";

/// etcd's status for an engine error.
pub fn status(e: EtcdError) -> Status {
    Status::new(code(e.code()), e.to_string())
}

fn code(c: GrpcCode) -> tonic::Code {
    tonic::Code::from_i32(c as i32)
}

/// The auth token a client sent (`token` metadata, as etcd's clients send it).
pub fn token(md: &MetadataMap) -> Option<String> {
    md.get("token")
        .or_else(|| md.get("authorization"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The CN the client listener verified, if any (see [`CERT_USER`]).
fn cert_user(md: &MetadataMap) -> Option<String> {
    md.get(CERT_USER)
        .and_then(|v| v.to_str().ok())
        .filter(|cn| !cn.is_empty())
        .map(str::to_string)
}

/// Which tokens this member issues and accepts (`--auth-token`).
#[derive(Clone, Debug, Default)]
pub enum Tokens {
    #[default]
    Simple,
    Jwt(Arc<crate::jwt::JwtProvider>),
}

/// Dials the leader's client URL for forwarded requests: plain, or TLS with this member's
/// client identity (`crate::tls`); the simulator has only the plain one.
pub type LeaderDialer = Arc<dyn Fn(&str) -> Result<Channel, String> + Send + Sync>;

/// The largest chunk a range read aims at. A chunk is read on the member's one driver thread,
/// between other clients' requests; at 256 KiB it takes well under a millisecond there, where
/// etcd's 1.5 MiB `--max-request-bytes` default took several (measured: a concurrent small
/// get's p99 during 16 full reads of 200 MB).
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;

/// How range reads are served: the memory budget for responses in flight and the size a
/// chunk aims at (see [`range`]).
#[derive(Clone, Debug)]
pub struct Reads {
    pub budget: crate::read_budget::ReadBudget,
    pub chunk_bytes: usize,
    /// Keys in a range's first chunk: few, so a read learns its size before it holds much.
    pub first_chunk_keys: i64,
    /// Time between two chunks of a read. Zero on a real member, where reading, encoding and
    /// sending a chunk takes the time it takes; the simulator sets it, since there a chunk
    /// takes no simulated time and writes could never land between two chunks.
    pub chunk_pause: std::time::Duration,
    /// How long a RangeStream may wait for its client to take a message before it is cut and
    /// its budget released (`--grpc-keepalive-timeout`).
    pub stall_timeout: std::time::Duration,
}

impl Reads {
    /// `budget_bytes` for responses in flight (`--max-read-bytes-in-flight`), chunks of about
    /// `chunk_bytes` (etcd sizes RangeStream chunks by `--max-request-bytes`), at most
    /// [`MAX_CHUNK_BYTES`].
    pub fn new(budget_bytes: u64, chunk_bytes: usize) -> Reads {
        Reads {
            budget: crate::read_budget::ReadBudget::new(budget_bytes),
            chunk_bytes: chunk_bytes.clamp(1, MAX_CHUNK_BYTES),
            first_chunk_keys: 10,
            chunk_pause: std::time::Duration::ZERO,
            stall_timeout: crate::config::GrpcKeepalive::default().timeout,
        }
    }

    /// Cuts a RangeStream whose client takes nothing for `timeout` ([`Reads::stall_timeout`]).
    pub fn with_stall_timeout(mut self, timeout: std::time::Duration) -> Reads {
        self.stall_timeout = timeout;
        self
    }

    /// Waits `pause` between two chunks of a read (see [`Reads::chunk_pause`]).
    pub fn with_chunk_pause(mut self, pause: std::time::Duration) -> Reads {
        self.chunk_pause = pause;
        self
    }

    /// Starts every range with a chunk of `keys` keys (the simulator's stores are a handful of
    /// keys; one key per first chunk makes every range of two keys or more read in chunks).
    pub fn with_first_chunk_keys(mut self, keys: i64) -> Reads {
        self.first_chunk_keys = keys.max(1);
        self
    }

    /// The budget's use in Prometheus' text format.
    pub fn render_metrics(&self) -> String {
        let used = self.budget.usage();
        format!(
            "# HELP strata_read_bytes_in_flight_limit --max-read-bytes-in-flight: bytes of range responses being built and sent before large reads wait.\n\
             # TYPE strata_read_bytes_in_flight_limit gauge\n\
             strata_read_bytes_in_flight_limit {}\n\
             # HELP strata_read_bytes_in_flight Bytes of range responses being built and sent.\n\
             # TYPE strata_read_bytes_in_flight gauge\n\
             strata_read_bytes_in_flight {}\n\
             # HELP strata_reads_waiting_for_memory Large range reads waiting for room in the read budget.\n\
             # TYPE strata_reads_waiting_for_memory gauge\n\
             strata_reads_waiting_for_memory {}\n",
            used.limit, used.in_use, used.waiting
        )
    }
}

/// What every service shares: the driver handle and channels to the current leader.
#[derive(Clone)]
pub struct Ctx {
    pub handle: Handle,
    pub reads: Reads,
    /// bcrypt cost for new passwords (`--bcrypt-cost`).
    pub bcrypt_cost: u32,
    pub tokens: Tokens,
    dial_leader: LeaderDialer,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("member", &self.handle.shared.id)
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// A plain (non-TLS) lazy channel to `url`.
pub fn plain_channel(url: &str) -> Result<Channel, String> {
    Endpoint::from_shared(url.to_string())
        .map(|e| e.connect_lazy())
        .map_err(|e| e.to_string())
}

impl Ctx {
    pub fn new(handle: Handle, reads: Reads) -> Ctx {
        Ctx {
            handle,
            reads,
            bcrypt_cost: bcrypt::DEFAULT_COST,
            tokens: Tokens::Simple,
            dial_leader: Arc::new(plain_channel),
            channels: Arc::default(),
        }
    }

    /// Dials the leader with `dialer` (TLS client URLs need this member's client identity).
    pub fn with_leader_dialer(mut self, dialer: LeaderDialer) -> Ctx {
        self.dial_leader = dialer;
        self
    }

    /// Who sent a request (etcd's `AuthInfoFromCtx`): its token if it carries one (simple, or
    /// a JWT verified here), else the CN of its verified client certificate.
    pub fn credential(&self, md: &MetadataMap) -> Option<Credential> {
        if let Some(t) = token(md) {
            return Some(match &self.tokens {
                Tokens::Simple => Credential::SimpleToken(t),
                Tokens::Jwt(jwt) => {
                    let t = t.strip_prefix("Bearer ").unwrap_or(&t);
                    jwt.verify(t).unwrap_or(Credential::Rejected)
                }
            });
        }
        cert_user(md).map(|username| Credential::User {
            username,
            revision: None,
        })
    }

    pub async fn call(&self, request: Request, md: &MetadataMap) -> Result<Response, Status> {
        self.call_raw(request, md).await.map_err(status)
    }

    /// [`Ctx::call`] keeping the engine's error, for handlers that react to it (forward on
    /// `NotLeader`, etcd's TTL answers for an unknown lease...).
    pub async fn call_raw(
        &self,
        request: Request,
        md: &MetadataMap,
    ) -> Result<Response, EtcdError> {
        if self.is_learner() && !learner_serves(&request) {
            return Err(EtcdError::NotSupportedForLearner);
        }
        self.handle.call(request, self.credential(md)).await
    }

    /// A response header from this member's current view, for answers built here.
    pub fn header(&self) -> ResponseHeader {
        let shared = &self.handle.shared;
        let view = shared.view();
        ResponseHeader {
            cluster_id: shared.cluster_id,
            member_id: shared.id.0,
            revision: view.revision,
            raft_term: view.term.0,
        }
    }

    /// Whether this member is a learner (it serves only `Status` and serializable reads, and
    /// no streams but `Snapshot`, as etcd's learner interceptors enforce).
    pub fn is_learner(&self) -> bool {
        let shared = &self.handle.shared;
        shared.member(shared.id).is_some_and(|m| m.is_learner)
    }

    /// A channel to the leader's client URL, for a request only the leader answers. Refuses
    /// a request that was itself forwarded (leadership moved while it travelled). While no
    /// leader is known (an election, or its URLs not yet applied here) it waits up to an
    /// election timeout and a half, as etcd's `waitLeader` does.
    pub async fn leader_channel(&self, md: &MetadataMap) -> Result<Channel, Status> {
        if md.get(FORWARDED).is_some() {
            return Err(status(EtcdError::NotLeader));
        }
        let shared = &self.handle.shared;
        let patience =
            std::time::Duration::from_millis(shared.config.election_timeout_ms() * 3 / 2);
        let deadline = tokio::time::Instant::now() + patience;
        let url = loop {
            let url = shared
                .leader()
                .and_then(|leader| shared.member(leader))
                .and_then(|m| m.client_urls.first().cloned());
            match url {
                Some(url) => break url,
                None if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                None => return Err(status(EtcdError::NoLeader)),
            }
        };
        self.member_channel(&url)
    }

    /// A channel to a member's client URL (plain, or TLS with this member's client
    /// identity), dialed once and reused.
    pub fn member_channel(&self, url: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("channels lock");
        if let Some(ch) = channels.get(url) {
            return Ok(ch.clone());
        }
        let ch = (self.dial_leader)(url)
            .map_err(|e| Status::unavailable(format!("member URL {url}: {e}")))?;
        channels.insert(url.to_string(), ch.clone());
        Ok(ch)
    }
}

/// etcd's `isRPCSupportedForLearner`.
fn learner_serves(request: &Request) -> bool {
    match request {
        Request::Status(_) => true,
        Request::Range(r) => r.serializable,
        // A range read in chunks: its first chunk is as consistent as the client asked, the
        // later ones serializable at the first one's revision.
        Request::RangeChunk(c) => c.range.serializable,
        _ => false,
    }
}

impl Ctx {
    /// Wraps a message for forwarding to the leader, marked forwarded, with the caller's
    /// credential: its token as sent, or, for a client known only by its certificate's CN,
    /// a token for that user minted here — the leader sees this member's own certificate, not
    /// the client's, so the CN cannot travel as it came. (etcd forwards these requests over
    /// its peer port with no user at all, having checked them on the receiving member; here
    /// the receiving member has checked them too, and the leader checks them again as that
    /// user.) While auth is disabled no token is needed and none is minted.
    pub async fn forwarded<T>(
        &self,
        msg: T,
        md: &MetadataMap,
    ) -> Result<tonic::Request<T>, Status> {
        let mut req = tonic::Request::new(msg);
        let token = match (md.get("token"), cert_user(md)) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(user)) => self.certificate_token(&user).await?,
            (None, None) => None,
        };
        if let Some(t) = token {
            req.metadata_mut().insert("token", t);
        }
        req.metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        Ok(req)
    }

    /// A token for `user`, whom a verified client certificate names: a JWT signed here, or a
    /// simple token from a certificate login through raft (`certificate: true`: no password
    /// was involved). `None` while auth is disabled.
    async fn certificate_token(
        &self,
        user: &str,
    ) -> Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>, Status> {
        let status_req = Request::AuthStatus(Default::default());
        let auth = match self.handle.call(status_req, None).await.map_err(status)? {
            Response::AuthStatus(a) => a,
            other => return Err(Status::internal(format!("auth status answered {other:?}"))),
        };
        if !auth.enabled {
            return Ok(None);
        }
        let token = match &self.tokens {
            Tokens::Jwt(jwt) => jwt
                .assign(user, auth.auth_revision)
                .map_err(Status::failed_precondition)?,
            Tokens::Simple => {
                let login = strata_engine::proto::strata::internal::InternalAuthenticateRequest {
                    name: user.to_string(),
                    simple_token: auth::simple_token(),
                    auth_revision: auth.auth_revision,
                    certificate: true,
                };
                match self.handle.call(Request::Authenticate(login), None).await {
                    Ok(Response::Authenticate(a)) => a.token,
                    Ok(other) => {
                        return Err(Status::internal(format!("authenticate answered {other:?}")))
                    }
                    Err(e) => return Err(status(e)),
                }
            }
        };
        token
            .parse()
            .map(Some)
            .map_err(|_| Status::internal("a minted token is not valid metadata"))
    }
}

/// Extracts the expected response variant (the engine answers each request with its own kind).
#[macro_export]
macro_rules! expect_response {
    ($resp:expr, $variant:ident) => {
        match $resp {
            strata_engine::request::Response::$variant(r) => Ok(tonic::Response::new(r)),
            other => Err(tonic::Status::internal(format!(
                "engine answered {} with {other:?}",
                stringify!($variant)
            ))),
        }
    };
}
