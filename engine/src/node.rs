//! A Strata node: raft-rs' `RawNode` plus the state machine, driven through one entry point.
//!
//! The driver feeds [`Input`]s with [`Node::step`] and executes the [`Output`]s it takes from
//! [`Node::take_outputs`], in order. The ordering contract (etcd-io/raft's async storage
//! writes, as raft-rs implements it):
//!
//! 1. `Persist { number, .. }` outputs must be made durable in the order given; the driver then
//!    feeds `Input::Persisted { number }` (acknowledging one number acknowledges all before it,
//!    so one fsync may cover many: group commit).
//! 2. `Send` messages may go out at once. Messages that depend on persisted state (votes,
//!    a follower's append responses) are held by the engine and only appear as `Send` after
//!    the `Persisted` acknowledgement of the state they depend on (Raft §5.2, §5.3).
//! 3. A client is answered (`Respond`) only after its entry is applied, or for a linearizable
//!    read once the read index is applied; serializable reads are answered from local state.
//! 4. `Watch` outputs for one stream come in revision order, one revision never split. The
//!    driver never waits for a watch client: when a stream's queue is full it refuses that
//!    output and every later one for the stream, and reports them with `Input::WatchRefused`
//!    before any other input; once the queue has room it sends `Input::WatchWritable`, after
//!    every refusal of the stream. Nothing refused is lost: the watchers catch up from the MVCC
//!    history (`watch.rs`, *Slow streams*).
//!
//! Time: `Input::Tick` advances raft by one tick; `now_ms` (a monotonic millisecond clock the
//! driver owns) is passed with every step and is only used for lease expiry, which the leader
//! alone decides, and for the TTL of auth tokens, which only this member's answers depend on.
//! Randomness: raft-rs draws election timeouts from `thread_rng`; the node overrides every
//! draw from its own seeded PRNG after each change of term or role, so the same seed and
//! inputs give the same outputs.
//!
//! Auth (etcd's, see `auth.rs`): requests carry the client's [`Credential`], if any: a user the
//! server verified itself (a JWT's claims, a client certificate's CN), or a simple token (the
//! gRPC `token` metadata). While auth is enabled the node resolves a token when the request
//! arrives: a
//! malformed, unknown or expired token is `invalid auth token`; a token minted by an
//! `Authenticate` entry this member has not applied yet makes the request wait until it has
//! (etcd's simple-token index wait), or answers `invalid auth token` at the request deadline.
//! Reads are checked when served, admin-only and "any user" operations when they arrive,
//! writes when applied, on every member, with the user and auth revision their proposal
//! carries. To authenticate a client, the server takes the hash from [`Node::password_check`],
//! runs bcrypt itself, and submits `Request::Authenticate` carrying the revision it checked
//! at; an answer of `revision of auth store is old` means the store moved meanwhile, so the
//! server checks the password again and resubmits, as etcd does.

mod invariants;

use std::collections::{BTreeMap, VecDeque};

use prost::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, HardState, Message,
    MessageType, Snapshot,
};
use raft::{RawNode, ReadOnlyOption, StateRole, Storage};

use crate::auth::{AuthInfo, AuthStore, Credential, PasswordCheck, DEFAULT_TOKEN_TTL_SECS};
use crate::backend::{BackendError, Bucket, KvBackend};
use crate::bugs::{self, Bug};
use crate::error::{Error, EtcdError};
use crate::lease::RenewRefused;
use crate::limits::{self, Limits};
use crate::membership::{self, to_member};
use crate::mvcc::{self, Counting, MvccStore};
use crate::prng::Prng;
use crate::proto::etcdserverpb::{self as pb, alarm_request::AlarmAction, AlarmType};
use crate::proto::mvccpb::Event;
use crate::proto::strata::internal::{
    internal_request, InternalRequest, LeaseCheckpoint, LeaseCheckpoints, MemberAttributes,
    MemberRecord, SnapshotData,
};
use crate::raft_log::LogStore;
use crate::request::{txn_is_read_only, Request, Response};
use crate::state_machine::{Applied, Outcome, StateMachine};
use crate::types::{LeaseId, LogIndex, NodeId, RequestId, Revision, StreamId, Term, WatchId};
use crate::watch::{created_and_canceled, History, WatchHub, WatchOutput};

/// The etcd API version Strata implements, reported by `Status`.
pub const ETCD_VERSION: &str = "3.6.0";

#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    pub cluster_id: u64,
    /// Ticks without a leader before a follower campaigns (etcd: election-timeout / heartbeat).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Milliseconds per tick (etcd's `--heartbeat-interval`).
    pub tick_ms: u64,
    /// Ticks a proposal or read may wait before `etcdserver: request timed out`.
    pub request_timeout_ticks: u64,
    pub limits: Limits,
    /// Seeds every random choice. Drivers must draw a fresh seed per boot: proposal ids come
    /// from it and must not repeat across restarts.
    pub seed: u64,
    /// How long an auth token stays valid after its last use (etcd's `--auth-token-ttl`).
    pub auth_token_ttl_secs: u64,
    /// An injected bug (simulator builds with feature `bugs` only; see [`crate::bugs`]).
    pub bug: Option<crate::bugs::Bug>,
    /// Keep `(index, term, crc64(data))` of every applied entry for
    /// [`Node::take_applied_record`] (the simulator's state-machine-safety checker).
    pub record_applied: bool,
}

impl Config {
    /// etcd's defaults: 100 ms heartbeat, 1000 ms election timeout, 7 s request timeout.
    pub fn new(id: NodeId, cluster_id: u64, seed: u64) -> Config {
        Config {
            id,
            cluster_id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            tick_ms: 100,
            request_timeout_ticks: 70,
            limits: Limits::default(),
            seed,
            auth_token_ttl_secs: DEFAULT_TOKEN_TTL_SECS,
            record_applied: false,
            bug: None,
        }
    }

    pub fn election_timeout_ms(&self) -> u64 {
        self.election_ticks as u64 * self.tick_ms
    }

    pub fn min_lease_ttl_secs(&self) -> i64 {
        limits::min_lease_ttl_secs(self.election_timeout_ms())
    }

    pub fn auth_token_ttl_ms(&self) -> u64 {
        self.auth_token_ttl_secs * 1000
    }
}

/// What the driver persisted of the raft log, handed back at restart.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PersistedLog {
    pub hard_state: HardState,
    /// The last index dropped from the log, and its term.
    pub compacted: (LogIndex, Term),
    /// Every entry after `compacted`, contiguous.
    pub entries: Vec<Entry>,
}

/// The raft log of a brand-new cluster: one committed conf change per initial member, as etcd
/// bootstraps. Every initial member builds the same log from the same member list.
pub fn bootstrap_log(members: &[MemberRecord]) -> PersistedLog {
    assert!(!members.is_empty(), "a cluster needs at least one member");
    let mut entries = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let kind = if m.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let cc = conf_change(kind, NodeId(m.id), m, 0, 0);
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChangeV2);
        e.index = i as u64 + 1;
        e.term = 1;
        e.data = protobuf::Message::write_to_bytes(&cc)
            .expect("encode conf change")
            .into();
        entries.push(e);
    }
    let mut hard_state = HardState::default();
    hard_state.set_term(1);
    hard_state.set_commit(entries.len() as u64);
    PersistedLog {
        hard_state,
        compacted: (LogIndex(0), Term(0)),
        entries,
    }
}

/// etcd's `--force-new-cluster`: the log a member restarts with to form a cluster of one from
/// its own data. Committed entries stay; the uncommitted tail goes (without the other members
/// it can never commit); one committed conf change per member in `others` removes it, in the
/// current term, so the member applies them as it starts and then elects itself alone.
/// `applied` is the backend's applied index: the removals follow whatever it holds.
pub fn force_new_cluster_log(
    mut log: PersistedLog,
    applied: LogIndex,
    others: &[MemberRecord],
) -> PersistedLog {
    let last = log.entries.last().map_or(log.compacted.0 .0, |e| e.index);
    let mut index = log.hard_state.commit.max(applied.0);
    assert!(
        index <= last.max(log.compacted.0 .0),
        "commit {index} beyond the log's last index {last}"
    );
    log.entries.retain(|e| e.index <= index);
    let term = log.hard_state.term.max(1);
    for m in others {
        let cc = conf_change(ConfChangeType::RemoveNode, NodeId(m.id), m, 0, 0);
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChangeV2);
        index += 1;
        e.index = index;
        e.term = term;
        e.data = protobuf::Message::write_to_bytes(&cc)
            .expect("encode conf change")
            .into();
        log.entries.push(e);
    }
    log.hard_state.set_term(term);
    log.hard_state.set_commit(index);
    log
}

fn conf_change(
    kind: ConfChangeType,
    id: NodeId,
    member: &MemberRecord,
    origin: u64,
    proposal: u64,
) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = id.0;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    let ctx = InternalRequest {
        origin,
        request_id: proposal,
        request: Some(internal_request::Request::MemberUpdate(member.clone())),
        ..InternalRequest::default()
    };
    cc.set_context(ctx.encode_to_vec().into());
    cc
}

