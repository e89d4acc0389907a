//! Linearizability of the KV API, in the order etcd promises: its revisions.
//!
//! Property (etcd API guarantees, "KV APIs"): every KV op takes effect atomically at one point
//! between its call and its answer; writes are totally ordered by the revision each creates,
//! and a read at header revision H sees exactly the writes up to H.
//!
//! Rules, in the order they run (each is sound on its own: `Unknown` ops may have happened at
//! any time after their call, or never):
//! 1. **Observations** (from the shared index): a read shows only values some op wrote, never
//!    a value of a `Failed` op or of a txn branch that did not run, and always at the revision
//!    the write's answer gave; two observations of one write agree on every field.
//! 2. **Distinct revisions**: no two ops created the same revision.
//! 3. **Real-time revision order**: if op A (any `Ok` KV op, serializable reads included)
//!    completed before op B was invoked, B's header revision is at least A's, and strictly
//!    greater if B wrote. (B is any `Ok` KV op except a serializable read.)
//! 4. **Sessions**: a serializable read answers a revision no lower than any earlier read
//!    answer the same client had from the same member, unless the member restarted in between.
//! 5. **Revision consistency**: every read, serializable and historical ones included, shows
//!    the state at its revision (its header revision, or the requested one): each kv it shows
//!    is no newer than that revision and no known write to the key lies between the kv's
//!    mod_revision and that revision (stale read); a key it finds absent was not put, last
//!    before that revision, by a write nothing could have deleted (no lease, no delete whose
//!    answer was lost, no watch-reported delete).
//! 6. **Search** (Wing–Gong–Lowe, as porcupine; see `wgl`): linearizable reads, puts,
//!    deletes and txns are partitioned into components of keys ops touch together (a range
//!    touches every key in it that any op names or any read shows); each component is searched
//!    for a linearization against the model in `model`, which checks values, mod/create
//!    revisions, versions, leases, prev_kvs, delete counts and txn compares, and requires the
//!    order to agree with revisions. A write whose answer was lost but whose value was
//!    observed happened, at the observed revision, before its first observation. A lost write
//!    nobody observed is left out of the search (trying it everywhere is what makes searches
//!    explode), and the model lets its effects slip in unseen after its call: the keys it may
//!    have put are judged leniently (version, create_revision, delete counts, compares) and
//!    each delete it may have made may explain one vanishing (see `model`). A component whose
//!    search exceeds the step budget, or that holds a txn touching more than
//!    [`TXN_KEYS_MAX`] keys, gets a note, not a verdict.
//!
//! 7. **Refusals**: a linearizable read at a past revision refused as compacted names a
//!    revision below one some compaction (answered or lost) asked for before the refusal; one
//!    refused as a future revision names a revision above every header revision answered
//!    before the read was invoked.
//!
//! Bug classes: stale reads (etcd #20418, reads after a pause; Jepsen 2014), lost or doubled
//! writes, revisions reused or going backwards (#13766, #17780), txn compares evaluated on a
//! stale state, wrong prev_kv or version.
//!
//! Limits: historical and serializable reads are judged by rules 4–5 only, not by the search;
//! the store is assumed empty at the start; a lease-attached key may vanish at any time here
//! (the lease checker bounds when); versions and create_revisions of keys a lost, unobserved
//! put may have touched are only bounded, not checked exactly.

mod model;
mod wgl;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use self::model::{Component, Hidden, KeyState, ModelOp, State};
use self::wgl::{Span, Verdict, NEVER};
use super::observations::{Observations, Source};
use super::{
    at, created_revision, header_revision, in_range, is_linearizable_read, is_read,
    is_serializable, keys_in, max_before, name, named_keys, possible_effects, show, show_kv,
    summary, Findings, Lifetimes,
};
use crate::history::{
    Call, EventKind, History, Key, Kv, Nanos, Outcome, Reply, TxnOp, TxnResult, Violation,
    COMPACTED, FUTURE_REVISION,
};

/// Search steps per component before giving up on it.
pub const STEP_BUDGET: u64 = 2_000_000;

/// The most keys one txn may touch for its component to be searched: the model tries every
/// subset of a txn's keys that may have vanished unseen.
pub const TXN_KEYS_MAX: usize = 10;

