//! Leases keep their keys as long as their TTL promises, and not much longer.
//!
//! Property (etcd API guarantees, "Lease APIs"): a lease expires only after its TTL has run
//! out since its last renewal (grant or keep-alive), and then its keys are deleted; a revoked or
//! expired lease stays gone. TTL is wall-clock time, so every bound allows the largest clock
//! error the nemesis injected (`bounds.max_clock_error`).
//!
//! A renewal answered with TTL T > 0 was applied at some time in its interval, no earlier than
//! its call, so the lease lives at least until `call + T` (minus the clock error). Rules:
//! - **No early expiry (reads)**: a linearizable read that completes before that deadline must
//!   not find absent a key whose last known write, at or below the read's revision, put it
//!   with the lease, unless something else may have removed it: a revoke of the lease, or a
//!   lost op that may have written the key, called before the read completed.
//! - **No early expiry (keep-alives)**: a keep-alive answering TTL 0 (the lease is gone) before
//!   that deadline, unless a revoke of the lease was called before. Only once the grant was
//!   acknowledged before the keep-alive was called: earlier, "gone" may mean "not yet".
//! - **No late survival**: a linearizable read called after `L + T + slack` must not show a
//!   key attached to the lease, where L is the later of the last time a renewal may have been
//!   applied and the last time any member became leader (a new leader restarts every lease's
//!   TTL unless leases are checkpointed), T the largest TTL granted, and slack = 2 election
//!   timeouts + clock error + 1 s (etcd checks expiry every 500 ms, then revokes through Raft).
//!   A renewal whose answer was lost may be applied late: it counts as applied at healing (or
//!   the check is skipped if faults never healed). Skipped when the run recorded no Raft
//!   states, since leader changes are then unknown.
//! - **Gone stays gone**: once a revoke was acknowledged (after the grant was acknowledged),
//!   no op called afterwards may renew the lease with TTL > 0, attach a key to it, or read a
//!   key attached to it (linearizably). A keep-alive answering TTL 0 is no such proof: the
//!   leader found the lease expired, but its revoke may not be committed yet (etcd keeps the
//!   keys until it is, and a new leader re-extends the lease).
//!
//! Leases granted more than once (by id) are judged by the late-survival rule only: an
//! earlier incarnation may have expired legitimately before the re-grant.
//!
//! Bug classes: leases revoked early or en masse by a stuck or clock-skewed leader, lease TTL
//! not extended by keep-alives, keys outliving their lease (revoke lost across a leader change,
//! etcd #9395/#9888 territory), a keep-alive resurrecting an expired lease.

use std::collections::{BTreeMap, HashMap};

use super::observations::Observations;
use super::{
    acked_effects, at, in_range, is_linearizable_read, keys_in, name, possible_effects, show,
    Findings,
};
use crate::history::{Call, History, Key, Nanos, Op, Outcome, RaftEvent, Reply, Violation};

const SECOND: Nanos = 1_000_000_000;

/// What the history says of one lease.
#[derive(Default)]
struct Lease {
    /// Grants that did not fail.
    grants: Vec<usize>,
    /// Grants and keep-alives answered with TTL > 0: (op, TTL in seconds).
    renewals: Vec<(usize, i64)>,
    /// Grants and keep-alives whose answer was lost.
    lost_renewals: Vec<usize>,
    /// Revokes that did not fail.
    revokes: Vec<usize>,
    /// Ops after which the lease is known gone: keep-alives answered TTL 0, acknowledged revokes.
    gone: Vec<usize>,
    /// The largest TTL asked for or granted, in seconds.
    ttl_max: i64,
}

fn leases(h: &History) -> BTreeMap<i64, Lease> {
    let mut out: BTreeMap<i64, Lease> = BTreeMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        if matches!(op.outcome, Outcome::Failed(_)) {
            continue;
        }
        let lost = matches!(op.outcome, Outcome::Unknown(_));
        match (&op.call, &op.outcome) {
            (Call::LeaseGrant { id, ttl_secs }, outcome) => {
                let l = out.entry(*id).or_default();
                l.grants.push(i);
                l.ttl_max = l.ttl_max.max(*ttl_secs);
                if let Outcome::Ok(Reply::LeaseGrant { ttl_secs, .. }) = outcome {
                    l.ttl_max = l.ttl_max.max(*ttl_secs);
                    if *ttl_secs > 0 {
                        l.renewals.push((i, *ttl_secs));
                    }
                }
                if lost {
                    l.lost_renewals.push(i);
                }
            }
            (Call::LeaseKeepAlive { id }, outcome) => {
                let l = out.entry(*id).or_default();
                match outcome {
                    Outcome::Ok(Reply::LeaseKeepAlive { ttl_secs: 0 }) => l.gone.push(i),
                    Outcome::Ok(Reply::LeaseKeepAlive { ttl_secs }) => {
                        l.ttl_max = l.ttl_max.max(*ttl_secs);
                        l.renewals.push((i, *ttl_secs));
                    }
                    _ if lost => l.lost_renewals.push(i),
                    _ => {}
                }
            }
            (Call::LeaseRevoke { id }, outcome) => {
                let l = out.entry(*id).or_default();
                l.revokes.push(i);
                if let Outcome::Ok(_) = outcome {
                    l.gone.push(i);
                }
            }
            _ => {}
        }
    }
    out
}

