//! Members of a simulated cluster: each runs the production driver, peer transport and gRPC
//! services inside its own madsim node (its own IP, its own tasks, killed and restarted as a
//! whole), over its own [`SimDisk`] and [`NodeClock`].
//!
//! Invariants:
//! - A member's disk and clock live in its [`Slot`], outside the madsim node, so they
//!   survive kills; a restart re-runs [`member_main`], which loads the disk as a real start
//!   would (and refuses a corrupt one).
//! - Member `ix` has IP `10.0.0.{ix+1}`, client port 2379, peer port 2380. Bootstrap
//!   members have member id `ix+1`; a member added later has the id the cluster assigned.
//! - Every boot draws a fresh engine seed from the run's RNG (proposal ids must not repeat).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use madsim::runtime::{Handle as SimHandle, NodeHandle};
use strata_engine::bugs::Bug;
use strata_engine::node::{bootstrap_log, Config, PersistedLog};
use strata_engine::proto::strata::internal::MemberRecord;
use strata_engine::{Limits, NodeId};
use strata_server::api::pb::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use strata_server::api::pb::v3electionpb::election_server::ElectionServer;
use strata_server::api::pb::v3lockpb::lock_server::LockServer;
use strata_server::api::{self, Ctx};
use strata_server::clock::NodeClock;
use strata_server::driver::{Driver, Handle, Observation, Parts};
use strata_server::storage::{bootstrap_task, LogStorage};
use strata_server::transport::{self, MembersSource, Transport};

use crate::disk::SimDisk;
use crate::history::{NodeIx, RaftEvent};
use crate::recorder::Recorder;
use crate::scenario;

pub const CLUSTER_ID: u64 = 0x5157_a7a0_c1a5_7e25;
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

pub fn member_ip(ix: NodeIx) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, ix as u8 + 1))
}

fn bootstrap_id(ix: NodeIx) -> u64 {
    ix as u64 + 1
}

pub fn client_url(ix: NodeIx) -> String {
    format!("http://{}:{CLIENT_PORT}", member_ip(ix))
}

pub fn peer_url(ix: NodeIx) -> String {
    format!("http://{}:{PEER_PORT}", member_ip(ix))
}

/// Where a member is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Life {
    /// Not added to the cluster yet (a learner the timeline adds later).
    Unborn,
    Up,
    Paused,
    /// Killed by the nemesis (restartable).
    Killed,
    /// Removed from the cluster; never restarted.
    Removed,
}

/// One member position.
pub struct Slot {
    pub ix: NodeIx,
    /// The etcd member id (0 until the member is added).
    pub id: u64,
    pub disk: SimDisk,
    pub clock: NodeClock,
    pub node: Option<NodeHandle>,
    pub life: Life,
    pub learner: bool,
}

/// Who a member is when it starts; shared by all its boots.
struct Spec {
    ix: NodeIx,
    id: u64,
    cluster: scenario::Cluster,
    /// The bootstrap member list (initial members), or `None` for a member that joins.
    bootstrap: Option<Vec<MemberRecord>>,
    /// Peers a joining member reaches first.
    join_peers: BTreeMap<NodeId, Vec<String>>,
    disk: SimDisk,
    clock: NodeClock,
    recorder: Recorder,
    handles: Handles,
    bug: Option<Bug>,
}

/// The running members' driver handles, for the nemesis' oracle questions (who leads?).
pub type Handles = Arc<Mutex<BTreeMap<NodeIx, Handle>>>;

pub struct Members {
    pub slots: Vec<Slot>,
    pub handles: Handles,
    bug: Option<Bug>,
    cluster: scenario::Cluster,
    recorder: Recorder,
    sim: SimHandle,
}

impl Members {
    pub fn new(s: &scenario::Scenario, recorder: Recorder, bug: Option<Bug>) -> Members {
        let slots = (0..s.max_members())
            .map(|ix| Slot {
                ix,
                id: 0,
                disk: SimDisk::new(format!("s{ix}")),
                clock: NodeClock::default(),
                node: None,
                life: Life::Unborn,
                learner: ix >= s.cluster.voters,
            })
            .collect();
        Members {
            slots,
            handles: Arc::default(),
            bug,
            cluster: s.cluster.clone(),
            recorder,
            sim: SimHandle::current(),
        }
    }

    fn record(ix: NodeIx) -> MemberRecord {
        MemberRecord {
            id: bootstrap_id(ix),
            name: format!("s{ix}"),
            peer_urls: vec![peer_url(ix)],
            client_urls: vec![],
            is_learner: false,
        }
    }

    /// Starts the bootstrap voters.
    pub fn bootstrap(&mut self) {
        let voters: Vec<MemberRecord> = (0..self.cluster.voters).map(Self::record).collect();
        for ix in 0..self.cluster.voters {
            self.slots[ix as usize].id = bootstrap_id(ix);
            self.launch(ix, Some(voters.clone()), BTreeMap::new());
        }
    }

