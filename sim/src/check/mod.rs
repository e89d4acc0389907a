//! The checkers that judge a run from its [`History`] alone, one module per property:
//!
//! | checker | property |
//! |---|---|
//! | [`linearizability`] | KV ops are linearizable, in the order of their revisions |
//! | [`watch`] | etcd's watch guarantees: ordered, unique, atomic, reliable, resumable, bookmarkable; prev_kv, filters |
//! | [`lease`] | a lease's keys live as long as its TTL says, and not much longer |
//! | [`durability`] | acknowledged writes survive; members converge to one state |
//! | [`raft`] | election safety, state machine safety, monotonic commit and term |
//! | [`liveness`] | after the faults heal, a leader appears and writes succeed |
//! | [`mutex`] | a lock's holder and an election's leader are the oldest key in their queue |
//!
//! Every checker is sound before it is complete: an ambiguous record (an `Unknown` outcome, a
//! gap in what was observed) is read as "may have happened", so a violation is always a bug in
//! the system (or the recorder), never a limit of the checker. Each module's docs state the
//! exact rule it implements and what it cannot see.

use std::collections::{BTreeMap, HashMap};

use crate::history::{
    Call, History, Key, Kv, Nanos, NodeIx, Op, Outcome, RaftEvent, Reply, TxnOp, TxnResult,
    Violation,
};

pub mod durability;
pub mod lease;
pub mod linearizability;
pub mod liveness;
pub mod mutex;
mod observations;
pub mod raft;
pub mod watch;

/// Runs every checker; an empty result means the run upheld every property checked.
pub fn check_all(h: &History) -> Vec<Violation> {
    check_all_with_notes(h).0
}

/// [`check_all`], plus notes on what could not be judged (e.g. a linearizability search that
/// ran out of budget); a run report should show them.
pub fn check_all_with_notes(h: &History) -> (Vec<Violation>, Vec<String>) {
    let (mut out, stats) = linearizability::check_with_stats(h);
    out.extend(watch::check(h));
    out.extend(lease::check(h));
    out.extend(durability::check(h));
    out.extend(raft::check(h));
    out.extend(liveness::check(h));
    out.extend(mutex::check(h));
    (out, stats.notes)
}

/// Findings beyond this many per checker are counted, not listed: the first ones name the bug.
const FINDINGS_MAX: usize = 50;

/// One checker's violations, capped at [`FINDINGS_MAX`].
pub(crate) struct Findings {
    checker: &'static str,
    list: Vec<Violation>,
    omitted: usize,
}

impl Findings {
    pub(crate) fn new(checker: &'static str) -> Findings {
        Findings {
            checker,
            list: Vec::new(),
            omitted: 0,
        }
    }

    pub(crate) fn push(&mut self, message: String) {
        if self.list.len() < FINDINGS_MAX {
            self.list.push(Violation {
                checker: self.checker,
                message,
            });
        } else {
            self.omitted += 1;
        }
    }

    pub(crate) fn finish(mut self) -> Vec<Violation> {
        if self.omitted > 0 {
            let message = format!("{} more violations not listed", self.omitted);
            self.list.push(Violation {
                checker: self.checker,
                message,
            });
        }
        self.list
    }
}

/// Bytes as quoted text (lossy UTF-8), for messages.
pub(crate) fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

/// A kv as `"value"@mod_revision`, for messages.
pub(crate) fn show_kv(kv: &Kv) -> String {
    format!("{}@{}", show(&kv.value), kv.mod_revision)
}

/// A simulated time in seconds, for messages.
pub(crate) fn at(t: Nanos) -> String {
    if t == Nanos::MAX {
        return "never".to_string();
    }
    format!("{}.{:06}s", t / 1_000_000_000, t % 1_000_000_000 / 1_000)
}

/// Whether `key` lies in etcd's range `[start, end)`: `end` empty is the single key `start`,
/// `end` = `"\0"` is every key from `start` on.
pub(crate) fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        return key == start;
    }
    if end == [0] {
        return key >= start;
    }
    key >= start && key < end
}