impl Lease {
    /// The latest deadline before which the lease cannot expire, from renewals called before
    /// `t`: (deadline, renewal op).
    fn alive_until(&self, h: &History, t: Nanos) -> Option<(Nanos, usize)> {
        self.renewals
            .iter()
            .filter(|(r, _)| h.ops[*r].invoke < t)
            .map(|&(r, ttl)| (h.ops[r].invoke + ttl as Nanos * SECOND, r))
            .max()
    }

    fn revoked_before(&self, h: &History, t: Nanos) -> bool {
        self.revokes.iter().any(|&r| h.ops[r].invoke < t)
    }

    /// Whether the lease was granted once, surely before `t`: then a "gone" answer at `t` is
    /// not merely "not granted yet".
    fn granted_once_before(&self, h: &History, t: Nanos) -> bool {
        let [g] = self.grants[..] else {
            return false;
        };
        matches!(h.ops[g].outcome, Outcome::Ok(_)) && h.ops[g].complete < t
    }
}

pub fn check(h: &History) -> Vec<Violation> {
    let obs = Observations::new(h);
    let leases = leases(h);
    let mut f = Findings::new("lease");
    early_expiry_reads(h, &obs, &leases, &mut f);
    early_expiry_keep_alives(h, &leases, &mut f);
    late_survival(h, &leases, &mut f);
    gone_stays_gone(h, &leases, &mut f);
    f.finish()
}

fn early_expiry_reads(
    h: &History,
    obs: &Observations,
    leases: &BTreeMap<i64, Lease>,
    f: &mut Findings,
) {
    let clock_error = h.bounds.max_clock_error;
    // Per key, the calls of lost ops that may have written it, earliest first.
    let mut lost_writers: HashMap<&Key, Vec<(Nanos, usize)>> = HashMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        if matches!(op.outcome, Outcome::Unknown(_)) {
            for e in possible_effects(&op.call) {
                lost_writers.entry(e.key).or_default().push((op.invoke, i));
            }
        }
    }
    for v in lost_writers.values_mut() {
        v.sort_unstable();
        v.dedup();
    }
    for op in &h.ops {
        let Some((start, end, revision, kvs)) = super::read_reply(op) else {
            continue;
        };
        if !is_linearizable_read(&op.call) {
            continue;
        }
        for (key, _) in keys_in(&obs.known, start, end) {
            if kvs.iter().any(|kv| &kv.key == key) {
                continue;
            }
            let Some((rev, w)) = obs.latest_at(key, revision) else {
                continue;
            };
            let Some(lease) = leases.get(&w.lease).filter(|_| w.value.is_some()) else {
                continue;
            };
            if lease.grants.len() > 1 || lease.revoked_before(h, op.complete) {
                continue;
            }
            // A lost write of the key may have replaced or deleted it.
            let lost_writer = lost_writers
                .get(key)
                .into_iter()
                .flatten()
                .take(2)
                .any(|&(t, i)| i != w.op && t < op.complete);
            if lost_writer {
                continue;
            }
            let Some((deadline, renewal)) = lease.alive_until(h, op.complete) else {
                continue;
            };
            if op.complete + clock_error < deadline {
                f.push(format!(
                    "early expiry: {} found {} absent at {}, but {} attached it to lease {} at revision {rev}, and {} renewed the lease at {} so it lives until {}",
                    name(op),
                    show(key),
                    at(op.complete),
                    name(&h.ops[w.op]),
                    w.lease,
                    name(&h.ops[renewal]),
                    at(h.ops[renewal].invoke),
                    at(deadline)
                ));
            }
        }
    }
}

