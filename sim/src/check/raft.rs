//! Raft's safety properties, from what each member reported of its own state (`h.raft`).
//!
//! Rules (Raft paper, figure 3):
//! - **Election Safety**: at most one member reports itself leader in a term; and members that
//!   name a leader for a term all name the same one.
//! - **State Machine Safety**: members that applied up to the same index report the same term
//!   and chain hash there (the chain hashes every entry applied, so equal chains mean equal
//!   logs up to that index). This holds across restarts too: a member that re-applies entries
//!   after a restart must reach the same chains.
//! - **Monotonic within a lifetime** (between `Started` records of a member): the applied index,
//!   the commit index and the term never decrease. Across a restart the applied index may start
//!   lower (unsynced applies are replayed) and a term may drop if it was never persisted.
//! - **Votes are durable** (figure 2: `votedFor` on stable storage before responding): once a
//!   member granted its vote to C in term T, it restarts at a term above T, or at T still
//!   having voted for C. Otherwise it could vote twice in T, and two leaders could win T.
//! - **Node invariants**: the simulator's build checks the engine's invariants after every
//!   step (`strata_engine::node::InvariantViolation`: commit covers applied, the backend's
//!   applied index, lessor primary iff leader, ...); a member stopped by one fails the run
//!   with the invariant's name.
//!
//! Bug classes: split brain in one term (votes not persisted, pre-vote or check-quorum bugs),
//! committed entries overwritten or lost (a log truncated below the commit index), snapshots
//! restoring a different state (etcd #18055), regressions of applied/commit index.
//!
//! Limits: it sees only what members reported; an entry applied by a single member that
//! crashed before reporting it is invisible.

use std::collections::BTreeMap;

use super::{at, Findings};
use crate::history::{History, Nanos, NodeIx, RaftEvent, RaftRecord, Violation};

pub fn check(h: &History) -> Vec<Violation> {
    let mut f = Findings::new("raft");
    let mut records: Vec<&RaftRecord> = h.raft.iter().collect();
    records.sort_by_key(|r| r.at);
    election_safety(&records, &mut f);
    state_machine_safety(&records, &mut f);
    monotonic(&records, &mut f);
    votes_durable(&records, &mut f);
    node_invariants(&records, &mut f);
    f.finish()
}

fn node_invariants(records: &[&RaftRecord], f: &mut Findings) {
    for r in records {
        if let RaftEvent::Stopped { why } = &r.event {
            if let Some(at_name) = why.find("invariant ") {
                if why[at_name..].contains(" violated") {
                    f.push(format!(
                        "n{} stopped at {} on a broken {}",
                        r.node,
                        at(r.at),
                        &why[at_name..]
                    ));
                }
            }
        }
    }
}

fn election_safety(records: &[&RaftRecord], f: &mut Findings) {
    let mut leaders: BTreeMap<u64, (NodeIx, Nanos)> = BTreeMap::new();
    let mut named: BTreeMap<u64, (u64, NodeIx)> = BTreeMap::new();
    for r in records {
        let RaftEvent::State {
            term,
            leader,
            is_leader,
        } = r.event
        else {
            continue;
        };
        if is_leader {
            match leaders.get(&term) {
                Some(&(first, t)) if first != r.node => f.push(format!(
                    "split brain: n{first} (at {}) and n{} (at {}) both led term {term}",
                    at(t),
                    r.node,
                    at(r.at)
                )),
                Some(_) => {}
                None => {
                    leaders.insert(term, (r.node, r.at));
                }
            }
        }
        if let Some(leader) = leader {
            match named.get(&term) {
                Some(&(first, by)) if first != leader => f.push(format!(
                    "n{by} names {first:#x} leader of term {term}, n{} names {leader:#x} (at {})",
                    r.node,
                    at(r.at)
                )),
                Some(_) => {}
                None => {
                    named.insert(term, (leader, r.node));
                }
            }
        }
    }
}

fn state_machine_safety(records: &[&RaftRecord], f: &mut Findings) {
    let mut applied: BTreeMap<u64, (u64, u64, NodeIx, Nanos)> = BTreeMap::new();
    for r in records {
        let RaftEvent::Applied { index, term, chain } = r.event else {
            continue;
        };
        match applied.get(&index) {
            Some(&(t0, c0, n0, at0)) if (t0, c0) != (term, chain) => f.push(format!(
                "diverging logs at index {index}: n{n0} applied term {t0} chain {c0:#x} (at {}), n{} term {term} chain {chain:#x} (at {})",
                at(at0),
                r.node,
                at(r.at)
            )),
            Some(_) => {}
            None => {
                applied.insert(index, (term, chain, r.node, r.at));
            }
        }
    }
}

/// Per member, the highest values seen in its current lifetime.
#[derive(Default)]
struct Lifetime {
    applied: u64,
    committed: u64,
    term: u64,
}

fn monotonic(records: &[&RaftRecord], f: &mut Findings) {
    let mut lives: BTreeMap<NodeIx, Lifetime> = BTreeMap::new();
    for r in records {
        let life = lives.entry(r.node).or_default();
        let n = r.node;
        let when = at(r.at);
        match r.event {
            RaftEvent::Started { .. } => *life = Lifetime::default(),
            RaftEvent::Applied { index, .. } => {
                if index < life.applied {
                    f.push(format!(
                        "n{n} applied index went back from {} to {index} at {when} without a restart",
                        life.applied
                    ));
                }
                life.applied = life.applied.max(index);
            }
            RaftEvent::Committed { index } => {
                if index < life.committed {
                    f.push(format!(
                        "n{n} commit index went back from {} to {index} at {when} without a restart",
                        life.committed
                    ));
                }
                life.committed = life.committed.max(index);
            }
            RaftEvent::State { term, .. } => {
                if term < life.term {
                    f.push(format!(
                        "n{n} term went back from {} to {term} at {when} without a restart",
                        life.term
                    ));
                }
                life.term = life.term.max(term);
            }
            RaftEvent::Stopped { .. } | RaftEvent::VoteGranted { .. } => {}
        }
    }
}

