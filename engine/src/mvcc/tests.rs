//! The store's rules, one story each. Every step writes the staged batch to the backend, as the
//! node does, unless a test is about staged writes.

use super::*;
use crate::backend::MemBackend;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::response_op::Response;
use crate::proto::etcdserverpb::{Compare, RequestOp, ResponseHeader};

struct Harness {
    store: MvccStore,
    backend: MemBackend,
}

const LIVE_LEASE: i64 = 7;

fn lease_exists(lease: LeaseId) -> bool {
    lease.0 == LIVE_LEASE
}

fn etcd_error<T: std::fmt::Debug>(result: Result<T, Error>) -> EtcdError {
    match result {
        Err(Error::Etcd(e)) => e,
        other => panic!("expected an etcd error, got {other:?}"),
    }
}

fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..PutRequest::default()
    }
}

fn range_req(key: &str, range_end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..RangeRequest::default()
    }
}

fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(put_req(key, value))),
    }
}

fn op_range(key: &str, range_end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(range_req(key, range_end))),
    }
}

fn op_delete(key: &str, range_end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: true,
        })),
    }
}

fn op_txn(txn: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestTxn(txn)),
    }
}

fn compare(key: &str, range_end: &str, result: CompareResult, target: TargetUnion) -> Compare {
    let kind = match target {
        TargetUnion::Version(_) => CompareTarget::Version,
        TargetUnion::CreateRevision(_) => CompareTarget::Create,
        TargetUnion::ModRevision(_) => CompareTarget::Mod,
        TargetUnion::Value(_) => CompareTarget::Value,
        TargetUnion::Lease(_) => CompareTarget::Lease,
    };
    Compare {
        result: result as i32,
        target: kind as i32,
        key: key.into(),
        range_end: range_end.into(),
        target_union: Some(target),
    }
}

fn keys(resp: &RangeResponse) -> Vec<String> {
    resp.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

impl Harness {
    fn new() -> Harness {
        let backend = MemBackend::new();
        Harness {
            store: MvccStore::open(&backend).unwrap(),
            backend,
        }
    }

    fn flush(&mut self) {
        let batch = self.store.take_batch();
        self.backend.write(batch).unwrap();
    }

    fn reopen(&mut self) {
        self.flush();
        self.store = MvccStore::open(&self.backend).unwrap();
    }

    fn rev(&self) -> i64 {
        self.store.current_revision().0
    }

    fn try_put(&mut self, req: &PutRequest) -> Result<(PutResponse, Vec<Event>), Error> {
        let result = self.store.put(&self.backend, req, &lease_exists);
        self.flush();
        result
    }

    fn put(&mut self, key: &str, value: &str) -> Vec<Event> {
        self.try_put(&put_req(key, value)).unwrap().1
    }

    fn delete(&mut self, key: &str, range_end: &str) -> (DeleteRangeResponse, Vec<Event>) {
        let req = DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: true,
        };
        let result = self.store.delete_range(&self.backend, &req).unwrap();
        self.flush();
        result
    }

    fn try_txn(&mut self, req: &TxnRequest) -> Result<(TxnResponse, Vec<Event>), Error> {
        let result = self.store.txn(&self.backend, req, &lease_exists);
        self.flush();
        result
    }

    fn compact(&mut self, rev: i64) -> HashKv {
        let hash = self.store.compact(&self.backend, Revision(rev)).unwrap();
        self.flush();
        hash
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        self.store.range(&self.backend, req, super::Counting::Total)
    }

    fn get(&self, key: &str) -> Option<KeyValue> {
        self.store
            .get_at(&self.backend, key.as_bytes(), Revision(0))
            .unwrap()
    }

    fn record_count(&self) -> usize {
        let mut n = 0;
        self.backend
            .scan(Bucket::Key, &[], None, &mut |_, _| {
                n += 1;
                Scan::Continue
            })
            .unwrap();
        n
    }
}