fn early_expiry_keep_alives(h: &History, leases: &BTreeMap<i64, Lease>, f: &mut Findings) {
    let clock_error = h.bounds.max_clock_error;
    for (id, lease) in leases {
        for &g in &lease.gone {
            let op = &h.ops[g];
            if !matches!(op.call, Call::LeaseKeepAlive { .. })
                || !lease.granted_once_before(h, op.invoke)
                || lease.revoked_before(h, op.complete)
            {
                continue;
            }
            let Some((deadline, renewal)) = lease.alive_until(h, op.complete) else {
                continue;
            };
            if op.complete + clock_error < deadline {
                f.push(format!(
                    "early expiry: {} answered lease {id} gone at {}, but {} renewed it at {} so it lives until {}",
                    name(op),
                    at(op.complete),
                    name(&h.ops[renewal]),
                    at(h.ops[renewal].invoke),
                    at(deadline)
                ));
            }
        }
    }
}

/// When any member last became leader before `t`.
fn last_leader_change(h: &History, t: Nanos) -> Option<Nanos> {
    h.raft
        .iter()
        .filter(|r| {
            r.at < t
                && matches!(
                    r.event,
                    RaftEvent::State {
                        is_leader: true,
                        ..
                    }
                )
        })
        .map(|r| r.at)
        .max()
}

fn late_survival(h: &History, leases: &BTreeMap<i64, Lease>, f: &mut Findings) {
    if h.raft.is_empty() {
        return;
    }
    let b = &h.bounds;
    let slack = 2 * b.election_timeout + b.max_clock_error + SECOND;
    for op in &h.ops {
        let Some((_, _, _, kvs)) = super::read_reply(op) else {
            continue;
        };
        if !is_linearizable_read(&op.call) {
            continue;
        }
        for kv in kvs.iter().filter(|kv| kv.lease != 0) {
            let Some(lease) = leases.get(&kv.lease) else {
                continue;
            };
            let Some(renewed) = last_possible_renewal(h, lease, op.complete) else {
                continue;
            };
            let promoted = last_leader_change(h, op.complete).unwrap_or(0);
            let from = renewed.max(promoted);
            let deadline = from + lease.ttl_max as Nanos * SECOND + slack;
            if op.invoke > deadline {
                f.push(format!(
                    "late survival: {} at {} shows {} attached to lease {} (ttl {} s), last renewable at {} and no leader change since {}: it should be gone by {}",
                    name(op),
                    at(op.invoke),
                    show(&kv.key),
                    kv.lease,
                    lease.ttl_max,
                    at(renewed),
                    at(promoted),
                    at(deadline)
                ));
            }
        }
    }
}

/// The latest time a renewal called before `t` may have been applied; None if unbounded
/// (a lost renewal in a run whose faults never healed) or if the lease was never granted.
fn last_possible_renewal(h: &History, lease: &Lease, t: Nanos) -> Option<Nanos> {
    if lease.grants.is_empty() {
        return None;
    }
    let mut latest = 0;
    for &(r, _) in &lease.renewals {
        if h.ops[r].invoke < t {
            latest = latest.max(h.ops[r].complete);
        }
    }
    for &r in &lease.lost_renewals {
        if h.ops[r].invoke < t {
            // In flight until the network healed, at worst.
            latest = latest.max(h.ops[r].complete.max(h.healed_at?));
        }
    }
    for &g in &lease.grants {
        if h.ops[g].invoke < t {
            latest = latest.max(h.ops[g].complete);
        }
    }
    Some(latest)
}

fn gone_stays_gone(h: &History, leases: &BTreeMap<i64, Lease>, f: &mut Findings) {
    for (id, lease) in leases {
        let Some(&gone) = lease
            .gone
            .iter()
            // Only an applied revoke proves the keys gone: a keep-alive answering TTL 0 means
            // the leader found the lease expired, but its revoke may still be uncommitted (the
            // keys stay readable, and a new leader re-extends it), as in etcd.
            .filter(|&&g| matches!(h.ops[g].call, Call::LeaseRevoke { .. }))
            .filter(|&&g| lease.granted_once_before(h, h.ops[g].invoke))
            .min_by_key(|&&g| h.ops[g].complete)
        else {
            continue;
        };
        let gone_at = h.ops[gone].complete;
        let proof = format!("{} showed it gone at {}", name(&h.ops[gone]), at(gone_at));
        for op in h.ops.iter().filter(|op| op.invoke > gone_at) {
            if let Some(what) = uses_lease(op, *id) {
                f.push(format!(
                    "lease {id} came back: {} {what} after {proof}",
                    name(op)
                ));
            }
        }
    }
}

