//! `MvccStore` against a naive model of etcd's KV semantics, over random sequences of puts,
//! deletes, txns (with compares and nested txns), compactions, historical reads, event reads and
//! restarts, on a four-key alphabet so keys collide.
//!
//! The model keeps a full snapshot of the key space for every revision and recomputes each
//! answer from the snapshots, in code written apart from the store's: no index, no generations,
//! no backend. After every step the store must agree with the model, and, once its batch is
//! written, a store reopened from the backend must agree with the live one (current and compact
//! revision, reads at several revisions, events, lease keys, HashKV).

use std::collections::BTreeMap;

use proptest::prelude::*;
use prost::Message as _;
use strata_engine::error::Error;
use strata_engine::mvcc::{
    validate_put, validate_range, validate_txn, Counting, HashKv, MvccStore,
};
use strata_engine::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use strata_engine::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use strata_engine::proto::etcdserverpb::request_op::Request;
use strata_engine::proto::etcdserverpb::response_op::Response;
use strata_engine::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use strata_engine::proto::mvccpb::event::EventType;
use strata_engine::proto::mvccpb::{Event, KeyValue};
use strata_engine::{EtcdError, KvBackend, LeaseId, MemBackend, Revision};

/// Leases 1 and 2 exist; 3 does not.
fn lease_exists(lease: LeaseId) -> bool {
    matches!(lease.0, 1 | 2)
}

// ---------------------------------------------------------------------------------------------
// The model.

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
}

type State = BTreeMap<Vec<u8>, Entry>;

fn to_kv(key: &[u8], e: &Entry) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        create_revision: e.create_revision,
        mod_revision: e.mod_revision,
        version: e.version,
        value: e.value.clone(),
        lease: e.lease,
    }
}

/// Whether `k` is among the keys `key`/`range_end` name.
fn in_span(k: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    match range_end {
        [] => k == key,
        [0] => k >= key,
        end => key <= k && k < end,
    }
}

fn kvs_in(state: &State, key: &[u8], range_end: &[u8]) -> Vec<KeyValue> {
    state
        .iter()
        .filter(|(k, _)| in_span(k, key, range_end))
        .map(|(k, e)| to_kv(k, e))
        .collect()
}

struct Model {
    /// `states[r]`: the key space at revision `r`; revisions 0 and 1 are empty.
    states: Vec<State>,
    /// `events[r]`: the events of revision `r`, in op order.
    events: Vec<Vec<Event>>,
    compact: i64,
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}

