//! etcd's data-corruption checks: members compare their `HashKV` at one revision.
//!
//! - **Initial** (`--experimental-initial-corrupt-check`): before its client port serves, a
//!   member asks every peer for the hash at its own current revision. A peer at the same
//!   compacted revision with another hash means this member's data differs: it refuses to
//!   serve and exits, as etcd does (`found data inconsistency with peers`).
//! - **Periodic** (`--experimental-corrupt-check-time`): the leader asks each follower for
//!   the hash at the leader's current revision; a follower that differs at the same compacted
//!   revision gets the `CORRUPT` alarm, which stops writes cluster-wide.
//! - **Compaction** (`--experimental-compact-hash-check-enabled`): the leader compares the
//!   hash at its latest compacted revision, a revision every member agrees on once compacted.
//!
//! A peer that is unreachable, behind (`future revision`), compacted differently or that
//! refuses the request (auth enabled: `HashKV` is admin-only on the client port, which is the
//! one these checks use) is skipped with a warning; only a proven difference acts. The checks
//! read; they never change a member's data.

use std::time::Duration;

use strata_engine::proto::etcdserverpb::alarm_request::AlarmAction;
use strata_engine::proto::etcdserverpb::{AlarmRequest, AlarmType, HashKvRequest};
use strata_engine::request::{Request, Response};
use tokio::sync::watch;

use crate::api::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::api::Ctx;
use crate::config::CorruptionChecks;

/// How long a peer has to answer one hash request.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// One member's hash at a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hashed {
    revision: i64,
    compact_revision: i64,
    hash: u32,
}

async fn local_hash(ctx: &Ctx, revision: i64) -> Result<Hashed, String> {
    match ctx
        .handle
        .call(Request::HashKv(HashKvRequest { revision }), None)
        .await
    {
        Ok(Response::HashKv(r)) => Ok(Hashed {
            revision: r.hash_revision,
            compact_revision: r.compact_revision,
            hash: r.hash,
        }),
        Ok(_) => Err("unexpected answer to HashKV".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn peer_hash(ctx: &Ctx, url: &str, revision: i64) -> Result<Hashed, String> {
    let channel = ctx
        .member_channel(url)
        .map_err(|e| e.message().to_string())?;
    let mut client = MaintenanceClient::new(channel);
    let call = client.hash_kv(HashKvRequest { revision });
    let resp = tokio::time::timeout(PEER_TIMEOUT, call)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.message().to_string())?
        .into_inner();
    Ok(Hashed {
        revision,
        compact_revision: resp.compact_revision,
        hash: resp.hash,
    })
}

/// The other members and their first client URL, if they have published one.
fn peers(ctx: &Ctx) -> Vec<(u64, Option<String>)> {
    let shared = &ctx.handle.shared;
    shared
        .view()
        .members
        .iter()
        .filter(|m| m.id != shared.id.0)
        .map(|m| (m.id, m.client_urls.first().cloned()))
        .collect()
}

/// Waits up to [`PEER_TIMEOUT`] for every other member's client URL: members started
/// together publish theirs moments apart, and a check that found no peer to ask would pass
/// without comparing anything.
async fn wait_for_peer_urls(ctx: &Ctx) {
    let deadline = tokio::time::Instant::now() + PEER_TIMEOUT;
    while peers(ctx).iter().any(|(_, url)| url.is_none()) && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Compares `local` with every peer's hash at `local.revision`; returns the peers whose data
/// differs.
async fn differing_peers(ctx: &Ctx, local: Hashed, check: &str) -> Vec<u64> {
    let mut differing = Vec::new();
    for (id, url) in peers(ctx) {
        let Some(url) = url else {
            tracing::warn!(
                check,
                remote_peer_id = %format!("{id:x}"),
                "cannot fetch hash from remote peer: it has not published its client URLs"
            );
            continue;
        };
        match peer_hash(ctx, &url, local.revision).await {
            Ok(theirs) if theirs.compact_revision != local.compact_revision => {
                tracing::warn!(
                    check,
                    remote_peer_id = %format!("{id:x}"),
                    local_compact_revision = local.compact_revision,
                    remote_compact_revision = theirs.compact_revision,
                    "cannot compare hashes: the peer compacted at another revision"
                );
            }
            Ok(theirs) if theirs.hash != local.hash => {
                tracing::error!(
                    check,
                    revision = local.revision,
                    local_member_hash = local.hash,
                    remote_peer_id = %format!("{id:x}"),
                    remote_peer_hash = theirs.hash,
                    "found data inconsistency with peers"
                );
                differing.push(id);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                check,
                remote_peer_id = %format!("{id:x}"),
                error = %e,
                "cannot fetch hash from remote peer"
            ),
        }
    }
    differing
}

/// The initial check: `Err` when a peer proves this member's data differs.
pub async fn initial_check(ctx: &Ctx) -> Result<(), String> {
    let local = match local_hash(ctx, 0).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "initial corruption check skipped");
            return Ok(());
        }
    };
    wait_for_peer_urls(ctx).await;
    tracing::info!(
        revision = local.revision,
        "starting initial corruption check"
    );
    let differing = differing_peers(ctx, local, "initial").await;
    if differing.is_empty() {
        tracing::info!("initial corruption checking passed; no corruption");
        return Ok(());
    }
    Err(format!(
        "found data inconsistency with peers (member {:x} differs from {} at revision {})",
        ctx.handle.shared.id.0,
        differing
            .iter()
            .map(|id| format!("{id:x}"))
            .collect::<Vec<_>>()
            .join(", "),
        local.revision
    ))
}

