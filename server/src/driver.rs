//! The node driver: one async loop that feeds the engine its inputs and carries out its
//! outputs, in the order the engine's contract requires (`strata_engine::node`).
//!
//! - Inputs come from four sources, polled with `select! { biased; }` (deterministic under
//!   madsim): storage acknowledgements first (they unblock held messages and applies), then the
//!   tick, peer messages, and client commands. Everything already queued is drained into one
//!   `step_batch`, so a burst of client requests becomes one raft proposal round and one log
//!   write.
//! - `Persist` tasks go to the storage task in order; it writes every task queued at that
//!   moment with one fsync (group commit) and acknowledges the highest number. Meanwhile the
//!   loop goes on: the leader's appends to followers leave while its own append is being
//!   made durable (etcd's "leader writes to its disk in parallel with replication").
//! - `Send` messages go to the transport at once; the engine already held back those that
//!   depend on unpersisted state.
//! - A storage failure or an engine `Fatal` stops the loop: the node exits rather than limp
//!   on with state it cannot trust.
//! - Watch responses go to bounded per-stream queues the loop never waits on
//!   ([`crate::watch_queue`]): a client that stops reading has its watchers parked and caught
//!   up from the history later, instead of growing memory or stalling the loop.
//!
//! The driver is written against tokio APIs madsim provides and against two seams:
//! [`ServerBackend`] (the engine's MVCC backend plus defragment) and [`LogStorage`], so the
//! simulator runs this very loop over simulated TCP and a fault-injecting disk.

use raft::eraftpb::MessageType;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use strata_engine::auth::{Credential, PasswordCheck};
use strata_engine::bugs::{self, Bug};
use strata_engine::node::{AppliedEntry, Config, PersistTask, PersistedLog};
use strata_engine::proto::strata::internal::MemberRecord;
use strata_engine::request::{Request, Response};
use strata_engine::watch::WatchOutput;
use strata_engine::{
    BackendError, Bucket, EtcdError, Fatal, Input, KvBackend, LogIndex, Node, NodeId, Output,
    RequestId, StreamId, Term,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::{LocalTime, NodeClock};
use crate::metrics::Metrics;
use crate::storage::{LogStorage, StorageError};
use crate::transport::{PeerEvent, Transport};
use crate::watch_queue::{Offered, WatchQueues};

/// Inputs drained into one engine step at most.
const MAX_BATCH: usize = 4096;

/// The engine's backend as the server needs it: the engine's interface plus defragment and a
/// consistent export.
pub trait ServerBackend: KvBackend + Send + 'static {
    fn defragment(&self) -> Result<(), BackendError>;

    /// Every record as of this call (the applied index the driver is at), read at the
    /// consumer's pace while the driver goes on: writes made after the call are not seen.
    fn export(&self) -> Result<BackendExport, BackendError>;
}

/// One backend record: bucket, key, value.
pub type ExportedRecord = (Bucket, Vec<u8>, Vec<u8>);

/// A point-in-time copy of the backend being read ([`ServerBackend::export`]): records bucket
/// by bucket in [`Bucket::ALL`] order, key order within each bucket.
pub struct BackendExport {
    pub records: Box<dyn Iterator<Item = Result<ExportedRecord, BackendError>> + Send>,
    /// Where a consumer may put scratch files of the export's size (beside the backend).
    pub scratch_dir: std::path::PathBuf,
}

impl std::fmt::Debug for BackendExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendExport")
            .field("scratch_dir", &self.scratch_dir)
            .finish_non_exhaustive()
    }
}

/// What the driver reports of its node to an [`Observer`] (the simulator's checkers).
#[derive(Clone, Debug)]
pub enum Observation {
    /// Term or leadership changed.
    State {
        term: Term,
        leader: Option<NodeId>,
        is_leader: bool,
    },
    /// An entry was applied (in log order).
    Applied(AppliedEntry),
    /// The commit index moved.
    Committed(LogIndex),
    /// This member granted its vote (a vote response leaves only once the vote is durable).
    VoteGranted { term: Term, candidate: NodeId },
}

/// Receives [`Observation`]s synchronously from the driver loop; must not block.
pub type Observer = Arc<dyn Fn(Observation) + Send + Sync>;