fn model_range(state: &State, req: &RangeRequest, head: i64) -> RangeResponse {
    let mut kvs = kvs_in(state, &req.key, &req.range_end);
    let count = kvs.len() as i64;
    if req.count_only {
        return RangeResponse {
            header: header(head),
            kvs: vec![],
            more: false,
            count,
        };
    }
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let order = req.sort_order;
    if order == SortOrder::None as i32 && !filtered && req.limit > 0 {
        kvs.truncate(req.limit as usize + 1);
    }
    kvs.retain(|kv| {
        (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
    });
    let target = SortTarget::try_from(req.sort_target).unwrap();
    let ascending = order == SortOrder::Ascend as i32
        || (order == SortOrder::None as i32 && target != SortTarget::Key);
    let descending = order == SortOrder::Descend as i32;
    if ascending || descending {
        let field = |kv: &KeyValue| -> (Vec<u8>, i64) {
            match target {
                SortTarget::Key => (kv.key.clone(), 0),
                SortTarget::Version => (vec![], kv.version),
                SortTarget::Create => (vec![], kv.create_revision),
                SortTarget::Mod => (vec![], kv.mod_revision),
                SortTarget::Value => (kv.value.clone(), 0),
            }
        };
        // Stable, so ties stay in key order.
        kvs.sort_by(|a, b| {
            let (a, b) = (field(a), field(b));
            if descending {
                b.cmp(&a)
            } else {
                a.cmp(&b)
            }
        });
    }
    let more = req.limit > 0 && kvs.len() as i64 > req.limit;
    if more {
        kvs.truncate(req.limit as usize);
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    RangeResponse {
        header: header(head),
        kvs,
        more,
        count,
    }
}

fn compare_holds(state: &State, c: &Compare) -> bool {
    let kvs = kvs_in(state, &c.key, &c.range_end);
    let target = CompareTarget::try_from(c.target).unwrap();
    if kvs.is_empty() && target == CompareTarget::Value {
        return false;
    }
    let check = |kv: &KeyValue| {
        let ord = match (&c.target_union, target) {
            (Some(TargetUnion::Value(v)), CompareTarget::Value) => kv.value.cmp(v),
            (Some(TargetUnion::Version(v)), CompareTarget::Version) => kv.version.cmp(v),
            (Some(TargetUnion::CreateRevision(v)), CompareTarget::Create) => {
                kv.create_revision.cmp(v)
            }
            (Some(TargetUnion::ModRevision(v)), CompareTarget::Mod) => kv.mod_revision.cmp(v),
            (Some(TargetUnion::Lease(v)), CompareTarget::Lease) => kv.lease.cmp(v),
            other => panic!("generator makes matching compares only: {other:?}"),
        };
        match CompareResult::try_from(c.result).unwrap() {
            CompareResult::Equal => ord.is_eq(),
            CompareResult::NotEqual => ord.is_ne(),
            CompareResult::Greater => ord.is_gt(),
            CompareResult::Less => ord.is_lt(),
        }
    };
    if kvs.is_empty() {
        return check(&KeyValue::default());
    }
    kvs.iter().all(check)
}

/// One write operation against the model: the state it builds on, its working copy and its
/// events.
struct Write<'m> {
    model: &'m Model,
    before: State,
    work: State,
    events: Vec<Event>,
}

impl<'m> Write<'m> {
    fn new(model: &'m Model) -> Write<'m> {
        let before = model.states.last().unwrap().clone();
        Write {
            model,
            work: before.clone(),
            before,
            events: vec![],
        }
    }

    fn current(&self) -> i64 {
        self.model.current()
    }

    fn rev(&self) -> i64 {
        self.current() + 1
    }

    fn head(&self) -> i64 {
        self.current() + i64::from(!self.events.is_empty())
    }

    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, EtcdError> {
        let prev = self.work.get(&req.key).cloned();
        let ignores = req.ignore_value || req.ignore_lease;
        if ignores && prev.is_none() {
            return Err(EtcdError::KeyNotFound);
        }
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let rev = self.rev();
        let entry = Entry {
            value,
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
        };
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(to_kv(&req.key, &entry)),
            prev_kv: self.before.get(&req.key).map(|e| to_kv(&req.key, e)),
        });
        self.work.insert(req.key.clone(), entry);
        Ok(PutResponse {
            header: header(rev),
            prev_kv: prev.filter(|_| req.prev_kv).map(|e| to_kv(&req.key, &e)),
        })
    }

    fn delete(&mut self, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let doomed = kvs_in(&self.work, &req.key, &req.range_end);
        let rev = self.rev();
        for kv in &doomed {
            self.work.remove(&kv.key);
            self.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: kv.key.clone(),
                    mod_revision: rev,
                    ..KeyValue::default()
                }),
                prev_kv: self.before.get(&kv.key).map(|e| to_kv(&kv.key, e)),
            });
        }
        DeleteRangeResponse {
            header: header(self.head()),
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { vec![] },
        }
    }

    fn range(&self, req: &RangeRequest) -> RangeResponse {
        let head = self.head();
        if req.revision <= 0 {
            model_range(&self.work, req, head)
        } else {
            model_range(&self.model.states[req.revision as usize], req, head)
        }
    }

    fn branch(req: &TxnRequest, ok: bool) -> &[RequestOp] {
        if ok {
            &req.success
        } else {
            &req.failure
        }
    }

    /// etcd checks the taken path, in op order, against the store before the txn.
    fn check(&self, req: &TxnRequest) -> Result<(), EtcdError> {
        let ok = req.compare.iter().all(|c| compare_holds(&self.before, c));
        for op in Self::branch(req, ok) {
            match op.request.as_ref().unwrap() {
                Request::RequestRange(r) => {
                    if r.revision != 0 && r.revision > self.current() {
                        return Err(EtcdError::FutureRev);
                    }
                    if r.revision != 0 && r.revision < self.model.compact {
                        return Err(EtcdError::Compacted);
                    }
                }
                Request::RequestPut(p) => {
                    if p.lease != 0 && !lease_exists(LeaseId(p.lease)) {
                        return Err(EtcdError::LeaseNotFound);
                    }
                    if (p.ignore_value || p.ignore_lease) && !self.before.contains_key(&p.key) {
                        return Err(EtcdError::KeyNotFound);
                    }
                }
                Request::RequestDeleteRange(_) => {}
                Request::RequestTxn(t) => self.check(t)?,
            }
        }
        Ok(())
    }

    fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        // Compares, nested ones too, are judged on the store before the txn.
        let ok = req.compare.iter().all(|c| compare_holds(&self.before, c));
        let mut responses = vec![];
        for op in Self::branch(req, ok) {
            let response = match op.request.as_ref().unwrap() {
                Request::RequestRange(r) => Response::ResponseRange(self.range(r)),
                Request::RequestPut(p) => Response::ResponsePut(self.put(p)?),
                Request::RequestDeleteRange(d) => Response::ResponseDeleteRange(self.delete(d)),
                Request::RequestTxn(t) => Response::ResponseTxn(self.txn(t)?),
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded: ok,
            responses,
        })
    }
}

