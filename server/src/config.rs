//! The `strata` command line: etcd's flag names, defaults and `ETCD_*` environment variables,
//! so an etcd deployment swaps the binary and keeps its flags. Checked up front: an unknown or
//! contradictory flag is a one-line error, never a half-started member.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use strata_engine::proto::strata::internal::MemberRecord;

#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: a distributed key-value store speaking etcd's v3 API",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub member: MemberFlags,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Snapshot tools.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Converts a stopped etcd member's data dir into a Strata member's (in place by default).
    Migrate(MigrateFlags),
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Rebuilds a member's data dir from a snapshot file (`etcdctl snapshot save`).
    Restore(RestoreFlags),
    /// Prints a snapshot file's hash, revision, total keys and size, as `etcdutl snapshot
    /// status` does.
    Status(StatusFlags),
}

#[derive(Debug, Args)]
pub struct MigrateFlags {
    /// The stopped etcd member's data dir (holding `member/snap/db` and `member/wal`).
    #[arg(long)]
    pub from_etcd_data_dir: PathBuf,
    /// etcd's `--wal-dir`, if it kept its WAL outside the data dir.
    #[arg(long)]
    pub wal_dir: Option<PathBuf>,
    /// Strata data dir to create; default: the etcd data dir itself (in place).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusFlags {
    /// Snapshot file (etcd's format).
    pub file: PathBuf,
    /// Output format: simple, json or table.
    #[arg(short = 'w', long = "write-out", default_value = "simple")]
    pub write_out: String,
}

#[derive(Debug, Args)]
pub struct RestoreFlags {
    /// Snapshot file written by `etcdctl snapshot save`.
    pub file: PathBuf,
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Data dir to create (must not exist). Default: `<name>.strata`.
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER",
        default_value = "default=http://localhost:2380"
    )]
    pub initial_cluster: String,
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Skip the SHA-256 integrity check of the snapshot file.
    #[arg(long)]
    pub skip_hash_check: bool,
}

#[derive(Debug, Args, Clone)]
pub struct MemberFlags {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory. Default: `<name>.strata`.
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Accepted for compatibility; the raft log lives in the data dir's database.
    #[arg(long, env = "ETCD_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (gRPC and HTTP/JSON on the same port).
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub listen_client_urls: String,
    /// Client URLs advertised to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub advertise_client_urls: String,
    /// URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub listen_peer_urls: String,
    /// This member's peer URLs, advertised to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping: `name=peer-url,...`.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster token, so two clusters started from the same flags differ.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// `new` to bootstrap a cluster, `existing` to join one.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    /// Time (ms) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (ms) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Number of committed entries between log compactions (snapshots); 0: the default.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Entries kept behind each log compaction for slow followers (etcd 3.5's flag).
    #[arg(long, env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES",
          default_value_t = strata_engine::limits::SNAPSHOT_CATCH_UP_ENTRIES)]
    pub experimental_snapshot_catchup_entries: u64,
    /// URLs to serve `/metrics` and the health endpoints on, besides the client URLs.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,
    /// Duration of periodic watch progress notifications (Go duration, e.g. 5s).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m"
    )]
    pub experimental_watch_progress_notify_interval: String,
    /// How often the leader replicates each lease's remaining TTL, so a leader change does not
    /// restart it from its full TTL (Go duration).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL",
        default_value = "5m"
    )]
    pub experimental_lease_checkpoint_interval: String,
    /// Accepted for compatibility: Strata always checkpoints leases.
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT", num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub experimental_enable_lease_checkpoint: bool,
    /// Accepted for compatibility: Strata always persists lease checkpoints.
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT_PERSIST", num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub experimental_enable_lease_checkpoint_persist: bool,
    /// Raise an alarm when the backend exceeds this many bytes (0: the 2 GiB default).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: i64,
    /// Largest request a client may send, in bytes.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: u32,
    /// Bytes of range responses being built and sent at once; a large read that would go over
    /// waits its turn (one larger than the whole budget is served alone). 0: 1/64 of physical
    /// memory, between 64 MiB and 1 GiB.
    #[arg(long, env = "ETCD_MAX_READ_BYTES_IN_FLIGHT", default_value_t = 0)]
    pub max_read_bytes_in_flight: u64,
    /// Most operations in one txn.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: u32,
    /// `periodic` (retention is a duration) or `revision` (retention is a revision count).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// How much history to keep; `0` turns auto-compaction off.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Auth token kind: only `simple` is supported.
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Seconds an unused simple token stays valid.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost for hashing passwords.
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,
    /// Logger: `zap` (structured, the only one).
    #[arg(long, env = "ETCD_LOGGER", default_value = "zap")]
    pub logger: String,
    /// `default`/`stderr`, `stdout`, or a file path; comma-separated.
    #[arg(long, env = "ETCD_LOG_OUTPUTS", default_value = "default")]
    pub log_outputs: String,
    /// `debug`, `info`, `warn`, `error`, `panic` or `fatal`.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Refuse reconfigurations that would lose quorum. Always on: `false` is refused.
    #[arg(long, env = "ETCD_STRICT_RECONFIG_CHECK", num_args = 0..=1, require_equals = true,
          default_value_t = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub strict_reconfig_check: bool,
    /// Compare this member's data with its peers' (HashKV at this member's revision) before
    /// serving clients; a difference stops the member.
    #[arg(long, env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub experimental_initial_corrupt_check: bool,
    /// How often the leader compares its data with the followers' (0s: never); a difference
    /// raises the CORRUPT alarm.
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME",
        default_value = "0s"
    )]
    pub experimental_corrupt_check_time: String,
    /// Have the leader compare the hash at the compacted revision with the followers'.
    #[arg(long, env = "ETCD_EXPERIMENTAL_COMPACT_HASH_CHECK_ENABLED", num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub experimental_compact_hash_check_enabled: bool,
    /// How often the compacted-revision hashes are compared.
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_COMPACT_HASH_CHECK_TIME",
        default_value = "1m"
    )]
    pub experimental_compact_hash_check_time: String,
    /// Most concurrent HTTP/2 streams (gRPC calls) one client connection may have open.
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,
    /// How often a client may ping the client port (accepted; not enforced).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_MIN_TIME", default_value = "5s")]
    pub grpc_keepalive_min_time: String,
    /// Idle time after which the member pings a client connection (0: the 2h default).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_INTERVAL", default_value = "2h")]
    pub grpc_keepalive_interval: String,
    /// How long a ping, or a RangeStream message, may wait for the client before the
    /// connection, or the stream, is cut (0: the 20s default).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s")]
    pub grpc_keepalive_timeout: String,
    /// Start as a one-member cluster from this member's data, discarding the other members
    /// (etcd's recovery when quorum is lost for good).
    #[arg(long, env = "ETCD_FORCE_NEW_CLUSTER", num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub force_new_cluster: bool,
    /// Accepted for compatibility; `/debug/pprof` is not served.
    #[arg(long, env = "ETCD_ENABLE_PPROF", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_pprof: bool,
    #[command(flatten)]
    pub tls: TlsFlags,
}

