//! Members that come back from their data dir after the membership changed without them:
//! real processes on loopback, driven with Debian's `etcdctl`. Both stories were found by the
//! simulator (`scenarios/restart-behind-new-leader.toml`, and a removed member restarted as a
//! zombie).

mod common;

use std::time::{Duration, Instant};

use common::Cluster;

/// A member that was down while a new member joined and took over leadership has no address
/// for the new leader in its own member list; it must still answer it and catch up.
#[test]
fn a_restarted_member_catches_up_with_a_leader_added_while_it_was_down() {
    let mut c = Cluster::start(3);
    c.ok(&["put", "before", "1"]);
    c.kill9(2);
    // The killed member may have led: wait for the other two to elect and serve.
    c.leader();
    c.ok(&["put", "during", "1"]);

    let i = c.new_member("m4");
    let peer_url = c.members[i].peer_url();
    let out = c.ok(&[
        "member",
        "add",
        "m4",
        "--learner",
        &format!("--peer-urls={peer_url}"),
    ]);
    assert!(out.contains("added to cluster"), "{out}");
    c.start_member(i, "existing");
    let id = c.member_id(i);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = c.etcdctl(&["member", "promote", &id]);
        if out.status.success() {
            break;
        }
        // "can only promote a learner member which is in sync with leader" until it caught up.
        assert!(
            Instant::now() < deadline,
            "promote: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // move-leader goes to the current leader.
    let leader = c.leader();
    let out = c.etcdctl_at(&c.members[leader].endpoint(), &["move-leader", &id]);
    assert!(
        out.status.success(),
        "move-leader: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.leader(), i, "m4 leads");
    for k in 0..10 {
        c.ok(&["put", &format!("after{k}"), "2"]);
    }

    c.restart(2);
    let ep = c.members[2].endpoint();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = c.etcdctl_at(
            &ep,
            &["get", "after9", "--print-value-only", "--consistency=s"],
        );
        if String::from_utf8_lossy(&out.stdout).trim() == "2" {
            break;
        }
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(&c.members[2].log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "the restarted member never caught up with the new leader; its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A member removed while it was down must not come back as a zombie serving stale reads:
/// its peers refuse it as removed and it exits, as etcd's does.
#[test]
fn a_removed_member_restarted_from_its_data_dir_exits() {
    let mut c = Cluster::start(3);
    c.ok(&["put", "k", "1"]);
    let id = c.member_id(2);
    c.kill9(2);
    c.leader();
    c.ok(&["put", "during", "1"]);
    let out = c.ok(&["member", "remove", &id]);
    assert!(out.contains("removed"), "{out}");

    c.restart(2);
    let status = c
        .wait_exit(2, Duration::from_secs(20))
        .expect("the removed member exits once a peer refuses it");
    assert!(status.success(), "exit status {status}");
    let log = std::fs::read_to_string(&c.members[2].log).expect("log");
    assert!(
        log.contains("the member has been permanently removed from the cluster"),
        "{log}"
    );
    assert_eq!(c.ok(&["member", "list"]).lines().count(), 2);
}

/// Restarting with a changed `--initial-cluster` (the list after a `member add`) is fine, as in
/// etcd; a data dir of another cluster (another token) is still refused, naming the path.
#[test]
fn a_data_dir_of_another_cluster_is_refused_at_start() {
    let mut c = Cluster::start(3);
    c.ok(&["put", "k", "1"]);
    c.kill9(2);
    c.token = format!("{}-other", c.token);
    c.restart(2);
    let status = c
        .wait_exit(2, Duration::from_secs(20))
        .expect("a member given another cluster's data dir exits");
    assert!(!status.success(), "exit status {status}");
    let log = std::fs::read_to_string(&c.members[2].log).expect("log");
    let path = c.members[2].data_dir.display().to_string();
    assert!(
        log.contains("data dir belongs to cluster") && log.contains(&path),
        "{log}"
    );
}
