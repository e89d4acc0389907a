//! `strata-local`: the README's "run" command. Three engine members in one process over the
//! testkit's in-memory network, walked through what an `etcdctl` session would do, printing
//! each step with its revisions. It is the engine alone: no sockets, no disk; the network
//! server that `etcdctl` can talk to comes with issue 3.
//!
//! The run is deterministic (one seed drives elections and ids) and ends in well under a second.
//! Each step checks what it shows — the txn takes the right branch, the lease expires and takes
//! its key, a compacted revision is refused, the transfer moves the leader, and every
//! acknowledged write reads back from the leader after it crashes and restarts — and the
//! process exits non-zero when a check fails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use strata_engine::proto::etcdserverpb::{
    self as pb, compare, request_op, response_op, Compare, RequestOp,
};
use strata_engine::proto::mvccpb::{event::EventType, KeyValue};
use strata_engine::request::{Request, Response};
use strata_engine::testkit::Cluster;
use strata_engine::{EtcdError, LeaseId, NodeId, StreamId};

const SEED: u64 = 42;
const VOTERS: u64 = 3;
/// Ticks a step may take (elections, catch-up, lease expiry) before the demo gives up.
const TICKS_MAX: usize = 300;

/// A demo step's result: `Err` names the check that failed.
type Checked<T> = Result<T, String>;