/// Runs the leader's periodic checks until shutdown.
pub async fn run_periodic(ctx: Ctx, checks: CorruptionChecks, mut shutdown: watch::Receiver<bool>) {
    let mut periodic = checks.periodic.map(tokio::time::interval);
    let mut compact = checks.compact_hash.map(tokio::time::interval);
    let mut last_compaction_checked = None;
    loop {
        let tick = async {
            match (&mut periodic, &mut compact) {
                (Some(p), Some(c)) => tokio::select! {
                    _ = p.tick() => Check::Current,
                    _ = c.tick() => Check::Compaction,
                },
                (Some(p), None) => {
                    p.tick().await;
                    Check::Current
                }
                (None, Some(c)) => {
                    c.tick().await;
                    Check::Compaction
                }
                (None, None) => std::future::pending().await,
            }
        };
        let check = tokio::select! {
            _ = shutdown.changed() => return,
            check = tick => check,
        };
        let shared = &ctx.handle.shared;
        if shared.leader() != Some(shared.id) {
            continue;
        }
        let local = match local_hash(&ctx, 0).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "corruption check skipped");
                continue;
            }
        };
        let (local, name) = match check {
            Check::Current => (local, "periodic"),
            Check::Compaction => {
                let compacted = local.compact_revision;
                if compacted <= 0 || last_compaction_checked == Some(compacted) {
                    continue;
                }
                last_compaction_checked = Some(compacted);
                match local_hash(&ctx, compacted).await {
                    Ok(h) => (h, "compaction"),
                    Err(e) => {
                        tracing::warn!(error = %e, "compaction hash check skipped");
                        continue;
                    }
                }
            }
        };
        for id in differing_peers(&ctx, local, name).await {
            raise_corrupt_alarm(&ctx, id).await;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Check {
    Current,
    Compaction,
}

async fn raise_corrupt_alarm(ctx: &Ctx, member_id: u64) {
    let alarm = AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id,
        alarm: AlarmType::Corrupt as i32,
    };
    if let Err(e) = ctx.handle.call(Request::Alarm(alarm), None).await {
        tracing::error!(member = %format!("{member_id:x}"), error = %e, "cannot raise the CORRUPT alarm");
    }
}

/// Whether any check asks for the periodic task.
pub fn any_periodic(checks: &CorruptionChecks) -> bool {
    checks.periodic.is_some() || checks.compact_hash.is_some()
}
