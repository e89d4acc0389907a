//! Writes: Put, DeleteRange and Txn as etcd applies them (`server/etcdserver/txn/{put,delete,
//! txn}.go` over `kvstore_txn.go`'s `storeTxnWrite`).
//!
//! A [`WriteTxn`] collects the changes of one write operation without touching the store: every
//! change of the operation gets the same main revision `current + 1` and the next sub revision,
//! and reads inside the operation see the changes made so far (see [`ReadView`]). Only when the
//! whole operation succeeded does [`MvccStore::commit`] apply the changes, so an error, at any
//! depth of a nested txn, leaves no trace; an operation that changed nothing does not advance
//! the revision.
//!
//! A Txn runs in etcd's three phases:
//! 1. *Plan*: evaluate the compares of the txn and of every nested txn on the branches taken,
//!    all against the store as it was before the txn (etcd's `compareToPath`): a nested txn's
//!    compares do not see the writes of the ops before it.
//! 2. *Check*: on the ops of the taken branches, in order, fail the whole txn as etcd's
//!    `checkTxn` does: a range's revision in the future (`FutureRev`) or below the compact
//!    revision (`Compacted`, a negative revision included); a put's lease that does not exist
//!    (`LeaseNotFound`); a put with `ignore_value`/`ignore_lease` on a key absent before the txn
//!    (`KeyNotFound`).
//! 3. *Execute* the ops in order.
//!
//! Deviation: etcd crashes (index out of range in `put`) when a txn deletes a key through a
//! `"\0"` range end (which etcd's duplicate-key check does not see) and then puts it with
//! `ignore_value`/`ignore_lease`. Here that txn fails with `KeyNotFound` and changes nothing.
//!
//! Responses inside a txn carry a header holding only a revision, as etcd's do: the txn's
//! revision for a put, the revision read at for a range, and for a delete the txn's revision
//! once the txn has changed anything. A nested txn's header is present and zero. The caller
//! fills the outermost header.

use std::collections::BTreeMap;

use prost::Message;

use crate::backend::KvBackend;
use crate::bugs::{self, Bug};
use crate::error::{Error, EtcdError};
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::response_op::Response;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;
use crate::types::LeaseId;

use super::range::{KeySpan, ReadView, Written};
use super::MvccStore;

/// One change, in the form stored in the backend: a put's full `KeyValue`, or a tombstone
/// whose value holds only the key (etcd's `delete` stores `KeyValue{Key: key}`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Change {
    pub kv: KeyValue,
    pub tombstone: bool,
}

impl Change {
    pub fn encode(&self) -> Vec<u8> {
        self.kv.encode_to_vec()
    }
}

/// Which branch each txn takes: the outer one, then the nested txns of the taken branch in op
/// order.
#[derive(Debug)]
pub(crate) struct Plan {
    succeeded: bool,
    nested: Vec<Plan>,
}

fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

fn revision_header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}

/// The changes of one write operation in progress (see the module docs).
pub(crate) struct WriteTxn<'a> {
    store: &'a MvccStore,
    backend: &'a dyn KvBackend,
    changes: Vec<Change>,
    written: Written,
}