#[test]
fn a_fresh_store_is_at_revision_one_and_the_first_write_gets_two() {
    let mut h = Harness::new();
    assert_eq!(h.store.current_revision(), Revision(1));
    assert_eq!(h.store.compact_revision(), Revision(-1));
    h.put("a", "1");
    let kv = h.get("a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    h.put("a", "2");
    let kv = h.get("a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
}

#[test]
fn a_delete_ends_a_generation_and_the_next_put_starts_at_version_one() {
    let mut h = Harness::new();
    h.put("k", "1"); // 2
    h.put("k", "2"); // 3
    let (resp, events) = h.delete("k", ""); // 4
    assert_eq!(resp.deleted, 1);
    assert_eq!(resp.prev_kvs[0].value, b"2");
    assert_eq!(
        events[0].kv,
        Some(KeyValue {
            key: b"k".to_vec(),
            mod_revision: 4,
            ..KeyValue::default()
        }),
        "a delete event carries etcd's tombstone form"
    );
    assert_eq!(events[0].prev_kv.as_ref().unwrap().mod_revision, 3);
    assert_eq!(h.get("k"), None);
    h.put("k", "3"); // 5
    let kv = h.get("k").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    let old = h
        .store
        .get_at(&h.backend, b"k", Revision(3))
        .unwrap()
        .unwrap();
    assert_eq!(
        (old.create_revision, old.version, old.value),
        (2, 2, b"2".to_vec())
    );
    assert_eq!(h.store.get_at(&h.backend, b"k", Revision(4)).unwrap(), None);
}

#[test]
fn deleting_nothing_does_not_advance_the_revision() {
    let mut h = Harness::new();
    h.put("a", "1");
    let (resp, events) = h.delete("b", "");
    assert_eq!((resp.deleted, h.rev()), (0, 2));
    assert!(events.is_empty());
    assert!(h.store.take_batch().is_empty(), "nothing staged");
}

#[test]
fn range_end_forms_follow_etcd() {
    let mut h = Harness::new();
    for key in ["a", "b", "ba", "c", "\u{1}"] {
        h.put(key, "v");
    }
    let get = |key: &str, end: &str| keys(&h.range(&range_req(key, end)).unwrap());
    assert_eq!(get("b", ""), ["b"], "no range_end: one key");
    assert_eq!(get("b", "c"), ["b", "ba"], "half-open");
    assert_eq!(get("b", "\0"), ["b", "ba", "c"], "\\0: from key to the end");
    assert_eq!(
        get("\0", "\0"),
        ["\u{1}", "a", "b", "ba", "c"],
        "\\0 and \\0: everything"
    );
    assert!(get("c", "a").is_empty(), "range_end before key: nothing");
    assert!(get("b", "b").is_empty());
}

#[test]
fn limit_more_and_count() {
    let mut h = Harness::new();
    for key in ["a", "b", "c", "d"] {
        h.put(key, "v");
    }
    let mut req = range_req("a", "\0");
    req.limit = 2;
    let resp = h.range(&req).unwrap();
    assert_eq!(
        (keys(&resp), resp.more, resp.count),
        (vec!["a".to_string(), "b".into()], true, 4)
    );
    req.limit = 4;
    let resp = h.range(&req).unwrap();
    assert_eq!((resp.kvs.len(), resp.more, resp.count), (4, false, 4));
    // Filters drop entries but not the count.
    req.limit = 1;
    req.min_mod_revision = 4;
    let resp = h.range(&req).unwrap();
    assert_eq!(
        (keys(&resp), resp.more, resp.count),
        (vec!["c".to_string()], true, 4)
    );
    req.count_only = true;
    let resp = h.range(&req).unwrap();
    assert_eq!((resp.kvs.len(), resp.more, resp.count), (0, false, 4));
}

#[test]
fn sort_defaulting_follows_etcd() {
    let mut h = Harness::new();
    // Mod revisions: d=2, c=3, b=4, a=5.
    for key in ["d", "c", "b", "a"] {
        h.put(key, key);
    }
    let sorted = |target: SortTarget, order: SortOrder, limit: i64| {
        let mut req = range_req("a", "\0");
        req.sort_target = target as i32;
        req.sort_order = order as i32;
        req.limit = limit;
        keys(&h.range(&req).unwrap())
    };
    assert_eq!(
        sorted(SortTarget::Mod, SortOrder::None, 0),
        ["d", "c", "b", "a"],
        "a target with order NONE sorts ascending"
    );
    assert_eq!(
        sorted(SortTarget::Key, SortOrder::Descend, 0),
        ["d", "c", "b", "a"]
    );
    assert_eq!(
        sorted(SortTarget::Key, SortOrder::None, 0),
        ["a", "b", "c", "d"]
    );
    assert_eq!(
        sorted(SortTarget::Mod, SortOrder::Ascend, 2),
        ["d", "c"],
        "an explicit order sorts every key, then cuts"
    );
    // etcd's quirk: with order NONE the limit is applied in key order first (limit + 1 keys
    // gathered), then the default ascending sort runs on what was gathered.
    assert_eq!(sorted(SortTarget::Mod, SortOrder::None, 2), ["c", "b"]);
    // Ties keep key order, ascending or descending.
    assert_eq!(
        sorted(SortTarget::Version, SortOrder::Descend, 0),
        ["a", "b", "c", "d"]
    );
}

#[test]
fn keys_only_clears_values_and_keeps_the_rest() {
    let mut h = Harness::new();
    let mut req = put_req("a", "v");
    req.lease = LIVE_LEASE;
    h.try_put(&req).unwrap();
    let mut range = range_req("a", "");
    range.keys_only = true;
    let kv = h.range(&range).unwrap().kvs.pop().unwrap();
    assert!(kv.value.is_empty());
    assert_eq!((kv.lease, kv.mod_revision, kv.version), (LIVE_LEASE, 2, 1));
}

#[test]
fn historical_reads_and_their_errors() {
    let mut h = Harness::new();
    for v in ["1", "2", "3", "4"] {
        h.put("k", v); // revisions 2..=5
    }
    let at = |rev: i64| {
        let mut req = range_req("k", "");
        req.revision = rev;
        h.range(&req)
    };
    assert_eq!(at(3).unwrap().kvs[0].value, b"2");
    assert_eq!(
        at(0).unwrap().kvs[0].value,
        b"4",
        "0 reads the current revision"
    );
    assert_eq!(etcd_error(at(6)), EtcdError::FutureRev);
    assert_eq!(at(1).unwrap().kvs.len(), 0, "revision 1 is the empty store");

    h.compact(4);
    let at = |rev: i64| {
        let mut req = range_req("k", "");
        req.revision = rev;
        h.range(&req)
    };
    assert_eq!(
        at(4).unwrap().kvs[0].value,
        b"3",
        "reading at the compact revision works"
    );
    assert_eq!(etcd_error(at(3)), EtcdError::Compacted);
    assert_eq!(etcd_error(at(6)), EtcdError::FutureRev);
}

#[test]
fn compaction_keeps_each_keys_latest_revision_and_drops_the_rest() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("a", "2"); // 3
    h.put("b", "1"); // 4
    h.delete("b", ""); // 5
    h.put("c", "1"); // 6
    h.delete("c", ""); // 7
    h.put("a", "3"); // 8
    assert_eq!(h.record_count(), 7);
    h.compact(7);
    // a@3 (latest of a at 7), a@8 and c's tombstone at 7 survive; b's whole life is gone.
    assert_eq!(h.record_count(), 3);
    let mut all = range_req("\0", "\0");
    all.revision = 7;
    let resp = h.range(&all).unwrap();
    assert_eq!(keys(&resp), ["a"]);
    assert_eq!(resp.kvs[0].value, b"2");
    assert_eq!(
        etcd_error(h.store.compact(&h.backend, Revision(7))),
        EtcdError::Compacted
    );
    assert_eq!(
        etcd_error(h.store.compact(&h.backend, Revision(9))),
        EtcdError::FutureRev
    );

    // The next compaction removes the tombstone it kept.
    h.compact(8);
    assert_eq!(h.record_count(), 1);
    h.reopen();
    assert_eq!((h.rev(), h.store.compact_revision().0), (8, 8));
    assert_eq!(h.get("a").unwrap().version, 3);
    h.put("a", "4");
    let kv = h.get("a").unwrap();
    assert_eq!(
        (kv.create_revision, kv.version),
        (2, 4),
        "version survives compaction and restart"
    );
}

#[test]
fn a_restart_never_moves_the_revision_backwards() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.delete("a", ""); // 3
    h.compact(3);
    h.put("b", "1"); // 4
    h.delete("b", ""); // 5
    h.compact(5);
    h.reopen();
    assert_eq!((h.rev(), h.store.compact_revision().0), (5, 5));
    // Even if every record were gone, the persisted revision stands (etcd#17780).
    let mut wipe = WriteBatch::default();
    h.backend
        .scan(Bucket::Key, &[], None, &mut |k, _| {
            wipe.delete(Bucket::Key, k.to_vec());
            Scan::Continue
        })
        .unwrap();
    h.backend.write(wipe).unwrap();
    h.reopen();
    assert_eq!(h.rev(), 5);
    h.put("c", "1");
    assert_eq!(h.get("c").unwrap().mod_revision, 6);
}

