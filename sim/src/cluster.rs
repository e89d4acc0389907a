//! Members of a simulated cluster: each is started from a command line of etcd's flags
//! through the server's own start-up ([`strata_server::startup::launch`]: flags, identity,
//! storage recovery, driver, peer transport) and serves the production gRPC services, inside
//! its own madsim node (its own IP, its own tasks, killed and restarted as a whole), over its
//! own [`FaultDevice`] and [`NodeClock`]. Only the device, the sockets and the clock are the
//! simulator's.
//!
//! Invariants:
//! - A member's disk and clock live in its [`Slot`], outside the madsim node, so they
//!   survive kills; a restart re-runs [`member_main`], which recovers the disk as a real start
//!   does (and refuses a corrupt one).
//! - Member `ix` has IP `10.0.0.{ix+1}`, client port 2379, peer port 2380, name `s{ix}`. Its
//!   member id is etcd's, from its peer URL and the cluster token (bootstrap members) or the
//!   one the cluster assigned (members added later).
//! - Every boot draws a fresh engine seed from the run's RNG (proposal ids must not repeat).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use madsim::runtime::{Handle as SimHandle, NodeHandle};
use strata_engine::bugs::Bug;
use strata_server::api::Ctx;
use strata_server::clock::NodeClock;
use strata_server::config::{member_config_from_args, member_id, MemberConfig};
use strata_server::driver::{Handle, Observation};
use strata_server::startup::{launch, Env, Launched, StartError};
use strata_server::storage::fault::{Crash, FaultDevice};
use strata_server::storage::store::Store;

use crate::check::durability::REFUSED_TO_START;
use crate::history::{NodeIx, RaftEvent};
use crate::recorder::Recorder;
use crate::scenario;

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
/// `--initial-cluster-token` of every simulated cluster.
const CLUSTER_TOKEN: &str = "strata-sim";

/// The read budget of a simulated member started without `--max-read-bytes-in-flight`: a few
/// KiB, so concurrent full-range reads of the simulator's small stores do wait for each other.
const SIM_READ_BUDGET_BYTES: u64 = 4096;

pub fn member_ip(ix: NodeIx) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, ix as u8 + 1))
}

/// The member id etcd derives for a bootstrap member from its peer URL and the token.
fn bootstrap_id(ix: NodeIx) -> u64 {
    member_id(&[peer_url(ix)], CLUSTER_TOKEN)
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
    pub disk: FaultDevice,
    pub clock: NodeClock,
    pub node: Option<NodeHandle>,
    pub life: Life,
    pub learner: bool,
}

/// Who a member is when it starts; shared by all its boots.
struct Spec {
    ix: NodeIx,
    /// Its command line, as an operator would write it.
    args: Vec<String>,
    disk: FaultDevice,
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
                disk: FaultDevice::new(format!("s{ix}")),
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

    /// Starts the bootstrap voters.
    pub fn bootstrap(&mut self) {
        let voters: Vec<NodeIx> = (0..self.cluster.voters).collect();
        for &ix in &voters {
            self.slots[ix as usize].id = bootstrap_id(ix);
            let args = self.args(ix, &voters, "new");
            self.launch(ix, args);
        }
    }

    /// Starts a member the cluster just added (as a learner) with member id `id`: it joins
    /// with `--initial-cluster-state existing`, naming the members it knows of.
    pub fn launch_joiner(&mut self, ix: NodeIx, id: u64) {
        self.slots[ix as usize].id = id;
        self.slots[ix as usize].learner = true;
        let known: Vec<NodeIx> = self
            .slots
            .iter()
            .filter(|s| s.ix == ix || matches!(s.life, Life::Up | Life::Paused | Life::Killed))
            .map(|s| s.ix)
            .collect();
        let args = self.args(ix, &known, "existing");
        self.launch(ix, args);
    }