impl<'a> WriteTxn<'a> {
    pub fn new(store: &'a MvccStore, backend: &'a dyn KvBackend) -> WriteTxn<'a> {
        WriteTxn {
            store,
            backend,
            changes: Vec::new(),
            written: BTreeMap::new(),
        }
    }

    /// The revision every change of this txn gets.
    fn revision(&self) -> i64 {
        self.store.current_revision + 1
    }

    fn view(&self) -> ReadView<'_> {
        if self.changes.is_empty() {
            return ReadView::committed(self.store, self.backend);
        }
        ReadView {
            store: self.store,
            backend: self.backend,
            written: Some(&self.written),
            head: self.revision(),
        }
    }

    /// The view before any change of this txn: what plans and checks see.
    fn before(&self) -> ReadView<'a> {
        ReadView::committed(self.store, self.backend)
    }

    pub fn into_changes(self) -> Vec<Change> {
        self.changes
    }

    fn write_put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) {
        let revision = self.revision();
        let (create_revision, version) = match self.view().created_and_version(key) {
            Some((created, version)) => (created, version + 1),
            None => (revision, 1),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: revision,
            version,
            value,
            lease,
        };
        self.written.insert(key.to_vec(), Some(kv.clone()));
        self.changes.push(Change {
            kv,
            tombstone: false,
        });
    }

    fn write_delete(&mut self, key: &[u8]) {
        self.written.insert(key.to_vec(), None);
        self.changes.push(Change {
            kv: KeyValue {
                key: key.to_vec(),
                ..KeyValue::default()
            },
            tombstone: true,
        });
    }

    /// etcd's `put`; the lease was checked by the caller.
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, Error> {
        let ignores = req.ignore_value || req.ignore_lease;
        let prev = match req.prev_kv || ignores {
            true => self.view().get(&req.key)?,
            false => None,
        };
        let (value, lease) = match &prev {
            None if ignores => return Err(EtcdError::KeyNotFound.into()),
            Some(prev) => (
                if req.ignore_value {
                    prev.value.clone()
                } else {
                    req.value.clone()
                },
                if req.ignore_lease {
                    prev.lease
                } else {
                    req.lease
                },
            ),
            None => (req.value.clone(), req.lease),
        };
        self.write_put(&req.key, value, lease);
        Ok(PutResponse {
            header: revision_header(self.revision()),
            prev_kv: prev.filter(|_| req.prev_kv),
        })
    }

    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, Error> {
        let span = KeySpan::new(&req.key, &req.range_end);
        let view = self.view();
        let prev_kvs = match req.prev_kv {
            true => view.kvs(span, view.head)?,
            false => Vec::new(),
        };
        let keys = view.keys(span);
        for key in &keys {
            self.write_delete(key);
        }
        Ok(DeleteRangeResponse {
            header: revision_header(self.view().head),
            deleted: keys.len() as i64,
            prev_kvs,
        })
    }

    pub fn range(
        &self,
        req: &RangeRequest,
    ) -> Result<crate::proto::etcdserverpb::RangeResponse, Error> {
        self.view().range(req)
    }

    /// Phase 1: the branches taken, judged on the store before the txn.
    pub fn plan(&self, req: &TxnRequest) -> Result<Plan, Error> {
        let before = self.before();
        let mut succeeded = true;
        for compare in &req.compare {
            if !compare_holds(&before, compare)? {
                succeeded = false;
                break;
            }
        }
        let nested = branch(req, succeeded)
            .iter()
            .filter_map(|op| match &op.request {
                Some(Request::RequestTxn(txn)) => Some(self.plan(txn)),
                _ => None,
            })
            .collect::<Result<_, _>>()?;
        Ok(Plan { succeeded, nested })
    }

    /// Phase 2: fail before any change, as etcd's `checkTxn`.
    pub fn check(
        &self,
        req: &TxnRequest,
        plan: &Plan,
        lease_exists: &dyn Fn(LeaseId) -> bool,
    ) -> Result<(), Error> {
        let before = self.before();
        let mut nested = plan.nested.iter();
        for op in branch(req, plan.succeeded) {
            match &op.request {
                Some(Request::RequestRange(range)) => {
                    check_range_revision(&before, range.revision)?
                }
                Some(Request::RequestPut(put)) => {
                    check_lease(put, lease_exists)?;
                    if (put.ignore_value || put.ignore_lease) && before.get(&put.key)?.is_none() {
                        return Err(EtcdError::KeyNotFound.into());
                    }
                }
                Some(Request::RequestTxn(txn)) => {
                    let plan = nested.next().expect("a plan per nested txn");
                    self.check(txn, plan, lease_exists)?;
                }
                Some(Request::RequestDeleteRange(_)) | None => {}
            }
        }
        Ok(())
    }

    /// Phase 3.
    pub fn execute(&mut self, req: &TxnRequest, plan: &Plan) -> Result<TxnResponse, Error> {
        let mut nested = plan.nested.iter();
        let ops = branch(req, plan.succeeded);
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(Request::RequestRange(range)) => {
                    Some(Response::ResponseRange(self.range(range)?))
                }
                Some(Request::RequestPut(put)) => Some(Response::ResponsePut(self.put(put)?)),
                Some(Request::RequestDeleteRange(del)) => {
                    Some(Response::ResponseDeleteRange(self.delete_range(del)?))
                }
                Some(Request::RequestTxn(txn)) => {
                    let plan = nested.next().expect("a plan per nested txn");
                    Some(Response::ResponseTxn(self.execute(txn, plan)?))
                }
                // Rejected by validation ("key not found"); etcd leaves the response empty.
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded: plan.succeeded,
            responses,
        })
    }
}

/// etcd's `checkLease`: a put may only name a lease that exists.
pub(crate) fn check_lease(
    req: &PutRequest,
    lease_exists: &dyn Fn(LeaseId) -> bool,
) -> Result<(), EtcdError> {
    let lease = LeaseId(req.lease);
    match lease.is_none() || lease_exists(lease) {
        true => Ok(()),
        false => Err(EtcdError::LeaseNotFound),
    }
}

/// etcd's `checkRange` inside a txn: unlike a plain Range, a negative revision is compared
/// with the compact revision rather than read as "latest".
fn check_range_revision(before: &ReadView<'_>, revision: i64) -> Result<(), EtcdError> {
    if revision == 0 {
        Ok(())
    } else if revision > before.head {
        Err(EtcdError::FutureRev)
    } else if revision < before.store.compact_revision {
        Err(EtcdError::Compacted)
    } else {
        Ok(())
    }
}

/// etcd's `applyCompare`: every key of the span must satisfy the compare. With no key, a VALUE
/// compare fails (a missing value cannot be told from an empty one) and any other target
/// compares the zero `KeyValue` (so `version == 0` or `create_revision == 0` tests absence).
fn compare_holds(view: &ReadView<'_>, compare: &Compare) -> Result<bool, Error> {
    let kvs = view.kvs(KeySpan::new(&compare.key, &compare.range_end), view.head)?;
    if kvs.is_empty() {
        let bug = bugs::active(view.store.bug, Bug::CompareMissingValueAsEmpty);
        if compare.target == CompareTarget::Value as i32 && !bug {
            return Ok(false);
        }
        return Ok(compare_kv(compare, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(compare, kv)))
}

/// etcd's `compareKV`. A target union that does not match the target compares with 0 (or the
/// empty value); an unknown target compares equal; an unknown result holds.
fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    let union = compare.target_union.as_ref();
    let int = |pick: fn(&TargetUnion) -> Option<i64>| union.and_then(pick).unwrap_or(0);
    let ordering = match CompareTarget::try_from(compare.target) {
        Ok(CompareTarget::Value) => {
            let value = match union {
                Some(TargetUnion::Value(v)) => v.as_slice(),
                _ => &[],
            };
            kv.value.as_slice().cmp(value)
        }
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&int(|u| match u {
            TargetUnion::CreateRevision(r) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&int(|u| match u {
            TargetUnion::ModRevision(r) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Version) => kv.version.cmp(&int(|u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&int(|u| match u {
            TargetUnion::Lease(l) => Some(*l),
            _ => None,
        })),
        Err(_) => std::cmp::Ordering::Equal,
    };
    match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::NotEqual) => ordering.is_ne(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        Err(_) => true,
    }
}