#[test]
fn a_fresh_store_accepts_a_compaction_at_zero_once_like_etcd() {
    let mut h = Harness::new();
    h.compact(0);
    assert_eq!(h.store.compact_revision(), Revision(0));
    assert_eq!(
        etcd_error(h.store.compact(&h.backend, Revision(0))),
        EtcdError::Compacted
    );
    h.reopen();
    assert_eq!(h.store.compact_revision(), Revision(0));
}

#[test]
fn put_prev_kv_and_ignore_flags() {
    let mut h = Harness::new();
    let mut req = put_req("k", "v1");
    req.lease = LIVE_LEASE;
    req.prev_kv = true;
    let (resp, _) = h.try_put(&req).unwrap();
    assert_eq!(resp.prev_kv, None);
    assert_eq!(resp.header, None);

    let ignore_value = PutRequest {
        key: b"k".to_vec(),
        ignore_value: true,
        prev_kv: true,
        ..PutRequest::default()
    };
    let (resp, events) = h.try_put(&ignore_value).unwrap();
    assert_eq!(resp.prev_kv.unwrap().value, b"v1");
    let kv = events[0].kv.as_ref().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.lease),
        (&b"v1"[..], 0),
        "ignore_value keeps the value, not the lease"
    );

    let ignore_lease = PutRequest {
        key: b"k".to_vec(),
        value: b"v2".to_vec(),
        ignore_lease: true,
        ..PutRequest::default()
    };
    h.try_put(&PutRequest {
        lease: LIVE_LEASE,
        ..put_req("k", "v1")
    })
    .unwrap();
    let (_, events) = h.try_put(&ignore_lease).unwrap();
    let kv = events[0].kv.as_ref().unwrap();
    assert_eq!((kv.value.as_slice(), kv.lease), (&b"v2"[..], LIVE_LEASE));

    let missing = PutRequest {
        key: b"nope".to_vec(),
        ignore_value: true,
        ..PutRequest::default()
    };
    let before = h.rev();
    assert_eq!(etcd_error(h.try_put(&missing)), EtcdError::KeyNotFound);
    let dead_lease = PutRequest {
        lease: 99,
        ..put_req("k", "x")
    };
    assert_eq!(etcd_error(h.try_put(&dead_lease)), EtcdError::LeaseNotFound);
    assert_eq!(h.rev(), before, "errors change nothing");
}

