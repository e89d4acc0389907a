//! etcd's v3lock and v3election services on a real `strata` member, driven by the `etcd-client`
//! crate (which calls the services) and by Debian's `etcdctl` (whose `lock` and `elect` run
//! etcd's client-side recipes over KV, Watch and Lease on the same keys, so the two must
//! exclude one another).
//!
//! Each test starts its own single-member cluster on free loopback ports. Waits are liveness
//! bounds, never assertions about speed: a test checks that a caller is still blocked only
//! after observing (through the keys under the lock's prefix) that it has queued.
//!
//! `LOCK_ELECTION_SERVER=/usr/bin/etcd` runs the same tests against etcd itself, to check that
//! they assert etcd's behaviour (`ETCDCTL` overrides the `etcdctl` binary).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, Error, GetOptions, LeaderKey, LockOptions, ObserveStream, Permission,
    ProclaimOptions, ResignOptions,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Bound on anything that must eventually happen (lease expiry included).
const LIVENESS: Duration = Duration::from_secs(30);
/// A lease that outlives every test.
const LONG_TTL: i64 = 600;
/// A lease left to expire (no keep-alive) during a test.
const SHORT_TTL: i64 = 3;

/// A child process killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Asks the process to stop as an operator would (etcdctl then unlocks or resigns).
    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT {} failed", self.0.id());
    }

    /// Each line the process prints on stdout, as it prints it.
    fn lines(&mut self) -> mpsc::UnboundedReceiver<String> {
        let out = self.0.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        rx
    }

    async fn exit_status(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + LIVENESS;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "process {} did not exit",
                self.0.id()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn running(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }
}

/// One single-member cluster, killed when dropped.
struct Member {
    _proc: Proc,
    endpoint: String,
    _dir: tempfile::TempDir,
}

use common::free_port;

impl Member {
    async fn start() -> Member {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client_port, peer_port) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let binary = std::env::var("LOCK_ELECTION_SERVER")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_strata").to_string());
        let log = std::fs::File::create(dir.path().join("member.log")).expect("log file");
        let child = Command::new(&binary)
            .args(["--name", "s1", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("s1={peer_url}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e}"));
        let member = Member {
            _proc: Proc(child),
            endpoint: client_url,
            _dir: dir,
        };
        member.wait_ready().await;
        member
    }

    /// Waits until a linearizable read succeeds.
    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + LIVENESS;
        loop {
            if let Ok(mut c) = Client::connect([&self.endpoint], None).await {
                if c.get("ready", None).await.is_ok() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "member at {} never served a read",
                self.endpoint
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn client(&self) -> Client {
        Client::connect([&self.endpoint], None)
            .await
            .expect("connect")
    }

    async fn client_as(&self, user: &str, password: &str) -> Client {
        let options = ConnectOptions::new().with_user(user, password);
        Client::connect([&self.endpoint], Some(options))
            .await
            .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
    }

    fn etcdctl(&self, args: &[&str]) -> Proc {
        let binary = std::env::var("ETCDCTL").unwrap_or_else(|_| "etcdctl".to_string());
        let child = Command::new(&binary)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e}"));
        Proc(child)
    }
}

async fn grant(client: &mut Client, ttl: i64) -> i64 {
    client
        .lease_grant(ttl, None)
        .await
        .expect("lease grant")
        .id()
}

fn with_lease(lease: i64) -> Option<LockOptions> {
    Some(LockOptions::new().with_lease(lease))
}

/// etcd's owner key: the name, a slash, the lease in hex.
fn owner_key(name: &str, lease: i64) -> String {
    format!("{name}/{lease:x}")
}

async fn keys_under(client: &mut Client, prefix: &str) -> Vec<String> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("range");
    resp.kvs()
        .iter()
        .map(|kv| kv.key_str().expect("utf-8 key").to_string())
        .collect()
}