/// What the search did, for the run's report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Components searched.
    pub components: usize,
    /// Ops given to the search.
    pub searched_ops: usize,
    /// Search steps over all components.
    pub steps: u64,
    /// Components left without a verdict, and ops the model could not read.
    pub notes: Vec<String>,
}

pub fn check(h: &History) -> Vec<Violation> {
    check_with_stats(h).0
}

pub fn check_with_stats(h: &History) -> (Vec<Violation>, Stats) {
    check_with_budget(h, STEP_BUDGET)
}

/// [`check`] with `budget` search steps per component.
pub fn check_with_budget(h: &History, budget: u64) -> (Vec<Violation>, Stats) {
    let obs = Observations::new(h);
    let mut f = Findings::new("linearizability");
    for (source, message) in &obs.anomalies {
        if let Source::Op(_) = source {
            f.push(message.clone());
        }
    }
    distinct_revisions(h, &obs, &mut f);
    real_time_order(h, &mut f);
    session_order(h, &mut f);
    revision_consistency(h, &obs, &mut f);
    refusals(h, &mut f);
    let stats = search(h, &obs, budget, &mut f);
    (f.finish(), stats)
}

fn distinct_revisions(h: &History, obs: &Observations, f: &mut Findings) {
    let mut by_revision: BTreeMap<i64, usize> = BTreeMap::new();
    for (i, rev) in obs.revision.iter().enumerate() {
        let Some(rev) = *rev else { continue };
        if let Some(&other) = by_revision.get(&rev) {
            f.push(format!(
                "{} and {} both created revision {rev}",
                name(&h.ops[other]),
                name(&h.ops[i])
            ));
        } else {
            by_revision.insert(rev, i);
        }
    }
}

fn real_time_order(h: &History, f: &mut Findings) {
    let mut earlier = Vec::new();
    let mut later = Vec::new();
    for (i, op) in h.ops.iter().enumerate() {
        let Some(rev) = header_revision(op) else {
            continue;
        };
        earlier.push((op.complete, rev, i));
        if !is_serializable(&op.call) {
            later.push((op.invoke, i));
        }
    }
    for (b, floor, a) in max_before(&earlier, &later) {
        let (op_a, op_b) = (&h.ops[a], &h.ops[b]);
        let rev_b = header_revision(op_b).expect("only ok ops");
        if created_revision(op_b).is_some() {
            if rev_b <= floor {
                f.push(format!(
                    "{} wrote at revision {rev_b}, not above revision {floor} that {} answered at {} before it was invoked at {}",
                    name(op_b),
                    name(op_a),
                    at(op_a.complete),
                    at(op_b.invoke)
                ));
            }
        } else if rev_b < floor {
            f.push(format!(
                "{} answered revision {rev_b}, below revision {floor} that {} answered at {} before it was invoked at {}",
                name(op_b),
                name(op_a),
                at(op_a.complete),
                at(op_b.invoke)
            ));
        }
    }
}

fn session_order(h: &History, f: &mut Findings) {
    let lives = Lifetimes::new(h);
    let sessions = super::group_by(h, |op| {
        header_revision(op)?;
        Some((op.client, op.node, lives.epoch(op.node, op.invoke)))
    });
    for ops in sessions.values() {
        // Only reads: a member may answer a write it forwarded before applying it.
        let earlier: Vec<_> = ops
            .iter()
            .filter(|&&i| is_read(&h.ops[i].call))
            .map(|&i| {
                (
                    h.ops[i].complete,
                    header_revision(&h.ops[i]).unwrap_or(0),
                    i,
                )
            })
            .collect();
        let later: Vec<_> = ops
            .iter()
            .filter(|&&i| is_serializable(&h.ops[i].call))
            .map(|&i| (h.ops[i].invoke, i))
            .collect();
        for (b, floor, a) in max_before(&earlier, &later) {
            let rev_b = header_revision(&h.ops[b]).unwrap_or(0);
            if rev_b < floor {
                f.push(format!(
                    "{} answered revision {rev_b}, below revision {floor} the same member gave the same client earlier ({})",
                    name(&h.ops[b]),
                    name(&h.ops[a])
                ));
            }
        }
    }
}