/// What a client-facing task asks of the driver.
pub enum Command {
    Call {
        request: Request,
        credential: Option<Credential>,
        reply: oneshot::Sender<Result<Response, EtcdError>>,
    },
    /// Registers where a watch stream's responses go; must precede its watch inputs.
    WatchOpen {
        stream: StreamId,
        events: mpsc::Sender<WatchOutput>,
    },
    /// `WatchCreate`, `WatchCancel`, `WatchProgress` or `WatchStreamClosed`.
    Watch(Input),
    /// The whole backend, consistent at the applied index (Maintenance.Snapshot).
    Snapshot {
        reply: oneshot::Sender<Result<BackendExport, BackendError>>,
    },
    Defragment {
        reply: oneshot::Sender<Result<(), BackendError>>,
    },
    /// What a login needs to check a password (bcrypt runs outside the loop).
    PasswordCheck {
        name: String,
        reply: oneshot::Sender<Result<PasswordCheck, EtcdError>>,
    },
}

/// What the rest of the server reads about the node without asking the loop.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub leader: Option<NodeId>,
    pub term: Term,
    /// Whom this member voted for in `term`.
    pub vote: Option<NodeId>,
    pub members: Vec<MemberRecord>,
    pub applied: LogIndex,
    pub commit: LogIndex,
    pub revision: i64,
    pub alarms: bool,
}

#[derive(Debug)]
pub struct Shared {
    pub id: NodeId,
    pub cluster_id: u64,
    pub name: String,
    pub config: Config,
    pub metrics: Metrics,
    view: RwLock<View>,
    next_stream: AtomicU64,
}

impl Shared {
    pub fn view(&self) -> View {
        self.view.read().expect("view lock").clone()
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.view.read().expect("view lock").leader
    }

    pub fn member(&self, id: NodeId) -> Option<MemberRecord> {
        self.view
            .read()
            .expect("view lock")
            .members
            .iter()
            .find(|m| m.id == id.0)
            .cloned()
    }
}

/// The client side of the driver, cloned into every service.
#[derive(Clone, Debug)]
pub struct Handle {
    commands: mpsc::UnboundedSender<Command>,
    pub shared: Arc<Shared>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Call { request, .. } => write!(f, "Call({request:?})"),
            Command::WatchOpen { stream, .. } => write!(f, "WatchOpen({stream:?})"),
            Command::Watch(i) => write!(f, "Watch({i:?})"),
            Command::Snapshot { .. } => write!(f, "Snapshot"),
            Command::Defragment { .. } => write!(f, "Defragment"),
            Command::PasswordCheck { name, .. } => write!(f, "PasswordCheck({name})"),
        }
    }
}

impl Handle {
    fn send(&self, cmd: Command) -> Result<(), EtcdError> {
        self.commands.send(cmd).map_err(|_| EtcdError::Stopped)
    }

    /// Runs one client request through the engine and waits for its answer.
    pub async fn call(
        &self,
        request: Request,
        credential: Option<Credential>,
    ) -> Result<Response, EtcdError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Call {
            request,
            credential,
            reply,
        })?;
        rx.await.map_err(|_| EtcdError::Stopped)?
    }

    /// Opens a watch stream: its id and the responses the engine will send on it. The queue is
    /// bounded; a reader that falls behind is caught up later, never loses responses.
    pub fn watch_open(&self) -> Result<(StreamId, mpsc::Receiver<WatchOutput>), EtcdError> {
        let stream = StreamId(self.shared.next_stream.fetch_add(1, Ordering::Relaxed));
        let (events, rx) = WatchQueues::channel();
        self.send(Command::WatchOpen { stream, events })?;
        Ok((stream, rx))
    }

    pub fn watch_input(&self, input: Input) -> Result<(), EtcdError> {
        self.send(Command::Watch(input))
    }

    /// The backend's content, consistent at the applied index of the moment.
    pub async fn snapshot(&self) -> Result<Result<BackendExport, BackendError>, EtcdError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Snapshot { reply })?;
        rx.await.map_err(|_| EtcdError::Stopped)
    }

    pub async fn defragment(&self) -> Result<Result<(), BackendError>, EtcdError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Defragment { reply })?;
        rx.await.map_err(|_| EtcdError::Stopped)
    }

    pub async fn password_check(&self, name: String) -> Result<PasswordCheck, EtcdError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::PasswordCheck { name, reply })?;
        rx.await.map_err(|_| EtcdError::Stopped)?
    }
}

