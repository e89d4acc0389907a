//! Simulated etcd clients: each runs on its own madsim node and calls the members' real gRPC
//! services (madsim-tonic), recording every operation's invoke, completion and outcome, and
//! every watch response, in the run's [`Recorder`].
//!
//! - Workload clients draw operations from the scenario's mix over a few hot keys. Every put
//!   writes a value no other op writes (`c{client}-{seq}`), so reads name the write they saw.
//! - Each client holds a lease, keeps it alive every ttl/3 (one keep-alive stream request per
//!   renewal) and may abandon it to let it expire.
//! - A client whose member fails it moves to the next member (as etcd's clients balance).
//! - Lock and election ops contend on one lock and one election (v3lock, v3election) with the
//!   client's lease; a key a client may still hold is released before it asks again.
//! - Watchers watch every workload key from revision 1 with `prev_kv`, and resume after a
//!   break from the revision after the last one they saw, as etcd's clients do. When the mix
//!   has lock or election ops, an auditor watches their keys the same way (the mutex checker
//!   rebuilds the queues from it).
//!
//! Outcome rule: an answer is `Ok`; an error etcd guarantees changed nothing is `Failed`;
//! anything else (timeouts, transport errors, "request timed out", "leader changed") is
//! `Unknown`: the op may have happened.

use std::collections::BTreeMap;
use std::time::Duration;

use madsim::rand::Rng;
use prost::Message as _;
use strata_engine::proto::etcdserverpb::watch_request::RequestUnion;
use strata_engine::proto::etcdserverpb::{
    compare, request_op, response_op, Compare as PbCompare, DeleteRangeRequest, HashKvRequest,
    LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
};
use strata_engine::proto::mvccpb::{self, KeyValue};
use strata_engine::proto::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ResignRequest,
};
use strata_engine::proto::v3lockpb::{LockRequest, UnlockRequest};
use strata_server::api::pb::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    watch_client::WatchClient,
};
use strata_server::api::pb::v3electionpb::election_client::ElectionClient;
use strata_server::api::pb::v3lockpb::lock_client::LockClient;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::client_url;
use crate::history::{
    Call, Compare, CompareResult, Event, EventKind, Kv, NodeIx, Op, Outcome, Reply, Target, TxnOp,
    TxnResult, Watch, WatchEnd, WatchResponse,
};
use crate::history::{COMPACTED, FUTURE_REVISION};
use crate::recorder::Recorder;
use crate::scenario::Workload;

/// Errors after which etcd guarantees the request changed nothing.
const DEFINITE: &[&str] = &[
    "election: no leader",
    COMPACTED,
    FUTURE_REVISION,
    "etcdserver: requested lease not found",
    "etcdserver: too many operations in txn request",
    "etcdserver: request is too large",
    "etcdserver: duplicate key given in txn request",
    "etcdserver: rpc not supported for learner",
    "etcdserver: mvcc: database space exceeded",
];

pub fn key(i: u32) -> Vec<u8> {
    format!("key/{i}").into_bytes()
}

/// `[KEYS_START, KEYS_END)` covers every workload key.
pub const KEYS_START: &[u8] = b"key/";
pub const KEYS_END: &[u8] = b"key0";

/// The lock and the election the workload contends on; their keys live in
/// `[MUTEX_START, MUTEX_END)`, which the auditor watches.
pub const LOCK_NAME: &[u8] = b"mutex/lock";
pub const ELECTION_NAME: &[u8] = b"mutex/election";
pub const MUTEX_START: &[u8] = b"mutex/";
pub const MUTEX_END: &[u8] = b"mutex0";

/// A lease's key in lock or election `name`: etcd's `name/<lease in hex>`.
fn owner_key(name: &[u8], lease: i64) -> Vec<u8> {
    [name, format!("/{lease:x}").as_bytes()].concat()
}

fn channel(ix: NodeIx) -> Channel {
    Endpoint::from_shared(client_url(ix))
        .expect("member URL parses")
        .connect_lazy()
}

fn kv(k: KeyValue) -> Kv {
    Kv {
        key: k.key,
        value: k.value,
        create_revision: k.create_revision,
        mod_revision: k.mod_revision,
        version: k.version,
        lease: k.lease,
    }
}

