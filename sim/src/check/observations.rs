//! Facts several checkers share, derived once from a history: which op wrote each value, the
//! first observation of every written value, the revision each write created, and the writes
//! known to have happened, per key in revision order.
//!
//! The recorder makes every put's value unique, so a value names its write: an observation of
//! a value proves the write happened and pins its revision, even when the write's own answer
//! was lost. Observations come from read replies, prev_kvs, watch events and the final reads.
//!
//! Anomalies found while indexing (a value no op wrote, a failed op's value, one write seen
//! as two different kvs) are kept with the source that revealed them; each checker reports
//! those of its own sources.
//!
//! Keys of lock and election queues are left out: the services write them (an empty value per
//! lock, a campaign's value) under keys named after leases, not by the workload's unique-value
//! puts, and the [`super::mutex`] checker judges them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{acked_effects, header_revision, name, named_keys, possible_effects, show, show_kv};
use crate::history::{Call, EventKind, History, Key, Kv, Nanos, NodeIx, Outcome, Reply, TxnResult};

/// A write, named by its key and value.
pub(crate) type ValueKey = (Key, Vec<u8>);

/// Where a kv was observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// In the reply of `h.ops[i]`.
    Op(usize),
    /// In response `response` of `h.watches[watch]`.
    Watch { watch: usize, response: usize },
    /// In a member's final read.
    FinalRead(NodeIx),
}

impl Source {
    pub(crate) fn describe(self, h: &History) -> String {
        match self {
            Source::Op(i) => name(&h.ops[i]),
            Source::Watch { watch, response } => {
                format!("watch {} response {response}", h.watches[watch].id)
            }
            Source::FinalRead(node) => format!("n{node}'s final read"),
        }
    }

    /// When the observation was made.
    fn time(self, h: &History) -> Nanos {
        match self {
            Source::Op(i) => h.ops[i].complete,
            Source::Watch { watch, response } => h.watches[watch].responses[response].at,
            Source::FinalRead(_) => Nanos::MAX - 1,
        }
    }
}

/// A write known to have happened at a revision.
#[derive(Clone, Debug)]
pub(crate) struct KnownWrite {
    /// Observations of the op in `h.ops`.
    pub op: usize,
    /// The value put, or None for a delete.
    pub value: Option<Vec<u8>>,
    pub lease: i64,
}

pub(crate) struct Observations {
    /// The op (index in `h.ops`) that puts each value, whatever its outcome.
    pub writer: HashMap<ValueKey, usize>,
    /// The first observation of each written value.
    pub observed: HashMap<ValueKey, (Kv, Source)>,
    /// Per op: the revision its write created (from its reply, or from an observation when the
    /// answer was lost).
    pub revision: Vec<Option<i64>>,
    /// Per op: the earliest time one of its writes was observed.
    pub first_seen: Vec<Option<Nanos>>,
    /// Writes known to have happened, per key by revision: `Ok` ops' writes and the puts of
    /// `Unknown` ops whose values were observed.
    pub known: BTreeMap<Key, BTreeMap<i64, KnownWrite>>,
    /// Every key any op named or any read returned.
    pub keys: BTreeSet<Key>,
    /// What indexing found wrong, by the source that revealed it.
    pub anomalies: Vec<(Source, String)>,
    /// Prefixes of the lock and election queues, whose keys are not indexed.
    queues: Vec<Key>,
}

