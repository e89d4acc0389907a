//! Real `etcdctl` (Debian's etcd-client) against a real 3-member cluster: every service a
//! user reaches from the command line, with etcd's answers and error texts.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{metric, Cluster};

#[test]
fn kv_txn_watch_compaction() {
    let c = Cluster::start(3);
    assert_eq!(c.ok(&["put", "foo", "bar"]).trim(), "OK");
    // The leader times its heartbeats' round trips to each follower.
    let leader = &c.members[c.leader()];
    let text = String::from_utf8(
        Command::new("curl")
            .args(["-fs", &format!("{}/metrics", leader.client_url())])
            .output()
            .expect("curl")
            .stdout,
    )
    .expect("utf-8");
    let timed = text
        .lines()
        .filter(|l| l.starts_with("etcd_network_peer_round_trip_time_seconds_count{To="))
        .count();
    assert_eq!(timed, 2, "{text}");
    assert_eq!(c.ok(&["get", "foo"]), "foo\nbar\n");
    c.ok(&["put", "foo", "baz"]);
    c.ok(&["put", "fop", "1"]);
    // Prefix and from-key ranges, keys-only, count.
    assert_eq!(
        c.ok(&["get", "fo", "--prefix", "--keys-only"]),
        "foo\n\nfop\n\n"
    );
    assert_eq!(c.ok(&["get", "--from-key", "fop"]), "fop\n1\n");
    assert!(c
        .ok(&["get", "fo", "--prefix", "--keys-only", "-w", "json"])
        .contains("\"count\":2"));
    // A historical read sees the old value.
    let json = c.ok(&["get", "foo", "-w", "json"]);
    assert!(json.contains("\"version\":2"), "{json}");
    let rev = json
        .split("\"mod_revision\":")
        .nth(1)
        .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|d| d.parse::<i64>().ok())
        .expect("mod_revision");
    assert_eq!(
        c.ok(&["get", "foo", &format!("--rev={}", rev - 1)]),
        "foo\nbar\n"
    );

    // Txn from stdin: compare value, then/else.
    let mut txn = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", c.endpoints()))
        .args(["txn"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("etcdctl txn");
    use std::io::Write as _;
    txn.stdin
        .take()
        .expect("stdin")
        .write_all(b"value(\"foo\") = \"baz\"\n\nput txnkey yes\n\nput txnkey no\n\n")
        .expect("write txn");
    let out = txn.wait_with_output().expect("txn output");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SUCCESS\n\nOK\n");
    assert_eq!(c.ok(&["get", "txnkey", "--print-value-only"]), "yes\n");

    // Watch from an old revision replays history, from another member.
    let mut watch = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", c.members[2].endpoint()))
        .args(["watch", "foo", "--rev=1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("etcdctl watch");
    let stdout = watch.stdout.take().expect("piped stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // Wait for the watcher to exist on the member, then for the replay and the new delete.
    let watcher_url = c.members[2].client_url();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&watcher_url, "etcd_debugging_mvcc_watcher_total") != 1 {
        assert!(Instant::now() < deadline, "the watcher never registered");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.ok(&["del", "foo"]);
    let want = [
        "PUT", "foo", "bar", "PUT", "foo", "baz", "DELETE", "foo", "",
    ];
    let got: Vec<String> = (0..want.len())
        .map_while(|_| lines.recv_timeout(Duration::from_secs(10)).ok())
        .collect();
    let _ = Command::new("kill").arg(watch.id().to_string()).status();
    let _ = watch.wait();
    assert_eq!(got, want);
    // The client went away: its watcher is dropped on the member.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&watcher_url, "etcd_debugging_mvcc_watcher_total") != 0 {
        assert!(Instant::now() < deadline, "watcher outlived its client");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Compaction, then reads and watches below it are refused with etcd's text.
    assert!(c
        .ok(&["compaction", &rev.to_string()])
        .contains("compacted revision"));
    let err = c.fails(&["get", "fop", "--rev=1"]);
    assert!(
        err.contains("etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
    // Deletes count what they removed.
    assert_eq!(c.ok(&["del", "fo", "--prefix"]).trim(), "1");
    // Bad input: an empty key.
    let err = c.fails(&["put", "", "x"]);
    assert!(
        err.contains("key is not provided") || err.contains("put command needs"),
        "{err}"
    );
}

#[test]
fn leases_expire_and_keepalive_works_on_followers() {
    let c = Cluster::start(3);
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    let f = c.members[follower].endpoint();
    let out = c.etcdctl_at(&f, &["lease", "grant", "3"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let id = text
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    let out = c.etcdctl_at(&f, &["put", "leased", "v", "--lease", &id]);
    assert!(out.status.success());
    // Keep-alive and time-to-live through a follower are forwarded to the leader.
    let out = c.etcdctl_at(&f, &["lease", "keep-alive", "--once", &id]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("keepalived with TTL(3)"),
        "{text} via {f}, leader {leader}: {}",
        c.ok(&["member", "list", "-w", "json"])
    );
    let out = c.etcdctl_at(&f, &["lease", "timetolive", &id, "--keys"]);
    let ttl = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        ttl.contains("granted with TTL(3s)") && ttl.contains("attached keys([leased])"),
        "{ttl}"
    );
    assert!(c.ok(&["lease", "list"]).contains(&id));
    // Expiry deletes the attached key.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !c.ok(&["get", "leased"]).is_empty() {
        assert!(Instant::now() < deadline, "lease never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = c.etcdctl_at(&f, &["lease", "timetolive", &id]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("already expired"));
    let err = c.fails(&["lease", "revoke", &id]);
    assert!(
        err.contains("etcdserver: requested lease not found"),
        "{err}"
    );
}

#[test]
fn maintenance_snapshot_restore_and_defrag() {
    let mut c = Cluster::start(3);
    for i in 0..50 {
        c.ok(&["put", &format!("k{i:02}"), &format!("v{i}")]);
    }
    let status = c.ok(&["endpoint", "status", "-w", "table"]);
    assert_eq!(status.matches("3.6.0").count(), 3, "{status}");
    let out = c.etcdctl(&["endpoint", "health"]);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("is healthy").count(), 3, "{text}");
    let hashes = c.ok(&["endpoint", "hashkv", "-w", "json"]);
    let values: Vec<&str> = hashes
        .split("\"hash\":")
        .skip(1)
        .map(|s| s.split(',').next().unwrap_or(""))
        .collect();
    assert_eq!(values.len(), 3, "{hashes}");
    assert!(
        values.windows(2).all(|w| w[0] == w[1]),
        "members disagree: {hashes}"
    );
    assert_eq!(c.ok(&["alarm", "list"]), "");
    assert!(c.ok(&["defrag"]).matches("Finished defragmenting").count() == 3);

    let snap = c.dir.path().join("snap.db");
    let out = c.etcdctl_at(
        &c.members[0].endpoint(),
        &["snapshot", "save", snap.to_str().expect("path")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Restore into a new single-member cluster and read the data back.
    let port = common::free_port();
    let peer = common::free_port();
    let dir = c.dir.path().join("restored");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let out = Command::new(common::strata_bin())
        .args([
            "snapshot",
            "restore",
            snap.to_str().expect("path"),
            "--name",
            "r1",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--initial-cluster", &format!("r1={peer_url}")])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .output()
        .expect("restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(common::strata_bin())
        .args(["--name", "r1"])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{port}")])
        .args([
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{port}"),
        ])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("r1={peer_url}")])
        .stderr(Stdio::null())
        .spawn()
        .expect("start restored member");
    let ep = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        let out = c.etcdctl_at(&ep, &["get", "k", "--prefix", "--keys-only", "-w", "json"]);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).to_string();
        }
        assert!(Instant::now() < deadline, "restored member never served");
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(got.contains("\"count\":50"), "{got}");

    // A tampered snapshot is refused.
    let mut bytes = std::fs::read(&snap).expect("read snapshot");
    bytes[20] ^= 0xff;
    let bad = c.dir.path().join("bad.db");
    std::fs::write(&bad, bytes).expect("write");
    let out = Command::new(common::strata_bin())
        .args([
            "snapshot",
            "restore",
            bad.to_str().expect("path"),
            "--name",
            "r2",
        ])
        .arg("--data-dir")
        .arg(c.dir.path().join("r2"))
        .args(["--initial-cluster", "r2=http://127.0.0.1:1"])
        .args(["--initial-advertise-peer-urls", "http://127.0.0.1:1"])
        .output()
        .expect("restore");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected sha256"));

    // Graceful shutdown on SIGTERM exits 0.
    assert!(c.terminate(2).success());
}

#[test]
fn members_add_promote_remove_with_a_learner_catching_up() {
    let mut c = Cluster::start(3);
    for i in 0..20 {
        c.ok(&["put", &format!("m{i}"), "x"]);
    }
    let name = "m4";
    let i = c.new_member(name);
    let peer_url = c.members[i].peer_url();
    let out = c.ok(&[
        "member",
        "add",
        name,
        "--learner",
        &format!("--peer-urls={peer_url}"),
    ]);
    assert!(out.contains("added to cluster"), "{out}");
    c.start_member(i, "existing");
    let ep = c.members[i].endpoint();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = c.etcdctl_at(
            &ep,
            &[
                "get",
                "m",
                "--prefix",
                "--keys-only",
                "-w",
                "json",
                "--consistency=s",
            ],
        );
        if String::from_utf8_lossy(&out.stdout).contains("\"count\":20") {
            break;
        }
        assert!(Instant::now() < deadline, "learner never caught up");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A learner refuses linearizable reads, as in etcd.
    let out = c.etcdctl_at(&ep, &["get", "m1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rpc not supported for learner"), "{err}");
    // So does a range, which is read in chunks (the serializable one above is served).
    let out = c.etcdctl_at(&ep, &["get", "m", "--prefix"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rpc not supported for learner"), "{err}");
    // Membership calls go to the voters: a learner refuses them, as etcd's learners do.
    let voters = c.members[..3]
        .iter()
        .map(|m| m.endpoint())
        .collect::<Vec<_>>()
        .join(",");
    let voters_ok = |args: &[&str]| {
        let out = c.etcdctl_at(&voters, args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let list = voters_ok(&["member", "list"]);
    let id = list
        .lines()
        .find(|l| l.contains(name))
        .and_then(|l| l.split(',').next())
        .expect("new member listed")
        .to_string();
    assert!(voters_ok(&["member", "promote", &id]).contains("promoted"));
    assert!(c
        .ok(&["member", "list"])
        .lines()
        .all(|l| l.ends_with("false")));
    let err = c.fails(&["member", "promote", &id]);
    assert!(err.contains("can only promote a learner member"), "{err}");
    // Sent to the member being removed itself: it answers before it stops.
    let out = c.etcdctl_at(&c.members[3].endpoint(), &["member", "remove", &id]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.ok(&["member", "list"]).lines().count(), 3);
    let err = c.fails(&["member", "remove", &id]);
    assert!(err.contains("member not found"), "{err}");
}

#[test]
fn auth_users_roles_and_permissions() {
    let c = Cluster::start(3);
    c.ok(&["user", "add", "root:rootpw"]);
    c.ok(&["role", "add", "root"]);
    c.ok(&["user", "grant-role", "root", "root"]);
    c.ok(&["user", "add", "alice:alicepw"]);
    c.ok(&["role", "add", "app"]);
    c.ok(&[
        "role",
        "grant-permission",
        "app",
        "readwrite",
        "/app/",
        "--prefix",
    ]);
    c.ok(&["user", "grant-role", "alice", "app"]);
    assert!(c.ok(&["auth", "enable"]).contains("Authentication Enabled"));

    let err = c.fails(&["put", "x", "1"]);
    assert!(err.contains("etcdserver: user name is empty"), "{err}");
    assert_eq!(
        c.ok(&["--user", "alice:alicepw", "put", "/app/a", "1"])
            .trim(),
        "OK"
    );
    assert_eq!(
        c.ok(&[
            "--user",
            "alice:alicepw",
            "get",
            "/app/a",
            "--print-value-only"
        ]),
        "1\n"
    );
    let err = c.fails(&["--user", "alice:alicepw", "put", "/other", "1"]);
    assert!(err.contains("etcdserver: permission denied"), "{err}");
    let err = c.fails(&["--user", "alice:wrong", "get", "/app/a"]);
    assert!(
        err.contains("authentication failed, invalid user ID or password"),
        "{err}"
    );
    let err = c.fails(&["--user", "alice:alicepw", "user", "list"]);
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(
        c.ok(&["--user", "root:rootpw", "user", "list"]),
        "alice\nroot\n"
    );
    let role = c.ok(&["--user", "root:rootpw", "role", "get", "app"]);
    assert!(role.contains("[/app/, /app0) (prefix /app/)"), "{role}");
    let err = c.fails(&["--user", "root:rootpw", "user", "delete", "root"]);
    assert!(err.contains("invalid auth management"), "{err}");
    assert!(c
        .ok(&["--user", "root:rootpw", "auth", "disable"])
        .contains("Authentication Disabled"));
    assert_eq!(c.ok(&["put", "x", "1"]).trim(), "OK");
}

/// etcd's gRPC server families (go-grpc-prometheus), which etcd's Grafana dashboard and
/// alerting rules query: calls started and handled per method and code, messages each way.
#[test]
fn grpc_metrics_count_calls_by_method_and_code() {
    let c = Cluster::start(1);
    let url = c.members[0].client_url();
    let kv = |family: &str, method: &str, code: Option<&str>| {
        let code = code
            .map(|c| format!("grpc_code=\"{c}\","))
            .unwrap_or_default();
        metric(
            &url,
            &format!(
                "{family}{{{code}grpc_method=\"{method}\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}}"
            ),
        )
    };
    let before = kv("grpc_server_handled_total", "Put", Some("OK"));
    for i in 0..3 {
        c.ok(&["put", &format!("k{i}"), "v"]);
    }
    let err = c.fails(&["compact", "1000000"]);
    assert!(err.contains("future revision"), "{err}");
    assert_eq!(
        kv("grpc_server_handled_total", "Put", Some("OK")),
        before + 3
    );
    assert_eq!(kv("grpc_server_started_total", "Put", None), before + 3);
    assert_eq!(
        kv("grpc_server_msg_received_total", "Put", None),
        before + 3
    );
    assert_eq!(kv("grpc_server_msg_sent_total", "Put", None), before + 3);
    assert_eq!(
        kv("grpc_server_handled_total", "Compact", Some("OutOfRange")),
        1
    );
    assert_eq!(kv("grpc_server_handled_total", "Compact", Some("OK")), 0);
    // The byte counters and the quota and process families etcd's dashboard reads.
    assert!(metric(&url, "etcd_network_client_grpc_received_bytes_total") > 0);
    assert!(metric(&url, "etcd_network_client_grpc_sent_bytes_total") > 0);
    assert_eq!(metric(&url, "etcd_server_quota_backend_bytes"), 2 << 30);
    assert!(metric(&url, "process_resident_memory_bytes") > 1 << 20);
    assert!(metric(&url, "process_open_fds") > 0);
}