impl Model {
    fn new() -> Model {
        Model {
            states: vec![State::new(), State::new()],
            events: vec![vec![], vec![]],
            compact: -1,
        }
    }

    fn current(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    fn finish(&mut self, work: State, events: Vec<Event>) -> Vec<Event> {
        if !events.is_empty() {
            self.states.push(work);
            self.events.push(events.clone());
        }
        events
    }

    fn put(&mut self, req: &PutRequest) -> Result<(PutResponse, Vec<Event>), EtcdError> {
        if req.lease != 0 && !lease_exists(LeaseId(req.lease)) {
            return Err(EtcdError::LeaseNotFound);
        }
        let mut w = Write::new(self);
        let mut resp = w.put(req)?;
        resp.header = None;
        let (work, events) = (w.work, w.events);
        Ok((resp, self.finish(work, events)))
    }

    fn delete(&mut self, req: &DeleteRangeRequest) -> (DeleteRangeResponse, Vec<Event>) {
        let mut w = Write::new(self);
        let mut resp = w.delete(req);
        resp.header = None;
        let (work, events) = (w.work, w.events);
        (resp, self.finish(work, events))
    }

    fn delete_keys(&mut self, keys: &[Vec<u8>]) -> Vec<Event> {
        let mut sorted = keys.to_vec();
        sorted.sort();
        sorted.dedup();
        let mut w = Write::new(self);
        for key in sorted {
            w.delete(&DeleteRangeRequest {
                key,
                ..DeleteRangeRequest::default()
            });
        }
        let (work, events) = (w.work, w.events);
        self.finish(work, events)
    }

    fn txn(&mut self, req: &TxnRequest) -> Result<(TxnResponse, Vec<Event>), EtcdError> {
        let mut w = Write::new(self);
        w.check(req)?;
        let mut resp = w.txn(req)?;
        resp.header = None;
        let (work, events) = (w.work, w.events);
        Ok((resp, self.finish(work, events)))
    }

    fn compact(&mut self, rev: i64) -> Result<(), EtcdError> {
        if rev <= self.compact {
            return Err(EtcdError::Compacted);
        }
        if rev > self.current() {
            return Err(EtcdError::FutureRev);
        }
        self.compact = rev;
        Ok(())
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        if req.revision > self.current() {
            return Err(EtcdError::FutureRev);
        }
        let at = if req.revision <= 0 {
            self.current()
        } else {
            req.revision
        };
        if at < self.compact {
            return Err(EtcdError::Compacted);
        }
        let mut resp = model_range(&self.states[at as usize], req, self.current());
        resp.header = None;
        Ok(resp)
    }

    /// Events of `[from, to]`. At the compact revision only each key's last change survived;
    /// a `prev_kv` below the compact revision is gone.
    fn events(&self, from: i64, to: i64) -> Result<Vec<Event>, EtcdError> {
        if from < self.compact {
            return Err(EtcdError::Compacted);
        }
        if to > self.current() {
            return Err(EtcdError::FutureRev);
        }
        let mut out = vec![];
        for rev in from.max(0)..=to {
            let events = &self.events[rev as usize];
            for (i, e) in events.iter().enumerate() {
                let key = &e.kv.as_ref().unwrap().key;
                let superseded = events[i + 1..]
                    .iter()
                    .any(|later| &later.kv.as_ref().unwrap().key == key);
                if rev == self.compact && superseded {
                    continue;
                }
                let mut e = e.clone();
                if rev - 1 < self.compact {
                    e.prev_kv = None;
                }
                out.push(e);
            }
        }
        Ok(out)
    }

    fn lease_keys(&self) -> Vec<(Vec<u8>, LeaseId)> {
        self.states
            .last()
            .unwrap()
            .iter()
            .filter(|(_, e)| e.lease != 0)
            .map(|(k, e)| (k.clone(), LeaseId(e.lease)))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Operations and their generators.

#[derive(Clone, Debug)]
enum Op {
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    DeleteKeys(Vec<Vec<u8>>),
    Compact(i64),
    Range(RangeRequest),
    Events(i64, i64),
    Restart,
}

/// One step: an operation, and whether the node writes the staged batch right after it (when
/// not, the next operations run over staged writes).
#[derive(Clone, Debug)]
struct Step {
    op: Op,
    flush: bool,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(|k| k.as_bytes().to_vec())
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(vec![]),
        1 => Just(vec![0]),
        2 => prop::sample::select(vec!["a", "b", "c", "d", "e"]).prop_map(|k| k.as_bytes().to_vec()),
    ]
}

/// Range ends for reads, which are worth more over many keys.
fn range_end_wide() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(vec![]),
        2 => Just(vec![0]),
        1 => prop::sample::select(vec!["c", "d", "e"]).prop_map(|k| k.as_bytes().to_vec()),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec!["", "x", "y"]).prop_map(|v| v.as_bytes().to_vec())
}

