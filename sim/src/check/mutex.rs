//! Locks and elections (v3lock, v3election). etcd's recipe makes the holder of lock `N`, or the
//! leader of election `N`, the key under `N/` with the smallest create revision; this checker
//! holds every answer to that, against the state of `N/` the run's watches reconstruct:
//!
//! - **Lock**: at the revision of a `Lock` answer, the returned key exists and is the oldest
//!   under `N/`.
//! - **Leader**: at the revision of a `Leader` answer, the returned kv is the oldest under `N/`,
//!   with the value and revisions stored then.
//! - **Campaign**: etcd answers with the header of the joining txn, when the key may still be
//!   waiting, so the rule is an interval: at some revision from that header up to the lowest
//!   revision a linearizable op invoked after the answer saw, the key is the oldest.
//! - **Released**: at the revision of an `Unlock` or `Resign` answer, the key is gone.
//!
//! The state of `N/` at revision R is known when watches covering all of `N/`, without
//! filters, reported its events without a gap from revision 1 through at least R (the watch
//! checker holds them to etcd's guarantees, so what they vouch for is complete). Answers at
//! higher revisions are not judged.
//!
//! Bug classes: a lock granted while keys created before its own still exist (a wait that
//! misses a delete, or reads at the wrong revision); a campaign answered while an older leader
//! key remains; a leader read from a stale state; an unlock acknowledged but not applied.

use std::collections::{BTreeMap, BTreeSet};

use super::{header_revision, is_linearizable_read, name, show, summary, Findings};
use crate::history::{Call, EventKind, History, Key, Kv, Op, Outcome, Reply, Violation, Watch};

pub fn check(h: &History) -> Vec<Violation> {
    let mut f = Findings::new("mutex");
    let bound = RevisionBound::new(h);
    for queue in queues(h) {
        let prefix = [queue.as_slice(), b"/"].concat();
        let states = States::build(h, &prefix);
        for op in &h.ops {
            if belongs_to(op, &queue, &prefix) {
                check_op(op, &states, &bound, &mut f);
            }
        }
    }
    f.finish()
}

/// `name/` of every lock and election the run used: the prefix of its queue's keys.
pub(crate) fn queue_prefixes(h: &History) -> Vec<Key> {
    queues(h)
        .into_iter()
        .map(|q| [q.as_slice(), b"/"].concat())
        .collect()
}

