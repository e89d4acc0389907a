//! The Wing–Gong–Lowe search for a linearization, as porcupine runs it: walk the ops' call and
//! return entries in time order; at a call, try to apply the op to the model state and, if the
//! pair (set of ops applied, state) was never reached before, lift the op out of the list and
//! restart from the head; at the return of an op not yet applied, undo the last choice.
//!
//! Extensions over porcupine:
//! - The step is nondeterministic (it yields every possible next state); each is a choice the
//!   search may undo and replace by the next.
//! - An op whose outcome is unknown has its return at [`NEVER`]: it may be applied at any point
//!   after its call, or never. Reaching such a return means every op left may never have
//!   happened, which is a linearization.
//! - Visited pairs are kept as 128-bit fingerprints (a Zobrist hash of the set, SipHash of the
//!   state), so memory is 16 bytes a pair. A collision could only prune a path, never invent
//!   one; at the step budget its probability is below 2^-80.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use crate::history::Nanos;

/// The return time of an op that may never have taken effect.
pub(super) const NEVER: Nanos = Nanos::MAX;

/// An op's real-time interval and its place in revision order.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Span {
    pub invoke: Nanos,
    /// [`NEVER`] for an op that may never have happened.
    pub complete: Nanos,
    /// The op is a write whose revision is known. The model applies such writes in revision
    /// order only, so the ones applied are always the first few by revision.
    pub ordered: bool,
    /// How many ordered writes (the first by revision) must be applied before this op.
    pub after: usize,
}

#[derive(Debug)]
pub(super) enum Verdict<S> {
    Linearizable,
    /// No linearization exists. At the deepest point the search reached, `linearized` ops were
    /// applied, `order` lists them, and op `stuck` had to be placed next but no state allowed it.
    Stuck {
        order: Vec<usize>,
        stuck: usize,
        state: S,
    },
    /// The step budget ran out first: no verdict.
    Exhausted,
}

struct Frame<S> {
    op: usize,
    before: S,
    alternatives: Vec<S>,
    /// The scan's pass and skip flag when the op was applied, to resume the scan after it.
    optional_pass: bool,
    skipped: bool,
    /// The op changed nothing, so applying it was the best choice here (see [`search`]).
    forced: bool,
}

/// The entry list: entries `2i` (call of op i) and `2i + 1` (its return), doubly linked in
/// time order between two sentinels, so lifting an op and undoing it are O(1).
struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
    tail: usize,
}

impl Entries {
    fn new(spans: &[Span]) -> Entries {
        let n = spans.len();
        let mut order: Vec<usize> = (0..2 * n).collect();
        // At equal times calls come first: ops that touch in time count as concurrent.
        order.sort_by_key(|&e| {
            let span = spans[e / 2];
            let t = if e % 2 == 0 {
                span.invoke
            } else {
                span.complete
            };
            (t, e % 2, e / 2)
        });
        let (head, tail) = (2 * n, 2 * n + 1);
        let mut next = vec![tail; 2 * n + 2];
        let mut prev = vec![head; 2 * n + 2];
        let mut last = head;
        for &e in &order {
            next[last] = e;
            prev[e] = last;
            last = e;
        }
        next[last] = tail;
        prev[tail] = last;
        Entries {
            next,
            prev,
            head,
            tail,
        }
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        self.prev[n] = e;
    }

    fn lift(&mut self, op: usize) {
        self.unlink(2 * op);
        self.unlink(2 * op + 1);
    }

    /// Undoes [`Entries::lift`]; lifts must be undone in reverse order.
    fn unlift(&mut self, op: usize) {
        self.relink(2 * op + 1);
        self.relink(2 * op);
    }
}