/// etcd's security flags (`embed.Config` ClientTLSInfo / PeerTLSInfo), same names, defaults
/// and `ETCD_*` variables. Booleans take Go's forms: `--client-cert-auth`,
/// `--client-cert-auth=true|false`.
#[derive(Debug, Args, Clone, Default)]
pub struct TlsFlags {
    /// Path to the client server TLS cert file.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Path to an explicit client TLS cert file this member uses when it dials a client port
    /// (forwarding to the leader); otherwise --cert-file.
    #[arg(long, env = "ETCD_CLIENT_CERT_FILE")]
    pub client_cert_file: Option<PathBuf>,
    /// Path to an explicit client TLS key file; otherwise --key-file.
    #[arg(long, env = "ETCD_CLIENT_KEY_FILE")]
    pub client_key_file: Option<PathBuf>,
    /// Enable client cert authentication: the certificate's CN is the auth user of a request
    /// that carries no token.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,
    /// Path to the client certificate revocation list file.
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA cert file.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Client TLS using generated certificates.
    #[arg(long, env = "ETCD_AUTO_TLS", num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub auto_tls: bool,
    /// Path to the peer server TLS cert file.
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Path to an explicit peer client TLS cert file; otherwise --peer-cert-file.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_FILE")]
    pub peer_client_cert_file: Option<PathBuf>,
    /// Path to an explicit peer client TLS key file; otherwise --peer-key-file.
    #[arg(long, env = "ETCD_PEER_CLIENT_KEY_FILE")]
    pub peer_client_key_file: Option<PathBuf>,
    /// Enable peer client cert authentication.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Allowed CN for inter-peer authentication.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,
    /// Path to the peer certificate revocation list file.
    #[arg(long, env = "ETCD_PEER_CRL_FILE")]
    pub peer_crl_file: Option<PathBuf>,
    /// Peer TLS using self-generated certificates.
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub peer_auto_tls: bool,
    /// Validity of the auto-generated certificates in years.
    #[arg(long, env = "ETCD_SELF_SIGNED_CERT_VALIDITY", default_value_t = 1)]
    pub self_signed_cert_validity: u32,
    /// Comma-separated list of supported TLS 1.2 cipher suites (Go's names); default: all
    /// that Strata offers.
    #[arg(long, env = "ETCD_CIPHER_SUITES")]
    pub cipher_suites: Option<String>,
    /// Minimum TLS version: TLS1.2 or TLS1.3.
    #[arg(long, env = "ETCD_TLS_MIN_VERSION", default_value = "TLS1.2")]
    pub tls_min_version: String,
    /// Maximum TLS version: TLS1.2 or TLS1.3 (default: the newest).
    #[arg(long, env = "ETCD_TLS_MAX_VERSION", default_value = "")]
    pub tls_max_version: String,
}

/// etcd's data-corruption checks: each compares HashKV answers of the members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CorruptionChecks {
    /// Before serving clients, at this member's revision.
    pub initial: bool,
    /// Every so often on the leader, at its current revision.
    pub periodic: Option<Duration>,
    /// Every so often on the leader, at its compacted revision.
    pub compact_hash: Option<Duration>,
}

/// When to compact history automatically.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// The validated configuration of one member.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// `--wal-dir`, accepted for compatibility and reported as ignored at start.
    pub wal_dir: Option<PathBuf>,
    pub listen_client: Vec<String>,
    /// `--listen-metrics-urls`: extra listeners serving only `/metrics` and the health
    /// endpoints.
    pub listen_metrics: Vec<String>,
    /// How often a watch created with `progress_notify` gets an empty progress response.
    pub progress_notify_interval: Duration,
    /// `--experimental-lease-checkpoint-interval` (checkpoints are always on, and persisted).
    pub lease_checkpoint_interval: Duration,
    pub corruption: CorruptionChecks,
    /// `--max-concurrent-streams`: HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    pub grpc_keepalive: GrpcKeepalive,
    /// `--force-new-cluster`: restart as a one-member cluster.
    pub force_new_cluster: bool,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer: Vec<String>,
    pub peer_urls: Vec<String>,
    /// The initial members, in flag order, with etcd's ids.
    pub initial_members: Vec<MemberRecord>,
    pub cluster_token: String,
    pub join_existing: bool,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    pub snapshot_count: u64,
    pub snapshot_catch_up_entries: u64,
    pub quota_backend_bytes: i64,
    pub max_request_bytes: u32,
    /// `--max-read-bytes-in-flight`; 0 for the default, which depends on the machine
    /// (`read_budget::default_limit`).
    pub max_read_bytes_in_flight: u64,
    pub max_txn_ops: u32,
    pub auto_compaction: AutoCompaction,
    pub auth_token_ttl: Duration,
    pub bcrypt_cost: u32,
    pub log_outputs: Vec<String>,
    pub log_level: String,
    pub security: Security,
}