#[test]
fn lease_moves_come_from_the_lease_map_with_or_without_prev_kv() {
    for fill in [true, false] {
        let mut h = Harness::new();
        h.store.set_fill_prev_kv(fill);
        let leased = PutRequest {
            lease: LIVE_LEASE,
            ..put_req("k", "1")
        };
        let (_, first) = h.try_put(&leased).unwrap();
        let (_, second) = h.try_put(&put_req("k", "2")).unwrap();
        h.put("plain", "1");
        let (_, deleted) = h.delete("k", "");
        let prev = |events: &[Event]| events[0].prev_kv.as_ref().map(|kv| kv.value.clone());
        assert_eq!(prev(&first), None);
        match fill {
            true => assert_eq!(prev(&second), Some(b"1".to_vec()), "fill {fill}"),
            false => assert_eq!(prev(&second), None, "no previous record read"),
        }
        assert_eq!(deleted.len(), 1);
        let lease = Some(LeaseId(LIVE_LEASE));
        assert_eq!(
            h.store.take_lease_moves(),
            vec![
                LeaseMove {
                    key: b"k".to_vec(),
                    from: None,
                    to: lease
                },
                LeaseMove {
                    key: b"k".to_vec(),
                    from: lease,
                    to: None
                },
            ],
            "a put attaches, a put without a lease detaches, keys without leases move nothing"
        );
        assert!(h.store.take_lease_moves().is_empty(), "drained");
    }
}

#[test]
fn leases_follow_puts_deletes_and_restarts() {
    let mut h = Harness::new();
    h.try_put(&PutRequest {
        lease: LIVE_LEASE,
        ..put_req("a", "1")
    })
    .unwrap();
    h.try_put(&PutRequest {
        lease: LIVE_LEASE,
        ..put_req("b", "1")
    })
    .unwrap();
    h.put("b", "2"); // drops b's lease
    assert_eq!(
        h.store.lease_keys(),
        vec![(b"a".to_vec(), LeaseId(LIVE_LEASE))]
    );
    h.reopen();
    assert_eq!(
        h.store.lease_keys(),
        vec![(b"a".to_vec(), LeaseId(LIVE_LEASE))]
    );
    let events = h
        .store
        .delete_keys(&h.backend, &[b"a".to_vec(), b"b".to_vec(), b"zz".to_vec()])
        .unwrap();
    h.flush();
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e.kv.as_ref().unwrap().mod_revision == 5),
        "one revision"
    );
    assert!(h.store.lease_keys().is_empty());
}

#[test]
fn txn_compares_on_missing_keys_follow_etcd() {
    let mut h = Harness::new();
    h.put("a", "1");
    let succeeds = |h: &mut Harness, c: Compare| {
        let req = TxnRequest {
            compare: vec![c],
            success: vec![],
            failure: vec![],
        };
        h.try_txn(&req).unwrap().0.succeeded
    };
    use CompareResult::*;
    assert!(
        succeeds(&mut h, compare("x", "", Equal, TargetUnion::Version(0))),
        "a missing key has version 0"
    );
    assert!(succeeds(
        &mut h,
        compare("x", "", Equal, TargetUnion::CreateRevision(0))
    ));
    assert!(
        !succeeds(&mut h, compare("x", "", Equal, TargetUnion::Value(vec![]))),
        "a missing value never compares"
    );
    assert!(!succeeds(
        &mut h,
        compare("x", "", NotEqual, TargetUnion::Value(b"1".to_vec()))
    ));
    assert!(succeeds(
        &mut h,
        compare("a", "", Equal, TargetUnion::Value(b"1".to_vec()))
    ));
    assert!(succeeds(
        &mut h,
        compare("a", "", Greater, TargetUnion::Value(b"0".to_vec()))
    ));
    assert!(succeeds(
        &mut h,
        compare("a", "", Less, TargetUnion::ModRevision(3))
    ));

    h.put("b", "2");
    // A range compare holds only if every key in the range satisfies it.
    assert!(succeeds(
        &mut h,
        compare("a", "c", Greater, TargetUnion::Version(0))
    ));
    assert!(!succeeds(
        &mut h,
        compare("a", "c", Equal, TargetUnion::Value(b"1".to_vec()))
    ));
    assert!(succeeds(
        &mut h,
        compare("a", "\0", Less, TargetUnion::CreateRevision(4))
    ));
    // An empty range compares the zero KeyValue.
    assert!(succeeds(
        &mut h,
        compare("m", "n", Equal, TargetUnion::Version(0))
    ));
}

