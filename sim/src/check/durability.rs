//! Acknowledged writes survive crashes, and members converge to one state.
//!
//! Property (etcd API guarantees: "durability"; Raft: committed entries are never lost): once a
//! write is acknowledged it survives any crash, and after the run quiesces every member holds
//! the same data.
//!
//! Rules:
//! - **Agreement**: every member's final read (`h.final_reads`) shows the same kvs.
//! - **Acked writes survive**: per key, take the latest write known to have happened (by
//!   revision: acknowledged writes, and lost writes whose values were observed). Each member's
//!   final read must show the key at that revision or later, with that value if at that
//!   revision; or show it absent only if the latest write was a delete, put it with a lease, or
//!   a later delete or leased put may have happened (a lost one, or an acknowledged one with a
//!   higher revision).
//! - **Hashes**: members that hashed the same revision (`h.final_hashes`) report the same hash.
//! - **Final revision**: no acknowledged write has a revision beyond the highest revision the
//!   members hashed. This assumes the runner hashes at the quiesced current revision.
//! - **No going back across a restart**: after a member restarts, a linearizable op it
//!   answers carries a revision no lower than any it answered before the restart (etcd #17780:
//!   revision decreasing after a crash during compaction; #13766).
//! - **A member starts from its own disk**: a member may refuse to start only if the nemesis
//!   corrupted its disk (`h.rotten`); refusing what its own storage logic wrote (a log with a
//!   gap, terms going back, a commit past its end) means the logic lost or mangled data.
//!
//! Anomalies the final reads reveal (a value no op wrote, one write seen as two kvs) are
//! reported here too.
//!
//! Bug classes: an acknowledged write lost on a single-node crash (etcd #14370), unsynced
//! applies lost and not replayed, members diverging (#14571, #14685), revisions going backwards
//! after a crash.
//!
//! Limits: keys absent from every final read are compared only against known writes; a member
//! missing from `final_reads` (dead, removed) is not judged.

use std::collections::{BTreeMap, BTreeSet};

use super::observations::{KnownWrite, Observations, Source};
use super::{
    acked_effects, at, created_revision, header_revision, is_serializable, max_before, name,
    possible_effects, show, show_kv, Findings, Lifetimes,
};
use crate::history::{History, Key, Kv, NodeIx, Outcome, RaftEvent, Violation};

pub fn check(h: &History) -> Vec<Violation> {
    let obs = Observations::new(h);
    let mut f = Findings::new("durability");
    for (source, message) in &obs.anomalies {
        if let Source::FinalRead(_) = source {
            f.push(message.clone());
        }
    }
    agreement(h, &mut f);
    acked_writes_survive(h, &obs, &mut f);
    hashes(h, &mut f);
    final_revision(h, &mut f);
    no_going_back(h, &mut f);
    starts_from_own_disk(h, &mut f);
    f.finish()
}

fn by_key(kvs: &[Kv]) -> BTreeMap<&Key, &Kv> {
    kvs.iter().map(|kv| (&kv.key, kv)).collect()
}

fn agreement(h: &History, f: &mut Findings) {
    let reads: BTreeMap<NodeIx, BTreeMap<&Key, &Kv>> = h
        .final_reads
        .iter()
        .map(|(node, kvs)| (*node, by_key(kvs)))
        .collect();
    let keys: BTreeSet<&Key> = reads.values().flat_map(|m| m.keys().copied()).collect();
    for key in keys {
        let shown: Vec<(NodeIx, Option<&Kv>)> = reads
            .iter()
            .map(|(node, m)| (*node, m.get(key).copied()))
            .collect();
        if shown.windows(2).all(|w| w[0].1 == w[1].1) {
            continue;
        }
        let each: Vec<String> = shown
            .iter()
            .map(|(node, kv)| match kv {
                Some(kv) => format!("n{node} {} v{} lease {}", show_kv(kv), kv.version, kv.lease),
                None => format!("n{node} absent"),
            })
            .collect();
        f.push(format!(
            "members disagree on {} after quiescing: {}",
            show(key),
            each.join(", ")
        ));
    }
}

