//! Switching from etcd and back, with real etcd 3.4 (Debian's `etcd-server`) and real
//! `etcdctl`: a snapshot saved from etcd restores into Strata, one saved from Strata restores
//! into etcd, one etcd snapshot seeds a three-member Strata cluster, and a stopped etcd
//! member's data dir converts in place. Each direction compares everything a client can see:
//! every key with its create/mod revision, version and lease, every lease with its keys, users
//! and roles, the current and compacted revisions, and `HashKV` at the same revision.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{etcdctl_ok, free_port, healthy, lone_member, run, runtime, strata_bin, Plan};
use etcd_client::{
    Client, ConnectOptions, GetOptions, LeaseTimeToLiveOptions, Permission, PutOptions,
    WatchOptions,
};

/// A running `etcd` or `strata` single member, killed on drop.
struct Server {
    child: Child,
    client_url: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn etcd(data_dir: &Path, name: &str, peer_url: &str, token: &str) -> Server {
        let client_url = format!("http://127.0.0.1:{}", free_port());
        let log = data_dir.with_extension("log");
        let child = Command::new("etcd")
            .args(["--name", name])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", peer_url])
            .args(["--initial-advertise-peer-urls", peer_url])
            .args(["--initial-cluster", &format!("{name}={peer_url}")])
            .args(["--initial-cluster-token", token])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn etcd (apt: etcd-server)");
        Server::ready(child, client_url, log)
    }

    fn strata(data_dir: &Path, name: &str, peer_url: &str, token: &str) -> Server {
        let client_url = format!("http://127.0.0.1:{}", free_port());
        let log = data_dir.with_extension("log");
        let child = lone_member(name, data_dir, &client_url, &client_url, peer_url)
            .args(["--initial-cluster", &format!("{name}={peer_url}")])
            .args(["--initial-cluster-token", token])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn strata");
        Server::ready(child, client_url, log)
    }