#[test]
fn a_txn_writes_one_revision_and_reads_its_own_writes() {
    let mut h = Harness::new();
    h.put("a", "old"); // 2
    let req = TxnRequest {
        compare: vec![compare(
            "a",
            "",
            CompareResult::Equal,
            TargetUnion::Value(b"old".to_vec()),
        )],
        success: vec![
            op_range("a", ""),
            op_put("a", "new"),
            op_range("a", ""),
            op_delete("zzz", ""),
            op_txn(TxnRequest {
                // Nested compares see the store before the txn: a is still "old".
                compare: vec![compare(
                    "a",
                    "",
                    CompareResult::Equal,
                    TargetUnion::Value(b"old".to_vec()),
                )],
                success: vec![op_put("b", "nested"), op_range("a", "\0")],
                failure: vec![],
            }),
        ],
        failure: vec![],
    };
    let (resp, events) = h.try_txn(&req).unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.header, None);
    assert_eq!(h.rev(), 3, "one revision for the whole txn");
    let header = |revision| {
        Some(ResponseHeader {
            revision,
            ..ResponseHeader::default()
        })
    };
    let Some(Response::ResponseRange(first)) = &resp.responses[0].response else {
        panic!()
    };
    assert_eq!(
        (first.kvs[0].value.as_slice(), &first.header),
        (&b"old"[..], &header(2))
    );
    let Some(Response::ResponsePut(put)) = &resp.responses[1].response else {
        panic!()
    };
    assert_eq!(put.header, header(3));
    let Some(Response::ResponseRange(second)) = &resp.responses[2].response else {
        panic!()
    };
    assert_eq!(
        (second.kvs[0].value.as_slice(), &second.header),
        (&b"new"[..], &header(3))
    );
    let Some(Response::ResponseDeleteRange(del)) = &resp.responses[3].response else {
        panic!()
    };
    assert_eq!((del.deleted, &del.header), (0, &header(3)));
    let Some(Response::ResponseTxn(nested)) = &resp.responses[4].response else {
        panic!()
    };
    assert!(nested.succeeded);
    assert_eq!(
        nested.header,
        Some(ResponseHeader::default()),
        "etcd leaves a nested txn's header zero"
    );
    let Some(Response::ResponseRange(inner)) = &nested.responses[1].response else {
        panic!()
    };
    assert_eq!(keys(inner), ["a", "b"]);

    let revs: Vec<(i64, String)> = events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (kv.mod_revision, String::from_utf8(kv.key.clone()).unwrap())
        })
        .collect();
    assert_eq!(revs, [(3, "a".to_string()), (3, "b".to_string())]);
    assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b"old");
    assert_eq!(events[1].prev_kv, None);
    // The sub revisions are the op order.
    h.reopen();
    assert_eq!(
        h.store
            .events(&h.backend, Revision(3), Revision(3))
            .unwrap(),
        events
    );
}

#[test]
fn a_read_only_txn_does_not_advance_the_revision() {
    let mut h = Harness::new();
    h.put("a", "1");
    let req = TxnRequest {
        compare: vec![],
        success: vec![op_range("a", ""), op_delete("none", "")],
        failure: vec![],
    };
    let (resp, events) = h.try_txn(&req).unwrap();
    assert!(events.is_empty());
    assert_eq!(h.rev(), 2);
    let Some(Response::ResponseDeleteRange(del)) = &resp.responses[1].response else {
        panic!()
    };
    assert_eq!(del.header.as_ref().unwrap().revision, 2);
}

