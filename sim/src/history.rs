//! What a simulated run observed: every client operation (invoke, completion, outcome), every
//! watch response, and what each node reported of its Raft state. Checkers judge a run from
//! this record alone, never from the cluster's insides, so a checker cannot be fooled by the
//! bug it looks for.
//!
//! Invariants the recorder keeps:
//! - `Op::id` is unique and ops are stored in invoke order; `invoke <= complete`.
//! - Every `Put` writes a value no other op writes (client id + sequence number), so a read's
//!   value names the write it observed.
//! - An op whose answer never came (timeout, connection lost, node killed) has
//!   `Outcome::Unknown`: it may or may not have taken effect, at any time after `invoke`.
//! - `Outcome::Failed` is only recorded for errors etcd guarantees leave nothing changed
//!   (e.g. `etcdserver: request is too large`, `requested lease not found`, a compacted
//!   revision); an ambiguous error (`request timed out`, `leader changed`, transport errors)
//!   is `Unknown`.
//! - Times are simulated nanoseconds since the run started (one global clock: the simulator's,
//!   not any node's skewed clock).

use std::collections::{BTreeMap, BTreeSet};

/// etcd's refusal of a read below the compaction revision.
pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
/// etcd's refusal of a read beyond the current revision.
pub const FUTURE_REVISION: &str = "etcdserver: mvcc: required revision is a future revision";

/// Simulated nanoseconds since the start of the run.
pub type Nanos = u64;

/// A member, by its position in the scenario (0-based), not its etcd member id.
pub type NodeIx = u32;

pub type Key = Vec<u8>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: Key,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// etcd's `Compare` on one key: `target(key) result operand`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Key,
    pub target: Target,
    pub result: CompareResult,
}

/// What a compare reads of the key, and the operand it is compared with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Version(i64),
    CreateRevision(i64),
    /// `ModRevision(0)` with `Equal`: the key does not exist.
    ModRevision(i64),
    Value(Vec<u8>),
    Lease(i64),
}

