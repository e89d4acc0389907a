use proptest::prelude::*;

use super::*;
use crate::check::fixtures::*;
use crate::check::generate::*;
use crate::history::{TxnOp, TxnResult};

fn violations(run: &Run) -> Vec<String> {
    check(&run.h).into_iter().map(|v| v.message).collect()
}

fn assert_clean(run: &Run) {
    let (found, stats) = check_with_stats(&run.h);
    assert!(found.is_empty(), "{found:#?}");
    assert!(stats.notes.is_empty(), "{:#?}", stats.notes);
}

fn assert_caught(run: &Run, needle: &str) {
    let found = violations(run);
    assert!(
        found.iter().any(|m| m.contains(needle)),
        "expected a violation containing {needle:?}, got {found:#?}"
    );
}

#[test]
fn sequential_puts_and_reads_pass() {
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    run.op(2, get("k"), 20, 30, get_ok(2, vec![kv("k", "v1", 2, 2, 1)]));
    run.op(1, put("k", "v2"), 40, 50, put_ok(3));
    run.op(2, get("k"), 60, 70, get_ok(3, vec![kv("k", "v2", 2, 3, 2)]));
    run.op(1, delete("k"), 80, 90, delete_ok(4, 1));
    run.op(2, get("k"), 100, 110, get_ok(4, vec![]));
    run.op(1, delete("k"), 120, 130, delete_ok(4, 0));
    assert_clean(&run);
}

#[test]
fn stale_read_after_a_completed_write_is_caught() {
    // The read starts after v2 was acknowledged yet shows v1, at a revision that includes v2.
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    run.op(1, put("k", "v2"), 20, 30, put_ok(3));
    run.op(2, get("k"), 40, 50, get_ok(3, vec![kv("k", "v1", 2, 2, 1)]));
    assert_caught(&run, "stale read");
    assert_caught(&run, "no linearization");
}

#[test]
fn stale_read_at_an_old_revision_is_caught() {
    // A member answers from its own old state, header included (etcd #20418).
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    run.op(1, put("k", "v2"), 20, 30, put_ok(3));
    run.op(2, get("k"), 40, 50, get_ok(2, vec![kv("k", "v1", 2, 2, 1)]));
    assert_caught(&run, "answered revision 2, below revision 3");
    assert_caught(&run, "no linearization");
}

#[test]
fn concurrent_ops_may_take_effect_in_either_order() {
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 100, put_ok(3));
    run.op(2, put("k", "v2"), 10, 20, put_ok(2));
    run.op(3, get("k"), 30, 40, get_ok(2, vec![kv("k", "v2", 2, 2, 1)]));
    run.op(
        3,
        get("k"),
        110,
        120,
        get_ok(3, vec![kv("k", "v1", 2, 3, 2)]),
    );
    assert_clean(&run);
}

#[test]
fn lost_write_may_take_effect_late_or_never() {
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, lost());
    run.op(2, get("k"), 20, 30, get_ok(1, vec![]));
    run.op(1, put("j", "w1"), 40, 50, lost());
    run.op(2, get("k"), 60, 70, get_ok(3, vec![kv("k", "v1", 3, 3, 1)]));
    run.op(2, get("j"), 80, 90, get_ok(3, vec![]));
    assert_clean(&run);
}

#[test]
fn two_writes_at_one_revision_are_caught() {
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    run.op(2, put("j", "w1"), 0, 10, put_ok(2));
    assert_caught(&run, "both created revision 2");
}

#[test]
fn write_revision_must_exceed_an_earlier_answer() {
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(5));
    run.op(2, put("j", "w1"), 20, 30, put_ok(4));
    assert_caught(&run, "wrote at revision 4, not above revision 5");
}

#[test]
fn value_no_one_wrote_is_caught() {
    let mut run = Run::new();
    run.op(
        1,
        get("k"),
        0,
        10,
        get_ok(2, vec![kv("k", "ghost", 2, 2, 1)]),
    );
    assert_caught(&run, "a value no op wrote");
}

#[test]
fn failed_write_seen_is_caught() {
    let mut run = Run::new();
    run.op(
        1,
        put("k", "v1"),
        0,
        10,
        failed("etcdserver: request is too large"),
    );
    run.op(2, get("k"), 20, 30, get_ok(2, vec![kv("k", "v1", 2, 2, 1)]));
    assert_caught(&run, "which failed");
}