/// An op as `op 17 (c2@n1 put "k")`, for messages.
pub(crate) fn name(op: &Op) -> String {
    let what = match &op.call {
        Call::Get {
            key, serializable, ..
        } => {
            let s = if *serializable { "serializable " } else { "" };
            format!("{s}get {}", show(key))
        }
        Call::Range {
            start, end, stream, ..
        } => {
            let s = if *stream { "stream " } else { "" };
            format!("{s}range [{}, {})", show(start), show(end))
        }
        Call::Put { key, value, .. } => format!("put {}={}", show(key), show(value)),
        Call::Delete { key, .. } => format!("delete {}", show(key)),
        Call::Txn { .. } => "txn".to_string(),
        Call::LeaseGrant { id, .. } => format!("lease-grant {id}"),
        Call::LeaseRevoke { id } => format!("lease-revoke {id}"),
        Call::LeaseKeepAlive { id } => format!("keep-alive {id}"),
        Call::Compact { revision } => format!("compact {revision}"),
        Call::Lock { name, .. } => format!("lock {}", show(name)),
        Call::Unlock { key } => format!("unlock {}", show(key)),
        Call::Campaign { name, value, .. } => {
            format!("campaign {} with {}", show(name), show(value))
        }
        Call::Leader { name } => format!("leader {}", show(name)),
        Call::Resign { key, .. } => format!("resign {}", show(key)),
    };
    format!("op {} (c{}@n{} {what})", op.id, op.client, op.node)
}

/// A reply in brief (`→ rev 12 ["k"="v"@11]`), for messages.
pub(crate) fn summary(op: &Op) -> String {
    let reply = match &op.outcome {
        Outcome::Failed(why) => return format!("→ failed ({why})"),
        Outcome::Unknown(_) => return "→ unknown".to_string(),
        Outcome::Ok(reply) => reply,
    };
    match reply {
        Reply::Get { revision, kvs } => {
            let mut shown: Vec<String> = kvs
                .iter()
                .take(4)
                .map(|kv| format!("{}={}", show(&kv.key), show_kv(kv)))
                .collect();
            if kvs.len() > 4 {
                shown.push(format!("+{}", kvs.len() - 4));
            }
            format!("→ rev {revision} [{}]", shown.join(", "))
        }
        Reply::Put { revision, .. } => format!("→ rev {revision}"),
        Reply::Delete {
            revision, deleted, ..
        } => format!("→ rev {revision} deleted {deleted}"),
        Reply::Txn {
            revision,
            succeeded,
            ..
        } => {
            let branch = if *succeeded { "succeeded" } else { "failed" };
            format!("→ rev {revision} {branch}")
        }
        Reply::LeaseGrant { ttl_secs, .. } | Reply::LeaseKeepAlive { ttl_secs } => {
            format!("→ ttl {ttl_secs}")
        }
        Reply::LeaseRevoke { revision }
        | Reply::Compact { revision }
        | Reply::Released { revision } => format!("→ rev {revision}"),
        Reply::Lock { revision, key } => format!("→ rev {revision} holds {}", show(key)),
        Reply::Campaign { revision, key, rev } => {
            format!(
                "→ rev {revision} leads with {} (created at {rev})",
                show(key)
            )
        }
        Reply::Leader { revision, kv } => {
            format!("→ rev {revision} leader {}={}", show(&kv.key), show_kv(kv))
        }
    }
}

/// The entries of `map` whose keys lie in `[start, end)` (see [`in_range`]).
pub(crate) fn keys_in<'m, V>(
    map: &'m BTreeMap<Key, V>,
    start: &[u8],
    end: &[u8],
) -> Box<dyn Iterator<Item = (&'m Key, &'m V)> + 'm> {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let start = start.to_vec();
    if end.is_empty() {
        return Box::new(map.get_key_value(&start).into_iter());
    }
    let upper = if end == [0] {
        Unbounded
    } else if end <= start.as_slice() {
        return Box::new(std::iter::empty());
    } else {
        Excluded(end.to_vec())
    };
    Box::new(map.range((Included(start), upper)))
}

