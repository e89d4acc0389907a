//! etcd's v3lock service (`Lock`, `Unlock`), and the queueing it shares with v3election's
//! `Campaign` (etcd's `concurrency.Mutex`, `Election` and `waitDeletes`, run inside the server).
//!
//! A lock (or election) named N is the set of keys under `N/`, one per lease, named
//! `N/<lease in hex>`; its holder is the key with the smallest create revision. A caller joins
//! with one txn (create its key if absent), and unless it is first waits until every key created
//! before its own has been deleted: it watches only the latest such key, and looks again when
//! that one goes. Keys and queue order are etcd's, so these RPCs and etcd's client-side
//! recipes (`etcdctl lock`, `etcdctl elect`) exclude one another.
//!
//! Ordering contract: a wait reads at revision R and watches from R + 1, so no delete after the
//! read is missed; a watch cancelled by compaction makes the wait read again.
//!
//! Where this departs from etcd, and why:
//! - A wait also watches the caller's own key and ends as soon as it is deleted (lease expired or
//!   revoked). etcd keeps waiting for the earlier keys and notices only then (its `Mutex.Lock`
//!   carries this as a TODO). Lock answers etcd's "mutex: session is expired" either way.
//! - A caller that goes away mid-wait (or whose wait fails) has its key deleted only while the
//!   key still has the create revision this call saw, as etcd's `Resign` does; etcd's `Unlock`
//!   deletes unconditionally. Both remove the same key unless it was re-created meanwhile.

use strata_engine::proto::etcdserverpb::{
    compare, range_request::SortOrder, range_request::SortTarget, request_op, response_op,
    watch_create_request::FilterType, Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest,
    RangeRequest, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    WatchCreateRequest, WatchResponse,
};
use strata_engine::proto::mvccpb::KeyValue;
use strata_engine::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use strata_engine::request::{Request, Response};
use strata_engine::watch::WatchOutput;
use strata_engine::{EtcdError, Input, StreamId};
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tonic::{Request as Req, Response as Resp, Status};

use super::pb::v3lockpb::lock_server::Lock;
use super::Ctx;
use crate::driver::Handle;
use crate::expect_response;

/// etcd's `concurrency.ErrSessionExpired`: the caller's key vanished while it waited.
const SESSION_EXPIRED: &str = "mutex: session is expired";

/// TTL of the lease etcd's `concurrency.NewSession` grants when the request names none.
const SESSION_TTL_SECS: i64 = 60;

#[derive(Clone, Debug)]
pub struct LockService(pub Ctx);

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Req<LockRequest>) -> Result<Resp<LockResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        let ctx = &self.0;
        let lease = session_lease(ctx, msg.lease, &md).await?;
        let prefix = queue_prefix(&msg.name);
        let key = owner_key(&prefix, lease);
        // etcd's tryAcquire: join (or find our key from an earlier call with this lease) and
        // read the holder in the same txn, so the uncontended path is one round trip.
        let joined = txn(
            ctx,
            TxnRequest {
                compare: vec![created_at(&key, 0)],
                success: vec![put_op(&key, b"", lease), range_op(first_created(&prefix))],
                failure: vec![range_op(key_only(&key)), range_op(first_created(&prefix))],
            },
            &md,
        )
        .await?;
        let rev = if joined.succeeded {
            revision(&joined.header)
        } else {
            own_create_revision(&joined, &key)?
        };
        let holder = range_kvs(&joined.responses, 1).first();
        let skip_wait = strata_engine::bugs::active(
            ctx.handle.shared.config.bug,
            strata_engine::bugs::Bug::LockSkipsWait,
        );
        if skip_wait || holder.is_none_or(|kv| kv.create_revision == rev) {
            return Ok(Resp::new(LockResponse {
                header: joined.header,
                key,
            }));
        }
        let claim = Claim::new(ctx, &md, &key, rev);
        match wait_deletes(ctx, &md, &prefix, &key, rev).await? {
            Waited::First(header) => {
                claim.keep();
                Ok(Resp::new(LockResponse {
                    header: Some(header),
                    key,
                }))
            }
            Waited::OwnKeyDeleted => {
                claim.keep();
                Err(Status::unknown(SESSION_EXPIRED))
            }
        }
    }

    async fn unlock(&self, req: Req<UnlockRequest>) -> Result<Resp<UnlockResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        let delete = DeleteRangeRequest {
            key: msg.key,
            ..Default::default()
        };
        let resp = expect_response!(
            call(&self.0, Request::DeleteRange(delete), &md).await?,
            DeleteRange
        )?;
        Ok(Resp::new(UnlockResponse {
            header: resp.into_inner().header,
        }))
    }
}