/// Waits until exactly `n` keys exist under `prefix` (callers have queued or left).
async fn wait_keys(client: &mut Client, prefix: &str, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + LIVENESS;
    loop {
        let keys = keys_under(client, prefix).await;
        if keys.len() == n {
            return keys;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} keys under {prefix}, have {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn finish<T>(task: JoinHandle<T>, what: &str) -> T {
    timeout(LIVENESS, task)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
        .unwrap_or_else(|e| panic!("{what} panicked: {e}"))
}

/// The status code and message of a gRPC error.
fn grpc(result: Result<impl std::fmt::Debug, Error>) -> (tonic::Code, String) {
    match result {
        Err(Error::GRpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

fn spawn_lock(mut client: Client, name: &str, lease: i64) -> JoinHandle<Result<String, Error>> {
    let name = name.to_string();
    tokio::spawn(async move {
        let resp = client.lock(name, with_lease(lease)).await?;
        Ok(String::from_utf8(resp.key().to_vec()).expect("utf-8 key"))
    })
}

/// The next leader an Observe stream reports, as (key, value).
async fn observed(observer: &mut ObserveStream) -> (String, String) {
    let msg = timeout(LIVENESS, observer.message())
        .await
        .expect("observe delivered nothing")
        .expect("observe failed")
        .expect("observe ended");
    let kv = msg.kv().expect("kv");
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("utf-8");
    (text(kv.key()), text(kv.value()))
}

async fn next_line(lines: &mut mpsc::UnboundedReceiver<String>, what: &str) -> String {
    timeout(LIVENESS, lines.recv())
        .await
        .unwrap_or_else(|_| panic!("no line from {what}"))
        .unwrap_or_else(|| panic!("{what} closed its output"))
}

/// Reads lines until `expected` appears (etcdctl prints each kv as a key line, a value line).
async fn wait_line(lines: &mut mpsc::UnboundedReceiver<String>, expected: &str, what: &str) {
    loop {
        if next_line(lines, what).await == expected {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_exclusive_first_come_first_served_and_reentrant() {
    let member = Member::start().await;
    let mut c = member.client().await;
    let (a, b, d) = (
        grant(&mut c, LONG_TTL).await,
        grant(&mut c, LONG_TTL).await,
        grant(&mut c, LONG_TTL).await,
    );

    let held = c.lock("l", with_lease(a)).await.expect("uncontended lock");
    assert_eq!(held.key(), owner_key("l", a).as_bytes());
    let held_rev = held.header().expect("header").revision();
    let kv = c.get(owner_key("l", a), None).await.expect("get").kvs()[0].clone();
    assert_eq!(kv.value(), b"", "the ownership key carries no value");
    assert_eq!(
        kv.lease(),
        a,
        "the ownership key is bound to the caller's lease"
    );
    assert_eq!(kv.create_revision(), held_rev);

    // Locking again with the same lease is the same acquisition.
    let again = c.lock("l", with_lease(a)).await.expect("re-lock");
    assert_eq!(again.key(), held.key());

    let second = spawn_lock(c.clone(), "l", b);
    wait_keys(&mut c, "l/", 2).await;
    let third = spawn_lock(c.clone(), "l", d);
    wait_keys(&mut c, "l/", 3).await;
    assert!(!second.is_finished(), "second locker got a held lock");
    assert!(!third.is_finished(), "third locker got a held lock");

    c.unlock(held.key()).await.expect("unlock");
    let key = finish(second, "second locker").await.expect("second lock");
    assert_eq!(key, owner_key("l", b), "the earliest waiter is next");
    assert!(!third.is_finished(), "third locker overtook the second");

    c.unlock(key).await.expect("unlock second");
    let key = finish(third, "third locker").await.expect("third lock");
    assert_eq!(key, owner_key("l", d));
    assert_eq!(keys_under(&mut c, "l/").await, vec![owner_key("l", d)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_passes_to_the_waiter_when_the_holders_lease_expires() {
    let member = Member::start().await;
    let mut c = member.client().await;
    let (holder, waiter) = (
        grant(&mut c, SHORT_TTL).await,
        grant(&mut c, LONG_TTL).await,
    );
    c.lock("exp", with_lease(holder)).await.expect("lock");
    let next = spawn_lock(c.clone(), "exp", waiter);
    wait_keys(&mut c, "exp/", 2).await;
    assert!(!next.is_finished(), "waiter got a held lock");
    let key = finish(next, "waiter").await.expect("lock after expiry");
    assert_eq!(key, owner_key("exp", waiter));
}

/// etcd answers this only once the holder is gone (3.4 even answers success); Strata answers as
/// soon as the waiter's key is deleted (see `server/src/api/lock.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waiter_whose_lease_expires_is_told_its_session_expired() {
    let member = Member::start().await;
    let mut c = member.client().await;
    let (holder, waiter) = (
        grant(&mut c, LONG_TTL).await,
        grant(&mut c, SHORT_TTL).await,
    );
    c.lock("sx", with_lease(holder)).await.expect("lock");
    let lost = spawn_lock(c.clone(), "sx", waiter);
    let (code, message) = grpc(finish(lost, "expiring waiter").await);
    assert_eq!(code, tonic::Code::Unknown);
    assert_eq!(message, "mutex: session is expired");
    assert_eq!(
        keys_under(&mut c, "sx/").await,
        vec![owner_key("sx", holder)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_that_disconnect_withdraw_their_keys() {
    let member = Member::start().await;
    let mut c = member.client().await;
    let (holder, waiter) = (grant(&mut c, LONG_TTL).await, grant(&mut c, LONG_TTL).await);

    c.lock("dl", with_lease(holder)).await.expect("lock");
    // The waiter has its own connection; aborting the call drops the client, closing it.
    let gone = spawn_lock(member.client().await, "dl", waiter);
    wait_keys(&mut c, "dl/", 2).await;
    gone.abort();
    let left = wait_keys(&mut c, "dl/", 1).await;
    assert_eq!(left, vec![owner_key("dl", holder)]);

    c.campaign("de", "holder", holder).await.expect("campaign");
    let mut other = member.client().await;
    let gone = tokio::spawn(async move { other.campaign("de", "waiter", waiter).await });
    wait_keys(&mut c, "de/", 2).await;
    gone.abort();
    let left = wait_keys(&mut c, "de/", 1).await;
    assert_eq!(left, vec![owner_key("de", holder)]);

    // The lease outlived the withdrawn keys: the server deleted them, not lease expiry.
    let ttl = c.lease_time_to_live(waiter, None).await.expect("ttl");
    assert!(ttl.ttl() > 0, "waiter lease {waiter:x} expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_service_and_etcdctl_lock_exclude_each_other() {
    let member = Member::start().await;
    let mut c = member.client().await;
    let lease = grant(&mut c, LONG_TTL).await;

    // The service holds; etcdctl's client-side mutex queues behind it.
    let held = c.lock("shared", with_lease(lease)).await.expect("lock");
    let mut ctl = member.etcdctl(&["lock", "shared", "--", "sh", "-c", "echo acquired"]);
    let mut out = ctl.lines();
    wait_keys(&mut c, "shared/", 2).await;
    assert!(
        ctl.running(),
        "etcdctl lock returned while the service held the lock"
    );
    c.unlock(held.key()).await.expect("unlock");
    assert_eq!(next_line(&mut out, "etcdctl lock").await, "acquired");
    assert!(ctl.exit_status().await.success(), "etcdctl lock failed");
    wait_keys(&mut c, "shared/", 0).await;

    // etcdctl holds; the service queues behind it until etcdctl is interrupted and unlocks.
    let mut ctl = member.etcdctl(&["lock", "shared"]);
    let mut out = ctl.lines();
    let ctl_key = next_line(&mut out, "etcdctl lock").await;
    assert!(ctl_key.starts_with("shared/"), "etcdctl printed {ctl_key}");
    let waiter = spawn_lock(c.clone(), "shared", lease);
    wait_keys(&mut c, "shared/", 2).await;
    assert!(
        !waiter.is_finished(),
        "the service granted a lock etcdctl holds"
    );
    ctl.interrupt();
    let key = finish(waiter, "service locker").await.expect("lock");
    assert_eq!(key, owner_key("shared", lease));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_proclaim_leader_observe_resign() {
    let member = Member::start().await;
    let mut c = member.client().await;
    let (a, b) = (grant(&mut c, LONG_TTL).await, grant(&mut c, LONG_TTL).await);

    let won = c.campaign("e", "a1", a).await.expect("campaign");
    let leader = won.leader().expect("leader key").clone();
    assert_eq!(leader.name(), b"e");
    assert_eq!(leader.key(), owner_key("e", a).as_bytes());
    assert_eq!(leader.lease(), a);
    assert_eq!(leader.rev(), won.header().expect("header").revision());

    let mut observer = c.observe("e").await.expect("observe");
    assert_eq!(
        observed(&mut observer).await,
        (owner_key("e", a), "a1".to_string())
    );

    let proclaim = ProclaimOptions::new().with_leader(leader.clone());
    c.proclaim("a2", Some(proclaim)).await.expect("proclaim");
    assert_eq!(
        observed(&mut observer).await,
        (owner_key("e", a), "a2".to_string())
    );
    let current = c.leader("e").await.expect("leader");
    assert_eq!(current.kv().expect("kv").value(), b"a2");

    let mut other = c.clone();
    let second = tokio::spawn(async move { other.campaign("e", "b1", b).await });
    wait_keys(&mut c, "e/", 2).await;
    assert!(
        !second.is_finished(),
        "second campaigner won a held election"
    );

    c.resign(Some(ResignOptions::new().with_leader(leader)))
        .await
        .expect("resign");
    let won = finish(second, "second campaigner").await.expect("campaign");
    assert_eq!(
        won.leader().expect("leader").key(),
        owner_key("e", b).as_bytes()
    );
    assert_eq!(
        observed(&mut observer).await,
        (owner_key("e", b), "b1".to_string())
    );
    let current = c.leader("e").await.expect("leader");
    assert_eq!(current.kv().expect("kv").value(), b"b1");

    // Campaigning again with the leader's lease keeps the seat and proclaims the new value.
    let again = c.campaign("e", "b2", b).await.expect("re-campaign");
    assert_eq!(
        again.leader().expect("leader").rev(),
        won.leader().unwrap().rev()
    );
    assert_eq!(
        observed(&mut observer).await,
        (owner_key("e", b), "b2".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_errors_are_etcds() {
    let member = Member::start().await;
    let mut c = member.client().await;
    let lease = grant(&mut c, LONG_TTL).await;

    let (code, message) = grpc(c.leader("nobody").await);
    assert_eq!(
        (code, message.as_str()),
        (tonic::Code::Unknown, "election: no leader")
    );

    let won = c.campaign("x", "v", lease).await.expect("campaign");
    let leader = won.leader().expect("leader").clone();
    let resign = || Some(ResignOptions::new().with_leader(leader.clone()));
    c.resign(resign()).await.expect("resign");
    c.resign(resign())
        .await
        .expect("resigning twice is a no-op");
    let stale = ProclaimOptions::new().with_leader(leader.clone());
    let (code, message) = grpc(c.proclaim("w", Some(stale)).await);
    assert_eq!(
        (code, message.as_str()),
        (tonic::Code::Unknown, "election: not leader")
    );

    let (code, message) = grpc(c.proclaim("w", None).await);
    let missing = r#""leader" field must be provided"#;
    assert_eq!((code, message.as_str()), (tonic::Code::Unknown, missing));
    let (code, message) = grpc(c.resign(None).await);
    assert_eq!((code, message.as_str()), (tonic::Code::Unknown, missing));

    let unknown = 0x5eed;
    let (code, message) = grpc(c.campaign("x", "v", unknown).await);
    // etcd's recipes run on an embedded client that loses the engine error's code.
    let not_found = (
        tonic::Code::Unknown,
        "etcdserver: requested lease not found",
    );
    assert_eq!((code, message.as_str()), not_found);
    let (code, message) = grpc(c.lock("y", with_lease(unknown)).await);
    assert_eq!((code, message.as_str()), not_found);
    let forged = LeaderKey::new()
        .with_name("x")
        .with_key("x/1")
        .with_rev(1)
        .with_lease(unknown);
    let (code, message) = grpc(
        c.proclaim("w", Some(ProclaimOptions::new().with_leader(forged)))
            .await,
    );
    assert_eq!(
        (code, message.as_str()),
        (tonic::Code::Unknown, "election: not leader")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_lease_lock_and_campaign_get_a_session_lease() {
    let member = Member::start().await;
    let mut c = member.client().await;
    for key in [
        c.lock("nl", None).await.expect("lock").key().to_vec(),
        c.campaign("ne", "v", 0)
            .await
            .expect("campaign")
            .leader()
            .expect("leader")
            .key()
            .to_vec(),
    ] {
        let kv = c.get(key.clone(), None).await.expect("get").kvs()[0].clone();
        assert_ne!(
            kv.lease(),
            0,
            "{} has no lease",
            String::from_utf8_lossy(&key)
        );
        let suffix = format!("/{:x}", kv.lease());
        assert!(key.ends_with(suffix.as_bytes()), "key names another lease");
        let ttl = c.lease_time_to_live(kv.lease(), None).await.expect("ttl");
        assert_eq!(ttl.granted_ttl(), 60, "etcd's session TTL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_service_and_etcdctl_elect_see_the_same_leader() {
    let member = Member::start().await;
    let mut c = member.client().await;
    let lease = grant(&mut c, LONG_TTL).await;

    let mut listener = member.etcdctl(&["elect", "-l", "ee"]);
    let mut heard = listener.lines();

    let won = c.campaign("ee", "svc-1", lease).await.expect("campaign");
    let leader = won.leader().expect("leader").clone();
    wait_line(&mut heard, "svc-1", "etcdctl elect -l").await;

    let mut ctl = member.etcdctl(&["elect", "ee", "ctl-1"]);
    let mut ctl_out = ctl.lines();
    wait_keys(&mut c, "ee/", 2).await;
    assert!(
        ctl.running(),
        "etcdctl elect exited while the service's leader held"
    );

    c.proclaim(
        "svc-2",
        Some(ProclaimOptions::new().with_leader(leader.clone())),
    )
    .await
    .expect("proclaim");
    wait_line(&mut heard, "svc-2", "etcdctl elect -l").await;

    let mut observer = c.observe("ee").await.expect("observe");
    c.resign(Some(ResignOptions::new().with_leader(leader)))
        .await
        .expect("resign");
    wait_line(&mut ctl_out, "ctl-1", "etcdctl elect").await;
    wait_line(&mut heard, "ctl-1", "etcdctl elect -l").await;
    let current = c.leader("ee").await.expect("leader");
    assert_eq!(current.kv().expect("kv").value(), b"ctl-1");
    while observed(&mut observer).await.1 != "ctl-1" {}

    // Interrupted, etcdctl resigns: no leader is left.
    ctl.interrupt();
    assert!(ctl.exit_status().await.success(), "etcdctl elect failed");
    wait_keys(&mut c, "ee/", 0).await;
    let (code, message) = grpc(c.leader("ee").await);
    assert_eq!(
        (code, message.as_str()),
        (tonic::Code::Unknown, "election: no leader")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_act_with_the_callers_permissions() {
    let member = Member::start().await;
    let mut root = member.client().await;
    root.user_add("root", "rootpw", None)
        .await
        .expect("add root");
    root.user_grant_role("root", "root")
        .await
        .expect("grant root");
    root.role_add("lockers").await.expect("add role");
    let allowed = Permission::read_write("allowed/").with_prefix();
    root.role_grant_permission("lockers", allowed)
        .await
        .expect("grant permission");
    root.user_add("alice", "alicepw", None)
        .await
        .expect("add alice");
    root.user_grant_role("alice", "lockers")
        .await
        .expect("grant alice");
    root.auth_enable().await.expect("auth enable");

    let mut alice = member.client_as("alice", "alicepw").await;
    let (a, b) = (
        grant(&mut alice, LONG_TTL).await,
        grant(&mut alice, LONG_TTL).await,
    );
    let held = alice
        .lock("allowed", with_lease(a))
        .await
        .expect("lock in her prefix");
    let denied = (
        tonic::Code::Unknown,
        "etcdserver: permission denied".to_string(),
    );
    assert_eq!(grpc(alice.lock("denied", with_lease(a)).await), denied);

    // A waiter's reads and watches carry her token too.
    let waiter = spawn_lock(alice.clone(), "allowed", b);
    wait_keys(&mut alice, "allowed/", 2).await;
    alice.unlock(held.key()).await.expect("unlock");
    let key = finish(waiter, "alice's waiter").await.expect("lock");
    assert_eq!(key, owner_key("allowed", b));
    alice.unlock(key).await.expect("unlock");

    // (etcd sends an Observe stream's headers with its first leader: campaign first.)
    alice
        .campaign("allowed", "alice", a)
        .await
        .expect("campaign");
    let mut observer = alice.observe("allowed").await.expect("observe");
    assert_eq!(observed(&mut observer).await.1, "alice");
    assert_eq!(grpc(alice.leader("denied").await), denied);

    let mut anonymous = member.client().await;
    assert!(
        anonymous.lock("allowed", with_lease(a)).await.is_err(),
        "a caller without a token locked under auth"
    );
}