#[test]
fn a_failing_txn_leaves_no_trace() {
    let mut h = Harness::new();
    h.put("a", "1");
    let dead_lease = RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            lease: 99,
            ..put_req("c", "x")
        })),
    };
    let req = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("b", "1"),
            op_txn(TxnRequest {
                compare: vec![],
                success: vec![dead_lease],
                failure: vec![],
            }),
        ],
        failure: vec![],
    };
    assert_eq!(etcd_error(h.try_txn(&req)), EtcdError::LeaseNotFound);
    // etcd checks ignore_value against the store before the txn...
    let ignore = |key: &str| RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.into(),
            ignore_value: true,
            ..PutRequest::default()
        })),
    };
    let req = TxnRequest {
        compare: vec![],
        success: vec![op_put("b", "1"), ignore("b")],
        failure: vec![],
    };
    assert_eq!(etcd_error(h.try_txn(&req)), EtcdError::KeyNotFound);
    // ...and crashes when a "\0" delete removed the key inside the txn; Strata refuses the txn.
    let req = TxnRequest {
        compare: vec![],
        success: vec![op_delete("a", "\0"), ignore("a")],
        failure: vec![],
    };
    assert_eq!(etcd_error(h.try_txn(&req)), EtcdError::KeyNotFound);
    // A range at a future revision is refused before anything runs.
    let mut future = range_req("a", "");
    future.revision = 3;
    let req = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("b", "1"),
            RequestOp {
                request: Some(Request::RequestRange(future)),
            },
        ],
        failure: vec![],
    };
    assert_eq!(etcd_error(h.try_txn(&req)), EtcdError::FutureRev);

    assert_eq!(h.rev(), 2);
    assert_eq!(h.get("b"), None);
    assert_eq!(h.get("a").unwrap().value, b"1");
}

#[test]
fn the_failure_branch_runs_when_a_compare_fails() {
    let mut h = Harness::new();
    let req = TxnRequest {
        compare: vec![compare(
            "a",
            "",
            CompareResult::Greater,
            TargetUnion::Version(0),
        )],
        success: vec![op_put("s", "1")],
        failure: vec![op_put("f", "1"), op_put("a", "1")],
    };
    let (resp, events) = h.try_txn(&req).unwrap();
    assert!(!resp.succeeded);
    assert_eq!(events.len(), 2);
    assert!(h.get("s").is_none());
    assert!(h.try_txn(&req).unwrap().0.succeeded, "a now exists");
}

#[test]
fn reads_see_staged_writes_before_they_are_taken() {
    let mut h = Harness::new();
    h.store
        .put(&h.backend, &put_req("a", "1"), &lease_exists)
        .unwrap();
    h.store
        .put(&h.backend, &put_req("a", "2"), &lease_exists)
        .unwrap();
    h.store
        .delete_range(
            &h.backend,
            &DeleteRangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(h.backend.size_in_use_bytes(), 0, "nothing written yet");
    assert_eq!(
        h.store
            .get_at(&h.backend, b"a", Revision(3))
            .unwrap()
            .unwrap()
            .value,
        b"2"
    );
    let events = h
        .store
        .events(&h.backend, Revision(2), Revision(4))
        .unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].prev_kv.as_ref().unwrap().value, b"2");
    h.store.compact(&h.backend, Revision(3)).unwrap();
    let batch = h.store.take_batch();
    h.backend.write(batch).unwrap();
    assert_eq!(h.record_count(), 2, "a@3 kept, a@2 never reached the disk");
}

#[test]
fn events_from_the_compact_revision_keep_its_last_change_per_key() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    let req = TxnRequest {
        compare: vec![],
        success: vec![op_put("b", "1"), op_delete("a", "")],
        failure: vec![],
    };
    h.try_txn(&req).unwrap(); // 3: b put, a deleted
    h.put("b", "2"); // 4
    h.compact(3);
    assert_eq!(
        etcd_error(h.store.events(&h.backend, Revision(2), Revision(4))),
        EtcdError::Compacted
    );
    assert_eq!(
        etcd_error(h.store.events(&h.backend, Revision(3), Revision(5))),
        EtcdError::FutureRev
    );
    let events = h
        .store
        .events(&h.backend, Revision(3), Revision(4))
        .unwrap();
    let summary: Vec<(i32, &[u8], i64, bool)> = events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                e.r#type,
                kv.key.as_slice(),
                kv.mod_revision,
                e.prev_kv.is_some(),
            )
        })
        .collect();
    let (put, del) = (EventType::Put as i32, EventType::Delete as i32);
    assert_eq!(
        summary,
        vec![
            (put, &b"b"[..], 3, false),
            (del, &b"a"[..], 3, false),
            (put, &b"b"[..], 4, true)
        ],
        "the delete at the compact revision survives; prev_kv below it is compacted"
    );
}

// etcd's `testutil.PickKey`.
fn pick_key(i: i64) -> &'static str {
    const CYCLE: i64 = 71;
    if i % (CYCLE * 2) == 30 {
        return "zenek";
    }
    if i % CYCLE == 30 {
        return "xavery";
    }
    [
        "alice",
        "bob",
        "celine",
        "dominik",
        "eve",
        "frederica",
        "gorge",
    ][(i % 7) as usize]
}

fn put_kvs(h: &mut Harness, from: i64, count: i64) {
    for i in from..=from + count {
        h.put(pick_key(i), &i.to_string());
    }
}