/// One port's TLS, validated (etcd's `transport.TLSInfo`). Files are only named here; they
/// are read, checked against each other and re-read for every new connection by `crate::tls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// The certificate this port serves.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The certificate this member presents when it dials such a port (the `--client-cert-file`
    /// / `--peer-client-cert-file` override, else the serving certificate, as etcd does).
    pub dial_cert_file: PathBuf,
    pub dial_key_file: PathBuf,
    /// CAs a connecting party's certificate must chain to; when set, a certificate is required
    /// (etcd 3.4 requires one whenever a trusted CA is configured), and dialed servers are
    /// verified against it.
    pub trusted_ca_file: Option<PathBuf>,
    /// Client port: the certificate's CN names the auth user of a request with no token.
    /// Peer port: a peer must present a certificate.
    pub cert_auth: bool,
    pub crl_file: Option<PathBuf>,
    /// Peer port: the only CN a peer's certificate may carry (`--peer-cert-allowed-cn`).
    pub allowed_cn: Option<String>,
    /// `--auto-tls` / `--peer-auto-tls`: the certificate is generated at start (into the data
    /// dir's `fixtures/`), and dialers do not verify it, as etcd's self-signed mode does.
    pub self_signed: bool,
}

/// TLS versions and TLS 1.2 suites, shared by both ports (`--tls-min-version`,
/// `--tls-max-version`, `--cipher-suites`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPolicy {
    pub min_tls13: bool,
    pub max_tls12: bool,
    /// Go's names of the TLS 1.2 suites allowed; `None`: every suite Strata offers.
    pub cipher_suites: Option<Vec<String>>,
}

/// The TLS 1.2 suites Strata offers, by Go's names (`tls.CipherSuiteName`). Go also knows CBC,
/// RSA key exchange, 3DES and RC4 suites; rustls has none of them, so they are refused at start
/// rather than silently dropped.
pub const CIPHER_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Go's older names for the ChaCha20 suites, still accepted by etcd.
fn canonical_suite(name: &str) -> &str {
    match name {
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        other => other,
    }
}

/// How `--auth-token` mints and checks tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthTokenKind {
    /// etcd's default: random tokens registered on every member through raft.
    Simple,
    /// Signed JWTs: any member verifies one with the public key alone.
    Jwt(JwtOptions),
}

/// `--auth-token jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...` (etcd's
/// `auth.NewTokenProvider` options).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtOptions {
    pub sign_method: String,
    /// The key tokens are verified with (asymmetric methods).
    pub pub_key: Option<PathBuf>,
    /// The key tokens are signed with; for HS* methods the shared secret, and the only key.
    /// Without it a member of an asymmetric method verifies tokens but cannot issue them.
    pub priv_key: Option<PathBuf>,
    pub ttl: Duration,
}

/// etcd's JWT signing methods (`jwt.GetSigningMethod` names it accepts).
/// ES512 is refused: the JWT crate has no P-521.
pub const JWT_SIGN_METHODS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512",
];

/// Parses `--auth-token` as etcd does: `simple`, or `jwt` followed by comma-separated
/// `key=value` options.
pub fn parse_auth_token(value: &str) -> Result<AuthTokenKind, String> {
    let mut parts = value.split(',');
    let kind = parts.next().unwrap_or("").trim();
    match kind {
        "simple" => {
            if value.contains(',') {
                return Err(format!(
                    "--auth-token: simple tokens take no options: {value:?}"
                ));
            }
            return Ok(AuthTokenKind::Simple);
        }
        "jwt" => {}
        other => {
            return Err(format!(
                "--auth-token: unknown token type {other:?} (want \"simple\" or \"jwt,...\")"
            ))
        }
    }
    let (mut sign_method, mut pub_key, mut priv_key) = (None, None, None);
    let mut ttl = Duration::from_secs(300);
    for opt in parts.map(str::trim).filter(|o| !o.is_empty()) {
        let (k, v) = opt
            .split_once('=')
            .ok_or_else(|| format!("--auth-token: option {opt:?} is not key=value"))?;
        match k {
            "sign-method" => sign_method = Some(v.to_string()),
            "pub-key" => pub_key = Some(PathBuf::from(v)),
            "priv-key" => priv_key = Some(PathBuf::from(v)),
            "ttl" => {
                ttl = parse_duration(v).ok_or_else(|| {
                    format!("--auth-token: invalid ttl {v:?} (a duration such as 5m)")
                })?
            }
            other => return Err(format!("--auth-token: unknown jwt option {other:?}")),
        }
    }
    let sign_method = sign_method
        .ok_or_else(|| "--auth-token: jwt needs sign-method=... (RS256, ES256, ...)".to_string())?;
    if !JWT_SIGN_METHODS.contains(&sign_method.as_str()) {
        return Err(format!(
            "--auth-token: unsupported sign-method {sign_method:?} (want one of {})",
            JWT_SIGN_METHODS.join(", ")
        ));
    }
    if sign_method.starts_with("HS") {
        if priv_key.is_none() {
            return Err(format!(
                "--auth-token: {sign_method} needs priv-key=FILE (the shared secret)"
            ));
        }
    } else if pub_key.is_none() {
        return Err(format!(
            "--auth-token: {sign_method} needs pub-key=FILE (the key tokens are verified with)"
        ));
    }
    Ok(AuthTokenKind::Jwt(JwtOptions {
        sign_method,
        pub_key,
        priv_key,
        ttl,
    }))
}

/// The member's security settings, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Security {
    /// TLS of the `https://` client URLs.
    pub client: Option<TlsInfo>,
    /// TLS of the `https://` peer URLs, and of the streams this member dials to peers.
    pub peer: Option<TlsInfo>,
    pub policy: TlsPolicy,
    /// Years the `--auto-tls` / `--peer-auto-tls` certificates are valid.
    pub self_signed_validity_years: u32,
    pub auth_token: AuthTokenKind,
}

impl Default for Security {
    fn default() -> Security {
        Security {
            client: None,
            peer: None,
            policy: TlsPolicy {
                min_tls13: false,
                max_tls12: false,
                cipher_suites: None,
            },
            self_signed_validity_years: 1,
            auth_token: AuthTokenKind::Simple,
        }
    }
}

fn tls_version(flag: &str, value: &str) -> Result<Option<bool>, String> {
    match value {
        "" => Ok(None),
        "TLS1.2" => Ok(Some(false)),
        "TLS1.3" => Ok(Some(true)),
        other => Err(format!(
            "--{flag}: unexpected TLS version {other:?} (must be one of: TLS1.2, TLS1.3)"
        )),
    }
}

