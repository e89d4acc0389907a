//! One run: a scenario and a seed, simulated start to end, judged by every checker.
//!
//! Phases, on one simulated clock:
//! 1. bootstrap the voters; add the scenario's initial learners once a leader exists;
//! 2. workload clients and watchers start; the nemesis plays the timeline until `duration`;
//! 3. heal: every fault ends; clients go on for `checks.liveness` (the liveness window);
//! 4. settle for `checks.settle`, then read every key from every running member and take
//!    `HashKV` at a common revision;
//! 5. the checkers judge the history.
//!
//! Determinism: everything random comes from madsim's RNG, seeded by the run's seed; the
//! trace hash covers the whole history (every op with its simulated times, every watch
//! response, every raft observation) and the nemesis log, so two runs of one seed match
//! only if they behaved identically.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use strata_engine::bugs::Bug;

use crate::check;
use crate::client::{self, ClientPlan, WatcherPlan};
use crate::cluster::Members;
use crate::history::{History, Outcome, Violation};
use crate::nemesis::Nemesis;
use crate::recorder::Recorder;
use crate::scenario::Scenario;

static TRACE_HASH: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_ECMA_182);

#[derive(Debug)]
pub struct RunReport {
    pub name: String,
    pub seed: u64,
    pub trace_hash: u64,
    pub violations: Vec<Violation>,
    /// Simulated time covered.
    pub simulated: Duration,
    pub wall: Duration,
    pub ops: usize,
    pub ops_ok: usize,
    pub watch_events: usize,
    pub log: Vec<String>,
    pub history: History,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The whole trace as text: the nemesis log, then every op, watch and raft record.
    pub fn trace(&self) -> String {
        let mut out = format!(
            "scenario {} seed {} trace {:016x}\n\n== log\n",
            self.name, self.seed, self.trace_hash
        );
        for l in &self.log {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("\n== violations\n");
        for v in &self.violations {
            out.push_str(&format!("[{}] {}\n", v.checker, v.message));
        }
        out.push_str("\n== ops\n");
        for op in &self.history.ops {
            out.push_str(&format!("{op:?}\n"));
        }
        out.push_str("\n== watches\n");
        for w in &self.history.watches {
            out.push_str(&format!("{w:?}\n"));
        }
        out.push_str("\n== raft\n");
        for r in &self.history.raft {
            out.push_str(&format!("{r:?}\n"));
        }
        out
    }
}

/// Simulates `scenario` with `seed` and judges it.
pub fn run(scenario: &Scenario, seed: u64) -> RunReport {
    run_with(scenario, seed, None)
}

/// [`run`] with one bug of the catalogue injected into every member.
///
/// Each run gets a thread of its own. The standard library seeds `HashMap`s from per-thread
/// keys drawn once and then stepped at every new map, so a run sharing a thread with earlier
/// runs would iterate its maps in an order that depends on them: swarm seed 1121 failed
/// after 120 others and passed alone. A fresh thread draws its keys inside the runtime, from
/// the run's seed.
pub fn run_with(scenario: &Scenario, seed: u64, bug: Option<Bug>) -> RunReport {
    let scenario = scenario.clone();
    std::thread::Builder::new()
        .name(format!("sim-{}-{seed}", scenario.name))
        .stack_size(RUN_STACK)
        .spawn(move || run_on_this_thread(&scenario, seed, bug))
        .expect("spawn the run's thread")
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// The run thread's stack: the simulated cluster's tasks all poll on it.
const RUN_STACK: usize = 64 << 20;

fn run_on_this_thread(scenario: &Scenario, seed: u64, bug: Option<Bug>) -> RunReport {
    let wall = Instant::now();
    let total = scenario.duration.0 + scenario.checks.liveness.0 + scenario.checks.settle.0;
    let mut rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    // A run that cannot finish (a hang) fails instead of spinning forever.
    rt.set_time_limit(total + Duration::from_secs(120));
    let s = scenario.clone();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(drive_with(s, bug))));
    drop(rt);
    let (history, mut log, panic) = match outcome {
        Ok((h, l)) => (h, l, None),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            (History::default(), vec![], Some(msg))
        }
    };
    let mut violations = match &panic {
        None => check::check_all(&history),
        Some(_) => vec![],
    };
    if let Some(msg) = panic {
        log.push(format!("the simulation panicked: {msg}"));
        violations.push(Violation {
            checker: "panic",
            message: msg,
        });
    }
    let mut digest = TRACE_HASH.digest();
    digest.update(format!("{history:?}").as_bytes());
    for l in &log {
        digest.update(l.as_bytes());
    }
    let ops_ok = history
        .ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
        .count();
    RunReport {
        name: scenario.name.clone(),
        seed,
        trace_hash: digest.finalize(),
        violations,
        simulated: total,
        wall: wall.elapsed(),
        ops: history.ops.len(),
        ops_ok,
        watch_events: history
            .watches
            .iter()
            .flat_map(|w| &w.responses)
            .map(|r| r.events.len())
            .sum(),
        log,
        history,
    }
}