fn acked_writes_survive(h: &History, obs: &Observations, f: &mut Findings) {
    for (key, by_rev) in &obs.known {
        let Some((&rev, latest)) = by_rev.iter().next_back() else {
            continue;
        };
        for (node, kvs) in &h.final_reads {
            let shown = kvs.iter().find(|kv| &kv.key == key);
            let writer = name(&h.ops[latest.op]);
            let lost = match (shown, &latest.value) {
                (Some(kv), _) if kv.mod_revision < rev => Some(show_kv(kv)),
                (Some(kv), Some(value)) if kv.mod_revision == rev && &kv.value != value => {
                    Some(show_kv(kv))
                }
                (Some(kv), None) if kv.mod_revision == rev => Some(show_kv(kv)),
                (None, Some(_)) if !may_be_gone(h, key, rev, latest) => Some("absent".into()),
                _ => None,
            };
            if let Some(shown) = lost {
                f.push(format!(
                    "n{node} lost {writer}'s write of {} at revision {rev}: its final read shows {shown}",
                    show(key)
                ));
            }
        }
    }
}

/// Whether key `key`, last put at `rev` by `latest`, may since have been deleted.
fn may_be_gone(h: &History, key: &Key, rev: i64, latest: &KnownWrite) -> bool {
    if latest.lease != 0 {
        return true;
    }
    h.ops.iter().enumerate().any(|(i, op)| {
        // An answered txn deleted only in the branch its answer names.
        let effects = match &op.outcome {
            Outcome::Ok(_) => acked_effects(op),
            _ => possible_effects(&op.call),
        };
        let removes = effects
            .iter()
            .any(|e| e.key == key && e.put.is_none_or(|(_, lease)| lease != 0));
        let after = match &op.outcome {
            Outcome::Unknown(_) => true,
            Outcome::Ok(_) => created_revision(op).is_some_and(|r| r > rev),
            Outcome::Failed(_) => false,
        };
        i != latest.op && removes && after
    })
}

fn hashes(h: &History, f: &mut Findings) {
    let mut by_revision: BTreeMap<i64, (NodeIx, u32)> = BTreeMap::new();
    for (node, (rev, hash)) in &h.final_hashes {
        match by_revision.get(rev) {
            Some((first, first_hash)) if first_hash != hash => f.push(format!(
                "n{first} and n{node} hash revision {rev} differently: {first_hash:#010x} vs {hash:#010x}"
            )),
            Some(_) => {}
            None => {
                by_revision.insert(*rev, (*node, *hash));
            }
        }
    }
}

fn final_revision(h: &History, f: &mut Findings) {
    let Some(last) = h.final_hashes.values().map(|(rev, _)| *rev).max() else {
        return;
    };
    for op in &h.ops {
        if let Some(rev) = created_revision(op) {
            if rev > last {
                f.push(format!(
                    "{} wrote at revision {rev}, beyond the cluster's final revision {last}",
                    name(op)
                ));
            }
        }
    }
}

/// What a member's start-up logs when it refuses its disk (`sim::cluster::member_main`).
pub const REFUSED_TO_START: &str = "refused to start";

fn starts_from_own_disk(h: &History, f: &mut Findings) {
    for r in &h.raft {
        if let RaftEvent::Stopped { why } = &r.event {
            if why.starts_with(REFUSED_TO_START) && !h.rotten.contains(&r.node) {
                f.push(format!(
                    "n{} refused the disk its own storage wrote, which no fault corrupted (at {}): {why}",
                    r.node,
                    at(r.at)
                ));
            }
        }
    }
}