/// A certificate and its key: both or neither.
fn pair(
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    cert_flag: &str,
    key_flag: &str,
) -> Result<Option<(PathBuf, PathBuf)>, String> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
        (None, None) => Ok(None),
        (Some(c), None) => Err(format!(
            "--{cert_flag} {} is set but --{key_flag} is not: both are needed",
            c.display()
        )),
        (None, Some(k)) => Err(format!(
            "--{key_flag} {} is set but --{cert_flag} is not: both are needed",
            k.display()
        )),
    }
}

/// What one port's flags say, before the URLs decide whether TLS is used.
struct PortFlags<'a> {
    /// `client` or `peer`, for messages.
    port: &'a str,
    /// Flag names, for messages: cert, key, trusted CA, cert auth.
    names: [&'a str; 4],
    serve: Option<(PathBuf, PathBuf)>,
    dial: Option<(PathBuf, PathBuf)>,
    trusted_ca_file: Option<PathBuf>,
    cert_auth: bool,
    crl_file: Option<PathBuf>,
    allowed_cn: Option<String>,
    auto: bool,
}

impl PortFlags<'_> {
    /// etcd's checks for one port: `https://` URLs need a certificate (or auto TLS), and
    /// certificate auth needs a CA. Certificates given with only `http://` URLs are ignored,
    /// as etcd ignores them.
    fn validate(
        self,
        urls: &[&String],
        data_dir_fixtures: &std::path::Path,
    ) -> Result<Option<TlsInfo>, String> {
        let [cert_flag, key_flag, ca_flag, auth_flag] = self.names;
        let https: Vec<&&String> = urls.iter().filter(|u| u.starts_with("https://")).collect();
        if self.cert_auth && self.trusted_ca_file.is_none() && !self.auto {
            return Err(format!(
                "--{auth_flag} needs --{ca_flag}: the CA client certificates are checked against"
            ));
        }
        if https.is_empty() {
            return Ok(None);
        }
        let (cert_file, key_file, self_signed) = match (self.serve, self.auto) {
            (Some((c, k)), _) => (c, k, false),
            (None, true) => (
                data_dir_fixtures.join(self.port).join("cert.pem"),
                data_dir_fixtures.join(self.port).join("key.pem"),
                true,
            ),
            (None, false) => {
                return Err(format!(
                    "TLS key/cert (--{cert_flag}, --{key_flag}) must be provided for {} url {} with HTTPS scheme",
                    self.port, https[0]
                ))
            }
        };
        let (dial_cert_file, dial_key_file) = self
            .dial
            .unwrap_or_else(|| (cert_file.clone(), key_file.clone()));
        Ok(Some(TlsInfo {
            cert_file,
            key_file,
            dial_cert_file,
            dial_key_file,
            trusted_ca_file: self.trusted_ca_file,
            cert_auth: self.cert_auth,
            crl_file: self.crl_file,
            allowed_cn: self.allowed_cn,
            self_signed,
        }))
    }
}

impl TlsFlags {
    /// Checks the security flags against each other and the URLs (files are read at start).
    pub fn validate(
        &self,
        client_urls: &[&String],
        peer_urls: &[&String],
        data_dir: &std::path::Path,
        auth_token: &str,
    ) -> Result<Security, String> {
        let fixtures = data_dir.join("fixtures");
        let client = PortFlags {
            port: "client",
            names: [
                "cert-file",
                "key-file",
                "trusted-ca-file",
                "client-cert-auth",
            ],
            serve: pair(&self.cert_file, &self.key_file, "cert-file", "key-file")?,
            dial: pair(
                &self.client_cert_file,
                &self.client_key_file,
                "client-cert-file",
                "client-key-file",
            )?,
            trusted_ca_file: self.trusted_ca_file.clone(),
            cert_auth: self.client_cert_auth,
            crl_file: self.client_crl_file.clone(),
            allowed_cn: None,
            auto: self.auto_tls,
        }
        .validate(client_urls, &fixtures)?;
        let peer = PortFlags {
            port: "peer",
            names: [
                "peer-cert-file",
                "peer-key-file",
                "peer-trusted-ca-file",
                "peer-client-cert-auth",
            ],
            serve: pair(
                &self.peer_cert_file,
                &self.peer_key_file,
                "peer-cert-file",
                "peer-key-file",
            )?,
            dial: pair(
                &self.peer_client_cert_file,
                &self.peer_client_key_file,
                "peer-client-cert-file",
                "peer-client-key-file",
            )?,
            trusted_ca_file: self.peer_trusted_ca_file.clone(),
            cert_auth: self.peer_client_cert_auth,
            crl_file: self.peer_crl_file.clone(),
            allowed_cn: self
                .peer_cert_allowed_cn
                .clone()
                .filter(|cn| !cn.is_empty()),
            auto: self.peer_auto_tls,
        }
        .validate(peer_urls, &fixtures)?;
        let min = tls_version("tls-min-version", &self.tls_min_version)?.unwrap_or(false);
        let max = tls_version("tls-max-version", &self.tls_max_version)?;
        if min && max == Some(false) {
            return Err("--tls-min-version TLS1.3 is above --tls-max-version TLS1.2".into());
        }
        let cipher_suites = match &self.cipher_suites {
            None => None,
            Some(list) if list.trim().is_empty() => None,
            Some(list) => {
                if min {
                    return Err("--cipher-suites cannot be configured when only TLS1.3 is enabled (TLS 1.3 suites are fixed)".into());
                }
                let mut names = Vec::new();
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let name = canonical_suite(name);
                    if !CIPHER_SUITES.contains(&name) {
                        return Err(format!(
                            "--cipher-suites: unsupported cipher suite {name:?} (Strata offers {})",
                            CIPHER_SUITES.join(", ")
                        ));
                    }
                    names.push(name.to_string());
                }
                Some(names)
            }
        };
        if self.self_signed_cert_validity == 0 {
            return Err("--self-signed-cert-validity must be at least 1 (years)".into());
        }
        Ok(Security {
            client,
            peer,
            policy: TlsPolicy {
                min_tls13: min,
                max_tls12: max == Some(false),
                cipher_suites,
            },
            self_signed_validity_years: self.self_signed_cert_validity,
            auth_token: parse_auth_token(auth_token)?,
        })
    }
}

