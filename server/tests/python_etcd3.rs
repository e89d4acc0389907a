//! The Python client applications use most, `etcd3` from PyPI (python-etcd3 0.12), against a
//! real 3-member cluster: put/get/delete, prefixes and ranges, txns and compare-and-swap, leases
//! (keep-alive, expiry), watches (live, from an old revision, once, callbacks, compacted),
//! locks contended from two members, members, status, alarms, compaction, defragment and hash.
//! The checks are in `tests/python/etcd3_client.py`; each prints `ok <what>`.
//!
//! The interpreter is `$STRATA_PYTHON`, else the venv `ci/setup.sh` makes at
//! `~/.cache/strata/venv`, else `python3`. Without one that can `import etcd3` the test says so
//! and passes: it checks compatibility with a client, not the server's own behaviour.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Cluster;

/// The first interpreter that has the etcd3 module, or why there is none.
fn python_with_etcd3() -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("STRATA_PYTHON") {
        candidates.push(p.into());
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/strata/venv/bin/python"));
    }
    candidates.push("python3".into());
    let mut tried = Vec::new();
    for python in candidates {
        let import = Command::new(&python)
            .args(["-c", "import etcd3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match import {
            Ok(status) if status.success() => return Ok(python),
            Ok(_) => tried.push(format!("{} has no etcd3 module", python.display())),
            Err(e) => tried.push(format!("{}: {e}", python.display())),
        }
    }
    Err(tried.join("; "))
}

#[test]
fn python_etcd3_client_works_against_a_cluster() {
    let python = match python_with_etcd3() {
        Ok(p) => p,
        Err(why) => {
            println!("SKIPPED python-etcd3 compatibility: {why} (run ci/setup.sh)");
            return;
        }
    };
    let c = Cluster::start(3);
    run_script(&python, &c, &[]);
}

/// The same client over TLS with a client certificate (etcd3's `ca_cert`, `cert_cert`,
/// `cert_key`), against members that require one: KV, leases (kept alive through any
/// member), watches and the cluster calls.
#[test]
fn python_etcd3_client_works_over_tls() {
    let python = match python_with_etcd3() {
        Ok(p) => p,
        Err(why) => {
            println!("SKIPPED python-etcd3 TLS compatibility: {why} (run ci/setup.sh)");
            return;
        }
    };
    let c = Cluster::start_tls(3, &[]);
    let tls = c.tls.as_ref().expect("tls");
    let env = [
        ("ETCD3_CA", tls.pki.ca.display().to_string()),
        ("ETCD3_CERT", tls.client.cert.display().to_string()),
        ("ETCD3_KEY", tls.client.key.display().to_string()),
        ("ETCD3_STEPS", "kv,txn,lease,watch,cluster".to_string()),
    ];
    run_script(&python, &c, &env);
}

fn run_script(python: &std::path::Path, c: &Cluster, env: &[(&str, String)]) {
    let endpoints: Vec<String> = c
        .members
        .iter()
        .map(|m| format!("127.0.0.1:{}", m.client_port))
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/etcd3_client.py");
    let log = c.dir.path().join("etcd3_client.log");
    let mut child = Command::new(python)
        .arg(script)
        .args(&endpoints)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("PYTHONUNBUFFERED", "1")
        .stdout(std::fs::File::create(&log).expect("log file"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the etcd3 script");
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "etcd3 script still running after 180 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&log).unwrap_or_default();
    let mut stderr = String::new();
    use std::io::Read as _;
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);
    println!("{} ({}):\n{stdout}", python.display(), script);
    assert!(
        status.success(),
        "etcd3 script failed ({status}):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all etcd3 checks passed"), "{stdout}");
}
