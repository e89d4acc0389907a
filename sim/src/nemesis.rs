//! The nemesis: carries out a scenario's timeline against the cluster — network faults
//! through madsim's `NetSim`, process faults through madsim's node control, disk faults
//! through each member's fault disk ([`strata_server::storage::fault::FaultDevice`]), clock faults through its [`NodeClock`], and membership,
//! leadership, compaction and defragmentation through the members' real gRPC services, as an
//! operator would.
//!
//! Invariants:
//! - Every fault it applies is logged (the run's trace) with the member it resolved to.
//! - [`Nemesis::heal`] undoes every network, process, disk-speed and clock-rate fault, so the
//!   liveness check after it is fair: what remains is only what the cluster itself must
//!   recover from (lost unsynced writes, a corrupt member that refuses to start).
//! - Operator calls run on their own madsim node (`10.0.2.1`), with a timeout, and never
//!   fail the run: a refused call is logged.

use std::collections::BTreeSet;
use std::time::Duration;

use madsim::net::NetSim;
use madsim::rand::Rng;
use madsim::runtime::{Handle as SimHandle, NodeHandle};
use strata_engine::proto::etcdserverpb::{
    DefragmentRequest, MemberAddRequest, MemberListRequest, MemberPromoteRequest,
    MemberRemoveRequest, MoveLeaderRequest, RangeRequest,
};
use strata_server::api::pb::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use strata_server::storage::fault::Crash;
use tonic::transport::Endpoint;

use crate::cluster::{client_url, peer_url, Life, Members};
use crate::history::{Call, NodeIx, Op, Outcome, RaftEvent, Reply};
use crate::recorder::Recorder;
use crate::scenario::{CrashDisk, Fault, Target};

const OPERATOR_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Nemesis {
    pub members: Members,
    rec: Recorder,
    operator: NodeHandle,
    clogged_links: BTreeSet<(NodeIx, NodeIx)>,
    isolated: BTreeSet<NodeIx>,
    lease_ttl_secs: i64,
    /// Per member: forward clock jumps so far, and the largest drift error; leases are
    /// judged against the worst member's sum.
    clock_error: std::collections::BTreeMap<NodeIx, (u64, u64)>,
}

fn channel(ix: NodeIx) -> tonic::transport::Channel {
    Endpoint::from_shared(client_url(ix))
        .expect("member URL parses")
        .connect_lazy()
}

impl Nemesis {
    pub fn new(members: Members, rec: Recorder, lease_ttl_secs: i64) -> Nemesis {
        let operator = SimHandle::current()
            .create_node()
            .name("operator")
            .ip("10.0.2.1".parse().expect("ip"))
            .build();
        Nemesis {
            members,
            rec,
            operator,
            clogged_links: BTreeSet::new(),
            isolated: BTreeSet::new(),
            lease_ttl_secs,
            clock_error: Default::default(),
        }
    }

    fn net() -> std::sync::Arc<NetSim> {
        NetSim::current()
    }

    fn resolve(&self, t: &Target) -> Option<NodeIx> {
        let running: Vec<NodeIx> = self
            .members
            .present()
            .into_iter()
            .filter(|ix| self.members.is_running(*ix))
            .collect();
        match t {
            Target::Index(i) => Some(*i),
            Target::Leader => self.members.leader(),
            Target::Follower => {
                let leader = self.members.leader();
                let followers: Vec<NodeIx> = running
                    .into_iter()
                    .filter(|ix| Some(*ix) != leader)
                    .collect();
                pick(&followers)
            }
            Target::Random => pick(&self.members.present()),
        }
    }

    fn clog(&mut self, a: NodeIx, b: NodeIx) {
        if let (Some(na), Some(nb)) = (self.members.node_id(a), self.members.node_id(b)) {
            Self::net().clog_link(na, nb);
            self.clogged_links.insert((a, b));
        }
    }

