//! TLS as etcd does it, with real processes, real `etcdctl`, `curl`, `openssl s_client` and the
//! `etcd-client` crate, and certificates made in the test: client and peer TLS with
//! client-certificate auth (kubeadm's set-up), who is refused and how, the certificate's CN
//! as the auth user, peers from another CA, certificate rotation without restart,
//! `--auto-tls`, JWT tokens, and the one-line errors of bad security flags.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::pki::{CertFiles, Pki};
use common::{free_port, lone_member, Cluster, Tls};

fn etcdctl(endpoints: &str, flags: &[String], args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=2s", "--command-timeout=4s"])
        .args(flags)
        .args(args)
        .output()
        .expect("etcdctl")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One TLS handshake with `openssl s_client` to a loopback port, presenting `client`, with
/// `extra` options (`-tls1_1`, `-CAfile ...`); stdin is closed, so it ends after the handshake.
fn s_client(port: u16, client: &CertFiles, extra: &[&str]) -> Output {
    Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-cert", &client.cert.display().to_string()])
        .args(["-key", &client.key.display().to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client")
}

/// The serial number of the certificate a TLS port serves, as `openssl s_client` sees it.
fn served_serial(port: u16, tls: &Tls) -> String {
    let ca = tls.pki.ca.display().to_string();
    let pem = s_client(port, &tls.client, &["-CAfile", &ca]).stdout;
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl x509");
    use std::io::Write as _;
    let _ = x509.stdin.take().expect("stdin").write_all(&pem);
    let out = x509.wait_with_output().expect("x509");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `key`'s value as the member at `ep` holds it (a serializable read: no leader needed).
fn local_value(c: &Cluster, ep: &str, key: &str) -> String {
    let out = c.etcdctl_at(ep, &["get", key, "--consistency=s", "--print-value-only"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until `f` holds, up to `secs`.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Three members with client and peer TLS and `--client-cert-auth` on both ports: everything
/// etcdctl does works with the client certificate (through followers too, where requests are
/// forwarded to the leader over TLS), curl reaches the gateway and the plain endpoints, and a
/// client without a certificate, with one from another CA, an expired one or a revoked one
/// is refused in the handshake, as is plaintext and TLS 1.1.
#[test]
fn a_tls_cluster_serves_certified_clients_and_refuses_the_rest() {
    // kubeadm's manifest flags besides TLS (the metrics listener is readiness.rs's): the
    // initial corruption check runs over TLS with each member's client certificate.
    let c = Cluster::start_tls(
        3,
        &[
            "--experimental-initial-corrupt-check=true",
            "--experimental-watch-progress-notify-interval=5s",
            "--snapshot-count=10000",
        ],
    );
    let tls = c.tls.as_ref().expect("tls");
    assert_eq!(c.ok(&["put", "foo", "bar"]).trim(), "OK");
    assert_eq!(c.ok(&["get", "foo"]), "foo\nbar\n");
    let members = c.ok(&["member", "list"]);
    assert_eq!(
        members.matches("https://127.0.0.1:").count(),
        6,
        "{members}"
    );
    let status = c.ok(&["endpoint", "status", "--cluster", "-w", "table"]);
    assert_eq!(status.matches("https://127.0.0.1:").count(), 3, "{status}");

    // Leases kept alive and read through each member: followers forward to the leader.
    let grant = c.ok(&["lease", "grant", "30"]);
    let lease = grant
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    c.ok(&["put", "leased", "v", &format!("--lease={lease}")]);
    for m in &c.members {
        let out = c.etcdctl_at(&m.endpoint(), &["lease", "keep-alive", "--once", &lease]);
        assert!(out.status.success(), "{}: {}", m.name, text(&out));
        let ttl = c.etcdctl_at(&m.endpoint(), &["lease", "timetolive", &lease, "--keys"]);
        assert!(
            text(&ttl).contains("attached keys([leased])"),
            "{}",
            text(&ttl)
        );
    }
    // A watch over TLS replays history (it never ends by itself: `timeout` stops it).
    let mut flags = tls.etcdctl_flags(&tls.client);
    flags.insert(0, format!("--endpoints={}", c.members[2].client_url()));
    let watch = Command::new("timeout")
        .args(["3", "etcdctl"])
        .env("ETCDCTL_API", "3")
        .args(&flags)
        .args(["watch", "foo", "--rev=1"])
        .output()
        .expect("etcdctl watch");
    assert!(text(&watch).contains("PUT\nfoo\nbar"), "{}", text(&watch));

    // The JSON gateway, /health, /version and /metrics on the TLS port.
    let url = c.members[0].client_url();
    let curl = |path: &str, body: Option<&str>| {
        let mut cmd = Command::new("curl");
        cmd.args(tls.curl_flags()).args(["-fs", "-m", "5"]);
        if let Some(b) = body {
            cmd.args(["-X", "POST", "-d", b]);
        }
        let out = cmd.arg(format!("{url}{path}")).output().expect("curl");
        assert!(out.status.success(), "curl {path}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(curl("/v3/kv/range", Some(r#"{"key":"Zm9v"}"#)).contains("YmFy"));
    assert!(curl("/health", None).contains("true"));
    assert!(curl("/version", None).contains("etcdserver"));
    assert!(curl("/metrics", None).contains("etcd_server_has_leader"));

    // Refused: every one of these fails, and the cluster goes on serving.
    let ep = c.members[1].client_url();
    let no_cert = vec![format!("--cacert={}", tls.pki.ca.display())];
    let out = etcdctl(&ep, &no_cert, &["get", "foo"]);
    assert!(
        !out.status.success(),
        "no client certificate: {}",
        text(&out)
    );

    let dir = c.dir.path();
    let other = Pki::new(&dir.join("other"), "other");
    let foreign = other.client("foreign", "root");
    let out = etcdctl(&ep, &tls.etcdctl_flags(&foreign), &["get", "foo"]);
    assert!(
        !out.status.success(),
        "a certificate from another CA: {}",
        text(&out)
    );

    let expired = tls.pki.expired_client("expired", "root");
    let out = etcdctl(&ep, &tls.etcdctl_flags(&expired), &["get", "foo"]);
    assert!(
        !out.status.success(),
        "an expired certificate: {}",
        text(&out)
    );

    let plain = Command::new("curl")
        .args([
            "-fs",
            "-m",
            "3",
            &format!("http://127.0.0.1:{}/health", c.members[1].client_port),
        ])
        .output()
        .expect("curl");
    assert!(!plain.status.success(), "plaintext to a TLS port");

    let port = c.members[1].client_port;
    let tls11 = s_client(
        port,
        &tls.client,
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
    );
    // s_client exits 0 even when the handshake fails; no cipher means no session.
    assert!(
        text(&tls11).contains("Cipher is (NONE)"),
        "TLS 1.1 must be refused: {}",
        text(&tls11)
    );
    let ca = tls.pki.ca.display().to_string();
    let tls12 = s_client(port, &tls.client, &["-tls1_2", "-CAfile", &ca]);
    assert!(
        text(&tls12).contains("TLSv1.2"),
        "TLS 1.2 is served: {}",
        text(&tls12)
    );

    // The member logged the refusals and still serves everyone else.
    assert_eq!(c.ok(&["get", "foo", "--print-value-only"]).trim(), "bar");
    let log = std::fs::read_to_string(&c.members[1].log).unwrap_or_default();
    assert!(log.contains("TLS handshake failed"), "refusals are logged");
}

/// A CRL revokes one client certificate: it is refused, another from the same CA is served.
#[test]
fn a_revoked_client_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = Tls::new(dir.path());
    let revoked = tls.pki.client("revoked", "root");
    let crl = tls.pki.crl(&[&revoked]);
    let member = Single::start(&tls, &["--client-crl-file", &crl.display().to_string()]);
    let ep = member.url();
    let out = etcdctl(&ep, &tls.etcdctl_flags(&tls.client), &["put", "k", "v"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = etcdctl(&ep, &tls.etcdctl_flags(&revoked), &["get", "k"]);
    assert!(
        !out.status.success(),
        "a revoked certificate: {}",
        text(&out)
    );
}

/// With auth enabled and no token, a request is authorised as the user its certificate's CN
/// names: `root` may do anything, `alice` only what her role grants (etcd's
/// `AuthInfoFromTLS`); the JSON gateway never does this.
#[test]
fn the_certificate_cn_is_the_auth_user() {
    let c = Cluster::start_tls(3, &[]);
    let tls = c.tls.as_ref().expect("tls");
    c.ok(&["user", "add", "root", "--new-user-password=rootpw"]);
    c.ok(&["user", "add", "alice", "--new-user-password=alicepw"]);
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
    c.ok(&["auth", "enable"]);
    // Root by CN: no --user, no token.
    c.ok(&["put", "/other/x", "1"]);
    assert_eq!(c.ok(&["get", "/other/x", "--print-value-only"]).trim(), "1");

    let alice = tls.pki.client("alice", "alice");
    let flags = tls.etcdctl_flags(&alice);
    let eps = c.endpoints();
    let out = etcdctl(&eps, &flags, &["put", "/app/k", "v"]);
    assert!(out.status.success(), "alice in her prefix: {}", text(&out));
    let out = etcdctl(&eps, &flags, &["put", "/other/y", "v"]);
    assert!(
        text(&out).contains("etcdserver: permission denied"),
        "{}",
        text(&out)
    );
    let out = etcdctl(&eps, &flags, &["get", "/other/x"]);
    assert!(
        text(&out).contains("etcdserver: permission denied"),
        "{}",
        text(&out)
    );

    // Requests only the leader answers, from a client known only by its certificate, sent to
    // every member: followers forward them to the leader as that user (keep-alive and
    // time-to-live of alice's own lease, whose key only she and root may see).
    let grant = etcdctl(&eps, &flags, &["lease", "grant", "60"]);
    assert!(grant.status.success(), "{}", text(&grant));
    let lease = String::from_utf8_lossy(&grant.stdout)
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    let out = etcdctl(
        &eps,
        &flags,
        &["put", "/app/leased", "v", &format!("--lease={lease}")],
    );
    assert!(out.status.success(), "{}", text(&out));
    for m in &c.members {
        let ep = m.client_url();
        let out = etcdctl(&ep, &flags, &["lease", "keep-alive", "--once", &lease]);
        assert!(
            out.status.success(),
            "alice's keep-alive via {}: {}",
            m.name,
            text(&out)
        );
        let out = etcdctl(&ep, &flags, &["lease", "timetolive", &lease, "--keys"]);
        assert!(
            text(&out).contains("attached keys([/app/leased])"),
            "alice's time-to-live via {}: {}",
            m.name,
            text(&out)
        );
    }

    // A CN naming no user is not a user.
    let nobody = tls.pki.client("nobody", "nobody");
    let out = etcdctl(&eps, &tls.etcdctl_flags(&nobody), &["get", "/app/k"]);
    assert!(!out.status.success(), "{}", text(&out));

    // The gateway: the certificate opens the port but names no user.
    let out = Command::new("curl")
        .args(tls.curl_flags())
        .args([
            "-s",
            "-m",
            "5",
            "-X",
            "POST",
            "-d",
            r#"{"key":"L290aGVyL3g="}"#,
        ])
        .arg(format!("{}/v3/kv/range", c.members[0].client_url()))
        .output()
        .expect("curl");
    assert!(text(&out).contains("user name is empty"), "{}", text(&out));
    // A header claiming a CN is ignored.
    let out = Command::new("curl")
        .args(tls.curl_flags())
        .args(["-s", "-m", "5", "-H", "strata-cert-cn: root"])
        .args(["-X", "POST", "-d", r#"{"key":"L290aGVyL3g="}"#])
        .arg(format!("{}/v3/kv/range", c.members[0].client_url()))
        .output()
        .expect("curl");
    assert!(text(&out).contains("user name is empty"), "{}", text(&out));
    c.ok(&["auth", "disable"]);
}

/// A member whose peer certificate comes from another CA is added with `member add` but never
/// becomes a working member: the others refuse its handshakes, so it cannot join, send a raft
/// message or fetch a snapshot. The cluster stays healthy and removing it works. A member
/// restarted with its TLS flags rejoins.
#[test]
fn a_peer_from_another_ca_cannot_join() {
    let mut c = Cluster::start_tls(3, &[]);
    c.ok(&["put", "before", "1"]);
    let i = c.new_member("intruder");
    let peer_url = c.members[i].peer_url();
    let out = c.ok(&[
        "member",
        "add",
        "intruder",
        &format!("--peer-urls={peer_url}"),
    ]);
    assert!(out.contains("added"), "{out}");
    // The intruder's certificates come from a CA of its own.
    let other = Pki::new(&c.dir.path().join("intruder-pki"), "intruder");
    let cert = other.member("member", "strata-member");
    c.start_member_with(i, "existing", &Tls::flags_for(&other.ca, &cert));
    // It never gets the member list or the log: it exits, or keeps failing, while the
    // three others stay healthy and keep committing.
    for k in 0..10 {
        c.ok(&["put", "during", &k.to_string()]);
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = std::fs::read_to_string(&c.members[i].log).unwrap_or_default();
    assert!(
        !log.contains("leader changed"),
        "the intruder never follows a leader:\n{log}"
    );
    let members = c.ok(&["member", "list"]);
    assert!(members.contains("unstarted"), "{members}");
    let id = members
        .lines()
        .find(|l| l.contains("unstarted"))
        .and_then(|l| l.split(',').next())
        .expect("the intruder's id")
        .to_string();
    c.kill9(i);
    c.ok(&["member", "remove", &id]);
    c.members.pop();
    assert_eq!(c.ok(&["get", "during", "--print-value-only"]).trim(), "9");

    // A member with the cluster's certificates joins over TLS: it fetches the member list
    // from a peer, receives the log (or a snapshot) and serves.
    let j = c.new_member("joiner");
    let peer_url = c.members[j].peer_url();
    c.ok(&[
        "member",
        "add",
        "joiner",
        &format!("--peer-urls={peer_url}"),
    ]);
    c.start_member(j, "existing");
    let ep = c.members[j].endpoint();
    eventually(
        30,
        "the joiner serves what was written before it joined",
        || local_value(&c, &ep, "during") == "9",
    );

    // A member restarted with its TLS flags rejoins and catches up. (Killing it may cost an
    // election: a write in flight then times out, as in etcd, and is retried.)
    c.kill9(2);
    let started = Instant::now();
    eventually(30, "a write commits without the killed member", || {
        c.etcdctl(&["put", "while-down", "x"]).status.success()
    });
    println!("write committed {:?} after the kill", started.elapsed());
    c.restart(2);
    let ep = c.members[2].endpoint();
    eventually(
        30,
        "the restarted member serves the write it missed",
        || local_value(&c, &ep, "while-down") == "x",
    );
}

/// `--peer-cert-allowed-cn`: a peer whose certificate (from the right CA) has another CN
/// fails the handshake at the peer port; the right CN is served.
#[test]
fn the_peer_port_refuses_a_disallowed_cn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = Tls::new(dir.path());
    let member = Single::start(&tls, &["--peer-cert-allowed-cn", "strata-member"]);
    let wrong = tls.pki.member("wrong-cn", "someone-else");
    let ca = tls.pki.ca.display().to_string();
    let try_peer = |cert: &CertFiles| s_client(member.peer_port, cert, &["-CAfile", &ca]);
    // TLS 1.3 sends the refusal after the client's Finished: look for the alert or the log.
    let _ = try_peer(&wrong);
    eventually(10, "the refusal is logged", || {
        std::fs::read_to_string(&member.log)
            .unwrap_or_default()
            .contains("is not the allowed CN")
    });
    let ok = try_peer(&tls.member);
    assert!(text(&ok).contains("Verify return code: 0"), "{}", text(&ok));
    let log = std::fs::read_to_string(&member.log).unwrap_or_default();
    assert_eq!(log.matches("is not the allowed CN").count(), 1, "{log}");
}

/// Replacing a member's certificate and key files on disk takes effect for new connections
/// without a restart; connections keep working throughout.
#[test]
fn certificates_rotate_without_restart() {
    let c = Cluster::start_tls(3, &[]);
    let tls = c.tls.as_ref().expect("tls");
    let port = c.members[0].client_port;
    let before = served_serial(port, tls);
    assert!(before.starts_with("serial="), "{before}");
    // Issue a new member certificate and move it over the old files, as an operator would.
    let fresh = tls.pki.member("rotated", "strata-member");
    std::fs::copy(&fresh.key, &tls.member.key).expect("key");
    std::fs::copy(&fresh.cert, &tls.member.cert).expect("cert");
    eventually(10, "the new certificate is served", || {
        served_serial(port, tls) != before
    });
    c.ok(&["put", "after-rotation", "1"]);
    assert_eq!(
        c.ok(&["get", "after-rotation", "--print-value-only"])
            .trim(),
        "1"
    );
}

/// `--auto-tls`: a single member generates its own certificate and serves TLS;
/// `etcdctl --insecure-skip-tls-verify` works with it.
#[test]
fn auto_tls_serves_a_self_signed_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer) = (free_port(), free_port());
    let data = dir.path().join("data");
    let log = dir.path().join("auto.log");
    let client_url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("https://127.0.0.1:{peer}");
    let mut child = lone_member("auto", &data, &client_url, &client_url, &peer_url)
        .args(["--auto-tls", "--peer-auto-tls"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let ep = format!("https://127.0.0.1:{client}");
    let flags = vec![
        "--insecure-transport=false".to_string(),
        "--insecure-skip-tls-verify".to_string(),
    ];
    let mut ok = false;
    for _ in 0..100 {
        let out = etcdctl(&ep, &flags, &["put", "k", "v"]);
        if out.status.success() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ok,
        "auto-tls member never served:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(data.join("fixtures/client/cert.pem").exists());
    assert!(data.join("fixtures/peer/key.pem").exists());
}

/// The `etcd-client` crate with its TLS feature: KV and a lease kept alive over TLS.
#[test]
fn etcd_client_crate_over_tls() {
    let c = Cluster::start_tls(3, &[]);
    let tls = c.tls.as_ref().expect("tls");
    let rt = common::runtime();
    let urls = c.client_urls();
    rt.block_on(async {
        use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
        let ca = Certificate::from_pem(std::fs::read(&tls.pki.ca).expect("ca"));
        let identity = Identity::from_pem(
            std::fs::read(&tls.client.cert).expect("cert"),
            std::fs::read(&tls.client.key).expect("key"),
        );
        let options = ConnectOptions::new().with_tls(
            TlsOptions::new()
                .ca_certificate(ca)
                .identity(identity)
                .domain_name("localhost"),
        );
        let mut client = Client::connect(urls, Some(options)).await.expect("connect");
        client.put("crate", "tls", None).await.expect("put");
        let got = client.get("crate", None).await.expect("get");
        assert_eq!(got.kvs()[0].value(), b"tls");
        let lease = client.lease_grant(10, None).await.expect("grant");
        let (mut keeper, mut answers) = client
            .lease_keep_alive(lease.id())
            .await
            .expect("keep-alive");
        keeper.keep_alive().await.expect("send");
        let answer = answers.message().await.expect("answer").expect("one");
        assert_eq!(answer.ttl(), 10);
    });
}

/// JWT tokens (`--auth-token jwt,...`): a token issued by one member works on another with no
/// shared state; an expired or tampered token gets etcd's `invalid auth token`.
#[test]
fn jwt_tokens_work_on_every_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let (private, public) = (dir.path().join("jwt.key"), dir.path().join("jwt.pub"));
    std::fs::write(&private, key.serialize_pem()).expect("write");
    std::fs::write(&public, key.public_key_pem()).expect("write");
    let flag = format!(
        "--auth-token=jwt,pub-key={},priv-key={},sign-method=ES256,ttl=6s",
        public.display(),
        private.display()
    );
    let c = Cluster::start_with(3, &[&flag]);
    c.ok(&["user", "add", "root", "--new-user-password=pw"]);
    c.ok(&["auth", "enable"]);
    let rt = common::runtime();
    let (one, two) = (c.members[0].client_url(), c.members[2].client_url());
    rt.block_on(async {
        use etcd_client::{Client, ConnectOptions};
        let opts = ConnectOptions::new().with_user("root", "pw");
        let mut a = Client::connect([one.clone()], Some(opts))
            .await
            .expect("login on one");
        a.put("jwt", "1", None)
            .await
            .expect("put with a token from member one");
    });
    // The same token on another member: log in on one, use the token on two by hand.
    let token = rt.block_on(async {
        let a = etcd_client::Client::connect([one.clone()], None)
            .await
            .expect("connect");
        a.auth_client()
            .authenticate("root".to_string(), "pw".to_string())
            .await
            .expect("authenticate")
            .token()
            .to_string()
    });
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let get = |url: &str, token: &str| {
        Command::new("curl")
            .args(["-s", "-m", "5", "-H", &format!("Authorization: {token}")])
            .args(["-X", "POST", "-d", r#"{"key":"and0"}"#])
            .arg(format!("{url}/v3/kv/range"))
            .output()
            .expect("curl")
    };
    let out = get(&two, &token);
    assert!(text(&out).contains("\"value\":\"MQ==\""), "{}", text(&out));
    // Tampered: another user in the payload, same signature.
    let parts: Vec<&str> = token.split('.').collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = String::from_utf8(b64.decode(parts[1]).expect("b64")).expect("utf8");
    let forged = b64.encode(payload.replace("root", "toor"));
    let out = get(&two, &format!("{}.{forged}.{}", parts[0], parts[2]));
    assert!(text(&out).contains("invalid auth token"), "{}", text(&out));
    // Issued before an auth change: refused as etcd refuses it, on reads too.
    c.ok(&[
        "--user=root:pw",
        "user",
        "add",
        "bob",
        "--new-user-password=x",
    ]);
    let out = get(&two, &token);
    assert!(
        text(&out).contains("revision of auth store is old"),
        "{}",
        text(&out)
    );
    // Expired (ttl=6s, counted from the login).
    std::thread::sleep(Duration::from_secs(7));
    let out = get(&two, &token);
    assert!(text(&out).contains("invalid auth token"), "{}", text(&out));
}

/// A single member with the given certificates, on its own ports.
struct Single {
    child: std::process::Child,
    client_port: u16,
    peer_port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Single {
    fn start(tls: &Tls, extra: &[&str]) -> Single {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client_port, peer_port) = (free_port(), free_port());
        let log = dir.path().join("single.log");
        let client_url = format!("https://127.0.0.1:{client_port}");
        let peer_url = format!("https://127.0.0.1:{peer_port}");
        let data = dir.path().join("data");
        let child = lone_member("single", &data, &client_url, &client_url, &peer_url)
            .args(tls.member_flags())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn");
        let single = Single {
            child,
            client_port,
            peer_port,
            log,
            _dir: dir,
        };
        let flags = tls.etcdctl_flags(&tls.client);
        eventually(30, "the single member serves", || {
            etcdctl(&single.url(), &flags, &["endpoint", "health"])
                .status
                .success()
        });
        single
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }
}

impl Drop for Single {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `strata` with `args` that must be refused at start: exit non-zero, one line on stderr
/// containing every one of `want`, and no data dir left behind.
fn refused(dir: &Path, args: &[&str], want: &[&str]) {
    let data = dir.join(format!("data-{}", free_port()));
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let out = lone_member("default", &data, &client_url, &client_url, &peer_url)
        .args(args)
        .output()
        .expect("strata");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .filter(|l| l.starts_with("strata:"))
        .collect::<Vec<_>>();
    assert!(!out.status.success(), "{args:?} started");
    assert_eq!(last.len(), 1, "one line for {args:?}:\n{stderr}");
    for w in want {
        assert!(last[0].contains(w), "{args:?}: {:?} lacks {w:?}", last[0]);
    }
    assert!(!data.exists(), "{args:?} left a data dir behind");
}

#[test]
fn bad_security_flags_are_one_line_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = Tls::new(dir.path());
    let (cert, key) = (
        tls.member.cert.display().to_string(),
        tls.member.key.display().to_string(),
    );
    let other_key = tls.client.key.display().to_string();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let empty = empty.display().to_string();
    refused(dir.path(), &[], &["--cert-file", "--key-file", "HTTPS"]);
    refused(
        dir.path(),
        &["--cert-file", "/nonexistent/cert.pem", "--key-file", &key],
        &["--cert-file", "/nonexistent/cert.pem", "cannot read"],
    );
    refused(
        dir.path(),
        &["--cert-file", &cert, "--key-file", &other_key],
        &["--key-file", &other_key, "does not match"],
    );
    refused(
        dir.path(),
        &[
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--trusted-ca-file",
            &empty,
        ],
        &["--trusted-ca-file", &empty, "no certificate"],
    );
    refused(
        dir.path(),
        &[
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--client-cert-auth",
        ],
        &["--client-cert-auth", "--trusted-ca-file"],
    );
    refused(
        dir.path(),
        &["--cert-file", &cert],
        &["--cert-file", "--key-file"],
    );
    refused(
        dir.path(),
        &[
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--tls-min-version",
            "TLS1.1",
        ],
        &["--tls-min-version", "TLS1.1"],
    );
    refused(
        dir.path(),
        &[
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--cipher-suites",
            "TLS_RSA_WITH_RC4_128_SHA",
        ],
        &["--cipher-suites", "TLS_RSA_WITH_RC4_128_SHA"],
    );
    refused(
        dir.path(),
        &[
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--auth-token",
            "jwt,sign-method=RS256",
        ],
        &["--auth-token", "pub-key"],
    );
}

/// Plaintext to a TLS port and TLS to a plain port (a member listening on both, as etcd
/// allows) are refused without harming the member.
#[test]
fn http_and_https_listeners_side_by_side() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = Tls::new(dir.path());
    let (plain, secure, peer) = (free_port(), free_port(), free_port());
    let log = dir.path().join("mixed.log");
    let listen = format!("http://127.0.0.1:{plain},https://127.0.0.1:{secure}");
    let advertise = format!("https://127.0.0.1:{secure}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let data = dir.path().join("data");
    let mut child = lone_member("mixed", &data, &listen, &advertise, &peer_url)
        .args(["--cert-file", &tls.member.cert.display().to_string()])
        .args(["--key-file", &tls.member.key.display().to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let https = format!("https://127.0.0.1:{secure}");
    let ca = vec![format!("--cacert={}", tls.pki.ca.display())];
    eventually(30, "the TLS listener serves", || {
        etcdctl(&https, &ca, &["put", "k", "v"]).status.success()
    });
    let tls_to_plain = Command::new("curl")
        .args([
            "-s",
            "-m",
            "3",
            "-k",
            &format!("https://127.0.0.1:{plain}/health"),
        ])
        .output()
        .expect("curl");
    assert!(!tls_to_plain.status.success(), "TLS to the plain port");
    let plain_to_tls = Command::new("curl")
        .args([
            "-s",
            "-m",
            "3",
            &format!("http://127.0.0.1:{secure}/health"),
        ])
        .output()
        .expect("curl");
    assert!(
        !String::from_utf8_lossy(&plain_to_tls.stdout).contains("true"),
        "plaintext to the TLS port"
    );
    let out = etcdctl(
        &format!("127.0.0.1:{plain}"),
        &[],
        &["get", "k", "--print-value-only"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "v",
        "the plain port still serves"
    );
    let out = etcdctl(&https, &ca, &["get", "k", "--print-value-only"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "v",
        "the TLS port still serves"
    );
    let _ = child.kill();
    let _ = child.wait();
}