impl Observations {
    pub(crate) fn new(h: &History) -> Observations {
        let mut obs = Observations {
            writer: HashMap::new(),
            observed: HashMap::new(),
            revision: vec![None; h.ops.len()],
            first_seen: vec![None; h.ops.len()],
            known: BTreeMap::new(),
            keys: BTreeSet::new(),
            anomalies: Vec::new(),
            queues: super::mutex::queue_prefixes(h),
        };
        for (i, op) in h.ops.iter().enumerate() {
            obs.keys.extend(named_keys(&op.call).into_iter().cloned());
            for e in possible_effects(&op.call) {
                if let Some((value, _)) = e.put {
                    obs.writer.insert((e.key.clone(), value.to_vec()), i);
                }
            }
            if let Some(rev) = header_revision(op) {
                let effects = acked_effects(op);
                if !effects.is_empty() {
                    obs.revision[i] = Some(rev);
                }
                for e in effects {
                    obs.add_known(e.key, rev, i, e.put);
                }
            }
        }
        for (i, op) in h.ops.iter().enumerate() {
            for kv in op_observations(&op.outcome) {
                obs.observe(h, kv, Source::Op(i));
            }
        }
        for (node, kvs) in &h.final_reads {
            for kv in kvs {
                obs.observe(h, kv, Source::FinalRead(*node));
            }
        }
        for (w, watch) in h.watches.iter().enumerate() {
            for (r, resp) in watch.responses.iter().enumerate() {
                let source = Source::Watch {
                    watch: w,
                    response: r,
                };
                for ev in &resp.events {
                    if ev.kind == EventKind::Put {
                        obs.observe(h, &ev.kv, source);
                    }
                    if let Some(prev) = &ev.prev {
                        obs.observe(h, prev, source);
                    }
                }
            }
        }
        obs.add_observed_unknown_puts(h);
        obs
    }

    fn add_known(&mut self, key: &Key, revision: i64, op: usize, put: Option<(&[u8], i64)>) {
        let write = KnownWrite {
            op,
            value: put.map(|(v, _)| v.to_vec()),
            lease: put.map_or(0, |(_, l)| l),
        };
        // Two ops at one revision are the linearizability checker's to report; keep the first.
        self.known
            .entry(key.clone())
            .or_default()
            .entry(revision)
            .or_insert(write);
    }

    fn observe(&mut self, h: &History, kv: &Kv, source: Source) {
        if self.queues.iter().any(|q| kv.key.starts_with(q)) {
            return;
        }
        self.keys.insert(kv.key.clone());
        let vk = (kv.key.clone(), kv.value.clone());
        let Some(&w) = self.writer.get(&vk) else {
            let message = format!(
                "{} shows {}={}, a value no op wrote",
                source.describe(h),
                show(&kv.key),
                show_kv(kv)
            );
            self.anomalies.push((source, message));
            return;
        };
        let writer = &h.ops[w];
        if let Outcome::Failed(why) = &writer.outcome {
            let message = format!(
                "{} shows {}={}, written by {} which failed ({why})",
                source.describe(h),
                show(&kv.key),
                show_kv(kv),
                name(writer)
            );
            self.anomalies.push((source, message));
        }
        let acked = acked_effects(writer);
        let ran = acked
            .iter()
            .any(|e| e.key == &kv.key && e.put.is_some_and(|(v, _)| v == kv.value));
        if matches!(writer.outcome, Outcome::Ok(_)) && !ran {
            let message = format!(
                "{} shows {}={}, which {} did not write (its other branch ran)",
                source.describe(h),
                show(&kv.key),
                show_kv(kv),
                name(writer)
            );
            self.anomalies.push((source, message));
        }
        if let (true, Some(rev)) = (ran, self.revision[w]) {
            if rev != kv.mod_revision {
                let message = format!(
                    "{} shows {}={}, but {} wrote it at revision {rev}",
                    source.describe(h),
                    show(&kv.key),
                    show_kv(kv),
                    name(writer)
                );
                self.anomalies.push((source, message));
            }
        }
        let t = source.time(h);
        let seen = &mut self.first_seen[w];
        *seen = Some(seen.map_or(t, |s| s.min(t)));
        match self.observed.get(&vk) {
            None => {
                self.observed.insert(vk, (kv.clone(), source));
            }
            Some((first, first_source)) if first != kv => {
                let message = format!(
                    "one write of {}={} seen differently: {} by {}, {} by {}",
                    show(&kv.key),
                    show(&kv.value),
                    describe_kv(first),
                    first_source.describe(h),
                    describe_kv(kv),
                    source.describe(h)
                );
                self.anomalies.push((source, message));
            }
            Some(_) => {}
        }
    }