/// Per key, the earliest call of an op whose answer was lost and that may have deleted the
/// key, or put it with a lease (which may have expired since).
fn lost_removers(h: &History) -> HashMap<&Key, Nanos> {
    let mut out: HashMap<&Key, Nanos> = HashMap::new();
    for op in &h.ops {
        if !matches!(op.outcome, Outcome::Unknown(_)) {
            continue;
        }
        for e in possible_effects(&op.call) {
            if e.put.is_none_or(|(_, lease)| lease != 0) {
                let t = out.entry(e.key).or_insert(op.invoke);
                *t = (*t).min(op.invoke);
            }
        }
    }
    out
}

struct Consistency<'h> {
    h: &'h History,
    obs: &'h Observations,
    removers: HashMap<&'h Key, Nanos>,
    watched_deletes: HashMap<&'h Key, BTreeSet<i64>>,
}

/// Rule 7: historical reads refused as compacted or as future revisions were refused rightly.
fn refusals(h: &History, f: &mut Findings) {
    let compactions: Vec<(i64, Nanos)> = h
        .ops
        .iter()
        .filter_map(|op| match (&op.call, &op.outcome) {
            (Call::Compact { revision }, Outcome::Ok(_) | Outcome::Unknown(_)) => {
                Some((*revision, op.invoke))
            }
            _ => None,
        })
        .collect();
    let answered: Vec<(Nanos, i64, usize)> = h
        .ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| Some((op.complete, header_revision(op)?, i)))
        .collect();
    let mut refused_future = Vec::new();
    for (i, op) in h.ops.iter().enumerate() {
        let revision = match &op.call {
            Call::Get {
                revision,
                serializable: false,
                ..
            }
            | Call::Range {
                revision,
                serializable: false,
                ..
            } if *revision > 0 => *revision,
            _ => continue,
        };
        let Outcome::Failed(msg) = &op.outcome else {
            continue;
        };
        if msg == COMPACTED
            && !compactions
                .iter()
                .any(|&(compact, invoked)| compact > revision && invoked < op.complete)
        {
            f.push(format!(
                "{} at revision {revision} was refused as compacted, but no compaction above \
                 revision {revision} was asked for before {}",
                name(&h.ops[i]),
                at(op.complete)
            ));
        }
        if msg == FUTURE_REVISION {
            refused_future.push((op.invoke, i));
        }
    }
    for (i, seen, by) in max_before(&answered, &refused_future) {
        let op = &h.ops[i];
        let (Call::Get { revision, .. } | Call::Range { revision, .. }) = &op.call else {
            continue;
        };
        if seen >= *revision {
            f.push(format!(
                "{} at revision {revision} was refused as a future revision, but {} had \
                 answered revision {seen} before it was invoked",
                name(op),
                name(&h.ops[by])
            ));
        }
    }
}

fn revision_consistency(h: &History, obs: &Observations, f: &mut Findings) {
    let mut watched_deletes: HashMap<&Key, BTreeSet<i64>> = HashMap::new();
    for w in &h.watches {
        for resp in &w.responses {
            for ev in resp.events.iter().filter(|e| e.kind == EventKind::Delete) {
                watched_deletes
                    .entry(&ev.kv.key)
                    .or_default()
                    .insert(ev.kv.mod_revision);
            }
        }
    }
    let c = Consistency {
        h,
        obs,
        removers: lost_removers(h),
        watched_deletes,
    };
    for (i, op) in h.ops.iter().enumerate() {
        let Outcome::Ok(reply) = &op.outcome else {
            continue;
        };
        match (&op.call, reply) {
            (
                Call::Get { key, revision, .. },
                Reply::Get {
                    revision: header,
                    kvs,
                },
            ) => {
                let pinned = if *revision != 0 { *revision } else { *header };
                c.read(f, i, key, &[], pinned, kvs);
            }
            (
                Call::Range {
                    start,
                    end,
                    revision,
                    ..
                },
                Reply::Get {
                    revision: header,
                    kvs,
                },
            ) => {
                let pinned = if *revision != 0 { *revision } else { *header };
                c.read(f, i, start, end, pinned, kvs);
            }
            (Call::Txn { .. }, Reply::Txn { .. }) => c.txn_reads(f, i),
            _ => {}
        }
    }
}

