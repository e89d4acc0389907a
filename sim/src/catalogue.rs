//! The bug hunt: for each bug of the engine's catalogue (`strata_engine::bugs`), run the
//! scenario files round after round with the bug injected until a checker catches it, and
//! report how many runs and how much time that took. Round `k` (from 1) runs every scenario
//! with its `k`-th listed seed (the seeds CI runs it with), or seed `k` past the end of its
//! list. A bug no run catches is a hole in the simulator, and the command fails.

use std::time::{Duration, Instant};

use strata_engine::bugs::Bug;

use crate::run::run_with;
use crate::scenario::Scenario;

/// How one bug was caught.
pub struct Catch {
    pub bug: Bug,
    /// `(scenario file, seed, checker)` of the first failing run.
    pub by: Option<(String, u64, &'static str)>,
    pub runs: u64,
    pub wall: Duration,
}

pub fn hunt(scenarios: &[(String, Scenario)], bug: Bug, max_seeds: u64) -> Catch {
    let started = Instant::now();
    let mut runs = 0;
    for round in 1..=max_seeds {
        for (path, s) in scenarios {
            let seed = s.seeds.get(round as usize - 1).copied().unwrap_or(round);
            runs += 1;
            let r = run_with(s, seed, Some(bug));
            if let Some(v) = r.violations.first() {
                return Catch {
                    bug,
                    by: Some((path.clone(), seed, v.checker)),
                    runs,
                    wall: started.elapsed(),
                };
            }
        }
    }
    Catch {
        bug,
        by: None,
        runs,
        wall: started.elapsed(),
    }
}

pub fn hunt_cli(dir: &str, max_seeds: u64, only: Option<&str>, list: bool) -> i32 {
    if list {
        for b in Bug::ALL {
            println!("{:<30} {b:?}", b.name());
        }
        return 0;
    }
    let bugs: Vec<Bug> = match only {
        Some(name) => match Bug::parse(name) {
            Some(b) => vec![b],
            None => {
                eprintln!("unknown bug {name:?} (strata-sim bugs --list)");
                return 2;
            }
        },
        None => Bug::ALL.to_vec(),
    };
    let scenarios = match Scenario::load_dir(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let mut missed = 0;
    println!("| bug | caught by | checker | runs to catch | wall time |");
    println!("|---|---|---|---:|---:|");
    for bug in bugs {
        let c = hunt(&scenarios, bug, max_seeds);
        match &c.by {
            Some((path, seed, checker)) => println!(
                "| `{}` | `{}` seed {seed} | {checker} | {} | {:.1} s |",
                bug.name(),
                path.trim_start_matches("scenarios/"),
                c.runs,
                c.wall.as_secs_f64()
            ),
            None => {
                missed += 1;
                println!(
                    "| `{}` | NOT CAUGHT | — | {} | {:.1} s |",
                    bug.name(),
                    c.runs,
                    c.wall.as_secs_f64()
                );
            }
        }
    }
    i32::from(missed > 0)
}