    /// Starts a member the cluster just added (as a learner) with member id `id`.
    pub fn launch_joiner(&mut self, ix: NodeIx, id: u64) {
        self.slots[ix as usize].id = id;
        self.slots[ix as usize].learner = true;
        let peers = self
            .slots
            .iter()
            .filter(|s| s.ix != ix && matches!(s.life, Life::Up | Life::Paused | Life::Killed))
            .map(|s| (NodeId(s.id), vec![peer_url(s.ix)]))
            .collect();
        self.launch(ix, None, peers);
    }

    fn launch(
        &mut self,
        ix: NodeIx,
        bootstrap: Option<Vec<MemberRecord>>,
        join_peers: BTreeMap<NodeId, Vec<String>>,
    ) {
        let slot = &mut self.slots[ix as usize];
        let spec = Arc::new(Spec {
            ix,
            id: slot.id,
            cluster: self.cluster.clone(),
            bootstrap,
            join_peers,
            disk: slot.disk.clone(),
            clock: slot.clock.clone(),
            recorder: self.recorder.clone(),
            handles: self.handles.clone(),
            bug: self.bug,
        });
        let node = self
            .sim
            .create_node()
            .name(format!("s{ix}"))
            .ip(member_ip(ix))
            .init(move || member_main(spec.clone()))
            .build();
        slot.node = Some(node);
        slot.life = Life::Up;
    }

    pub fn node_id(&self, ix: NodeIx) -> Option<madsim::task::NodeId> {
        self.slots[ix as usize].node.as_ref().map(|n| n.id())
    }

    /// Whether the member's process is running (not killed, not exited on its own).
    pub fn is_running(&self, ix: NodeIx) -> bool {
        let slot = &self.slots[ix as usize];
        match (&slot.life, &slot.node) {
            (Life::Up | Life::Paused, Some(n)) => !self.sim.is_exit(n.id()),
            _ => false,
        }
    }

