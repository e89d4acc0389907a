//! Request checks made before a request is proposed, as etcd's gRPC layer makes them
//! (`server/etcdserver/api/v3rpc/key.go`: `checkRangeRequest`, `checkPutRequest`,
//! `checkDeleteRequest`, `checkTxnRequest`, `checkIntervals`). They depend on the request
//! alone, never on the store.
//!
//! Txn rules, in etcd's order:
//! 1. `TooManyOps` when the largest of `compare`, `success`, `failure` exceeds the limit; a
//!    nested txn is held to the limit minus that largest count of its parent.
//! 2. `EmptyKey` for a compare without a key; then each op of `success`, then of `failure`, is
//!    checked as its own request would be; an empty op is `KeyNotFound`.
//! 3. `DuplicateKey` (etcd's `checkIntervals`, per branch, nested txns included): two puts of
//!    one key, or a put of a key some delete covers. The deletes of a level are collected
//!    first; a nested txn's puts are checked against them and against the deletes of the
//!    nested txns before it; a nested txn's `success` and `failure` may put the same key (only
//!    one runs). Deletes never conflict with each other. A delete's span is `[key, range_end)`
//!    compared as strings, so a `"\0"` range end (to the end of the keyspace) covers no key
//!    here, exactly as in etcd.

use std::collections::HashSet;