#[derive(Debug)]
pub enum Input {
    /// One raft tick (`Config::tick_ms` of the driver's clock).
    Tick,
    /// A raft message from a peer.
    Message(Box<Message>),
    /// Every `Persist` output up to `number` is durable.
    Persisted {
        number: u64,
    },
    /// A client request submitted to this node, with the client's credential (a simple
    /// token's optional `Bearer ` prefix is ignored). Ignored while auth is disabled.
    Request {
        id: RequestId,
        request: Request,
        credential: Option<Credential>,
    },
    /// `credential`: the watch stream's, as for `Request`.
    WatchCreate {
        stream: StreamId,
        request: pb::WatchCreateRequest,
        credential: Option<Credential>,
    },
    WatchCancel {
        stream: StreamId,
        watch_id: WatchId,
    },
    WatchProgress {
        stream: StreamId,
    },
    WatchStreamClosed {
        stream: StreamId,
    },
    /// The stream's queue was full: these outputs for it were not sent (the first one refused
    /// and every later one, in order). The stream is parked until `WatchWritable`.
    WatchRefused {
        stream: StreamId,
        responses: Vec<pb::WatchResponse>,
    },
    /// A parked stream's queue has room again.
    WatchWritable {
        stream: StreamId,
    },
    /// The transport could not reach a peer.
    Unreachable(NodeId),
    /// Sending a snapshot to a peer finished.
    SnapshotSent {
        to: NodeId,
        ok: bool,
    },
    /// Campaign now instead of waiting for the election timeout.
    Campaign,
    /// This member's name and client URLs, to record in the member list (etcd's publish).
    /// Proposed through raft and retried until applied.
    Publish {
        name: String,
        client_urls: Vec<String>,
    },
}

/// Work the driver must do to make a Ready durable.
#[derive(Debug, Default)]
pub struct PersistTask {
    /// Acknowledge with `Input::Persisted { number }` once durable.
    pub number: u64,
    pub hard_state: Option<HardState>,
    /// Entries to append; any stored entries at or after the first one's index are replaced.
    pub entries: Vec<Entry>,
    /// A snapshot was installed: the log now starts after this point (drop entries up to it).
    pub snapshot: Option<(LogIndex, Term)>,
    /// Must fsync before acknowledging (false only for commit-index-only updates).
    pub must_sync: bool,
}

#[derive(Debug)]
pub enum Output {
    Send(Message),
    Persist(PersistTask),
    /// Entries up to `index` are in a snapshot of the state machine; the driver may delete them.
    CompactLog {
        index: LogIndex,
        term: Term,
    },
    Respond {
        id: RequestId,
        result: Result<Response, EtcdError>,
    },
    Watch(WatchOutput),
    /// The node's view of the leader changed.
    LeaderChanged {
        leader: Option<NodeId>,
        term: Term,
    },
    /// This member was removed from the cluster (its removal just applied, or found applied
    /// at start); the driver should stop it once what it already sent has gone out.
    Removed,
}

/// A failure that stops the node: storage failed or raft refused its own state.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error(transparent)]
    Invariant(#[from] InvariantViolation),
}

pub use invariants::InvariantViolation;

#[derive(Clone, Debug)]
enum PendingKind {
    Plain,
    MemberAdd,
    MemberRemove,
    MemberPromote,
    KeepAlive { lease: LeaseId, ttl: i64 },
}

#[derive(Clone, Debug)]
struct Pending {
    id: RequestId,
    kind: PendingKind,
    deadline: u64,
}

#[derive(Debug)]
enum Proposal {
    Normal(Vec<u8>),
    ConfChange(ConfChangeV2),
}

#[derive(Debug)]
struct Parked {
    proposal_id: u64,
    proposal: Proposal,
    pending: Pending,
}

#[derive(Debug)]
struct WaitingRead {
    id: RequestId,
    request: Request,
    /// Who sent it; its permissions are checked when it is served.
    sender: Option<AuthInfo>,
    deadline: u64,
}

/// A keep-alive this leader cannot answer yet. Two cases wait:
/// - the lease's expiry passed here: it is answered once the lease's revoke applies (TTL 0).
///   etcd's lessor waits the same way (`revokec`, `demotec`); answering TTL 0 at once would
///   tell a client its lease is gone while a newer leader, which this one does not know about
///   yet, keeps it alive;
/// - this leader has not applied an entry of its own term: its log may still hold a revoke
///   proposed by an earlier leader (or a grant it has not applied), which lands when the
///   term's first entry commits. Renewing before would promise a TTL the revoke then breaks
///   (swarm seed 1121; etcd #15247 is the same class: an old leader's revoke applied after a
///   new leader renewed).
///
/// Either way it is answered with `NotLeader` once this node stops leading or leads in a new
/// term (the server then sends it again, to the new leader), and with a timeout at the
/// deadline.
#[derive(Debug)]
struct ParkedKeepAlive {
    id: RequestId,
    lease: LeaseId,
    /// The term this node led in when the request arrived.
    term: u64,
    deadline: u64,
}

/// An input whose token names an `Authenticate` entry this member has not applied yet.
#[derive(Debug)]
struct AwaitingToken {
    index: LogIndex,
    deadline: u64,
    input: Input,
}

/// Who sent a request, once its token is resolved.
enum Sender {
    /// Auth disabled, or no token (`None`), or the token's user.
    Known(Option<AuthInfo>),
    /// The token comes from the entry at this index, not applied here yet.
    Await(LogIndex),
}

#[derive(Debug)]
struct ReadBatch {
    issued_tick: u64,
    reads: Vec<WaitingRead>,
}

pub struct Node<B: KvBackend> {
    config: Config,
    raw: RawNode<LogStore>,
    sm: StateMachine<B>,
    watch: WatchHub,
    prng: Prng,
    now_ms: u64,
    ticks: u64,
    last_term: u64,
    last_role: StateRole,
    last_leader: u64,
    pending: BTreeMap<u64, Pending>,
    /// Proposals made while no leader was known, re-proposed once one is (until their
    /// deadline): an election should delay a write, not fail it.
    parked: Vec<Parked>,
    /// Linearizable reads not yet sent for a read index.
    unsent_reads: Vec<WaitingRead>,
    /// Read-index requests in flight, by context.
    inflight_reads: BTreeMap<u64, ReadBatch>,
    /// Reads whose read index is known, waiting for apply to reach it.
    ready_reads: VecDeque<(LogIndex, Vec<WaitingRead>)>,
    /// Requests and watches waiting for their token's `Authenticate` entry to be applied.
    awaiting_token: Vec<AwaitingToken>,
    parked_keep_alives: Vec<ParkedKeepAlive>,
    /// Messages held until the Ready with that number is persisted.
    held_messages: VecDeque<(u64, Vec<Message>)>,
    /// A snapshot whose persistence will let raft count it applied.
    snapshot_applied_on_persist: Option<(u64, u64)>,
    last_compaction: LogIndex,
    transfer: Option<(RequestId, NodeId, u64)>,
    /// Attributes to publish, until the member list shows them.
    publish: Option<MemberAttributes>,
    removed: bool,
    outputs: Vec<Output>,
    /// Applied entries, when `config.record_applied`.
    applied_record: Vec<AppliedEntry>,
    /// What the invariant checks remember between steps.
    marks: invariants::Marks,
}

/// One applied log entry, as the simulator's checkers see it: two nodes that applied
/// different entries at one index (a lost or rewritten commit) differ here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedEntry {
    pub index: LogIndex,
    pub term: Term,
    /// CRC-64 of the entry's data and context.
    pub digest: u64,
}

static ENTRY_DIGEST: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_ECMA_182);

