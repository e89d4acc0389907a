//! Crash faults on real processes, driven by the `etcd-client` crate: SIGKILL of the leader
//! under load, and of the whole cluster, must lose no acknowledged write; a new leader must
//! serve within a few election timeouts. Also the crate's view of each service.

mod common;

use std::time::{Duration, Instant};

use common::{runtime, Cluster};
use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};

async fn connect(c: &Cluster) -> Client {
    Client::connect(c.client_urls(), None)
        .await
        .expect("connect etcd-client")
}

/// Reads every key linearizably and checks each acknowledged value is there.
async fn assert_all_present(client: &mut Client, acked: &[(String, String)]) {
    for (k, v) in acked {
        let mut tries = 0;
        let resp = loop {
            match client.get(k.as_str(), None).await {
                Ok(r) => break r,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio_real::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("read {k}: {e}"),
            }
        };
        let got = resp
            .kvs()
            .first()
            .map(|kv| kv.value_str().unwrap_or("").to_string());
        assert_eq!(
            got.as_deref(),
            Some(v.as_str()),
            "acknowledged write {k} lost"
        );
    }
}

#[test]
fn leader_sigkill_under_load_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3);
    let leader = c.leader();
    let rt = runtime();
    let mut client = rt.block_on(connect(&c));
    let mut acked = Vec::new();
    let mut i = 0u32;
    // Load before the crash.
    while acked.len() < 100 {
        let (k, v) = (format!("load/{i:05}"), format!("v{i}"));
        i += 1;
        if rt
            .block_on(client.put(k.as_str(), v.as_str(), None))
            .is_ok()
        {
            acked.push((k, v));
        }
    }
    c.kill9(leader);
    let killed = Instant::now();
    let mut first_after: Option<Duration> = None;
    while acked.len() < 200 {
        let (k, v) = (format!("load/{i:05}"), format!("v{i}"));
        i += 1;
        match rt.block_on(client.put(k.as_str(), v.as_str(), None)) {
            Ok(_) => {
                first_after.get_or_insert(killed.elapsed());
                acked.push((k, v));
            }
            Err(_) => {
                assert!(
                    killed.elapsed() < Duration::from_secs(30),
                    "cluster never recovered"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    // Liveness, not speed: etcd's default election timeout is 1 s.
    let recovered = first_after.expect("writes resumed");
    assert!(
        recovered < Duration::from_secs(15),
        "took {recovered:?} to serve again"
    );
    rt.block_on(assert_all_present(&mut client, &acked));
    // The killed member restarts from its data dir and catches up.
    c.restart(leader);
    c.wait_ready();
    let out = c.etcdctl_at(
        &c.members[leader].endpoint(),
        &["get", "load/", "--prefix", "--keys-only", "-w", "json"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let count: usize = text
        .split("\"count\":")
        .nth(1)
        .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    assert!(
        count >= acked.len(),
        "restarted member sees {count} keys: {text}"
    );
}

#[test]
fn whole_cluster_kill9_and_restart_keeps_every_acknowledged_write() {
    let mut c = Cluster::start(3);
    let rt = runtime();
    let mut client = rt.block_on(connect(&c));
    let mut acked = Vec::new();
    for i in 0..150 {
        let (k, v) = (format!("durable/{i:04}"), format!("v{i}"));
        rt.block_on(client.put(k.as_str(), v.as_str(), None))
            .expect("put on a healthy cluster");
        acked.push((k, v));
    }
    drop(client);
    for i in 0..3 {
        c.kill9(i);
    }
    for i in 0..3 {
        c.restart(i);
    }
    c.wait_ready();
    let mut client = rt.block_on(connect(&c));
    rt.block_on(assert_all_present(&mut client, &acked));
    // And it keeps taking writes at later revisions.
    let resp = rt
        .block_on(client.put("after-restart", "ok", None))
        .expect("write after restart");
    assert!(resp.header().expect("header").revision() > 150);
}

#[test]
fn etcd_client_crate_sees_etcd_semantics() {
    let c = Cluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        let mut client = connect(&c).await;
        let put = client.put("a", "1", None).await.expect("put");
        let rev = put.header().expect("header").revision();
        client.put("a", "2", None).await.expect("put");
        // Txn with a compare on the value.
        let txn = Txn::new()
            .when([Compare::value("a", CompareOp::Equal, "2")])
            .and_then([TxnOp::put("b", "from-txn", None)])
            .or_else([TxnOp::put("b", "else", None)]);
        let resp = client.txn(txn).await.expect("txn");
        assert!(resp.succeeded());
        let got = client.get("b", None).await.expect("get");
        assert_eq!(got.kvs()[0].value_str().expect("utf-8"), "from-txn");
        let got = client
            .get(
                "",
                Some(GetOptions::new().with_from_key().with_count_only()),
            )
            .await
            .expect("count");
        assert_eq!(got.count(), 2);

        // Watch from an old revision, then a live event.
        let mut stream = client
            .watch("a", Some(WatchOptions::new().with_start_revision(rev)))
            .await
            .expect("watch");
        let mut values = Vec::new();
        while values.len() < 2 {
            let resp = stream.message().await.expect("watch stream").expect("open");
            for ev in resp.events() {
                assert_eq!(ev.event_type(), EventType::Put);
                values.push(ev.kv().expect("kv").value_str().expect("utf-8").to_string());
            }
        }
        assert_eq!(values, ["1", "2"]);
        client.delete("a", None).await.expect("delete");
        loop {
            let resp = stream.message().await.expect("watch stream").expect("open");
            if let Some(ev) = resp.events().first() {
                assert_eq!(ev.event_type(), EventType::Delete);
                break;
            }
        }

        // Lease grant, keep-alive over the stream, time-to-live, revoke.
        let lease = client.lease_grant(30, None).await.expect("grant");
        let (mut keeper, mut answers) = client
            .lease_keep_alive(lease.id())
            .await
            .expect("keepalive");
        keeper.keep_alive().await.expect("send keepalive");
        let ka = answers
            .message()
            .await
            .expect("keepalive stream")
            .expect("answer");
        assert_eq!(ka.ttl(), 30);
        let ttl = client
            .lease_time_to_live(lease.id(), None)
            .await
            .expect("ttl");
        assert_eq!(ttl.granted_ttl(), 30);
        client.lease_revoke(lease.id()).await.expect("revoke");
        let err = client
            .lease_revoke(lease.id())
            .await
            .expect_err("revoked twice");
        assert!(
            err.to_string().contains("requested lease not found"),
            "{err}"
        );

        // Cluster and maintenance.
        let members = client.member_list().await.expect("member list");
        assert_eq!(members.members().len(), 3);
        let status = client.status().await.expect("status");
        assert_eq!(status.version(), "3.6.0");
        let alarms = client
            .alarm(
                etcd_client::AlarmAction::Get,
                etcd_client::AlarmType::None,
                None,
            )
            .await
            .expect("alarm list");
        assert!(alarms.alarms().is_empty());
        let hash = client.hash_kv(0).await.expect("hashkv");
        assert!(hash.hash() != 0);
        let started = Instant::now();
        client.compact(rev, None).await.expect("compact");
        let err = client
            .get("a", Some(GetOptions::new().with_revision(rev - 1)))
            .await
            .expect_err("compacted");
        assert!(
            err.to_string()
                .contains("required revision has been compacted"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    });
}