    /// The member a majority of running members believe leads, if any.
    pub fn leader(&self) -> Option<NodeIx> {
        let handles = self.handles.lock().expect("handles lock");
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for (ix, h) in handles.iter() {
            if !self.is_running(*ix) || self.slots[*ix as usize].life == Life::Paused {
                continue;
            }
            if let Some(l) = h.shared.leader() {
                *votes.entry(l.0).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by_key(|(id, n)| (*n, std::cmp::Reverse(*id)))
            .and_then(|(id, _)| self.ix_of(id))
            .filter(|ix| self.is_running(*ix))
    }

    pub fn ix_of(&self, id: u64) -> Option<NodeIx> {
        self.slots
            .iter()
            .find(|s| s.id == id && id != 0)
            .map(|s| s.ix)
    }

    pub fn kill(&mut self, ix: NodeIx) {
        if let Some(id) = self.node_id(ix) {
            self.sim.kill(id);
        }
        self.handles.lock().expect("handles lock").remove(&ix);
        self.slots[ix as usize].life = Life::Killed;
    }

    pub fn restart(&mut self, ix: NodeIx) {
        if let Some(id) = self.node_id(ix) {
            // A member that stopped on its own exited without releasing its sockets: a kill
            // resets them, as the OS does when a process ends.
            self.sim.kill(id);
            self.sim.restart(id);
            self.slots[ix as usize].life = Life::Up;
        }
    }

    pub fn pause(&mut self, ix: NodeIx) {
        if let Some(id) = self.node_id(ix) {
            self.sim.pause(id);
            self.slots[ix as usize].life = Life::Paused;
        }
    }

    pub fn resume(&mut self, ix: NodeIx) {
        if let Some(id) = self.node_id(ix) {
            self.sim.resume(id);
            self.slots[ix as usize].life = Life::Up;
        }
    }

    /// The members that are not unborn or removed.
    pub fn present(&self) -> Vec<NodeIx> {
        self.slots
            .iter()
            .filter(|s| !matches!(s.life, Life::Unborn | Life::Removed))
            .map(|s| s.ix)
            .collect()
    }
}

/// One boot of a member: load the disk, start the driver, the peer listener and the gRPC
/// services, and run until the driver stops (the madsim node then exits with it).
async fn member_main(spec: Arc<Spec>) {
    let ix = spec.ix;
    let rec = &spec.recorder;
    let loaded = match spec.disk.load() {
        Ok(l) => l,
        Err(e) => {
            rec.log(format!("s{ix} refuses to start: {e}"));
            rec.raft(
                ix,
                RaftEvent::Stopped {
                    why: format!("refused to start: {e}"),
                },
            );
            return;
        }
    };
    if loaded.torn_tail {
        rec.log(format!("s{ix} dropped a torn tail record at start"));
    }
    let mut log = spec.disk.log();
    let persisted = match (&spec.bootstrap, loaded.fresh) {
        (Some(members), true) => {
            let boot = bootstrap_log(members);
            if let Err(e) = log.persist(vec![bootstrap_task(&boot)]).await {
                rec.raft(ix, RaftEvent::Stopped { why: e.to_string() });
                return;
            }
            boot
        }
        (None, true) => PersistedLog::default(),
        (_, false) => loaded.log,
    };
    let id = NodeId(spec.id);
    let c = &spec.cluster;
    let mut config = Config::new(id, CLUSTER_ID, madsim::rand::random());
    config.tick_ms = c.heartbeat.0.as_millis() as u64;
    config.heartbeat_ticks = 1;
    config.election_ticks = (c.election_timeout.0.as_millis() as u64 / config.tick_ms) as usize;
    config.request_timeout_ticks =
        (5000 + 2 * c.election_timeout.0.as_millis() as u64) / config.tick_ms;
    config.limits = Limits {
        snapshot_count: c.snapshot_count,
        snapshot_catch_up_entries: c.snapshot_catch_up_entries,
        ..Limits::default()
    };
    config.bug = spec.bug;

    let (peer_tx, peer_rx) = tokio::sync::mpsc::unbounded_channel();
    let transport = Transport::new(id, CLUSTER_ID, vec![peer_url(ix)], peer_tx);
    let (_shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let observer_rec = rec.clone();
    // What the driver reports while starting is held until `Started` is recorded, so every
    // lifetime's records follow its `Started`.
    let early: Arc<Mutex<Option<Vec<RaftEvent>>>> = Arc::new(Mutex::new(Some(Vec::new())));
    let early_in = early.clone();
    let observer: strata_server::driver::Observer = Arc::new(move |o| {
        let event = match o {
            Observation::State {
                term,
                leader,
                is_leader,
            } => RaftEvent::State {
                term: term.0,
                leader: leader.map(|l| l.0),
                is_leader,
            },
            Observation::Applied(e) => RaftEvent::Applied {
                index: e.index.0,
                term: e.term.0,
                chain: e.digest,
            },
            Observation::Committed(i) => RaftEvent::Committed { index: i.0 },
            Observation::VoteGranted { term, candidate } => RaftEvent::VoteGranted {
                term: term.0,
                candidate: candidate.0,
            },
        };
        match early_in.lock().expect("early lock").as_mut() {
            Some(held) => held.push(event),
            None => observer_rec.raft(ix, event),
        }
    });
    let started = Driver::start(Parts {
        config,
        name: format!("s{ix}"),
        client_urls: vec![client_url(ix)],
        backend: spec.disk.backend(loaded.backend),
        log,
        persisted,
        transport: transport.clone(),
        initial_peers: spec.join_peers.clone(),
        peer_events: peer_rx,
        shutdown,
        clock: spec.clock.clone(),
        observer: Some(observer),
    });
    let (driver, handle) = match started {
        Ok(x) => x,
        Err(e) => {
            rec.log(format!("s{ix} failed to start: {e}"));
            rec.raft(ix, RaftEvent::Stopped { why: e.to_string() });
            return;
        }
    };
    let view = handle.shared.view();
    rec.raft(
        ix,
        RaftEvent::Started {
            applied: view.applied.0,
            revision: view.revision,
            term: view.term.0,
            vote: view.vote.map_or(0, |v| v.0),
        },
    );
    for event in early.lock().expect("early lock").take().unwrap_or_default() {
        rec.raft(ix, event);
    }
    spec.handles
        .lock()
        .expect("handles lock")
        .insert(ix, handle.clone());

    let peer_addr = SocketAddr::new(member_ip(ix), PEER_PORT);
    let listener = match tokio::net::TcpListener::bind(peer_addr).await {
        Ok(l) => l,
        Err(e) => {
            rec.raft(
                ix,
                RaftEvent::Stopped {
                    why: format!("bind {peer_addr}: {e}"),
                },
            );
            return;
        }
    };
    let shared = handle.shared.clone();
    let members: MembersSource = Arc::new(move || shared.view().members);
    tokio::spawn(transport::serve(listener, transport, members, false));

    let mut ctx = Ctx::new(handle.clone());
    ctx.bcrypt_cost = 4;
    let client_addr = SocketAddr::new(member_ip(ix), CLIENT_PORT);
    let client_rec = rec.clone();
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(KvServer::new(api::kv::KvService(ctx.clone())))
            .add_service(WatchServer::new(api::watch::WatchService(ctx.clone())))
            .add_service(LeaseServer::new(api::lease::LeaseService(ctx.clone())))
            .add_service(ClusterServer::new(api::cluster::ClusterService(
                ctx.clone(),
            )))
            .add_service(LockServer::new(api::lock::LockService(ctx.clone())))
            .add_service(ElectionServer::new(api::election::ElectionService(
                ctx.clone(),
            )))
            .add_service(AuthServer::new(api::auth::AuthService {
                ctx: ctx.clone(),
                bcrypt_cost: 4,
            }))
            .add_service(MaintenanceServer::new(
                api::maintenance::MaintenanceService(ctx.clone()),
            ))
            .serve(client_addr)
            .await;
        if let Err(e) = served {
            client_rec.log(format!("s{ix} client listener failed: {e}"));
        }
    });

    let stopped = driver.run().await;
    spec.handles.lock().expect("handles lock").remove(&ix);
    rec.log(format!("s{ix} stopped: {stopped}"));
    rec.raft(
        ix,
        RaftEvent::Stopped {
            why: stopped.to_string(),
        },
    );
    // Returning ends the madsim node at once, as a process exits on a fatal error.
}
