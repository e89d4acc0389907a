//! The real-process crash loop (issue 15): a member under write load is SIGKILLed at a random
//! moment, restarted from its data dir, and checked, again and again. RocksDB's C++ is the one
//! piece of storage code the simulator cannot run; this is where its crash behaviour meets
//! the storage logic's contract for real.
//!
//! After every restart:
//! - the member starts at all: the storage logic refuses a log that is not contiguous, whose
//!   terms go back, or whose commit index is past its end, so a start is that check passing;
//! - every write acknowledged before the kill is there, with the value and the revision it
//!   was acknowledged at;
//! - the store's revision is no lower than the highest acknowledged one.
//!
//! The member compacts its log every 50 entries, so kills land during log compactions too.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{runtime, Cluster};
use etcd_client::{Client, GetOptions};

const ROUNDS: u32 = 50;
const WRITERS: usize = 8;

/// (key, value, revision) of every acknowledged put.
type Acked = Arc<Mutex<Vec<(String, String, i64)>>>;

async fn connect(url: String) -> Client {
    let mut tries = 0;
    loop {
        match Client::connect([url.as_str()], None).await {
            Ok(c) => return c,
            Err(e) if tries < 50 => {
                tries += 1;
                let _ = e;
                tokio_real::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("connect {url}: {e}"),
        }
    }
}

/// Puts unique keys until the member dies, recording each acknowledged one.
async fn writer(url: String, round: u32, id: usize, acked: Acked) {
    let mut client = connect(url).await;
    for n in 0.. {
        let key = format!("crash/{round:03}/{id}/{n:05}");
        let value = format!("r{round}w{id}n{n}");
        match client.put(key.as_str(), value.as_str(), None).await {
            Ok(r) => {
                let revision = r.header().expect("put header").revision();
                acked.lock().expect("acked").push((key, value, revision));
            }
            Err(_) => return,
        }
    }
}

/// A small deterministic generator for the kill delays (the loop replays the same schedule).
fn next(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

#[test]
fn sigkill_under_writes_loses_no_acknowledged_write_fifty_times() {
    let mut c = Cluster::start_with(
        1,
        &[
            "--snapshot-count",
            "50",
            "--experimental-snapshot-catchup-entries",
            "10",
        ],
    );
    let rt = runtime();
    let url = c.client_urls()[0].clone();
    let acked: Acked = Arc::default();
    let mut seed = 0x5eed_u64;
    let mut highest = 0i64;
    for round in 0..ROUNDS {
        let writers: Vec<_> = (0..WRITERS)
            .map(|id| rt.spawn(writer(url.clone(), round, id, acked.clone())))
            .collect();
        std::thread::sleep(Duration::from_millis(100 + next(&mut seed) % 400));
        c.kill9(0);
        for w in writers {
            rt.block_on(w).expect("writer task");
        }
        c.restart(0);
        c.wait_ready();

        let acked_now = acked.lock().expect("acked").clone();
        let mut client = rt.block_on(connect(url.clone()));
        let all = rt
            .block_on(client.get("crash/", Some(GetOptions::new().with_prefix())))
            .unwrap_or_else(|e| panic!("round {round}: read after restart: {e}"));
        let revision = all.header().expect("header").revision();
        let stored: std::collections::HashMap<&[u8], (&[u8], i64)> = all
            .kvs()
            .iter()
            .map(|kv| (kv.key(), (kv.value(), kv.mod_revision())))
            .collect();
        for (key, value, rev) in &acked_now {
            let found = stored.get(key.as_bytes());
            assert_eq!(
                found,
                Some(&(value.as_bytes(), *rev)),
                "round {round}: acknowledged put of {key}={value} at revision {rev} lost or changed after SIGKILL"
            );
            highest = highest.max(*rev);
        }
        assert!(
            revision >= highest,
            "round {round}: the store restarted at revision {revision}, below the acknowledged {highest}"
        );
    }
    let total = acked.lock().expect("acked").len();
    println!("{ROUNDS} SIGKILLs, {total} acknowledged puts checked after each, highest revision {highest}");
    assert!(
        total > ROUNDS as usize * WRITERS,
        "the writers were acknowledged only {total} times in {ROUNDS} rounds: the loop tested little"
    );
}