#[test]
fn wrong_version_is_caught() {
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    run.op(1, put("k", "v2"), 20, 30, put_ok(3));
    run.op(2, get("k"), 40, 50, get_ok(3, vec![kv("k", "v2", 2, 3, 1)]));
    assert_caught(&run, "no linearization");
}

#[test]
fn txn_compare_must_see_the_current_revision() {
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    // mod_revision(k) is 2, so the compare holds; answering "failed" is wrong.
    let got = kv("k", "v1", 2, 2, 1);
    run.op(2, cas("k", 2, "v2"), 20, 30, cas_ok(2, false, Some(got)));
    assert_caught(&run, "no linearization");

    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    run.op(2, cas("k", 2, "v2"), 20, 30, cas_ok(3, true, None));
    run.op(
        2,
        cas("k", 2, "v3"),
        40,
        50,
        cas_ok(3, false, Some(kv("k", "v2", 2, 3, 2))),
    );
    assert_clean(&run);
}

#[test]
fn prev_kv_must_be_the_previous_state() {
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    run.op(1, put("k", "v2"), 20, 30, put_ok(3));
    run.op(
        1,
        put_prev("k", "v3"),
        40,
        50,
        put_ok_prev(4, Some(kv("k", "v1", 2, 2, 1))),
    );
    assert_caught(&run, "no linearization");
}

#[test]
fn range_reads_several_keys_at_once() {
    let mut run = Run::new();
    run.op(1, put("a", "a1"), 0, 10, put_ok(2));
    run.op(2, put("b", "b1"), 0, 10, put_ok(3));
    let both = vec![kv("a", "a1", 2, 2, 1), kv("b", "b1", 3, 3, 1)];
    run.op(3, range("a", "c"), 20, 30, get_ok(3, both));
    assert_clean(&run);

    // Missing b, which was acknowledged before the range began.
    let mut run = Run::new();
    run.op(1, put("a", "a1"), 0, 10, put_ok(2));
    run.op(2, put("b", "b1"), 0, 10, put_ok(3));
    run.op(
        3,
        range("a", "c"),
        20,
        30,
        get_ok(3, vec![kv("a", "a1", 2, 2, 1)]),
    );
    assert_caught(&run, "found it absent");
    assert_caught(&run, "no linearization");
}

#[test]
fn leased_key_may_vanish() {
    let mut run = Run::new();
    run.op(1, grant(7, 1), 0, 5, grant_ok(1));
    run.op(
        1,
        Call::Put {
            key: "k".into(),
            value: "v1".into(),
            lease: 7,
            prev_kv: false,
        },
        10,
        20,
        put_ok(2),
    );
    run.op(
        2,
        get("k"),
        30,
        40,
        get_ok(2, vec![kv_lease("k", "v1", 2, 2, 1, 7)]),
    );
    run.op(2, get("k"), 3000, 3010, get_ok(3, vec![]));
    run.op(1, put("k", "v2"), 3020, 3030, put_ok(4));
    run.op(
        2,
        get("k"),
        3040,
        3050,
        get_ok(4, vec![kv("k", "v2", 4, 4, 1)]),
    );
    assert_clean(&run);
}

#[test]
fn a_lost_leased_put_may_have_vanished_with_its_lease() {
    // Swarm seed 926767: a put with a lease is lost, lands unseen over "v1", and its lease
    // expires; the next put finds the key absent.
    let mut run = Run::new();
    run.op(1, grant(7, 1), 0, 5, grant_ok(1));
    run.op(1, put("k", "v1"), 10, 20, put_ok(2));
    run.op(
        2,
        Call::Put {
            key: "k".into(),
            value: "v2".into(),
            lease: 7,
            prev_kv: false,
        },
        30,
        3000,
        lost(),
    );
    run.op(
        1,
        Call::Put {
            key: "k".into(),
            value: "v3".into(),
            lease: 0,
            prev_kv: true,
        },
        4000,
        4010,
        Outcome::Ok(Reply::Put {
            revision: 5,
            prev: None,
        }),
    );
    assert_clean(&run);
    // Without a lease the lost put cannot explain the vanishing.
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 10, 20, put_ok(2));
    run.op(2, put("k", "v2"), 30, 3000, lost());
    run.op(
        1,
        Call::Put {
            key: "k".into(),
            value: "v3".into(),
            lease: 0,
            prev_kv: true,
        },
        4000,
        4010,
        Outcome::Ok(Reply::Put {
            revision: 5,
            prev: None,
        }),
    );
    assert_caught(&run, "no linearization");
}