/// The simulated part of a run, inside a madsim runtime (for `#[madsim::test]`).
pub async fn drive(s: Scenario) -> (History, Vec<String>) {
    drive_with(s, None).await
}

async fn drive_with(s: Scenario, bug: Option<Bug>) -> (History, Vec<String>) {
    let rec = Recorder::new();
    let t0 = tokio::time::Instant::now();
    rec.with_history(|h| {
        h.bounds.election_timeout = s.cluster.election_timeout.as_nanos();
        h.bounds.liveness = s.checks.liveness.as_nanos();
    });
    let mut members = Members::new(&s, rec.clone(), bug);
    members.bootstrap();
    let mut nemesis = Nemesis::new(members, rec.clone(), s.workload.lease_ttl_secs);

    let handle = madsim::runtime::Handle::current();
    let stop_at = t0 + s.duration.0 + s.checks.liveness.0;
    let addressable = s.cluster.voters + s.cluster.learners;
    let mut tasks = Vec::new();
    for c in 0..s.workload.clients {
        let node = handle
            .create_node()
            .name(format!("client{c}"))
            .ip(format!("10.0.1.{}", c + 1).parse().expect("ip"))
            .build();
        tasks.push(node.spawn(client::client_main(ClientPlan {
            id: c,
            members: s.cluster.voters,
            workload: s.workload.clone(),
            stop_at: s.workload.stop.map_or(stop_at, |stop| t0 + stop.0),
            recorder: rec.clone(),
        })));
    }
    let mix = &s.workload.mix;
    let auditor = (mix.lock > 0 || mix.election > 0).then_some(s.workload.watchers);
    for w in (0..s.workload.watchers).chain(auditor) {
        let node = handle
            .create_node()
            .name(format!("watcher{w}"))
            .ip(format!("10.0.3.{}", w + 1).parse().expect("ip"))
            .build();
        let (start, end) = if Some(w) == auditor {
            (client::MUTEX_START, client::MUTEX_END)
        } else {
            (client::KEYS_START, client::KEYS_END)
        };
        tasks.push(node.spawn(client::watcher_main(WatcherPlan {
            id: w,
            members: addressable,
            start: start.to_vec(),
            end: end.to_vec(),
            prev_kv: s.workload.watch_prev_kv || Some(w) == auditor,
            filter_deletes: s.workload.watch_prev_kv && w % 2 == 1 && Some(w) != auditor,
            progress_notify: s.workload.watch_progress_notify,
            silence: s.workload.timeout.0,
            stop_at,
            recorder: rec.clone(),
        })));
    }

    if s.cluster.learners > 0 {
        // Learners join once the cluster has a leader to add them.
        tokio::time::sleep(s.cluster.election_timeout.0 * 3).await;
        for _ in 0..s.cluster.learners {
            nemesis.apply(&crate::scenario::Fault::AddLearner).await;
        }
    }
    for t in &s.timeline() {
        tokio::time::sleep_until(t0 + t.at.0).await;
        nemesis.apply(&t.fault).await;
    }
    tokio::time::sleep_until(t0 + s.duration.0).await;
    nemesis.heal();
    let healed = rec.now();
    rec.with_history(|h| h.healed_at = Some(healed));

    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(s.checks.settle.0).await;
    final_checks(&nemesis, &rec).await;
    rec.finish()
}

/// Reads every key from every running member at the lowest revision they all have (a lease
/// expiring during the reads must not look like divergence), and `HashKV` there.
async fn final_checks(nemesis: &Nemesis, rec: &Recorder) {
    let members = &nemesis.members;
    let running: Vec<u32> = members
        .present()
        .into_iter()
        .filter(|ix| members.is_running(*ix))
        .collect();
    let reader = madsim::runtime::Handle::current()
        .create_node()
        .name("final-reader")
        .ip("10.0.2.2".parse().expect("ip"))
        .build();
    let timeout = Duration::from_secs(5);
    let mut revisions = Vec::new();
    for &ix in &running {
        let read = reader
            .spawn(client::final_read(ix, 0, timeout))
            .await
            .ok()
            .flatten();
        match read {
            Some((rev, _)) => {
                revisions.push(rev);
                rec.with_history(|h| {
                    h.final_revisions.insert(ix, rev);
                });
            }
            None => rec.log(format!("final read of s{ix} got no answer")),
        }
    }
    let Some(&common) = revisions.iter().min() else {
        return;
    };
    for &ix in &running {
        let read = reader
            .spawn(client::final_read(ix, common, timeout))
            .await
            .ok()
            .flatten();
        match read {
            Some((_, kvs)) => rec.with_history(|h| {
                h.final_reads.insert(ix, kvs);
            }),
            None => rec.log(format!(
                "final read of s{ix} at revision {common} got no answer"
            )),
        }
    }
    for &ix in &running {
        let hash = reader
            .spawn(client::hash_kv(ix, common, timeout))
            .await
            .ok()
            .flatten();
        if let Some(h) = hash {
            rec.with_history(|hist| {
                hist.final_hashes.insert(ix, h);
            });
        }
    }
}
