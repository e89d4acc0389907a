//! A real cluster for integration tests: `strata` processes built by cargo, on free loopback
//! ports, each with its own data dir, driven with Debian's `etcdctl` and the `etcd-client`
//! crate. Processes are killed when the cluster is dropped, even when a test fails.

#![allow(dead_code)]

pub mod pki;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A tokio runtime for tests that drive the cluster with the `etcd-client` crate.
pub fn runtime() -> tokio_real::runtime::Runtime {
    tokio_real::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub struct Member {
    pub name: String,
    /// `http` or `https` (client and peer URLs alike).
    pub scheme: &'static str,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Member {
    /// The endpoint `etcdctl --endpoints` takes: `host:port`, or the URL with TLS.
    pub fn endpoint(&self) -> String {
        match self.scheme {
            "https" => self.client_url(),
            _ => format!("127.0.0.1:{}", self.client_port),
        }
    }

    pub fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.peer_port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct Cluster {
    /// Clusters in one test binary run one at a time: on a 2-core machine, several debug
    /// clusters at once starve each other into election churn.
    _serial: std::sync::MutexGuard<'static, ()>,
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    pub token: String,
    /// Flags every member starts with, besides the cluster's own.
    pub extra_args: Vec<String>,
    /// With TLS: the certificates, and what `etcdctl`/`curl` present.
    pub tls: Option<Tls>,
}

/// A TLS cluster's certificates: one CA, one member certificate for every member (client and
/// peer ports, as kubeadm's), and the client certificate tools use (CN `root`).
pub struct Tls {
    pub pki: pki::Pki,
    pub member: pki::CertFiles,
    pub client: pki::CertFiles,
}

impl Tls {
    pub fn new(dir: &std::path::Path) -> Tls {
        let pki = pki::Pki::new(&dir.join("pki"), "cluster");
        let member = pki.member("member", "strata-member");
        let client = pki.client("root", "root");
        Tls {
            pki,
            member,
            client,
        }
    }

    /// etcd's flags for client and peer TLS with client-certificate auth on both ports.
    pub fn member_flags(&self) -> Vec<String> {
        Tls::flags_for(&self.pki.ca, &self.member)
    }

    /// The same flags for a member presenting `cert` and trusting the CA in `ca`.
    pub fn flags_for(ca: &std::path::Path, cert: &pki::CertFiles) -> Vec<String> {
        let (ca, cert, key) = (
            ca.display().to_string(),
            cert.cert.display().to_string(),
            cert.key.display().to_string(),
        );
        [
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--trusted-ca-file",
            &ca,
            "--client-cert-auth",
            "--peer-cert-file",
            &cert,
            "--peer-key-file",
            &key,
            "--peer-trusted-ca-file",
            &ca,
            "--peer-client-cert-auth",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `etcdctl`'s flags presenting `client`.
    pub fn etcdctl_flags(&self, client: &pki::CertFiles) -> Vec<String> {
        vec![
            format!("--cacert={}", self.pki.ca.display()),
            format!("--cert={}", client.cert.display()),
            format!("--key={}", client.key.display()),
        ]
    }

    /// `curl`'s flags presenting the root client certificate.
    pub fn curl_flags(&self) -> Vec<String> {
        vec![
            "--cacert".into(),
            self.pki.ca.display().to_string(),
            "--cert".into(),
            self.client.cert.display().to_string(),
            "--key".into(),
            self.client.key.display().to_string(),
        ]
    }
}

/// A port nobody listens on right now, taken below Linux's ephemeral range (32768+) so the
/// outgoing connections of other processes cannot grab it between this check and the member's
/// bind. Each test process starts at its own offset and never hands a port out twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 10_000 + (std::process::id() % 200) * 100;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + n % 20_000) as u16;
        if port >= 32_000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One value from the `/metrics` of the member whose client URL is `url` (the first line
/// that starts with `name` and holds a number after it).
#[allow(dead_code)] // not every test binary reads metrics
pub fn metric(url: &str, name: &str) -> u64 {
    let out = Command::new("curl")
        .args(["-fs", &format!("{url}/metrics")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} missing from {url}/metrics"))
}

/// Whether `url`'s `/health` answers 200.
pub fn healthy(url: &str) -> bool {
    Command::new("curl")
        .args(["-fs", "-m", "2", &format!("{url}/health")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `cmd`, which must succeed; returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `etcdctl` (API 3) against `endpoint` with `args`, which must succeed; returns stdout.
pub fn etcdctl_ok(endpoint: &str, args: &[&str]) -> String {
    run(Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args))
}

/// A cluster's names and loopback URLs, ports free: `--initial-cluster` and each member's
/// peer and client URL.
pub struct Plan {
    pub names: Vec<String>,
    pub peers: Vec<String>,
    pub clients: Vec<String>,
    pub initial: String,
}

impl Plan {
    pub fn new(names: &[&str]) -> Plan {
        let urls = || -> Vec<String> {
            names
                .iter()
                .map(|_| format!("http://127.0.0.1:{}", free_port()))
                .collect()
        };
        let peers = urls();
        let clients = urls();
        let initial = names
            .iter()
            .zip(&peers)
            .map(|(n, p)| format!("{n}={p}"))
            .collect::<Vec<_>>()
            .join(",");
        Plan {
            names: names.iter().map(|n| n.to_string()).collect(),
            peers,
            clients,
            initial,
        }
    }

    /// Member `i` started on `data_dir` (with `--initial-cluster`), its stderr to `log`.
    pub fn member(&self, i: usize, data_dir: &std::path::Path, log: &std::path::Path) -> Command {
        let mut cmd = lone_member(
            &self.names[i],
            data_dir,
            &self.clients[i],
            &self.clients[i],
            &self.peers[i],
        );
        cmd.args(["--initial-cluster", &self.initial])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"));
        cmd
    }

    /// `strata snapshot restore FILE` for member `i` into `data_dir`.
    pub fn restore(&self, i: usize, file: &std::path::Path, data_dir: &std::path::Path) {
        run(Command::new(strata_bin())
            .args(["snapshot", "restore"])
            .arg(file)
            .args(["--name", &self.names[i], "--initial-cluster", &self.initial])
            .args(["--initial-advertise-peer-urls", &self.peers[i]])
            .arg("--data-dir")
            .arg(data_dir));
    }
}

pub fn strata_bin() -> &'static str {
    env!("CARGO_BIN_EXE_strata")
}

/// A `strata` command for a member of its own one-member cluster: `name`, `data_dir`, client
/// listeners on `listen_clients` (comma-separated URLs), `advertise_client` advertised, and
/// one peer URL. Callers add their own flags, output and `spawn`.
pub fn lone_member(
    name: &str,
    data_dir: &std::path::Path,
    listen_clients: &str,
    advertise_client: &str,
    peer_url: &str,
) -> Command {
    let mut cmd = Command::new(strata_bin());
    cmd.args(["--name", name])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen-client-urls", listen_clients])
        .args(["--advertise-client-urls", advertise_client])
        .args(["--listen-peer-urls", peer_url])
        .args(["--initial-advertise-peer-urls", peer_url]);
    cmd
}

impl Cluster {
    /// Starts `n` members bootstrapping a new cluster and waits until each serves.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// [`Cluster::start`] with extra flags for every member (`--max-request-bytes`, ...).
    pub fn start_with(n: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start_full(n, extra_args, false)
    }

    /// `n` members with client and peer TLS and client-certificate auth (see [`Tls`]).
    pub fn start_tls(n: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start_full(n, extra_args, true)
    }

    fn start_full(n: usize, extra_args: &[&str], tls: bool) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let scheme = if tls { "https" } else { "http" };
        let tls = tls.then(|| Tls::new(dir.path()));
        let members: Vec<Member> = (1..=n)
            .map(|i| {
                let name = format!("m{i}");
                Member {
                    data_dir: dir.path().join(&name),
                    log: dir.path().join(format!("{name}.log")),
                    scheme,
                    name,
                    client_port: free_port(),
                    peer_port: free_port(),
                    child: None,
                }
            })
            .collect();
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut cluster = Cluster {
            _serial: serial,
            dir,
            members,
            token: format!("test-{}", free_port()),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            tls,
        };
        for i in 0..n {
            cluster.start_member(i, "new");
        }
        cluster.wait_ready();
        cluster
    }

    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every running member's client endpoint, as `etcdctl --endpoints` takes them.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.is_running())
            .map(Member::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn client_urls(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.is_running())
            .map(Member::client_url)
            .collect()
    }

    /// Starts member `i` with `--initial-cluster-state state`.
    pub fn start_member(&mut self, i: usize, state: &str) {
        let security = self.tls.as_ref().map(Tls::member_flags).unwrap_or_default();
        self.start_member_with(i, state, &security);
    }

    /// [`Cluster::start_member`] with these security flags instead of the cluster's.
    pub fn start_member_with(&mut self, i: usize, state: &str, security: &[String]) {
        let initial = self.initial_cluster();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("log file");
        let child = Command::new(strata_bin())
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", state])
            .args(security)
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn strata");
        m.child = Some(child);
    }

    /// Adds a not-yet-started member to the test's view (for `etcdctl member add`, whose
    /// peer URL it provides); start it with `start_member(i, "existing")`.
    pub fn new_member(&mut self, name: &str) -> usize {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.members.push(Member {
            scheme,
            data_dir: self.dir.path().join(name),
            log: self.dir.path().join(format!("{name}.log")),
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        });
        self.members.len() - 1
    }

    /// Restarts a stopped member from its data dir.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.start_member(i, "new");
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `timeout` for member `i` to exit on its own; its exit status, or `None`
    /// if it is still running (it is left running).
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let c = self.members[i].child.as_mut().expect("running member");
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                self.members[i].child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The hex id `etcdctl member list` gives member `i` (found by its peer URL: a member
    /// that has not published its name yet is listed without one).
    pub fn member_id(&self, i: usize) -> String {
        let peer_url = self.members[i].peer_url();
        self.ok(&["member", "list"])
            .lines()
            .find(|l| l.split(", ").nth(3) == Some(peer_url.as_str()))
            .and_then(|l| l.split(',').next())
            .unwrap_or_else(|| panic!("{peer_url} not in the member list"))
            .to_string()
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        let mut c = self.members[i].child.take().expect("running member");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "member {i} ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running member answers `/health` with 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for m in self.members.iter().filter(|m| m.is_running()) {
            loop {
                let out = Command::new("curl")
                    .args(self.tls.as_ref().map(Tls::curl_flags).unwrap_or_default())
                    .args(["-fs", "-m", "2", &format!("{}/health", m.client_url())])
                    .output()
                    .expect("curl");
                if out.status.success() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} not healthy; log:\n{}",
                    m.name,
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // Every running member has published its client URLs (etcd's "started").
        loop {
            let out = self.etcdctl(&["member", "list"]);
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && !text.contains("unstarted") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "members never all started: {text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `etcdctl` against every running member.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_at(&self.endpoints(), args)
    }

    pub fn etcdctl_at(&self, endpoints: &str, args: &[&str]) -> Output {
        let security = match &self.tls {
            Some(tls) => tls.etcdctl_flags(&tls.client),
            None => Vec::new(),
        };
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(security)
            .arg("--command-timeout=10s")
            .args(args)
            .output()
            .expect("run etcdctl (apt: etcd-client)")
    }

    /// `etcdctl` that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// `etcdctl` that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            !out.status.success(),
            "etcdctl {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).expect("utf-8")
    }

    /// The index of the member the cluster reports as leader.
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, m) in self
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.is_running())
            {
                let out = self.etcdctl_at(&m.endpoint(), &["endpoint", "status", "-w", "json"]);
                if String::from_utf8_lossy(&out.stdout).contains("\"leader\"") {
                    let text = String::from_utf8_lossy(&out.stdout).to_string();
                    let leader = json_u64(&text, "\"leader\":");
                    let me = json_u64(&text, "\"member_id\":");
                    if leader != 0 && leader == me {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn json_u64(text: &str, field: &str) -> u64 {
    text.split(field)
        .nth(1)
        .map(|rest| {
            rest.trim_start()
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
        })
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }
}
