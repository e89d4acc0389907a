//! etcd's recovery and consistency flags on real processes: `--force-new-cluster` brings back
//! a cluster of one from a surviving member's data, `--experimental-initial-corrupt-check`
//! refuses to serve a member whose data differs from its peers' (and lets a healthy one
//! serve), and `endpoint status --cluster` lists every member the moment the cluster first
//! reports healthy (members publish their client URLs before they serve).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{etcdctl_ok as etcdctl, free_port, healthy as health, lone_member, Cluster, Plan};

#[test]
fn force_new_cluster_recovers_a_cluster_of_one_with_its_data() {
    let mut cluster = Cluster::start(3);
    for i in 0..20 {
        cluster.ok(&["put", &format!("k{i}"), &format!("v{i}")]);
    }
    let before = cluster.ok(&["get", "k", "--prefix", "-w", "json"]);
    let revision = serde_json::from_str::<serde_json::Value>(&before).expect("json")["header"]
        ["revision"]
        .clone();
    for i in 0..3 {
        cluster.kill9(i);
    }
    // The last member standing restarts with its own flags plus --force-new-cluster.
    cluster.extra_args.push("--force-new-cluster".into());
    cluster.start_member(0, "new");
    let m = &cluster.members[0];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !health(&m.client_url()) {
        assert!(
            Instant::now() < deadline,
            "never healthy:\n{}",
            std::fs::read_to_string(&m.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let endpoint = m.endpoint();
    let members = etcdctl(&endpoint, &["member", "list"]);
    assert_eq!(members.lines().count(), 1, "{members}");
    let after = etcdctl(&endpoint, &["get", "k", "--prefix", "-w", "json"]);
    let after: serde_json::Value = serde_json::from_str(&after).expect("json");
    assert_eq!(after["kvs"].as_array().map(Vec::len), Some(20));
    let put = etcdctl(&endpoint, &["put", "after", "x", "-w", "json"]);
    let put: serde_json::Value = serde_json::from_str(&put).expect("json");
    assert_eq!(
        put["header"]["revision"].as_i64(),
        revision.as_i64().map(|r| r + 1)
    );
}

/// A one-member store at revision 2 holding `k = value`, saved as an etcd snapshot file.
fn snapshot_with(dir: &Path, name: &str, value: &str) -> std::path::PathBuf {
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut child = lone_member(name, &dir.join(name), &client, &client, &peer)
        .args(["--initial-cluster", &format!("{name}={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !health(&client) {
        assert!(Instant::now() < deadline, "source member never healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    let endpoint = client.trim_start_matches("http://");
    etcdctl(endpoint, &["put", "k", value]);
    let file = dir.join(format!("{name}.db"));
    etcdctl(
        endpoint,
        &["snapshot", "save", file.to_str().expect("utf-8")],
    );
    let _ = child.kill();
    let _ = child.wait();
    file
}

/// Three members on loopback, each restored from a snapshot file of the caller's choice, so
/// a test can give one member other data than its peers at the same revision.
struct Restored {
    dir: tempfile::TempDir,
    plan: Plan,
}

impl Restored {
    fn new() -> Restored {
        Restored {
            dir: tempfile::tempdir().expect("tempdir"),
            plan: Plan::new(&["a", "b", "c"]),
        }
    }

    fn data_dir(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(&self.plan.names[i])
    }

    fn start(&self, i: usize, file: &Path, flags: &[&str]) -> std::process::Child {
        let _ = std::fs::remove_dir_all(self.data_dir(i));
        self.plan.restore(i, file, &self.data_dir(i));
        self.launch(i, flags)
    }

    /// Starts member `i` on the data dir it has.
    fn launch(&self, i: usize, flags: &[&str]) -> std::process::Child {
        self.plan
            .member(i, &self.data_dir(i), &self.log_path(i))
            .args(flags)
            .spawn()
            .expect("spawn")
    }

    fn log_path(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("{}.log", self.plan.names[i]))
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !health(&self.plan.clients[i]) {
            assert!(
                Instant::now() < deadline,
                "{} never healthy:\n{}",
                self.plan.names[i],
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn the_initial_corrupt_check_refuses_a_member_whose_data_differs() {
    let cluster = Restored::new();
    let good = snapshot_with(cluster.dir.path(), "good", "same");
    let bad = snapshot_with(cluster.dir.path(), "bad", "different");
    let check = ["--experimental-initial-corrupt-check=true"];
    // a and b hold the same data; c was restored from another store at the same revision.
    let mut children = Children(vec![
        cluster.start(0, &good, &check),
        cluster.start(1, &good, &check),
    ]);
    // The check asks the peers' client ports, which answer once those peers serve: c starts
    // (as a member restarting into a running cluster would) after a and b serve.
    cluster.wait_healthy(0);
    cluster.wait_healthy(1);
    let mut c = cluster.start(2, &bad, &check);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = c.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "c kept running with different data:\n{}",
            cluster.log(2)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    assert!(cluster
        .log(2)
        .contains("found data inconsistency with peers"));
    assert!(!health(&cluster.plan.clients[2]));
    // A member whose data matches its peers' passes the check and serves: b, restarted while
    // a serves (a restart compares against a peer that is up for sure).
    cluster.wait_healthy(0);
    cluster.wait_healthy(1);
    let b = &mut children.0[1];
    let _ = b.kill();
    let _ = b.wait();
    children.0[1] = cluster.launch(1, &check);
    cluster.wait_healthy(1);
    let log = cluster.log(1);
    assert!(log.contains("initial corruption checking passed"), "{log}");
    // c is down; a answered and agreed.
    assert_eq!(log.matches("cannot fetch hash").count(), 1, "{log}");
}

#[test]
fn the_periodic_check_raises_the_corrupt_alarm_for_a_member_whose_data_differs() {
    let cluster = Restored::new();
    let good = snapshot_with(cluster.dir.path(), "good", "same");
    let bad = snapshot_with(cluster.dir.path(), "bad", "different");
    let check = [
        "--experimental-corrupt-check-time=1s",
        "--experimental-compact-hash-check-enabled=true",
        "--experimental-compact-hash-check-time=1s",
    ];
    // a or b leads (c joins once they serve): the leader compares the followers with itself.
    let mut children = Children(vec![
        cluster.start(0, &good, &check),
        cluster.start(1, &good, &check),
    ]);
    cluster.wait_healthy(0);
    cluster.wait_healthy(1);
    children.0.push(cluster.start(2, &bad, &check));
    cluster.wait_healthy(2);
    let endpoint = cluster.plan.clients[0].as_str();
    let c_id = etcdctl(endpoint, &["member", "list"])
        .lines()
        .find(|l| l.contains(", c, "))
        .and_then(|l| l.split(',').next())
        .expect("c listed")
        .to_string();
    let want = format!(
        "memberID:{} alarm:CORRUPT",
        u64::from_str_radix(&c_id, 16).expect("hex")
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alarms = etcdctl(endpoint, &["alarm", "list"]);
        if alarms.contains(&want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no CORRUPT alarm for c: {alarms:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn endpoint_status_lists_every_member_once_the_cluster_is_healthy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = Plan::new(&["a", "b", "c"]);
    let _children = Children(
        (0..3)
            .map(|i| {
                let data = dir.path().join(&plan.names[i]);
                let log = dir.path().join(format!("{}.log", plan.names[i]));
                plan.member(i, &data, &log).spawn().expect("spawn")
            })
            .collect(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !plan.clients.iter().all(|c| health(c)) {
        assert!(Instant::now() < deadline, "never healthy");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = etcdctl(
        &plan.clients[0],
        &["endpoint", "status", "--cluster", "-w", "json"],
    );
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status.as_array().map(Vec::len), Some(3), "{status}");
}
