//! Randomized in-memory clusters: 3 and 5 nodes under a seeded schedule of ticks, message
//! delivery, message loss, delayed persistence, crashes with restart from persisted state and
//! partitions, with client writes and linearizable reads throughout.
//!
//! Checked on every seed:
//! - Election safety: at most one leader per term (Raft §5.2).
//! - Log matching and state-machine safety: an entry committed at an index is the same entry
//!   on every node that holds that index, forever (Raft §5.3, §5.4).
//! - Same state at the same applied index: equal `Hash` wherever two nodes stand at one index.
//! - Durability: every acknowledged write is readable after the run, at its revision.
//! - Monotonic revisions per node, across crashes.
//! - Liveness: after healing and restarting everyone, a leader emerges and all nodes converge
//!   within a bound.
//! - Determinism: one seed run twice gives the same trace hash.

use std::collections::BTreeMap;

use strata_engine::prng::Prng;
use strata_engine::proto::etcdserverpb::{PutRequest, RangeRequest};
use strata_engine::request::{Request, Response};
use strata_engine::testkit::Cluster;
use strata_engine::{LogIndex, NodeId, RequestId};

#[derive(Default)]
struct Checks {
    leaders: BTreeMap<u64, NodeId>,
    committed: BTreeMap<u64, (u64, Vec<u8>)>,
    hash_at_applied: BTreeMap<u64, u32>,
    revision_seen: BTreeMap<NodeId, i64>,
}

impl Checks {
    fn observe(&mut self, c: &Cluster, seed: u64, step: usize, deep: bool) {
        for id in c.ids() {
            if !c.is_up(id) {
                continue;
            }
            let n = c.node(id);
            if n.is_leader() {
                let term = n.term().0;
                let prev = *self.leaders.entry(term).or_insert(id);
                assert_eq!(
                    prev, id,
                    "seed {seed} step {step}: two leaders in term {term}"
                );
            }
            let rev = n.revision().0;
            let seen = self.revision_seen.entry(id).or_insert(rev);
            assert!(
                rev >= *seen,
                "seed {seed} step {step}: n{id} revision went back {seen} -> {rev}"
            );
            *seen = rev;
            if !deep {
                continue;
            }
            let commit = n.commit_index().0;
            for e in n.log_entries(LogIndex(0)) {
                if e.index > commit {
                    break;
                }
                let mine = (e.term, e.data.to_vec());
                let known = self
                    .committed
                    .entry(e.index)
                    .or_insert_with(|| mine.clone());
                assert_eq!(
                    *known, mine,
                    "seed {seed} step {step}: n{id} holds a different committed entry at {}",
                    e.index
                );
            }
            let applied = n.applied_index().0;
            let hash = n.state_machine().hash().expect("hash");
            let known = *self.hash_at_applied.entry(applied).or_insert(hash);
            assert_eq!(
                known, hash,
                "seed {seed} step {step}: n{id} state differs at applied index {applied}"
            );
        }
    }
}

struct Run {
    trace: u64,
    acked: usize,
    ops: usize,
}

fn key(p: &mut Prng) -> Vec<u8> {
    format!("k{}", p.range(0, 5)).into_bytes()
}