impl Consistency<'_> {
    /// Txn gets see the state before the txn, except keys the txn already wrote.
    fn txn_reads(&self, f: &mut Findings, i: usize) {
        let op = &self.h.ops[i];
        let (
            Call::Txn {
                success, failure, ..
            },
            Outcome::Ok(Reply::Txn {
                revision,
                succeeded,
                results,
            }),
        ) = (&op.call, &op.outcome)
        else {
            return;
        };
        let pinned = if created_revision(op).is_some() {
            revision - 1
        } else {
            *revision
        };
        let acts = if *succeeded { success } else { failure };
        let mut written: Vec<&Key> = Vec::new();
        for (act, result) in acts.iter().zip(results) {
            match (act, result) {
                (TxnOp::Get { key }, TxnResult::Get { kvs }) if !written.contains(&key) => {
                    self.read(f, i, key, &[], pinned, kvs);
                }
                (TxnOp::Put { key, .. }, _) => written.push(key),
                (TxnOp::Delete { key }, TxnResult::Delete { deleted, .. }) if *deleted > 0 => {
                    written.push(key);
                }
                _ => {}
            }
        }
    }

    fn read(&self, f: &mut Findings, i: usize, start: &Key, end: &[u8], pinned: i64, kvs: &[Kv]) {
        let op = &self.h.ops[i];
        for kv in kvs {
            if !in_range(&kv.key, start, end) {
                f.push(format!(
                    "{} returned {}, outside the range it read",
                    name(op),
                    show(&kv.key)
                ));
                continue;
            }
            self.present(f, i, pinned, kv);
        }
        for (key, _) in keys_in(&self.obs.known, start, end) {
            if !kvs.iter().any(|kv| &kv.key == key) {
                self.absent(f, i, pinned, key);
            }
        }
    }

    fn present(&self, f: &mut Findings, i: usize, pinned: i64, kv: &Kv) {
        let op = &self.h.ops[i];
        let key = show(&kv.key);
        if kv.mod_revision > pinned {
            f.push(format!(
                "{} read {key} at revision {pinned} but got {}, from a later revision",
                name(op),
                show_kv(kv)
            ));
            return;
        }
        let Some(by_rev) = self.obs.known.get(&kv.key) else {
            return;
        };
        if let Some(w) = by_rev.get(&kv.mod_revision) {
            if w.value.as_deref() != Some(kv.value.as_slice()) {
                let what = w
                    .value
                    .as_deref()
                    .map_or("deleted it".to_string(), |v| format!("put {}", show(v)));
                f.push(format!(
                    "{} read {key}={}, but at revision {} {} {what}",
                    name(op),
                    show_kv(kv),
                    kv.mod_revision,
                    name(&self.h.ops[w.op])
                ));
            }
        }
        if let Some((rev, w)) = first_between(by_rev, kv.mod_revision, pinned) {
            f.push(format!(
                "stale read: {} read {key} at revision {pinned} and got {}, but {} wrote {key} at revision {rev}",
                name(op),
                show_kv(kv),
                name(&self.h.ops[w.op])
            ));
        }
    }

    fn absent(&self, f: &mut Findings, i: usize, pinned: i64, key: &Key) {
        let op = &self.h.ops[i];
        let Some((rev, w)) = self.obs.latest_at(key, pinned) else {
            return;
        };
        if w.value.is_none() || w.lease != 0 {
            return;
        }
        let watched = self
            .watched_deletes
            .get(key)
            .is_some_and(|revs| revs.range(rev + 1..).next().is_some_and(|&r| r <= pinned));
        let lost = self.removers.get(key).is_some_and(|&t| t < op.complete);
        if !watched && !lost {
            f.push(format!(
                "{} read {} at revision {pinned} and found it absent, but {} put it at revision {rev} and nothing deleted it",
                name(op),
                show(key),
                name(&self.h.ops[w.op])
            ));
        }
    }
}

/// The first entry with a revision in `(after, upto]`.
fn first_between<V>(by_rev: &BTreeMap<i64, V>, after: i64, upto: i64) -> Option<(&i64, &V)> {
    by_rev
        .range(after + 1..)
        .next()
        .filter(|(r, _)| **r <= upto)
}

/// Disjoint sets of key ids.
struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        self.0[a.max(b)] = a.min(b);
    }
}

/// Ops the search judges: linearizable reads and every write, unless they surely did nothing.
fn searched(op: &crate::history::Op) -> bool {
    let kind = match &op.call {
        Call::Get { .. } | Call::Range { .. } => is_linearizable_read(&op.call),
        Call::Put { .. } | Call::Delete { .. } | Call::Txn { .. } => true,
        _ => false,
    };
    kind && !matches!(op.outcome, Outcome::Failed(_))
}