fn discard_logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl<B: KvBackend> Node<B> {
    /// Opens a node from its backend and the raft log the driver persisted (use
    /// [`bootstrap_log`] for the first start of a new cluster's initial member, and an empty
    /// [`PersistedLog`] for a member joining an existing cluster).
    pub fn open(config: Config, backend: B, log: PersistedLog) -> Result<Node<B>, Fatal> {
        let sm = StateMachine::open(
            backend,
            config.min_lease_ttl_secs(),
            config.auth_token_ttl_ms(),
        )?;
        let (applied, applied_term) = sm.applied();
        let mut hard_state = log.hard_state;
        let mut compacted = log.compacted;
        let mut entries = log.entries;
        // The backend may be ahead of the persisted log after a crash during snapshot install:
        // its state then stands for the log up to its applied index.
        if applied > compacted.0 && applied.0 > compacted.0 .0 + entries.len() as u64 {
            entries.clear();
            compacted = (applied, applied_term);
        }
        if hard_state.commit < applied.0 {
            hard_state.commit = applied.0;
        }
        let store = LogStore::restore(hard_state, sm.conf_state().clone(), compacted, entries);
        let raft_config = raft::Config {
            id: config.id.0,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: applied.0,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            read_only_option: if bugs::active(config.bug, Bug::LeaseBasedReads) {
                ReadOnlyOption::LeaseBased
            } else {
                ReadOnlyOption::Safe
            },
            ..raft::Config::default()
        };
        raft_config.validate()?;
        let raw = RawNode::new(&raft_config, store, &discard_logger())?;
        let mut node = Node {
            prng: Prng::new(config.seed),
            config,
            raw,
            sm,
            watch: WatchHub::default(),
            now_ms: 0,
            ticks: 0,
            last_term: 0,
            last_role: StateRole::Follower,
            last_leader: 0,
            pending: BTreeMap::new(),
            parked: Vec::new(),
            unsent_reads: Vec::new(),
            inflight_reads: BTreeMap::new(),
            ready_reads: VecDeque::new(),
            awaiting_token: Vec::new(),
            parked_keep_alives: Vec::new(),
            held_messages: VecDeque::new(),
            snapshot_applied_on_persist: None,
            last_compaction: compacted.0,
            transfer: None,
            publish: None,
            removed: false,
            outputs: Vec::new(),
            applied_record: Vec::new(),
            marks: invariants::Marks::default(),
        };
        node.rearm_election_timeout();
        node.last_term = node.raw.raft.term;
        // Apply what the log already holds as committed (bootstrap conf changes, or entries
        // committed before a restart but not yet in the backend).
        node.handle_ready()?;
        // A member whose own data says it was removed never serves again: its peers would
        // refuse it (etcd learns the same from them), and without a vote it would only wait.
        if !node.removed && node.sm.members.is_removed(node.config.id) {
            node.removed = true;
            node.outputs.push(Output::Removed);
        }
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn leader(&self) -> Option<NodeId> {
        match self.raw.raft.leader_id {
            0 => None,
            id => Some(NodeId(id)),
        }
    }

    pub fn term(&self) -> Term {
        Term(self.raw.raft.term)
    }

    /// Whom this node voted for in the current term.
    pub fn vote(&self) -> Option<NodeId> {
        (self.raw.raft.vote != 0).then_some(NodeId(self.raw.raft.vote))
    }

    pub fn commit_index(&self) -> LogIndex {
        LogIndex(self.raw.raft.raft_log.committed)
    }

    pub fn applied_index(&self) -> LogIndex {
        self.sm.applied().0
    }

    pub fn revision(&self) -> Revision {
        self.sm.mvcc.current_revision()
    }

    pub fn state_machine(&self) -> &StateMachine<B> {
        &self.sm
    }

    /// etcd's `CheckPassword` up to bcrypt: the hash the server checks a password against
    /// before submitting `Request::Authenticate`, and the auth revision to put in it. Errors
    /// are the client's answer: `authentication is not enabled`, `authentication failed`
    /// (no such user), or etcd's no-password-user error.
    pub fn password_check(&self, name: &str) -> Result<PasswordCheck, EtcdError> {
        self.sm.auth.password_check(name)
    }

    /// The raft log entries held in memory (for tests and invariant checkers).
    pub fn log_entries(&self, low: LogIndex) -> Vec<Entry> {
        let store = self.raw.store();
        let first = store.first_index().unwrap_or(1).max(low.0);
        let last = store.last_index().unwrap_or(0);
        if first > last {
            return Vec::new();
        }
        store
            .entries(first, last + 1, None, raft::GetEntriesContext::empty(false))
            .unwrap_or_default()
    }

    /// Watchers registered on this member (etcd's `watcher_total` gauge).
    pub fn watcher_count(&self) -> usize {
        self.watch.watcher_count()
    }

    /// Watchers whose client is not reading and who wait to catch up (etcd's
    /// `slow_watcher_total` gauge counts its unsynced watchers and victims).
    pub fn slow_watcher_count(&self) -> usize {
        self.watch.unsynced_count() + self.watch.parked_count()
    }

    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// Stops the node, handing back its backend (a crash, as far as volatile state goes).
    pub fn into_backend(self) -> B {
        self.sm.into_backend()
    }

    /// Entries applied since the last call (empty unless `config.record_applied`).
    pub fn take_applied_record(&mut self) -> Vec<AppliedEntry> {
        std::mem::take(&mut self.applied_record)
    }

    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// Feeds one input. On `Err` the node must stop: its storage or raft state is broken.
    pub fn step(&mut self, now_ms: u64, input: Input) -> Result<(), Fatal> {
        self.step_batch(now_ms, std::iter::once(input))
    }

    /// Feeds every input available now, then handles raft's Ready once: proposals that arrive
    /// together share one log append (one fsync for the driver) and one append message per
    /// follower. Drivers should pass everything they have queued.
    pub fn step_batch(
        &mut self,
        now_ms: u64,
        inputs: impl IntoIterator<Item = Input>,
    ) -> Result<(), Fatal> {
        assert!(
            now_ms >= self.now_ms,
            "n{}: clock went backwards: {now_ms} < {}",
            self.config.id,
            self.now_ms
        );
        self.now_ms = now_ms;
        for input in inputs {
            if self.removed {
                return Ok(());
            }
            self.on_input(input)?;
            // Per input, not per batch: a role that changes and changes back within a batch
            // still re-drew the election timeout from raft-rs' thread_rng.
            self.after_raft_call();
        }
        self.handle_ready()?;
        // Entries just applied may be the Authenticate entries some requests wait for.
        loop {
            let ready = self.take_token_ready();
            if ready.is_empty() {
                break;
            }
            for input in ready {
                self.on_input(input)?;
                self.after_raft_call();
            }
            self.handle_ready()?;
        }
        self.sync_watchers()?;
        if invariants::CHECKED {
            self.check_invariants()?;
        }
        Ok(())
    }

    fn take_token_ready(&mut self) -> Vec<Input> {
        let applied = self.sm.applied().0;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.awaiting_token)
            .into_iter()
            .partition(|a| a.index <= applied);
        self.awaiting_token = waiting;
        ready.into_iter().map(|a| a.input).collect()
    }

    fn on_input(&mut self, input: Input) -> Result<(), Fatal> {
        match input {
            Input::Tick => self.on_tick(),
            Input::Message(m) => self.on_message(*m),
            Input::Persisted { number } => self.on_persisted(number),
            Input::Request {
                id,
                request,
                credential,
            } => self.on_request(id, request, credential)?,
            Input::WatchCreate {
                stream,
                request,
                credential,
            } => self.on_watch_create(stream, request, credential),
            Input::WatchCancel { stream, watch_id } => {
                if let Some(out) = self.watch.cancel(stream, watch_id) {
                    self.emit_watch(vec![out]);
                }
            }
            Input::WatchProgress { stream } => {
                let current = self.revision();
                if let Some(out) = self.watch.request_progress(stream, current) {
                    self.emit_watch(vec![out]);
                }
            }
            Input::WatchRefused { stream, responses } => self.watch.refused(stream, responses),
            Input::WatchWritable { stream } => {
                let outs = self.watch.writable(stream);
                self.emit_watch(outs);
            }
            Input::WatchStreamClosed { stream } => {
                self.watch.close_stream(stream);
                self.awaiting_token.retain(
                    |a| !matches!(a.input, Input::WatchCreate { stream: s, .. } if s == stream),
                );
            }
            Input::Unreachable(id) => self.raw.report_unreachable(id.0),
            Input::SnapshotSent { to, ok } => {
                let status = if ok {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to.0, status);
            }
            Input::Campaign => {
                let _ = self.raw.campaign();
            }
            Input::Publish { name, client_urls } => {
                let attrs = MemberAttributes {
                    id: self.config.id.0,
                    name,
                    client_urls,
                };
                self.propose_internal(internal_request::Request::MemberAttributes(attrs.clone()));
                self.publish = Some(attrs);
            }
        }
        Ok(())
    }

    /// etcd's watch-create auth check (`isWatchPermitted`): read permission on the watched
    /// range, after the negative start revision check; a refusal is a created-and-canceled
    /// response whose reason is the gRPC status text of the error.
    fn on_watch_create(
        &mut self,
        stream: StreamId,
        request: pb::WatchCreateRequest,
        credential: Option<Credential>,
    ) {
        if request.start_revision >= 0 {
            let refused = match self.sender(credential.as_ref()) {
                Ok(Sender::Await(index)) => {
                    let input = Input::WatchCreate {
                        stream,
                        request,
                        credential,
                    };
                    self.await_token(index, input);
                    return;
                }
                Ok(Sender::Known(ai)) => {
                    let key = if request.key.is_empty() {
                        vec![0]
                    } else {
                        request.key.clone()
                    };
                    self.sm
                        .auth
                        .check_range(ai.as_ref(), &key, &request.range_end)
                        .err()
                }
                Err(e) => Some(e),
            };
            if let Some(e) = refused {
                let out = created_and_canceled(stream, &e.grpc_status_text());
                self.emit_watch(vec![out]);
                return;
            }
        }
        let (current, compact) = self.revisions();
        let out = self.watch.create(stream, &request, current, compact);
        self.emit_watch(vec![out]);
    }

    /// etcd's `AuthInfoFromCtx`: who sent a request, from its credential.
    fn sender(&mut self, credential: Option<&Credential>) -> Result<Sender, EtcdError> {
        let token = match credential {
            Some(_) if !self.sm.auth.is_enabled() => return Ok(Sender::Known(None)),
            None => return Ok(Sender::Known(None)),
            Some(Credential::User { username, revision }) => {
                return Ok(Sender::Known(Some(AuthInfo {
                    username: username.clone(),
                    revision: revision.unwrap_or(self.sm.auth.revision()),
                    pinned: revision.is_some(),
                })));
            }
            Some(Credential::Rejected) => return Err(EtcdError::InvalidAuthToken),
            Some(Credential::SimpleToken(t)) => t.strip_prefix("Bearer ").unwrap_or(t),
        };
        let index = AuthStore::token_index(token).ok_or(EtcdError::InvalidAuthToken)?;
        if index > self.sm.applied().0 {
            return Ok(Sender::Await(index));
        }
        match self.sm.auth.resolve_token(token, self.now_ms) {
            Some(ai) => Ok(Sender::Known(Some(ai))),
            None => Err(EtcdError::InvalidAuthToken),
        }
    }

    fn await_token(&mut self, index: LogIndex, input: Input) {
        let deadline = self.ticks + self.config.request_timeout_ticks;
        self.awaiting_token.push(AwaitingToken {
            index,
            deadline,
            input,
        });
    }

    fn revisions(&self) -> (Revision, Revision) {
        (
            self.sm.mvcc.current_revision(),
            self.sm.mvcc.compact_revision(),
        )
    }

    /// raft-rs re-draws the election timeout from `thread_rng` whenever it resets term or
    /// role; replace that draw with ours so runs replay from the seed.
    fn after_raft_call(&mut self) {
        let raft = &self.raw.raft;
        if raft.term != self.last_term || raft.state != self.last_role {
            self.rearm_election_timeout();
        }
        let (term, role, leader) = (
            self.raw.raft.term,
            self.raw.raft.state,
            self.raw.raft.leader_id,
        );
        let role_changed = role != self.last_role;
        let leader_changed = leader != self.last_leader || term != self.last_term;
        self.last_term = term;
        self.last_role = role;
        self.last_leader = leader;
        if role_changed {
            self.on_role_change(role);
        }
        if leader_changed {
            self.outputs.push(Output::LeaderChanged {
                leader: (leader != 0).then_some(NodeId(leader)),
                term: Term(term),
            });
            // A new leader may have dropped read-index requests: ask again.
            self.requeue_inflight_reads();
            if leader != 0 {
                self.repropose_parked();
            }
            if let Some((id, target, _)) = self.transfer {
                if leader == target.0 {
                    self.transfer = None;
                    self.respond(id, Ok(Response::MoveLeader(Default::default())));
                }
            }
        }
    }

    fn rearm_election_timeout(&mut self) {
        let min = self.config.election_ticks as u64;
        let timeout = self.prng.range(min, 2 * min) as usize;
        self.raw.raft.set_randomized_election_timeout(timeout);
    }

    fn on_role_change(&mut self, role: StateRole) {
        if role == StateRole::Leader {
            self.sm
                .lessor
                .promote(self.now_ms, self.config.election_timeout_ms());
        } else if self.sm.lessor.is_primary() {
            self.sm.lessor.demote();
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        self.raw.tick();
        self.expire_pending();
        if self
            .ticks
            .is_multiple_of(self.config.heartbeat_ticks as u64 * 3)
        {
            self.requeue_stale_reads();
        }
        if !self.is_leader() && bugs::active(self.config.bug, Bug::FollowerExpiresLeases) {
            if !self.sm.lessor.is_primary() {
                self.sm.lessor.promote(self.now_ms, 0);
            }
            self.expire_leases();
        }
        if self.is_leader() {
            self.expire_leases();
        }
        self.settle_parked_keep_alives();
        if self
            .ticks
            .is_multiple_of((1000 / self.config.tick_ms).max(1))
        {
            self.sm.auth.purge_expired_tokens(self.now_ms);
        }
        self.retry_publish();
        let current = self.revision();
        let interval = self.config.limits.progress_notify_interval_ms;
        let outs = self.watch.tick(self.now_ms, interval, current);
        self.emit_watch(outs);
    }

    fn on_message(&mut self, m: Message) {
        // A message from a peer this node does not know may still be valid (it may be a newer
        // member); raft-rs ignores what it cannot use. Errors here are about the message.
        let _ = self.raw.step(m);
    }

    fn on_persisted(&mut self, number: u64) {
        self.raw.on_persist_ready(number);
        while let Some((n, _)) = self.held_messages.front() {
            if *n > number {
                break;
            }
            let (_, msgs) = self.held_messages.pop_front().expect("front exists");
            self.outputs.extend(msgs.into_iter().map(Output::Send));
        }
        if let Some((n, index)) = self.snapshot_applied_on_persist {
            if n <= number {
                self.snapshot_applied_on_persist = None;
                self.raw.advance_apply_to(index);
            }
        }
    }

    /// Processes every Ready raft has, in the contract's order.
    fn handle_ready(&mut self) -> Result<(), Fatal> {
        loop {
            // Inside the loop: the read-index request (and, on a single node, its answer)
            // must be handled in this pass, not at the next input.
            self.issue_read_index();
            if !self.raw.has_ready() {
                break;
            }
            let mut rd = self.raw.ready();
            let number = rd.number();
            for m in rd.take_messages() {
                // Contract 2: what leaves at once never answers for unpersisted state.
                assert!(
                    !promises_persisted_state(&m),
                    "n{}: {:?} to {} would leave before its state is persisted",
                    self.config.id,
                    m.get_msg_type(),
                    m.to
                );
                self.outputs.push(Output::Send(m));
            }
            let mut task = PersistTask {
                number,
                must_sync: rd.must_sync(),
                ..PersistTask::default()
            };
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                task.snapshot = Some(self.install_snapshot(snap, number)?);
            }
            for rs in rd.take_read_states() {
                self.on_read_state(rs.index, &rs.request_ctx);
            }
            let committed = rd.take_committed_entries();
            self.apply_entries(committed)?;
            if !rd.entries().is_empty() {
                self.raw.mut_store().append(rd.entries());
                task.entries = rd.take_entries();
            }
            if let Some(hs) = rd.hs() {
                self.raw.mut_store().set_hard_state(hs.clone());
                let mut persisted = hs.clone();
                if bugs::active(self.config.bug, Bug::VoteNotPersisted) {
                    persisted.vote = 0;
                }
                task.hard_state = Some(persisted);
            }
            let held = rd.take_persisted_messages();
            if !held.is_empty() {
                self.held_messages.push_back((number, held));
            }
            self.outputs.push(Output::Persist(task));
            self.raw.advance_append_async(rd);
            self.after_raft_call();
        }
        self.serve_ready_reads()?;
        self.maybe_snapshot()?;
        if self.raw.store().take_snapshot_wanted() {
            self.build_snapshot()?;
        }
        self.after_raft_call();
        Ok(())
    }

    fn install_snapshot(&mut self, snap: Snapshot, number: u64) -> Result<(LogIndex, Term), Fatal> {
        let meta = snap.get_metadata();
        let point = (LogIndex(meta.index), Term(meta.term));
        let mut data = snap.data.to_vec();
        if bugs::active(self.config.bug, Bug::SnapshotWithoutLeases) {
            if let Ok(mut decoded) = SnapshotData::decode(data.as_slice()) {
                decoded
                    .records
                    .retain(|r| r.bucket != u32::from(Bucket::Lease.tag()));
                data = decoded.encode_to_vec();
            }
        }
        self.sm
            .install_snapshot(&data, self.config.min_lease_ttl_secs())?;
        assert_eq!(
            self.sm.applied().0,
            point.0,
            "n{}: snapshot data is at a different index than its metadata",
            self.config.id
        );
        self.raw.mut_store().apply_snapshot(snap);
        self.snapshot_applied_on_persist = Some((number, point.0 .0));
        self.last_compaction = point.0;
        // Watchers were synced to the old revision: replay what the snapshot skipped.
        self.watch.unsync_all();
        // Reads waiting on indexes the snapshot covers can be served now.
        Ok(point)
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), Fatal> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let mut events: Vec<Event> = Vec::new();
        // A previous record is read only for a watcher that will send it.
        self.sm.mvcc.set_fill_prev_kv(self.watch.wants_prev_kv());
        self.sm.mvcc.set_bug(self.config.bug);
        for entry in &entries {
            if entry.index <= self.sm.applied().0 .0 {
                continue; // already in the backend before a restart
            }
            let applied = self.sm.apply(entry, self.now_ms)?;
            if self.config.record_applied {
                let mut digest = ENTRY_DIGEST.digest();
                digest.update(&entry.data);
                digest.update(&entry.context);
                self.applied_record.push(AppliedEntry {
                    index: LogIndex(entry.index),
                    term: Term(entry.term),
                    digest: digest.finalize(),
                });
            }
            self.on_applied(applied, &mut events)?;
        }
        self.sm.commit()?;
        self.raw.advance_apply_to(last);
        self.settle_parked_keep_alives();
        if !events.is_empty() {
            self.inject_watch_bugs(&mut events);
            let outs = self.watch.notify(&events);
            self.emit_watch(outs);
        }
        Ok(())
    }

    /// The watch bugs of the catalogue ([`crate::bugs`]); nothing unless one is injected.
    fn inject_watch_bugs(&self, events: &mut Vec<Event>) {
        let bug = self.config.bug;
        if bugs::active(bug, Bug::DropWatchEvent) {
            events.retain(|e| {
                e.kv.as_ref()
                    .map(|kv| kv.mod_revision % 7 != 0)
                    .unwrap_or(true)
            });
        }
        if bugs::active(bug, Bug::DuplicateWatchEvent) {
            if let Some(last) = events.last().cloned() {
                events.push(last);
            }
        }
        if bugs::active(bug, Bug::WrongPrevKv) {
            for e in events.iter_mut() {
                if e.prev_kv.is_some() {
                    e.prev_kv = e.kv.clone();
                }
            }
        }
    }

    fn on_applied(&mut self, applied: Applied, events: &mut Vec<Event>) -> Result<(), Fatal> {
        if let Some(cc) = &applied.conf_change {
            let cs = self.raw.apply_conf_change(cc)?;
            let removed_self = cc.get_changes().iter().any(|c| {
                c.get_change_type() == ConfChangeType::RemoveNode && c.node_id == self.config.id.0
            });
            self.sm.set_conf_state(cs);
            if removed_self {
                self.removed = true;
                self.outputs.push(Output::Removed);
            }
        }
        events.extend(applied.events);
        let Some((origin, result)) = applied.reply else {
            return Ok(());
        };
        if origin.node != self.config.id {
            return Ok(());
        }
        let Some(pending) = self.pending.remove(&origin.proposal) else {
            return Ok(()); // proposed before a restart, or timed out already
        };
        let result = match result {
            Err(e) => Err(e),
            Ok(outcome) => Ok(self.reply_for(pending.kind, outcome, applied.member.as_ref())),
        };
        self.respond(pending.id, result);
        Ok(())
    }

    /// The answer to an applied proposal: the state machine's, or one built from what the
    /// proposal asked for. Which it is follows from the kind of proposal (asserted).
    fn reply_for(
        &self,
        kind: PendingKind,
        outcome: Outcome,
        member: Option<&MemberRecord>,
    ) -> Response {
        let members = || self.sm.members.list();
        match (kind, outcome) {
            (PendingKind::Plain, Outcome::Done(resp)) => *resp,
            (PendingKind::MemberAdd, Outcome::Accepted) => {
                Response::MemberAdd(pb::MemberAddResponse {
                    header: None,
                    member: member.map(to_member),
                    members: members(),
                })
            }
            (PendingKind::MemberRemove, Outcome::Accepted) => {
                Response::MemberRemove(pb::MemberRemoveResponse {
                    header: None,
                    members: members(),
                })
            }
            (PendingKind::MemberPromote, Outcome::Accepted) => {
                Response::MemberPromote(pb::MemberPromoteResponse {
                    header: None,
                    members: members(),
                })
            }
            (PendingKind::KeepAlive { lease, ttl }, Outcome::Accepted) => {
                Response::LeaseKeepAlive(pb::LeaseKeepAliveResponse {
                    header: None,
                    id: lease.0,
                    ttl,
                })
            }
            (kind, outcome) => panic!(
                "n{}: proposal of kind {kind:?} applied with outcome {outcome:?}",
                self.config.id
            ),
        }
    }

    fn header(&self) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.config.cluster_id,
            member_id: self.config.id.0,
            revision: self.sm.mvcc.current_revision().0,
            raft_term: self.raw.raft.term,
        }
    }

    fn respond(&mut self, id: RequestId, mut result: Result<Response, EtcdError>) {
        if let Ok(resp) = &mut result {
            let mut header = self.header();
            if matches!(resp, Response::Txn(_))
                && bugs::active(self.config.bug, Bug::TxnRevisionOffByOne)
            {
                header.revision += 1;
            }
            *resp.header_mut() = Some(header);
        }
        self.outputs.push(Output::Respond { id, result });
    }

    /// Watch responses leave through the hub's `route`, which holds back those for parked
    /// streams; a held response keeps the header it got here the first time.
    fn emit_watch(&mut self, outs: Vec<WatchOutput>) {
        for mut out in outs {
            if out.response.header.is_none() {
                out.response.header = Some(self.header());
            }
            if let Some(out) = self.watch.route(out) {
                self.outputs.push(Output::Watch(out));
            }
        }
    }

    // ---- client requests ------------------------------------------------------------------

    fn on_request(
        &mut self,
        id: RequestId,
        request: Request,
        credential: Option<Credential>,
    ) -> Result<(), Fatal> {
        let size = request_size(&request);
        if size > self.config.limits.max_request_bytes {
            self.respond(id, Err(EtcdError::RequestTooLarge));
            return Ok(());
        }
        // etcd resolves no token for Authenticate: the client is logging in.
        let sender = match &request {
            Request::Authenticate(_) => Ok(Sender::Known(None)),
            _ => self.sender(credential.as_ref()),
        };
        let sender = match sender {
            Ok(Sender::Known(ai)) => ai,
            Ok(Sender::Await(index)) => {
                let input = Input::Request {
                    id,
                    request,
                    credential,
                };
                self.await_token(index, input);
                return Ok(());
            }
            Err(e) => {
                self.respond(id, Err(e));
                return Ok(());
            }
        };
        match self.dispatch(id, request, sender) {
            Ok(()) => Ok(()),
            Err(Error::Etcd(e)) => {
                self.respond(id, Err(e));
                Ok(())
            }
            Err(Error::Backend(e)) => Err(e.into()),
        }
    }

    /// `sender`: who sent the request (see [`AuthInfo`]); reads are checked when served,
    /// writes when applied, everything else here (`AuthStore::check_serve`).
    fn dispatch(
        &mut self,
        id: RequestId,
        request: Request,
        sender: Option<AuthInfo>,
    ) -> Result<(), Error> {
        use internal_request::Request as R;
        let limits = self.config.limits.clone();
        let ai = sender.as_ref();
        let checked_when_served = match &request {
            Request::Range(_) | Request::RangeChunk(_) => true,
            Request::Txn(t) => txn_is_read_only(t),
            _ => false,
        };
        if !checked_when_served {
            self.sm.auth.check_serve(ai, &request, &self.sm.lessor)?;
        }
        let plain = PendingKind::Plain;
        match request {
            Request::Range(r) => {
                mvcc::validate_range(&r)?;
                let serializable = r.serializable;
                self.read(id, Request::Range(r), serializable, sender)
            }
            Request::RangeChunk(c) => {
                mvcc::validate_range(&c.range)?;
                let serializable = c.range.serializable;
                self.read(id, Request::RangeChunk(c), serializable, sender)
            }
            Request::Put(p) => {
                mvcc::validate_put(&p)?;
                self.check_quota(p.key.len() + p.value.len())?;
                self.propose(id, R::Put(p), plain, ai)
            }
            Request::DeleteRange(d) => {
                mvcc::validate_delete_range(&d)?;
                self.propose(id, R::DeleteRange(d), plain, ai)
            }
            Request::Txn(t) => {
                mvcc::validate_txn(&t, limits.max_txn_ops)?;
                if txn_is_read_only(&t) {
                    let serializable = txn_is_serializable(&t);
                    return self.read(id, Request::Txn(t), serializable, sender);
                }
                if crate::request::txn_has_put(&t) {
                    self.check_quota(t.encoded_len())?;
                }
                self.propose(id, R::Txn(t), plain, ai)
            }
            Request::Compact(c) => self.propose(id, R::Compaction(c), plain, ai),
            Request::LeaseGrant(mut g) => {
                if g.ttl > limits::MAX_LEASE_TTL_SECS {
                    return Err(EtcdError::LeaseTtlTooLarge.into());
                }
                self.check_quota(0)?;
                if g.id == 0 {
                    g.id = self.new_lease_id();
                }
                self.propose(id, R::LeaseGrant(g), plain, ai)
            }
            Request::LeaseRevoke(r) => self.propose(id, R::LeaseRevoke(r), plain, ai),
            Request::LeaseKeepAlive(k) => self.keep_alive(id, LeaseId(k.id)),
            Request::LeaseTimeToLive(t) => {
                if !self.is_leader() {
                    return Err(EtcdError::NotLeader.into());
                }
                let resp = self
                    .sm
                    .lessor
                    .time_to_live(LeaseId(t.id), self.now_ms, t.keys)?;
                self.respond(id, Ok(Response::LeaseTimeToLive(resp)));
                Ok(())
            }
            Request::LeaseLeases(_) => {
                let leases = self
                    .sm
                    .lessor
                    .leases()
                    .into_iter()
                    .map(|l| pb::LeaseStatus { id: l.0 })
                    .collect();
                let resp = pb::LeaseLeasesResponse {
                    header: None,
                    leases,
                };
                self.respond(id, Ok(Response::LeaseLeases(resp)));
                Ok(())
            }
            Request::MemberAdd(m) => self.member_add(id, m),
            Request::MemberRemove(m) => self.member_remove(id, NodeId(m.id)),
            Request::MemberUpdate(m) => {
                if !membership::urls_valid(&m.peer_ur_ls) {
                    return Err(EtcdError::MemberBadUrls.into());
                }
                let Some(existing) = self.sm.members.get(NodeId(m.id)).cloned() else {
                    return Err(EtcdError::MemberNotFound.into());
                };
                let record = MemberRecord {
                    peer_urls: m.peer_ur_ls,
                    ..existing
                };
                self.propose(id, R::MemberUpdate(record), plain, ai)
            }
            Request::MemberList(m) => {
                let linearizable = m.linearizable;
                self.read(id, Request::MemberList(m), !linearizable, sender)
            }
            Request::MemberPromote(m) => self.member_promote(id, NodeId(m.id)),
            Request::Alarm(a) => {
                if a.action == AlarmAction::Get as i32 {
                    let resp = pb::AlarmResponse {
                        header: None,
                        alarms: self.sm.alarms(),
                    };
                    self.respond(id, Ok(Response::Alarm(resp)));
                    return Ok(());
                }
                self.propose(id, R::Alarm(a), plain, ai)
            }
            Request::Status(_) => {
                let resp = self.status();
                self.respond(id, Ok(Response::Status(resp)));
                Ok(())
            }
            Request::Hash(_) => {
                let hash = self.sm.hash()?;
                self.respond(
                    id,
                    Ok(Response::Hash(pb::HashResponse { header: None, hash })),
                );
                Ok(())
            }
            Request::HashKv(h) => {
                let backend = self.sm.backend();
                let hkv = self.sm.mvcc.hash_kv(backend, Revision(h.revision))?;
                let resp = pb::HashKvResponse {
                    header: None,
                    hash: hkv.hash,
                    compact_revision: hkv.compact_revision.0,
                    hash_revision: hkv.hash_revision.0,
                };
                self.respond(id, Ok(Response::HashKv(resp)));
                Ok(())
            }
            Request::MoveLeader(m) => self.move_leader(id, NodeId(m.target_id)),
            Request::AuthEnable(r) => self.propose(id, R::AuthEnable(r), plain, ai),
            Request::AuthDisable(r) => self.propose(id, R::AuthDisable(r), plain, ai),
            Request::Authenticate(r) => self.propose(id, R::Authenticate(r), plain, None),
            Request::UserAdd(mut r) => {
                // Plaintext never enters the log: the server sends the hash.
                r.password.clear();
                self.propose(id, R::AuthUserAdd(r), plain, ai)
            }
            Request::UserDelete(r) => self.propose(id, R::AuthUserDelete(r), plain, ai),
            Request::UserChangePassword(mut r) => {
                r.password.clear();
                self.propose(id, R::AuthUserChangePassword(r), plain, ai)
            }
            Request::UserGrantRole(r) => self.propose(id, R::AuthUserGrantRole(r), plain, ai),
            Request::UserRevokeRole(r) => self.propose(id, R::AuthUserRevokeRole(r), plain, ai),
            Request::RoleAdd(r) => self.propose(id, R::AuthRoleAdd(r), plain, ai),
            Request::RoleDelete(r) => self.propose(id, R::AuthRoleDelete(r), plain, ai),
            Request::RoleGrantPermission(r) => {
                self.propose(id, R::AuthRoleGrantPermission(r), plain, ai)
            }
            Request::RoleRevokePermission(r) => {
                self.propose(id, R::AuthRoleRevokePermission(r), plain, ai)
            }
            // Auth reads are served from this member's state (etcd routes them through raft).
            Request::AuthStatus(_) => {
                let resp = pb::AuthStatusResponse {
                    header: None,
                    enabled: self.sm.auth.is_enabled(),
                    auth_revision: self.sm.auth.revision(),
                };
                self.respond(id, Ok(Response::AuthStatus(resp)));
                Ok(())
            }
            Request::UserGet(r) => {
                let resp = self.sm.auth.user_get(&r.name)?;
                self.respond(id, Ok(Response::UserGet(resp)));
                Ok(())
            }
            Request::UserList(_) => {
                let resp = pb::AuthUserListResponse {
                    header: None,
                    users: self.sm.auth.user_list(),
                };
                self.respond(id, Ok(Response::UserList(resp)));
                Ok(())
            }
            Request::RoleGet(r) => {
                let resp = self.sm.auth.role_get(&r.role)?;
                self.respond(id, Ok(Response::RoleGet(resp)));
                Ok(())
            }
            Request::RoleList(_) => {
                let resp = pb::AuthRoleListResponse {
                    header: None,
                    roles: self.sm.auth.role_list(),
                };
                self.respond(id, Ok(Response::RoleList(resp)));
                Ok(())
            }
        }
    }

    fn status(&self) -> pb::StatusResponse {
        let backend = self.sm.backend();
        let errors = self
            .sm
            .alarms()
            .iter()
            .map(|a| format!("memberID:{} alarm:{}", a.member_id, alarm_name(a.alarm)))
            .collect();
        let is_learner = self
            .sm
            .members
            .get(self.config.id)
            .is_some_and(|m| m.is_learner);
        pb::StatusResponse {
            header: None,
            version: ETCD_VERSION.to_string(),
            db_size: backend.size_bytes() as i64,
            leader: self.raw.raft.leader_id,
            raft_index: self.raw.raft.raft_log.committed,
            raft_term: self.raw.raft.term,
            raft_applied_index: self.sm.applied().0 .0,
            errors,
            db_size_in_use: backend.size_in_use_bytes() as i64,
            is_learner,
            storage_version: ETCD_VERSION.to_string(),
            db_size_quota: self.config.limits.quota_backend_bytes as i64,
            downgrade_info: None,
        }
    }

    /// etcd refuses writes that would grow the backend past its quota and raises the NOSPACE
    /// alarm (once) so every member refuses them too.
    fn check_quota(&mut self, write_bytes: usize) -> Result<(), Error> {
        if self.sm.nospace() {
            return Err(EtcdError::NoSpace.into());
        }
        let quota = self.config.limits.quota_backend_bytes;
        let size = self.sm.backend().size_bytes() + write_bytes as u64;
        if size <= quota {
            return Ok(());
        }
        let alarm = pb::AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.config.id.0,
            alarm: AlarmType::Nospace as i32,
        };
        self.propose_internal(internal_request::Request::Alarm(alarm));
        Err(EtcdError::NoSpace.into())
    }

    fn new_lease_id(&mut self) -> i64 {
        loop {
            // etcd lease ids are positive int64s.
            let id = (self.prng.next_u64() >> 1) as i64;
            if id != 0 && !self.sm.lessor.contains(LeaseId(id)) {
                return id;
            }
        }
    }

    /// Proposes a client's request; `sender` is checked when it is applied.
    fn propose(
        &mut self,
        id: RequestId,
        request: internal_request::Request,
        kind: PendingKind,
        sender: Option<&AuthInfo>,
    ) -> Result<(), Error> {
        let proposal_id = self.prng.next_u64();
        let data = InternalRequest {
            origin: self.config.id.0,
            request_id: proposal_id,
            request: Some(request),
            username: sender.map_or_else(String::new, |ai| ai.username.clone()),
            auth_revision: sender.map_or(0, |ai| ai.revision),
        }
        .encode_to_vec();
        self.submit(proposal_id, Proposal::Normal(data), id, kind)
    }

    /// Hands a proposal to raft, or parks it while no leader is known.
    fn submit(
        &mut self,
        proposal_id: u64,
        proposal: Proposal,
        id: RequestId,
        kind: PendingKind,
    ) -> Result<(), Error> {
        let pending = Pending {
            id,
            kind,
            deadline: self.ticks + self.config.request_timeout_ticks,
        };
        self.submit_pending(proposal_id, proposal, pending)
    }

    fn submit_pending(
        &mut self,
        proposal_id: u64,
        proposal: Proposal,
        pending: Pending,
    ) -> Result<(), Error> {
        if self.raw.raft.leader_id == 0 {
            self.parked.push(Parked {
                proposal_id,
                proposal,
                pending,
            });
            return Ok(());
        }
        let result = match &proposal {
            Proposal::Normal(data) => self.raw.propose(Vec::new(), data.clone()),
            Proposal::ConfChange(cc) => self.raw.propose_conf_change(Vec::new(), cc.clone()),
        };
        result.map_err(|_| self.unavailable())?;
        self.pending.insert(proposal_id, pending);
        Ok(())
    }

    fn repropose_parked(&mut self) {
        for parked in std::mem::take(&mut self.parked) {
            let id = parked.pending.id;
            if let Err(Error::Etcd(e)) =
                self.submit_pending(parked.proposal_id, parked.proposal, parked.pending)
            {
                self.respond(id, Err(e));
            }
        }
    }

    /// Proposes a command no client waits for (lease revokes, checkpoints, alarms).
    fn propose_internal(&mut self, request: internal_request::Request) {
        let data = InternalRequest {
            origin: 0,
            request_id: 0,
            request: Some(request),
            ..InternalRequest::default()
        }
        .encode_to_vec();
        // Dropped when leadership is in flux; the leader re-derives the need and retries.
        let _ = self.raw.propose(Vec::new(), data);
    }

    fn unavailable(&self) -> EtcdError {
        if self.raw.raft.leader_id == 0 {
            EtcdError::NoLeader
        } else {
            EtcdError::LeaderChanged
        }
    }

    fn expire_pending(&mut self) {
        let now = self.ticks;
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            let p = self.pending.remove(&k).expect("listed above");
            self.respond(p.id, Err(EtcdError::Timeout));
        }
        let (late, parked): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.pending.deadline <= now);
        self.parked = parked;
        for p in late {
            self.respond(p.pending.id, Err(EtcdError::NoLeader));
        }
        self.expire_awaiting_token();
        let mut timed_out = Vec::new();
        self.unsent_reads.retain(|r| {
            let keep = r.deadline > now;
            if !keep {
                timed_out.push(r.id);
            }
            keep
        });
        for batch in self.inflight_reads.values_mut() {
            batch.reads.retain(|r| {
                let keep = r.deadline > now;
                if !keep {
                    timed_out.push(r.id);
                }
                keep
            });
        }
        self.inflight_reads.retain(|_, b| !b.reads.is_empty());
        if let Some((id, _, deadline)) = self.transfer {
            if deadline <= now {
                self.transfer = None;
                timed_out.push(id);
            }
        }
        for id in timed_out {
            self.respond(id, Err(EtcdError::Timeout));
        }
    }

    /// A token whose entry is still not applied at the deadline is invalid (etcd gives up
    /// its index wait when the request's context ends).
    fn expire_awaiting_token(&mut self) {
        let now = self.ticks;
        let (late, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.awaiting_token)
            .into_iter()
            .partition(|a| a.deadline <= now);
        self.awaiting_token = waiting;
        for a in late {
            match a.input {
                Input::Request { id, .. } => self.respond(id, Err(EtcdError::InvalidAuthToken)),
                Input::WatchCreate { stream, .. } => {
                    let reason = EtcdError::InvalidAuthToken.grpc_status_text();
                    self.emit_watch(vec![created_and_canceled(stream, &reason)]);
                }
                other => panic!("n{}: {other:?} waited for a token", self.config.id),
            }
        }
    }

    // ---- reads --------------------------------------------------------------------------

    fn read(
        &mut self,
        id: RequestId,
        request: Request,
        serializable: bool,
        sender: Option<AuthInfo>,
    ) -> Result<(), Error> {
        if serializable || bugs::active(self.config.bug, Bug::SerializableAsLinearizable) {
            let resp = self.serve_checked(&request, sender)?;
            self.respond(id, Ok(resp));
            return Ok(());
        }
        let deadline = self.ticks + self.config.request_timeout_ticks;
        self.unsent_reads.push(WaitingRead {
            id,
            request,
            sender,
            deadline,
        });
        Ok(())
    }

    /// Serves a read once its permissions are checked against the auth store as it is now
    /// (etcd resolves a simple token when it serves the read, so its revision is the current
    /// one; a JWT's signed revision is checked as it is, so an old one is refused).
    fn serve_checked(
        &self,
        request: &Request,
        sender: Option<AuthInfo>,
    ) -> Result<Response, Error> {
        let ai = sender.map(|ai| AuthInfo {
            revision: if ai.pinned {
                ai.revision
            } else {
                self.sm.auth.revision()
            },
            ..ai
        });
        self.sm
            .auth
            .check_serve(ai.as_ref(), request, &self.sm.lessor)?;
        self.serve_read(request)
    }

    fn serve_read(&self, request: &Request) -> Result<Response, Error> {
        let backend = self.sm.backend();
        match request {
            Request::Range(r) => Ok(Response::Range(self.sm.mvcc.range(
                backend,
                r,
                Counting::Total,
            )?)),
            Request::RangeChunk(c) => Ok(Response::RangeChunk(
                self.sm.mvcc.range_encoded(backend, &c.range, c.counting)?,
            )),
            Request::Txn(t) => {
                // Read-only: the store applies no write, so a shared borrow suffices.
                Ok(Response::Txn(self.sm.mvcc.read_txn(backend, t)?))
            }
            Request::MemberList(_) => Ok(Response::MemberList(pb::MemberListResponse {
                header: None,
                members: self.sm.members.list(),
            })),
            other => panic!("not a read: {other:?}"),
        }
    }

    /// Sends one read-index request for every read that arrived since the last one (etcd
    /// batches linearizable reads the same way).
    fn issue_read_index(&mut self) {
        if self.unsent_reads.is_empty() {
            return;
        }
        let ctx = self.prng.next_u64();
        let reads = std::mem::take(&mut self.unsent_reads);
        self.inflight_reads.insert(
            ctx,
            ReadBatch {
                issued_tick: self.ticks,
                reads,
            },
        );
        self.raw.read_index(ctx.to_be_bytes().to_vec());
    }

    fn on_read_state(&mut self, index: u64, ctx: &[u8]) {
        let Ok(bytes) = <[u8; 8]>::try_from(ctx) else {
            return;
        };
        if let Some(batch) = self.inflight_reads.remove(&u64::from_be_bytes(bytes)) {
            self.ready_reads.push_back((LogIndex(index), batch.reads));
        }
    }

    fn serve_ready_reads(&mut self) -> Result<(), Fatal> {
        let applied = self.sm.applied().0;
        let eager = bugs::active(self.config.bug, Bug::ReadIndexNotApplied);
        while let Some((index, _)) = self.ready_reads.front() {
            if *index > applied && !eager {
                break;
            }
            let (_, reads) = self.ready_reads.pop_front().expect("front exists");
            for r in reads {
                match self.serve_checked(&r.request, r.sender) {
                    Ok(resp) => self.respond(r.id, Ok(resp)),
                    Err(Error::Etcd(e)) => self.respond(r.id, Err(e)),
                    Err(Error::Backend(e)) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// raft-rs drops read-index requests it cannot serve (no leader, or a leader that has not
    /// committed in its term yet): re-send those that saw no answer.
    fn requeue_stale_reads(&mut self) {
        let stale_before = self
            .ticks
            .saturating_sub(self.config.heartbeat_ticks as u64 * 3);
        let stale: Vec<u64> = self
            .inflight_reads
            .iter()
            .filter(|(_, b)| b.issued_tick <= stale_before)
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            let batch = self.inflight_reads.remove(&k).expect("listed above");
            self.unsent_reads.extend(batch.reads);
        }
    }

    fn requeue_inflight_reads(&mut self) {
        let all = std::mem::take(&mut self.inflight_reads);
        for (_, batch) in all {
            self.unsent_reads.extend(batch.reads);
        }
    }

    /// Re-proposes this member's attributes every election timeout until they are applied
    /// (a proposal is dropped while no leader is known, and may be lost with a leader).
    fn retry_publish(&mut self) {
        let Some(attrs) = &self.publish else { return };
        let applied = self
            .sm
            .members
            .get(self.config.id)
            .is_some_and(|m| m.name == attrs.name && m.client_urls == attrs.client_urls);
        if applied {
            self.publish = None;
        } else if self.ticks.is_multiple_of(self.config.election_ticks as u64) {
            let attrs = attrs.clone();
            self.propose_internal(internal_request::Request::MemberAttributes(attrs));
        }
    }

    // ---- leases -------------------------------------------------------------------------

    fn keep_alive(&mut self, id: RequestId, lease: LeaseId) -> Result<(), Error> {
        self.try_keep_alive(ParkedKeepAlive {
            id,
            lease,
            term: self.raw.raft.term,
            deadline: self.ticks + self.config.request_timeout_ticks,
        });
        Ok(())
    }

    /// Has this node applied an entry of its current term? Before that a leader's state
    /// machine may lag entries of earlier terms that are committed, or about to be.
    fn applied_in_current_term(&self) -> bool {
        let applied = self.sm.applied().0 .0;
        self.raw.raft.raft_log.term(applied) == Ok(self.raw.raft.term)
    }

    /// Answers `k` if its lease's fate is known on this leader, or parks it.
    fn try_keep_alive(&mut self, k: ParkedKeepAlive) {
        if !self.is_leader() || k.term != self.raw.raft.term {
            self.respond(k.id, Err(EtcdError::NotLeader));
            return;
        }
        if !self.applied_in_current_term()
            && !bugs::active(self.config.bug, Bug::RenewBeforeOwnTerm)
        {
            return self.park_keep_alive(k);
        }
        let (id, lease) = (k.id, k.lease);
        match self.sm.lessor.renew(lease, self.now_ms) {
            Err(RenewRefused::NotPrimary) => self.respond(id, Err(EtcdError::NotLeader)),
            Err(RenewRefused::NotFound) => self.respond_lease_gone(id, lease),
            Err(RenewRefused::Expired)
                if bugs::active(self.config.bug, Bug::ExpiredKeepAliveAnswered) =>
            {
                self.respond_lease_gone(id, lease)
            }
            Err(RenewRefused::Expired) => self.park_keep_alive(k),
            Ok(renewal)
                if renewal.needs_checkpoint_reset
                    && !bugs::active(self.config.bug, Bug::CheckpointNotReset) =>
            {
                // A checkpointed remaining TTL would let a new leader expire the lease before the
                // TTL just promised: replicate the reset before answering (etcd #13294).
                let cps = LeaseCheckpoints {
                    checkpoints: vec![LeaseCheckpoint {
                        id: lease.0,
                        remaining_ttl: 0,
                    }],
                };
                let kind = PendingKind::KeepAlive {
                    lease,
                    ttl: renewal.ttl_secs,
                };
                let request = internal_request::Request::LeaseCheckpoint(cps);
                if let Err(Error::Etcd(e)) = self.propose(id, request, kind, None) {
                    self.respond(id, Err(e));
                }
            }
            Ok(renewal) => {
                let resp = pb::LeaseKeepAliveResponse {
                    header: None,
                    id: lease.0,
                    ttl: renewal.ttl_secs,
                };
                self.respond(id, Ok(Response::LeaseKeepAlive(resp)));
            }
        }
    }

    fn park_keep_alive(&mut self, k: ParkedKeepAlive) {
        if k.deadline <= self.ticks {
            self.respond(k.id, Err(EtcdError::Timeout));
        } else {
            self.parked_keep_alives.push(k);
        }
    }

    /// etcd answers a keep-alive of an unknown lease with TTL 0, not an error.
    fn respond_lease_gone(&mut self, id: RequestId, lease: LeaseId) {
        let resp = pb::LeaseKeepAliveResponse {
            header: None,
            id: lease.0,
            ttl: 0,
        };
        self.respond(id, Ok(Response::LeaseKeepAlive(resp)));
    }

    /// Tries the parked keep-alives again: each is answered or parked anew.
    fn settle_parked_keep_alives(&mut self) {
        for k in std::mem::take(&mut self.parked_keep_alives) {
            self.try_keep_alive(k);
        }
    }

    /// The leader alone decides expiry, and replicates it as a revoke.
    fn expire_leases(&mut self) {
        let per_tick =
            (limits::LEASE_REVOKE_RATE_PER_SEC as u64 * self.config.tick_ms / 1000).max(1);
        for lease in self.sm.lessor.expired(self.now_ms, per_tick as usize) {
            let revoke = pb::LeaseRevokeRequest { id: lease.0 };
            self.propose_internal(internal_request::Request::LeaseRevoke(revoke));
        }
        let interval = self.config.limits.lease_checkpoint_interval_ms;
        let checkpoints =
            self.sm
                .lessor
                .due_checkpoints(self.now_ms, interval, limits::LEASE_CHECKPOINT_BATCH);
        if !checkpoints.is_empty() {
            let cps = LeaseCheckpoints { checkpoints };
            self.propose_internal(internal_request::Request::LeaseCheckpoint(cps));
        }
    }

    // ---- membership -----------------------------------------------------------------------

    fn member_add(&mut self, id: RequestId, m: pb::MemberAddRequest) -> Result<(), Error> {
        if !membership::urls_valid(&m.peer_ur_ls) {
            return Err(EtcdError::MemberBadUrls.into());
        }
        if self.sm.members.peer_url_taken(&m.peer_ur_ls, None) {
            return Err(EtcdError::PeerUrlExist.into());
        }
        if m.is_learner && self.sm.members.learner_count() >= self.config.limits.max_learners {
            return Err(EtcdError::TooManyLearners.into());
        }
        let member_id = loop {
            let candidate = NodeId(self.prng.next_u64());
            if candidate.0 != 0
                && !self.sm.members.contains(candidate)
                && !self.sm.members.is_removed(candidate)
            {
                break candidate;
            }
        };
        let record = MemberRecord {
            id: member_id.0,
            name: String::new(),
            peer_urls: m.peer_ur_ls,
            client_urls: Vec::new(),
            is_learner: m.is_learner,
        };
        let kind = if m.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        self.propose_conf_change(id, kind, member_id, record, PendingKind::MemberAdd)
    }

    fn member_remove(&mut self, id: RequestId, member: NodeId) -> Result<(), Error> {
        let Some(record) = self.sm.members.get(member).cloned() else {
            return Err(EtcdError::MemberNotFound.into());
        };
        if !record.is_learner && !self.enough_started_without(member) {
            return Err(EtcdError::MemberNotEnoughStarted.into());
        }
        self.propose_conf_change(
            id,
            ConfChangeType::RemoveNode,
            member,
            record,
            PendingKind::MemberRemove,
        )
    }

    /// etcd's `IsReadyToRemoveVotingMember`: the voters left must still hold a quorum of
    /// active members. Only the leader knows who is active; elsewhere count everyone.
    fn enough_started_without(&self, member: NodeId) -> bool {
        let voters: Vec<NodeId> = self
            .sm
            .members
            .voters()
            .into_iter()
            .filter(|v| *v != member)
            .collect();
        if voters.is_empty() {
            return false;
        }
        if !self.is_leader() {
            return true;
        }
        let prs = self.raw.raft.prs();
        let started = voters
            .iter()
            .filter(|v| v.0 == self.config.id.0 || prs.get(v.0).is_some_and(|p| p.recent_active))
            .count();
        started > voters.len() / 2
    }

    fn member_promote(&mut self, id: RequestId, member: NodeId) -> Result<(), Error> {
        if !self.is_leader() {
            return Err(EtcdError::NotLeader.into());
        }
        let Some(record) = self.sm.members.get(member).cloned() else {
            return Err(EtcdError::MemberNotFound.into());
        };
        if !record.is_learner {
            return Err(EtcdError::MemberNotLearner.into());
        }
        // etcd's isLearnerReady: the learner's match index within 90% of the leader's.
        let prs = self.raw.raft.prs();
        let leader_match = prs.get(self.config.id.0).map_or(0, |p| p.matched);
        let learner_match = prs.get(member.0).map_or(0, |p| p.matched);
        if learner_match * 100 < leader_match * limits::LEARNER_READY_PERCENT {
            return Err(EtcdError::LearnerNotReady.into());
        }
        let record = MemberRecord {
            is_learner: false,
            ..record
        };
        self.propose_conf_change(
            id,
            ConfChangeType::AddNode,
            member,
            record,
            PendingKind::MemberPromote,
        )
    }

    fn propose_conf_change(
        &mut self,
        id: RequestId,
        kind: ConfChangeType,
        member: NodeId,
        record: MemberRecord,
        pending: PendingKind,
    ) -> Result<(), Error> {
        let proposal_id = self.prng.next_u64();
        let cc = conf_change(kind, member, &record, self.config.id.0, proposal_id);
        self.submit(proposal_id, Proposal::ConfChange(cc), id, pending)
    }

    fn move_leader(&mut self, id: RequestId, target: NodeId) -> Result<(), Error> {
        if !self.is_leader() {
            return Err(EtcdError::NotLeader.into());
        }
        let is_voter = self.sm.members.get(target).is_some_and(|m| !m.is_learner);
        if !is_voter {
            return Err(EtcdError::BadLeaderTransferee.into());
        }
        if target == self.config.id {
            self.respond(id, Ok(Response::MoveLeader(Default::default())));
            return Ok(());
        }
        self.raw.transfer_leader(target.0);
        let deadline = self.ticks + self.config.request_timeout_ticks;
        self.transfer = Some((id, target, deadline));
        Ok(())
    }

    // ---- snapshots and watches --------------------------------------------------------------

    /// Every `snapshot_count` applied entries, compact the log behind the applied index,
    /// keeping `snapshot_catch_up_entries` for slightly lagging followers (etcd's scheme).
    fn maybe_snapshot(&mut self) -> Result<(), Fatal> {
        let applied = self.sm.applied().0;
        let limits = &self.config.limits;
        if applied.0
            < self.last_compaction.0 + limits.snapshot_count + limits.snapshot_catch_up_entries
        {
            return Ok(());
        }
        let index = LogIndex(applied.0 - limits.snapshot_catch_up_entries);
        self.raw.mut_store().compact(index);
        let (index, term) = self.raw.store().compacted();
        self.last_compaction = index;
        self.outputs.push(Output::CompactLog { index, term });
        Ok(())
    }

    fn build_snapshot(&mut self) -> Result<(), Fatal> {
        let (index, term) = self.sm.applied();
        if self.raw.store().cached_snapshot_index() == Some(index.0) {
            return Ok(());
        }
        let mut snap = Snapshot::default();
        snap.set_data(self.sm.snapshot_data()?.into());
        let meta = snap.mut_metadata();
        meta.index = index.0;
        meta.term = term.0;
        meta.set_conf_state(self.sm.conf_state().clone());
        self.raw.mut_store().cache_snapshot(snap);
        Ok(())
    }

    fn sync_watchers(&mut self) -> Result<(), Fatal> {
        let current = self.revision();
        let history = MvccHistory {
            store: &self.sm.mvcc,
            backend: self.sm.backend(),
            failure: std::cell::RefCell::new(None),
        };
        let outs = self.watch.sync(&history, current);
        if let Some(e) = history.failure.into_inner() {
            return Err(e.into());
        }
        self.emit_watch(outs);
        Ok(())
    }
}

struct MvccHistory<'a, B: KvBackend> {
    store: &'a MvccStore,
    backend: &'a B,
    failure: std::cell::RefCell<Option<BackendError>>,
}

impl<B: KvBackend> History for MvccHistory<'_, B> {
    fn events(&self, from: Revision, to: Revision) -> Result<Vec<Event>, Revision> {
        match self.store.events(self.backend, from, to) {
            Ok(events) => Ok(events),
            Err(Error::Etcd(_)) => Err(self.store.compact_revision()),
            Err(Error::Backend(e)) => {
                *self.failure.borrow_mut() = Some(e);
                Ok(Vec::new())
            }
        }
    }
}

