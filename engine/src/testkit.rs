//! A deterministic in-memory cluster of engine nodes, for tests, benches and the local demo
//! (feature `testkit`; never part of a production build).
//!
//! It plays the driver's part exactly as the contract in `node.rs` asks: `Persist` tasks become
//! durable only when the harness acknowledges them, held messages leave only after that, peer
//! links are ordered (FIFO per link, like TCP), and a crash loses everything not yet
//! acknowledged as persisted. Everything is driven from one seeded PRNG, so a seed replays.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use raft::eraftpb::Message;

use crate::auth::Credential;
use crate::backend::MemBackend;
use crate::error::EtcdError;
use crate::node::{bootstrap_log, Config, Input, Node, Output, PersistTask, PersistedLog};
use crate::prng::Prng;
use crate::proto::strata::internal::MemberRecord;
use crate::request::{Request, Response};
use crate::types::{LogIndex, NodeId, RequestId, StreamId, Term};
use crate::watch::WatchOutput;

/// What the harness keeps of a node across crashes: its backend and its durable raft log.
#[derive(Debug, Default)]
struct Durable {
    log: PersistedLog,
}

impl Durable {
    fn persist(&mut self, task: &PersistTask) {
        if let Some((index, term)) = task.snapshot {
            // The log restarts after an installed snapshot.
            self.log.entries.clear();
            self.log.compacted = (index, term);
        }
        if let Some(first) = task.entries.first() {
            let keep = first.index.saturating_sub(self.log.compacted.0 .0 + 1) as usize;
            self.log.entries.truncate(keep);
            self.log.entries.extend(task.entries.iter().cloned());
        }
        if let Some(hs) = &task.hard_state {
            self.log.hard_state = hs.clone();
        }
    }

    fn compact(&mut self, index: LogIndex, term: Term) {
        if index <= self.log.compacted.0 {
            return;
        }
        self.log.entries.retain(|e| e.index > index.0);
        self.log.compacted = (index, term);
    }
}

pub struct SimNode {
    pub config: Config,
    pub node: Option<Node<MemBackend>>,
    durable: Durable,
    /// Persist tasks handed out but not yet acknowledged.
    unpersisted: VecDeque<PersistTask>,
    /// Backend of a crashed node, kept for its restart.
    parked_backend: Option<MemBackend>,
    boots: u64,
}

/// One client answer the harness observed.
#[derive(Clone, Debug)]
pub struct Answer {
    pub node: NodeId,
    pub id: RequestId,
    pub result: Result<Response, EtcdError>,
}

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, SimNode>,
    links: BTreeMap<(NodeId, NodeId), VecDeque<Message>>,
    cut: BTreeSet<(NodeId, NodeId)>,
    pub now_ms: u64,
    pub prng: Prng,
    next_request: u64,
    pub answers: Vec<Answer>,
    pub watch_outputs: Vec<(NodeId, WatchOutput)>,
    pub leader_changes: Vec<(NodeId, Option<NodeId>, Term)>,
    trace: u64,
    tracing: bool,
    pub tick_ms: u64,
    /// How configs are made for new nodes.
    pub configure: fn(&mut Config),
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

pub fn member(id: u64) -> MemberRecord {
    MemberRecord {
        id,
        name: format!("n{id}"),
        peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
        client_urls: vec![format!("http://127.0.0.1:{}", 2379 + id * 10)],
        is_learner: false,
    }
}

impl Cluster {
    /// A new cluster whose initial members are voters `1..=voters`, not yet started.
    pub fn new(voters: u64, seed: u64) -> Cluster {
        Cluster::with_config(voters, seed, |_| {})
    }

