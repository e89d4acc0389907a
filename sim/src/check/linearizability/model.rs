//! The sequential model of etcd's KV store over one component's keys, and the translation of
//! history ops into its inputs and expected outputs.
//!
//! State: each key's kv (value, mod_revision, create_revision, version, lease) or absent, and
//! the highest revision the ops applied so far have pinned. Revisions are etcd's total order,
//! so the model requires a write's revision to exceed it and a read's header revision to reach
//! it: the linearization must agree with the revision order, not merely exist.
//!
//! Unknowns the model allows, never rejects:
//! - A write whose answer was lost and whose value nobody observed has an unknown revision
//!   (stored as 0); a read that later shows its create_revision binds it.
//! - A key attached to a lease may vanish at any moment (expiry or revoke); the deleting
//!   revision is not known, so it is not checked.
//! - Lost writes nobody observed are left out of the search (trying each everywhere is what
//!   makes it explode); the ops after their call are judged as if any of their effects may
//!   have slipped in unseen, at any time:
//!   - a key such a write may have put is *shadowed*: its version may be higher and its
//!     create_revision lower than the model's, a delete may find it present, and a compare on
//!     it may go either way. Values and mod_revisions stay exact: an unseen value is never
//!     shown.
//!   - a key such a write may have deleted may vanish, once per such write: the state counts
//!     the lost deletes used, so two vanishings need two lost deletes. A lost put with a lease
//!     counts as one such delete too (its lease may have expired after it landed).

use std::collections::HashMap;

use crate::history::{
    Call, Compare, CompareResult, Key, Kv, Outcome, Reply, Target, TxnOp, TxnResult,
};

/// A value named by its position in the component's value table.
pub(super) type ValueId = u32;

/// A value no op of the component writes: it never matches the model.
pub(super) const FOREIGN: ValueId = ValueId::MAX;

/// A key's kv in the model, or as a reply showed it. A revision of 0 is "not known".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct KeyState {
    pub value: ValueId,
    pub mod_revision: i64,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct State {
    /// The highest revision pinned by the ops applied so far (writes' and reads' revisions).
    pub revision: i64,
    pub keys: Vec<Option<KeyState>>,
    /// Per key, how many unseen lost deletes the ops applied so far used to explain a vanishing.
    pub lost_deletes_used: Vec<u32>,
}

impl State {
    pub(super) fn empty(keys: usize) -> State {
        State {
            revision: 0,
            keys: vec![None; keys],
            lost_deletes_used: vec![0; keys],
        }
    }
}

/// What unseen lost writes may have done to one key before an op.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Hidden {
    pub key: usize,
    /// A lost put of the key may have happened.
    pub put: bool,
    /// How many lost deletes of the key may have happened.
    pub deletes: u32,
}

#[derive(Debug)]
pub(super) enum Cmp {
    /// `field(key) result operand`; a missing key's field is 0, as in etcd.
    Number {
        key: usize,
        field: Field,
        result: CompareResult,
        operand: i64,
    },
    /// A value compare: the key's values (interned, sorted) that satisfy it. A missing key
    /// fails every value compare, as in etcd.
    Value { key: usize, holds: Vec<ValueId> },
}

