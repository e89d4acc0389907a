//! Shrinking: reduce a failing (scenario, seed) to a minimal scenario that still fails the
//! same checker with the same seed — fewer faults, clients, watchers, keys, operation kinds,
//! members and a shorter timeline — and write it as a scenario file.
//!
//! Greedy delta-debugging: try one reduction at a time, keep it if the run still fails the
//! same checker, repeat until no reduction helps (or the run budget is spent). Every
//! candidate is a valid scenario and every kept step replays bit-exact from the seed, so the
//! result is a plain scenario file anyone can run.

use strata_engine::bugs::Bug;

use crate::run::run_with;
use crate::scenario::{Fault, Scenario, Span};

/// Most simulated runs one shrink may spend.
const BUDGET: usize = 400;

/// The smaller variants of `s` to try, most aggressive first.
fn candidates(s: &Scenario) -> Vec<Scenario> {
    let mut out = Vec::new();
    let mut with = |f: &dyn Fn(&mut Scenario)| {
        let mut c = s.clone();
        f(&mut c);
        if c != *s && c.validate().is_ok() {
            out.push(c);
        }
    };
    // Drop half the faults, then single faults, latest first.
    let n = s.faults.len();
    if n >= 4 {
        with(&|c| c.faults.truncate(n / 2));
        with(&|c| {
            c.faults.drain(..n / 2);
        });
    }
    for i in (0..n).rev() {
        with(&|c| {
            c.faults.remove(i);
        });
    }
    // A shorter timeline: just past the last fault, or half.
    let last = s.faults.iter().map(|t| t.at).max().unwrap_or_default();
    let tight = Span(last.0 + std::time::Duration::from_secs(1));
    if tight < s.duration {
        with(&|c| c.duration = tight);
    }
    let half = Span(s.duration.0 / 2);
    if half >= last && half.0.as_secs() >= 2 {
        with(&|c| c.duration = half);
    }
    // Fewer of everything.
    if s.workload.clients > 1 {
        with(&|c| c.workload.clients = 1);
        with(&|c| c.workload.clients -= 1);
    }
    if s.workload.watchers > 0 {
        with(&|c| c.workload.watchers = 0);
        with(&|c| c.workload.watchers -= 1);
    }
    if s.workload.keys > 1 {
        with(&|c| c.workload.keys = 1);
        with(&|c| c.workload.keys -= 1);
    }
    let m = &s.workload.mix;
    let weights = [
        m.get,
        m.serializable_get,
        m.put,
        m.delete,
        m.cas,
        m.multi_put,
        m.range,
        m.lease_put,
        m.compare_txn,
        m.historical_read,
    ];
    for (i, w) in weights.iter().enumerate() {
        if *w == 0 {
            continue;
        }
        with(&|c| {
            let m = &mut c.workload.mix;
            let slot = [
                &mut m.get,
                &mut m.serializable_get,
                &mut m.put,
                &mut m.delete,
                &mut m.cas,
                &mut m.multi_put,
                &mut m.range,
                &mut m.lease_put,
                &mut m.compare_txn,
                &mut m.historical_read,
            ];
            *slot.into_iter().nth(i).expect("ten weights") = 0;
        });
    }
    if s.cluster.voters > 1 {
        let fewer = if s.cluster.voters > 3 { 3 } else { 1 };
        let fits = s.faults.iter().all(|t| fault_fits(&t.fault, fewer));
        if fits {
            with(&|c| c.cluster.voters = fewer);
        }
    }
    if s.cluster.learners > 0 {
        with(&|c| c.cluster.learners -= 1);
    }
    out
}

fn fault_fits(f: &Fault, voters: u32) -> bool {
    f.indexes().iter().all(|i| *i < voters)
}

/// The outcome of a shrink.
pub struct Shrunk {
    pub scenario: Scenario,
    pub checker: &'static str,
    pub runs: usize,
}

/// Shrinks `s` failing with `seed` (and `bug` injected, if any); `None` if it does not fail.
pub fn shrink(
    s: &Scenario,
    seed: u64,
    bug: Option<Bug>,
    mut on_step: impl FnMut(&str),
) -> Option<Shrunk> {
    let first = run_with(s, seed, bug);
    let checker = first.violations.first()?.checker;
    let mut best = s.clone();
    let mut runs = 1;
    'outer: loop {
        for c in candidates(&best) {
            if runs >= BUDGET {
                on_step("run budget spent");
                break 'outer;
            }
            runs += 1;
            let r = run_with(&c, seed, bug);
            if r.violations.iter().any(|v| v.checker == checker) {
                on_step(&format!(
                    "still fails [{checker}] with {} faults, {} clients, {} watchers, {} keys, {} voters, {}",
                    c.faults.len(),
                    c.workload.clients,
                    c.workload.watchers,
                    c.workload.keys,
                    c.cluster.voters,
                    c.duration
                ));
                best = c;
                continue 'outer;
            }
        }
        break;
    }
    Some(Shrunk {
        scenario: best,
        checker,
        runs,
    })
}

pub fn shrink_cli(
    s: &Scenario,
    source: &str,
    seed: u64,
    bug: Option<Bug>,
    out: Option<String>,
) -> i32 {
    let with_bug = bug
        .map(|b| format!(" --bug {}", b.name()))
        .unwrap_or_default();
    println!("shrinking {source} seed {seed}{with_bug} …");
    let Some(shrunk) = shrink(s, seed, bug, |step| println!("  {step}")) else {
        println!("{source} seed {seed}{with_bug} passes: nothing to shrink");
        return 0;
    };
    let mut min = shrunk.scenario;
    min.name = format!("shrunk-{}-{seed}", s.name);
    min.seeds = vec![seed];
    min.story = format!(
        "Shrunk by `strata-sim shrink {source} --seed {seed}{with_bug}` in {} runs: still \
         fails the `{}` checker with seed {seed}.\n\nOriginal story:\n{}",
        shrunk.runs, shrunk.checker, s.story
    );
    let path = out.unwrap_or_else(|| {
        let dir =
            std::env::var("STRATA_SIM_TRACE_DIR").unwrap_or_else(|_| "target/sim-traces".into());
        let _ = std::fs::create_dir_all(&dir);
        format!("{dir}/{}.toml", min.name)
    });
    if let Err(e) = std::fs::write(&path, min.to_file()) {
        eprintln!("{path}: {e}");
        return 2;
    }
    println!(
        "minimal scenario: {path} ({} → {} faults, {} → {} clients, {} → {} voters, {} → {})",
        s.faults.len(),
        min.faults.len(),
        s.workload.clients,
        min.workload.clients,
        s.cluster.voters,
        min.cluster.voters,
        s.duration,
        min.duration
    );
    println!("replay: strata-sim run {path} --seed {seed}{with_bug}");
    1
}
