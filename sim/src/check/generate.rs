//! Generated runs for property tests: a real sequential model of etcd's KV store executes
//! random ops in a chosen order, and the run records them as concurrent clients would have
//! seen them, plus a watch on every key and the members' final reads. A correct store could
//! have produced every such run, so every checker must pass it.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::fixtures::MS;
use super::in_range;
use crate::history::{
    Call, Compare, CompareResult, Event, EventKind, History, Kv, Op, Outcome, Reply, Target, TxnOp,
    TxnResult, Watch, WatchEnd, WatchResponse,
};

/// etcd's KV semantics, sequentially: the oracle the generated runs come from.
pub(crate) struct Store {
    revision: i64,
    keys: BTreeMap<Vec<u8>, Kv>,
    /// Every event, in revision order.
    events: Vec<Event>,
    /// The state at every revision, for stale and historical reads.
    states: BTreeMap<i64, BTreeMap<Vec<u8>, Kv>>,
}

impl Store {
    fn new() -> Store {
        Store {
            revision: 1,
            keys: BTreeMap::new(),
            events: Vec::new(),
            states: BTreeMap::from([(1, BTreeMap::new())]),
        }
    }

    /// `key` as it was at `revision`.
    fn get_at(&self, key: &[u8], revision: i64) -> Vec<Kv> {
        let (_, state) = self
            .states
            .range(..=revision)
            .next_back()
            .expect("revision 1 on");
        state.get(key).cloned().into_iter().collect()
    }

    fn apply(&mut self, call: &Call) -> Reply {
        let reply = self.apply_now(call);
        self.states.insert(self.revision, self.keys.clone());
        reply
    }

    /// Puts key=value at revision `rev`, answering the previous kv.
    fn write(&mut self, key: &[u8], value: &[u8], rev: i64) -> Option<Kv> {
        let prev = self.keys.get(key).cloned();
        let kv = Kv {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease: 0,
        };
        self.keys.insert(key.to_vec(), kv.clone());
        self.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev: prev.clone(),
        });
        prev
    }

    fn delete(&mut self, key: &[u8], rev: i64) -> Option<Kv> {
        let prev = self.keys.remove(key)?;
        self.events.push(Event {
            kind: EventKind::Delete,
            kv: Kv {
                key: key.to_vec(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: rev,
                version: 0,
                lease: 0,
            },
            prev: Some(prev.clone()),
        });
        Some(prev)
    }

    fn apply_now(&mut self, call: &Call) -> Reply {
        match call {
            Call::Get { key, revision, .. } if *revision != 0 => Reply::Get {
                revision: self.revision,
                kvs: self.get_at(key, *revision),
            },
            Call::Get { key, .. } => Reply::Get {
                revision: self.revision,
                kvs: self.keys.get(key).cloned().into_iter().collect(),
            },
            Call::Range { start, end, .. } => Reply::Get {
                revision: self.revision,
                kvs: self
                    .keys
                    .values()
                    .filter(|kv| in_range(&kv.key, start, end))
                    .cloned()
                    .collect(),
            },
            Call::Put { key, value, .. } => {
                self.revision += 1;
                let prev = self.write(key, value, self.revision);
                Reply::Put {
                    revision: self.revision,
                    prev: prev.filter(|_| matches!(call, Call::Put { prev_kv: true, .. })),
                }
            }
            Call::Delete { key, .. } => {
                let deleted = self.delete(key, self.revision + 1).is_some();
                if deleted {
                    self.revision += 1;
                }
                Reply::Delete {
                    revision: self.revision,
                    deleted: i64::from(deleted),
                    prev: Vec::new(),
                }
            }
            Call::Txn {
                compares,
                success,
                failure,
            } => {
                let holds = compares.iter().all(|c| c.holds(self.keys.get(&c.key)));
                let acts = if holds { success } else { failure };
                let mut results = Vec::new();
                let rev = self.revision + 1;
                let mut wrote = false;
                for act in acts {
                    match act {
                        TxnOp::Get { key } => results.push(TxnResult::Get {
                            kvs: self.keys.get(key).cloned().into_iter().collect(),
                        }),
                        TxnOp::Put { key, value, .. } => {
                            self.write(key, value, rev);
                            wrote = true;
                            results.push(TxnResult::Put { prev: None });
                        }
                        TxnOp::Delete { key } => {
                            let deleted = self.delete(key, rev).is_some();
                            wrote |= deleted;
                            results.push(TxnResult::Delete {
                                deleted: i64::from(deleted),
                                prev: Vec::new(),
                            });
                        }
                    }
                }
                if wrote {
                    self.revision = rev;
                }
                Reply::Txn {
                    revision: self.revision,
                    succeeded: holds,
                    results,
                }
            }
            _ => unreachable!("not generated"),
        }
    }
}