    pub fn with_config(voters: u64, seed: u64, configure: fn(&mut Config)) -> Cluster {
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            links: BTreeMap::new(),
            cut: BTreeSet::new(),
            now_ms: 0,
            prng: Prng::new(seed),
            next_request: 1,
            answers: Vec::new(),
            watch_outputs: Vec::new(),
            leader_changes: Vec::new(),
            trace: 0xcbf2_9ce4_8422_2325,
            tracing: true,
            tick_ms: 100,
            configure,
        };
        let members: Vec<MemberRecord> = (1..=voters).map(member).collect();
        let log = bootstrap_log(&members);
        for m in &members {
            cluster.add_node(NodeId(m.id), log.clone());
        }
        cluster
    }

    fn make_config(&mut self, id: NodeId) -> Config {
        let mut config = Config::new(id, 0x5157_4a7a, self.prng.next_u64());
        (self.configure)(&mut config);
        self.tick_ms = config.tick_ms;
        config
    }

    /// Starts a node that joins with an empty log (after `member-add`), or from a given log.
    pub fn add_node(&mut self, id: NodeId, log: PersistedLog) {
        let config = self.make_config(id);
        let mut node =
            Node::open(config.clone(), MemBackend::new(), log.clone()).expect("open node");
        let outputs = node.take_outputs();
        self.nodes.insert(
            id,
            SimNode {
                config,
                node: Some(node),
                durable: Durable { log },
                unpersisted: VecDeque::new(),
                parked_backend: None,
                boots: 1,
            },
        );
        for out in outputs {
            self.route(id, out);
        }
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn node(&self, id: NodeId) -> &Node<MemBackend> {
        self.nodes[&id]
            .node
            .as_ref()
            .unwrap_or_else(|| panic!("n{id} is down"))
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.node.is_some())
    }

    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// Feeds one input to a live node and routes its outputs.
    pub fn step(&mut self, id: NodeId, input: Input) {
        self.step_batch(id, vec![input]);
    }

    /// Feeds several inputs at once (one Ready for all of them) and routes the outputs.
    pub fn step_batch(&mut self, id: NodeId, inputs: Vec<Input>) {
        let now = self.now_ms;
        let Some(sim) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(node) = sim.node.as_mut() else {
            return;
        };
        if let Err(e) = node.step_batch(now, inputs) {
            panic!("n{id}: fatal: {e}");
        }
        let outputs = node.take_outputs();
        for out in outputs {
            self.route(id, out);
        }
    }

    /// Turns the trace hash off (benches): formatting every output costs more than the engine.
    pub fn set_tracing(&mut self, on: bool) {
        self.tracing = on;
    }

    fn record(&mut self, id: NodeId, what: &str) {
        if !self.tracing {
            return;
        }
        self.trace = fnv(self.trace, &id.0.to_be_bytes());
        self.trace = fnv(self.trace, what.as_bytes());
    }

    fn route(&mut self, id: NodeId, out: Output) {
        match out {
            Output::Send(m) => {
                if self.tracing {
                    self.record(id, &format!("{m:?}"));
                }
                let key = (id, NodeId(m.to));
                self.links.entry(key).or_default().push_back(m);
            }
            Output::Persist(task) => {
                self.record(
                    id,
                    &format!("persist {} {}", task.number, task.entries.len()),
                );
                self.nodes
                    .get_mut(&id)
                    .expect("live")
                    .unpersisted
                    .push_back(task);
            }
            Output::CompactLog { index, term } => {
                self.record(id, &format!("compact {index}"));
                self.nodes
                    .get_mut(&id)
                    .expect("live")
                    .durable
                    .compact(index, term);
            }
            Output::Respond { id: rid, result } => {
                if self.tracing {
                    self.record(id, &format!("respond {rid} {result:?}"));
                }
                self.answers.push(Answer {
                    node: id,
                    id: rid,
                    result,
                });
            }
            Output::Watch(w) => {
                if self.tracing {
                    self.record(id, &format!("watch {w:?}"));
                }
                self.watch_outputs.push((id, w));
            }
            Output::LeaderChanged { leader, term } => {
                self.record(id, &format!("leader {leader:?} {term}"));
                self.leader_changes.push((id, leader, term));
            }
            Output::Removed => self.record(id, "removed"),
        }
    }

    /// Makes every outstanding persist task of `id` durable and acknowledges them.
    pub fn persist(&mut self, id: NodeId) -> bool {
        let Some(sim) = self.nodes.get_mut(&id) else {
            return false;
        };
        if sim.node.is_none() || sim.unpersisted.is_empty() {
            return false;
        }
        let mut last = 0;
        while let Some(task) = sim.unpersisted.pop_front() {
            sim.durable.persist(&task);
            last = task.number;
        }
        self.step(id, Input::Persisted { number: last });
        true
    }

    /// Delivers the oldest message on one link; false if the link is empty.
    pub fn deliver_one(&mut self, from: NodeId, to: NodeId) -> bool {
        let Some(m) = self.links.get_mut(&(from, to)).and_then(|q| q.pop_front()) else {
            return false;
        };
        if self.cut.contains(&(from, to)) || !self.is_up(to) {
            return true; // lost on the wire
        }
        self.step(to, Input::Message(Box::new(m)));
        true
    }

    /// Links that have messages waiting, in a stable order.
    pub fn busy_links(&self) -> Vec<(NodeId, NodeId)> {
        self.links
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect()
    }

    /// Persists and delivers until nothing is left to do.
    pub fn stabilize(&mut self) {
        for _ in 0..100_000 {
            let mut progressed = false;
            for id in self.ids() {
                progressed |= self.persist(id);
            }
            for (from, to) in self.busy_links() {
                progressed |= self.deliver_all(from, to) > 0;
            }
            if !progressed {
                return;
            }
        }
        panic!("cluster did not stabilize");
    }

    /// Advances the clock one tick and ticks every live node.
    pub fn tick(&mut self) {
        self.now_ms += self.tick_ms;
        for id in self.ids() {
            self.step(id, Input::Tick);
        }
    }

    /// Ticks and stabilizes until a leader exists (or `max_ticks` pass).
    pub fn elect(&mut self, max_ticks: usize) -> Option<NodeId> {
        for _ in 0..max_ticks {
            self.stabilize();
            if let Some(l) = self.leader() {
                return Some(l);
            }
            self.tick();
        }
        self.stabilize();
        self.leader()
    }

    /// The leader of the highest term, as the live nodes see it.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter_map(|n| n.node.as_ref())
            .filter(|n| n.is_leader())
            .max_by_key(|n| n.term())
            .map(|n| n.id())
    }

    pub fn submit(&mut self, id: NodeId, request: Request) -> RequestId {
        self.submit_as(id, request, None)
    }

    /// Submits a request carrying an auth token.
    pub fn submit_as(&mut self, id: NodeId, request: Request, token: Option<String>) -> RequestId {
        self.submit_with(id, request, token.map(Credential::SimpleToken))
    }

    /// Submits a request carrying a credential (a token, or a user the server verified).
    pub fn submit_with(
        &mut self,
        id: NodeId,
        request: Request,
        credential: Option<Credential>,
    ) -> RequestId {
        let rid = RequestId(self.next_request);
        self.next_request += 1;
        let input = Input::Request {
            id: rid,
            request,
            credential,
        };
        self.step(id, input);
        rid
    }

    /// Submits several requests to one node in one batch (one Ready, one log append).
    pub fn submit_batch(&mut self, id: NodeId, requests: Vec<Request>) -> Vec<RequestId> {
        let mut ids = Vec::with_capacity(requests.len());
        let mut inputs = Vec::with_capacity(requests.len());
        for request in requests {
            let rid = RequestId(self.next_request);
            self.next_request += 1;
            ids.push(rid);
            inputs.push(Input::Request {
                id: rid,
                request,
                credential: None,
            });
        }
        self.step_batch(id, inputs);
        ids
    }

    /// Delivers every message queued on one link in one batch, as a driver draining a socket
    /// would; returns how many were taken off the link.
    pub fn deliver_all(&mut self, from: NodeId, to: NodeId) -> usize {
        let Some(queue) = self.links.get_mut(&(from, to)) else {
            return 0;
        };
        let msgs: Vec<Message> = queue.drain(..).collect();
        let count = msgs.len();
        if count == 0 || self.cut.contains(&(from, to)) || !self.is_up(to) {
            return count;
        }
        let inputs = msgs
            .into_iter()
            .map(|m| Input::Message(Box::new(m)))
            .collect();
        self.step_batch(to, inputs);
        count
    }

    pub fn answer(&self, rid: RequestId) -> Option<&Answer> {
        self.answers.iter().find(|a| a.id == rid)
    }

    /// Submits, stabilizes (ticking a little if needed) and returns the answer.
    pub fn call(&mut self, id: NodeId, request: Request) -> Result<Response, EtcdError> {
        self.call_as(id, request, None)
    }

    /// `call` with an auth token.
    pub fn call_as(
        &mut self,
        id: NodeId,
        request: Request,
        token: Option<String>,
    ) -> Result<Response, EtcdError> {
        self.call_with(id, request, token.map(Credential::SimpleToken))
    }

    /// `call` with a credential.
    pub fn call_with(
        &mut self,
        id: NodeId,
        request: Request,
        credential: Option<Credential>,
    ) -> Result<Response, EtcdError> {
        let rid = self.submit_with(id, request, credential);
        for _ in 0..200 {
            self.stabilize();
            if let Some(a) = self.answer(rid) {
                return a.result.clone();
            }
            self.tick();
        }
        panic!("request {rid} on n{id} got no answer");
    }

    pub fn watch(
        &mut self,
        id: NodeId,
        stream: StreamId,
        request: crate::proto::etcdserverpb::WatchCreateRequest,
    ) {
        self.watch_as(id, stream, request, None);
    }

    /// `watch` on a stream carrying an auth token.
    pub fn watch_as(
        &mut self,
        id: NodeId,
        stream: StreamId,
        request: crate::proto::etcdserverpb::WatchCreateRequest,
        token: Option<String>,
    ) {
        let input = Input::WatchCreate {
            stream,
            request,
            credential: token.map(Credential::SimpleToken),
        };
        self.step(id, input);
    }

    /// Cuts the link from `a` to `b` (one way).
    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        self.cut.insert((a, b));
    }

    /// Splits the cluster: no traffic between `side` and the rest, both ways.
    pub fn partition(&mut self, side: &[NodeId]) {
        for a in self.ids() {
            for b in self.ids() {
                if side.contains(&a) != side.contains(&b) {
                    self.cut.insert((a, b));
                }
            }
        }
    }

    pub fn uncut(&mut self, a: NodeId, b: NodeId) {
        self.cut.remove(&(a, b));
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Crashes a node: it loses unacknowledged persistence, held messages and volatile state.
    pub fn crash(&mut self, id: NodeId) {
        let sim = self.nodes.get_mut(&id).expect("known node");
        if let Some(node) = sim.node.take() {
            sim.parked_backend = Some(node.into_backend());
        }
        sim.unpersisted.clear();
        for ((_, to), q) in self.links.iter_mut() {
            if *to == id {
                q.clear();
            }
        }
        self.record(id, "crash");
    }

    /// Restarts a crashed node from its durable log and backend.
    pub fn restart(&mut self, id: NodeId) {
        let mut config = self.make_config(id);
        let sim = self.nodes.get_mut(&id).expect("known node");
        assert!(sim.node.is_none(), "n{id} is running");
        sim.boots += 1;
        config.seed ^= sim.boots;
        let backend = sim.parked_backend.take().unwrap_or_default();
        let mut node =
            Node::open(config.clone(), backend, sim.durable.log.clone()).expect("reopen");
        let outputs = node.take_outputs();
        sim.config = config;
        sim.node = Some(node);
        self.record(id, "restart");
        for out in outputs {
            self.route(id, out);
        }
    }

    /// etcd's offline defragmentation (`etcdutl defrag`): stops `id` after persisting
    /// everything it handed out, gives the space its backend freed back, and restarts it.
    /// Messages in flight to it are lost, as for any stopped member.
    pub fn defrag_offline(&mut self, id: NodeId) {
        self.persist(id);
        self.crash(id);
        let sim = self.nodes.get_mut(&id).expect("known node");
        sim.parked_backend
            .as_mut()
            .unwrap_or_else(|| panic!("n{id} has no backend to defragment"))
            .defragment();
        self.restart(id);
    }

    /// A one-line summary per node: role, term, leader, commit, applied, revision.
    pub fn status_lines(&self) -> String {
        let mut s = String::new();
        for (id, sim) in &self.nodes {
            match &sim.node {
                None => writeln!(s, "n{id}: down").expect("write to string"),
                Some(n) => writeln!(
                    s,
                    "n{id}: {} term={} leader={} commit={} applied={} rev={}",
                    if n.is_leader() { "leader" } else { "follower" },
                    n.term(),
                    n.leader().map_or("none".to_string(), |l| format!("n{l}")),
                    n.commit_index(),
                    n.applied_index(),
                    n.revision()
                )
                .expect("write to string"),
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::RangeRequest;

    fn read(key: &str) -> Request {
        Request::Range(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..RangeRequest::default()
        })
    }

    /// A linearizable read costs one read-index round trip, never a heartbeat tick: the
    /// node used to ask raft for the read index after its last Ready of the step, so the
    /// request only left with the next input (up to a tick later, and a lease could expire
    /// in between).
    #[test]
    fn linearizable_reads_are_answered_without_a_tick() {
        let mut c = Cluster::new(3, 1);
        c.step(NodeId(1), Input::Campaign);
        c.stabilize();
        assert_eq!(c.leader(), Some(NodeId(1)));
        for id in [1, 2, 3] {
            let rid = c.submit(NodeId(id), read("k"));
            c.stabilize();
            let answer = c
                .answer(rid)
                .unwrap_or_else(|| panic!("n{id}: linearizable read unanswered without a tick"));
            assert!(answer.result.is_ok(), "n{id}: {:?}", answer.result);
        }
    }
}