    /// Applies one fault now.
    pub async fn apply(&mut self, fault: &Fault) {
        let kind = fault.kind();
        let target = fault.target();
        let ix = match target {
            Some(t) => match self.resolve(t) {
                Some(ix) => Some(ix),
                None => {
                    self.rec
                        .log(format!("{kind}: no member is {t:?} now; skipped"));
                    return;
                }
            },
            None => None,
        };
        let who = ix.map(|i| format!(" s{i}")).unwrap_or_default();
        self.rec.log(format!("{kind}{who}: {fault:?}"));
        let ix = ix.unwrap_or(0);
        match fault {
            Fault::Partition { groups } => {
                for (g, group) in groups.iter().enumerate() {
                    for other in groups.iter().skip(g + 1) {
                        for &a in group {
                            for &b in other {
                                self.clog(a, b);
                                self.clog(b, a);
                            }
                        }
                    }
                }
            }
            Fault::Isolate { .. } => {
                if let Some(n) = self.members.node_id(ix) {
                    Self::net().clog_node(n);
                    self.isolated.insert(ix);
                }
            }
            Fault::OneWay { from, to } => {
                for &a in from {
                    for &b in to {
                        self.clog(a, b);
                    }
                }
            }
            Fault::Reconnect { .. } => {
                if self.isolated.remove(&ix) {
                    if let Some(n) = self.members.node_id(ix) {
                        Self::net().unclog_node(n);
                    }
                } else {
                    self.rec
                        .log(format!("reconnect s{ix}: not isolated; nothing to do"));
                }
            }
            Fault::Swizzle { .. } => {
                unreachable!("Scenario::timeline expands a swizzle into isolate and reconnect")
            }
            Fault::Heal => self.heal_network(),
            Fault::Loss { rate } => {
                let rate = *rate;
                Self::net().update_config(|c| c.packet_loss_rate = rate);
            }
            Fault::Latency { min, max } => {
                let (min, max) = (min.0, max.0.max(min.0 + Duration::from_micros(1)));
                Self::net().update_config(|c| c.send_latency = min..max);
            }
            Fault::Kill { disk, .. } => {
                self.members.kill(ix);
                let mode = match disk {
                    CrashDisk::LoseUnsynced => Crash::LoseUnsynced,
                    CrashDisk::TornTail => Crash::TornTail,
                    CrashDisk::KeepUnsynced => Crash::KeepUnsynced,
                };
                self.members.slots[ix as usize]
                    .disk
                    .crash(mode, |n| madsim::rand::thread_rng().gen_range(0..=n));
            }
            Fault::Restart { .. } => self.restart(ix),
            Fault::Pause { .. } => self.members.pause(ix),
            Fault::Resume { .. } => self.members.resume(ix),
            Fault::FsyncError { .. } => self.members.slots[ix as usize].disk.fail_next_fsync(),
            Fault::SlowDisk { fsync, .. } => self.members.slots[ix as usize].disk.set_slow(fsync.0),
            Fault::Bitrot { .. } => {
                let hit = self.members.slots[ix as usize]
                    .disk
                    .bitrot(|n| madsim::rand::thread_rng().gen_range(0..n.max(1)));
                if hit {
                    self.rec.with_history(|h| {
                        h.rotten.insert(ix);
                    });
                } else {
                    self.rec
                        .log(format!("bitrot s{ix}: too few durable records; skipped"));
                }
            }
            Fault::ClockDrift { ppm, .. } => {
                self.members.slots[ix as usize].clock.set_drift_ppm(*ppm);
                let err =
                    (ppm.unsigned_abs() * self.lease_ttl_secs as u64 * 1_000_000_000) / 1_000_000;
                self.clock_error.entry(ix).or_default().1 =
                    self.clock_error.get(&ix).map(|e| e.1).unwrap_or(0).max(err);
                self.raise_clock_error(ix);
            }
            Fault::ClockJump { by, .. } => {
                self.members.slots[ix as usize].clock.jump(by.0);
                self.clock_error.entry(ix).or_default().0 += by.as_nanos();
                self.raise_clock_error(ix);
            }
            Fault::AddLearner => self.add_learner().await,
            Fault::Promote => self.promote().await,
            Fault::Remove { .. } => self.remove(ix).await,
            Fault::TransferLeader { .. } => self.transfer_leader(ix).await,
            Fault::Compact { keep } => self.compact(*keep).await,
            Fault::Defrag { .. } => {
                let done = self
                    .operator(move || async move {
                        MaintenanceClient::new(channel(ix))
                            .defragment(DefragmentRequest {})
                            .await
                            .map(|_| ())
                    })
                    .await;
                if let Err(e) = done {
                    self.rec.log(format!("defrag s{ix}: {e}"));
                }
            }
        }
    }