fn lease() -> impl Strategy<Value = i64> {
    prop_oneof![12 => Just(0i64), 3 => Just(1i64), 3 => Just(2i64), 1 => Just(3i64)]
}

/// A revision *pick*, made concrete against the current revision when the op runs
/// ([`revision`]): 0 is "latest", 1 is -1, anything else lands in `0..=current + 1`.
fn revision_pick() -> impl Strategy<Value = i64> {
    prop_oneof![3 => Just(0i64), 2 => 1i64..64]
}

fn revision(pick: i64, current: i64) -> i64 {
    match pick {
        0 => 0,
        1 => -1,
        p => p % (current + 2),
    }
}

/// Makes the revision picks of a txn's ranges concrete.
fn resolve_txn(txn: &mut TxnRequest, current: i64) {
    for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
        match op.request.as_mut().unwrap() {
            Request::RequestRange(r) => r.revision = revision(r.revision, current),
            Request::RequestTxn(t) => resolve_txn(t, current),
            _ => {}
        }
    }
}

fn put_req() -> impl Strategy<Value = PutRequest> {
    (key(), value(), lease(), any::<bool>(), 0u8..24).prop_map(
        |(key, value, lease, prev_kv, flags)| {
            let ignore_value = flags == 0 || flags == 2;
            let ignore_lease = flags == 1 || flags == 2;
            PutRequest {
                key,
                value: if ignore_value { vec![] } else { value },
                lease: if ignore_lease { 0 } else { lease },
                prev_kv,
                ignore_value,
                ignore_lease,
            }
        },
    )
}

fn delete_req() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn range_req() -> impl Strategy<Value = RangeRequest> {
    let filter = || prop_oneof![4 => Just(0i64), 1 => 1i64..24];
    (
        (key(), range_end_wide(), revision_pick(), 0i64..4),
        (0i32..3, 0i32..5, any::<bool>(), prop::bool::weighted(0.15)),
        (filter(), filter(), filter(), filter()),
    )
        .prop_map(
            |((key, range_end, revision, limit), (order, target, keys_only, count_only), f)| {
                RangeRequest {
                    key,
                    range_end,
                    limit,
                    revision,
                    sort_order: order,
                    sort_target: target,
                    serializable: false,
                    keys_only,
                    count_only,
                    min_mod_revision: f.0,
                    max_mod_revision: f.1,
                    min_create_revision: f.2,
                    max_create_revision: f.3,
                }
            },
        )
}

