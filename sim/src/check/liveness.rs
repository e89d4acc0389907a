//! After the faults heal, the cluster recovers within a bound.
//!
//! Property: a Raft cluster whose network, disks and processes are healthy elects a leader
//! and commits writes within a few election timeouts; etcd's robustness tests end every run
//! the same way (heal, then require progress).
//!
//! Rules, when `h.healed_at` is T and `bounds.liveness` is L:
//! - **Leader**: some member considers itself leader at some moment in [T, T + L] (from its
//!   `State` records; a `Started` or `Stopped` record ends its leadership). Skipped when the run
//!   recorded no Raft states.
//! - **Writes**: if the workload called a write (put, delete, txn that may write) in
//!   [T, T + L/2], some write called at or after T completed `Ok` by T + L. Writes called later
//!   in the window could not fairly be expected to finish in it.
//! - **Catch-up**: every member running at the end (`h.final_revisions`, read after the run
//!   quiesced) is at a revision no lower than the highest acknowledged write's: a member that
//!   rejoined a healed cluster must not stay behind.
//!
//! Bug classes: elections that never settle (pre-vote/check-quorum livelock, disrupting
//! rejoiners), a leader that cannot commit (stuck proposals, lost ready), clients stuck on a
//! dead member, a restarted member that cannot reach the leader (one added while it was down).
//!
//! Limits: a member that believes it leads but cannot commit satisfies the leader rule; the
//! write rule catches it.

use super::{at, created_revision, name, possible_effects, summary, Findings};
use crate::history::{History, Nanos, NodeIx, Outcome, RaftEvent, Violation};

pub fn check(h: &History) -> Vec<Violation> {
    let mut f = Findings::new("liveness");
    let Some(healed) = h.healed_at else {
        return f.finish();
    };
    let deadline = healed.saturating_add(h.bounds.liveness);
    if !h.raft.is_empty() && !leader_between(h, healed, deadline) {
        f.push(format!(
            "no member led between healing at {} and {}",
            at(healed),
            at(deadline)
        ));
    }
    writes_succeed(h, healed, deadline, &mut f);
    members_catch_up(h, &mut f);
    f.finish()
}

fn members_catch_up(h: &History, f: &mut Findings) {
    let Some((highest, op)) = h
        .ops
        .iter()
        .filter_map(|op| Some((created_revision(op)?, op)))
        .max_by_key(|(rev, _)| *rev)
    else {
        return;
    };
    for (ix, rev) in &h.final_revisions {
        if *rev < highest {
            f.push(format!(
                "s{ix} ended the run at revision {rev}, behind {} acknowledged at revision {highest}: it never caught up",
                name(op)
            ));
        }
    }
}

/// Whether some member considered itself leader at some moment in `[from, to]`.
fn leader_between(h: &History, from: Nanos, to: Nanos) -> bool {
    let mut records: Vec<_> = h.raft.iter().collect();
    records.sort_by_key(|r| r.at);
    let mut leading_since: std::collections::BTreeMap<NodeIx, Nanos> = Default::default();
    for r in records {
        let ends_leadership = matches!(
            r.event,
            RaftEvent::State { .. } | RaftEvent::Started { .. } | RaftEvent::Stopped { .. }
        );
        if !ends_leadership {
            continue;
        }
        if let Some(since) = leading_since.remove(&r.node) {
            // Led over [since, r.at).
            if since <= to && r.at > from {
                return true;
            }
        }
        if let RaftEvent::State {
            is_leader: true, ..
        } = r.event
        {
            leading_since.insert(r.node, r.at);
        }
    }
    leading_since.values().any(|&since| since <= to)
}

fn writes_succeed(h: &History, healed: Nanos, deadline: Nanos, f: &mut Findings) {
    let half = healed.saturating_add(h.bounds.liveness / 2);
    let writes: Vec<_> = h
        .ops
        .iter()
        .filter(|op| op.invoke >= healed && !possible_effects(&op.call).is_empty())
        .collect();
    let Some(first) = writes
        .iter()
        .filter(|op| op.invoke <= half)
        .min_by_key(|op| op.invoke)
    else {
        return;
    };
    let succeeded = writes
        .iter()
        .any(|op| matches!(op.outcome, Outcome::Ok(_)) && op.complete <= deadline);
    if !succeeded {
        f.push(format!(
            "no write succeeded between healing at {} and {}: {} writes called since, the first {} {}",
            at(healed),
            at(deadline),
            writes.len(),
            name(first),
            summary(first)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::*;

    fn violations(run: &Run) -> Vec<String> {
        check(&run.h).into_iter().map(|v| v.message).collect()
    }

    /// Healed at 1 s; liveness bound 10 s (the default).
    fn healed() -> Run {
        let mut run = Run::new();
        run.raft(0, 0, state(1, Some(1), true));
        run.raft(
            500,
            0,
            RaftEvent::Stopped {
                why: "killed".into(),
            },
        );
        run.h.healed_at = Some(1_000 * MS);
        run
    }

    #[test]
    fn recovery_within_the_bound_passes() {
        let mut run = healed();
        run.raft(3_000, 1, state(2, Some(2), true));
        run.op(1, put("k", "v1"), 1_100, 2_100, lost());
        run.op(1, put("k", "v2"), 2_200, 3_100, put_ok(2));
        let found = violations(&run);
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn no_leader_after_healing_is_caught() {
        let mut run = healed();
        run.raft(12_000, 1, state(2, Some(2), true));
        let found = violations(&run);
        assert!(
            found
                .iter()
                .any(|m| m.contains("no member led between healing at 1.000000s and 11.000000s")),
            "{found:#?}"
        );
    }

    #[test]
    fn no_successful_write_after_healing_is_caught() {
        let mut run = healed();
        run.raft(3_000, 1, state(2, Some(2), true));
        run.op(1, put("k", "v1"), 1_100, 2_100, lost());
        run.op(1, put("k", "v2"), 2_200, 12_000, put_ok(2));
        let found = violations(&run);
        assert!(
            found.iter().any(|m| m.contains("no write succeeded between healing at 1.000000s and 11.000000s: 2 writes called since, the first op 1")),
            "{found:#?}"
        );
    }

    #[test]
    fn a_member_left_behind_is_caught() {
        let mut run = healed();
        run.raft(3_000, 1, state(2, Some(2), true));
        run.op(1, put("k", "v2"), 2_200, 3_100, put_ok(7));
        run.h.final_revisions.insert(1, 7);
        run.h.final_revisions.insert(2, 3);
        let found = violations(&run);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].contains("s2 ended the run at revision 3, behind ")
                && found[0].contains("acknowledged at revision 7: it never caught up"),
            "{found:#?}"
        );
    }

    #[test]
    fn no_writes_no_verdict() {
        let mut run = healed();
        run.raft(3_000, 1, state(2, Some(2), true));
        run.op(1, put("k", "v1"), 7_000, 12_000, lost());
        let found = violations(&run);
        assert!(found.is_empty(), "{found:#?}");
    }
}