fn search(h: &History, obs: &Observations, budget: u64, f: &mut Findings) -> Stats {
    let universe: Vec<&Key> = obs.keys.iter().collect();
    let key_id: HashMap<&Key, usize> = universe.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let mut sets = UnionFind((0..universe.len()).collect());
    let mut touched: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, op) in h.ops.iter().enumerate() {
        if !searched(op) {
            continue;
        }
        let mut keys: Vec<usize> = named_keys(&op.call).iter().map(|k| key_id[k]).collect();
        if let Call::Range { start, end, .. } = &op.call {
            keys.extend((0..universe.len()).filter(|&k| in_range(universe[k], start, end)));
        }
        let Some(&first) = keys.first() else { continue };
        for &k in &keys[1..] {
            sets.union(first, k);
        }
        touched.push((i, keys));
    }
    let mut components: BTreeMap<usize, (BTreeSet<usize>, Vec<usize>)> = BTreeMap::new();
    for (i, keys) in touched {
        let root = sets.find(keys[0]);
        let entry = components.entry(root).or_default();
        entry.0.extend(keys);
        entry.1.push(i);
    }
    let mut stats = Stats::default();
    for (keys, ops) in components.into_values() {
        let keys: Vec<Key> = keys.into_iter().map(|k| universe[k].clone()).collect();
        search_component(h, obs, budget, keys, &ops, f, &mut stats);
    }
    stats
}

fn search_component(
    h: &History,
    obs: &Observations,
    budget: u64,
    keys: Vec<Key>,
    ops: &[usize],
    f: &mut Findings,
    stats: &mut Stats,
) {
    let mut component = Component::new(keys);
    // Lost writes nobody saw are left out; the model lets their effects slip in unseen.
    let (unseen, searched): (Vec<usize>, Vec<usize>) = ops.iter().partition(|&&i| {
        matches!(h.ops[i].outcome, Outcome::Unknown(_)) && obs.revision[i].is_none()
    });
    let mut unseen_puts: HashMap<usize, Nanos> = HashMap::new();
    let mut unseen_deletes: HashMap<usize, Vec<Nanos>> = HashMap::new();
    for &i in &unseen {
        let invoke = h.ops[i].invoke;
        for e in possible_effects(&h.ops[i].call) {
            let k = component
                .index(e.key)
                .expect("op keys are in its component");
            match e.put {
                Some((_, lease)) => {
                    let t = unseen_puts.entry(k).or_insert(invoke);
                    *t = (*t).min(invoke);
                    // A lost put with a lease may also have been deleted by its lease's
                    // expiry or revoke, unseen (swarm seed 926767: the put landed after a
                    // paused member resumed, its lease expired at once, and the next put
                    // found the key absent).
                    if lease != 0 {
                        unseen_deletes.entry(k).or_default().push(invoke);
                    }
                }
                None => unseen_deletes.entry(k).or_default().push(invoke),
            }
        }
    }
    let unseen = Unseen {
        puts: unseen_puts,
        deletes: unseen_deletes,
    };
    for &i in &searched {
        component.intern_puts(&h.ops[i].call);
    }
    let mut model_ops: Vec<ModelOp> = Vec::new();
    let mut spans: Vec<Span> = Vec::new();
    for &i in &searched {
        let op = &h.ops[i];
        let lost = matches!(op.outcome, Outcome::Unknown(_));
        let revision = if lost { obs.revision[i] } else { None };
        let complete = match (lost, obs.first_seen[i]) {
            (false, _) => op.complete,
            // Seen: it happened, before it was first seen.
            (true, Some(seen)) => seen.max(op.invoke),
            (true, None) => NEVER,
        };
        let hidden = unseen.before(&component, &op.call, complete);
        let Some(m) = component.translate(i, &op.call, &op.outcome, revision, hidden) else {
            if matches!(op.outcome, Outcome::Ok(_)) {
                stats.notes.push(format!(
                    "{}: reply does not fit the call; skipped",
                    name(op)
                ));
            }
            continue;
        };
        model_ops.push(m);
        spans.push(Span {
            invoke: op.invoke,
            complete,
            ..Span::default()
        });
    }
    order_by_revision(h, obs, &model_ops, &mut spans);
    stats.components += 1;
    if let Some(m) = model_ops.iter().find(|m| m.keys_touched() > TXN_KEYS_MAX) {
        stats.notes.push(format!(
            "linearizability: {} ops on {} not searched: {} touches {} keys",
            model_ops.len(),
            show_keys(&component.keys),
            name(&h.ops[m.op]),
            m.keys_touched()
        ));
        return;
    }
    stats.searched_ops += model_ops.len();
    let init = State::empty(component.keys.len());
    let (verdict, steps) = wgl::search(&spans, init, budget, |s, j, out| {
        model::step(s, &model_ops[j], out);
    });
    stats.steps += steps;
    match verdict {
        Verdict::Linearizable => {}
        Verdict::Exhausted => stats.notes.push(format!(
            "linearizability: no verdict for {} ops on {} after {budget} steps",
            model_ops.len(),
            show_keys(&component.keys)
        )),
        Verdict::Stuck {
            order,
            stuck,
            state,
        } => {
            let op = &h.ops[model_ops[stuck].op];
            let last = order
                .last()
                .map_or("nothing".to_string(), |&j| name(&h.ops[model_ops[j].op]));
            f.push(format!(
                "no linearization of {} ops on {}: {} {} in [{}, {}] cannot take effect; the deepest partial linearization placed {} ops (last: {last}) and left {}",
                model_ops.len(),
                show_keys(&component.keys),
                name(op),
                summary(op),
                at(op.invoke),
                at(op.complete),
                order.len(),
                show_state(&component, &state)
            ));
        }
    }
}