fn compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        value().prop_map(TargetUnion::Value),
        (0i64..4).prop_map(TargetUnion::Version),
        (0i64..24).prop_map(TargetUnion::CreateRevision),
        (0i64..24).prop_map(TargetUnion::ModRevision),
        (0i64..3).prop_map(TargetUnion::Lease),
    ];
    (
        key(),
        prop_oneof![3 => Just(vec![]), 1 => range_end()],
        0i32..4,
        target,
    )
        .prop_map(|(key, range_end, result, union)| {
            let target = match union {
                TargetUnion::Value(_) => CompareTarget::Value,
                TargetUnion::Version(_) => CompareTarget::Version,
                TargetUnion::CreateRevision(_) => CompareTarget::Create,
                TargetUnion::ModRevision(_) => CompareTarget::Mod,
                TargetUnion::Lease(_) => CompareTarget::Lease,
            };
            Compare {
                result,
                target: target as i32,
                key,
                range_end,
                target_union: Some(union),
            }
        })
}

fn txn_req() -> impl Strategy<Value = TxnRequest> {
    let leaf = prop_oneof![
        3 => put_req().prop_map(Request::RequestPut),
        2 => delete_req().prop_map(Request::RequestDeleteRange),
        2 => range_req().prop_map(Request::RequestRange),
    ];
    let ops = leaf.prop_recursive(2, 12, 3, |inner| {
        let branch = || {
            prop::collection::vec(
                inner.clone().prop_map(|r| RequestOp { request: Some(r) }),
                0..3,
            )
        };
        (prop::collection::vec(compare(), 0..3), branch(), branch()).prop_map(
            |(compare, success, failure)| {
                Request::RequestTxn(TxnRequest {
                    compare,
                    success,
                    failure,
                })
            },
        )
    });
    let branch = || {
        prop::collection::vec(
            ops.clone().prop_map(|r| RequestOp { request: Some(r) }),
            0..4,
        )
    };
    (prop::collection::vec(compare(), 0..3), branch(), branch()).prop_map(
        |(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => put_req().prop_map(Op::Put),
        2 => delete_req().prop_map(Op::Delete),
        5 => txn_req().prop_map(Op::Txn),
        1 => prop::collection::vec(key(), 0..3).prop_map(Op::DeleteKeys),
        2 => revision_pick().prop_map(Op::Compact),
        3 => range_req().prop_map(Op::Range),
        1 => (revision_pick(), revision_pick()).prop_map(|(a, b)| Op::Events(a, b)),
        1 => Just(Op::Restart),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = (op(), prop::bool::weighted(0.7)).prop_map(|(op, flush)| Step { op, flush });
    prop::collection::vec(step, 1..80)
}

// ---------------------------------------------------------------------------------------------
// The harness.

fn etcd<T>(result: Result<T, Error>) -> Result<T, EtcdError> {
    result.map_err(|e| match e {
        Error::Etcd(e) => e,
        Error::Backend(e) => panic!("backend failed: {e}"),
    })
}

fn all_keys(revision: i64) -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..RangeRequest::default()
    }
}

struct Node {
    store: MvccStore,
    backend: MemBackend,
}

impl Node {
    fn flush(&mut self) {
        let batch = self.store.take_batch();
        self.backend.write(batch).unwrap();
    }