/// How `op` shows lease `id` alive, if it does.
fn uses_lease(op: &Op, id: i64) -> Option<String> {
    match (&op.call, &op.outcome) {
        (Call::LeaseKeepAlive { id: l }, Outcome::Ok(Reply::LeaseKeepAlive { ttl_secs }))
            if *l == id && *ttl_secs > 0 =>
        {
            return Some(format!("renewed it with ttl {ttl_secs}"));
        }
        _ => {}
    }
    if let Some(e) = acked_effects(op)
        .into_iter()
        .find(|e| e.put.is_some_and(|(_, lease)| lease == id))
    {
        return Some(format!("attached {} to it", show(e.key)));
    }
    if !is_linearizable_read(&op.call) {
        return None;
    }
    let (start, end, _, kvs) = super::read_reply(op)?;
    kvs.iter()
        .find(|kv| kv.lease == id && in_range(&kv.key, start, end))
        .map(|kv| format!("read {} attached to it", show(&kv.key)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::*;
    use crate::history::Bounds;

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

    /// Lease 7 with a 2 s TTL granted at 0 ms, k attached at 10 ms; a leader since 0 ms.
    fn base() -> Run {
        let mut run = Run::new();
        run.raft(0, 0, state(1, Some(1), true));
        run.op(1, grant(7, 2), 0, 5, grant_ok(2));
        run.op(1, put_lease("k", "v1", 7), 10, 20, put_ok(2));
        run
    }

    #[test]
    fn lease_lives_its_ttl_then_goes() {
        let mut run = base();
        run.op(
            2,
            get("k"),
            1000,
            1010,
            get_ok(2, vec![kv_lease("k", "v1", 2, 2, 1, 7)]),
        );
        run.op(1, keep_alive(7), 1500, 1510, ttl_ok(2));
        run.op(
            2,
            get("k"),
            3000,
            3010,
            get_ok(2, vec![kv_lease("k", "v1", 2, 2, 1, 7)]),
        );
        run.op(2, get("k"), 4000, 4010, get_ok(3, vec![]));
        run.op(1, keep_alive(7), 4100, 4110, ttl_ok(0));
        assert_clean(&run);
    }

    #[test]
    fn early_expiry_is_caught() {
        let mut run = base();
        run.op(2, get("k"), 1000, 1010, get_ok(3, vec![]));
        assert_caught(
            &run,
            "early expiry: op 3 (c2@n0 get \"k\") found \"k\" absent at 1.010000s",
        );
    }

    #[test]
    fn clock_error_allowance_excuses_a_slightly_early_expiry() {
        let mut run = base();
        run.op(2, get("k"), 1000, 1010, get_ok(3, vec![]));
        run.bounds(Bounds {
            max_clock_error: 1_500 * MS,
            ..Bounds::default()
        });
        assert_clean(&run);
    }

    #[test]
    fn revoke_explains_absence() {
        let mut run = base();
        run.op(1, revoke(7), 500, 510, revoke_ok(3));
        run.op(2, get("k"), 1000, 1010, get_ok(3, vec![]));
        assert_clean(&run);
    }

    #[test]
    fn early_gone_keep_alive_is_caught() {
        let mut run = base();
        run.op(1, keep_alive(7), 1000, 1010, ttl_ok(0));
        assert_caught(
            &run,
            "early expiry: op 3 (c1@n0 keep-alive 7) answered lease 7 gone",
        );
    }

    #[test]
    fn late_survival_is_caught() {
        // TTL 2 s, no renewal, no leader change: by 0.005 + 2 + 2 (election) + 1 s it is gone.
        let mut run = base();
        run.op(
            2,
            get("k"),
            6000,
            6010,
            get_ok(2, vec![kv_lease("k", "v1", 2, 2, 1, 7)]),
        );
        assert_caught(&run, "late survival: op 3 (c2@n0 get \"k\") at 6.000000s");

        // A leader change at 3 s restarts the TTL: the key may live until 8.005 s.
        let mut run = base();
        run.raft(3000, 1, state(2, Some(2), true));
        run.op(
            2,
            get("k"),
            6000,
            6010,
            get_ok(2, vec![kv_lease("k", "v1", 2, 2, 1, 7)]),
        );
        assert_clean(&run);
    }

    #[test]
    fn resurrected_lease_is_caught() {
        let mut run = base();
        run.op(1, revoke(7), 100, 110, revoke_ok(3));
        run.op(1, keep_alive(7), 200, 210, ttl_ok(2));
        run.op(1, put_lease("j", "w1", 7), 300, 310, put_ok(4));
        assert_caught(
            &run,
            "lease 7 came back: op 4 (c1@n0 keep-alive 7) renewed it with ttl 2",
        );
        assert_caught(
            &run,
            "lease 7 came back: op 5 (c1@n0 put \"j\"=\"w1\") attached \"j\" to it",
        );
    }
}