fn votes_durable(records: &[&RaftRecord], f: &mut Findings) {
    // Per member, the last vote it granted: (term, candidate).
    let mut granted: BTreeMap<NodeIx, (u64, u64)> = BTreeMap::new();
    for r in records {
        match r.event {
            RaftEvent::VoteGranted { term, candidate } => {
                granted.insert(r.node, (term, candidate));
            }
            RaftEvent::Started { term, vote, .. } => {
                let Some(&(voted_term, candidate)) = granted.get(&r.node) else {
                    continue;
                };
                if term < voted_term || (term == voted_term && vote != candidate) {
                    f.push(format!(
                        "n{} granted its vote to {candidate:#x} in term {voted_term}, then restarted at {} in term {term} having voted for {vote:#x}: the vote was not durable",
                        r.node,
                        at(r.at)
                    ));
                }
            }
            _ => {}
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

    fn assert_caught(run: &Run, needle: &str) {
        let found = violations(run);
        assert!(
            found.iter().any(|m| m.contains(needle)),
            "expected a violation containing {needle:?}, got {found:#?}"
        );
    }

    fn applied(index: u64, term: u64, chain: u64) -> RaftEvent {
        RaftEvent::Applied { index, term, chain }
    }

    /// n0 leads term 1 and everyone applies entries 1..=2.
    fn healthy() -> Run {
        let mut run = Run::new();
        run.raft(0, 0, state(1, Some(1), true));
        run.raft(1, 1, state(1, Some(1), false));
        run.raft(1, 2, state(1, Some(1), false));
        for node in 0..3 {
            run.raft(10, node, RaftEvent::Committed { index: 2 });
            run.raft(11, node, applied(1, 1, 0xa1));
            run.raft(12, node, applied(2, 1, 0xa2));
        }
        run
    }

    #[test]
    fn healthy_cluster_passes() {
        let mut run = healthy();
        // n2 restarts and re-applies from index 1: same chains.
        run.raft(
            20,
            2,
            RaftEvent::Stopped {
                why: "killed".into(),
            },
        );
        run.raft(
            30,
            2,
            RaftEvent::Started {
                applied: 0,
                revision: 1,
                term: 0,
                vote: 0,
            },
        );
        run.raft(31, 2, state(1, Some(1), false));
        run.raft(32, 2, applied(1, 1, 0xa1));
        run.raft(40, 1, state(2, Some(2), true));
        let found = violations(&run);
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn split_brain_in_one_term_is_caught() {
        let mut run = healthy();
        run.raft(50, 2, state(1, Some(3), true));
        assert_caught(
            &run,
            "split brain: n0 (at 0.000000s) and n2 (at 0.050000s) both led term 1",
        );
        assert_caught(&run, "n0 names 0x1 leader of term 1, n2 names 0x3");
    }

    #[test]
    fn a_broken_node_invariant_is_caught_by_name() {
        let mut run = healthy();
        run.raft(
            50,
            1,
            RaftEvent::Stopped {
                why: "engine: invariant backend-applied-index violated on n2: the backend holds 3, the state machine applied 4".into(),
            },
        );
        assert_caught(
            &run,
            "stopped at 0.050000s on a broken invariant backend-applied-index",
        );
    }

    #[test]
    fn diverging_chains_are_caught() {
        let mut run = healthy();
        run.raft(50, 1, applied(3, 1, 0xa3));
        run.raft(50, 2, applied(3, 1, 0xbad));
        assert_caught(&run, "diverging logs at index 3");
    }

    #[test]
    fn regressions_within_a_lifetime_are_caught() {
        let mut run = healthy();
        run.raft(50, 1, applied(1, 1, 0xa1));
        run.raft(50, 1, RaftEvent::Committed { index: 1 });
        run.raft(50, 1, state(0, None, false));
        assert_caught(&run, "n1 applied index went back from 2 to 1");
        assert_caught(&run, "n1 commit index went back from 2 to 1");
        assert_caught(&run, "n1 term went back from 1 to 0");
    }

    fn granted(term: u64, candidate: u64) -> RaftEvent {
        RaftEvent::VoteGranted { term, candidate }
    }

    fn restarted(term: u64, vote: u64) -> RaftEvent {
        RaftEvent::Started {
            applied: 0,
            revision: 1,
            term,
            vote,
        }
    }

    #[test]
    fn a_vote_lost_in_a_crash_is_caught() {
        let mut run = Run::new();
        run.raft(10, 2, granted(4, 0x1));
        run.raft(30, 2, restarted(4, 0));
        assert_caught(&run, "n2 granted its vote to 0x1 in term 4, then restarted");
    }

    #[test]
    fn a_durable_vote_or_a_later_term_passes() {
        let mut run = Run::new();
        run.raft(10, 2, granted(4, 0x1));
        run.raft(30, 2, restarted(4, 0x1));
        run.raft(40, 2, granted(5, 0x3));
        run.raft(50, 2, restarted(6, 0));
        let found = violations(&run);
        assert!(found.is_empty(), "{found:#?}");
    }
}