    /// Member `ix`'s command line: etcd's flags, with the scenario's timing and snapshot
    /// settings.
    fn args(&self, ix: NodeIx, initial: &[NodeIx], state: &str) -> Vec<String> {
        let c = &self.cluster;
        let initial_cluster = initial
            .iter()
            .map(|&m| format!("s{m}={}", peer_url(m)))
            .collect::<Vec<_>>()
            .join(",");
        let flags = [
            ("--name", format!("s{ix}")),
            ("--data-dir", format!("/sim/s{ix}")),
            ("--listen-client-urls", client_url(ix)),
            ("--advertise-client-urls", client_url(ix)),
            ("--listen-peer-urls", peer_url(ix)),
            ("--initial-advertise-peer-urls", peer_url(ix)),
            ("--initial-cluster", initial_cluster),
            ("--initial-cluster-state", state.to_string()),
            ("--initial-cluster-token", CLUSTER_TOKEN.to_string()),
            (
                "--heartbeat-interval",
                c.heartbeat.0.as_millis().to_string(),
            ),
            (
                "--election-timeout",
                c.election_timeout.0.as_millis().to_string(),
            ),
            ("--snapshot-count", c.snapshot_count.to_string()),
            (
                "--experimental-snapshot-catchup-entries",
                c.snapshot_catch_up_entries.to_string(),
            ),
            (
                "--experimental-lease-checkpoint-interval",
                format!("{}ms", c.lease_checkpoint_interval.0.as_millis()),
            ),
            (
                "--experimental-watch-progress-notify-interval",
                format!("{}ms", c.progress_notify_interval.0.as_millis()),
            ),
            // Hashing passwords at etcd's cost would dominate simulated CPU time.
            ("--bcrypt-cost", "4".to_string()),
        ];
        std::iter::once("strata".to_string())
            .chain(flags.into_iter().flat_map(|(f, v)| [f.to_string(), v]))
            .collect()
    }

    fn launch(&mut self, ix: NodeIx, args: Vec<String>) {
        let slot = &mut self.slots[ix as usize];
        let spec = Arc::new(Spec {
            ix,
            args,
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
            // The old process is gone; the OS keeps what it had written (a kill already
            // applied its crash to the disk, so this only ends a failed disk's refusal).
            self.slots[ix as usize]
                .disk
                .crash(Crash::KeepUnsynced, |n| n);
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

/// One boot of a member: its command line becomes a configuration, the server's start-up
/// recovers its disk and starts the driver and peer transport, the production gRPC services
/// answer on its client URL, and it runs until the driver stops (the madsim node then exits
/// with it).
async fn member_main(spec: Arc<Spec>) {
    let ix = spec.ix;
    let rec = &spec.recorder;
    let stopped = |why: String| {
        rec.log(format!("s{ix} {why}"));
        rec.raft(ix, RaftEvent::Stopped { why });
    };
    let cfg: MemberConfig = match member_config_from_args(&spec.args) {
        Ok(cfg) => cfg,
        Err(e) => return stopped(format!("refused its flags: {e}")),
    };
    let (_shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    // What the driver reports while starting is held until `Started` is recorded, so every
    // lifetime's records follow its `Started`.
    let early: Arc<Mutex<Option<Vec<RaftEvent>>>> = Arc::new(Mutex::new(Some(Vec::new())));
    let env = Env {
        store: Store::new(spec.disk.clone()),
        clock: spec.clock.clone(),
        seed: madsim::rand::random(),
        observer: Some(observer(ix, rec.clone(), early.clone())),
        bug: spec.bug,
        peer_tls: None,
    };
    let Launched { driver, handle, .. } = match launch(&cfg, env, shutdown).await {
        Ok(launched) => launched,
        // Only a disk the storage logic rejects is a refusal (the durability checker
        // allows it after bit rot alone); a joiner that cannot reach the cluster just fails.
        Err(e @ StartError::Storage(_)) => return stopped(format!("{REFUSED_TO_START}: {e}")),
        Err(e) => return stopped(format!("failed to start: {e}")),
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

    // The default budget depends on the machine; the simulator's must not. A member started
    // without the flag gets a small fixed one, so large reads queue in every run alike.
    let read_budget = match cfg.max_read_bytes_in_flight {
        0 => SIM_READ_BUDGET_BYTES,
        bytes => bytes,
    };
    let reads = strata_server::api::Reads::new(read_budget, cfg.max_request_bytes as usize)
        .with_first_chunk_keys(1)
        .with_chunk_pause(std::time::Duration::from_millis(1));
    let mut ctx = Ctx::new(handle.clone(), reads);
    ctx.bcrypt_cost = cfg.bcrypt_cost;
    let client_addr = SocketAddr::new(member_ip(ix), CLIENT_PORT);
    let client_rec = rec.clone();
    let max_request_bytes = cfg.max_request_bytes as usize;
    tokio::spawn(async move {
        let served = strata_server::add_client_services!(
            tonic::transport::Server::builder(),
            &ctx,
            max_request_bytes
        )
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

/// Turns the driver's observations into the history's raft records, holding them in `early`
/// until the boot's `Started` is recorded.
fn observer(
    ix: NodeIx,
    rec: Recorder,
    early: Arc<Mutex<Option<Vec<RaftEvent>>>>,
) -> strata_server::driver::Observer {
    Arc::new(move |o| {
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
        match early.lock().expect("early lock").as_mut() {
            Some(held) => held.push(event),
            None => rec.raft(ix, event),
        }
    })
}