fn hash_then_compact(h: &mut Harness, rev: i64) -> (u32, i64, i64) {
    let rev = if rev == 0 { h.rev() } else { rev };
    let hash = h.store.hash_kv(&h.backend, Revision(rev)).unwrap();
    h.compact(rev);
    (hash.hash, hash.compact_revision.0, hash.hash_revision.0)
}

/// etcd's `TestHashByRevValue` (`server/storage/mvcc/hash_test.go`), golden values included:
/// the same writes give the same HashKV as etcd, byte for byte.
#[test]
fn hash_kv_matches_etcds_golden_values() {
    let mut h = Harness::new();
    let mut got = Vec::new();
    let mut rev = 0;
    while rev < 1210 {
        put_kvs(&mut h, rev, 71);
        got.push(hash_then_compact(&mut h, rev + 71 / 2));
        rev += 71;
    }
    put_kvs(&mut h, rev, 1210);
    got.push(hash_then_compact(&mut h, rev + 1210 / 2));
    let want = [
        (4082599214, -1, 35),
        (2279933401, 35, 106),
        (3284231217, 106, 177),
        (126286495, 177, 248),
        (900108730, 248, 319),
        (2475485232, 319, 390),
        (1226296507, 390, 461),
        (2503661030, 461, 532),
        (4155130747, 532, 603),
        (106915399, 603, 674),
        (406914006, 674, 745),
        (1882211381, 745, 816),
        (806177088, 816, 887),
        (664311366, 887, 958),
        (1496914449, 958, 1029),
        (2434525091, 1029, 1100),
        (3988652253, 1100, 1171),
        (1122462288, 1171, 1242),
        (724436716, 1242, 1883),
    ];
    assert_eq!(got, want);
}

/// etcd's `TestHashByRevValueLastRevision`.
#[test]
fn hash_kv_at_the_current_revision_matches_etcds_golden_values() {
    let mut h = Harness::new();
    let mut got = Vec::new();
    let mut rev = 0;
    while rev < 1210 {
        put_kvs(&mut h, rev, 71);
        got.push(hash_then_compact(&mut h, 0));
        rev += 71;
    }
    put_kvs(&mut h, rev, 1210);
    got.push(hash_then_compact(&mut h, 0));
    let want = [
        (1913897190, -1, 73),
        (224860069, 73, 145),
        (1565167519, 145, 217),
        (1566261620, 217, 289),
        (2037173024, 289, 361),
        (691659396, 361, 433),
        (2713730748, 433, 505),
        (3919322507, 505, 577),
        (769967540, 577, 649),
        (2909194793, 649, 721),
        (1576921157, 721, 793),
        (4067701532, 793, 865),
        (2226384237, 865, 937),
        (2923408134, 937, 1009),
        (2680329256, 1009, 1081),
        (1546717673, 1081, 1153),
        (2713657846, 1153, 1225),
        (1046575299, 1225, 1297),
        (2017735779, 1297, 2508),
    ];
    assert_eq!(got, want);
}

/// etcd's `testutil.TestCompactionHash`: the hash a compaction computes equals a HashKV at
/// that revision taken just before it, through puts, deletes of other keys and a restart.
#[test]
fn the_compaction_hash_equals_hash_kv_before_it() {
    let mut h = Harness::new();
    let step = |h: &mut Harness, start: i64, stop: i64| {
        for i in start..=stop {
            if i % 67 == 0 {
                h.delete(pick_key(i + 83), "");
            } else {
                h.put(pick_key(i), &i.to_string());
            }
        }
        let before = h.store.hash_kv(&h.backend, Revision(stop)).unwrap();
        let compaction = h.compact(stop);
        assert_eq!(before, compaction, "compaction at {stop}");
        assert_eq!(
            h.store.hash_kv(&h.backend, Revision(stop)).unwrap(),
            compaction,
            "remembered"
        );
    };
    let mut rev = 0;
    while rev < 1210 {
        step(&mut h, rev, rev + 71);
        rev += 71;
        if rev == 71 * 6 {
            h.reopen();
            assert!(
                h.store.compaction_hashes().is_empty(),
                "remembered in memory only"
            );
        }
    }
    step(&mut h, rev, rev + 1210);
    assert_eq!(h.store.compaction_hashes().len(), 10, "etcd remembers ten");
}