/// Every lock or election name the run used.
fn queues(h: &History) -> BTreeSet<Key> {
    h.ops
        .iter()
        .filter_map(|op| match &op.call {
            Call::Lock { name, .. }
            | Call::Campaign { name, .. }
            | Call::Leader { name }
            | Call::Resign { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn belongs_to(op: &Op, queue: &Key, prefix: &[u8]) -> bool {
    match &op.call {
        Call::Lock { name, .. }
        | Call::Campaign { name, .. }
        | Call::Leader { name }
        | Call::Resign { name, .. } => name == queue,
        Call::Unlock { key } => key.starts_with(prefix),
        _ => false,
    }
}

fn check_op(op: &Op, states: &States, bound: &RevisionBound, f: &mut Findings) {
    let Outcome::Ok(reply) = &op.outcome else {
        return;
    };
    let what = || format!("{} {}", name(op), summary(op));
    match (&op.call, reply) {
        (Call::Lock { .. }, Reply::Lock { revision, key }) => {
            let Some(state) = states.at(*revision) else {
                return;
            };
            if oldest(state).map(|kv| &kv.key) != Some(key) {
                f.push(format!(
                    "{}: at revision {revision} the lock's holder was {}",
                    what(),
                    describe(state, key)
                ));
            }
        }
        (Call::Leader { .. }, Reply::Leader { revision, kv }) => {
            let Some(state) = states.at(*revision) else {
                return;
            };
            if oldest(state) != Some(kv) {
                f.push(format!(
                    "{}: at revision {revision} the leader was {}",
                    what(),
                    describe(state, &kv.key)
                ));
            }
        }
        (Call::Unlock { key } | Call::Resign { key, .. }, Reply::Released { revision }) => {
            let Some(state) = states.at(*revision) else {
                return;
            };
            if let Some(kv) = state.get(key) {
                f.push(format!(
                    "{}: at revision {revision} {} still existed (created at {})",
                    what(),
                    show(key),
                    kv.create_revision
                ));
            }
        }
        (Call::Campaign { .. }, Reply::Campaign { revision, key, rev }) => {
            // The key led at a revision no later than what an op invoked after the answer
            // saw; judge only when the watches vouch for that whole interval.
            let upper = bound.after(op.complete);
            if *revision > upper || upper > states.known_through {
                return;
            }
            let led = states
                .revisions_in(*revision, upper)
                .into_iter()
                .filter_map(|r| states.at(r))
                .any(|state| {
                    oldest(state).is_some_and(|kv| &kv.key == key && kv.create_revision == *rev)
                });
            if !led {
                let state = states.at(upper).expect("upper is known");
                f.push(format!(
                    "{}: the key was never the oldest from revision {revision} to {upper}, \
                     by which the leader was {}",
                    what(),
                    describe(state, key)
                ));
            }
        }
        _ => {}
    }
}

/// The oldest key of a queue (smallest create revision): its holder or leader.
fn oldest(state: &BTreeMap<Key, Kv>) -> Option<&Kv> {
    state.values().min_by_key(|kv| kv.create_revision)
}

/// "`k` (created at c)" for the oldest key, and where `key` stood.
fn describe(state: &BTreeMap<Key, Kv>, key: &Key) -> String {
    let holder = match oldest(state) {
        Some(kv) => format!("{} (created at {})", show(&kv.key), kv.create_revision),
        None => "nobody".to_string(),
    };
    let own = match state.get(key) {
        Some(kv) => format!("created at {}", kv.create_revision),
        None => "absent".to_string(),
    };
    format!("{holder}; {} was {own}", show(key))
}

/// For an op completed at time t: the lowest revision any linearizable op invoked after t
/// answered with. The cluster had reached at most that revision at t.
struct RevisionBound {
    /// `(invoke, lowest header revision of the ops invoked at or after it)`, by invoke time.
    suffix_min: Vec<(u64, i64)>,
}

impl RevisionBound {
    fn new(h: &History) -> RevisionBound {
        let mut seen: Vec<(u64, i64)> = h
            .ops
            .iter()
            .filter(|op| linearizable(&op.call))
            .filter_map(|op| Some((op.invoke, answered_revision(op)?)))
            .collect();
        seen.sort_unstable();
        let mut min = i64::MAX;
        for entry in seen.iter_mut().rev() {
            min = min.min(entry.1);
            entry.1 = min;
        }
        RevisionBound { suffix_min: seen }
    }

    fn after(&self, t: u64) -> i64 {
        let i = self.suffix_min.partition_point(|(invoke, _)| *invoke <= t);
        self.suffix_min.get(i).map(|e| e.1).unwrap_or(i64::MAX)
    }
}

/// Whether an op's header revision is at least the cluster's revision when it was invoked.
fn linearizable(call: &Call) -> bool {
    is_linearizable_read(call)
        || matches!(
            call,
            Call::Put { .. }
                | Call::Delete { .. }
                | Call::Txn { .. }
                | Call::Lock { .. }
                | Call::Unlock { .. }
                | Call::Leader { .. }
                | Call::Resign { .. }
        )
}

fn answered_revision(op: &Op) -> Option<i64> {
    match &op.outcome {
        Outcome::Ok(
            Reply::Lock { revision, .. }
            | Reply::Released { revision }
            | Reply::Leader { revision, .. },
        ) => Some(*revision),
        _ => header_revision(op),
    }
}

/// The states of one queue's keys, revision by revision, as far as the watches vouch.
struct States {
    /// The state after each revision that changed the queue.
    changes: BTreeMap<i64, BTreeMap<Key, Kv>>,
    /// Every revision up to this one is covered.
    known_through: i64,
}

impl States {
    fn build(h: &History, prefix: &[u8]) -> States {
        let end = prefix_end(prefix);
        let mut events: BTreeMap<i64, BTreeMap<Key, Option<Kv>>> = BTreeMap::new();
        let mut covered: Vec<(i64, i64)> = Vec::new();
        for w in h.watches.iter().filter(|w| covers(w, prefix, &end)) {
            let first = match (w.start_revision, w.created_revision) {
                (0, Some(created)) => created + 1,
                (0, None) => continue,
                (start, _) => start,
            };
            let mut vouched = first - 1;
            for r in &w.responses {
                if r.canceled {
                    break;
                }
                for e in r.events.iter().filter(|e| e.kv.key.starts_with(prefix)) {
                    let after = match e.kind {
                        EventKind::Put => Some(e.kv.clone()),
                        EventKind::Delete => None,
                    };
                    events
                        .entry(e.kv.mod_revision)
                        .or_default()
                        .insert(e.kv.key.clone(), after);
                }
                if let Some(last) = r.events.last() {
                    vouched = vouched.max(last.kv.mod_revision);
                }
                if r.progress {
                    vouched = vouched.max(r.header_revision);
                }
            }
            covered.push((first, vouched));
        }
        covered.sort_unstable();
        let mut known_through = 0;
        for (first, vouched) in covered {
            if first > known_through + 1 {
                break;
            }
            known_through = known_through.max(vouched);
        }
        let mut state: BTreeMap<Key, Kv> = BTreeMap::new();
        let mut changes = BTreeMap::new();
        for (rev, writes) in events.range(..=known_through) {
            for (key, after) in writes {
                match after {
                    Some(kv) => state.insert(key.clone(), kv.clone()),
                    None => state.remove(key),
                };
            }
            changes.insert(*rev, state.clone());
        }
        States {
            changes,
            known_through,
        }
    }

    /// The queue at revision `r`, if the watches vouch for it.
    fn at(&self, r: i64) -> Option<&BTreeMap<Key, Kv>> {
        static EMPTY: BTreeMap<Key, Kv> = BTreeMap::new();
        if r > self.known_through {
            return None;
        }
        Some(
            self.changes
                .range(..=r)
                .next_back()
                .map_or(&EMPTY, |(_, s)| s),
        )
    }

    /// `from` and every revision in `(from, to]` that changed the queue.
    fn revisions_in(&self, from: i64, to: i64) -> Vec<i64> {
        let mut out = vec![from];
        if to > from {
            out.extend(self.changes.range(from + 1..=to).map(|(r, _)| *r));
        }
        out
    }
}

/// Whether a watch sees every event under `prefix`: its range covers it and it filters none.
fn covers(w: &Watch, prefix: &[u8], end: &[u8]) -> bool {
    let reaches = w.end == [0] || (!w.end.is_empty() && w.end.as_slice() >= end);
    w.start.as_slice() <= prefix && reaches && !w.filter_puts && !w.filter_deletes
}

/// The end of the range of keys starting with `prefix` (etcd's `GetPrefixRangeEnd`). The
/// checkers use none of Strata's code (a bug there must not hide in the oracle that judges
/// it), so they keep their own rather than the engine's `request::prefix_end`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use crate::history::{Event, WatchResponse};

    const LOCK: &str = "mutex/lock";

    fn lock(lease: i64) -> Call {
        Call::Lock {
            name: LOCK.into(),
            lease,
        }
    }

    fn locked(revision: i64, key: &str) -> Outcome {
        Outcome::Ok(Reply::Lock {
            revision,
            key: key.into(),
        })
    }

    fn unlock(key: &str) -> Call {
        Call::Unlock { key: key.into() }
    }

    fn released(revision: i64) -> Outcome {
        Outcome::Ok(Reply::Released { revision })
    }

    fn del(key: &str, revision: i64) -> Event {
        Event {
            kind: EventKind::Delete,
            kv: kv(key, "", 0, revision, 0),
            prev: None,
        }
    }

    fn events(at: u64, header_revision: i64, events: Vec<Event>) -> WatchResponse {
        WatchResponse {
            at: at * MS,
            header_revision,
            events,
            compact_revision: 0,
            canceled: false,
            progress: false,
        }
    }

    /// Two clients take the lock in turn: a/1 created at 2, b/2 at 3 (waiting), a unlocks at
    /// 4, b holds from 4. The auditor watch saw every revision.
    fn two_holders(b_answer_revision: i64) -> Run {
        let mut run = Run::new();
        run.op(1, lock(1), 0, 10, locked(2, "mutex/lock/1"));
        run.op(2, lock(2), 5, 40, locked(b_answer_revision, "mutex/lock/2"));
        run.op(1, unlock("mutex/lock/1"), 20, 30, released(4));
        let w = run.watch("mutex/", "mutex0", 1, 0, 1);
        run.respond(
            w,
            events(10, 2, vec![put_event(kv("mutex/lock/1", "", 2, 2, 1))]),
        );
        run.respond(
            w,
            events(11, 3, vec![put_event(kv("mutex/lock/2", "", 3, 3, 1))]),
        );
        run.respond(w, events(30, 4, vec![del("mutex/lock/1", 4)]));
        run
    }

    #[test]
    fn a_lock_handed_over_after_the_delete_passes() {
        assert_eq!(check(&two_holders(4).h), vec![]);
    }

    #[test]
    fn a_lock_granted_while_an_older_key_exists_is_caught() {
        let v = check(&two_holders(3).h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("at revision 3 the lock's holder was \"mutex/lock/1\" (created at 2)"),
            "{}",
            v[0].message
        );
    }

    #[test]
    fn answers_beyond_what_the_watches_vouch_for_are_not_judged() {
        let mut run = two_holders(3);
        // Without the auditor's events nothing is known.
        run.h.watches.clear();
        assert_eq!(check(&run.h), vec![]);
    }

    #[test]
    fn an_unlock_answered_before_its_delete_is_caught() {
        let mut run = two_holders(4);
        run.op(1, unlock("mutex/lock/2"), 50, 60, released(4));
        let v = check(&run.h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("still existed"), "{}", v[0].message);
    }

    #[test]
    fn a_campaign_is_judged_up_to_what_later_ops_saw() {
        let campaign = |value: &str| Call::Campaign {
            name: "mutex/election".into(),
            lease: 2,
            value: value.into(),
        };
        let elected = |revision, key: &str, rev| {
            Outcome::Ok(Reply::Campaign {
                revision,
                key: key.into(),
                rev,
            })
        };
        let build = |later_revision: i64| {
            let mut run = Run::new();
            let a = "mutex/election/1";
            let b = "mutex/election/2";
            // b joins at 3 behind a (2); a resigns at 5; b's answer carries the join header.
            run.op(2, campaign("vb"), 0, 10, elected(3, b, 3));
            run.op(3, get("key/0"), 20, 21, get_ok(later_revision, vec![]));
            let w = run.watch("mutex/", "mutex0", 1, 0, 1);
            run.respond(w, events(1, 2, vec![put_event(kv(a, "va", 2, 2, 1))]));
            run.respond(w, events(2, 3, vec![put_event(kv(b, "vb", 3, 3, 1))]));
            run.respond(w, events(9, 5, vec![del(a, 5)]));
            run
        };
        // A read after the answer saw revision 5: b led from 5, fine.
        assert_eq!(check(&build(5).h), vec![]);
        // A read after the answer saw only revision 4: b was answered before a resigned.
        let v = check(&build(4).h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message.contains("never the oldest"),
            "{}",
            v[0].message
        );
    }
}
