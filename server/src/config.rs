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
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Rebuilds a member's data dir from a snapshot file (`etcdctl snapshot save`).
    Restore(RestoreFlags),
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
    /// Number of committed entries between log compactions (snapshots).
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Raise an alarm when the backend exceeds this many bytes (0: the 2 GiB default).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: i64,
    /// Largest request a client may send, in bytes.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: u32,
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
    /// Accepted for compatibility (strata always checks reconfigurations).
    #[arg(long, env = "ETCD_STRICT_RECONFIG_CHECK", default_value_t = true, action = clap::ArgAction::Set)]
    pub strict_reconfig_check: bool,
    /// Accepted for compatibility; `/debug/pprof` is not served.
    #[arg(long, env = "ETCD_ENABLE_PPROF", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_pprof: bool,
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
    pub quota_backend_bytes: i64,
    pub max_request_bytes: u32,
    pub max_txn_ops: u32,
    pub auto_compaction: AutoCompaction,
    pub auth_token_ttl: Duration,
    pub bcrypt_cost: u32,
    pub log_outputs: Vec<String>,
    pub log_level: String,
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
        if u.starts_with("https://") {
            return Err(format!("--{flag}: TLS is not supported yet: {u}"));
        }
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
        if self.snapshot_count == 0 {
            return Err("--snapshot-count must be positive".into());
        }
        if self.quota_backend_bytes < 0 {
            return Err("--quota-backend-bytes must not be negative".into());
        }
        if self.max_request_bytes == 0 || self.max_txn_ops == 0 {
            return Err("--max-request-bytes and --max-txn-ops must be positive".into());
        }
        let auto_compaction =
            parse_auto_compaction(&self.auto_compaction_mode, &self.auto_compaction_retention)?;
        if self.auth_token != "simple" {
            return Err(format!(
                "--auth-token: only \"simple\" tokens are supported, not {:?}",
                self.auth_token
            ));
        }
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
            snapshot_count: self.snapshot_count,
            quota_backend_bytes: self.quota_backend_bytes,
            max_request_bytes: self.max_request_bytes,
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
}
