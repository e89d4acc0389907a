//! Generated runs for property tests: a real sequential model of etcd's KV store executes
//! random ops in a chosen order, and the run records them as concurrent clients would have
//! seen them, plus a watch on every key and the members' final reads. A correct store could
//! have produced every such run, so every checker must pass it.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::build::MS;
use super::in_range;
use crate::history::{
    Call, Compare, Event, EventKind, History, Kv, Op, Outcome, Reply, TxnOp, TxnResult, Watch,
    WatchEnd, WatchResponse,
};

/// etcd's KV semantics, sequentially: the oracle the generated runs come from.
pub(crate) struct Store {
    revision: i64,
    keys: BTreeMap<Vec<u8>, Kv>,
    /// Every event, in revision order.
    events: Vec<Event>,
}

impl Store {
    fn new() -> Store {
        Store {
            revision: 1,
            keys: BTreeMap::new(),
            events: Vec::new(),
        }
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

    fn apply(&mut self, call: &Call) -> Reply {
        match call {
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
                let holds = compares.iter().all(|c| match c {
                    Compare::ModRevision { key, revision } => {
                        self.keys.get(key).map_or(0, |kv| kv.mod_revision) == *revision
                    }
                    Compare::Value { key, value } => {
                        self.keys.get(key).is_some_and(|kv| &kv.value == value)
                    }
                });
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
                        TxnOp::Delete { .. } => unreachable!("not generated"),
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
}

pub(crate) fn gen_op() -> impl Strategy<Value = Gen> {
    prop_oneof![
        4 => (0u8..5).prop_map(Gen::Put),
        4 => (0u8..5).prop_map(Gen::Get),
        1 => (0u8..5).prop_map(Gen::Delete),
        1 => (0u8..5, 0i64..4).prop_map(|(k, back)| Gen::Cas(k, back)),
        1 => Just(Gen::RangeAll),
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
                compares: vec![Compare::ModRevision {
                    key: key(k),
                    revision: (current - back).max(0),
                }],
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
        },
    }
}

/// A run whose ops take effect at 10 ms steps, in the order given, on 4 clients; each op's
/// interval spreads `spread` ms around its point (cycled). Writes where `lost` holds lose their
/// answer; where `vanish` holds they also never take effect. A watch on every key from
/// revision 2 (with prev_kv) gets each revision's events 1 ms after it happens and a progress
/// notification at the end; three members end with the store's final state.
pub(crate) fn history(
    gens: &[Gen],
    spread: &[(u64, u64)],
    lost: &[bool],
    vanish: &[bool],
) -> History {
    let mut store = Store::new();
    let mut h = History::default();
    let mut responses: Vec<WatchResponse> = Vec::new();
    for (n, g) in gens.iter().enumerate() {
        let call = to_call(g, n, &store);
        let is_write = matches!(g, Gen::Put(_) | Gen::Delete(_) | Gen::Cas(..));
        let point = 1_000 + 10 * n as u64;
        let (before, after) = spread[n % spread.len()];
        let seen = store.events.len();
        let outcome = if is_write && vanish[n % vanish.len()] {
            Outcome::Unknown("timed out".into())
        } else {
            let reply = store.apply(&call);
            if is_write && lost[n % lost.len()] {
                Outcome::Unknown("timed out".into())
            } else {
                Outcome::Ok(reply)
            }
        };
        if store.events.len() > seen {
            responses.push(WatchResponse {
                at: (point + 1) * MS,
                header_revision: store.revision,
                events: store.events[seen..].to_vec(),
                compact_revision: 0,
                canceled: false,
                progress: false,
            });
        }
        h.ops.push(Op {
            id: n as u64 + 1,
            client: (n % 4) as u32,
            node: 0,
            call,
            invoke: (point - before) * MS,
            complete: (point + after) * MS,
            outcome,
        });
    }
    h.ops.sort_by_key(|op| op.invoke);
    let end = 1_000 + 10 * gens.len() as u64 + 100;
    responses.push(WatchResponse {
        at: end * MS,
        header_revision: store.revision,
        events: Vec::new(),
        compact_revision: 0,
        canceled: false,
        progress: true,
    });
    h.watches.push(Watch {
        id: 1,
        client: 9,
        node: 1,
        start: b"k".to_vec(),
        end: b"l".to_vec(),
        start_revision: 2,
        prev_kv: true,
        filter_puts: false,
        filter_deletes: false,
        progress_notify: true,
        invoke: 0,
        created_revision: Some(1),
        responses,
        end_state: WatchEnd::Open,
    });
    let finals: Vec<Kv> = store.keys.values().cloned().collect();
    for node in 0..3 {
        h.final_reads.insert(node, finals.clone());
        h.final_hashes.insert(node, (store.revision, 0x5eed));
    }
    h
}