impl Cmp {
    fn key(&self) -> usize {
        match self {
            Cmp::Number { key, .. } | Cmp::Value { key, .. } => *key,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Field {
    Version,
    CreateRevision,
    ModRevision,
    Lease,
}

#[derive(Debug)]
pub(super) enum Act {
    Get(usize),
    Put {
        key: usize,
        value: ValueId,
        lease: i64,
    },
    Delete(usize),
}

/// What the reply says an act did; prev_kvs are checked only where the reply carries them.
#[derive(Debug)]
pub(super) enum ActResult {
    Get(Option<KeyState>),
    Put {
        prev: Option<Option<KeyState>>,
    },
    Delete {
        deleted: i64,
        prev: Option<Option<KeyState>>,
    },
}

#[derive(Debug)]
pub(super) enum Input {
    /// A linearizable read of these keys (a range covers every component key inside it).
    Read(Vec<usize>),
    /// Puts and deletes are single-act txns without compares.
    Txn {
        compares: Vec<Cmp>,
        success: Vec<Act>,
        failure: Vec<Act>,
    },
}

#[derive(Debug)]
pub(super) enum Output {
    Read {
        revision: i64,
        kvs: Vec<Option<KeyState>>,
    },
    Txn {
        revision: i64,
        succeeded: bool,
        results: Vec<ActResult>,
    },
    /// The answer was lost; `revision` is known if one of the op's values was observed.
    Lost { revision: Option<i64> },
}

#[derive(Debug)]
pub(super) struct ModelOp {
    /// Index in `h.ops`.
    pub op: usize,
    pub input: Input,
    pub output: Output,
    /// What unseen lost writes may have done to the keys this op touches.
    pub hidden: Vec<Hidden>,
}

impl ModelOp {
    /// How many keys the op touches if it is a txn (reads handle each key on its own).
    pub(super) fn keys_touched(&self) -> usize {
        match &self.input {
            Input::Read(_) => 0,
            Input::Txn {
                compares,
                success,
                failure,
            } => touched(compares, success, failure).len(),
        }
    }

    fn shadowed(&self, key: usize) -> bool {
        self.hidden.iter().any(|h| h.key == key && h.put)
    }

    fn lost_deletes(&self, key: usize) -> u32 {
        self.hidden
            .iter()
            .find(|h| h.key == key)
            .map_or(0, |h| h.deletes)
    }

    /// Removes present key `key` from `state` if something may have deleted it unseen.
    fn vanish(&self, state: &mut State, key: usize) -> bool {
        let Some(ks) = state.keys[key] else {
            return false;
        };
        // A lease may expire or be revoked at any time (the lease checker bounds when).
        if ks.lease == 0 {
            if state.lost_deletes_used[key] >= self.lost_deletes(key) {
                return false;
            }
            state.lost_deletes_used[key] += 1;
        }
        state.keys[key] = None;
        true
    }
}

/// One component: its keys (sorted) and the values its ops put.
pub(super) struct Component {
    pub keys: Vec<Key>,
    key_ix: HashMap<Key, usize>,
    values: HashMap<(usize, Vec<u8>), ValueId>,
    pub value_names: Vec<Vec<u8>>,
}

impl Component {
    pub(super) fn new(keys: Vec<Key>) -> Component {
        let key_ix = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        Component {
            keys,
            key_ix,
            values: HashMap::new(),
            value_names: Vec::new(),
        }
    }

    fn key(&self, key: &Key) -> usize {
        self.key_ix[key]
    }

    fn intern(&mut self, key: usize, value: &[u8]) -> ValueId {
        let next = self.value_names.len() as ValueId;
        let id = *self.values.entry((key, value.to_vec())).or_insert(next);
        if id == next {
            self.value_names.push(value.to_vec());
        }
        id
    }

    fn value(&self, key: usize, value: &[u8]) -> ValueId {
        self.values
            .get(&(key, value.to_vec()))
            .copied()
            .unwrap_or(FOREIGN)
    }

    fn seen(&self, kv: &Kv) -> Option<KeyState> {
        let key = *self.key_ix.get(&kv.key)?;
        Some(KeyState {
            value: self.value(key, &kv.value),
            mod_revision: kv.mod_revision,
            create_revision: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
        })
    }

    /// The component's index of `key`, if it has the key.
    pub(super) fn index(&self, key: &Key) -> Option<usize> {
        self.key_ix.get(key).copied()
    }

    /// The component keys inside `[start, end)`.
    pub(super) fn covered(&self, start: &[u8], end: &[u8]) -> Vec<usize> {
        (0..self.keys.len())
            .filter(|&i| super::super::in_range(&self.keys[i], start, end))
            .collect()
    }

    /// Interns every value `call` puts; call before translating any op that reads them.
    pub(super) fn intern_puts(&mut self, call: &Call) {
        for e in super::super::possible_effects(call) {
            if let Some((value, _)) = e.put {
                let key = self.key(e.key);
                self.intern(key, value);
            }
        }
    }

    /// The model's view of history op `op`, or None if it has no effect the model can see.
    /// `lost_revision` is the revision observed for a lost write.
    pub(super) fn translate(
        &self,
        op: usize,
        call: &Call,
        outcome: &Outcome,
        lost_revision: Option<i64>,
        hidden: Vec<Hidden>,
    ) -> Option<ModelOp> {
        let input = match call {
            Call::Get { key, .. } => Input::Read(vec![self.key(key)]),
            Call::Range { start, end, .. } => Input::Read(self.covered(start, end)),
            Call::Put {
                key, value, lease, ..
            } => Input::Txn {
                compares: Vec::new(),
                success: vec![Act::Put {
                    key: self.key(key),
                    value: self.value(self.key(key), value),
                    lease: *lease,
                }],
                failure: Vec::new(),
            },
            Call::Delete { key, .. } => Input::Txn {
                compares: Vec::new(),
                success: vec![Act::Delete(self.key(key))],
                failure: Vec::new(),
            },
            Call::Txn {
                compares,
                success,
                failure,
            } => Input::Txn {
                compares: compares.iter().map(|c| self.compare(c)).collect(),
                success: success.iter().map(|a| self.act(a)).collect(),
                failure: failure.iter().map(|a| self.act(a)).collect(),
            },
            _ => return None,
        };
        let output = match outcome {
            Outcome::Failed(_) => return None,
            Outcome::Unknown(_) => {
                if matches!(input, Input::Read(_)) {
                    return None;
                }
                Output::Lost {
                    revision: lost_revision,
                }
            }
            Outcome::Ok(reply) => self.output(call, &input, reply)?,
        };
        Some(ModelOp {
            op,
            input,
            output,
            hidden,
        })
    }

    fn compare(&self, c: &Compare) -> Cmp {
        let key = self.key(&c.key);
        let number = |field, operand| Cmp::Number {
            key,
            field,
            result: c.result,
            operand,
        };
        match &c.target {
            Target::Version(n) => number(Field::Version, *n),
            Target::CreateRevision(n) => number(Field::CreateRevision, *n),
            Target::ModRevision(n) => number(Field::ModRevision, *n),
            Target::Lease(n) => number(Field::Lease, *n),
            Target::Value(operand) => {
                let mut holds: Vec<ValueId> = self
                    .values
                    .iter()
                    .filter(|((k, v), _)| *k == key && c.result.holds(v.as_slice(), operand))
                    .map(|(_, id)| *id)
                    .collect();
                holds.sort_unstable();
                Cmp::Value { key, holds }
            }
        }
    }

    fn act(&self, a: &TxnOp) -> Act {
        match a {
            TxnOp::Get { key } => Act::Get(self.key(key)),
            TxnOp::Put { key, value, lease } => Act::Put {
                key: self.key(key),
                value: self.value(self.key(key), value),
                lease: *lease,
            },
            TxnOp::Delete { key } => Act::Delete(self.key(key)),
        }
    }

    /// The expected output; None if the reply does not fit the call (a recorder bug).
    fn output(&self, call: &Call, input: &Input, reply: &Reply) -> Option<Output> {
        let one = |kvs: &[Kv], key: usize| {
            kvs.iter()
                .find(|kv| kv.key == self.keys[key])
                .and_then(|kv| self.seen(kv))
        };
        Some(match (call, input, reply) {
            (_, Input::Read(keys), Reply::Get { revision, kvs }) => Output::Read {
                revision: *revision,
                kvs: keys.iter().map(|&k| one(kvs, k)).collect(),
            },
            (Call::Put { prev_kv, .. }, _, Reply::Put { revision, prev }) => Output::Txn {
                revision: *revision,
                succeeded: true,
                results: vec![ActResult::Put {
                    prev: prev_kv.then(|| prev.as_ref().and_then(|kv| self.seen(kv))),
                }],
            },
            (
                Call::Delete { prev_kv, .. },
                _,
                Reply::Delete {
                    revision,
                    deleted,
                    prev,
                },
            ) => Output::Txn {
                revision: *revision,
                succeeded: true,
                results: vec![ActResult::Delete {
                    deleted: *deleted,
                    prev: prev_kv.then(|| prev.first().and_then(|kv| self.seen(kv))),
                }],
            },
            (
                Call::Txn { .. },
                _,
                Reply::Txn {
                    revision,
                    succeeded,
                    results,
                },
            ) => Output::Txn {
                revision: *revision,
                succeeded: *succeeded,
                results: results.iter().map(|r| self.result(r)).collect(),
            },
            _ => return None,
        })
    }

    fn result(&self, r: &TxnResult) -> ActResult {
        match r {
            TxnResult::Get { kvs } => ActResult::Get(kvs.first().and_then(|kv| self.seen(kv))),
            // Txn ops carry no prev_kv flag: a prev is checked only when the reply has one.
            TxnResult::Put { prev } => ActResult::Put {
                prev: prev.as_ref().map(|kv| self.seen(kv)),
            },
            TxnResult::Delete { deleted, prev } => ActResult::Delete {
                deleted: *deleted,
                prev: prev.first().map(|kv| self.seen(kv)),
            },
        }
    }
}

/// Pushes every state `op` may lead to from `state`.
pub(super) fn step(state: &State, op: &ModelOp, out: &mut Vec<State>) {
    match (&op.input, &op.output) {
        (Input::Read(keys), Output::Read { revision, kvs }) => {
            out.extend(read(state, op, keys, *revision, kvs));
        }
        (
            Input::Txn {
                compares,
                success,
                failure,
            },
            output,
        ) => {
            // A touched key that may vanish unseen may have vanished just before: try both.
            let mortal: Vec<usize> = touched(compares, success, failure)
                .into_iter()
                .filter(|&k| op.vanish(&mut state.clone(), k))
                .collect();
            assert!(
                mortal.len() <= super::TXN_KEYS_MAX,
                "op {}: {} keys may vanish, the search takes at most {}",
                op.op,
                mortal.len(),
                super::TXN_KEYS_MAX
            );
            for mask in 0u32..(1 << mortal.len()) {
                let mut pre = state.clone();
                for (bit, &k) in mortal.iter().enumerate() {
                    if mask & (1 << bit) != 0 {
                        op.vanish(&mut pre, k);
                    }
                }
                for succeeded in branches(&pre, op, compares, output) {
                    let acts = if succeeded { success } else { failure };
                    if let Some(next) = apply(&pre, op, acts, output) {
                        if !out.contains(&next) {
                            out.push(next);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

fn read(
    state: &State,
    op: &ModelOp,
    keys: &[usize],
    revision: i64,
    kvs: &[Option<KeyState>],
) -> Option<State> {
    if revision < state.revision {
        return None;
    }
    let mut next = state.clone();
    next.revision = revision;
    for (&k, seen) in keys.iter().zip(kvs) {
        observe(&mut next, op, k, *seen)?;
    }
    Some(next)
}

/// Updates key `k` of `state` to what a read shows (`seen`), or None if it cannot show that.
fn observe(state: &mut State, op: &ModelOp, k: usize, seen: Option<KeyState>) -> Option<()> {
    match (state.keys[k], seen) {
        (None, None) => Some(()),
        (Some(_), None) => op.vanish(state, k).then_some(()),
        (Some(m), Some(s)) => {
            state.keys[k] = Some(matches(m, s, op.shadowed(k))?);
            Some(())
        }
        (None, Some(_)) => None,
    }
}

/// `model` with its unknown revisions bound to those `seen` shows, if the two agree. On a
/// shadowed key unseen puts may have raised the version and moved the creation earlier.
fn matches(model: KeyState, seen: KeyState, shadowed: bool) -> Option<KeyState> {
    let agree = |m: i64, s: i64| m == 0 || m == s;
    let (version, create) = if shadowed {
        (
            seen.version >= model.version,
            model.create_revision == 0 || seen.create_revision <= model.create_revision,
        )
    } else {
        (
            seen.version == model.version,
            agree(model.create_revision, seen.create_revision),
        )
    };
    let same = model.value == seen.value
        && model.lease == seen.lease
        && agree(model.mod_revision, seen.mod_revision)
        && version
        && create;
    same.then_some(seen)
}

/// Whether a prev_kv the reply carries agrees with the model (binding unknown revisions).
fn check_prev(
    model: Option<KeyState>,
    prev: &Option<Option<KeyState>>,
    shadowed: bool,
) -> Option<Option<KeyState>> {
    match prev {
        None => Some(model),
        Some(None) => model.is_none().then_some(None),
        Some(Some(p)) => model.and_then(|m| matches(m, *p, shadowed)).map(Some),
    }
}

fn touched(compares: &[Cmp], success: &[Act], failure: &[Act]) -> Vec<usize> {
    let mut keys: Vec<usize> = compares
        .iter()
        .map(Cmp::key)
        .chain(success.iter().chain(failure).map(|a| match a {
            Act::Get(k) | Act::Delete(k) | Act::Put { key: k, .. } => *k,
        }))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The branches the txn may take: the compares decide, unless an unknown revision or a
/// shadowed key makes one undecidable; a reply's `succeeded` must agree with the compares.
fn branches(state: &State, op: &ModelOp, compares: &[Cmp], output: &Output) -> Vec<bool> {
    let shadowed = |k: usize| op.shadowed(k);
    let mut verdict = Some(true);
    for c in compares {
        let this = match c {
            // Present before or not, an unseen put leaves the key present.
            Cmp::Number {
                key,
                field: Field::ModRevision,
                result: CompareResult::Equal,
                operand: 0,
            } if shadowed(*key) => state.keys[*key].is_some().then_some(false),
            c if shadowed(c.key()) => None,
            Cmp::Number {
                key,
                field,
                result,
                operand,
            } => match state.keys[*key] {
                None => Some(result.holds(&0, operand)),
                Some(ks) => {
                    let found = match field {
                        Field::Version => ks.version,
                        Field::CreateRevision => ks.create_revision,
                        Field::ModRevision => ks.mod_revision,
                        Field::Lease => ks.lease,
                    };
                    let unknown =
                        found == 0 && matches!(field, Field::CreateRevision | Field::ModRevision);
                    match unknown {
                        // A lost write's revision: known only to be positive.
                        true => unknown_revision(*result, *operand),
                        false => Some(result.holds(&found, operand)),
                    }
                }
            },
            Cmp::Value { key, holds } => {
                Some(state.keys[*key].is_some_and(|ks| holds.binary_search(&ks.value).is_ok()))
            }
        };
        verdict = match (verdict, this) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        };
    }
    match output {
        Output::Txn { succeeded, .. } => {
            if verdict.is_none_or(|v| v == *succeeded) {
                vec![*succeeded]
            } else {
                Vec::new()
            }
        }
        _ => verdict.map_or(vec![true, false], |v| vec![v]),
    }
}

/// A compare of a revision known only to be positive: decided when the operand is not.
fn unknown_revision(result: CompareResult, operand: i64) -> Option<bool> {
    (operand <= 0).then(|| result.holds(&1, &operand))
}

/// Applies one branch's acts, checking each result the reply carries.
fn apply(pre: &State, op: &ModelOp, acts: &[Act], output: &Output) -> Option<State> {
    let shadowed = |k: usize| op.shadowed(k);
    let (new_revision, results) = match output {
        Output::Txn {
            revision, results, ..
        } => {
            if results.len() != acts.len() {
                return None;
            }
            (Some(*revision), Some(results))
        }
        Output::Lost { revision } => (*revision, None),
        Output::Read { .. } => return None,
    };
    let mut next = pre.clone();
    let mut wrote = false;
    for (i, act) in acts.iter().enumerate() {
        let result = results.map(|r| &r[i]);
        match *act {
            Act::Get(k) => {
                if let Some(result) = result {
                    let ActResult::Get(seen) = result else {
                        return None;
                    };
                    observe(&mut next, op, k, *seen)?;
                }
            }
            Act::Put { key, value, lease } => {
                let prev = match result {
                    None => next.keys[key],
                    Some(ActResult::Put { prev }) => {
                        check_prev(next.keys[key], prev, shadowed(key))?
                    }
                    Some(_) => return None,
                };
                let rev = new_revision.unwrap_or(0);
                next.keys[key] = Some(KeyState {
                    value,
                    mod_revision: rev,
                    create_revision: prev.map_or(rev, |p| p.create_revision),
                    version: prev.map_or(1, |p| p.version + 1),
                    lease,
                });
                wrote = true;
            }
            Act::Delete(k) => {
                let mut deleted = i64::from(next.keys[k].is_some());
                if let Some(result) = result {
                    let ActResult::Delete {
                        deleted: reply_deleted,
                        prev,
                    } = result
                    else {
                        return None;
                    };
                    // An unseen put may have recreated a shadowed key.
                    let unseen = *reply_deleted == 1 && deleted == 0 && shadowed(k);
                    if *reply_deleted != deleted && !unseen {
                        return None;
                    }
                    if !unseen {
                        check_prev(next.keys[k], prev, shadowed(k))?;
                    }
                    deleted = *reply_deleted;
                }
                if deleted > 0 {
                    next.keys[k] = None;
                    wrote = true;
                }
            }
        }
    }
    // etcd orders every write by its revision and answers reads at the current one.
    match output {
        Output::Txn { revision, .. } => {
            let ordered = if wrote {
                *revision > pre.revision
            } else {
                *revision >= pre.revision
            };
            if !ordered {
                return None;
            }
            next.revision = *revision;
        }
        Output::Lost {
            revision: Some(revision),
        } => {
            // Its value was observed, so it wrote.
            if !wrote || *revision <= pre.revision {
                return None;
            }
            next.revision = *revision;
        }
        _ => {}
    }
    Some(next)
}