use crate::error::EtcdError;
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// etcd's `checkRangeRequest`.
pub fn validate_range(req: &RangeRequest) -> Result<(), EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if SortOrder::try_from(req.sort_order).is_err()
        || SortTarget::try_from(req.sort_target).is_err()
    {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

/// etcd's `checkPutRequest`.
pub fn validate_put(req: &PutRequest) -> Result<(), EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

/// etcd's `checkDeleteRequest`.
pub fn validate_delete_range(req: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest` then `checkIntervals` on each branch (see the module docs).
pub fn validate_txn(req: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    check_txn(req, i64::try_from(max_txn_ops).unwrap_or(i64::MAX))?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

fn check_txn(req: &TxnRequest, max_ops: i64) -> Result<(), EtcdError> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len()) as i64;
    if ops > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        check_op(op, max_ops - ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: i64) -> Result<(), EtcdError> {
    match &op.request {
        Some(Request::RequestRange(r)) => validate_range(r),
        Some(Request::RequestPut(p)) => validate_put(p),
        Some(Request::RequestDeleteRange(d)) => validate_delete_range(d),
        Some(Request::RequestTxn(t)) => check_txn(t, max_ops),
        None => Err(EtcdError::KeyNotFound),
    }
}

/// The keys a delete covers: `[start, end)`; a delete of one key covers `[key, key + "\0")`.
struct Span {
    start: Vec<u8>,
    end: Vec<u8>,
}

impl Span {
    fn of(del: &DeleteRangeRequest) -> Span {
        let end = match del.range_end.is_empty() {
            true => [del.key.as_slice(), &[0]].concat(),
            false => del.range_end.clone(),
        };
        Span {
            start: del.key.clone(),
            end,
        }
    }

    fn covers(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && key < self.end.as_slice()
    }
}

fn covered(dels: &[Span], key: &[u8]) -> bool {
    dels.iter().any(|d| d.covers(key))
}

/// etcd's `checkIntervals` for one branch: the keys it puts and the spans it deletes, nested
/// txns included.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Span>), EtcdError> {
    let mut dels: Vec<Span> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Span::of(d)),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(txn)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&txn.success)?;
        let (puts_else, dels_else) = check_intervals(&txn.failure)?;
        for key in &puts_then {
            if puts.contains(key) || covered(&dels, key) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        for key in puts_else {
            let clashes = puts.contains(&key) && !puts_then.contains(&key);
            if clashes || covered(&dels, &key) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(key);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(put)) = &op.request else {
            continue;
        };
        if puts.contains(&put.key) || covered(&dels, &put.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(put.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::Compare;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    fn del(key: &str, range_end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.into(),
                range_end: range_end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: Vec::new(),
            success,
            failure,
        }
    }

    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(txn(success, failure))),
        }
    }

    fn check(t: &TxnRequest) -> Result<(), EtcdError> {
        validate_txn(t, 128)
    }

    #[test]
    fn range_needs_a_key_and_known_sort_options() {
        let ok = RangeRequest {
            key: b"a".to_vec(),
            sort_order: 2,
            sort_target: 4,
            ..Default::default()
        };
        assert_eq!(validate_range(&ok), Ok(()));
        let no_key = RangeRequest::default();
        assert_eq!(validate_range(&no_key), Err(EtcdError::EmptyKey));
        let bad_order = RangeRequest {
            sort_order: 3,
            ..ok.clone()
        };
        assert_eq!(
            validate_range(&bad_order),
            Err(EtcdError::InvalidSortOption)
        );
        let bad_target = RangeRequest {
            sort_target: 5,
            ..ok
        };
        assert_eq!(
            validate_range(&bad_target),
            Err(EtcdError::InvalidSortOption)
        );
    }

    #[test]
    fn put_ignore_flags_forbid_the_field_they_ignore() {
        let base = PutRequest {
            key: b"k".to_vec(),
            ..Default::default()
        };
        assert_eq!(validate_put(&base), Ok(()));
        let value = PutRequest {
            ignore_value: true,
            value: b"v".to_vec(),
            ..base.clone()
        };
        assert_eq!(validate_put(&value), Err(EtcdError::ValueProvided));
        let lease = PutRequest {
            ignore_lease: true,
            lease: 7,
            ..base
        };
        assert_eq!(validate_put(&lease), Err(EtcdError::LeaseProvided));
        assert_eq!(
            validate_put(&PutRequest::default()),
            Err(EtcdError::EmptyKey)
        );
    }

    #[test]
    fn too_many_ops_counts_the_largest_branch_and_shrinks_for_nested_txns() {
        let ops = |n: usize| (0..n).map(|i| put(&format!("k{i}"))).collect::<Vec<_>>();
        assert_eq!(validate_txn(&txn(ops(3), ops(3)), 3), Ok(()));
        assert_eq!(
            validate_txn(&txn(ops(4), vec![]), 3),
            Err(EtcdError::TooManyOps)
        );
        // The nested txn may hold 3 - 2 = 1 op.
        let outer = |inner: usize| txn(vec![put("a"), nested(ops(inner), vec![])], vec![]);
        assert_eq!(validate_txn(&outer(1), 3), Ok(()));
        assert_eq!(validate_txn(&outer(2), 3), Err(EtcdError::TooManyOps));
    }

    #[test]
    fn empty_compare_key_and_empty_op_are_rejected() {
        let mut t = txn(vec![put("a")], vec![]);
        t.compare.push(Compare::default());
        assert_eq!(check(&t), Err(EtcdError::EmptyKey));
        let empty_op = txn(vec![RequestOp { request: None }], vec![]);
        assert_eq!(check(&empty_op), Err(EtcdError::KeyNotFound));
        let bad_nested = txn(vec![], vec![nested(vec![put("")], vec![])]);
        assert_eq!(check(&bad_nested), Err(EtcdError::EmptyKey));
    }

    #[test]
    fn duplicate_puts_and_put_under_delete_are_rejected() {
        assert_eq!(
            check(&txn(vec![put("a"), put("a")], vec![])),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check(&txn(vec![del("a", ""), put("a")], vec![])),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check(&txn(vec![put("b"), del("a", "c")], vec![])),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check(&txn(vec![put("c"), del("a", "c")], vec![])),
            Ok(()),
            "range end is exclusive"
        );
        assert_eq!(
            check(&txn(vec![del("a", "c"), del("b", "")], vec![])),
            Ok(()),
            "deletes may overlap"
        );
        // The branches are checked apart.
        assert_eq!(check(&txn(vec![put("a")], vec![put("a")])), Ok(()));
    }

    #[test]
    fn nested_txns_follow_etcds_check_intervals() {
        // A nested put under a delete of the parent.
        let t = txn(vec![del("a", "b"), nested(vec![put("a")], vec![])], vec![]);
        assert_eq!(check(&t), Err(EtcdError::DuplicateKey));
        // A parent put under a nested delete.
        let t = txn(vec![put("a"), nested(vec![], vec![del("a", "")])], vec![]);
        assert_eq!(check(&t), Err(EtcdError::DuplicateKey));
        // Then and else of one nested txn may put the same key; two nested txns may not.
        let t = txn(vec![nested(vec![put("a")], vec![put("a")])], vec![]);
        assert_eq!(check(&t), Ok(()));
        let t = txn(
            vec![
                nested(vec![put("a")], vec![]),
                nested(vec![put("a")], vec![]),
            ],
            vec![],
        );
        assert_eq!(check(&t), Err(EtcdError::DuplicateKey));
        // A nested delete only covers the nested txns after it...
        let t = txn(
            vec![
                nested(vec![del("a", "")], vec![]),
                nested(vec![put("a")], vec![]),
            ],
            vec![],
        );
        assert_eq!(check(&t), Err(EtcdError::DuplicateKey));
        // ...not those before it, as in etcd.
        let t = txn(
            vec![
                nested(vec![put("a")], vec![]),
                nested(vec![del("a", "")], vec![]),
            ],
            vec![],
        );
        assert_eq!(check(&t), Ok(()));
    }

    #[test]
    fn a_delete_to_the_end_of_the_keyspace_covers_nothing_as_in_etcd() {
        let t = txn(vec![del("a", "\0"), put("b")], vec![]);
        assert_eq!(check(&t), Ok(()));
    }
}
