//! The HTTP/JSON gateway as etcd users call it: `curl` against a real single-member `strata`
//! on loopback, plain HTTP/1.1, JSON in and out. Each test starts its own member; the member
//! is killed when the test ends, pass or fail.

#![cfg(not(madsim))]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

/// Long enough for a member to elect itself on a loaded 2-core machine; only failures wait it.
const DEADLINE: Duration = Duration::from_secs(30);

struct Member {
    child: Child,
    url: String,
    peer_url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use common::free_port;

impl Member {
    fn start() -> Member {
        let dir = tempfile::tempdir().expect("temp dir");
        let client = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("ETCD_")) {
            cmd.env_remove(k);
        }
        let child = cmd
            .args(["--name", "gw"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("gw={peer}")])
            .args(["--log-level", "info"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("strata.log")).expect("log file"))
            .spawn()
            .expect("start strata");
        let mut member = Member {
            child,
            url: client,
            peer_url: peer,
            _dir: dir,
        };
        member.wait_healthy();
        member
    }

    fn wait_healthy(&mut self) {
        let began = Instant::now();
        loop {
            let out = curl(&[&format!("{}/health", self.url)]);
            if out.contains(r#""health":"true""#) {
                return;
            }
            let log = || std::fs::read_to_string(self._dir.path().join("strata.log"));
            if let Some(exit) = self.child.try_wait().expect("poll strata") {
                panic!("strata at {} exited with {exit}: {:?}", self.url, log());
            }
            assert!(
                began.elapsed() < DEADLINE,
                "member at {} not healthy after {DEADLINE:?}: {out} {:?}",
                self.url,
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `curl -X POST <path> -d <body>`: the HTTP status and the body.
    fn post_raw(&self, path: &str, body: &str) -> (u16, String) {
        let url = format!("{}{path}", self.url);
        let out = curl(&["-X", "POST", &url, "-d", body, "-w", "\n%{http_code}"]);
        let (body, code) = out.rsplit_once('\n').expect("curl wrote the status");
        (code.parse().expect("an HTTP status"), body.to_string())
    }

    /// A call that must succeed; its JSON answer.
    fn post(&self, path: &str, body: Value) -> Value {
        let (code, text) = self.post_raw(path, &body.to_string());
        assert_eq!(code, 200, "POST {path} {body}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: {e}: {text}"))
    }

    fn put(&self, key: &str, value: &str) -> Value {
        self.post("/v3/kv/put", json!({"key": b64(key), "value": b64(value)}))
    }

    fn get(&self, key: &str) -> Value {
        self.post("/v3/kv/range", json!({"key": b64(key)}))
    }

    /// A streaming call: its answer lines as they come, read by a thread so a missing line
    /// fails the test after [`DEADLINE`] instead of hanging it.
    fn stream(&self, path: &str, body: &str) -> Lines {
        let mut child = Command::new("curl")
            .args(["-sS", "-N", "-X", "POST", &format!("{}{path}", self.url)])
            .args(["-d", body])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run curl");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { child, rx }
    }
}

struct Lines {
    child: Child,
    rx: mpsc::Receiver<String>,
}

impl Lines {
    fn next(&self) -> Value {
        let line = self
            .rx
            .recv_timeout(DEADLINE)
            .expect("a streamed line within the deadline");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Every line, once the server ends the stream.
    fn rest(self) -> Vec<Value> {
        let mut all = vec![];
        while let Ok(line) = self.rx.recv_timeout(DEADLINE) {
            all.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
        }
        all
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("run curl (is it installed?)");
    String::from_utf8(out.stdout).expect("UTF-8 answer")
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

/// An int64 field as etcd writes it: a decimal string; absent means 0.
fn int(v: &Value) -> i64 {
    match v {
        Value::Null => 0,
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not an int64: {s}")),
        other => panic!("int64 not written as a string: {other}"),
    }
}

fn revision(v: &Value) -> i64 {
    int(&v["header"]["revision"])
}

#[test]
fn kv_put_range_delete_txn_and_compaction() {
    let m = Member::start();
    let put = m.put("foo", "bar");
    let rev = revision(&put);
    assert!(rev >= 2, "{put}");

    let got = m.get("foo");
    assert_eq!(int(&got["count"]), 1);
    let kv = &got["kvs"][0];
    assert_eq!(kv["key"], b64("foo"));
    assert_eq!(kv["value"], b64("bar"));
    assert_eq!(int(&kv["mod_revision"]), rev);
    assert_eq!(int(&kv["version"]), 1);
    assert!(kv.get("lease").is_none(), "defaults are omitted: {kv}");

    // lowerCamel input, limit as a number, prefix range.
    m.put("foo2", "x");
    let both = m.post(
        "/v3/kv/range",
        json!({"key": b64("foo"), "rangeEnd": b64("fop"), "keysOnly": true, "limit": 5}),
    );
    assert_eq!(int(&both["count"]), 2);
    assert!(both["kvs"][1].get("value").is_none(), "{both}");

    // A compare that holds takes the success branch; then it no longer holds.
    let txn = json!({
        "compare": [{"key": b64("foo"), "result": "EQUAL", "target": "VALUE", "value": b64("bar")}],
        "success": [{"request_put": {"key": b64("foo"), "value": b64("baz")}}],
        "failure": [{"request_range": {"key": b64("foo")}}],
    });
    let first = m.post("/v3/kv/txn", txn.clone());
    assert_eq!(first["succeeded"], true, "{first}");
    assert!(first["responses"][0]["response_put"].is_object(), "{first}");
    let second = m.post("/v3/kv/txn", txn);
    assert!(
        second.get("succeeded").is_none(),
        "false is omitted: {second}"
    );
    let kvs = &second["responses"][0]["response_range"]["kvs"];
    assert_eq!(kvs[0]["value"], b64("baz"), "{second}");

    let del = m.post(
        "/v3/kv/deleterange",
        json!({"key": b64("foo2"), "prev_kv": true}),
    );
    assert_eq!(int(&del["deleted"]), 1);
    assert_eq!(del["prev_kvs"][0]["value"], b64("x"));
    assert!(m.get("foo2").get("kvs").is_none());

    let now = revision(&m.get("foo"));
    m.post("/v3/kv/compaction", json!({"revision": now.to_string()}));
    let (code, text) = m.post_raw(
        "/v3/kv/range",
        &json!({"key": b64("foo"), "revision": rev}).to_string(),
    );
    assert_eq!(code, 400, "{text}");
    let err: Value = serde_json::from_str(&text).unwrap();
    let msg = "etcdserver: mvcc: required revision has been compacted";
    assert_eq!(err, json!({"error": msg, "code": 11, "message": msg}));
}

#[test]
fn lease_grant_keepalive_timetolive_revoke() {
    let m = Member::start();
    let grant = m.post("/v3/lease/grant", json!({"TTL": 60}));
    let id = int(&grant["ID"]);
    assert!(id > 0, "{grant}");
    assert_eq!(int(&grant["TTL"]), 60);
    m.post(
        "/v3/kv/put",
        json!({"key": b64("leased"), "value": b64("v"), "lease": id.to_string()}),
    );

    // Two keep-alives in one body: two answers, then the stream ends (the body half-closed).
    let body = format!(r#"{{"ID":"{id}"}} {{"ID":{id}}}"#);
    let answers = m.stream("/v3/lease/keepalive", &body).rest();
    assert_eq!(answers.len(), 2, "{answers:?}");
    for a in &answers {
        assert_eq!(int(&a["result"]["ID"]), id);
        assert_eq!(int(&a["result"]["TTL"]), 60);
    }

    let ttl = m.post("/v3/lease/timetolive", json!({"ID": id, "keys": true}));
    assert_eq!(int(&ttl["grantedTTL"]), 60);
    assert_eq!(ttl["keys"], json!([b64("leased")]));
    let listed = m.post("/v3/lease/leases", json!({}));
    assert_eq!(int(&listed["leases"][0]["ID"]), id);
    // etcd's old path for the same call.
    let old = m.post("/v3/kv/lease/timetolive", json!({"ID": id}));
    assert_eq!(int(&old["ID"]), id);

    m.post("/v3/lease/revoke", json!({"ID": id}));
    assert!(
        m.get("leased").get("kvs").is_none(),
        "revoke deletes the key"
    );
    let gone = m.post("/v3/lease/timetolive", json!({"ID": id}));
    assert_eq!(int(&gone["TTL"]), -1);
}

#[test]
fn watch_streams_one_line_per_response() {
    let m = Member::start();
    let start = revision(&m.put("w", "0")) + 1;
    let watch = m.stream(
        "/v3/watch",
        &json!({"create_request": {"key": b64("w"), "start_revision": start}}).to_string(),
    );
    let created = watch.next();
    assert_eq!(created["result"]["created"], true, "{created}");

    // The body has ended, yet the watch lives on until the client leaves, as in etcd.
    let rev = revision(&m.put("w", "1"));
    let event = watch.next();
    let ev = &event["result"]["events"][0];
    assert!(ev.get("type").is_none(), "PUT is the default: {event}");
    assert_eq!(ev["kv"]["value"], b64("1"));
    assert_eq!(int(&ev["kv"]["mod_revision"]), rev);

    m.post("/v3/kv/deleterange", json!({"key": b64("w")}));
    let deleted = watch.next();
    assert_eq!(
        deleted["result"]["events"][0]["type"], "DELETE",
        "{deleted}"
    );
}

#[test]
fn cluster_and_maintenance() {
    let m = Member::start();
    let members = m.post("/v3/cluster/member/list", json!({}));
    let me = &members["members"][0];
    assert_eq!(me["name"], "gw");
    assert_eq!(me["peerURLs"], json!([m.peer_url]), "{members}");
    assert_eq!(me["ID"], members["header"]["member_id"]);

    let status = m.post("/v3/maintenance/status", json!({}));
    assert_eq!(status["leader"], me["ID"], "{status}");
    assert!(int(&status["dbSize"]) > 0);

    let alarms = m.post("/v3/maintenance/alarm", json!({"action": "GET"}));
    assert!(alarms.get("alarms").is_none(), "no alarm raised: {alarms}");
    // Enum numbers are accepted as well as names (0 = GET).
    m.post("/v3/maintenance/alarm", json!({"action": 0}));

    let hash = m.post("/v3/maintenance/hash", json!({}));
    assert!(hash["hash"].is_u64(), "uint32 stays a number: {hash}");
    let rev = revision(&m.put("k", "v"));
    let hashkv = m.post("/v3/maintenance/hashkv", json!({"revision": rev}));
    assert_eq!(int(&hashkv["hash_revision"]), rev, "{hashkv}");
    m.post("/v3/maintenance/defragment", json!({}));

    let snapshot = m.stream("/v3/maintenance/snapshot", "{}").rest();
    assert!(!snapshot.is_empty());
    assert!(snapshot.iter().all(|l| l["result"]["blob"].is_string()));
    let last = &snapshot[snapshot.len() - 1]["result"];
    assert!(last.get("remaining_bytes").is_none(), "{last}");
}

#[test]
fn errors_are_grpc_gateway_shaped_and_change_nothing() {
    let m = Member::start();
    let before = revision(&m.put("e", "0"));

    let (code, text) = m.post_raw("/v3/kv/put", r#"{"key": "ZQ==", "value": "#);
    assert_eq!(code, 400, "{text}");
    let err: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(err["code"], 3, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON"),
        "{err}"
    );
    let (code, text) = m.post_raw("/v3/kv/put", r#"{"key": "ZQ==", "lease": "soon"}"#);
    assert_eq!(code, 400, "{text}");
    assert_eq!(
        revision(&m.get("e")),
        before,
        "a refused request wrote nothing"
    );

    let (code, text) = m.post_raw("/v3/kv/no-such-call", "{}");
    assert_eq!((code, text.as_str()), (404, "Not Found\n"));
    let got = curl(&[&format!("{}/v3/kv/range", m.url), "-w", "%{http_code}"]);
    assert_eq!(got, "Method Not Allowed\n405");

    // An empty body is the empty request: an empty key is refused by the server itself.
    let (code, text) = m.post_raw("/v3/kv/put", "");
    assert_eq!(code, 400, "{text}");
    let err: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(err["error"], "etcdserver: key is not provided");
    assert_eq!(err["code"], 3);

    // A future revision is out of range.
    let (code, text) = m.post_raw(
        "/v3/kv/range",
        &json!({"key": b64("e"), "revision": before + 100}).to_string(),
    );
    assert_eq!(code, 400, "{text}");
    let err: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        err["error"],
        "etcdserver: mvcc: required revision is a future revision"
    );
    assert_eq!(err["code"], 11);
}