/// Runs one engine request with the caller's token. etcd runs these recipes on an embedded
/// client whose errors lose their gRPC code (`rpctypes.EtcdError` carries no status), so its
/// clients see `Unknown` with etcd's text, "etcdserver: requested lease not found" included.
async fn call(ctx: &Ctx, request: Request, md: &MetadataMap) -> Result<Response, Status> {
    ctx.call(request, md)
        .await
        .map_err(|s| Status::unknown(s.message()))
}

fn unknown(e: EtcdError) -> Status {
    Status::unknown(e.to_string())
}

/// etcd's `concurrency.NewSession(WithLease(id))`: lease 0 means none was given, and etcd then
/// grants a fresh lease with the session TTL, which nobody keeps alive (the session is orphaned).
pub(super) async fn session_lease(ctx: &Ctx, lease: i64, md: &MetadataMap) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    let grant = LeaseGrantRequest {
        ttl: SESSION_TTL_SECS,
        id: 0,
    };
    let resp = expect_response!(call(ctx, Request::LeaseGrant(grant), md).await?, LeaseGrant)?;
    Ok(resp.into_inner().id)
}

/// The keys of lock or election `name` live under `name/`.
pub(super) fn queue_prefix(name: &[u8]) -> Vec<u8> {
    [name, b"/"].concat()
}

/// A lease's key in a queue: etcd's `fmt.Sprintf("%s%x", prefix, leaseID)`. Go prints a negative
/// number's `%x` as sign and magnitude, unlike Rust's two's complement.
pub(super) fn owner_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    [prefix, hex.as_bytes()].concat()
}

pub(super) use strata_engine::request::prefix_end;

/// `create_revision(key) == rev`: the key exists with this create revision (0: it is absent).
pub(super) fn created_at(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        range_end: vec![],
    }
}

pub(super) fn put_op(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

pub(super) fn range_op(range: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(range)),
    }
}

pub(super) fn key_only(key: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }
}

/// The queue's holder: its key with the smallest create revision (etcd's `WithFirstCreate`).
pub(super) fn first_created(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

/// The latest key created at or before `max_create_revision` (etcd's `WithLastCreate` and
/// `WithMaxCreateRev`): the one a waiter watches.
fn last_created_until(prefix: &[u8], max_create_revision: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision,
        ..Default::default()
    }
}

pub(super) async fn txn(
    ctx: &Ctx,
    txn: TxnRequest,
    md: &MetadataMap,
) -> Result<TxnResponse, Status> {
    Ok(expect_response!(call(ctx, Request::Txn(txn), md).await?, Txn)?.into_inner())
}

pub(super) async fn range(
    ctx: &Ctx,
    range: RangeRequest,
    md: &MetadataMap,
) -> Result<(Option<ResponseHeader>, Vec<KeyValue>), Status> {
    let resp = expect_response!(call(ctx, Request::Range(range), md).await?, Range)?.into_inner();
    Ok((resp.header, resp.kvs))
}

/// The kvs of the `i`th op of a txn, which must be a range.
pub(super) fn range_kvs(responses: &[ResponseOp], i: usize) -> &[KeyValue] {
    match responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(r)) => &r.kvs,
        _ => &[],
    }
}

pub(super) fn revision(header: &Option<ResponseHeader>) -> i64 {
    header.as_ref().map_or(0, |h| h.revision)
}

/// The create revision of our key, found by a joining txn's failure branch (first op).
pub(super) fn own_create_revision(joined: &TxnResponse, key: &[u8]) -> Result<i64, Status> {
    match range_kvs(&joined.responses, 0).first() {
        Some(kv) => Ok(kv.create_revision),
        None => Err(Status::internal(format!(
            "txn found {} existing and then absent",
            String::from_utf8_lossy(key)
        ))),
    }
}

/// Deletes `key` if it still has create revision `rev` (etcd's `Election.Resign`).
pub(super) async fn withdraw(
    ctx: &Ctx,
    md: &MetadataMap,
    key: &[u8],
    rev: i64,
) -> Result<TxnResponse, Status> {
    let delete = RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            },
        )),
    };
    let resign = TxnRequest {
        compare: vec![created_at(key, rev)],
        success: vec![delete],
        failure: vec![],
    };
    txn(ctx, resign, md).await
}

/// A queued key that is withdrawn when dropped unless [`Claim::keep`] was called: the caller
/// went away mid-wait (hyper drops the handler when the client resets the stream) or the wait
/// failed. Dropping cannot await, so the delete runs on its own task.
pub(super) struct Claim {
    ctx: Ctx,
    md: MetadataMap,
    key: Vec<u8>,
    rev: i64,
    armed: bool,
}