fn run(voters: u64, seed: u64, steps: usize) -> Run {
    let mut c = Cluster::new(voters, seed);
    let mut p = Prng::new(seed ^ 0xa5a5);
    let mut checks = Checks::default();
    let mut writes: BTreeMap<RequestId, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
    let ids = c.ids();
    let mut ops = 0;
    for step in 0..steps {
        // Per mille. Many deliveries per tick, as on a real network; faults are rare events.
        let roll = p.range(0, 1000);
        match roll {
            0..=49 => c.tick(),
            50..=549 => {
                let links = c.busy_links();
                if !links.is_empty() {
                    let (a, b) = links[p.range(0, links.len() as u64) as usize];
                    c.deliver_one(a, b);
                }
            }
            550..=749 => {
                let id = ids[p.range(0, ids.len() as u64) as usize];
                c.persist(id);
            }
            750..=869 => {
                let id = ids[p.range(0, ids.len() as u64) as usize];
                if c.is_up(id) {
                    let k = key(&mut p);
                    let v = format!("v{step}").into_bytes();
                    let put = PutRequest {
                        key: k.clone(),
                        value: v.clone(),
                        ..Default::default()
                    };
                    let rid = c.submit(id, Request::Put(put));
                    writes.insert(rid, (k, v));
                    ops += 1;
                }
            }
            870..=929 => {
                let id = ids[p.range(0, ids.len() as u64) as usize];
                if c.is_up(id) {
                    c.submit(
                        id,
                        Request::Range(RangeRequest {
                            key: key(&mut p),
                            ..Default::default()
                        }),
                    );
                    ops += 1;
                }
            }
            930..=949 => {
                // Lose a message.
                let links = c.busy_links();
                if !links.is_empty() {
                    let (a, b) = links[p.range(0, links.len() as u64) as usize];
                    c.cut(a, b);
                    c.deliver_one(a, b);
                    c.uncut(a, b);
                }
            }
            950..=964 => {
                let id = ids[p.range(0, ids.len() as u64) as usize];
                if c.is_up(id) {
                    c.crash(id);
                } else {
                    c.restart(id);
                }
            }
            965..=979 => {
                let size = p.range(1, voters) as usize;
                let side: Vec<NodeId> = ids
                    .iter()
                    .copied()
                    .filter(|_| p.range(0, 2) == 0)
                    .take(size)
                    .collect();
                c.partition(&side);
            }
            _ => c.heal(),
        }
        checks.observe(&c, seed, step, step % 25 == 0);
    }

    // Liveness: heal everything, restart the crashed, and require convergence.
    c.heal();
    for id in c.ids() {
        if !c.is_up(id) {
            c.restart(id);
        }
    }
    let leader = c.elect(300);
    assert!(
        leader.is_some(),
        "seed {seed}: no leader within 300 ticks after healing"
    );
    for _ in 0..50 {
        c.tick();
        c.stabilize();
    }
    checks.observe(&c, seed, steps, true);
    let applied: Vec<u64> = c
        .ids()
        .iter()
        .map(|id| c.node(*id).applied_index().0)
        .collect();
    assert!(
        applied.windows(2).all(|w| w[0] == w[1]),
        "seed {seed}: nodes did not converge: applied {applied:?}"
    );

    // Durability: every acknowledged write is in the history at its revision.
    let leader = leader.expect("checked above");
    let mut acked = 0;
    let answers = c.answers.clone();
    for a in &answers {
        let Some((k, v)) = writes.get(&a.id) else {
            continue;
        };
        let Ok(Response::Put(put)) = &a.result else {
            continue;
        };
        let rev = put.header.as_ref().expect("header").revision;
        acked += 1;
        let got = c.call(
            leader,
            Request::Range(RangeRequest {
                key: k.clone(),
                revision: rev,
                ..Default::default()
            }),
        );
        let Ok(Response::Range(r)) = got else {
            panic!("seed {seed}: read of acked write failed: {got:?}")
        };
        assert_eq!(
            r.kvs.len(),
            1,
            "seed {seed}: acked write {k:?}@{rev} missing"
        );
        assert_eq!(
            &r.kvs[0].value, v,
            "seed {seed}: acked write {k:?}@{rev} has another value"
        );
        assert_eq!(
            r.kvs[0].mod_revision, rev,
            "seed {seed}: acked write {k:?} at another revision"
        );
    }
    Run {
        trace: c.trace_hash(),
        acked,
        ops,
    }
}

/// Runs `count` seeds from `base` (times `STRATA_SEED_FACTOR`, for longer local runs).
fn run_seeds(voters: u64, count: u64, base: u64) {
    let factor: u64 = std::env::var("STRATA_SEED_FACTOR")
        .ok()
        .and_then(|f| f.parse().ok())
        .unwrap_or(1);
    let count = count * factor;
    let (mut acked, mut ops) = (0, 0);
    for seed in base..base + count {
        let r = run(voters, seed, 5000);
        acked += r.acked;
        ops += r.ops;
    }
    println!(
        "{voters} nodes: {count} seeds, {ops} client ops, {acked} acknowledged writes verified"
    );
    assert!(
        acked > 0,
        "no write was ever acknowledged: the schedule is too hostile to test anything"
    );
}

#[test]
fn three_nodes_random_faults() {
    run_seeds(3, 150, 1000);
}

#[test]
fn five_nodes_random_faults() {
    run_seeds(5, 80, 5000);
}

#[test]
fn same_seed_same_trace() {
    for seed in [7, 8, 9] {
        let a = run(3, seed, 2000).trace;
        let b = run(3, seed, 2000).trace;
        assert_eq!(a, b, "seed {seed}: two runs differ");
    }
    assert_ne!(
        run(3, 7, 2000).trace,
        run(3, 8, 2000).trace,
        "different seeds gave one trace"
    );
}
