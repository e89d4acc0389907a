//! Starting a production member: check the certificates and token keys (before the data dir
//! is touched), open (or create) the data dir, decide who this member is (bootstrap a new
//! cluster, join an existing one, or restart), start the peer transport, the driver, the
//! client listeners and the auto-compactor, and stop them all on shutdown. Client listeners
//! are bound at once but answer only after this member's attributes are committed (etcd's
//! publish, then "ready to serve client requests" and systemd's `READY=1`).

use std::net::SocketAddr;
use std::time::Duration;

use strata_engine::node::{bootstrap_log, Config, PersistedLog};
use strata_engine::proto::etcdserverpb::CompactionRequest;
use strata_engine::proto::strata::internal::MemberRecord;
use strata_engine::request::{Request, Response};
use strata_engine::{Limits, NodeId};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::api::Ctx;
use crate::config::{cluster_id, AutoCompaction, MemberConfig};
use crate::driver::{Driver, Handle, Parts, Stopped};
use crate::storage::rocks::RocksStore;
use crate::storage::{Identity, LogStorage, StorageError};
use crate::transport::{self, url_host_port, MembersSource, Transport};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Config(String),
    #[error("listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error(transparent)]
    Engine(#[from] Stopped),
    #[error(transparent)]
    Tls(#[from] crate::tls::files::FileError),
}

/// The hosts of `urls`, for the names of an `--auto-tls` certificate.
fn hosts(urls: &[String]) -> Vec<String> {
    urls.iter()
        .map(|u| {
            let hp = url_host_port(u);
            let host = hp.rsplit_once(':').map_or(hp, |(h, _)| h);
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        })
        .filter(|h| !h.is_empty() && h != "0.0.0.0" && h != "::")
        .collect()
}

/// Resolves `host:port` of a listen URL (`localhost` included) to socket addresses.
async fn bind(url: &str) -> Result<TcpListener, StartError> {
    let addr = url_host_port(url).to_string();
    TcpListener::bind(&addr)
        .await
        .map_err(|e| StartError::Listen {
            addr: addr.clone(),
            reason: e.to_string(),
        })
}

/// Binds a client (or metrics) URL: TLS with the client port's certificates for `https://`.
async fn client_listener(
    url: &str,
    tls: &crate::tls::MemberTls,
) -> Result<(SocketAddr, crate::http::ClientListener), StartError> {
    let listener = bind(url).await?;
    let failed = |e: std::io::Error| StartError::Listen {
        addr: url.to_string(),
        reason: e.to_string(),
    };
    let addr = listener.local_addr().map_err(failed)?;
    let secure = url.starts_with("https://");
    let listener =
        crate::http::ClientListener::new(listener, if secure { tls.client.clone() } else { None })
            .map_err(failed)?;
    Ok((addr, listener))
}

/// A running member.
#[derive(Debug)]
pub struct Member {
    pub handle: Handle,
    pub client_addrs: Vec<SocketAddr>,
}

/// `--force-new-cluster` on a restart: rewrites the log so this member applies the removal of
/// every other member as it starts (etcd's recovery when quorum is lost for good). The data
/// stays; the member and cluster ids stay; the removed members may never rejoin.
async fn force_new_cluster(
    store: &RocksStore,
    me: Identity,
    log: PersistedLog,
) -> Result<PersistedLog, StartError> {
    use strata_engine::membership::Members;
    use strata_engine::state_machine::stored_applied_index;
    let backend = store.backend();
    let corrupt = |e: strata_engine::BackendError| StorageError::Corrupt {
        path: store.path().display().to_string(),
        reason: e.to_string(),
    };
    let applied = stored_applied_index(&backend).map_err(corrupt)?.0;
    let members = Members::open(&backend).map_err(corrupt)?;
    let pending_conf_change = log.entries.iter().any(|e| {
        e.index > applied
            && e.index <= log.hard_state.commit
            && e.get_entry_type() != raft::eraftpb::EntryType::EntryNormal
    });
    let last = log.entries.last().map_or(log.compacted.0 .0, |e| e.index);
    if pending_conf_change || applied > last {
        return Err(StartError::Config(
            "--force-new-cluster: committed changes are not applied yet; start this member once without it, stop it, then retry".into(),
        ));
    }
    let others: Vec<MemberRecord> = members
        .records()
        .filter(|m| m.id != me.member_id)
        .cloned()
        .collect();
    if others.is_empty() {
        return Ok(log);
    }
    let forced =
        strata_engine::node::force_new_cluster_log(log, strata_engine::LogIndex(applied), &others);
    let first_new = forced.entries.len() - others.len();
    let task = strata_engine::node::PersistTask {
        number: 0,
        hard_state: Some(forced.hard_state.clone()),
        entries: forced.entries[first_new..].to_vec(),
        snapshot: None,
        must_sync: true,
    };
    store.log().persist(vec![task]).await?;
    tracing::warn!(
        removed = %others.iter().map(|m| format!("{:x}", m.id)).collect::<Vec<_>>().join(","),
        "forcing a new cluster of one member: the other members are removed"
    );
    Ok(forced)
}

/// Who this member is and what log it starts from.
async fn identify(
    cfg: &MemberConfig,
    store: &RocksStore,
    fresh: bool,
    tls: &crate::tls::MemberTls,
) -> Result<(Identity, PersistedLog, Vec<MemberRecord>), StartError> {
    let me = cfg
        .initial_members
        .iter()
        .find(|m| m.name == cfg.name)
        .expect("validated: this member is in --initial-cluster");
    if !fresh {
        let found = store.identity()?.ok_or_else(|| StorageError::Corrupt {
            path: store.path().display().to_string(),
            reason: "the data dir has no member identity (was its creation interrupted? remove it)"
                .into(),
        })?;
        // A member bootstrapped from these flags must find itself in the data dir: its id
        // comes from its peer URLs and the cluster token, so another cluster's data dir (or
        // another member's) is refused. (A member that joined an existing cluster has an id
        // the flags cannot predict.) `--initial-cluster` itself is ignored on restart, as
        // etcd ignores it once a data dir exists: after `member add`, operators restart the
        // old members with the new list.
        if !cfg.join_existing && !found.joined {
            let want_cluster = cluster_id(&cfg.initial_members);
            if me.id != found.member_id {
                return Err(StorageError::WrongCluster {
                    path: store.path().display().to_string(),
                    found_cluster: found.cluster_id,
                    found_member: found.member_id,
                    want_cluster,
                    want_member: me.id,
                }
                .into());
            }
            if want_cluster != found.cluster_id {
                tracing::warn!(
                    cluster = %format!("{:x}", found.cluster_id),
                    "--initial-cluster names another member set than the one this data dir \
                     bootstrapped; ignored (the data dir exists)"
                );
            }
        }
        tracing::info!(
            cluster = %format!("{:x}", found.cluster_id),
            member = %format!("{:x}", found.member_id),
            "restarting member from its data dir"
        );
        let mut log = store.load_log()?;
        if cfg.force_new_cluster {
            log = force_new_cluster(store, found, log).await?;
        }
        return Ok((found, log, cfg.initial_members.clone()));
    }
    if !cfg.join_existing {
        let identity = Identity {
            cluster_id: cluster_id(&cfg.initial_members),
            member_id: me.id,
            joined: false,
        };
        // The bootstrap entries are the start of this member's log: durable before anything.
        let log = bootstrap_log(&cfg.initial_members);
        store
            .log()
            .persist(vec![crate::storage::bootstrap_task(&log)])
            .await?;
        store.claim(identity)?;
        return Ok((identity, log, cfg.initial_members.clone()));
    }
    // Joining: ask the other members who we are (etcd fetches /members from its peers).
    let mut last_error = String::from("no other member in --initial-cluster");
    for m in cfg.initial_members.iter().filter(|m| m.name != cfg.name) {
        for url in &m.peer_urls {
            match transport::fetch_members(url, tls.peer.as_deref()).await {
                Ok(list) => {
                    let mut mine = cfg.peer_urls.clone();
                    mine.sort();
                    let found = list.members.iter().find(|r| {
                        let mut theirs = r.peer_urls.clone();
                        theirs.sort();
                        theirs == mine
                    });
                    let Some(found) = found else {
                        return Err(StartError::Config(format!(
                            "the cluster at {url} has no member with peer URLs {} (run `etcdctl member add` first)",
                            cfg.peer_urls.join(",")
                        )));
                    };
                    let identity = Identity {
                        cluster_id: list.cluster_id,
                        member_id: found.id,
                        joined: true,
                    };
                    store.claim(identity)?;
                    return Ok((identity, PersistedLog::default(), list.members));
                }
                Err(e) => last_error = format!("{url}: {e}"),
            }
        }
    }
    Err(StartError::Config(format!(
        "cannot join the existing cluster: {last_error}"
    )))
}

/// Starts a member; it runs until `shutdown` turns true. Returns once it is serving, with a
/// future that resolves when the member stops.
pub async fn start(
    cfg: MemberConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(Member, tokio::task::JoinHandle<Stopped>), StartError> {
    if let Some(wal_dir) = &cfg.wal_dir {
        tracing::warn!(
            wal_dir = %wal_dir.display(),
            "--wal-dir is ignored: the raft log lives in the data dir's database"
        );
    }
    // Certificates and token keys are checked before the data dir is touched: a bad file is a
    // one-line error and leaves nothing behind. (`--auto-tls` writes its certificates into
    // the data dir's `fixtures/`, as etcd does.)
    let tokens = match &cfg.security.auth_token {
        crate::config::AuthTokenKind::Simple => crate::api::Tokens::Simple,
        crate::config::AuthTokenKind::Jwt(opts) => crate::api::Tokens::Jwt(std::sync::Arc::new(
            crate::jwt::JwtProvider::load(opts).map_err(StartError::Config)?,
        )),
    };
    let fresh = !RocksStore::exists(&cfg.data_dir);
    let client_hosts =
        hosts(&[cfg.listen_client.clone(), cfg.advertise_client_urls.clone()].concat());
    let peer_hosts = hosts(&[cfg.listen_peer.clone(), cfg.peer_urls.clone()].concat());
    let tls = match crate::tls::MemberTls::load(&cfg.security, &client_hosts, &peer_hosts) {
        Ok(tls) => tls,
        Err(e) => {
            if fresh {
                let _ = std::fs::remove_dir_all(&cfg.data_dir);
            }
            return Err(e.into());
        }
    };
    let store = RocksStore::open(&cfg.data_dir, fresh)?;
    let (identity, persisted, known_members) = match identify(&cfg, &store, fresh, &tls).await {
        Ok(x) => x,
        Err(e) => {
            if fresh {
                drop(store);
                let _ = std::fs::remove_dir_all(&cfg.data_dir);
            }
            return Err(e);
        }
    };
    let id = NodeId(identity.member_id);
    let mut config = Config::new(id, identity.cluster_id, rand::random());
    config.auth_token_ttl_secs = cfg.auth_token_ttl.as_secs();
    config.tick_ms = cfg.heartbeat_ms;
    config.heartbeat_ticks = 1;
    config.election_ticks = (cfg.election_ms / cfg.heartbeat_ms) as usize;
    config.request_timeout_ticks = (5000 + 2 * cfg.election_ms) / cfg.heartbeat_ms;
    config.limits = Limits {
        max_request_bytes: cfg.max_request_bytes as usize,
        max_txn_ops: cfg.max_txn_ops as usize,
        quota_backend_bytes: if cfg.quota_backend_bytes == 0 {
            strata_engine::limits::DEFAULT_QUOTA_BACKEND_BYTES
        } else {
            cfg.quota_backend_bytes as u64
        },
        snapshot_count: cfg.snapshot_count,
        progress_notify_interval_ms: cfg.progress_notify_interval.as_millis() as u64,
        ..Limits::default()
    };

    let (peer_tx, peer_rx) = mpsc::unbounded_channel();
    let transport = Transport::new(id, identity.cluster_id, cfg.peer_urls.clone(), peer_tx)
        .with_tls(tls.peer.clone());
    let (driver, handle) = Driver::start(Parts {
        config,
        name: cfg.name.clone(),
        client_urls: cfg.advertise_client_urls.clone(),
        backend: store.backend(),
        log: store.log(),
        persisted,
        transport: transport.clone(),
        initial_peers: known_members
            .iter()
            .filter(|m| m.id != id.0)
            .map(|m| (NodeId(m.id), m.peer_urls.clone()))
            .collect(),
        peer_events: peer_rx,
        shutdown: shutdown.clone(),
        clock: crate::clock::NodeClock::default(),
        observer: None,
    })?;

    for url in &cfg.listen_peer {
        let listener = bind(url).await?;
        if url.starts_with("https://") {
            tracing::info!(address = %url_host_port(url), "serving peer traffic securely");
        } else if tls.peer.is_some() {
            tracing::warn!(address = %url_host_port(url), "peer URL is http while peer TLS is configured: this listener is plaintext");
        }
        let shared = handle.shared.clone();
        let members: MembersSource = std::sync::Arc::new(move || shared.view().members);
        tokio::spawn(transport::serve(
            listener,
            transport.clone(),
            members,
            url.starts_with("https://"),
        ));
    }

    let mut ctx = Ctx::new(handle.clone());
    ctx.bcrypt_cost = cfg.bcrypt_cost;
    ctx.tokens = tokens;
    if let Some(client_tls) = tls.client.clone() {
        ctx = ctx.with_leader_dialer(std::sync::Arc::new(move |url: &str| {
            crate::tls::grpc_channel(client_tls.clone(), url)
        }));
    }
    let mut client_addrs = Vec::new();
    let mut listeners = Vec::new();
    for url in &cfg.listen_client {
        let (addr, listener) = client_listener(url, &tls).await?;
        client_addrs.push(addr);
        listeners.push((url.clone(), url.starts_with("https://"), listener));
    }
    // Metrics and health answer from the start, as etcd's metrics listeners do.
    for url in &cfg.listen_metrics {
        let (_, listener) = client_listener(url, &tls).await?;
        tracing::info!(address = %url_host_port(url), "serving metrics");
        tokio::spawn(crate::http::serve_metrics(
            listener,
            ctx.clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(publish_then_serve(
        handle.clone(),
        cfg.name.clone(),
        cfg.advertise_client_urls.clone(),
        listeners,
        ClientService {
            ctx: ctx.clone(),
            max_request_bytes: cfg.max_request_bytes as usize,
            max_concurrent_streams: cfg.max_concurrent_streams,
            initial_corrupt_check: cfg.corruption.initial,
        },
        shutdown.clone(),
    ));
    if crate::corruption::any_periodic(&cfg.corruption) {
        tokio::spawn(crate::corruption::run_periodic(
            ctx,
            cfg.corruption,
            shutdown.clone(),
        ));
    }
    if cfg.auto_compaction != AutoCompaction::Off {
        tokio::spawn(auto_compact(
            handle.clone(),
            cfg.auto_compaction,
            shutdown.clone(),
        ));
    }
    tracing::info!(
        name = %cfg.name,
        member = %format!("{:x}", id.0),
        cluster = %format!("{:x}", identity.cluster_id),
        data_dir = %cfg.data_dir.display(),
        clients = %cfg.listen_client.join(","),
        peers = %cfg.listen_peer.join(","),
        "serving"
    );
    let stopped = tokio::spawn(driver.run());
    Ok((
        Member {
            handle,
            client_addrs,
        },
        stopped,
    ))
}

/// What the client listeners serve once they may.
struct ClientService {
    ctx: Ctx,
    max_request_bytes: usize,
    max_concurrent_streams: u32,
    /// `--experimental-initial-corrupt-check`: compare with the peers before serving.
    initial_corrupt_check: bool,
}

/// etcd's start-up order: the client listeners are bound at once (a taken port is a start
/// error), but answer only once this member's name and client URLs are committed, so that
/// a client that reaches any member finds every serving member in `member list` (etcd's
/// `publish` before `ReadyNotify`). A member whose applied membership already shows its
/// attributes (a restart with the same URLs) serves at once. With
/// `--experimental-initial-corrupt-check`, the member then compares its data with its peers'
/// (`crate::corruption`) before serving, as etcd does; it asks them on their client URLs,
/// which it knows once it has caught up with the log that publishes them.
async fn publish_then_serve(
    handle: Handle,
    name: String,
    client_urls: Vec<String>,
    listeners: Vec<(String, bool, crate::http::ClientListener)>,
    service: ClientService,
    mut shutdown: watch::Receiver<bool>,
) {
    let id = handle.shared.id;
    let published = || {
        handle
            .shared
            .member(id)
            .is_some_and(|m| m.name == name && m.client_urls == client_urls)
    };
    while !published() {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    tracing::info!(
        local_member_id = %format!("{:x}", id.0),
        local_member_attributes = %format!("{{Name:{name} ClientURLs:[{}]}}", client_urls.join(" ")),
        "published local member to cluster through raft"
    );
    if service.initial_corrupt_check {
        if let Err(e) = crate::corruption::initial_check(&service.ctx).await {
            // etcd stops here (`lg.Fatal`): a member whose data differs must not serve.
            tracing::error!(error = %e, "initial corruption check failed");
            eprintln!("strata: {e}");
            std::process::exit(1);
        }
    }
    for (url, secure, listener) in listeners {
        if secure {
            tracing::info!(address = %url_host_port(&url), "serving client traffic securely");
        } else {
            tracing::info!(address = %url_host_port(&url), "serving client traffic insecurely; this is strongly discouraged!");
        }
        tokio::spawn(crate::http::serve(
            listener,
            service.ctx.clone(),
            service.max_request_bytes,
            service.max_concurrent_streams,
            shutdown.clone(),
        ));
    }
    tracing::info!("ready to serve client requests");
    crate::notify::notify("READY=1");
}

/// etcd's auto-compaction, run by every member against the leader's revision (compactions
/// are idempotent; the engine ignores one at or below the compacted revision).
/// - periodic(R): every R/10 (at least 1 s... at most 1 h), compact to the revision that was
///   current R ago.
/// - revision(N): every 5 minutes, compact to current − N.
async fn auto_compact(handle: Handle, mode: AutoCompaction, mut shutdown: watch::Receiver<bool>) {
    let (interval, window) = match mode {
        AutoCompaction::Off => return,
        AutoCompaction::Periodic(r) => {
            let step = (r / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
            (step, (r.as_secs_f64() / step.as_secs_f64()).ceil() as usize)
        }
        AutoCompaction::Revision(_) => (Duration::from_secs(300), 0),
    };
    let mut seen: std::collections::VecDeque<i64> = std::collections::VecDeque::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if handle.shared.leader() != Some(handle.shared.id) {
            seen.clear();
            continue;
        }
        let current = handle.shared.view().revision;
        let target = match mode {
            AutoCompaction::Periodic(_) => {
                seen.push_back(current);
                if seen.len() <= window {
                    continue;
                }
                seen.pop_front().unwrap_or(0)
            }
            AutoCompaction::Revision(n) => current - n,
            AutoCompaction::Off => return,
        };
        if target <= 1 {
            continue;
        }
        let req = Request::Compact(CompactionRequest {
            revision: target,
            physical: false,
        });
        match handle.call(req, None).await {
            Ok(Response::Compact(_)) => tracing::info!(revision = target, "auto-compacted"),
            Ok(_) => {}
            Err(e) => tracing::debug!(revision = target, error = %e, "auto-compaction skipped"),
        }
    }
}