fn split_urls(flag: &str, value: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(format!("--{flag} must not be empty"));
    }
    for u in &urls {
        let Some(rest) = u
            .strip_prefix("http://")
            .or_else(|| u.strip_prefix("https://"))
        else {
            return Err(format!("--{flag}: URL scheme must be http or https: {u}"));
        };
        let host_port = rest.trim_end_matches('/');
        if host_port
            .rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return Err(format!(
                "--{flag}: URL address does not have the form \"host:port\": {u}"
            ));
        }
    }
    Ok(urls)
}

/// etcd's member id: the first 8 bytes of SHA-1 over the sorted peer URLs and the cluster token.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = sha1_smol::Sha1::new();
    h.update(urls.concat().as_bytes());
    h.update(token.as_bytes());
    u64::from_be_bytes(h.digest().bytes()[..8].try_into().expect("8 bytes"))
}

/// etcd's cluster id: the first 8 bytes of SHA-1 over the sorted member ids.
pub fn cluster_id(members: &[MemberRecord]) -> u64 {
    let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    let mut h = sha1_smol::Sha1::new();
    for id in ids {
        h.update(&id.to_be_bytes());
    }
    u64::from_be_bytes(h.digest().bytes()[..8].try_into().expect("8 bytes"))
}

/// Parses `name=url,name=url2,other=url3` into members (one member may list several URLs).
pub fn parse_initial_cluster(value: &str, token: &str) -> Result<Vec<MemberRecord>, String> {
    let mut members: Vec<MemberRecord> = Vec::new();
    for part in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster: {part:?} is not name=url"))?;
        let url = split_urls("initial-cluster", url)?.remove(0);
        match members.iter_mut().find(|m| m.name == name) {
            Some(m) => m.peer_urls.push(url),
            None => members.push(MemberRecord {
                id: 0,
                name: name.to_string(),
                peer_urls: vec![url],
                client_urls: vec![],
                is_learner: false,
            }),
        }
    }
    if members.is_empty() {
        return Err("--initial-cluster must not be empty".into());
    }
    for m in &mut members {
        m.id = member_id(&m.peer_urls, token);
    }
    let mut all_urls: Vec<&String> = members.iter().flat_map(|m| &m.peer_urls).collect();
    all_urls.sort();
    if all_urls.windows(2).any(|w| w[0] == w[1]) {
        return Err("--initial-cluster has duplicate peer URLs".into());
    }
    Ok(members)
}

fn parse_auto_compaction(mode: &str, retention: &str) -> Result<AutoCompaction, String> {
    let retention = retention.trim();
    match mode {
        "periodic" => {
            if retention == "0" || retention.is_empty() {
                return Ok(AutoCompaction::Off);
            }
            // A bare number means hours, as in etcd.
            if let Ok(hours) = retention.parse::<u64>() {
                return Ok(AutoCompaction::Periodic(Duration::from_secs(hours * 3600)));
            }
            parse_duration(retention)
                .map(AutoCompaction::Periodic)
                .ok_or_else(|| {
                    format!("--auto-compaction-retention: invalid duration {retention:?}")
                })
        }
        "revision" => match retention.parse::<i64>() {
            Ok(0) => Ok(AutoCompaction::Off),
            Ok(n) if n > 0 => Ok(AutoCompaction::Revision(n)),
            _ => Err(format!(
                "--auto-compaction-retention: {retention:?} is not a revision count"
            )),
        },
        other => Err(format!(
            "--auto-compaction-mode: unknown mode {other:?} (want \"periodic\" or \"revision\")"
        )),
    }
}

impl MemberFlags {
    fn corruption_checks(&self) -> Result<CorruptionChecks, String> {
        // Zero ("0", "0s") turns a check off.
        let duration = |flag: &str, value: &str| match parse_duration(value) {
            Some(d) => Ok(d),
            None if value.starts_with('0')
                && value
                    .trim_start_matches(['0', '.'])
                    .chars()
                    .all(|c| c.is_ascii_alphabetic()) =>
            {
                Ok(Duration::ZERO)
            }
            None => Err(format!("--{flag}: invalid duration {value:?} (e.g. 5m)")),
        };
        let periodic = duration(
            "experimental-corrupt-check-time",
            &self.experimental_corrupt_check_time,
        )?;
        let compact = duration(
            "experimental-compact-hash-check-time",
            &self.experimental_compact_hash_check_time,
        )?;
        if self.experimental_compact_hash_check_enabled && compact.is_zero() {
            return Err("--experimental-compact-hash-check-time must be positive".into());
        }
        Ok(CorruptionChecks {
            initial: self.experimental_initial_corrupt_check,
            periodic: (!periodic.is_zero()).then_some(periodic),
            compact_hash: self
                .experimental_compact_hash_check_enabled
                .then_some(compact),
        })
    }
}

/// etcd's `--grpc-keepalive-*` flags (grpc-go's server keepalive parameters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcKeepalive {
    /// `--grpc-keepalive-min-time`: accepted for compatibility; a client's pings are
    /// answered however often they come (grpc-go would send `too_many_pings`).
    pub min_time: Duration,
    /// `--grpc-keepalive-interval`: idle time before the member pings a client connection.
    pub interval: Duration,
    /// `--grpc-keepalive-timeout`: how long a ping may go unanswered before the connection is
    /// closed; a RangeStream whose client takes no message for this long is cut too.
    pub timeout: Duration,
}

impl Default for GrpcKeepalive {
    fn default() -> GrpcKeepalive {
        GrpcKeepalive {
            min_time: Duration::from_secs(5),
            interval: Duration::from_secs(2 * 3600),
            timeout: Duration::from_secs(20),
        }
    }
}