/// A random op on keys k0..k4.
#[derive(Clone, Debug)]
pub(crate) enum Gen {
    Put(u8),
    Get(u8),
    Delete(u8),
    /// Compare-and-swap against the key's mod_revision this many revisions back.
    Cas(u8, i64),
    RangeAll,
    /// A serializable get, answered from the member's own (possibly lagging) state.
    StaleGet(u8),
    /// A get of the state this many revisions back.
    GetAt(u8, i64),
    /// A txn guarded by one compare: target (0 version, 1 create, 2 mod, 3 value, 4 lease)
    /// and result (an index of `CompareResult::ALL`) of key `.0` against its current field
    /// nudged by `.3`; puts `.0` and gets `.4` on success, deletes `.4` and gets `.0` on
    /// failure.
    CompareTxn(u8, u8, u8, i64, u8),
}

pub(crate) fn gen_op() -> impl Strategy<Value = Gen> {
    prop_oneof![
        4 => (0u8..5).prop_map(Gen::Put),
        4 => (0u8..5).prop_map(Gen::Get),
        1 => (0u8..5).prop_map(Gen::Delete),
        1 => (0u8..5, 0i64..4).prop_map(|(k, back)| Gen::Cas(k, back)),
        1 => Just(Gen::RangeAll),
        1 => (0u8..5).prop_map(Gen::StaleGet),
        1 => (0u8..5, 0i64..5).prop_map(|(k, back)| Gen::GetAt(k, back)),
        2 => (0u8..5, 0u8..5, 0u8..4, -1i64..=1, 0u8..5)
            .prop_map(|(k, t, r, nudge, other)| Gen::CompareTxn(k, t, r, nudge, other)),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("k{k}").into_bytes()
}

/// The call for op number `n` (its put value is `v{n}`, unique).
fn to_call(g: &Gen, n: usize, store: &Store) -> Call {
    let value = || format!("v{n}").into_bytes();
    match *g {
        Gen::Put(k) => Call::Put {
            key: key(k),
            value: value(),
            lease: 0,
            prev_kv: n.is_multiple_of(3),
        },
        Gen::Get(k) => Call::Get {
            key: key(k),
            revision: 0,
            serializable: false,
        },
        Gen::Delete(k) => Call::Delete {
            key: key(k),
            prev_kv: false,
        },
        Gen::Cas(k, back) => {
            let current = store.keys.get(&key(k)).map_or(0, |kv| kv.mod_revision);
            Call::Txn {
                compares: vec![Compare::mod_revision(key(k), (current - back).max(0))],
                success: vec![TxnOp::Put {
                    key: key(k),
                    value: value(),
                    lease: 0,
                }],
                failure: vec![TxnOp::Get { key: key(k) }],
            }
        }
        Gen::RangeAll => Call::Range {
            start: b"k".to_vec(),
            end: b"l".to_vec(),
            revision: 0,
            serializable: false,
            stream: false,
        },
        Gen::StaleGet(k) => Call::Get {
            key: key(k),
            revision: 0,
            serializable: true,
        },
        Gen::GetAt(k, back) => Call::Get {
            key: key(k),
            revision: (store.revision - back).max(1),
            serializable: false,
        },
        Gen::CompareTxn(k, target, result, nudge, other) => {
            let kv = store.keys.get(&key(k));
            let target = Target::near(target, kv, nudge, 0);
            let mut success = vec![TxnOp::Put {
                key: key(k),
                value: value(),
                lease: 0,
            }];
            let mut failure = vec![TxnOp::Get { key: key(k) }];
            if other != k {
                success.push(TxnOp::Get { key: key(other) });
                failure.insert(0, TxnOp::Delete { key: key(other) });
            }
            Call::Txn {
                compares: vec![Compare {
                    key: key(k),
                    target,
                    result: CompareResult::ALL[result as usize],
                }],
                success,
                failure,
            }
        }
    }
}

/// A run whose ops take effect at 10 ms steps, in the order given, by 4 clients on 3 members
/// (n1 and n2 lag behind, which serializable reads show); each op's interval spreads `spread`
/// ms around its point (cycled). Writes where `lost` holds lose their answer; where `vanish`
/// holds they also never take effect. Watches: every key from revision 2 with prev_kv,
/// getting each revision's events 1 ms after it happens; and "k1" from the middle of the run,
/// from "now", without deletes. Both end with a progress notification; the three members end
/// with the store's final state.
pub(crate) fn history(
    gens: &[Gen],
    spread: &[(u64, u64)],
    lost: &[bool],
    vanish: &[bool],
) -> History {
    let mut store = Store::new();
    let mut h = History::default();
    let mut all: Vec<WatchResponse> = Vec::new();
    let mut k1: Vec<WatchResponse> = Vec::new();
    let middle = gens.len() / 2;
    let mut k1_created = 0;
    let mut applied = [1i64; 3];
    for (n, g) in gens.iter().enumerate() {
        let call = to_call(g, n, &store);
        let is_write = matches!(
            g,
            Gen::Put(_) | Gen::Delete(_) | Gen::Cas(..) | Gen::CompareTxn(..)
        );
        let point = 1_000 + 10 * n as u64;
        let (before, after) = spread[n % spread.len()];
        let node = (n % 3) as u32;
        // Followers apply a few revisions late, never going back.
        for follower in applied.iter_mut().skip(1) {
            *follower = (*follower).max(store.revision - (n % 4) as i64);
        }
        if n == middle {
            k1_created = store.revision;
        }
        let seen = store.events.len();
        let outcome = if is_write && vanish[n % vanish.len()] {
            Outcome::Unknown("timed out".into())
        } else if let Gen::StaleGet(k) = g {
            let rev = applied[node as usize];
            Outcome::Ok(Reply::Get {
                revision: rev,
                kvs: store.get_at(&key(*k), rev),
            })
        } else {
            let reply = store.apply(&call);
            applied[node as usize] = store.revision;
            if is_write && lost[n % lost.len()] {
                Outcome::Unknown("timed out".into())
            } else {
                Outcome::Ok(reply)
            }
        };
        if store.events.len() > seen {
            let at = (point + 1) * MS;
            let events = store.events[seen..].to_vec();
            all.push(events_response(at, store.revision, events.clone()));
            let mine: Vec<Event> = events
                .into_iter()
                .filter(|e| e.kv.key == b"k1" && e.kind == EventKind::Put)
                .map(|e| Event { prev: None, ..e })
                .collect();
            if n >= middle && !mine.is_empty() {
                k1.push(events_response(at, store.revision, mine));
            }
        }
        h.ops.push(Op {
            id: n as u64 + 1,
            client: (n % 4) as u32,
            node,
            call,
            invoke: (point - before) * MS,
            complete: (point + after) * MS,
            outcome,
        });
    }
    h.ops.sort_by_key(|op| op.invoke);
    let end = (1_000 + 10 * gens.len() as u64 + 100) * MS;
    for responses in [&mut all, &mut k1] {
        responses.push(WatchResponse {
            progress: true,
            ..events_response(end, store.revision, Vec::new())
        });
    }
    let watch = |id: u64, start: &[u8], end: &[u8], responses: Vec<WatchResponse>| Watch {
        id,
        client: 9,
        node: 1,
        start: start.to_vec(),
        end: end.to_vec(),
        start_revision: 2,
        prev_kv: true,
        filter_puts: false,
        filter_deletes: false,
        progress_notify: true,
        invoke: 0,
        created_revision: Some(1),
        responses,
        end_state: WatchEnd::Open,
    };
    h.watches.push(watch(1, b"k", b"l", all));
    h.watches.push(Watch {
        start_revision: 0,
        prev_kv: false,
        filter_deletes: true,
        // Created just before the middle op's point, after everything before it.
        invoke: (1_000 + 10 * middle as u64 - 5) * MS,
        created_revision: Some(k1_created),
        ..watch(2, b"k1", b"", k1)
    });
    let finals: Vec<Kv> = store.keys.values().cloned().collect();
    for node in 0..3 {
        h.final_reads.insert(node, finals.clone());
        h.final_hashes.insert(node, (store.revision, 0x5eed));
    }
    h
}

fn events_response(at: u64, header_revision: i64, events: Vec<Event>) -> WatchResponse {
    WatchResponse {
        at,
        header_revision,
        events,
        compact_revision: 0,
        canceled: false,
        progress: false,
    }
}
