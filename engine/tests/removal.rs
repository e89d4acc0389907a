//! Removing members, the leader above all: after a leader removes itself the remaining
//! voters elect a leader and commit on their own; a member whose own data says it was removed
//! stops at start. (That the removed leader's last messages — the commit of its removal — still
//! go out before its process exits is the driver's part, guarded by the simulator's
//! `scenarios/leader-removes-itself.toml`.)

use strata_engine::proto::etcdserverpb::{MemberRemoveRequest, PutRequest};
use strata_engine::request::{Request, Response};
use strata_engine::testkit::Cluster;

fn put(key: &str) -> Request {
    Request::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    })
}

#[test]
fn a_leader_removing_itself_leaves_a_cluster_that_elects_and_writes() {
    for seed in 1..=5 {
        let mut c = Cluster::new(2, seed);
        let leader = c.elect(500).expect("a leader");
        let other = c.ids().into_iter().find(|&id| id != leader).expect("two");
        let removed = c.call(
            leader,
            Request::MemberRemove(MemberRemoveRequest { id: leader.0 }),
        );
        assert!(
            matches!(removed, Ok(Response::MemberRemove(_))),
            "{removed:?}"
        );
        for _ in 0..100 {
            c.tick();
            c.stabilize();
        }
        assert!(
            c.node(leader).is_removed(),
            "seed {seed}: the removed leader stopped"
        );
        assert!(
            c.node(other).is_leader(),
            "seed {seed}: the remaining voter leads\n{}",
            c.status_lines()
        );
        assert!(
            matches!(c.call(other, put("after")), Ok(Response::Put(_))),
            "seed {seed}: the remaining voter commits alone"
        );
    }
}

#[test]
fn a_member_restarted_after_its_removal_stops_at_start() {
    let mut c = Cluster::new(3, 11);
    let leader = c.elect(500).expect("a leader");
    let victim = c.ids().into_iter().find(|&id| id != leader).expect("three");
    c.call(
        leader,
        Request::MemberRemove(MemberRemoveRequest { id: victim.0 }),
    )
    .expect("removed");
    for _ in 0..30 {
        c.tick();
        c.stabilize();
    }
    c.crash(victim);
    c.restart(victim);
    assert!(
        c.node(victim).is_removed(),
        "a member restarted from a data dir that records its removal stops"
    );
}