impl GrpcKeepalive {
    /// The three flags; a zero takes the default, as etcd passes a zero to grpc-go.
    fn from_flags(min_time: &str, interval: &str, timeout: &str) -> Result<GrpcKeepalive, String> {
        let defaults = GrpcKeepalive::default();
        let duration = |flag: &str, value: &str, default: Duration| match value.trim() {
            "0" | "0s" => Ok(default),
            v => parse_duration(v)
                .ok_or_else(|| format!("--{flag}: invalid duration {value:?} (e.g. 20s)")),
        };
        Ok(GrpcKeepalive {
            min_time: duration("grpc-keepalive-min-time", min_time, defaults.min_time)?,
            interval: duration("grpc-keepalive-interval", interval, defaults.interval)?,
            timeout: duration("grpc-keepalive-timeout", timeout, defaults.timeout)?,
        })
    }
}

/// Go-style durations: `1h`, `30m`, `10s`, `1h30m`, `500ms`.
fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += Duration::from_secs_f64(value * unit);
        rest = &rest[unit_len..];
    }
    (total > Duration::ZERO).then_some(total)
}

/// A member's configuration from a command line (`args[0]` is the program name), as `strata`
/// reads its own: the simulator starts its members through this too.
pub fn member_config_from_args<I, T>(args: I) -> Result<MemberConfig, String>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::Parser as _;
    let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
    cli.member.validate()
}