/// Why the loop ended.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("shut down")]
    Shutdown,
    #[error("the member has been permanently removed from the cluster")]
    Removed,
    #[error("engine: {0}")]
    Fatal(#[from] Fatal),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

enum StorageJob {
    Persist(PersistTask),
    Compact(LogIndex, Term),
}

/// Everything a driver needs to start.
pub struct Parts<B: ServerBackend, L: LogStorage> {
    pub config: Config,
    pub name: String,
    pub client_urls: Vec<String>,
    pub backend: B,
    pub log: L,
    pub persisted: PersistedLog,
    pub transport: Transport,
    /// Peers to reach before this member has applied any membership (a joining member learns
    /// them from the cluster it joins).
    pub initial_peers: BTreeMap<NodeId, Vec<String>>,
    pub peer_events: mpsc::UnboundedReceiver<PeerEvent>,
    pub shutdown: watch::Receiver<bool>,
    /// This node's clock (exact in production; skewed by the simulator).
    pub clock: NodeClock,
    /// Who hears of term, commit and apply progress (the simulator; `None` in production).
    pub observer: Option<Observer>,
}

/// Heartbeats a removed member waits before it stops, as etcd does.
const REMOVAL_GRACE_TICKS: u64 = 10;

pub struct Driver<B: ServerBackend> {
    node: Node<B>,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    peer_events: mpsc::UnboundedReceiver<PeerEvent>,
    storage: mpsc::UnboundedSender<StorageJob>,
    persisted: mpsc::UnboundedReceiver<Result<u64, StorageError>>,
    transport: Transport,
    shutdown: watch::Receiver<bool>,
    pending: HashMap<RequestId, oneshot::Sender<Result<Response, EtcdError>>>,
    /// When the oldest unanswered heartbeat to each peer left (the peer round-trip metric).
    heartbeats_sent: HashMap<NodeId, tokio::time::Instant>,
    watch_streams: WatchQueues,
    next_request: u64,
    time: LocalTime,
    observer: Option<Observer>,
    peers: BTreeMap<NodeId, Vec<String>>,
    removed: BTreeSet<NodeId>,
    name: String,
    client_urls: Vec<String>,
}

impl<B: ServerBackend> Driver<B> {
    /// Opens the engine and starts the storage task. Returns the driver (run it with
    /// [`Driver::run`]) and the handle services use.
    pub fn start<L: LogStorage>(parts: Parts<B, L>) -> Result<(Driver<B>, Handle), Stopped> {
        let Parts {
            config,
            name,
            client_urls,
            backend,
            log,
            persisted,
            transport,
            initial_peers,
            peer_events,
            shutdown,
            clock,
            observer,
        } = parts;
        transport.set_members(initial_peers.clone(), BTreeSet::new());
        let mut config = config;
        config.record_applied = observer.is_some();
        let node = Node::open(config.clone(), backend, persisted)?;
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let metrics = Metrics::default();
        metrics
            .quota_backend_bytes
            .store(config.limits.quota_backend_bytes, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            id: config.id,
            cluster_id: config.cluster_id,
            name: name.clone(),
            config,
            metrics,
            view: RwLock::new(View::default()),
            next_stream: AtomicU64::new(1),
        });
        let (storage, jobs) = mpsc::unbounded_channel();
        let (done, persisted) = mpsc::unbounded_channel();
        tokio::spawn(storage_loop(log, jobs, done, shared.clone()));
        let mut driver = Driver {
            node,
            shared: shared.clone(),
            commands,
            peer_events,
            storage,
            persisted,
            transport,
            shutdown,
            pending: HashMap::new(),
            heartbeats_sent: HashMap::new(),
            watch_streams: WatchQueues::default(),
            next_request: 1,
            time: LocalTime::new(clock),
            observer,
            peers: initial_peers,
            removed: BTreeSet::new(),
            name,
            client_urls,
        };
        driver.refresh_view();
        let handle = Handle {
            commands: commands_tx,
            shared,
        };
        Ok((driver, handle))
    }

    fn now_ms(&mut self) -> u64 {
        self.time.now_ms()
    }

    fn ticker(&self) -> (tokio::time::Interval, i64) {
        let clock = self.time.clock();
        let period = clock.real_duration(Duration::from_millis(self.shared.config.tick_ms));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        (ticker, clock.drift_ppm())
    }

    /// Runs until shutdown, removal or a fatal error.
    pub async fn run(mut self) -> Stopped {
        let stopped = self.run_inner().await;
        match &stopped {
            Stopped::Shutdown => tracing::info!("driver stopped"),
            Stopped::Removed => {
                tracing::warn!("{stopped}");
                // etcd's `stopWithDelay`, for a leader: what it already handed the transport
                // goes out before the process ends. A leader removing itself has just sent the
                // others the commit of its removal; lost with the process, the remaining
                // voters would wait for its vote forever (swarm seed 1796306607037). A removed
                // follower has nothing the others need and stops at once: lingering, its
                // client port would answer "server stopped" where a client should fail over.
                if self.shared.leader() == Some(self.shared.id) {
                    let grace =
                        Duration::from_millis(self.shared.config.tick_ms * REMOVAL_GRACE_TICKS);
                    tokio::select! {
                        biased;
                        _ = self.shutdown.changed() => {}
                        _ = tokio::time::sleep(grace) => {}
                    }
                }
            }
            _ => tracing::error!(error = %stopped, "node stopped on a fatal error"),
        }
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(EtcdError::Stopped));
        }
        stopped
    }

    async fn run_inner(&mut self) -> Stopped {
        // Ticks come at this node's pace: a drifting clock re-arms the ticker.
        let (mut ticker, mut ticker_ppm) = self.ticker();
        let publish = Input::Publish {
            name: self.name.clone(),
            client_urls: self.client_urls.clone(),
        };
        if let Err(e) = self.step(vec![publish]) {
            return e;
        }
        loop {
            let mut inputs = Vec::new();
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => return Stopped::Shutdown,
                Some(done) = self.persisted.recv() => match done {
                    Ok(number) => inputs.push(Input::Persisted { number }),
                    Err(e) => return Stopped::Storage(e),
                },
                // Watch refusals to report, or a stalled watch stream with room again.
                _ = std::future::ready(()), if self.watch_streams.has_reports() => {}
                _ = ticker.tick() => {
                    inputs.push(Input::Tick);
                    if self.time.clock().drift_ppm() != ticker_ppm {
                        (ticker, ticker_ppm) = self.ticker();
                        ticker.reset();
                    }
                }
                Some(ev) = self.peer_events.recv() => match self.peer_input(ev) {
                    Ok(input) => inputs.push(input),
                    Err(stopped) => return stopped,
                },
                Some(cmd) = self.commands.recv() => self.command(cmd, &mut inputs),
            }
            // Drain what is already queued, so a burst costs one step and one log write.
            while inputs.len() < MAX_BATCH {
                if let Ok(done) = self.persisted.try_recv() {
                    match done {
                        Ok(number) => inputs.push(Input::Persisted { number }),
                        Err(e) => return Stopped::Storage(e),
                    }
                } else if let Ok(ev) = self.peer_events.try_recv() {
                    match self.peer_input(ev) {
                        Ok(input) => inputs.push(input),
                        Err(stopped) => return stopped,
                    }
                } else if let Ok(cmd) = self.commands.try_recv() {
                    self.command(cmd, &mut inputs);
                } else {
                    break;
                }
            }
            // The engine's contract: watch flow-control reports open the step.
            let mut batch = self.watch_streams.take_reports();
            batch.append(&mut inputs);
            if let Err(e) = self.step(batch) {
                return e;
            }
        }
    }

    /// The engine input for a transport event; a peer's word that this member was removed
    /// stops the node.
    fn peer_input(&mut self, ev: PeerEvent) -> Result<Input, Stopped> {
        Ok(match ev {
            PeerEvent::Message(m) => {
                if m.get_msg_type() == MessageType::MsgHeartbeatResponse {
                    if let Some(sent) = self.heartbeats_sent.remove(&NodeId(m.from)) {
                        self.shared
                            .metrics
                            .peer_round_trips
                            .observe(m.from, sent.elapsed());
                    }
                }
                Input::Message(m)
            }
            PeerEvent::Unreachable(id) => {
                self.shared
                    .metrics
                    .peer_sent_failures
                    .fetch_add(1, Ordering::Relaxed);
                Input::Unreachable(id)
            }
            PeerEvent::SnapshotSent { to, ok } => Input::SnapshotSent { to, ok },
            PeerEvent::RemovedFromCluster { by } => {
                tracing::warn!(peer = %format!("{:x}", by.0), "a peer says this member was removed from the cluster");
                return Err(Stopped::Removed);
            }
        })
    }

    fn command(&mut self, cmd: Command, inputs: &mut Vec<Input>) {
        match cmd {
            Command::Call {
                request,
                credential,
                reply,
            } => {
                let id = RequestId(self.next_request);
                self.next_request += 1;
                self.pending.insert(id, reply);
                inputs.push(Input::Request {
                    id,
                    request,
                    credential,
                });
            }
            Command::WatchOpen { stream, events } => {
                self.watch_streams.open(stream, events);
            }
            Command::Watch(input) => {
                if let Input::WatchStreamClosed { stream } = &input {
                    self.watch_streams.close(*stream);
                }
                inputs.push(input);
            }
            Command::Snapshot { reply } => {
                let _ = reply.send(self.node.state_machine().backend().export());
            }
            Command::Defragment { reply } => {
                let _ = reply.send(self.node.state_machine().backend().defragment());
            }
            Command::PasswordCheck { name, reply } => {
                let _ = reply.send(self.node.password_check(&name));
            }
        }
    }

    fn step(&mut self, inputs: Vec<Input>) -> Result<(), Stopped> {
        let now = self.now_ms();
        let began = tokio::time::Instant::now();
        self.node.step_batch(now, inputs)?;
        self.shared.metrics.backend_commit.observe(began.elapsed());
        // A removal stops the node, but only after every other output of the step: the
        // client that asked for the removal (possibly of this very member) gets its answer.
        let mut removed = false;
        for output in self.node.take_outputs() {
            if matches!(output, Output::Removed) {
                removed = true;
            } else {
                self.execute(output)?;
            }
        }
        self.refresh_view();
        if removed {
            return Err(Stopped::Removed);
        }
        Ok(())
    }

    fn execute(&mut self, output: Output) -> Result<(), Stopped> {
        match output {
            Output::Send(msg) => {
                if let Some(observer) = &self.observer {
                    if msg.get_msg_type() == MessageType::MsgRequestVoteResponse && !msg.reject {
                        observer(Observation::VoteGranted {
                            term: Term(msg.term),
                            candidate: NodeId(msg.to),
                        });
                    }
                }
                if msg.get_msg_type() == MessageType::MsgHeartbeat {
                    // The first unanswered heartbeat to a peer times its round trip.
                    self.heartbeats_sent
                        .entry(NodeId(msg.to))
                        .or_insert_with(tokio::time::Instant::now);
                }
                self.transport.send(msg);
            }
            Output::Persist(task) => {
                let _ = self.storage.send(StorageJob::Persist(task));
            }
            Output::CompactLog { index, term } => {
                let _ = self.storage.send(StorageJob::Compact(index, term));
            }
            Output::Respond { id, result } => {
                if result.is_err() {
                    self.shared
                        .metrics
                        .proposals_failed
                        .fetch_add(1, Ordering::Relaxed);
                }
                if let Some(reply) = self.pending.remove(&id) {
                    let _ = reply.send(result);
                }
            }
            Output::Watch(out) => {
                let stream = out.stream;
                match self.watch_streams.offer(out) {
                    Offered::Sent | Offered::Refused => {}
                    Offered::Stalled => {
                        let m = &self.shared.metrics;
                        m.watch_stream_stalls.fetch_add(1, Ordering::Relaxed);
                    }
                    Offered::Gone => {
                        let now = self.now_ms();
                        self.node.step(now, Input::WatchStreamClosed { stream })?;
                    }
                }
            }
            Output::LeaderChanged { leader, term } => {
                tracing::info!(
                    leader = %leader.map(|l| format!("{:x}", l.0)).unwrap_or_else(|| "none".into()),
                    term = term.0,
                    "leader changed"
                );
                let m = &self.shared.metrics;
                m.leader_changes.fetch_add(1, Ordering::Relaxed);
                m.has_leader
                    .store(leader.is_some() as u64, Ordering::Relaxed);
                m.is_leader
                    .store((leader == Some(self.shared.id)) as u64, Ordering::Relaxed);
            }
            Output::Removed => {
                unreachable!("step() holds a removal back until the step's other outputs ran")
            }
        }
        Ok(())
    }

    /// Publishes the node's state for readers outside the loop, and keeps the transport's
    /// peers in step with the member list.
    fn refresh_view(&mut self) {
        let applied_entries = self.node.take_applied_record();
        let node = &self.node;
        let sm = node.state_machine();
        let applied = node.applied_index();
        let changed_members;
        {
            let mut view = self.shared.view.write().expect("view lock");
            changed_members = view.applied != applied || view.members.is_empty();
            if let Some(observer) = &self.observer {
                if view.term != node.term() || view.leader != node.leader() {
                    observer(Observation::State {
                        term: node.term(),
                        leader: node.leader(),
                        is_leader: node.is_leader(),
                    });
                }
                for entry in applied_entries {
                    observer(Observation::Applied(entry));
                }
                if view.commit != node.commit_index() {
                    observer(Observation::Committed(node.commit_index()));
                }
            }
            view.leader = node.leader();
            view.term = node.term();
            view.vote = node.vote();
            view.applied = applied;
            view.commit = node.commit_index();
            view.revision = node.revision().0;
            view.alarms = sm.nospace();
            if changed_members {
                view.members = sm
                    .members
                    .list()
                    .into_iter()
                    .map(|m| MemberRecord {
                        id: m.id,
                        name: m.name,
                        peer_urls: m.peer_ur_ls,
                        client_urls: m.client_ur_ls,
                        is_learner: m.is_learner,
                    })
                    .collect();
            }
        }
        let m = &self.shared.metrics;
        m.proposals_committed
            .store(node.commit_index().0, Ordering::Relaxed);
        m.proposals_applied.store(applied.0, Ordering::Relaxed);
        m.proposals_pending
            .store(self.pending.len() as u64, Ordering::Relaxed);
        m.revision
            .store(node.revision().0 as u64, Ordering::Relaxed);
        m.watchers
            .store(node.watcher_count() as u64, Ordering::Relaxed);
        m.slow_watchers
            .store(node.slow_watcher_count() as u64, Ordering::Relaxed);
        if changed_members {
            m.db_size
                .store(sm.backend().size_bytes(), Ordering::Relaxed);
            m.db_size_in_use
                .store(sm.backend().size_in_use_bytes(), Ordering::Relaxed);
            let peers: BTreeMap<NodeId, Vec<String>> = self
                .shared
                .view
                .read()
                .expect("view lock")
                .members
                .iter()
                .filter(|m| m.id != self.shared.id.0)
                .map(|m| (NodeId(m.id), m.peer_urls.clone()))
                .collect();
            // A joining member has applied no membership yet: it keeps the peers it was given.
            let peers_changed = !peers.is_empty() && peers != self.peers;
            let removed_changed = sm.members.removed() != &self.removed;
            if peers_changed || removed_changed {
                if peers_changed {
                    self.peers = peers;
                }
                self.removed = sm.members.removed().clone();
                self.transport
                    .set_members(self.peers.clone(), self.removed.clone());
            }
        }
    }
}