impl Claim {
    pub(super) fn new(ctx: &Ctx, md: &MetadataMap, key: &[u8], rev: i64) -> Claim {
        Claim {
            ctx: ctx.clone(),
            md: md.clone(),
            key: key.to_vec(),
            rev,
            armed: true,
        }
    }

    /// The key's fate is settled: it now holds the lock or is already gone.
    pub(super) fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (ctx, md, key, rev) = (
            self.ctx.clone(),
            std::mem::take(&mut self.md),
            std::mem::take(&mut self.key),
            self.rev,
        );
        tokio::spawn(async move {
            if let Err(e) = withdraw(&ctx, &md, &key, rev).await {
                tracing::warn!(key = %String::from_utf8_lossy(&key), error = %e,
                    "could not withdraw an abandoned lock or campaign key; its lease will");
            }
        });
    }
}

/// How a wait for earlier keys ended.
pub(super) enum Waited {
    /// No key created before ours is left; the header of the read that saw it.
    First(ResponseHeader),
    /// Our own key was deleted first (lease expired or revoked, or the key deleted).
    OwnKeyDeleted,
}

/// etcd's `waitDeletes`: waits until no key under `prefix` was created before `own_rev` (the
/// create revision of `own_key`), or until `own_key` itself is deleted.
pub(super) async fn wait_deletes(
    ctx: &Ctx,
    md: &MetadataMap,
    prefix: &[u8],
    own_key: &[u8],
    own_rev: i64,
) -> Result<Waited, Status> {
    loop {
        let read = TxnRequest {
            compare: vec![],
            success: vec![
                range_op(last_created_until(prefix, own_rev - 1)),
                range_op(key_only(own_key)),
            ],
            failure: vec![],
        };
        let resp = txn(ctx, read, md).await?;
        let at = revision(&resp.header);
        if range_kvs(&resp.responses, 1).is_empty() {
            return Ok(Waited::OwnKeyDeleted);
        }
        let Some(last) = range_kvs(&resp.responses, 0).first() else {
            return Ok(Waited::First(resp.header.unwrap_or_default()));
        };
        let mut watch = EngineWatch::open(
            ctx,
            md,
            vec![deletes_of(&last.key, at + 1), deletes_of(own_key, at + 1)],
        )?;
        loop {
            let wr = watch.next().await?;
            if wr.canceled {
                check_compacted(&wr)?;
                break; // history gone: read again
            }
            let deleted = |key: &[u8]| {
                wr.events
                    .iter()
                    .any(|ev| ev.kv.as_ref().is_some_and(|kv| kv.key == key))
            };
            if deleted(own_key) {
                return Ok(Waited::OwnKeyDeleted);
            }
            if deleted(&last.key) {
                break;
            }
        }
    }
}

/// A watch on `key` that reports only its deletes, from `start_revision` on.
fn deletes_of(key: &[u8], start_revision: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.to_vec(),
        start_revision,
        filters: vec![FilterType::Noput as i32],
        ..Default::default()
    }
}

/// A cancelled watch is expected only when compaction passed its start revision (the caller
/// then reads again); any other cancel (auth refused the watch) ends the call with its reason.
pub(super) fn check_compacted(wr: &WatchResponse) -> Result<(), Status> {
    if wr.compact_revision != 0 {
        return Ok(());
    }
    Err(Status::unknown(wr.cancel_reason.clone()))
}

/// An engine watch stream owned by one wait, closed (its watchers dropped) when this is dropped,
/// so a caller that goes away leaves no watcher behind.
pub(super) struct EngineWatch {
    handle: Handle,
    stream: StreamId,
    events: mpsc::Receiver<WatchOutput>,
}

impl EngineWatch {
    pub(super) fn open(
        ctx: &Ctx,
        md: &MetadataMap,
        watches: Vec<WatchCreateRequest>,
    ) -> Result<EngineWatch, Status> {
        let handle = ctx.handle.clone();
        let credential = ctx.credential(md);
        let (stream, events) = handle.watch_open().map_err(unknown)?;
        let watch = EngineWatch {
            handle,
            stream,
            events,
        };
        for request in watches {
            watch
                .handle
                .watch_input(Input::WatchCreate {
                    stream,
                    request,
                    credential: credential.clone(),
                })
                .map_err(unknown)?;
        }
        Ok(watch)
    }

    /// The next response that carries events or a cancel.
    pub(super) async fn next(&mut self) -> Result<WatchResponse, Status> {
        loop {
            let wr = self
                .events
                .recv()
                .await
                .ok_or_else(|| unknown(EtcdError::Stopped))?
                .response;
            if wr.canceled || !wr.events.is_empty() {
                return Ok(wr);
            }
        }
    }
}

impl Drop for EngineWatch {
    fn drop(&mut self) {
        let _ = self.handle.watch_input(Input::WatchStreamClosed {
            stream: self.stream,
        });
    }
}