fn no_going_back(h: &History, f: &mut Findings) {
    let lives = Lifetimes::new(h);
    let per_node = super::group_by(h, |op| {
        header_revision(op)?;
        Some(op.node)
    });
    for ops in per_node.values() {
        let epoch = |i: usize| lives.epoch(h.ops[i].node, h.ops[i].invoke);
        let last_epoch = ops.iter().map(|&i| epoch(i)).max().unwrap_or(0);
        for e in 1..=last_epoch {
            let before: Vec<_> = ops
                .iter()
                .filter(|&&i| epoch(i) < e)
                .map(|&i| {
                    (
                        h.ops[i].complete,
                        header_revision(&h.ops[i]).unwrap_or(0),
                        i,
                    )
                })
                .collect();
            let after: Vec<_> = ops
                .iter()
                .filter(|&&i| epoch(i) == e && !is_serializable(&h.ops[i].call))
                .map(|&i| (h.ops[i].invoke, i))
                .collect();
            for (b, floor, a) in max_before(&before, &after) {
                let (op_a, op_b) = (&h.ops[a], &h.ops[b]);
                let rev = header_revision(op_b).unwrap_or(0);
                if rev < floor {
                    f.push(format!(
                        "n{} went back across a restart: {} at {} answered revision {rev}, below revision {floor} of {} before",
                        op_b.node,
                        name(op_b),
                        at(op_b.invoke),
                        name(op_a)
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::*;

    fn violations(run: &Run) -> Vec<String> {
        check(&run.h).into_iter().map(|v| v.message).collect()
    }

    fn assert_clean(run: &Run) {
        let found = violations(run);
        assert!(found.is_empty(), "{found:#?}");
    }

    fn assert_caught(run: &Run, needle: &str) {
        let found = violations(run);
        assert!(
            found.iter().any(|m| m.contains(needle)),
            "expected a violation containing {needle:?}, got {found:#?}"
        );
    }

    /// k=v1 at 2, k=v2 at 3, j=w1 at 4 then deleted at 5.
    fn base() -> Run {
        let mut run = Run::new();
        run.op(1, put("k", "v1"), 0, 10, put_ok(2));
        run.op(1, put("k", "v2"), 20, 30, put_ok(3));
        run.op(1, put("j", "w1"), 40, 50, put_ok(4));
        run.op(1, delete("j"), 60, 70, delete_ok(5, 1));
        run
    }

    fn finals(run: &mut Run, node: NodeIx, kvs: Vec<Kv>) {
        run.h.final_reads.insert(node, kvs);
    }

    fn refused(run: &mut Run, node: NodeIx) {
        run.raft(
            900,
            node,
            RaftEvent::Stopped {
                why: format!("{REFUSED_TO_START}: sim-disk/s{node}: corrupt raft log: entry 7 has term 2 after term 3"),
            },
        );
    }

    #[test]
    fn refusing_an_uncorrupted_disk_is_caught() {
        let mut run = base();
        refused(&mut run, 2);
        assert_caught(&run, "n2 refused the disk its own storage wrote");
    }

    #[test]
    fn refusing_a_rotten_disk_is_expected() {
        let mut run = base();
        refused(&mut run, 2);
        run.h.rotten.insert(2);
        assert_clean(&run);
    }

    #[test]
    fn converged_members_with_every_acked_write_pass() {
        let mut run = base();
        for node in 0..3 {
            finals(&mut run, node, vec![kv("k", "v2", 2, 3, 2)]);
            run.h.final_hashes.insert(node, (5, 0xfeed));
        }
        assert_clean(&run);
    }

    #[test]
    fn lost_acked_write_is_caught() {
        let mut run = base();
        finals(&mut run, 0, vec![kv("k", "v2", 2, 3, 2)]);
        finals(&mut run, 1, vec![kv("k", "v1", 2, 2, 1)]);
        assert_caught(&run, "n1 lost op 2 (c1@n0 put \"k\"=\"v2\")'s write of \"k\" at revision 3: its final read shows \"v1\"@2");
        assert_caught(&run, "members disagree on \"k\"");
    }

    #[test]
    fn lost_acked_delete_is_caught() {
        let mut run = base();
        finals(
            &mut run,
            0,
            vec![kv("k", "v2", 2, 3, 2), kv("j", "w1", 4, 4, 1)],
        );
        assert_caught(
            &run,
            "n0 lost op 4 (c1@n0 delete \"j\")'s write of \"j\" at revision 5",
        );
    }

    #[test]
    fn absence_needs_a_delete() {
        let mut run = base();
        finals(&mut run, 0, vec![]);
        assert_caught(&run, "its final read shows absent");
        // A delete whose answer was lost may explain it.
        run.op(2, delete("k"), 80, 90, lost());
        assert_clean(&run);
    }

    #[test]
    fn different_hashes_at_one_revision_are_caught() {
        let mut run = base();
        run.h.final_hashes.insert(0, (5, 1));
        run.h.final_hashes.insert(1, (5, 2));
        run.h.final_hashes.insert(2, (4, 3));
        assert_caught(&run, "n0 and n1 hash revision 5 differently");
    }

    #[test]
    fn acked_revision_beyond_the_final_one_is_caught() {
        let mut run = base();
        run.h.final_hashes.insert(0, (4, 1));
        assert_caught(
            &run,
            "op 4 (c1@n0 delete \"j\") wrote at revision 5, beyond the cluster's final revision 4",
        );
    }

    #[test]
    fn revision_going_back_across_a_restart_is_caught() {
        let mut run = base();
        run.raft(
            100,
            0,
            RaftEvent::Started {
                applied: 3,
                revision: 3,
                term: 0,
                vote: 0,
            },
        );
        run.op(
            2,
            get("k"),
            200,
            210,
            get_ok(3, vec![kv("k", "v2", 2, 3, 2)]),
        );
        assert_caught(&run, "n0 went back across a restart: op 5 (c2@n0 get \"k\") at 0.200000s answered revision 3, below revision 5");
    }
}