/// Marks the writes whose revisions are known, and for every op how many of them (the first
/// by revision) must precede it: writes below its own revision, or up to its header revision
/// if it only read.
fn order_by_revision(h: &History, obs: &Observations, model_ops: &[ModelOp], spans: &mut [Span]) {
    let written: Vec<Option<i64>> = model_ops.iter().map(|m| obs.revision[m.op]).collect();
    let mut revisions: Vec<i64> = written.iter().flatten().copied().collect();
    revisions.sort_unstable();
    for ((m, span), written) in model_ops.iter().zip(spans.iter_mut()).zip(written) {
        let upto = match written {
            Some(rev) => rev - 1,
            None => match header_revision(&h.ops[m.op]) {
                Some(rev) => rev,
                None => continue,
            },
        };
        span.ordered = written.is_some();
        span.after = revisions.partition_point(|&r| r <= upto);
    }
}

/// What lost writes nobody observed may have done, per component key: the earliest call of
/// a lost put, and the calls of lost deletes.
struct Unseen {
    puts: HashMap<usize, Nanos>,
    deletes: HashMap<usize, Vec<Nanos>>,
}

impl Unseen {
    /// What they may have done to the keys `call` touches, before its op's `complete`.
    fn before(&self, component: &Component, call: &Call, complete: Nanos) -> Vec<Hidden> {
        let mut keys: Vec<usize> = named_keys(call)
            .into_iter()
            .filter_map(|k| component.index(k))
            .collect();
        if let Call::Range { start, end, .. } = call {
            keys.extend(component.covered(start, end));
        }
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter()
            .map(|key| Hidden {
                key,
                put: self.puts.get(&key).is_some_and(|&t| t < complete),
                deletes: self
                    .deletes
                    .get(&key)
                    .map_or(0, |ts| ts.iter().filter(|&&t| t < complete).count() as u32),
            })
            .filter(|h| h.put || h.deletes > 0)
            .collect()
    }
}

fn show_keys(keys: &[Key]) -> String {
    let mut shown: Vec<String> = keys.iter().take(5).map(|k| show(k)).collect();
    if keys.len() > 5 {
        shown.push(format!("+{} keys", keys.len() - 5));
    }
    format!("[{}]", shown.join(", "))
}

fn show_state(component: &Component, state: &State) -> String {
    let rev = |r: i64| {
        if r == 0 {
            "?".to_string()
        } else {
            r.to_string()
        }
    };
    let keys: Vec<String> = component
        .keys
        .iter()
        .zip(&state.keys)
        .map(|(key, ks)| match ks {
            None => format!("{} absent", show(key)),
            Some(KeyState {
                value,
                mod_revision,
                version,
                ..
            }) => format!(
                "{}={}@{} v{version}",
                show(key),
                show(&component.value_names[*value as usize]),
                rev(*mod_revision)
            ),
        })
        .collect();
    format!("revision {}, {}", state.revision, keys.join(", "))
}

#[cfg(test)]
mod tests;