#[test]
fn a_lost_delete_explains_one_vanishing_not_two() {
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    run.op(2, delete("k"), 15, 100, lost());
    run.op(3, get("k"), 20, 30, get_ok(3, vec![]));
    assert_clean(&run);
    run.op(1, put("k", "v2"), 40, 50, put_ok(4));
    run.op(3, get("k"), 60, 70, get_ok(5, vec![]));
    assert_caught(&run, "no linearization");
}

/// `put a and b` in one txn.
fn put_both(a: &str, b: &str) -> Call {
    Call::Txn {
        compares: vec![],
        success: vec![
            TxnOp::Put {
                key: "a".into(),
                value: a.into(),
                lease: 0,
            },
            TxnOp::Put {
                key: "b".into(),
                value: b.into(),
                lease: 0,
            },
        ],
        failure: vec![],
    }
}

fn both_put(revision: i64) -> Outcome {
    Outcome::Ok(Reply::Txn {
        revision,
        succeeded: true,
        results: vec![TxnResult::Put { prev: None }, TxnResult::Put { prev: None }],
    })
}

#[test]
fn multi_key_txns_are_atomic() {
    let mut run = Run::new();
    run.op(1, put_both("a1", "b1"), 0, 10, both_put(2));
    run.op(1, put_both("a2", "b2"), 20, 30, both_put(3));
    run.op(2, get("a"), 12, 40, get_ok(3, vec![kv("a", "a2", 2, 3, 2)]));
    run.op(3, get("b"), 12, 40, get_ok(2, vec![kv("b", "b1", 2, 2, 1)]));
    assert_clean(&run);

    // A range sees half of the second txn.
    let half = vec![kv("a", "a2", 2, 3, 2), kv("b", "b1", 2, 2, 1)];
    run.op(4, range("a", "c"), 12, 40, get_ok(3, half));
    assert_caught(&run, "stale read");
    assert_caught(&run, "no linearization");
}

#[test]
fn serializable_reads_may_be_stale_but_not_inconsistent() {
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    run.op(1, put("k", "v2"), 20, 30, put_ok(3));
    run.op_on(
        2,
        1,
        get_serializable("k"),
        40,
        50,
        get_ok(2, vec![kv("k", "v1", 2, 2, 1)]),
    );
    assert_clean(&run);

    // Stale for its own revision: at revision 3, k is v2.
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    run.op(1, put("k", "v2"), 20, 30, put_ok(3));
    run.op_on(
        2,
        1,
        get_serializable("k"),
        40,
        50,
        get_ok(3, vec![kv("k", "v1", 2, 2, 1)]),
    );
    assert_caught(&run, "stale read");
}

#[test]
fn serializable_reads_do_not_go_back_within_a_session() {
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    run.op(1, put("k", "v2"), 20, 30, put_ok(3));
    run.op_on(
        2,
        1,
        get_serializable("k"),
        40,
        50,
        get_ok(3, vec![kv("k", "v2", 2, 3, 2)]),
    );
    run.op_on(
        2,
        1,
        get_serializable("k"),
        60,
        70,
        get_ok(2, vec![kv("k", "v1", 2, 2, 1)]),
    );
    assert_caught(&run, "below revision 3 the same member gave");

    // A restart of n1 in between may lose what it had applied but not synced.
    run.raft(
        55,
        1,
        crate::history::RaftEvent::Started {
            applied: 1,
            revision: 2,
            term: 0,
            vote: 0,
        },
    );
    assert_clean(&run);
}

#[test]
fn historical_read_shows_the_state_at_its_revision() {
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    run.op(1, put("k", "v2"), 20, 30, put_ok(3));
    run.op(
        2,
        get_at("k", 2),
        40,
        50,
        get_ok(3, vec![kv("k", "v1", 2, 2, 1)]),
    );
    run.op(3, compact(2), 52, 55, compact_ok(3));
    run.op(
        2,
        get_at("k", 1),
        60,
        70,
        failed("etcdserver: mvcc: required revision has been compacted"),
    );
    assert_clean(&run);
    run.op(
        2,
        get_at("k", 3),
        80,
        90,
        get_ok(3, vec![kv("k", "v1", 2, 2, 1)]),
    );
    assert_caught(&run, "stale read");
}