    /// Runs `op` on the store and the model; they must answer alike. Revision picks become
    /// revisions here, against the current revision.
    fn apply(&mut self, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
        let backend = &self.backend;
        let current = model.current();
        match op {
            Op::Put(req) => {
                prop_assert!(validate_put(req).is_ok(), "generator makes valid puts");
                let got = etcd(self.store.put(backend, req, &lease_exists));
                prop_assert_eq!(got, model.put(req));
            }
            Op::Delete(req) => {
                let got = etcd(self.store.delete_range(backend, req));
                prop_assert_eq!(got, Ok(model.delete(req)));
            }
            Op::Txn(req) => {
                let mut req = req.clone();
                resolve_txn(&mut req, current);
                if validate_txn(&req, 128).is_err() {
                    return Ok(()); // the server refuses it before proposing
                }
                let got = etcd(self.store.txn(backend, &req, &lease_exists));
                prop_assert_eq!(got, model.txn(&req));
            }
            Op::DeleteKeys(keys) => {
                let got = etcd(self.store.delete_keys(backend, keys));
                prop_assert_eq!(got, Ok(model.delete_keys(keys)));
            }
            Op::Compact(pick) => {
                let rev = revision(*pick, current);
                let got = etcd(self.store.compact(backend, Revision(rev))).map(|_| ());
                prop_assert_eq!(got, model.compact(rev));
            }
            Op::Range(req) => {
                let req = RangeRequest {
                    revision: revision(req.revision, current),
                    ..req.clone()
                };
                prop_assert!(validate_range(&req).is_ok(), "generator makes valid ranges");
                let expected = model.range(&req);
                let total = etcd(self.store.range(backend, &req, Counting::Total));
                prop_assert_eq!(&total, &expected);
                // A chunk (no total count) answers the same keys and `more`, with count 0 unless
                // only the count was asked.
                // The encoded answer decodes to the same, whichever way it was built.
                let encoded =
                    etcd(self.store.range_encoded(backend, &req, Counting::Total)).map(|e| {
                        RangeResponse {
                            header: e.header,
                            kvs: e
                                .kvs
                                .iter()
                                .map(|b| KeyValue::decode(&b[..]).expect("a KeyValue"))
                                .collect(),
                            more: e.more,
                            count: e.count,
                        }
                    });
                prop_assert_eq!(&encoded, &expected);
                let chunk = etcd(self.store.range(backend, &req, Counting::Skip));
                let uncounted = expected.map(|mut r| {
                    if !req.count_only {
                        r.count = 0;
                    }
                    r
                });
                prop_assert_eq!(chunk, uncounted);
            }
            Op::Events(from, to) => {
                let (from, to) = (revision(*from, current), revision(*to, current));
                let got = etcd(self.store.events(backend, Revision(from), Revision(to)));
                prop_assert_eq!(got, model.events(from, to));
            }
            Op::Restart => {
                self.flush();
                self.store = MvccStore::open(&self.backend).unwrap();
            }
        }
        Ok(())
    }

    /// What must agree with the model after every step.
    fn check(&self, model: &Model) -> Result<(), TestCaseError> {
        prop_assert_eq!(self.store.current_revision().0, model.current());
        prop_assert_eq!(self.store.compact_revision().0, model.compact);
        let from = model.compact.max(0);
        let got = etcd(
            self.store
                .events(&self.backend, Revision(from), Revision(model.current())),
        );
        prop_assert_eq!(got, model.events(from, model.current()));
        prop_assert_eq!(self.store.lease_keys(), model.lease_keys());
        Ok(())
    }

    fn hash(&self, rev: i64) -> HashKv {
        self.store.hash_kv(&self.backend, Revision(rev)).unwrap()
    }

    /// A store reopened from the written backend answers as the live one.
    fn check_reopen(&self, model: &Model) -> Result<(), TestCaseError> {
        let reopened = Node {
            store: MvccStore::open(&self.backend).unwrap(),
            backend: self.backend.clone(),
        };
        reopened.check(model)?;
        let current = model.current();
        let mut revisions = vec![0, current - 1, model.compact, (model.compact + current) / 2];
        revisions.retain(|r| *r == 0 || (*r >= model.compact.max(1) && *r <= current));
        for rev in revisions {
            let live = etcd(
                self.store
                    .range(&self.backend, &all_keys(rev), Counting::Total),
            );
            prop_assert_eq!(&live, &model.range(&all_keys(rev)), "range at {}", rev);
            let again = etcd(reopened.store.range(
                &reopened.backend,
                &all_keys(rev),
                Counting::Total,
            ));
            prop_assert_eq!(&again, &live, "reopened range at {}", rev);
        }
        // The live store answers a remembered compaction hash at a compact revision; the
        // reopened one has no memory of it.
        let remembered = |rev: i64| {
            self.store
                .compaction_hashes()
                .iter()
                .any(|h| h.hash_revision.0 == rev)
        };
        for rev in [current, model.compact] {
            if rev >= model.compact.max(1) && !remembered(rev) {
                prop_assert_eq!(self.hash(rev), reopened.hash(rev), "hash at {}", rev);
            }
        }
        Ok(())
    }
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let backend = MemBackend::new();
    let mut node = Node {
        store: MvccStore::open(&backend).unwrap(),
        backend,
    };
    let mut model = Model::new();
    for step in &steps {
        node.apply(&mut model, &step.op)?;
        node.check(&model)?;
        if step.flush {
            node.flush();
            node.check_reopen(&model)?;
        }
    }
    node.flush();
    node.check_reopen(&model)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_agrees_with_the_model(steps in steps()) {
        run(steps)?;
    }


}
