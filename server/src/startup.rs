//! Member start-up from a validated configuration to a running driver and peer transport: the
//! one path production ([`crate::server`]) and the simulator take. Given the member's store
//! (on whatever device), clock and seed, it decides who this member is (bootstrap a new
//! cluster, join an existing one, or restart from the data dir), recovers the log, builds the
//! engine's configuration from the flags, starts the driver and binds the peer listeners.
//! What comes after — client listeners, TLS, metrics, auto-compaction — differs between a
//! process and a simulated node and is the caller's.
//!
//! Invariants: nothing is served before the store is recovered and verified; a fresh member's
//! bootstrap entries are durable before its identity is claimed, and both before the driver
//! starts.

use std::collections::BTreeMap;
use std::sync::Arc;

use strata_engine::bugs::Bug;
use strata_engine::node::{bootstrap_log, Config, PersistTask, PersistedLog};
use strata_engine::proto::strata::internal::MemberRecord;
use strata_engine::{Limits, NodeId};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::clock::NodeClock;
use crate::config::{cluster_id, MemberConfig};
use crate::driver::{Driver, Handle, Observer, Parts, Stopped};
use crate::storage::device::Device;
use crate::storage::store::{Store, StoreBackend};
use crate::storage::{Identity, LogStorage, StorageError};
use crate::transport::{self, url_host_port, MembersSource, PeerTls, Transport};

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
    #[cfg(not(madsim))]
    #[error(transparent)]
    Tls(#[from] crate::tls::files::FileError),
}

/// What the process (or the simulator) gives a member besides its flags.
pub struct Env<D: Device> {
    pub store: Store<D>,
    pub clock: NodeClock,
    /// Seeds the engine's randomness (election timeouts, proposal ids).
    pub seed: u64,
    /// Who hears of raft progress (the simulator's recorder).
    pub observer: Option<Observer>,
    /// The simulator's injected bug (never set in production).
    pub bug: Option<Bug>,
    pub peer_tls: Option<Arc<PeerTls>>,
}

/// A member whose driver is ready to run.
pub struct Launched<D: Device> {
    pub driver: Driver<StoreBackend<D>>,
    pub handle: Handle,
    pub identity: Identity,
}

/// Binds `host:port` of a listen URL.
pub async fn bind(url: &str) -> Result<TcpListener, StartError> {
    let addr = url_host_port(url).to_string();
    TcpListener::bind(addr.as_str())
        .await
        .map_err(|e| StartError::Listen {
            addr: addr.clone(),
            reason: e.to_string(),
        })
}

/// The engine's configuration from the flags: etcd's timing (ticks of one heartbeat; the
/// request timeout is etcd's `5 s + 2 × election timeout`) and limits.
pub fn engine_config(
    cfg: &MemberConfig,
    identity: Identity,
    seed: u64,
    bug: Option<Bug>,
) -> Config {
    let mut config = Config::new(NodeId(identity.member_id), identity.cluster_id, seed);
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
        snapshot_catch_up_entries: cfg.snapshot_catch_up_entries,
        progress_notify_interval_ms: cfg.progress_notify_interval.as_millis() as u64,
        lease_checkpoint_interval_ms: cfg.lease_checkpoint_interval.as_millis() as u64,
        ..Limits::default()
    };
    config.bug = bug;
    config
}

/// Recovers the store, starts the driver (not yet running: the caller runs it) and serves the
/// peer URLs.
pub async fn launch<D: Device>(
    cfg: &MemberConfig,
    env: Env<D>,
    shutdown: watch::Receiver<bool>,
) -> Result<Launched<D>, StartError> {
    let (identity, persisted, known_members) =
        identify(cfg, &env.store, env.peer_tls.as_deref(), env.bug).await?;
    let config = engine_config(cfg, identity, env.seed, env.bug);
    let id = config.id;
    let (peer_tx, peer_rx) = mpsc::unbounded_channel();
    let transport = Transport::new(id, identity.cluster_id, cfg.peer_urls.clone(), peer_tx)
        .with_tls(env.peer_tls.clone());
    let (driver, handle) = Driver::start(Parts {
        config,
        name: cfg.name.clone(),
        client_urls: cfg.advertise_client_urls.clone(),
        backend: env.store.backend(),
        log: env.store.log(env.bug),
        persisted,
        transport: transport.clone(),
        initial_peers: known_members
            .iter()
            .filter(|m| m.id != id.0)
            .map(|m| (NodeId(m.id), m.peer_urls.clone()))
            .collect::<BTreeMap<_, _>>(),
        peer_events: peer_rx,
        shutdown,
        clock: env.clock,
        observer: env.observer,
    })?;
    for url in &cfg.listen_peer {
        let listener = bind(url).await?;
        if url.starts_with("https://") {
            tracing::info!(address = %url_host_port(url), "serving peer traffic securely");
        } else if env.peer_tls.is_some() {
            tracing::warn!(address = %url_host_port(url), "peer URL is http while peer TLS is configured: this listener is plaintext");
        }
        let shared = handle.shared.clone();
        let members: MembersSource = Arc::new(move || shared.view().members);
        tokio::spawn(transport::serve(
            listener,
            transport.clone(),
            members,
            url.starts_with("https://"),
        ));
    }
    Ok(Launched {
        driver,
        handle,
        identity,
    })
}

/// `--force-new-cluster` on a restart: rewrites the log so this member applies the removal of
/// every other member as it starts (etcd's recovery when quorum is lost for good). The data
/// stays; the member and cluster ids stay; the removed members may never rejoin.
async fn force_new_cluster<D: Device>(
    store: &Store<D>,
    me: Identity,
    log: PersistedLog,
) -> Result<PersistedLog, StartError> {
    use strata_engine::membership::Members;
    use strata_engine::state_machine::stored_applied_index;
    let backend = store.backend();
    let corrupt = |e: strata_engine::BackendError| StorageError::Corrupt {
        path: store.path(),
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
    let task = PersistTask {
        number: 0,
        hard_state: Some(forced.hard_state.clone()),
        entries: forced.entries[first_new..].to_vec(),
        snapshot: None,
        must_sync: true,
    };
    store.log(None).persist(vec![task]).await?;
    tracing::warn!(
        removed = %others.iter().map(|m| format!("{:x}", m.id)).collect::<Vec<_>>().join(","),
        "forcing a new cluster of one member: the other members are removed"
    );
    Ok(forced)
}

/// Who this member is and what log it starts from.
async fn identify<D: Device>(
    cfg: &MemberConfig,
    store: &Store<D>,
    peer_tls: Option<&PeerTls>,
    bug: Option<Bug>,
) -> Result<(Identity, PersistedLog, Vec<MemberRecord>), StartError> {
    let me = cfg
        .initial_members
        .iter()
        .find(|m| m.name == cfg.name)
        .expect("validated: this member is in --initial-cluster");
    if !store.is_empty()? {
        let found = store.identity()?.ok_or_else(|| StorageError::Corrupt {
            path: store.path(),
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
                    path: store.path(),
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
            .log(bug)
            .persist(vec![crate::storage::bootstrap_task(&log)])
            .await?;
        store.claim(identity)?;
        return Ok((identity, log, cfg.initial_members.clone()));
    }
    // Joining: ask the other members who we are (etcd fetches /members from its peers).
    let mut last_error = String::from("no other member in --initial-cluster");
    for m in cfg.initial_members.iter().filter(|m| m.name != cfg.name) {
        for url in &m.peer_urls {
            match transport::fetch_members(url, peer_tls).await {
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