    /// An `Unknown` op whose put was observed took effect, at the observed revision.
    fn add_observed_unknown_puts(&mut self, h: &History) {
        for (i, op) in h.ops.iter().enumerate() {
            if !matches!(op.outcome, Outcome::Unknown(_)) {
                continue;
            }
            let effects = possible_effects(&op.call);
            let mut revision: Option<i64> = None;
            for e in &effects {
                let Some((value, _)) = e.put else { continue };
                let Some((kv, _)) = self.observed.get(&(e.key.clone(), value.to_vec())) else {
                    continue;
                };
                match revision {
                    None => revision = Some(kv.mod_revision),
                    Some(r) if r != kv.mod_revision => {
                        let message = format!(
                            "{}'s writes were seen at two revisions, {r} and {}",
                            name(op),
                            kv.mod_revision
                        );
                        self.anomalies.push((Source::Op(i), message));
                    }
                    Some(_) => {}
                }
            }
            let Some(rev) = revision else { continue };
            self.revision[i] = Some(rev);
            // Only the observed branch's puts are certain; its deletes may have found nothing.
            for e in effects {
                let Some((value, _)) = e.put else { continue };
                if self.observed.contains_key(&(e.key.clone(), value.to_vec()))
                    || same_branch_observed(&op.call, e.key, value, &self.observed)
                {
                    self.add_known(e.key, rev, i, e.put);
                }
            }
        }
    }

    /// The latest known write to `key` at or before `revision`, with its revision.
    pub(crate) fn latest_at(&self, key: &[u8], revision: i64) -> Option<(i64, &KnownWrite)> {
        let by_rev = self.known.get(key)?;
        by_rev.range(..=revision).next_back().map(|(r, w)| (*r, w))
    }
}

/// Whether a txn's branch holding the put `key=value` also holds an observed put.
fn same_branch_observed(
    call: &Call,
    key: &Key,
    value: &[u8],
    observed: &HashMap<ValueKey, (Kv, Source)>,
) -> bool {
    let Call::Txn {
        success, failure, ..
    } = call
    else {
        return false;
    };
    [success, failure].into_iter().any(|branch| {
        let puts: Vec<(&Key, &[u8])> = branch
            .iter()
            .filter_map(|op| match op {
                crate::history::TxnOp::Put { key, value, .. } => Some((key, value.as_slice())),
                _ => None,
            })
            .collect();
        puts.contains(&(key, value))
            && puts
                .iter()
                .any(|(k, v)| observed.contains_key(&((*k).clone(), v.to_vec())))
    })
}

fn describe_kv(kv: &Kv) -> String {
    format!(
        "mod {} create {} version {} lease {}",
        kv.mod_revision, kv.create_revision, kv.version, kv.lease
    )
}

/// Every kv an op's reply shows: read results and prev_kvs.
fn op_observations(outcome: &Outcome) -> Vec<&Kv> {
    let Outcome::Ok(reply) = outcome else {
        return Vec::new();
    };
    match reply {
        Reply::Get { kvs, .. } => kvs.iter().collect(),
        Reply::Put { prev, .. } => prev.iter().collect(),
        Reply::Delete { prev, .. } => prev.iter().collect(),
        Reply::Txn { results, .. } => results
            .iter()
            .flat_map(|r| match r {
                TxnResult::Get { kvs } => kvs.iter().collect::<Vec<_>>(),
                TxnResult::Put { prev } => prev.iter().collect(),
                TxnResult::Delete { prev, .. } => prev.iter().collect(),
            })
            .collect(),
        _ => Vec::new(),
    }
}