#[test]
fn exhausted_budget_is_a_note_not_a_violation() {
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    run.op(1, put("k", "v2"), 20, 30, put_ok(3));
    run.op(2, get("k"), 40, 50, get_ok(3, vec![kv("k", "v2", 2, 3, 2)]));
    let (found, stats) = check_with_budget(&run.h, 2);
    assert!(found.is_empty(), "{found:#?}");
    assert_eq!(stats.notes.len(), 1, "{:?}", stats.notes);
    assert!(stats.notes[0].contains("no verdict"), "{:?}", stats.notes);
}

fn sequential(gens: &[Gen]) -> History {
    history(gens, &[(1, 1)], &[false], &[false])
}

/// Ways to corrupt one read's answer.
#[derive(Clone, Debug)]
enum Mutation {
    OtherValue,
    RevisionUp,
    RevisionDown,
    Drop,
    HeaderBack,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        Just(Mutation::OtherValue),
        Just(Mutation::RevisionUp),
        Just(Mutation::RevisionDown),
        Just(Mutation::Drop),
        Just(Mutation::HeaderBack),
    ]
}

/// Applies `m` to the `pick`-th linearizable read that returned a kv; false if there is none.
fn corrupt(h: &mut History, pick: usize, m: &Mutation) -> bool {
    let candidates: Vec<usize> = (0..h.ops.len())
        .filter(|&i| is_linearizable_read(&h.ops[i].call))
        .filter(|&i| matches!(&h.ops[i].outcome, Outcome::Ok(Reply::Get { kvs, revision }) if !kvs.is_empty() && *revision > 2))
        .collect();
    if candidates.is_empty() {
        return false;
    }
    let i = candidates[pick % candidates.len()];
    let Outcome::Ok(Reply::Get { revision, kvs }) = &mut h.ops[i].outcome else {
        unreachable!()
    };
    let kv = &mut kvs[0];
    match m {
        Mutation::OtherValue => kv.value = b"corrupt".to_vec(),
        Mutation::RevisionUp => kv.mod_revision += 1,
        Mutation::RevisionDown => kv.mod_revision -= 1,
        Mutation::Drop => {
            kvs.remove(0);
        }
        // Below the revision of the write that made the kv it shows.
        Mutation::HeaderBack => *revision = kv.mod_revision - 1,
    }
    true
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn sequential_histories_pass(gens in prop::collection::vec(gen_op(), 1..120)) {
        let h = sequential(&gens);
        let (found, stats) = check_with_stats(&h);
        prop_assert!(found.is_empty(), "{:#?}", found);
        prop_assert!(stats.notes.is_empty(), "{:?}", stats.notes);
    }

    #[test]
    fn one_corrupted_read_fails(
        gens in prop::collection::vec(gen_op(), 10..120),
        pick in any::<usize>(),
        m in mutation(),
    ) {
        let mut h = sequential(&gens);
        prop_assume!(corrupt(&mut h, pick, &m));
        prop_assert!(!check(&h).is_empty(), "{:?} went unnoticed", m);
    }

    #[test]
    fn concurrent_histories_with_lost_answers_pass(
        gens in prop::collection::vec(gen_op(), 1..150),
        spread in prop::collection::vec((0u64..25, 0u64..25), 1..16),
        lost in prop::collection::vec(prop::bool::weighted(0.15), 1..16),
        vanish in prop::collection::vec(prop::bool::weighted(0.05), 1..16),
    ) {
        let h = history(&gens, &spread, &lost, &vanish);
        let (found, stats) = check_with_stats(&h);
        prop_assert!(found.is_empty(), "{:#?}", found);
        prop_assert!(stats.notes.is_empty(), "{:?}", stats.notes);
    }

    #[test]
    fn concurrent_histories_with_a_phantom_read_reach_a_verdict(
        gens in prop::collection::vec(gen_op(), 10..150),
        spread in prop::collection::vec((0u64..25, 0u64..25), 1..16),
        lost in prop::collection::vec(prop::bool::weighted(0.15), 1..16),
        vanish in prop::collection::vec(prop::bool::weighted(0.05), 1..16),
        pick in any::<usize>(),
    ) {
        let mut h = history(&gens, &spread, &lost, &vanish);
        prop_assume!(corrupt(&mut h, pick, &Mutation::OtherValue));
        let (found, stats) = check_with_stats(&h);
        prop_assert!(stats.notes.is_empty(), "{:?}", stats.notes);
        prop_assert!(found.iter().any(|v| v.message.contains("no linearization")), "{:#?}", found);
    }
}