fn classify(status: &tonic::Status) -> Outcome {
    let msg = status.message();
    if DEFINITE.contains(&msg) {
        Outcome::Failed(msg.to_string())
    } else {
        Outcome::Unknown(format!("{:?}: {msg}", status.code()))
    }
}

fn revision(h: &Option<strata_engine::proto::etcdserverpb::ResponseHeader>) -> i64 {
    h.as_ref().map(|h| h.revision).unwrap_or(0)
}

/// The client of member `ix` from `clients`, connected on first use.
fn cached<C: Clone>(clients: &mut BTreeMap<NodeIx, C>, ix: NodeIx, connect: fn(Channel) -> C) -> C {
    clients
        .entry(ix)
        .or_insert_with(|| connect(channel(ix)))
        .clone()
}

/// Connections to every member, by index.
struct Conns {
    kv: BTreeMap<NodeIx, KvClient<Channel>>,
    lease: BTreeMap<NodeIx, LeaseClient<Channel>>,
    lock: BTreeMap<NodeIx, LockClient<Channel>>,
    election: BTreeMap<NodeIx, ElectionClient<Channel>>,
}

impl Conns {
    fn new() -> Conns {
        Conns {
            kv: BTreeMap::new(),
            lease: BTreeMap::new(),
            lock: BTreeMap::new(),
            election: BTreeMap::new(),
        }
    }

    fn lock(&mut self, ix: NodeIx) -> LockClient<Channel> {
        cached(&mut self.lock, ix, LockClient::new)
    }

    fn election(&mut self, ix: NodeIx) -> ElectionClient<Channel> {
        cached(&mut self.election, ix, ElectionClient::new)
    }

    fn kv(&mut self, ix: NodeIx) -> KvClient<Channel> {
        cached(&mut self.kv, ix, KvClient::new)
    }

    fn lease(&mut self, ix: NodeIx) -> LeaseClient<Channel> {
        cached(&mut self.lease, ix, LeaseClient::new)
    }
}

/// Runs one call against member `ix`, with the workload's timeout.
async fn execute(conns: &mut Conns, ix: NodeIx, call: &Call, timeout: Duration) -> Outcome {
    let answer = tokio::time::timeout(timeout, send(conns, ix, call)).await;
    match answer {
        Ok(Ok(reply)) => Outcome::Ok(reply),
        Ok(Err(status)) => classify(&status),
        Err(_) => Outcome::Unknown(format!("no answer within {timeout:?}")),
    }
}

fn request_op(op: &TxnOp) -> RequestOp {
    let request = match op {
        TxnOp::Get { key } => request_op::Request::RequestRange(RangeRequest {
            key: key.clone(),
            ..Default::default()
        }),
        TxnOp::Put { key, value, lease } => request_op::Request::RequestPut(PutRequest {
            key: key.clone(),
            value: value.clone(),
            lease: *lease,
            ..Default::default()
        }),
        TxnOp::Delete { key } => request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.clone(),
            ..Default::default()
        }),
    };
    RequestOp {
        request: Some(request),
    }
}

fn compare_pb(c: &Compare) -> PbCompare {
    use compare::{CompareTarget as T, TargetUnion as U};
    let (target, operand) = match &c.target {
        Target::Version(n) => (T::Version, U::Version(*n)),
        Target::CreateRevision(n) => (T::Create, U::CreateRevision(*n)),
        Target::ModRevision(n) => (T::Mod, U::ModRevision(*n)),
        Target::Value(v) => (T::Value, U::Value(v.clone())),
        Target::Lease(n) => (T::Lease, U::Lease(*n)),
    };
    let result = match c.result {
        CompareResult::Equal => compare::CompareResult::Equal,
        CompareResult::Greater => compare::CompareResult::Greater,
        CompareResult::Less => compare::CompareResult::Less,
        CompareResult::NotEqual => compare::CompareResult::NotEqual,
    };
    PbCompare {
        result: result as i32,
        target: target as i32,
        key: c.key.clone(),
        range_end: vec![],
        target_union: Some(operand),
    }
}