fn txn_is_serializable(txn: &pb::TxnRequest) -> bool {
    use pb::request_op::Request as Op;
    txn.success
        .iter()
        .chain(&txn.failure)
        .all(|op| match &op.request {
            Some(Op::RequestRange(r)) => r.serializable,
            Some(Op::RequestTxn(t)) => txn_is_serializable(t),
            _ => true,
        })
}

fn alarm_name(alarm: i32) -> &'static str {
    match AlarmType::try_from(alarm) {
        Ok(AlarmType::Nospace) => "NOSPACE",
        Ok(AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}

/// The encoded size of a request, as etcd measures `--max-request-bytes`.
fn request_size(request: &Request) -> usize {
    match request {
        Request::Put(r) => r.encoded_len(),
        Request::Txn(r) => r.encoded_len(),
        Request::Range(r) => r.encoded_len(),
        Request::RangeChunk(c) => c.range.encoded_len(),
        Request::DeleteRange(r) => r.encoded_len(),
        _ => 0,
    }
}

/// Whether a raft message promises state that must be durable first: a granted vote (the
/// vote is in the hard state, Raft §5.2). Rejections promise nothing and may leave at once;
/// pre-vote responses change no state. (Append acknowledgements come from followers, whose
/// messages raft-rs always routes through the persisted list.)
pub fn promises_persisted_state(m: &Message) -> bool {
    m.get_msg_type() == MessageType::MsgRequestVoteResponse && !m.reject
}
