//! Starting a production member: check the certificates and token keys (before the data dir
//! is touched), open (or create) the data dir on RocksDB, hand it to the start-up the
//! simulator shares ([`crate::startup`]: identity, recovery, driver, peer transport), then
//! start the client listeners and the auto-compactor, and stop them all on shutdown. Client listeners
//! are bound at once but answer only after this member's attributes are committed (etcd's
//! publish, then "ready to serve client requests" and systemd's `READY=1`).

use std::net::SocketAddr;
use std::time::Duration;

use strata_engine::proto::etcdserverpb::CompactionRequest;
use strata_engine::request::{Request, Response};
use tokio::sync::watch;

use crate::api::Ctx;
use crate::config::{AutoCompaction, MemberConfig};
use crate::driver::{Handle, Stopped};
pub use crate::startup::StartError;
use crate::startup::{bind, launch, Env, Launched};
use crate::storage::rocks::RocksStore;
use crate::transport::url_host_port;

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

/// Starts a member; it runs until `shutdown` turns true. Returns once it is serving, with a
/// future that resolves when the member stops.
pub async fn start(
    cfg: MemberConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(Member, tokio::task::JoinHandle<Stopped>), StartError> {
    if cfg.grpc_keepalive.min_time != crate::config::GrpcKeepalive::default().min_time {
        tracing::warn!(
            "--grpc-keepalive-min-time is not enforced: clients' pings are answered however often they come"
        );
    }
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
    let env = Env {
        store,
        clock: crate::clock::NodeClock::default(),
        seed: rand::random(),
        observer: None,
        bug: None,
        peer_tls: tls.peer.clone(),
    };
    let Launched {
        driver,
        handle,
        identity,
    } = match launch(&cfg, env, shutdown.clone()).await {
        Ok(launched) => launched,
        Err(e) => {
            if fresh {
                let _ = std::fs::remove_dir_all(&cfg.data_dir);
            }
            return Err(e);
        }
    };
    let id = handle.shared.id;

    let read_budget = match cfg.max_read_bytes_in_flight {
        0 => crate::read_budget::default_limit(),
        bytes => bytes,
    };
    let reads = crate::api::Reads::new(read_budget, cfg.max_request_bytes as usize)
        .with_stall_timeout(cfg.grpc_keepalive.timeout);
    let mut ctx = Ctx::new(handle.clone(), reads);
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
            keepalive: cfg.grpc_keepalive,
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
    keepalive: crate::config::GrpcKeepalive,
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
            service.keepalive,
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