    fn raise_clock_error(&self, ix: NodeIx) {
        let (jumps, drift) = self.clock_error.get(&ix).copied().unwrap_or_default();
        let nanos = jumps + drift;
        self.rec.with_history(|h| {
            h.bounds.max_clock_error = h.bounds.max_clock_error.max(nanos);
        });
    }

    fn restart(&mut self, ix: NodeIx) {
        let slot = &self.members.slots[ix as usize];
        match slot.life {
            Life::Killed => self.members.restart(ix),
            Life::Up | Life::Paused if !self.members.is_running(ix) => {
                // It stopped on its own (fsync error, corrupt disk): start it again.
                self.members.restart(ix)
            }
            _ => {}
        }
    }

    fn heal_network(&mut self) {
        let net = Self::net();
        for (a, b) in std::mem::take(&mut self.clogged_links) {
            if let (Some(na), Some(nb)) = (self.members.node_id(a), self.members.node_id(b)) {
                net.unclog_link(na, nb);
            }
        }
        for ix in std::mem::take(&mut self.isolated) {
            if let Some(n) = self.members.node_id(ix) {
                net.unclog_node(n);
            }
        }
        net.update_config(|c| {
            c.packet_loss_rate = 0.0;
            c.send_latency = Duration::from_millis(1)..Duration::from_millis(10);
        });
    }

    /// Ends every fault the cluster cannot be expected to outlive.
    pub fn heal(&mut self) {
        self.rec
            .log("heal: network, processes, disks and clock rates back to normal");
        self.heal_network();
        for ix in self.members.present() {
            let slot = &self.members.slots[ix as usize];
            slot.disk.heal();
            slot.clock.set_drift_ppm(0);
            match slot.life {
                Life::Paused => self.members.resume(ix),
                Life::Killed => self.members.restart(ix),
                Life::Up if !self.members.is_running(ix) => self.members.restart(ix),
                _ => {}
            }
        }
    }