impl MemberFlags {
    /// Checks the flags against each other, as etcd does before starting.
    pub fn validate(&self) -> Result<MemberConfig, String> {
        let listen_client = split_urls("listen-client-urls", &self.listen_client_urls)?;
        let advertise_client_urls =
            split_urls("advertise-client-urls", &self.advertise_client_urls)?;
        let listen_peer = split_urls("listen-peer-urls", &self.listen_peer_urls)?;
        let peer_urls = split_urls(
            "initial-advertise-peer-urls",
            &self.initial_advertise_peer_urls,
        )?;
        let join_existing = match self.initial_cluster_state.as_str() {
            "new" => false,
            "existing" => true,
            other => {
                return Err(format!(
                "--initial-cluster-state: unknown state {other:?} (want \"new\" or \"existing\")"
            ))
            }
        };
        let initial_cluster = self.initial_cluster.clone().unwrap_or_else(|| {
            format!(
                "{}={}",
                self.name,
                peer_urls.join(&format!(",{}=", self.name))
            )
        });
        let initial_members = parse_initial_cluster(&initial_cluster, &self.initial_cluster_token)?;
        let me = initial_members
            .iter()
            .find(|m| m.name == self.name)
            .ok_or_else(|| {
                format!(
                    "couldn't find local name {:?} in the initial cluster configuration",
                    self.name
                )
            })?;
        let mut mine = me.peer_urls.clone();
        mine.sort();
        let mut advertised = peer_urls.clone();
        advertised.sort();
        if mine != advertised {
            return Err(format!(
                "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
                self.name,
                me.peer_urls.join(","),
                peer_urls.join(",")
            ));
        }
        if self.heartbeat_interval == 0 {
            return Err("--heartbeat-interval must be positive".into());
        }
        if self.election_timeout < 5 * self.heartbeat_interval {
            return Err(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout, self.heartbeat_interval
            ));
        }
        if self.election_timeout > 50_000 {
            return Err(format!(
                "--election-timeout[{}ms] is too long, and should be set less than 50000ms",
                self.election_timeout
            ));
        }
        // etcd: 0 means the default.
        let snapshot_count = match self.snapshot_count {
            0 => strata_engine::limits::DEFAULT_SNAPSHOT_COUNT,
            n => n,
        };
        let listen_metrics = match self.listen_metrics_urls.trim() {
            "" => Vec::new(),
            urls => split_urls("listen-metrics-urls", urls)?,
        };
        let progress_notify = parse_duration(&self.experimental_watch_progress_notify_interval)
            .ok_or_else(|| {
                format!(
                    "--experimental-watch-progress-notify-interval: invalid duration {:?} (e.g. 5s)",
                    self.experimental_watch_progress_notify_interval
                )
            })?;
        let lease_checkpoint_interval =
            parse_duration(&self.experimental_lease_checkpoint_interval).ok_or_else(|| {
                format!(
                    "--experimental-lease-checkpoint-interval: invalid duration {:?} (e.g. 5m)",
                    self.experimental_lease_checkpoint_interval
                )
            })?;
        if !self.strict_reconfig_check {
            return Err("--strict-reconfig-check=false is not supported: strata always refuses a reconfiguration that would lose quorum".into());
        }
        let corruption = self.corruption_checks()?;
        if self.max_concurrent_streams == 0 {
            return Err("--max-concurrent-streams must be positive".into());
        }
        let grpc_keepalive = GrpcKeepalive::from_flags(
            &self.grpc_keepalive_min_time,
            &self.grpc_keepalive_interval,
            &self.grpc_keepalive_timeout,
        )?;
        if self.quota_backend_bytes < 0 {
            return Err("--quota-backend-bytes must not be negative".into());
        }
        if self.max_request_bytes == 0 || self.max_txn_ops == 0 {
            return Err("--max-request-bytes and --max-txn-ops must be positive".into());
        }
        let auto_compaction =
            parse_auto_compaction(&self.auto_compaction_mode, &self.auto_compaction_retention)?;
        if !(4..=31).contains(&self.bcrypt_cost) {
            return Err(format!(
                "--bcrypt-cost: {} is outside 4..=31",
                self.bcrypt_cost
            ));
        }
        if self.logger != "zap" {
            return Err(format!(
                "--logger: unknown logger {:?} (want \"zap\")",
                self.logger
            ));
        }
        match self.log_level.as_str() {
            "debug" | "info" | "warn" | "error" | "dpanic" | "panic" | "fatal" => {}
            other => return Err(format!("--log-level: unknown level {other:?}")),
        }
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.strata", self.name)));
        let client_urls: Vec<&String> = listen_client
            .iter()
            .chain(&advertise_client_urls)
            .chain(&listen_metrics)
            .collect();
        let all_peer_urls: Vec<&String> = listen_peer
            .iter()
            .chain(&peer_urls)
            .chain(initial_members.iter().flat_map(|m| &m.peer_urls))
            .collect();
        let security =
            self.tls
                .validate(&client_urls, &all_peer_urls, &data_dir, &self.auth_token)?;
        Ok(MemberConfig {
            name: self.name.clone(),
            data_dir,
            wal_dir: self.wal_dir.clone(),
            listen_client,
            advertise_client_urls,
            listen_peer,
            peer_urls,
            initial_members,
            cluster_token: self.initial_cluster_token.clone(),
            join_existing,
            heartbeat_ms: self.heartbeat_interval,
            election_ms: self.election_timeout,
            snapshot_count,
            snapshot_catch_up_entries: self.experimental_snapshot_catchup_entries,
            listen_metrics,
            progress_notify_interval: progress_notify,
            lease_checkpoint_interval,
            corruption,
            max_concurrent_streams: self.max_concurrent_streams,
            grpc_keepalive,
            force_new_cluster: self.force_new_cluster,
            quota_backend_bytes: self.quota_backend_bytes,
            max_request_bytes: self.max_request_bytes,
            max_read_bytes_in_flight: self.max_read_bytes_in_flight,
            max_txn_ops: self.max_txn_ops,
            auto_compaction,
            auth_token_ttl: Duration::from_secs(self.auth_token_ttl),
            bcrypt_cost: self.bcrypt_cost,
            log_outputs: self
                .log_outputs
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            log_level: self.log_level.clone(),
            security,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Result<MemberConfig, String> {
        let mut all = vec!["strata"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all).map_err(|e| e.to_string())?;
        cli.member.validate()
    }

    #[test]
    fn no_flags_is_etcds_single_member_default() {
        let c = flags(&[]).expect("defaults are valid");
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.strata"));
        assert_eq!(c.listen_client, vec!["http://localhost:2379"]);
        assert_eq!(c.initial_members.len(), 1);
        assert!(!c.join_existing);
    }

    #[test]
    fn ids_are_etcds() {
        // etcd 3.x: `etcd` with default flags reports member id 8e9e05c52164694d in cluster
        // cdf818194e3a8c32.
        let c = flags(&[]).expect("valid");
        assert_eq!(format!("{:x}", c.initial_members[0].id), "8e9e05c52164694d");
        assert_eq!(
            format!("{:x}", cluster_id(&c.initial_members)),
            "cdf818194e3a8c32"
        );
    }

    #[test]
    fn contradictions_are_refused() {
        // Like etcd, a lone --name makes its own one-member initial cluster...
        assert!(flags(&["--name", "x"]).is_ok());
        // ...but an explicit one must name this member.
        let e = flags(&[
            "--name",
            "x",
            "--initial-cluster",
            "default=http://localhost:2380",
        ])
        .expect_err("name not in initial cluster");
        assert!(e.contains("couldn't find local name \"x\""), "{e}");
        let e = flags(&["--election-timeout", "300"]).expect_err("too short");
        assert!(e.contains("at least as 5 times"), "{e}");
        let e = flags(&["--initial-cluster-state", "old"]).expect_err("bad state");
        assert!(e.contains("unknown state"), "{e}");
        let e = flags(&[
            "--auto-compaction-mode",
            "x",
            "--auto-compaction-retention",
            "1",
        ])
        .expect_err("bad mode");
        assert!(e.contains("unknown mode"), "{e}");
        let e = flags(&["--listen-client-urls", "localhost:2379"]).expect_err("no scheme");
        assert!(e.contains("scheme"), "{e}");
        assert!(flags(&["--no-such-flag"]).is_err());
    }

    #[test]
    fn auto_compaction_retention_parses_like_etcd() {
        assert_eq!(
            parse_auto_compaction("periodic", "0"),
            Ok(AutoCompaction::Off)
        );
        assert_eq!(
            parse_auto_compaction("periodic", "1"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            parse_auto_compaction("periodic", "1h30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(5400)))
        );
        assert_eq!(
            parse_auto_compaction("revision", "1000"),
            Ok(AutoCompaction::Revision(1000))
        );
    }

    #[test]
    fn security_flags_parse_as_etcds() {
        let tls = [
            "--listen-client-urls",
            "https://127.0.0.1:2379",
            "--advertise-client-urls",
            "https://127.0.0.1:2379",
            "--cert-file",
            "c.pem",
            "--key-file",
            "k.pem",
            "--trusted-ca-file",
            "ca.pem",
        ];
        // Go's boolean forms.
        for form in ["--client-cert-auth", "--client-cert-auth=true"] {
            let mut args = tls.to_vec();
            args.push(form);
            let c = flags(&args).expect("valid");
            let client = c.security.client.expect("client TLS");
            assert!(client.cert_auth, "{form}");
            assert_eq!(client.dial_cert_file, PathBuf::from("c.pem"));
        }
        let mut args = tls.to_vec();
        args.push("--client-cert-auth=false");
        assert!(!flags(&args).unwrap().security.client.unwrap().cert_auth);
        // http URLs: certificates are ignored, as etcd ignores them.
        let c = flags(&["--cert-file", "c.pem", "--key-file", "k.pem"]).expect("valid");
        assert_eq!(c.security.client, None);
        // https without certificates, or a lone certificate, or cert auth without a CA.
        let e = flags(&tls[..4]).expect_err("no certs");
        assert!(
            e.contains("--cert-file, --key-file") && e.contains("HTTPS"),
            "{e}"
        );
        let e = flags(&tls[..6]).expect_err("no key");
        assert!(e.contains("--key-file"), "{e}");
        let e = flags(&[&tls[..8], &["--client-cert-auth"][..]].concat()).expect_err("no CA");
        assert!(e.contains("--trusted-ca-file"), "{e}");
        // --auto-tls fills in the data dir's fixtures.
        let c = flags(&[&tls[..4], &["--auto-tls", "--data-dir", "d"][..]].concat()).unwrap();
        let client = c.security.client.expect("auto TLS");
        assert!(client.self_signed);
        assert_eq!(
            client.cert_file,
            PathBuf::from("d/fixtures/client/cert.pem")
        );
    }

    #[test]
    fn tls_versions_and_suites_are_checked() {
        let base = ["--cert-file", "c", "--key-file", "k"];
        let with = |extra: &[&str]| flags(&[&base[..], extra].concat());
        assert!(
            with(&["--tls-min-version", "TLS1.3"])
                .unwrap()
                .security
                .policy
                .min_tls13
        );
        let e = with(&["--tls-min-version", "TLS1.1"]).unwrap_err();
        assert!(e.contains("TLS1.1") && e.contains("TLS1.2, TLS1.3"), "{e}");
        let e = with(&["--tls-min-version", "TLS1.3", "--tls-max-version", "TLS1.2"]).unwrap_err();
        assert!(e.contains("above"), "{e}");
        let ok = with(&["--cipher-suites", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"]).unwrap();
        assert_eq!(
            ok.security.policy.cipher_suites,
            Some(vec![
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256".to_string()
            ])
        );
        let e = with(&["--cipher-suites", "TLS_RSA_WITH_AES_128_CBC_SHA"]).unwrap_err();
        assert!(e.contains("unsupported cipher suite"), "{e}");
        let e = with(&[
            "--tls-min-version",
            "TLS1.3",
            "--cipher-suites",
            CIPHER_SUITES[0],
        ])
        .unwrap_err();
        assert!(e.contains("only TLS1.3"), "{e}");
    }

    #[test]
    fn auth_token_options_parse_as_etcds() {
        assert_eq!(parse_auth_token("simple"), Ok(AuthTokenKind::Simple));
        let jwt = parse_auth_token("jwt,pub-key=p.pem,priv-key=k.pem,sign-method=RS256,ttl=10m")
            .expect("valid");
        assert_eq!(
            jwt,
            AuthTokenKind::Jwt(JwtOptions {
                sign_method: "RS256".into(),
                pub_key: Some("p.pem".into()),
                priv_key: Some("k.pem".into()),
                ttl: Duration::from_secs(600),
            })
        );
        for (bad, want) in [
            ("jwt,pub-key=p.pem", "sign-method"),
            ("jwt,sign-method=RS256", "pub-key"),
            ("jwt,sign-method=HS256", "priv-key"),
            ("jwt,sign-method=ES512,pub-key=p", "unsupported sign-method"),
            (
                "jwt,sign-method=RS256,pub-key=p,color=red",
                "unknown jwt option",
            ),
            ("jwt,sign-method=RS256,pub-key=p,ttl=soon", "invalid ttl"),
            ("oauth", "unknown token type"),
        ] {
            let e = parse_auth_token(bad).expect_err(bad);
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn kubeadm_flags_parse_with_etcds_meaning() {
        // --snapshot-count 0 is etcd's "use the default".
        let c = flags(&["--snapshot-count", "0"]).expect("valid");
        assert_eq!(
            c.snapshot_count,
            strata_engine::limits::DEFAULT_SNAPSHOT_COUNT
        );
        let c = flags(&[
            "--listen-metrics-urls=http://127.0.0.1:2381",
            "--experimental-watch-progress-notify-interval=5s",
        ])
        .expect("valid");
        assert_eq!(c.listen_metrics, vec!["http://127.0.0.1:2381"]);
        assert_eq!(c.progress_notify_interval, Duration::from_secs(5));
        let c = flags(&[]).expect("defaults");
        assert_eq!(c.grpc_keepalive, GrpcKeepalive::default());
        assert_eq!(c.lease_checkpoint_interval, Duration::from_secs(300));
        let c = flags(&[
            "--experimental-enable-lease-checkpoint",
            "--experimental-enable-lease-checkpoint-persist=true",
            "--experimental-lease-checkpoint-interval=2s",
        ])
        .expect("valid");
        assert_eq!(c.lease_checkpoint_interval, Duration::from_secs(2));
        let e = flags(&["--experimental-lease-checkpoint-interval", "0"]).unwrap_err();
        assert!(
            e.contains("lease-checkpoint-interval: invalid duration"),
            "{e}"
        );
        let c = flags(&[
            "--grpc-keepalive-interval=30s",
            "--grpc-keepalive-timeout",
            "0",
            "--grpc-keepalive-min-time=1s",
        ])
        .expect("valid");
        assert_eq!(c.grpc_keepalive.interval, Duration::from_secs(30));
        assert_eq!(c.grpc_keepalive.timeout, Duration::from_secs(20));
        assert_eq!(c.grpc_keepalive.min_time, Duration::from_secs(1));
        let e = flags(&["--grpc-keepalive-timeout", "soon"]).unwrap_err();
        assert!(
            e.contains("--grpc-keepalive-timeout: invalid duration"),
            "{e}"
        );
        let c = flags(&[]).expect("defaults");
        assert!(c.listen_metrics.is_empty());
        assert_eq!(c.progress_notify_interval, Duration::from_secs(600));
        let e = flags(&["--experimental-watch-progress-notify-interval", "soon"]).unwrap_err();
        assert!(e.contains("progress-notify-interval"), "{e}");
        // The consistency checks, recovery and stream flags, in Go's forms.
        let c = flags(&[
            "--experimental-initial-corrupt-check=true",
            "--experimental-corrupt-check-time=5m",
            "--experimental-compact-hash-check-enabled",
            "--max-concurrent-streams=100",
            "--force-new-cluster=false",
            "--strict-reconfig-check",
        ])
        .expect("valid");
        assert_eq!(
            c.corruption,
            CorruptionChecks {
                initial: true,
                periodic: Some(Duration::from_secs(300)),
                compact_hash: Some(Duration::from_secs(60)),
            }
        );
        assert_eq!(c.max_concurrent_streams, 100);
        assert!(!c.force_new_cluster);
        let c = flags(&["--experimental-corrupt-check-time", "0s"]).expect("off");
        assert_eq!(c.corruption, CorruptionChecks::default());
        let e = flags(&["--strict-reconfig-check=false"]).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        let e = flags(&["--experimental-corrupt-check-time", "often"]).unwrap_err();
        assert!(e.contains("--experimental-corrupt-check-time"), "{e}");
        // An https metrics URL needs the client port's certificates.
        let e = flags(&["--listen-metrics-urls", "https://127.0.0.1:2381"]).unwrap_err();
        assert!(e.contains("--cert-file"), "{e}");
    }
}