/// One write an op made or may have made: a put of `value` with `lease`, or a delete (`None`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Effect<'a> {
    pub key: &'a Key,
    pub put: Option<(&'a [u8], i64)>,
}

/// What an `Ok` op wrote, read from its reply: a delete that deleted nothing wrote nothing.
pub(crate) fn acked_effects(op: &Op) -> Vec<Effect<'_>> {
    let Outcome::Ok(reply) = &op.outcome else {
        return Vec::new();
    };
    match (&op.call, reply) {
        (
            Call::Put {
                key, value, lease, ..
            },
            Reply::Put { .. },
        ) => vec![Effect {
            key,
            put: Some((value, *lease)),
        }],
        (Call::Delete { key, .. }, Reply::Delete { deleted, .. }) if *deleted > 0 => {
            vec![Effect { key, put: None }]
        }
        (
            Call::Txn {
                success, failure, ..
            },
            Reply::Txn {
                succeeded, results, ..
            },
        ) => {
            let ops = if *succeeded { success } else { failure };
            let mut out = Vec::new();
            for (i, txn_op) in ops.iter().enumerate() {
                match txn_op {
                    TxnOp::Get { .. } => {}
                    TxnOp::Put { key, value, lease } => out.push(Effect {
                        key,
                        put: Some((value, *lease)),
                    }),
                    TxnOp::Delete { key } => {
                        if let Some(TxnResult::Delete { deleted, .. }) = results.get(i) {
                            if *deleted > 0 {
                                out.push(Effect { key, put: None });
                            }
                        }
                    }
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// Every write a call may make, in any branch (for ops whose outcome is unknown).
pub(crate) fn possible_effects(call: &Call) -> Vec<Effect<'_>> {
    match call {
        Call::Put {
            key, value, lease, ..
        } => vec![Effect {
            key,
            put: Some((value, *lease)),
        }],
        Call::Delete { key, .. } => vec![Effect { key, put: None }],
        Call::Txn {
            success, failure, ..
        } => success
            .iter()
            .chain(failure)
            .filter_map(|txn_op| match txn_op {
                TxnOp::Get { .. } => None,
                TxnOp::Put { key, value, lease } => Some(Effect {
                    key,
                    put: Some((value, *lease)),
                }),
                TxnOp::Delete { key } => Some(Effect { key, put: None }),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Every single key a call names (a range names none: its keys are those others name).
pub(crate) fn named_keys(call: &Call) -> Vec<&Key> {
    fn txn_op_key(op: &TxnOp) -> &Key {
        match op {
            TxnOp::Get { key } | TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
    match call {
        Call::Get { key, .. } | Call::Put { key, .. } | Call::Delete { key, .. } => vec![key],
        Call::Txn {
            compares,
            success,
            failure,
        } => compares
            .iter()
            .map(|c| &c.key)
            .chain(success.iter().chain(failure).map(txn_op_key))
            .collect(),
        _ => Vec::new(),
    }
}

/// The header revision of an `Ok` KV op (lease and compact answers are not KV state).
pub(crate) fn header_revision(op: &Op) -> Option<i64> {
    match &op.outcome {
        Outcome::Ok(
            Reply::Get { revision, .. }
            | Reply::Put { revision, .. }
            | Reply::Delete { revision, .. }
            | Reply::Txn { revision, .. },
        ) => Some(*revision),
        _ => None,
    }
}

/// The revision an `Ok` op created, if it wrote anything.
pub(crate) fn created_revision(op: &Op) -> Option<i64> {
    if acked_effects(op).is_empty() {
        return None;
    }
    header_revision(op)
}

/// Whether the op is a serializable read (answered from the member's own state, may be stale).
pub(crate) fn is_serializable(call: &Call) -> bool {
    matches!(
        call,
        Call::Get {
            serializable: true,
            ..
        } | Call::Range {
            serializable: true,
            ..
        }
    )
}

/// Whether the call is a plain read (get or range, of any kind).
pub(crate) fn is_read(call: &Call) -> bool {
    matches!(call, Call::Get { .. } | Call::Range { .. })
}

/// Whether the op reads the latest state with a quorum (a read etcd makes linearizable).
pub(crate) fn is_linearizable_read(call: &Call) -> bool {
    matches!(
        call,
        Call::Get {
            revision: 0,
            serializable: false,
            ..
        } | Call::Range {
            revision: 0,
            serializable: false,
            ..
        }
    )
}

/// The kvs an `Ok` read returned (with the range it covered), or None for other ops.
pub(crate) fn read_reply(op: &Op) -> Option<(&Key, &[u8], i64, &[Kv])> {
    let Outcome::Ok(Reply::Get { revision, kvs }) = &op.outcome else {
        return None;
    };
    match &op.call {
        Call::Get { key, .. } => Some((key, &[], *revision, kvs)),
        Call::Range { start, end, .. } => Some((start, end, *revision, kvs)),
        _ => None,
    }
}

/// When each member (re)started, for rules that hold only within one lifetime of a member.
pub(crate) struct Lifetimes {
    starts: HashMap<NodeIx, Vec<Nanos>>,
}

impl Lifetimes {
    pub(crate) fn new(h: &History) -> Lifetimes {
        let mut starts: HashMap<NodeIx, Vec<Nanos>> = HashMap::new();
        for r in &h.raft {
            if let RaftEvent::Started { .. } = r.event {
                starts.entry(r.node).or_default().push(r.at);
            }
        }
        for v in starts.values_mut() {
            v.sort_unstable();
        }
        Lifetimes { starts }
    }

    /// Which lifetime of `node` time `t` falls in (restarts at or before `t`).
    pub(crate) fn epoch(&self, node: NodeIx, t: Nanos) -> usize {
        self.starts
            .get(&node)
            .map_or(0, |v| v.partition_point(|&s| s <= t))
    }
}

/// For each `b` (time, id), the earlier item of `a` (complete, revision, id) with the highest
/// revision among those that completed strictly before `b`'s time: (b id, revision, a id).
pub(crate) fn max_before(
    a: &[(Nanos, i64, usize)],
    b: &[(Nanos, usize)],
) -> Vec<(usize, i64, usize)> {
    let mut a = a.to_vec();
    a.sort_unstable();
    let mut b = b.to_vec();
    b.sort_unstable();
    let mut out = Vec::with_capacity(b.len());
    let mut best: Option<(i64, usize)> = None;
    let mut next = 0;
    for (t, id) in b {
        while next < a.len() && a[next].0 < t {
            let (_, rev, a_id) = a[next];
            if best.is_none_or(|(r, _)| rev > r) {
                best = Some((rev, a_id));
            }
            next += 1;
        }
        if let Some((rev, a_id)) = best {
            out.push((id, rev, a_id));
        }
    }
    out
}

/// Ops grouped by a key, each group in history order.
pub(crate) fn group_by<K: Ord>(
    h: &History,
    mut key: impl FnMut(&Op) -> Option<K>,
) -> BTreeMap<K, Vec<usize>> {
    let mut groups: BTreeMap<K, Vec<usize>> = BTreeMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        if let Some(k) = key(op) {
            groups.entry(k).or_default().push(i);
        }
    }
    groups
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
pub(crate) mod generate;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::fixtures::*;
    use super::generate::*;
    use super::*;
    use crate::history::WatchResponse;

    /// A small run with a bit of everything, all of it correct.
    #[test]
    fn a_healthy_run_passes_every_checker() {
        let mut run = Run::new();
        run.raft(0, 0, state(1, Some(1), true));
        run.raft(1, 1, state(1, Some(1), false));
        run.raft(1, 2, state(1, Some(1), false));
        run.op(1, grant(7, 5), 0, 5, grant_ok(5));
        run.op(1, put_lease("lock", "c1", 7), 10, 20, put_ok(2));
        run.op(2, put("k", "v1"), 15, 25, put_ok(3));
        run.op(3, get("k"), 30, 40, get_ok(3, vec![kv("k", "v1", 3, 3, 1)]));
        run.op(2, cas("k", 3, "v2"), 50, 60, cas_ok(4, true, None));
        run.op(3, put("k", "v3"), 70, 200, lost());
        run.op(1, keep_alive(7), 1_000, 1_010, ttl_ok(5));
        run.op(
            3,
            range("a", "z"),
            1_100,
            1_110,
            get_ok(
                4,
                vec![kv("k", "v2", 3, 4, 2), kv_lease("lock", "c1", 2, 2, 1, 7)],
            ),
        );
        run.op(1, revoke(7), 1_200, 1_210, revoke_ok(5));
        run.op(2, delete("k"), 1_300, 1_310, delete_ok(6, 1));
        let w = run.watch("k", "", 0, 5, 2);
        run.respond(w, events(26, 3, vec![put_event(kv("k", "v1", 3, 3, 1))]));
        run.respond(w, events(61, 4, vec![put_event(kv("k", "v2", 3, 4, 2))]));
        run.respond(w, events(1_311, 6, vec![delete_event("k", 6)]));
        run.respond(w, progress(1_400, 6));
        for node in 0..3 {
            run.h.final_reads.insert(node, Vec::new());
            run.h.final_hashes.insert(node, (6, 0xabcd));
        }
        run.h.healed_at = Some(500 * MS);
        let found = check_all(&run.h);
        assert!(found.is_empty(), "{found:#?}");
    }

    fn watch_events(h: &mut History) -> &mut Vec<WatchResponse> {
        &mut h.watches[0].responses
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn generated_runs_pass_every_checker(
            gens in prop::collection::vec(gen_op(), 1..150),
            spread in prop::collection::vec((0u64..25, 0u64..25), 1..16),
            lost in prop::collection::vec(prop::bool::weighted(0.15), 1..16),
            vanish in prop::collection::vec(prop::bool::weighted(0.05), 1..16),
        ) {
            let h = history(&gens, &spread, &lost, &vanish);
            let found = check_all(&h);
            prop_assert!(found.is_empty(), "{:#?}", found);
        }

        #[test]
        fn a_dropped_or_repeated_watch_event_is_caught(
            gens in prop::collection::vec(gen_op(), 5..100),
            spread in prop::collection::vec((0u64..25, 0u64..25), 1..16),
            pick in any::<usize>(),
            repeat in any::<bool>(),
        ) {
            let mut h = history(&gens, &spread, &[false], &[false]);
            let responses = watch_events(&mut h);
            let with_events: Vec<usize> =
                (0..responses.len()).filter(|&r| !responses[r].events.is_empty()).collect();
            prop_assume!(!with_events.is_empty());
            let r = with_events[pick % with_events.len()];
            let event = responses[r].events.remove(0);
            if repeat {
                responses[r].events.insert(0, event.clone());
                responses[r].events.insert(0, event);
            }
            let found = check_all(&h);
            let needle = if repeat { "Unique" } else { "Reliable" };
            prop_assert!(
                found.iter().any(|v| v.checker == "watch" && v.message.contains(needle)),
                "{:#?}",
                found
            );
        }

        #[test]
        fn a_member_losing_an_acked_write_is_caught(
            gens in prop::collection::vec(gen_op(), 5..100),
            pick in any::<usize>(),
        ) {
            let mut h = history(&gens, &[(2, 2)], &[false], &[false]);
            let finals = h.final_reads.get_mut(&1).expect("three members");
            prop_assume!(!finals.is_empty());
            let i = pick % finals.len();
            finals.remove(i);
            let found = check_all(&h);
            prop_assert!(
                found.iter().any(|v| v.checker == "durability" && v.message.contains("lost")),
                "{:#?}",
                found
            );
        }
    }
}