    /// Runs an operator call on the operator node, with a timeout.
    async fn operator<F, Fut, T>(&self, f: F) -> Result<T, String>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, tonic::Status>> + Send + 'static,
        T: Send + 'static,
    {
        let task = self.operator.spawn(async move {
            match tokio::time::timeout(OPERATOR_TIMEOUT, f()).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(s)) => Err(s.message().to_string()),
                Err(_) => Err("timed out".to_string()),
            }
        });
        task.await
            .unwrap_or_else(|_| Err("operator task failed".into()))
    }

    /// A member to send operator calls to: the leader if known, else any running member.
    fn contact(&self) -> NodeIx {
        self.members
            .leader()
            .or_else(|| {
                self.members
                    .present()
                    .into_iter()
                    .find(|ix| self.members.is_running(*ix))
            })
            .unwrap_or(0)
    }

    async fn add_learner(&mut self) {
        let Some(ix) = self
            .members
            .slots
            .iter()
            .find(|s| s.life == Life::Unborn)
            .map(|s| s.ix)
        else {
            self.rec.log("add-learner: no member slot left; skipped");
            return;
        };
        let contact = self.contact();
        let url = peer_url(ix);
        let added = self
            .operator(move || async move {
                ClusterClient::new(channel(contact))
                    .member_add(MemberAddRequest {
                        peer_ur_ls: vec![url],
                        is_learner: true,
                    })
                    .await
                    .map(|r| r.into_inner().member.map(|m| m.id).unwrap_or(0))
            })
            .await;
        match added {
            Ok(id) if id != 0 => {
                self.rec
                    .log(format!("add-learner: s{ix} added as member {id:x}"));
                self.members.launch_joiner(ix, id);
            }
            Ok(_) => self.rec.log("add-learner: answer without a member"),
            Err(e) => self.rec.log(format!("add-learner s{ix}: {e}")),
        }
    }

    async fn promote(&mut self) {
        let Some(slot) = self
            .members
            .slots
            .iter()
            .rev()
            .find(|s| s.learner && s.life == Life::Up)
        else {
            self.rec.log("promote: no learner; skipped");
            return;
        };
        let (ix, id) = (slot.ix, slot.id);
        // A learner is promotable only once in sync with the leader: retry for a while, but
        // never hold the timeline back by more than a few seconds.
        let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < give_up {
            let contact = self.contact();
            let promoted = self
                .operator(move || async move {
                    ClusterClient::new(channel(contact))
                        .member_promote(MemberPromoteRequest { id })
                        .await
                        .map(|_| ())
                })
                .await;
            match promoted {
                Ok(()) => {
                    self.rec.log(format!("promote: s{ix} is a voter"));
                    self.members.slots[ix as usize].learner = false;
                    return;
                }
                Err(e) => {
                    self.rec.log(format!("promote s{ix}: {e}"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn remove(&mut self, ix: NodeIx) {
        let id = self.members.slots[ix as usize].id;
        let contact = self.contact();
        let removed = self
            .operator(move || async move {
                ClusterClient::new(channel(contact))
                    .member_remove(MemberRemoveRequest { id })
                    .await
                    .map(|_| ())
            })
            .await;
        let removed = match removed {
            Ok(()) => true,
            Err(e) => {
                // The answer may be lost although the removal committed (the leader removing
                // itself stops soon after): look at how the member exited and ask the others,
                // as an operator would.
                self.rec
                    .log(format!("remove s{ix}: {e}; checking the member list"));
                tokio::time::sleep(Duration::from_secs(2)).await;
                let said_removed = self.rec.with_history(|h| {
                    h.raft.iter().any(|r| {
                        r.node == ix
                            && matches!(&r.event, RaftEvent::Stopped { why }
                                if why.contains("permanently removed"))
                    })
                });
                let other = self
                    .members
                    .present()
                    .into_iter()
                    .find(|&o| o != ix && self.members.is_running(o))
                    .unwrap_or(contact);
                let listed = self
                    .operator(move || async move {
                        ClusterClient::new(channel(other))
                            .member_list(MemberListRequest { linearizable: true })
                            .await
                            .map(|r| r.into_inner().members.iter().any(|m| m.id == id))
                    })
                    .await;
                said_removed || matches!(listed, Ok(false))
            }
        };
        if removed {
            self.rec.log(format!("remove: s{ix} removed"));
            self.members.kill(ix);
            self.members.slots[ix as usize].life = Life::Removed;
        }
    }

    async fn transfer_leader(&mut self, to: NodeIx) {
        let Some(leader) = self.members.leader() else {
            self.rec.log("transfer-leader: no leader; skipped");
            return;
        };
        let target_id = self.members.slots[to as usize].id;
        let moved = self
            .operator(move || async move {
                MaintenanceClient::new(channel(leader))
                    .move_leader(MoveLeaderRequest { target_id })
                    .await
                    .map(|_| ())
            })
            .await;
        if let Err(e) = moved {
            self.rec.log(format!("transfer-leader to s{to}: {e}"));
        }
    }

    async fn compact(&mut self, keep: i64) {
        let contact = self.contact();
        let current = self
            .operator(move || async move {
                KvClient::new(channel(contact))
                    .range(RangeRequest {
                        key: b"key/".to_vec(),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().header.map(|h| h.revision).unwrap_or(0))
            })
            .await;
        let revision = match current {
            Ok(r) => r - keep.max(0),
            Err(e) => {
                self.rec.log(format!("compact: reading the revision: {e}"));
                return;
            }
        };
        if revision < 2 {
            return;
        }
        let id = self.rec.next_op_id();
        let invoke = self.rec.now();
        let answer = self
            .operator(move || async move {
                KvClient::new(channel(contact))
                    .compact(strata_engine::proto::etcdserverpb::CompactionRequest {
                        revision,
                        physical: false,
                    })
                    .await
                    .map(|r| r.into_inner().header.map(|h| h.revision).unwrap_or(0))
            })
            .await;
        let outcome = match answer {
            Ok(rev) => Outcome::Ok(Reply::Compact { revision: rev }),
            Err(e) => Outcome::Unknown(e),
        };
        self.rec.op(Op {
            id,
            client: u32::MAX,
            node: contact,
            call: Call::Compact { revision },
            invoke,
            complete: self.rec.now(),
            outcome,
        });
    }
}

fn pick(ixs: &[NodeIx]) -> Option<NodeIx> {
    if ixs.is_empty() {
        return None;
    }
    Some(ixs[madsim::rand::thread_rng().gen_range(0..ixs.len())])
}