/// Searches for a linearization of the ops `spans` from `init`. `step(state, op, out)` pushes
/// every state the op may lead to (none: the op cannot happen in `state`). Gives up after
/// `budget` steps.
///
/// At each point the ops that must happen are tried before those that may never have
/// happened (a second pass over the same entries), so a linearizable history is found without
/// first trying lost ops everywhere. A lost op that would not change the state is not applied:
/// not applying it leaves every choice open. Conversely a required op that would change
/// nothing (a read at the current revision) is applied at once and never skipped instead: in
/// any linearization from here it can be moved to now, since every op that returned before
/// its call is placed already (so real-time order holds) and, by a property the step must
/// have, an op that changes nothing now changes nothing wherever it could still apply later
/// (in the KV model every change either raises the revision, which such an op then no longer
/// matches, or cannot be undone without raising it). So if no linearization follows it, none
/// follows from here at all.
///
/// An op is not tried before the ordered writes it must follow ([`Span::after`]): the model
/// would accept it, then refuse those writes later, after a fruitless search in between.
pub(super) fn search<S: Clone + Hash + Eq>(
    spans: &[Span],
    init: S,
    budget: u64,
    mut step: impl FnMut(&S, usize, &mut Vec<S>),
) -> (Verdict<S>, u64) {
    let mut entries = Entries::new(spans);
    let mut stack: Vec<Frame<S>> = Vec::new();
    let mut state = init;
    let mut set: u128 = 0;
    let mut seen: HashSet<u128> = HashSet::new();
    let mut deepest: Option<(Vec<usize>, usize, S)> = None;
    let mut steps = 0u64;
    let mut optional_pass = false;
    let mut skipped = false;
    let mut ordered_applied = 0usize;
    let mut e = entries.next[entries.head];
    loop {
        steps += 1;
        if steps > budget {
            return (Verdict::Exhausted, steps);
        }
        if e == entries.tail {
            return (Verdict::Linearizable, steps);
        }
        let op = e / 2;
        let optional = spans[op].complete == NEVER;
        if e.is_multiple_of(2) {
            if optional != optional_pass {
                skipped |= optional;
                e = entries.next[e];
                continue;
            }
            if ordered_applied < spans[op].after {
                e = entries.next[e];
                continue;
            }
            let mut next_states = Vec::new();
            step(&state, op, &mut next_states);
            let mut forced = false;
            if optional {
                next_states.retain(|s| s != &state);
            } else if next_states.contains(&state) {
                next_states = vec![state.clone()];
                forced = true;
            }
            let set_after = set ^ zobrist(op);
            match pick(&mut next_states, set_after, &mut seen) {
                Some(chosen) => {
                    let before = std::mem::replace(&mut state, chosen);
                    stack.push(Frame {
                        op,
                        before,
                        alternatives: next_states,
                        optional_pass,
                        skipped,
                        forced,
                    });
                    set = set_after;
                    entries.lift(op);
                    ordered_applied += usize::from(spans[op].ordered);
                    (optional_pass, skipped) = (false, false);
                    e = entries.next[entries.head];
                }
                None => e = entries.next[e],
            }
            continue;
        }
        if optional {
            // Only ops that may never have happened are left.
            return (Verdict::Linearizable, steps);
        }
        if !optional_pass && skipped {
            optional_pass = true;
            e = entries.next[entries.head];
            continue;
        }
        if deepest.as_ref().is_none_or(|d| stack.len() > d.0.len()) {
            let order = stack.iter().map(|f| f.op).collect();
            deepest = Some((order, op, state.clone()));
        }
        // Op `op` returned before it could be placed: undo the last choice.
        loop {
            let Some(mut frame) = stack.pop() else {
                let (order, stuck, state) = deepest.expect("set before backtracking");
                return (
                    Verdict::Stuck {
                        order,
                        stuck,
                        state,
                    },
                    steps,
                );
            };
            entries.unlift(frame.op);
            ordered_applied -= usize::from(spans[frame.op].ordered);
            set ^= zobrist(frame.op);
            state = frame.before;
            let set_after = set ^ zobrist(frame.op);
            if let Some(chosen) = pick(&mut frame.alternatives, set_after, &mut seen) {
                let before = std::mem::replace(&mut state, chosen);
                stack.push(Frame {
                    op: frame.op,
                    before,
                    alternatives: frame.alternatives,
                    optional_pass: frame.optional_pass,
                    skipped: frame.skipped,
                    forced: frame.forced,
                });
                set = set_after;
                entries.lift(frame.op);
                ordered_applied += usize::from(spans[frame.op].ordered);
                (optional_pass, skipped) = (false, false);
                e = entries.next[entries.head];
                break;
            }
            if !frame.forced {
                (optional_pass, skipped) = (frame.optional_pass, frame.skipped);
                e = entries.next[2 * frame.op];
                break;
            }
        }
    }
}

