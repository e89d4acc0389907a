//! Readiness as etcd signals it: under systemd (`Type=notify`, as Debian's `etcd.service`
//! runs etcd) the member sends `READY=1` to `$NOTIFY_SOCKET` once it serves clients, and
//! `STOPPING=1` when SIGTERM stops it; its log says "ready to serve client requests". The
//! kubeadm manifest's `--listen-metrics-urls` serves `/metrics` and `/health` there.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, lone_member};

#[test]
fn a_member_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let (client, peer, metrics) = (free_port(), free_port(), free_port());
    let log = dir.path().join("member.log");
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let data = dir.path().join("data");
    let mut child = lone_member("n1", &data, &client_url, &client_url, &peer_url)
        .args([
            "--listen-metrics-urls",
            &format!("http://127.0.0.1:{metrics}"),
        ])
        .args([
            "--experimental-watch-progress-notify-interval=5s",
            "--snapshot-count=0",
        ])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn strata");
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means serving: a client is answered at once.
    let health = Command::new("curl")
        .args([
            "-fs",
            "-m",
            "2",
            &format!("http://127.0.0.1:{client}/health"),
        ])
        .output()
        .expect("curl");
    assert!(health.status.success(), "not serving after READY=1");
    // The metrics listener serves /metrics and /health, and nothing of the client API.
    let curl = |path: &str| {
        Command::new("curl")
            .args(["-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://127.0.0.1:{metrics}{path}"))
            .output()
            .expect("curl")
    };
    assert_eq!(String::from_utf8_lossy(&curl("/metrics").stdout), "200");
    assert_eq!(String::from_utf8_lossy(&curl("/health").stdout), "200");
    assert_eq!(String::from_utf8_lossy(&curl("/v3/kv/range").stdout), "404");
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("ready to serve client requests"),
        "{logged}"
    );
    assert!(
        logged.contains("published local member to cluster through raft"),
        "{logged}"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = child.wait().expect("exit");
    assert!(status.success(), "{status}");
}
