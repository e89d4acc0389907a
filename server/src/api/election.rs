//! etcd's v3election service: `Campaign`, `Proclaim`, `Leader`, `Observe`, `Resign` (etcd's
//! `concurrency.Election`, run inside the server). An election named N is a queue of keys under
//! `N/` (see [`super::lock`]); the leader is the key with the smallest create revision and its
//! value is what the leader proclaims.
//!
//! Errors keep etcd's texts and codes: every error reaches etcd's clients as gRPC `Unknown`
//! with its text, the recipe's own ("election: not leader", "election: no leader") and the
//! engine's ("etcdserver: requested lease not found") alike (see [`super::lock`]).
//!
//! Where this departs from etcd, and why:
//! - A campaigner whose own key is deleted while it waits (lease expired or revoked) is answered
//!   "election: not leader"; etcd answers success for a key that no longer exists.
//! - `Resign` with lease 0 does not grant a lease: etcd's session grants one nobody uses.
//! - `Observe` ends with the error when a read or watch fails; etcd ends the stream with OK,
//!   which a client cannot tell from a clean shutdown.

use std::pin::Pin;

use futures::Stream;
use strata_engine::proto::etcdserverpb::{
    ResponseHeader, TxnRequest, TxnResponse, WatchCreateRequest,
};
use strata_engine::proto::mvccpb::{event::EventType, KeyValue};
use strata_engine::proto::v3electionpb::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request as Req, Response as Resp, Status};

use super::lock::{
    check_compacted, created_at, first_created, key_only, own_create_revision, owner_key,
    prefix_end, put_op, queue_prefix, range, range_kvs, range_op, revision, session_lease, txn,
    wait_deletes, withdraw, Claim, EngineWatch, Waited,
};
use super::pb::v3electionpb::election_server::Election;
use super::Ctx;

/// etcd's `concurrency.ErrElectionNotLeader`.
const NOT_LEADER: &str = "election: not leader";
/// etcd's `concurrency.ErrElectionNoLeader`.
const NO_LEADER: &str = "election: no leader";
/// etcd's `v3election.ErrMissingLeaderKey`.
const MISSING_LEADER_KEY: &str = r#""leader" field must be provided"#;

#[derive(Clone, Debug)]
pub struct ElectionService(pub Ctx);

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    type ObserveStream = ObserveStream;

    async fn campaign(&self, req: Req<CampaignRequest>) -> Result<Resp<CampaignResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        let ctx = &self.0;
        let lease = session_lease(ctx, msg.lease, &md).await?;
        let key = owner_key(&queue_prefix(&msg.name), lease);
        let joined = txn(
            ctx,
            TxnRequest {
                compare: vec![created_at(&key, 0)],
                success: vec![put_op(&key, &msg.value, lease)],
                failure: vec![range_op(key_only(&key))],
            },
            &md,
        )
        .await?;
        let rev = if joined.succeeded {
            revision(&joined.header)
        } else {
            rejoin(ctx, &md, &joined, &key, &msg.value, lease).await?
        };
        let claim = Claim::new(ctx, &md, &key, rev);
        let waited = wait_deletes(ctx, &md, &queue_prefix(&msg.name), &key, rev).await;
        // etcd resigns only when the caller went away (the claim is dropped armed then); a
        // failed wait leaves the key to its lease.
        claim.keep();
        match waited? {
            Waited::First(_) => Ok(Resp::new(CampaignResponse {
                // etcd answers with the header of the joining txn, not of the final read.
                header: joined.header,
                leader: Some(LeaderKey {
                    name: msg.name,
                    key,
                    rev,
                    lease,
                }),
            })),
            Waited::OwnKeyDeleted => Err(Status::unknown(NOT_LEADER)),
        }
    }

    async fn proclaim(&self, req: Req<ProclaimRequest>) -> Result<Resp<ProclaimResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        let leader = msg
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        let lease = session_lease(&self.0, leader.lease, &md).await?;
        let resp = proclaim(&self.0, &md, &leader.key, leader.rev, &msg.value, lease).await?;
        if !resp.succeeded {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(Resp::new(ProclaimResponse {
            header: resp.header,
        }))
    }

    async fn leader(&self, req: Req<LeaderRequest>) -> Result<Resp<LeaderResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        let (header, kvs) = range(&self.0, first_created(&queue_prefix(&msg.name)), &md).await?;
        let kv = kvs
            .into_iter()
            .next()
            .ok_or_else(|| Status::unknown(NO_LEADER))?;
        Ok(Resp::new(LeaderResponse {
            header,
            kv: Some(kv),
        }))
    }

    async fn observe(&self, req: Req<LeaderRequest>) -> Result<Resp<ObserveStream>, Status> {
        let (md, _, msg) = req.into_parts();
        let ctx = self.0.clone();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let prefix = queue_prefix(&msg.name);
            // Ends when the client goes away (the receiver is dropped) even while no leader
            // changes, dropping the engine watch with it.
            let failed = tokio::select! {
                result = observe_leaders(&ctx, &md, &prefix, &tx) => result.err(),
                () = tx.closed() => None,
            };
            if let Some(e) = failed {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Resp::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(&self, req: Req<ResignRequest>) -> Result<Resp<ResignResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        let leader = msg
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        let resp = withdraw(&self.0, &md, &leader.key, leader.rev).await?;
        Ok(Resp::new(ResignResponse {
            header: resp.header,
        }))
    }
}