impl Target {
    /// Target number `which` (0 version, 1 create_revision, 2 mod_revision, 3 value, 4 lease)
    /// with an operand next to what `kv` holds (absent: zeroes and the empty value): the field
    /// itself (`nudge` 0), one below (-1) or one above (+1); for a value, itself, one byte
    /// shorter or with `~` appended; for a lease, itself or `other_lease`. Off-by-one errors
    /// show at these operands.
    pub fn near(which: u8, kv: Option<&Kv>, nudge: i64, other_lease: i64) -> Target {
        let field = |f: fn(&Kv) -> i64| kv.map_or(0, f) + nudge;
        match which {
            0 => Target::Version(field(|kv| kv.version)),
            1 => Target::CreateRevision(field(|kv| kv.create_revision)),
            2 => Target::ModRevision(field(|kv| kv.mod_revision)),
            3 => {
                let mut value = kv.map(|kv| kv.value.clone()).unwrap_or_default();
                match nudge {
                    -1 => drop(value.pop()),
                    1 => value.push(b'~'),
                    _ => {}
                }
                Target::Value(value)
            }
            _ => Target::Lease(match nudge {
                0 => kv.map_or(0, |kv| kv.lease),
                _ => other_lease,
            }),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

impl CompareResult {
    pub const ALL: [CompareResult; 4] = [
        CompareResult::Equal,
        CompareResult::Greater,
        CompareResult::Less,
        CompareResult::NotEqual,
    ];

    /// Whether `found` against `operand` satisfies the result.
    pub fn holds<T: Ord + ?Sized>(self, found: &T, operand: &T) -> bool {
        let order = found.cmp(operand);
        match self {
            CompareResult::Equal => order.is_eq(),
            CompareResult::Greater => order.is_gt(),
            CompareResult::Less => order.is_lt(),
            CompareResult::NotEqual => order.is_ne(),
        }
    }
}

impl Compare {
    /// `mod_revision(key) == revision`: the compare-and-swap workloads' guard.
    pub fn mod_revision(key: Key, revision: i64) -> Compare {
        Compare {
            key,
            target: Target::ModRevision(revision),
            result: CompareResult::Equal,
        }
    }

    /// etcd's `applyCompare` on one key: a value compare on a missing key is false whatever
    /// the result; every other target compares a missing key as all zeroes.
    pub fn holds(&self, kv: Option<&Kv>) -> bool {
        let r = self.result;
        match (&self.target, kv) {
            (Target::Value(_), None) => false,
            (Target::Value(v), Some(kv)) => r.holds(kv.value.as_slice(), v.as_slice()),
            (Target::Version(n), kv) => r.holds(&kv.map_or(0, |kv| kv.version), n),
            (Target::CreateRevision(n), kv) => r.holds(&kv.map_or(0, |kv| kv.create_revision), n),
            (Target::ModRevision(n), kv) => r.holds(&kv.map_or(0, |kv| kv.mod_revision), n),
            (Target::Lease(n), kv) => r.holds(&kv.map_or(0, |kv| kv.lease), n),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Get {
        key: Key,
    },
    Put {
        key: Key,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: Key,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// A single-key read; `revision` 0 reads the latest.
    Get {
        key: Key,
        revision: i64,
        serializable: bool,
    },
    /// `[start, end)` read (etcd's range); `end` empty means the single key `start`. With
    /// `stream` it is read through RangeStream and its messages merged.
    Range {
        start: Key,
        end: Key,
        revision: i64,
        serializable: bool,
        stream: bool,
    },
    Put {
        key: Key,
        value: Vec<u8>,
        lease: i64,
        prev_kv: bool,
    },
    Delete {
        key: Key,
        prev_kv: bool,
    },
    Txn {
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    },
    LeaseGrant {
        id: i64,
        ttl_secs: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    /// One keep-alive request on a keep-alive stream.
    LeaseKeepAlive {
        id: i64,
    },
    Compact {
        revision: i64,
    },
    /// v3lock `Lock` of lock `name`, the owner key attached to `lease`.
    Lock {
        name: Key,
        lease: i64,
    },
    /// v3lock `Unlock`: deletes an owner key (also how a client cleans up a key it may hold).
    Unlock {
        key: Key,
    },
    /// v3election `Campaign` for election `name`, proclaiming `value`.
    Campaign {
        name: Key,
        lease: i64,
        value: Vec<u8>,
    },
    /// v3election `Leader`: the current leader's key-value.
    Leader {
        name: Key,
    },
    /// v3election `Resign` of the leader key `key` (create revision `rev`).
    Resign {
        name: Key,
        key: Key,
        rev: i64,
        lease: i64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnResult {
    Get { kvs: Vec<Kv> },
    Put { prev: Option<Kv> },
    Delete { deleted: i64, prev: Vec<Kv> },
}

/// A successful answer. `revision` is always the response header's revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Get {
        revision: i64,
        kvs: Vec<Kv>,
    },
    Put {
        revision: i64,
        prev: Option<Kv>,
    },
    Delete {
        revision: i64,
        deleted: i64,
        prev: Vec<Kv>,
    },
    Txn {
        revision: i64,
        succeeded: bool,
        results: Vec<TxnResult>,
    },
    LeaseGrant {
        revision: i64,
        ttl_secs: i64,
    },
    LeaseRevoke {
        revision: i64,
    },
    /// `ttl_secs` 0 means the lease is gone (etcd answers a keep-alive of an expired lease so).
    LeaseKeepAlive {
        ttl_secs: i64,
    },
    Compact {
        revision: i64,
    },
    /// The lock is held through `key`.
    Lock {
        revision: i64,
        key: Key,
    },
    /// `Unlock` and `Resign` answers.
    Released {
        revision: i64,
    },
    /// Elected: the leader key and its create revision.
    Campaign {
        revision: i64,
        key: Key,
        rev: i64,
    },
    Leader {
        revision: i64,
        kv: Kv,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Reply),
    /// Definitely did not take effect; the etcd error text.
    Failed(String),
    /// May or may not have taken effect; why the answer is missing.
    Unknown(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub id: u64,
    pub client: u32,
    /// The member the client sent it to.
    pub node: NodeIx,
    pub call: Call,
    pub invoke: Nanos,
    /// When the answer arrived; for `Unknown`, when the client gave up.
    pub complete: Nanos,
    pub outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For a delete: the key, `mod_revision` = the delete's revision, other fields zero.
    pub kv: Kv,
    pub prev: Option<Kv>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchResponse {
    pub at: Nanos,
    pub header_revision: i64,
    pub events: Vec<Event>,
    /// Non-zero: the watch was canceled because its start revision is compacted.
    pub compact_revision: i64,
    pub canceled: bool,
    /// A progress notification (no events; header_revision is the progress mark).
    pub progress: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEnd {
    /// Still open when the run ended.
    Open,
    /// The server canceled it (see the last response).
    Canceled,
    /// The stream broke (node killed, network); `why`.
    Broken(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    pub id: u64,
    pub client: u32,
    pub node: NodeIx,
    /// `[start, end)`; `end` empty: the single key `start`.
    pub start: Key,
    pub end: Key,
    /// 0: from the revision after the current one.
    pub start_revision: i64,
    pub prev_kv: bool,
    pub filter_puts: bool,
    pub filter_deletes: bool,
    pub progress_notify: bool,
    /// When the create request was sent, and the created response's header revision.
    pub invoke: Nanos,
    pub created_revision: Option<i64>,
    pub responses: Vec<WatchResponse>,
    pub end_state: WatchEnd,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RaftEvent {
    /// The node's role or term changed; `leader` is whom it believes leads in `term`.
    State {
        term: u64,
        leader: Option<u64>,
        is_leader: bool,
    },
    /// The node has applied up to `index`; `chain` hashes every entry (index, term, data) it
    /// applied in order since the log's start, so two nodes with different histories at the
    /// same index differ here.
    Applied { index: u64, term: u64, chain: u64 },
    /// The node's commit index.
    Committed { index: u64 },
    /// The node (re)started from its disk, with this much of the log and MVCC recovered, and
    /// this hard state (`vote` 0: none).
    Started {
        applied: u64,
        revision: i64,
        term: u64,
        vote: u64,
    },
    /// The node granted its vote to `candidate` (raft id) in `term`; the response left after
    /// the vote was persisted.
    VoteGranted { term: u64, candidate: u64 },
    /// The node stopped: killed by the nemesis, fatal error, removal.
    Stopped { why: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftRecord {
    pub at: Nanos,
    pub node: NodeIx,
    pub event: RaftEvent,
}

/// The whole record of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<Op>,
    pub watches: Vec<Watch>,
    pub raft: Vec<RaftRecord>,
    /// When the nemesis healed every fault (None: faults lasted to the end).
    pub healed_at: Option<Nanos>,
    /// Members whose disks the nemesis corrupted (bit rot): they may refuse to start.
    pub rotten: BTreeSet<NodeIx>,
    /// The final, fault-free read of every key the workload used, per node: what each member
    /// serves (serializable) after the run has quiesced.
    pub final_reads: BTreeMap<NodeIx, Vec<Kv>>,
    /// The revision each running member was at when first read after quiescing.
    pub final_revisions: BTreeMap<NodeIx, i64>,
    /// `HashKV` per node at a common revision, taken after quiescing.
    pub final_hashes: BTreeMap<NodeIx, (i64, u32)>,
    /// The run's timing bounds, for checkers that need them.
    pub bounds: Bounds,
}

/// Time bounds the checkers hold the cluster to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Election timeout, in nanoseconds.
    pub election_timeout: Nanos,
    /// Largest clock skew/drift effect the nemesis injected (lease checks allow it).
    pub max_clock_error: Nanos,
    /// After healing, a leader must exist and a write must succeed within this.
    pub liveness: Nanos,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            election_timeout: 1_000_000_000,
            max_clock_error: 0,
            liveness: 10_000_000_000,
        }
    }
}

/// A checker's finding: which property broke, and the ops/events that show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The checker's name (`linearizability`, `watch`, `lease`, `durability`, `raft`,
    /// `liveness`); shrinking keeps a failure only if the same checker still fails.
    pub checker: &'static str,
    pub message: String,
}