    fn ready(child: Child, client_url: String, log: PathBuf) -> Server {
        let server = Server {
            child,
            client_url,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !healthy(&server.client_url) {
            assert!(
                Instant::now() < deadline,
                "{} never healthy; log:\n{}",
                server.client_url,
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// `etcdctl` as root (auth is on once a store is populated).
fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let mut with_user = vec!["--user", "root:rootpw"];
    with_user.extend_from_slice(args);
    etcdctl_ok(endpoint, &with_user)
}

/// Saves a snapshot of the store at `url` into `file`; etcd's `snapshot status` and Strata's
/// must print the same. Returns it.
fn save_snapshot(url: &str, file: &Path) -> serde_json::Value {
    etcdctl(url, &["snapshot", "save", file.to_str().expect("utf-8")]);
    let theirs = run(Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(file));
    let ours = run(Command::new(strata_bin())
        .args(["snapshot", "status", "-w", "json"])
        .arg(file));
    assert_eq!(ours.trim(), theirs.trim());
    serde_json::from_str(&theirs).expect("json")
}

/// `TOOL snapshot restore FILE` (`etcdctl` or `strata`) for a one-member cluster `name`.
fn restore(tool: &str, file: &Path, name: &str, peer: &str, data: &Path) {
    run(Command::new(tool)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(file)
        .args([
            "--name",
            name,
            "--initial-cluster",
            &format!("{name}={peer}"),
        ])
        .args(["--initial-advertise-peer-urls", peer])
        .arg("--data-dir")
        .arg(data));
}

async fn connect(url: &str, auth: bool) -> Client {
    let options = auth.then(|| ConnectOptions::new().with_user("root", "rootpw"));
    Client::connect([url], options).await.expect("connect")
}

/// What the populated store must hold: the compacted revision and the revision after it.
struct Populated {
    compacted: i64,
}

/// 2,000 keys with overwrites and deletes, a compaction, leased keys, a 100 KiB value,
/// binary bytes, users and roles, auth enabled.
async fn populate(url: &str) -> Populated {
    let mut c = connect(url, false).await;
    for i in 0..1900u32 {
        c.put(format!("key/{i:05}"), format!("value {i}"), None)
            .await
            .expect("put");
    }
    for i in (0..1900u32).step_by(3) {
        c.put(format!("key/{i:05}"), format!("again {i}"), None)
            .await
            .expect("overwrite");
    }
    for i in (0..1900u32).step_by(7) {
        c.delete(format!("key/{i:05}"), None).await.expect("delete");
    }
    let compacted = c
        .put("mark", "m", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    c.compact(compacted, None).await.expect("compact");
    for i in 0..3i64 {
        let lease = c.lease_grant(3600 + i, None).await.expect("grant").id();
        for j in 0..3 {
            c.put(
                format!("leased/{i}/{j}"),
                "x",
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .expect("leased put");
        }
    }
    c.put("big", vec![b'b'; 100 * 1024], None)
        .await
        .expect("big");
    c.put(vec![0u8, 0xff, 0x80, 1], vec![0xfeu8, 0, 0x7f], None)
        .await
        .expect("binary");
    for i in 1900..2000u32 {
        c.put(format!("key/{i:05}"), format!("late {i}"), None)
            .await
            .expect("put");
    }
    c.delete("key/01999", None).await.expect("final delete");
    c.user_add("root", "rootpw", None).await.expect("root");
    c.user_grant_role("root", "root").await.expect("grant root");
    c.role_add("reader").await.expect("role");
    c.role_grant_permission("reader", Permission::read("key/").with_prefix())
        .await
        .expect("perm");
    c.user_add("alice", "alicepw", None).await.expect("user");
    c.user_grant_role("alice", "reader").await.expect("grant");
    c.auth_enable().await.expect("auth enable");
    Populated { compacted }
}

/// key, value, create revision, mod revision, version, lease.
type Kv = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);
/// permission type, key, range end.
type Perm = (i32, Vec<u8>, Vec<u8>);

/// Everything a client sees of a store, in a comparable form.
#[derive(Debug, PartialEq, Eq)]
struct Dump {
    revision: i64,
    kvs: Vec<Kv>,
    /// (id, granted ttl, keys)
    leases: Vec<(i64, i64, Vec<Vec<u8>>)>,
    users: Vec<(String, Vec<String>)>,
    roles: Vec<(String, Vec<Perm>)>,
    hash_kv: (u32, i64),
}

async fn dump(url: &str) -> Dump {
    let mut c = connect(url, true).await;
    let all = c
        .get(vec![0u8], Some(GetOptions::new().with_from_key()))
        .await
        .expect("get all");
    let revision = all.header().expect("header").revision();
    let mut kvs: Vec<_> = all
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    kvs.sort();
    let mut leases = Vec::new();
    for l in c.leases().await.expect("leases").leases() {
        let ttl = c
            .lease_time_to_live(l.id(), Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("ttl");
        let mut keys = ttl.keys().to_vec();
        keys.sort();
        leases.push((l.id(), ttl.granted_ttl(), keys));
    }
    leases.sort();
    let mut users = Vec::new();
    for name in c.user_list().await.expect("users").users().to_vec() {
        let mut roles = c
            .user_get(name.clone())
            .await
            .expect("user")
            .roles()
            .to_vec();
        roles.sort();
        users.push((name, roles));
    }
    let mut roles = Vec::new();
    for name in c.role_list().await.expect("roles").roles().to_vec() {
        let perms = c
            .role_get(name.clone())
            .await
            .expect("role")
            .permissions()
            .iter()
            .map(|p| (p.get_type(), p.key().to_vec(), p.range_end().to_vec()))
            .collect();
        roles.push((name, perms));
    }
    let hash = c.hash_kv(revision).await.expect("hash kv");
    Dump {
        revision,
        kvs,
        leases,
        users,
        roles,
        hash_kv: (hash.hash(), hash.compact_version()),
    }
}

/// What the compaction left: a read below it is refused, a watch from just after it replays
/// the history, and the next write gets the next revision.
async fn check_history(url: &str, populated: &Populated, revision: i64) {
    let mut c = connect(url, true).await;
    let err = c
        .get(
            "key/00001",
            Some(GetOptions::new().with_revision(populated.compacted - 1)),
        )
        .await
        .expect_err("below the compaction");
    assert!(
        err.to_string()
            .contains("required revision has been compacted"),
        "{err}"
    );
    let mut stream = c
        .watch(
            vec![0u8],
            Some(
                WatchOptions::new()
                    .with_from_key()
                    .with_start_revision(populated.compacted + 1),
            ),
        )
        .await
        .expect("watch");
    let mut seen = 0usize;
    let mut last = 0;
    while last < revision {
        let resp = tokio_real::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("replay in time")
            .expect("watch stream")
            .expect("message");
        for e in resp.events() {
            last = e.kv().expect("kv").mod_revision();
            seen += 1;
        }
    }
    assert_eq!(last, revision, "the replay ends at the current revision");
    assert!(
        seen as i64 >= revision - populated.compacted - 1,
        "{seen} events"
    );
    let next = c.put("after", "restore", None).await.expect("put");
    assert_eq!(next.header().expect("header").revision(), revision + 1);
}

/// Same content; the current revision and the HashKV included.
fn assert_same(want: &Dump, got: &Dump) {
    assert_eq!(want.revision, got.revision, "current revision");
    assert_eq!(want.kvs.len(), got.kvs.len(), "number of keys");
    for (w, g) in want.kvs.iter().zip(&got.kvs) {
        assert_eq!(w, g);
    }
    assert_eq!(want.leases, got.leases);
    assert_eq!(want.users, got.users);
    assert_eq!(want.roles, got.roles);
    assert_eq!(
        want.hash_kv, got.hash_kv,
        "HashKV at revision {}",
        want.revision
    );
}

#[test]
fn an_etcd_snapshot_restores_into_strata_with_everything_a_client_sees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let etcd_peer = format!("http://127.0.0.1:{}", free_port());
    let etcd = Server::etcd(&dir.path().join("etcd"), "e", &etcd_peer, "src");
    let populated = rt.block_on(populate(&etcd.client_url));
    let want = rt.block_on(dump(&etcd.client_url));
    let file = dir.path().join("etcd.db");
    save_snapshot(&etcd.client_url, &file);
    etcd.stop();

    let peer = format!("http://127.0.0.1:{}", free_port());
    let data = dir.path().join("strata");
    restore(strata_bin(), &file, "s", &peer, &data);
    let strata = Server::strata(&data, "s", &peer, "etcd-cluster");
    let got = rt.block_on(dump(&strata.client_url));
    assert_same(&want, &got);
    rt.block_on(check_history(&strata.client_url, &populated, want.revision));
}

#[test]
fn a_strata_snapshot_restores_into_real_etcd_with_everything_a_client_sees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let peer = format!("http://127.0.0.1:{}", free_port());
    let strata = Server::strata(&dir.path().join("strata"), "s", &peer, "src");
    let populated = rt.block_on(populate(&strata.client_url));
    let want = rt.block_on(dump(&strata.client_url));
    let file = dir.path().join("strata.db");
    let status = save_snapshot(&strata.client_url, &file);
    assert_eq!(status["revision"], want.revision, "{status}");
    strata.stop();

    let etcd_peer = format!("http://127.0.0.1:{}", free_port());
    let data = dir.path().join("etcd");
    restore("etcdctl", &file, "e", &etcd_peer, &data);
    let etcd = Server::etcd(&data, "e", &etcd_peer, "etcd-cluster");
    let got = rt.block_on(dump(&etcd.client_url));
    assert_same(&want, &got);
    rt.block_on(check_history(&etcd.client_url, &populated, want.revision));
}

#[test]
fn one_etcd_snapshot_seeds_a_three_member_strata_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let etcd_peer = format!("http://127.0.0.1:{}", free_port());
    let etcd = Server::etcd(&dir.path().join("etcd"), "e", &etcd_peer, "src");
    rt.block_on(populate(&etcd.client_url));
    let want = rt.block_on(dump(&etcd.client_url));
    let file = dir.path().join("etcd.db");
    save_snapshot(&etcd.client_url, &file);
    etcd.stop();

    let plan = Plan::new(&["a", "b", "c"]);
    let mut children = Vec::new();
    for i in 0..3 {
        let data = dir.path().join(&plan.names[i]);
        plan.restore(i, &file, &data);
        let log = dir.path().join(format!("{}.log", plan.names[i]));
        let child = plan.member(i, &data, &log).spawn().expect("spawn strata");
        children.push(Server {
            child,
            client_url: plan.clients[i].clone(),
            log,
        });
    }
    for member in &children {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !healthy(&member.client_url) {
            assert!(
                Instant::now() < deadline,
                "{} never healthy",
                member.client_url
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let members = etcdctl(&plan.clients[0], &["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    for member in &children {
        let got = rt.block_on(dump(&member.client_url));
        assert_same(&want, &got);
    }
}

#[test]
fn a_stopped_etcd_member_converts_in_place_and_keeps_its_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let peer = format!("http://127.0.0.1:{}", free_port());
    let data = dir.path().join("member-dir");
    let etcd = Server::etcd(&data, "m", &peer, "kept");
    rt.block_on(populate(&etcd.client_url));
    let want = rt.block_on(dump(&etcd.client_url));
    let status = etcdctl(&etcd.client_url, &["endpoint", "status", "-w", "json"]);
    etcd.stop();
    let ids: serde_json::Value = serde_json::from_str(&status).expect("json");
    let header = &ids[0]["Status"]["header"];

    let migrated = run(Command::new(strata_bin())
        .arg("migrate")
        .arg("--from-etcd-data-dir")
        .arg(&data));
    assert!(migrated.contains("migrated etcd member m"), "{migrated}");
    // Migrating twice is refused; etcd's own files are untouched.
    let again = Command::new(strata_bin())
        .arg("migrate")
        .arg("--from-etcd-data-dir")
        .arg(&data)
        .output()
        .expect("run");
    assert!(!again.status.success());
    assert!(data.join("member/snap/db").is_file() && data.join("member/wal").is_dir());

    let strata = Server::strata(&data, "m", &peer, "kept");
    let got = rt.block_on(dump(&strata.client_url));
    assert_same(&want, &got);
    let status = etcdctl(&strata.client_url, &["endpoint", "status", "-w", "json"]);
    let after: serde_json::Value = serde_json::from_str(&status).expect("json");
    let after = &after[0]["Status"]["header"];
    assert_eq!(after["cluster_id"], header["cluster_id"]);
    assert_eq!(after["member_id"], header["member_id"]);
}

#[test]
fn bad_snapshot_files_are_refused_in_one_line_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let restore = |file: &Path, data: &Path| {
        Command::new(strata_bin())
            .args(["snapshot", "restore"])
            .arg(file)
            .arg("--data-dir")
            .arg(data)
            .output()
            .expect("run")
    };
    let data = dir.path().join("data");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            vec![0u8; 4096 * 3 + 7],
            "snapshot missing hash",
        ),
        (
            "garbage",
            {
                let mut v = vec![7u8; 4096 * 4];
                let sum = sha256(&v);
                v.extend_from_slice(&sum);
                v
            },
            "not a bolt database",
        ),
        (
            "bad-hash",
            {
                let mut v = vec![7u8; 4096 * 4];
                v.extend_from_slice(&[0u8; 32]);
                v
            },
            "expected sha256",
        ),
    ];
    for (name, bytes, want) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, bytes).expect("write");
        let out = restore(&file, &data);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}");
        assert!(err.contains(want), "{name}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: {err}");
        assert!(!data.exists(), "{name} left a data dir");
        assert!(
            std::fs::read_dir(dir.path()).expect("dir").all(|e| !e
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .contains("restoring")),
            "{name} left a temporary dir"
        );
    }
    std::fs::create_dir(&data).expect("mkdir");
    let out = restore(&dir.path().join("garbage"), &data);
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    std::fs::write(&path, bytes).expect("write");
    let out = run(Command::new("sha256sum").arg(&path));
    let hex = out.split_whitespace().next().expect("sum");
    (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}