#[test]
fn two_thousand_concurrent_ops_check_quickly() {
    // 2000 ops over 5 keys, 4 clients in flight at once, some answers lost.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let gens: Vec<Gen> = (0..2000)
        .map(|_| match next(11) {
            0..=3 => Gen::Put(next(5) as u8),
            4..=7 => Gen::Get(next(5) as u8),
            8 => Gen::Delete(next(5) as u8),
            9 => Gen::Cas(next(5) as u8, next(3) as i64),
            _ => Gen::RangeAll,
        })
        .collect();
    let spread: Vec<(u64, u64)> = (0..64).map(|_| (next(20), next(20))).collect();
    let lost: Vec<bool> = (0..64).map(|_| next(10) == 0).collect();
    let h = history(&gens, &spread, &lost, &[false]);
    let started = std::time::Instant::now();
    let (found, stats) = check_with_stats(&h);
    let took = started.elapsed();
    assert!(found.is_empty(), "{found:#?}");
    assert!(stats.notes.is_empty(), "{:?}", stats.notes);
    // Lost puts nobody saw are left out of the search.
    assert!(stats.searched_ops > 1700, "{}", stats.searched_ops);
    eprintln!("2000 ops: {} steps in {took:?}", stats.steps);
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");

    // Proving a violation needs the whole search; it must still end with a verdict.
    let mut h = h;
    for m in [Mutation::OtherValue, Mutation::RevisionUp, Mutation::Drop] {
        let mut bad = h.clone();
        assert!(corrupt(&mut bad, 777, &m));
        let started = std::time::Instant::now();
        let (found, stats) = check_with_stats(&bad);
        let took = started.elapsed();
        eprintln!(
            "2000 ops, {m:?}: {} steps in {took:?}: {found:#?}",
            stats.steps
        );
        assert!(!found.is_empty(), "{m:?} went unnoticed");
        assert!(stats.notes.is_empty(), "{:?}", stats.notes);
        assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    }
    h.ops.clear();
}

#[test]
fn refusals_of_past_revisions_need_a_compaction_or_a_future() {
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    run.op(1, put("k", "v2"), 20, 30, put_ok(3));
    run.op(2, compact(3), 40, 50, compact_ok(3));
    // Below the compaction: refused rightly; at it: read.
    run.op(3, get_at("k", 2), 60, 70, failed(COMPACTED));
    run.op(
        3,
        get_at("k", 3),
        80,
        90,
        get_ok(3, vec![kv("k", "v2", 2, 3, 2)]),
    );
    // Beyond every revision answered so far: refused rightly.
    run.op(3, get_at("k", 5), 100, 110, failed(FUTURE_REVISION));
    assert_clean(&run);

    // A refusal at the compaction revision itself: nothing compacted it.
    run.op(3, get_at("k", 3), 120, 130, failed(COMPACTED));
    assert_caught(&run, "at revision 3 was refused as compacted");

    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    // Revision 2 was answered before the read was invoked: it is not in the future.
    run.op(3, get_at("k", 2), 20, 30, failed(FUTURE_REVISION));
    assert_caught(
        &run,
        "at revision 2 was refused as a future revision, but op",
    );
    // A compaction asked for after the refusal cannot explain it; a lost one asked before can.
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    run.op(1, put("k", "v2"), 20, 30, put_ok(3));
    run.op(3, get_at("k", 2), 40, 50, failed(COMPACTED));
    run.op(2, compact(3), 60, 70, compact_ok(3));
    assert_caught(&run, "no compaction above revision 2 was asked for before");
    let mut run = Run::new();
    run.op(1, put("k", "v1"), 0, 10, put_ok(2));
    run.op(1, put("k", "v2"), 20, 30, put_ok(3));
    run.op(2, compact(3), 35, 500, lost());
    run.op(3, get_at("k", 2), 40, 50, failed(COMPACTED));
    assert_clean(&run);
}