/// HashKV's keep filter and tombstone rule make the hash independent of which records at or
/// below the compact revision are physically gone: an etcd interrupted in the middle of its
/// batched compaction (which deletes in revision order), or an etcd < 3.5.16 that deleted the
/// tombstone at the compact revision, hashes like one whose compaction finished.
#[test]
fn hash_kv_does_not_depend_on_what_compaction_physically_removed() {
    let history = || {
        let mut h = Harness::new();
        h.put("a", "1"); // 2
        h.put("b", "1"); // 3
        h.put("a", "2"); // 4
        h.put("c", "1"); // 5
        h.delete("c", ""); // 6
        h.put("b", "2"); // 7
        h.delete("a", ""); // 8
        h.put("b", "3"); // 9
        h.store.compact(&h.backend, Revision(8)).unwrap();
        let batch = h.store.take_batch();
        (h, batch)
    };
    let (mut finished, batch) = history();
    finished.backend.write(batch).unwrap();

    let (mut interrupted, mut batch) = history();
    let mut deletions = 0;
    batch.ops.retain(|op| {
        deletions += usize::from(op.value.is_none());
        op.bucket == Bucket::Meta || deletions <= 2
    });
    interrupted.backend.write(batch).unwrap();

    let (mut old_etcd, mut batch) = history();
    batch.delete(Bucket::Key, Rev::new(8, 0).to_key(true));
    old_etcd.backend.write(batch).unwrap();

    assert_eq!(finished.record_count(), 3, "a@8 (tombstone), b@7, b@9");
    assert_eq!(interrupted.record_count(), 6);
    assert_eq!(old_etcd.record_count(), 2);
    let mut stores = [finished, interrupted, old_etcd];
    let hashes = |stores: &[Harness], rev: i64| -> Vec<HashKv> {
        stores
            .iter()
            .map(|h| h.store.hash_kv(&h.backend, Revision(rev)).unwrap())
            .collect()
    };
    for h in stores.iter_mut() {
        h.put("d", "1"); // 10
    }
    for rev in [9, 10] {
        let got = hashes(&stores, rev);
        assert!(got.iter().all(|h| *h == got[0]), "at {rev}: {got:?}");
    }
    for h in stores.iter_mut() {
        h.reopen();
    }
    let got = hashes(&stores, 0);
    assert!(got.iter().all(|h| *h == got[0]), "after a restart: {got:?}");
}

/// etcd's `kvHasher` applies the keep filter to records at or below the compact revision only
/// when the keep set is non-empty. With every key's latest revision a tombstone the set is
/// empty, and old records count again.
#[test]
fn hash_kv_skips_the_keep_filter_when_nothing_is_kept_as_etcd_does() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.compact(2);
    h.delete("a", ""); // 3
    let expected = |h: &Harness, records: &[(Rev, bool)]| {
        let castagnoli = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
        let mut digest = castagnoli.digest();
        digest.update(b"key");
        for (rev, tombstone) in records {
            let key = rev.to_key(*tombstone);
            let value = h.backend.get(Bucket::Key, &key).unwrap().unwrap();
            digest.update(&key);
            digest.update(&value);
        }
        digest.finalize()
    };
    let at = |h: &Harness, rev: i64| h.store.hash_kv(&h.backend, Revision(rev)).unwrap().hash;
    let a2 = (Rev::new(2, 0), false);
    let a3 = (Rev::new(3, 0), true);
    assert_eq!(
        at(&h, 3),
        expected(&h, &[a2, a3]),
        "nothing kept: a@2 counts"
    );
    h.put("b", "1"); // 4
    let b4 = (Rev::new(4, 0), false);
    assert_eq!(
        at(&h, 4),
        expected(&h, &[a3, b4]),
        "b kept: a@2 is filtered out"
    );
}

#[test]
fn a_key_deleted_and_recreated_in_one_txn_starts_a_new_generation() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("a", "2"); // 3
                     // Validation lets this through: a "\0" range end covers nothing in etcd's duplicate check.
    let req = TxnRequest {
        compare: vec![],
        success: vec![op_delete("a", "\0"), op_put("a", "3")],
        failure: vec![],
    };
    assert_eq!(validate_txn(&req, 128), Ok(()));
    let (_, events) = h.try_txn(&req).unwrap();
    assert_eq!(events.len(), 2);
    let kv = h.get("a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (4, 4, 1));
    h.reopen();
    assert_eq!(h.get("a").unwrap(), kv);
    assert_eq!(
        h.store
            .get_at(&h.backend, b"a", Revision(3))
            .unwrap()
            .unwrap()
            .version,
        2
    );
}

/// A txn that deletes a key and puts it again ends one generation at `(r, 0)` and opens the
/// next at `(r, 1)`. Compacting at `r` must keep the live record, not the tombstone
/// (found by the model test; etcd's forward generation walk would keep the tombstone).
#[test]
fn compaction_at_a_delete_and_recreate_in_one_txn_keeps_the_live_record() {
    let mut h = Harness::new();
    h.put("c", "old"); // 2
    let txn = TxnRequest {
        success: vec![
            RequestOp {
                request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: b"a".to_vec(),
                    range_end: vec![0],
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b"c".to_vec(),
                    value: b"new".to_vec(),
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    h.try_txn(&txn).unwrap(); // 3: delete c at (3,0), put c at (3,1)
    h.compact(3);
    assert_eq!(h.get("c").unwrap().value, b"new");
    h.reopen();
    let kv = h.get("c").unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.mod_revision, kv.version),
        (&b"new"[..], 3, 1)
    );
}