/// A RangeStream read to its end, its messages merged as etcd's `RangeStreamToRangeResponse`
/// merges them.
async fn range_stream(
    kv: &mut KvClient<Channel>,
    req: RangeRequest,
) -> Result<RangeResponse, tonic::Status> {
    let mut stream = kv.range_stream(req).await?.into_inner();
    let mut merged = RangeResponse::default();
    while let Some(message) = stream.message().await? {
        let part = message.range_response.unwrap_or_default();
        // Protobuf merge: fields set in later messages win, repeated fields append.
        merged
            .merge(part.encode_to_vec().as_slice())
            .map_err(|e| tonic::Status::internal(format!("a stream message merges: {e}")))?;
    }
    Ok(merged)
}

async fn send(conns: &mut Conns, ix: NodeIx, call: &Call) -> Result<Reply, tonic::Status> {
    match call {
        Call::Get {
            key,
            revision: rev,
            serializable,
        } => {
            let r = conns
                .kv(ix)
                .range(RangeRequest {
                    key: key.clone(),
                    revision: *rev,
                    serializable: *serializable,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok(Reply::Get {
                revision: revision(&r.header),
                kvs: r.kvs.into_iter().map(kv).collect(),
            })
        }
        Call::Range {
            start,
            end,
            revision: rev,
            serializable,
            stream,
        } => {
            let req = RangeRequest {
                key: start.clone(),
                range_end: end.clone(),
                revision: *rev,
                serializable: *serializable,
                ..Default::default()
            };
            let r = if *stream {
                range_stream(&mut conns.kv(ix), req).await?
            } else {
                conns.kv(ix).range(req).await?.into_inner()
            };
            Ok(Reply::Get {
                revision: revision(&r.header),
                kvs: r.kvs.into_iter().map(kv).collect(),
            })
        }
        Call::Put {
            key,
            value,
            lease,
            prev_kv,
        } => {
            let r = conns
                .kv(ix)
                .put(PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    lease: *lease,
                    prev_kv: *prev_kv,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok(Reply::Put {
                revision: revision(&r.header),
                prev: r.prev_kv.map(kv),
            })
        }
        Call::Delete { key, prev_kv } => {
            let r = conns
                .kv(ix)
                .delete_range(DeleteRangeRequest {
                    key: key.clone(),
                    prev_kv: *prev_kv,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok(Reply::Delete {
                revision: revision(&r.header),
                deleted: r.deleted,
                prev: r.prev_kvs.into_iter().map(kv).collect(),
            })
        }
        Call::Txn {
            compares,
            success,
            failure,
        } => {
            let r = conns
                .kv(ix)
                .txn(TxnRequest {
                    compare: compares.iter().map(compare_pb).collect(),
                    success: success.iter().map(request_op).collect(),
                    failure: failure.iter().map(request_op).collect(),
                })
                .await?
                .into_inner();
            let results = r
                .responses
                .into_iter()
                .map(|op| match op.response {
                    Some(response_op::Response::ResponseRange(g)) => TxnResult::Get {
                        kvs: g.kvs.into_iter().map(kv).collect(),
                    },
                    Some(response_op::Response::ResponsePut(p)) => TxnResult::Put {
                        prev: p.prev_kv.map(kv),
                    },
                    Some(response_op::Response::ResponseDeleteRange(d)) => TxnResult::Delete {
                        deleted: d.deleted,
                        prev: d.prev_kvs.into_iter().map(kv).collect(),
                    },
                    _ => TxnResult::Get { kvs: vec![] },
                })
                .collect();
            Ok(Reply::Txn {
                revision: revision(&r.header),
                succeeded: r.succeeded,
                results,
            })
        }
        Call::LeaseGrant { id, ttl_secs } => {
            let r = conns
                .lease(ix)
                .lease_grant(LeaseGrantRequest {
                    ttl: *ttl_secs,
                    id: *id,
                })
                .await?
                .into_inner();
            Ok(Reply::LeaseGrant {
                revision: revision(&r.header),
                ttl_secs: r.ttl,
            })
        }
        Call::LeaseRevoke { id } => {
            let r = conns
                .lease(ix)
                .lease_revoke(strata_engine::proto::etcdserverpb::LeaseRevokeRequest { id: *id })
                .await?
                .into_inner();
            Ok(Reply::LeaseRevoke {
                revision: revision(&r.header),
            })
        }
        Call::LeaseKeepAlive { id } => {
            let req = LeaseKeepAliveRequest { id: *id };
            let mut stream = conns
                .lease(ix)
                .lease_keep_alive(futures::stream::iter(vec![req]))
                .await?
                .into_inner();
            match stream.message().await? {
                Some(r) => Ok(Reply::LeaseKeepAlive { ttl_secs: r.ttl }),
                None => Err(tonic::Status::unavailable("keep-alive stream closed")),
            }
        }
        Call::Compact { revision: rev } => {
            let r = conns
                .kv(ix)
                .compact(strata_engine::proto::etcdserverpb::CompactionRequest {
                    revision: *rev,
                    physical: false,
                })
                .await?
                .into_inner();
            Ok(Reply::Compact {
                revision: revision(&r.header),
            })
        }
        Call::Lock { name, lease } => {
            let r = conns
                .lock(ix)
                .lock(LockRequest {
                    name: name.clone(),
                    lease: *lease,
                })
                .await?
                .into_inner();
            Ok(Reply::Lock {
                revision: revision(&r.header),
                key: r.key,
            })
        }
        Call::Unlock { key } => {
            let r = conns
                .lock(ix)
                .unlock(UnlockRequest { key: key.clone() })
                .await?
                .into_inner();
            Ok(Reply::Released {
                revision: revision(&r.header),
            })
        }
        Call::Campaign { name, lease, value } => {
            let r = conns
                .election(ix)
                .campaign(CampaignRequest {
                    name: name.clone(),
                    lease: *lease,
                    value: value.clone(),
                })
                .await?
                .into_inner();
            let leader = r.leader.unwrap_or_default();
            Ok(Reply::Campaign {
                revision: revision(&r.header),
                key: leader.key,
                rev: leader.rev,
            })
        }
        Call::Leader { name } => {
            let r = conns
                .election(ix)
                .leader(LeaderRequest { name: name.clone() })
                .await?
                .into_inner();
            Ok(Reply::Leader {
                revision: revision(&r.header),
                kv: kv(r.kv.unwrap_or_default()),
            })
        }
        Call::Resign {
            name,
            key,
            rev,
            lease,
        } => {
            let r = conns
                .election(ix)
                .resign(ResignRequest {
                    leader: Some(LeaderKey {
                        name: name.clone(),
                        key: key.clone(),
                        rev: *rev,
                        lease: *lease,
                    }),
                })
                .await?
                .into_inner();
            Ok(Reply::Released {
                revision: revision(&r.header),
            })
        }
    }
}

/// Who a workload client is and how long it runs.
pub struct ClientPlan {
    pub id: u32,
    pub members: u32,
    pub workload: Workload,
    pub stop_at: tokio::time::Instant,
    pub recorder: Recorder,
}

struct ClientState {
    plan: ClientPlan,
    conns: Conns,
    member: NodeIx,
    seq: u64,
    lease: i64,
    lease_renewed: Option<tokio::time::Instant>,
    lease_abandoned: Option<tokio::time::Instant>,
    /// Lock and election keys this client may still hold (acquired, or asked for without an
    /// answer), released before it asks again: a key left behind would block every other
    /// client until its lease expires, which a kept-alive lease never does.
    held: Vec<Vec<u8>>,
    /// Ranges this client has read, to alternate unary Range and RangeStream.
    ranges: u64,
    /// The highest header revision this client was answered.
    seen_revision: i64,
    /// The lowest revision not known to be compacted: one above the highest revision a read
    /// was refused as compacted.
    compact_floor: i64,
}

impl ClientState {
    /// Runs `call` against the client's member and records it; moves to the next member if
    /// the answer was not a success (unless the workload is sticky).
    async fn run(&mut self, call: Call) -> Outcome {
        let rec = &self.plan.recorder;
        let id = rec.next_op_id();
        let invoke = rec.now();
        let node = self.member;
        let outcome = execute(&mut self.conns, node, &call, self.plan.workload.timeout.0).await;
        let complete = rec.now();
        if let Outcome::Ok(
            Reply::Get { revision, .. }
            | Reply::Put { revision, .. }
            | Reply::Delete { revision, .. }
            | Reply::Txn { revision, .. },
        ) = &outcome
        {
            self.seen_revision = self.seen_revision.max(*revision);
        }
        if !matches!(outcome, Outcome::Ok(_)) {
            if !self.plan.workload.sticky {
                self.member = (self.member + 1) % self.plan.members;
            }
            // Back off before the next try, as etcd's clients do.
            let backoff = madsim::rand::thread_rng().gen_range(20..100);
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
        rec.op(Op {
            id,
            client: self.plan.id,
            node,
            call,
            invoke,
            complete,
            outcome: outcome.clone(),
        });
        outcome
    }

    fn value(&mut self) -> Vec<u8> {
        self.seq += 1;
        format!("c{}-{}", self.plan.id, self.seq).into_bytes()
    }

    /// A linearizable get of `key`: what it holds now, or None if the read failed.
    async fn read_current(&mut self, key: &[u8]) -> Option<Option<Kv>> {
        let seen = self
            .run(Call::Get {
                key: key.to_vec(),
                revision: 0,
                serializable: false,
            })
            .await;
        match seen {
            Outcome::Ok(Reply::Get { mut kvs, .. }) => Some(kvs.pop()),
            _ => None,
        }
    }

    /// A txn guarded by one compare of a random target and result against what the client
    /// just read of `key` (the field itself, one below or one above; for values a prefix or an
    /// extension), putting `key` and reading another key on success, deleting the other key
    /// and reading `key` on failure.
    async fn compare_txn(&mut self, key: Vec<u8>) {
        let Some(kv) = self.read_current(&key).await else {
            return;
        };
        let kv = kv.as_ref();
        let (which, nudge, result, other) = {
            let mut rng = madsim::rand::thread_rng();
            (
                rng.gen_range(0..5),
                rng.gen_range(-1..=1i64),
                CompareResult::ALL[rng.gen_range(0..4)],
                self.random_key(),
            )
        };
        let target = Target::near(which, kv, nudge, self.lease);
        let value = self.value();
        let (mut success, mut failure) = (
            vec![TxnOp::Put {
                key: key.clone(),
                value,
                lease: 0,
            }],
            vec![TxnOp::Get { key: key.clone() }],
        );
        if other != key {
            success.push(TxnOp::Get { key: other.clone() });
            failure.insert(0, TxnOp::Delete { key: other });
        }
        self.run(Call::Txn {
            compares: vec![Compare {
                key,
                target,
                result,
            }],
            success,
            failure,
        })
        .await;
    }

    /// A linearizable read at a past revision: any revision up to two past the highest this
    /// client was answered, or, half the time once a read was refused as compacted, one at,
    /// just below or just above the lowest revision not known to be compacted (where an
    /// off-by-one in compaction shows). Every other one reads the whole key range.
    async fn historical_read(&mut self, key: Vec<u8>) {
        let (revision, whole) = {
            let mut rng = madsim::rand::thread_rng();
            let revision = if self.compact_floor > 1 && rng.gen_bool(0.5) {
                self.compact_floor + rng.gen_range(-1..=1)
            } else {
                rng.gen_range(1..=self.seen_revision.max(1) + 2)
            };
            (revision, rng.gen_bool(0.5))
        };
        let call = match whole {
            false => Call::Get {
                key,
                revision,
                serializable: false,
            },
            true => Call::Range {
                start: KEYS_START.to_vec(),
                end: KEYS_END.to_vec(),
                revision,
                serializable: false,
                stream: false,
            },
        };
        if let Outcome::Failed(msg) = self.run(call).await {
            if msg == COMPACTED {
                self.compact_floor = self.compact_floor.max(revision + 1);
            }
        }
    }

    fn random_key(&self) -> Vec<u8> {
        key(madsim::rand::thread_rng().gen_range(0..self.plan.workload.keys))
    }

    async fn grant_lease(&mut self) {
        // Lease ids are chosen by the client so an unknown-outcome grant still names its lease.
        let id = (self.plan.id as i64 + 1) << 32 | (self.seq as i64 & 0xffff_ffff);
        self.seq += 1;
        let ttl_secs = self.plan.workload.lease_ttl_secs;
        let out = self.run(Call::LeaseGrant { id, ttl_secs }).await;
        if matches!(out, Outcome::Ok(_)) {
            self.lease = id;
            self.lease_renewed = Some(tokio::time::Instant::now());
            self.lease_abandoned = None;
        }
    }

    async fn tend_lease(&mut self) {
        let now = tokio::time::Instant::now();
        let ttl = Duration::from_secs(self.plan.workload.lease_ttl_secs as u64);
        if let Some(since) = self.lease_abandoned {
            if now - since > ttl * 2 {
                self.grant_lease().await;
            }
            return;
        }
        if self.lease == 0 {
            self.grant_lease().await;
            return;
        }
        let due = self
            .lease_renewed
            .map(|t| now - t >= ttl / 3)
            .unwrap_or(true);
        if !due {
            return;
        }
        if madsim::rand::thread_rng().gen_bool(self.plan.workload.lease_abandon) {
            self.lease_abandoned = Some(now);
            self.plan.recorder.log(format!(
                "client {} abandons lease {:x}",
                self.plan.id, self.lease
            ));
            return;
        }
        let out = self.run(Call::LeaseKeepAlive { id: self.lease }).await;
        match out {
            Outcome::Ok(Reply::LeaseKeepAlive { ttl_secs: 0 }) => self.grant_lease().await,
            Outcome::Ok(_) => self.lease_renewed = Some(now),
            _ => {}
        }
    }

    /// Releases every key this client may hold, oldest last; stops at the first failure.
    async fn release_held(&mut self) -> bool {
        while let Some(key) = self.held.last().cloned() {
            match self.run(Call::Unlock { key }).await {
                Outcome::Ok(_) => {
                    self.held.pop();
                }
                _ => return false,
            }
        }
        true
    }

    /// `etcdctl lock`: take the lock, hold it for a think time, unlock.
    async fn lock_and_unlock(&mut self) {
        if self.lease == 0 || !self.release_held().await {
            return;
        }
        let out = self
            .run(Call::Lock {
                name: LOCK_NAME.to_vec(),
                lease: self.lease,
            })
            .await;
        match out {
            Outcome::Ok(Reply::Lock { key, .. }) => {
                self.held.push(key);
                self.think().await;
                self.release_held().await;
            }
            Outcome::Unknown(_) => self.held.push(owner_key(LOCK_NAME, self.lease)),
            _ => {}
        }
    }

    /// `etcdctl elect`: campaign, read the leader, resign.
    async fn campaign_and_resign(&mut self) {
        if self.lease == 0 || !self.release_held().await {
            return;
        }
        let value = self.value();
        let out = self
            .run(Call::Campaign {
                name: ELECTION_NAME.to_vec(),
                lease: self.lease,
                value,
            })
            .await;
        match out {
            Outcome::Ok(Reply::Campaign { key, rev, .. }) => {
                self.run(Call::Leader {
                    name: ELECTION_NAME.to_vec(),
                })
                .await;
                let resigned = self
                    .run(Call::Resign {
                        name: ELECTION_NAME.to_vec(),
                        key: key.clone(),
                        rev,
                        lease: self.lease,
                    })
                    .await;
                if !matches!(resigned, Outcome::Ok(_)) {
                    self.held.push(key);
                }
            }
            Outcome::Unknown(_) => self.held.push(owner_key(ELECTION_NAME, self.lease)),
            _ => {}
        }
    }

    async fn think(&self) {
        let think = self.plan.workload.think.0;
        if !think.is_zero() {
            let jitter = madsim::rand::thread_rng().gen_range(0..=think.as_micros() as u64);
            tokio::time::sleep(Duration::from_micros(jitter)).await;
        }
    }

    async fn one_op(&mut self) {
        let mix = &self.plan.workload.mix;
        let weights = [
            mix.get,
            mix.serializable_get,
            mix.put,
            mix.delete,
            mix.cas,
            mix.multi_put,
            mix.range,
            mix.lease_put,
            mix.lock,
            mix.election,
            mix.compare_txn,
            mix.historical_read,
        ];
        let total: u32 = weights.iter().sum();
        if total == 0 {
            return;
        }
        let mut pick = madsim::rand::thread_rng().gen_range(0..total);
        let mut which = 0;
        for (i, w) in weights.iter().enumerate() {
            if pick < *w {
                which = i;
                break;
            }
            pick -= w;
        }
        let key = self.random_key();
        match which {
            0 | 1 => {
                self.run(Call::Get {
                    key,
                    revision: 0,
                    serializable: which == 1,
                })
                .await;
            }
            2 => {
                let value = self.value();
                self.run(Call::Put {
                    key,
                    value,
                    lease: 0,
                    prev_kv: true,
                })
                .await;
            }
            3 => {
                self.run(Call::Delete { key, prev_kv: true }).await;
            }
            4 => {
                let Some(kv) = self.read_current(&key).await else {
                    return;
                };
                let rev = kv.map(|k| k.mod_revision).unwrap_or(0);
                let value = self.value();
                self.run(Call::Txn {
                    compares: vec![Compare::mod_revision(key.clone(), rev)],
                    success: vec![TxnOp::Put {
                        key: key.clone(),
                        value,
                        lease: 0,
                    }],
                    failure: vec![TxnOp::Get { key }],
                })
                .await;
            }
            5 => {
                let other = self.random_key();
                if other == key {
                    return;
                }
                let (v1, v2) = (self.value(), self.value());
                self.run(Call::Txn {
                    compares: vec![],
                    success: vec![
                        TxnOp::Put {
                            key,
                            value: v1,
                            lease: 0,
                        },
                        TxnOp::Put {
                            key: other,
                            value: v2,
                            lease: 0,
                        },
                    ],
                    failure: vec![],
                })
                .await;
            }
            8 => self.lock_and_unlock().await,
            9 => self.campaign_and_resign().await,
            10 => self.compare_txn(key).await,
            11 => self.historical_read(key).await,
            6 => {
                // Every other range of a client streams (no random draw: runs stay as they were).
                self.ranges += 1;
                self.run(Call::Range {
                    start: KEYS_START.to_vec(),
                    end: KEYS_END.to_vec(),
                    revision: 0,
                    serializable: false,
                    stream: self.ranges.is_multiple_of(2),
                })
                .await;
            }
            _ => {
                if self.lease == 0 {
                    return;
                }
                let value = self.value();
                self.run(Call::Put {
                    key,
                    value,
                    lease: self.lease,
                    prev_kv: false,
                })
                .await;
            }
        }
    }
}

/// A workload client: operations until `stop_at`.
pub async fn client_main(plan: ClientPlan) {
    let member = plan.id % plan.members;
    let mut st = ClientState {
        conns: Conns::new(),
        member,
        seq: 0,
        lease: 0,
        lease_renewed: None,
        lease_abandoned: None,
        held: Vec::new(),
        ranges: 0,
        seen_revision: 0,
        compact_floor: 1,
        plan,
    };
    let mix = &st.plan.workload.mix;
    let uses_leases = mix.lease_put > 0 || mix.lock > 0 || mix.election > 0;
    while tokio::time::Instant::now() < st.plan.stop_at {
        if uses_leases {
            st.tend_lease().await;
        }
        st.one_op().await;
        st.think().await;
    }
}

fn event(e: mvccpb::Event) -> Event {
    let kind = if e.r#type == mvccpb::event::EventType::Delete as i32 {
        EventKind::Delete
    } else {
        EventKind::Put
    };
    Event {
        kind,
        kv: kv(e.kv.unwrap_or_default()),
        prev: e.prev_kv.map(kv),
    }
}

pub struct WatcherPlan {
    pub id: u32,
    pub members: u32,
    /// The range watched: the workload keys, or the lock and election keys (the auditor).
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub prev_kv: bool,
    pub filter_deletes: bool,
    pub progress_notify: bool,
    pub silence: Duration,
    pub stop_at: tokio::time::Instant,
    pub recorder: Recorder,
}

/// A watcher over its range from revision 1, resumed after every break.
pub async fn watcher_main(plan: WatcherPlan) {
    let rec = plan.recorder.clone();
    let mut member = plan.id % plan.members;
    let mut next_rev = 1;
    while tokio::time::Instant::now() < plan.stop_at {
        let mut watch = Watch {
            id: rec.next_op_id(),
            client: 1000 + plan.id,
            node: member,
            start: plan.start.clone(),
            end: plan.end.clone(),
            start_revision: next_rev,
            prev_kv: plan.prev_kv,
            filter_puts: false,
            filter_deletes: plan.filter_deletes,
            progress_notify: plan.progress_notify,
            invoke: rec.now(),
            created_revision: None,
            responses: vec![],
            end_state: WatchEnd::Open,
        };
        watch.end_state = watch_once(&plan, &mut watch).await;
        if let Some(last) = watch
            .responses
            .iter()
            .flat_map(|r| r.events.iter())
            .map(|e| e.kv.mod_revision)
            .max()
        {
            next_rev = last + 1;
        }
        if let Some(c) = watch.responses.iter().map(|r| r.compact_revision).max() {
            if c > next_rev {
                next_rev = c;
            }
        }
        rec.watch(watch);
        member = (member + 1) % plan.members;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn watch_once(plan: &WatcherPlan, watch: &mut Watch) -> WatchEnd {
    let rec = &plan.recorder;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<WatchRequest>();
    let requests =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let filters = if watch.filter_deletes {
        vec![strata_engine::proto::etcdserverpb::watch_create_request::FilterType::Nodelete as i32]
    } else {
        vec![]
    };
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: watch.start.clone(),
            range_end: watch.end.clone(),
            start_revision: watch.start_revision,
            prev_kv: watch.prev_kv,
            filters,
            progress_notify: watch.progress_notify,
            ..Default::default()
        })),
    };
    let _ = tx.send(create);
    let mut client = WatchClient::new(channel(watch.node));
    let opened = tokio::time::timeout(plan.silence, client.watch(requests)).await;
    let mut stream = match opened {
        Ok(Ok(s)) => s.into_inner(),
        Ok(Err(status)) => return WatchEnd::Broken(status.message().to_string()),
        Err(_) => return WatchEnd::Broken("no answer to the watch call".into()),
    };
    let mut asked_progress = false;
    loop {
        let remaining = plan
            .stop_at
            .saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return WatchEnd::Open;
        }
        let wait = plan.silence.min(remaining);
        match tokio::time::timeout(wait, stream.message()).await {
            Ok(Ok(Some(r))) => {
                asked_progress = false;
                let at = rec.now();
                let header_revision = revision(&r.header);
                if r.created {
                    watch.created_revision = Some(header_revision);
                    if !r.canceled {
                        continue;
                    }
                }
                let progress = r.events.is_empty() && !r.canceled && !r.created;
                watch.responses.push(WatchResponse {
                    at,
                    header_revision,
                    events: r.events.into_iter().map(event).collect(),
                    compact_revision: r.compact_revision,
                    canceled: r.canceled,
                    progress,
                });
                if r.canceled {
                    return WatchEnd::Canceled;
                }
            }
            Ok(Ok(None)) => return WatchEnd::Broken("stream ended".into()),
            Ok(Err(status)) => return WatchEnd::Broken(status.message().to_string()),
            Err(_) if remaining <= plan.silence => return WatchEnd::Open,
            Err(_) if !asked_progress => {
                // Quiet: ask where the watch stands; a live member answers at once.
                asked_progress = true;
                let _ = tx.send(WatchRequest {
                    request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                });
            }
            Err(_) => return WatchEnd::Broken("no progress answer".into()),
        }
    }
}

/// A fault-free read of every workload key from member `ix` (serializable: what it holds).
pub async fn final_read(ix: NodeIx, rev: i64, timeout: Duration) -> Option<(i64, Vec<Kv>)> {
    let mut client = KvClient::new(channel(ix));
    let r = tokio::time::timeout(
        timeout,
        client.range(RangeRequest {
            key: KEYS_START.to_vec(),
            range_end: KEYS_END.to_vec(),
            serializable: true,
            revision: rev,
            ..Default::default()
        }),
    )
    .await
    .ok()?
    .ok()?
    .into_inner();
    Some((revision(&r.header), r.kvs.into_iter().map(kv).collect()))
}

/// `HashKV` of member `ix` at `rev`.
pub async fn hash_kv(ix: NodeIx, rev: i64, timeout: Duration) -> Option<(i64, u32)> {
    let mut client = MaintenanceClient::new(channel(ix));
    let r = tokio::time::timeout(timeout, client.hash_kv(HashKvRequest { revision: rev }))
        .await
        .ok()?
        .ok()?
        .into_inner();
    Some((r.hash_revision, r.hash))
}