/// Campaigning again with a lease whose key exists: keep its place in the queue, and proclaim
/// the new value if it differs (etcd's `Campaign` on an existing key).
async fn rejoin(
    ctx: &Ctx,
    md: &MetadataMap,
    joined: &TxnResponse,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<i64, Status> {
    let rev = own_create_revision(joined, key)?;
    let current = range_kvs(&joined.responses, 0)
        .first()
        .map(|kv| kv.value.as_slice());
    if current != Some(value) && !proclaim(ctx, md, key, rev, value, lease).await?.succeeded {
        return Err(Status::unknown(NOT_LEADER));
    }
    Ok(rev)
}

/// Puts `value` on `key` if it still has create revision `rev` (etcd's `Election.Proclaim`).
async fn proclaim(
    ctx: &Ctx,
    md: &MetadataMap,
    key: &[u8],
    rev: i64,
    value: &[u8],
    lease: i64,
) -> Result<TxnResponse, Status> {
    let put = TxnRequest {
        compare: vec![created_at(key, rev)],
        success: vec![put_op(key, value, lease)],
        failure: vec![],
    };
    txn(ctx, put, md).await
}

/// etcd's `Election.observe`: sends the current leader, then each new value of its key until
/// that key is deleted, then the next leader, and so on. Not every value is guaranteed to be
/// seen, but the latest always is. Returns `Ok` when the client has gone away.
async fn observe_leaders(
    ctx: &Ctx,
    md: &MetadataMap,
    prefix: &[u8],
    tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<(), Status> {
    loop {
        let Some((header, kv)) = next_leader(ctx, md, prefix).await? else {
            continue; // compacted while waiting: read again
        };
        // Watch before sending, so a slow client cannot open a gap in the key's history.
        let mut watch = EngineWatch::open(ctx, md, vec![key_from(&kv.key, header.revision + 1)])?;
        let first = LeaderResponse {
            header: Some(header),
            kv: Some(kv),
        };
        if tx.send(Ok(first)).await.is_err() {
            return Ok(());
        }
        'follow: loop {
            let wr = watch.next().await?;
            if wr.canceled {
                check_compacted(&wr)?;
                break 'follow;
            }
            for ev in wr.events {
                if ev.r#type == EventType::Delete as i32 {
                    break 'follow;
                }
                let update = LeaderResponse {
                    header: wr.header,
                    kv: ev.kv,
                };
                if tx.send(Ok(update)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// The current leader, or (when there is none) the first key put under `prefix`, with a header
/// whose revision is that put's. `None` when compaction cancelled the wait.
async fn next_leader(
    ctx: &Ctx,
    md: &MetadataMap,
    prefix: &[u8],
) -> Result<Option<(ResponseHeader, KeyValue)>, Status> {
    let (header, kvs) = range(ctx, first_created(prefix), md).await?;
    let header = header.unwrap_or_default();
    if let Some(kv) = kvs.into_iter().next() {
        return Ok(Some((header, kv)));
    }
    let all = WatchCreateRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        start_revision: header.revision + 1,
        ..Default::default()
    };
    let mut watch = EngineWatch::open(ctx, md, vec![all])?;
    loop {
        let wr = watch.next().await?;
        if wr.canceled {
            check_compacted(&wr)?;
            return Ok(None);
        }
        // With no key under the prefix, the first one put is the leader; deletes are ignored.
        let put = wr
            .events
            .into_iter()
            .find(|ev| ev.r#type == EventType::Put as i32)
            .and_then(|ev| ev.kv);
        if let Some(kv) = put {
            let header = ResponseHeader {
                revision: kv.mod_revision,
                ..wr.header.unwrap_or_default()
            };
            return Ok(Some((header, kv)));
        }
    }
}

fn key_from(key: &[u8], start_revision: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.to_vec(),
        start_revision,
        ..Default::default()
    }
}