fn main() -> ExitCode {
    let mut demo = Demo::new();
    match demo.run() {
        Ok(()) => {
            println!();
            println!("demo finished: every check passed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("strata-local: FAILED: {e}");
            eprintln!("cluster state:\n{}", demo.cluster.status_lines());
            ExitCode::FAILURE
        }
    }
}

struct Demo {
    cluster: Cluster,
    /// The latest acknowledged state of every key written: its value and revisions, or
    /// `None` once an acknowledged delete (here: a lease expiry) removed it.
    acknowledged: BTreeMap<Vec<u8>, Option<KeyValue>>,
}

impl Demo {
    fn new() -> Demo {
        Demo {
            cluster: Cluster::new(VOTERS, SEED),
            acknowledged: BTreeMap::new(),
        }
    }

    fn run(&mut self) -> Checked<()> {
        println!(
            "Strata local demo: the engine (strata-engine) alone, {VOTERS} members in one \
             process over an in-memory network, seed {SEED}.\nNo sockets and no disk: the \
             etcd-compatible server that etcdctl talks to comes with issue 3."
        );
        let leader = self.elect()?;
        self.put_and_get(leader)?;
        self.txn(leader)?;
        self.lease(leader)?;
        let follower = self.other_than(leader);
        self.watch_history(follower, leader)?;
        self.compaction(leader)?;
        self.member_list(follower)?;
        let leader = self.transfer_leader(leader)?;
        self.crash_and_restart(leader)
    }

    // ---- steps ----------------------------------------------------------------------------

    fn elect(&mut self) -> Checked<NodeId> {
        heading("elect a leader");
        let leader = self
            .cluster
            .elect(TICKS_MAX)
            .ok_or("no leader elected".to_string())?;
        println!(
            "  n{leader} won the election for term {} after {} of cluster time",
            self.cluster.node(leader).term(),
            self.clock()
        );
        self.status();
        Ok(leader)
    }

    fn put_and_get(&mut self, leader: NodeId) -> Checked<()> {
        heading("put and get (sent to the leader; a get is linearizable: a read index first)");
        self.put(leader, "greeting", "hello", 0)?;
        self.put(leader, "greeting", "hello, world", 0)?;
        self.put(leader, "config/replicas", "3", 0)?;
        let resp = self.range(leader, "greeting", 0)?;
        print_range("get greeting", &resp);
        let resp = self.range(leader, "greeting", 2)?;
        print_range("get greeting --rev=2", &resp);
        Ok(())
    }

    fn txn(&mut self, leader: NodeId) -> Checked<()> {
        heading("txn: compare-and-swap");
        let swap = pb::TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Value as i32,
                key: b"greeting".to_vec(),
                target_union: Some(compare::TargetUnion::Value(b"hello, world".to_vec())),
                range_end: Vec::new(),
            }],
            success: vec![op_put("greeting", "hi")],
            failure: vec![op_get("greeting")],
        };
        for attempt in ["first", "again"] {
            let Response::Txn(resp) = self.call(leader, Request::Txn(swap.clone()))? else {
                return Err("txn: not a txn response".into());
            };
            let rev = revision(&resp.header);
            let outcome = if resp.succeeded {
                "succeeded: then-branch put greeting=hi"
            } else {
                "failed: else-branch ran"
            };
            println!(
                "  txn ({attempt}) if value(greeting) == \"hello, world\" then put greeting hi \
                 else get greeting\n      -> {outcome}, revision {rev}"
            );
            for op in &resp.responses {
                if let Some(response_op::Response::ResponseRange(r)) = &op.response {
                    for kv in &r.kvs {
                        println!("         {}", fmt_kv(kv));
                    }
                }
            }
            if resp.succeeded {
                self.refresh(leader, "greeting")?;
            }
            let expect_success = attempt == "first";
            if resp.succeeded != expect_success {
                return Err(format!("txn ({attempt}): succeeded={}", resp.succeeded));
            }
        }
        Ok(())
    }

    fn lease(&mut self, leader: NodeId) -> Checked<()> {
        heading("a lease with an attached key, left to expire");
        let granted_at = self.cluster.now_ms;
        let grant = pb::LeaseGrantRequest { ttl: 3, id: 0 };
        let Response::LeaseGrant(granted) = self.call(leader, Request::LeaseGrant(grant))? else {
            return Err("lease grant: wrong response".into());
        };
        let lease = granted.id;
        println!(
            "  lease grant 3 -> lease {lease:x} granted with TTL {} s (revision {}: a grant \
             writes no key)",
            granted.ttl,
            revision(&granted.header)
        );
        self.put(leader, "session/alice", "online", lease)?;
        let ttl = pb::LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        };
        let Response::LeaseTimeToLive(t) = self.call(leader, Request::LeaseTimeToLive(ttl))? else {
            return Err("lease timetolive: wrong response".into());
        };
        let keys: Vec<String> = t.keys.iter().map(|k| show(k)).collect();
        println!(
            "  lease timetolive {lease:x} --keys -> {} s left of {} s (whole seconds, rounded \
             down as etcd does, {:.1} s after the grant), attached keys {keys:?}",
            t.ttl,
            t.granted_ttl,
            (self.cluster.now_ms - granted_at) as f64 / 1000.0
        );
        for _ in 0..TICKS_MAX {
            let lessor = &self.cluster.node(leader).state_machine().lessor;
            if !lessor.contains(LeaseId(lease)) {
                break;
            }
            self.cluster.tick();
            self.cluster.stabilize();
        }
        let node = self.cluster.node(leader);
        if node.state_machine().lessor.contains(LeaseId(lease)) {
            return Err(format!("lease {lease:x} never expired"));
        }
        println!(
            "  no keep-alive sent: {:.1} s after the grant the leader revoked the lease \
             (revision {}), deleting its key",
            (self.cluster.now_ms - granted_at) as f64 / 1000.0,
            node.revision()
        );
        self.acknowledged.insert(b"session/alice".to_vec(), None);
        let resp = self.range(leader, "session/alice", 0)?;
        print_range("get session/alice", &resp);
        if resp.count != 0 {
            return Err("session/alice outlived its lease".into());
        }
        Ok(())
    }

    fn watch_history(&mut self, on: NodeId, leader: NodeId) -> Checked<()> {
        heading("watch from an old revision (on a follower: watches are served locally)");
        let stream = StreamId(1);
        let request = pb::WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            start_revision: 2,
            prev_kv: true,
            ..pb::WatchCreateRequest::default()
        };
        self.cluster.watch(on, stream, request);
        self.cluster.stabilize();
        println!("  watch --from-key '' --rev=2 --prev-kv on n{on}: the history replays");
        self.print_watch(on, stream)?;
        self.put(leader, "greeting", "live", 0)?;
        println!("  ...and new writes arrive as they are applied:");
        self.print_watch(on, stream)?;
        self.cluster
            .step(on, strata_engine::node::Input::WatchStreamClosed { stream });
        Ok(())
    }

    fn compaction(&mut self, leader: NodeId) -> Checked<()> {
        heading("compaction");
        let at = self.cluster.node(leader).revision().get() - 1;
        let compact = pb::CompactionRequest {
            revision: at,
            physical: true,
        };
        let Response::Compact(resp) = self.call(leader, Request::Compact(compact))? else {
            return Err("compaction: wrong response".into());
        };
        println!(
            "  compaction {at} -> history before revision {at} dropped (revision {})",
            revision(&resp.header)
        );
        let old = pb::RangeRequest {
            key: b"greeting".to_vec(),
            revision: 2,
            ..pb::RangeRequest::default()
        };
        match self.cluster.call(leader, Request::Range(old)) {
            Err(e @ EtcdError::Compacted) => {
                println!("  get greeting --rev=2 -> error: {e} ({:?})", e.code())
            }
            other => return Err(format!("read below compaction: {other:?}")),
        }
        let stream = StreamId(2);
        let request = pb::WatchCreateRequest {
            key: b"greeting".to_vec(),
            start_revision: 2,
            ..pb::WatchCreateRequest::default()
        };
        self.cluster.watch(leader, stream, request);
        self.cluster.stabilize();
        println!("  watch greeting --rev=2:");
        self.print_watch(leader, stream)?;
        let resp = self.range(leader, "greeting", 0)?;
        print_range("get greeting (the latest value survives)", &resp);
        Ok(())
    }

    fn member_list(&mut self, on: NodeId) -> Checked<()> {
        heading("member list");
        let list = pb::MemberListRequest { linearizable: true };
        let Response::MemberList(resp) = self.call(on, Request::MemberList(list))? else {
            return Err("member list: wrong response".into());
        };
        let leader = self.cluster.node(on).leader();
        println!("  ID  NAME  PEER ADDRS              CLIENT ADDRS            IS LEARNER");
        for m in &resp.members {
            let mark = if leader == Some(NodeId(m.id)) {
                " (leader)"
            } else {
                ""
            };
            println!(
                "  {:<3} {:<5} {:<23} {:<23} {}{mark}",
                format!("{:x}", m.id),
                m.name,
                m.peer_ur_ls.join(","),
                m.client_ur_ls.join(","),
                m.is_learner
            );
        }
        if resp.members.len() as u64 != VOTERS {
            return Err(format!("{} members listed", resp.members.len()));
        }
        Ok(())
    }

    fn transfer_leader(&mut self, leader: NodeId) -> Checked<NodeId> {
        let target = self.other_than(leader);
        heading("leader transfer (etcdctl move-leader)");
        let transfer = pb::MoveLeaderRequest {
            target_id: target.get(),
        };
        self.call(leader, Request::MoveLeader(transfer))?;
        let now = self.cluster.leader();
        if now != Some(target) {
            return Err(format!("leader after transfer: {now:?}, wanted n{target}"));
        }
        println!(
            "  move-leader {} on n{leader} -> n{target} leads, term {}",
            target.hex(),
            self.cluster.node(target).term()
        );
        self.put(target, "config/replicas", "5", 0)?;
        Ok(target)
    }

    fn crash_and_restart(&mut self, leader: NodeId) -> Checked<()> {
        heading("crash the leader, write without it, restart it");
        self.cluster.crash(leader);
        println!(
            "  crash n{leader}: its volatile state is gone; its acknowledged raft log and its \
             backend stay"
        );
        let survivor = self
            .cluster
            .elect(TICKS_MAX)
            .ok_or("no leader after the crash")?;
        println!(
            "  n{survivor} won the election for term {} at {}",
            self.cluster.node(survivor).term(),
            self.clock()
        );
        self.put(survivor, "written/while-down", "yes", 0)?;
        self.cluster.restart(leader);
        for _ in 0..TICKS_MAX {
            let caught_up = self.cluster.node(leader).applied_index()
                >= self.cluster.node(survivor).applied_index();
            if caught_up {
                break;
            }
            self.cluster.tick();
            self.cluster.stabilize();
        }
        println!("  restart n{leader} from its durable log and backend; it catches up:");
        self.status();
        self.check_acknowledged(leader)
    }

    /// Reads every key ever acknowledged from `on` and compares it with what was acknowledged.
    fn check_acknowledged(&mut self, on: NodeId) -> Checked<()> {
        let expected = self.acknowledged.clone();
        for (key, want) in &expected {
            let name = show(key);
            let resp = self.range(on, &name, 0)?;
            let got = resp.kvs.first();
            let same = match (got, want) {
                (None, None) => true,
                (Some(g), Some(w)) => {
                    g.value == w.value
                        && g.mod_revision == w.mod_revision
                        && g.create_revision == w.create_revision
                }
                _ => false,
            };
            if !same {
                return Err(format!(
                    "n{on} after restart: {name} is {}, acknowledged {}",
                    got.map_or("absent".into(), fmt_kv),
                    want.as_ref().map_or("absent".into(), fmt_kv)
                ));
            }
            let shown = got.map_or(format!("{name} absent (deleted by the lease)"), fmt_kv);
            println!("    ok  {shown}");
        }
        println!(
            "  all {} acknowledged keys read back from n{on} as acknowledged",
            expected.len()
        );
        Ok(())
    }

    // ---- helpers --------------------------------------------------------------------------

    fn call(&mut self, node: NodeId, request: Request) -> Checked<Response> {
        let what = format!("{request:?}");
        self.cluster
            .call(node, request)
            .map_err(|e| format!("n{node}: {what}: {e}"))
    }

    fn put(&mut self, node: NodeId, key: &str, value: &str, lease: i64) -> Checked<()> {
        let request = pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            lease,
            prev_kv: true,
            ..pb::PutRequest::default()
        };
        let Response::Put(resp) = self.call(node, Request::Put(request))? else {
            return Err(format!("put {key}: wrong response"));
        };
        let mut line = format!("  put {key} {value:?}");
        if lease != 0 {
            write!(line, " --lease={lease:x}").expect("write to string");
        }
        write!(line, " -> OK, revision {}", revision(&resp.header)).expect("write to string");
        if let Some(prev) = &resp.prev_kv {
            write!(line, " (was {:?})", show(&prev.value)).expect("write to string");
        }
        println!("{line}");
        self.refresh(node, key)
    }

    /// Records the acknowledged state of `key` (read back linearizably after its write).
    fn refresh(&mut self, node: NodeId, key: &str) -> Checked<()> {
        let resp = self.range(node, key, 0)?;
        self.acknowledged
            .insert(key.as_bytes().to_vec(), resp.kvs.first().cloned());
        Ok(())
    }

    fn range(&mut self, node: NodeId, key: &str, rev: i64) -> Checked<pb::RangeResponse> {
        let request = pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            revision: rev,
            ..pb::RangeRequest::default()
        };
        match self.call(node, Request::Range(request))? {
            Response::Range(r) => Ok(r),
            other => Err(format!("get {key}: {other:?}")),
        }
    }

    fn print_watch(&mut self, node: NodeId, stream: StreamId) -> Checked<()> {
        let outputs = std::mem::take(&mut self.cluster.watch_outputs);
        let mut seen = 0;
        for (from, out) in outputs {
            if from != node || out.stream != stream {
                continue;
            }
            seen += 1;
            let r = &out.response;
            let header_rev = revision(&r.header);
            if r.created {
                println!("    watch {} created (revision {header_rev})", r.watch_id);
            }
            if r.canceled && r.compact_revision != 0 {
                // etcd sends no reason here; clients turn compact_revision into ErrCompacted.
                println!(
                    "    watch {} canceled: its start revision is compacted (compact_revision \
                     {})",
                    r.watch_id, r.compact_revision
                );
            } else if r.canceled {
                println!("    watch {} canceled: {}", r.watch_id, r.cancel_reason);
            }
            for ev in &r.events {
                let kv = ev.kv.as_ref().ok_or("watch event without kv")?;
                let mut line = match EventType::try_from(ev.r#type) {
                    Ok(EventType::Put) => format!("    PUT    {}", fmt_kv(kv)),
                    Ok(EventType::Delete) => {
                        format!("    DELETE {}  [mod {}]", show(&kv.key), kv.mod_revision)
                    }
                    Err(_) => return Err(format!("event of unknown type {}", ev.r#type)),
                };
                if let Some(prev) = &ev.prev_kv {
                    write!(line, "  prev {:?}", show(&prev.value)).expect("write to string");
                }
                println!("{line}");
            }
        }
        if seen == 0 {
            return Err(format!("no watch response on n{node} stream {stream}"));
        }
        Ok(())
    }

    fn other_than(&self, node: NodeId) -> NodeId {
        let ids = self.cluster.ids();
        let at = ids.iter().position(|id| *id == node).expect("a member");
        ids[(at + 1) % ids.len()]
    }

    fn clock(&self) -> String {
        format!("{:.1} s", self.cluster.now_ms as f64 / 1000.0)
    }

    fn status(&self) {
        for line in self.cluster.status_lines().lines() {
            println!("    {line}");
        }
    }
}

fn heading(title: &str) {
    println!();
    println!("== {title}");
}

fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..pb::PutRequest::default()
        })),
    }
}

fn op_get(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..pb::RangeRequest::default()
        })),
    }
}

fn print_range(what: &str, resp: &pb::RangeResponse) {
    let rev = revision(&resp.header);
    if resp.kvs.is_empty() {
        println!("  {what} -> no key (at revision {rev})");
    }
    for kv in &resp.kvs {
        println!("  {what} -> {} (at revision {rev})", fmt_kv(kv));
    }
}

fn fmt_kv(kv: &KeyValue) -> String {
    let mut s = format!(
        "{} = {:?}  [create {}, mod {}, version {}",
        show(&kv.key),
        show(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version
    );
    if kv.lease != 0 {
        write!(s, ", lease {:x}", kv.lease).expect("write to string");
    }
    s.push(']');
    s
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn revision(header: &Option<pb::ResponseHeader>) -> i64 {
    header.as_ref().map_or(0, |h| h.revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo test` runs the walkthrough, so the README's run command cannot rot unnoticed.
    #[test]
    fn walkthrough_behaves_as_etcd() {
        let mut demo = Demo::new();
        if let Err(e) = demo.run() {
            panic!("{e}\n{}", demo.cluster.status_lines());
        }
    }
}