/// Persists jobs in order, grouping every task queued at the time into one write.
async fn storage_loop<L: LogStorage>(
    mut log: L,
    mut jobs: mpsc::UnboundedReceiver<StorageJob>,
    done: mpsc::UnboundedSender<Result<u64, StorageError>>,
    shared: Arc<Shared>,
) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while let Ok(job) = jobs.try_recv() {
            batch.push(job);
        }
        let mut tasks = Vec::new();
        let mut acked = None;
        let mut result = Ok(());
        for job in batch {
            match job {
                StorageJob::Persist(mut task) => {
                    acked = Some(task.number);
                    if bugs::active(shared.config.bug, Bug::SkipFsync) {
                        task.must_sync = false;
                    }
                    tasks.push(task);
                }
                StorageJob::Compact(index, term) => {
                    if !tasks.is_empty() {
                        result = persist(&mut log, std::mem::take(&mut tasks), &shared).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    result = log.compact(index, term).await;
                    if result.is_err() {
                        break;
                    }
                }
            }
        }
        if result.is_ok() && !tasks.is_empty() {
            result = persist(&mut log, tasks, &shared).await;
        }
        match result {
            Ok(()) => {
                if let Some(number) = acked {
                    if done.send(Ok(number)).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = done.send(Err(e));
                return;
            }
        }
    }
}

async fn persist<L: LogStorage>(
    log: &mut L,
    tasks: Vec<PersistTask>,
    shared: &Shared,
) -> Result<(), StorageError> {
    let synced = tasks.iter().any(|t| t.must_sync);
    let began = tokio::time::Instant::now();
    log.persist(tasks).await?;
    if synced {
        shared.metrics.wal_fsync.observe(began.elapsed());
    }
    Ok(())
}