/// Takes the first candidate whose (set, state) pair is new, marking it seen.
fn pick<S: Hash>(candidates: &mut Vec<S>, set: u128, seen: &mut HashSet<u128>) -> Option<S> {
    while let Some(s) = candidates.pop() {
        if seen.insert(fingerprint(set, &s)) {
            return Some(s);
        }
    }
    None
}

fn fingerprint<S: Hash>(set: u128, state: &S) -> u128 {
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        set.hash(&mut h);
        state.hash(&mut h);
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// A pseudo-random 128-bit value per op; a set's fingerprint is the XOR of its members'.
fn zobrist(op: usize) -> u128 {
    fn splitmix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
    let a = splitmix(op as u64 * 2);
    let b = splitmix(op as u64 * 2 + 1);
    (u128::from(a) << 64) | u128::from(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register: op i writes (w, v) or reads (r, v).
    fn register(ops: &[(char, u8)]) -> impl FnMut(&u8, usize, &mut Vec<u8>) + '_ {
        move |s, i, out| match ops[i] {
            ('w', v) => out.push(v),
            (_, v) if *s == v => out.push(*s),
            _ => {}
        }
    }

    fn span(invoke: Nanos, complete: Nanos) -> Span {
        Span {
            invoke,
            complete,
            ..Span::default()
        }
    }

    #[test]
    fn concurrent_write_may_precede_read() {
        let ops = [('w', 1), ('w', 2), ('r', 1)];
        let spans = [span(0, 10), span(5, 30), span(20, 25)];
        let (v, _) = search(&spans, 0, 1000, register(&ops));
        assert!(matches!(v, Verdict::Linearizable), "{v:?}");
    }

    #[test]
    fn stale_read_is_stuck() {
        let ops = [('w', 1), ('w', 2), ('r', 1)];
        let spans = [span(0, 10), span(11, 20), span(21, 25)];
        let (v, _) = search(&spans, 0, 1000, register(&ops));
        let Verdict::Stuck { order, stuck, .. } = v else {
            panic!("{v:?}")
        };
        assert_eq!(stuck, 2);
        assert_eq!(order, vec![0, 1]);
    }

    #[test]
    fn lost_write_may_apply_late_or_never() {
        // The write of 2 never answered: a read of 2 long after and a read of 0 are both fine.
        let ops = [('w', 2), ('r', 0), ('r', 2)];
        let spans = [span(0, NEVER), span(10, 20), span(100, 110)];
        let (v, _) = search(&spans, 0, 1000, register(&ops));
        assert!(matches!(v, Verdict::Linearizable), "{v:?}");
        let ops = [('w', 2), ('r', 0)];
        let (v, _) = search(&spans[..2], 0, 1000, register(&ops));
        assert!(matches!(v, Verdict::Linearizable), "{v:?}");
    }

    #[test]
    fn budget_ends_the_search() {
        let ops = [('w', 1), ('w', 2), ('r', 1)];
        let spans = [span(0, 10), span(11, 20), span(21, 25)];
        let (v, steps) = search(&spans, 0, 3, register(&ops));
        assert!(matches!(v, Verdict::Exhausted), "{v:?}");
        assert_eq!(steps, 4);
    }
}
