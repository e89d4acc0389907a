//! Command-line entry points of `strata-sim`.

use clap::{Parser, Subcommand};

use strata_engine::bugs::Bug;

use crate::run::{run, run_with, RunReport};
use crate::scenario::Scenario;
use crate::summary::{SeedRecord, Shard};

#[derive(Parser)]
#[command(
    name = "strata-sim",
    about = "Deterministic simulation of Strata clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario file with one seed (or a range `A..B`, inclusive).
    Run {
        scenario: String,
        #[arg(long, default_value = "1")]
        seed: String,
        /// Write the trace even when the run passes.
        #[arg(long)]
        trace: bool,
        /// Inject a bug of the catalogue (`strata-sim bugs --list`).
        #[arg(long)]
        bug: Option<String>,
    },
    /// Draw a scenario from each seed and run it (`--seeds A..B`).
    Swarm {
        #[arg(long, default_value = "1..100")]
        seeds: String,
        #[arg(long)]
        bug: Option<String>,
        /// Print the scenario a seed draws instead of running it.
        #[arg(long)]
        print: bool,
        /// Run only the K-th of N disjoint parts of the seeds (`K/N`, see `merge`).
        #[arg(long)]
        shard: Option<String>,
        /// Write one JSON line per seed here (default with --shard:
        /// `<trace dir>/swarm-A..B-shard-K-of-N.jsonl`).
        #[arg(long)]
        summary: Option<String>,
    },
    /// Combine the JSON-lines summaries of a swarm's shards into one verdict (exit 1 if a seed
    /// failed, 2 if a shard is missing or two overlap).
    Merge {
        #[arg(required = true)]
        summaries: Vec<String>,
    },
    /// The CI batch: every scenario file with its listed seeds, then a random swarm batch.
    Ci {
        #[arg(long, default_value = "scenarios")]
        scenarios: String,
        /// Random swarm seeds to run after the scenarios.
        #[arg(long, default_value_t = 50)]
        random: u64,
        /// First random seed (default: drawn from the clock, and printed).
        #[arg(long)]
        random_base: Option<u64>,
    },
    /// Reduce a failing run to a minimal scenario that still fails the same checker.
    Shrink {
        /// A scenario file, or `swarm:N` for the scenario swarm seed N draws.
        scenario: String,
        #[arg(long)]
        seed: u64,
        /// Where to write the minimal scenario (default: next to the traces).
        #[arg(long)]
        out: Option<String>,
        /// Shrink a failure of a catalogue bug (`strata-sim bugs --list`).
        #[arg(long)]
        bug: Option<String>,
    },
    /// The bug catalogue: for each injected bug, run the scenarios round after round (each
    /// scenario's listed seeds first) until a checker catches it; print the table (runs and
    /// time to catch).
    Bugs {
        #[arg(long, default_value = "scenarios")]
        scenarios: String,
        /// Give up on a bug after this many rounds (seeds per scenario).
        #[arg(long, default_value_t = 5)]
        max_seeds: u64,
        /// Only this bug.
        #[arg(long)]
        only: Option<String>,
        /// List the catalogue and exit.
        #[arg(long)]
        list: bool,
    },
    /// Run a seed twice and compare trace hashes (determinism).
    Determinism {
        scenario: String,
        #[arg(long, default_value = "1")]
        seed: u64,
    },
}

pub fn parse_bug(name: Option<&str>) -> Result<Option<Bug>, String> {
    match name {
        None => Ok(None),
        Some(n) => Bug::parse(n).map(Some).ok_or_else(|| {
            let all: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
            format!("unknown bug {n:?}; the catalogue: {}", all.join(", "))
        }),
    }
}

/// `A`, or `A..B` (inclusive).
pub fn parse_seeds(s: &str) -> Result<Vec<u64>, String> {
    let bad = || format!("seeds {s:?}: expected N or A..B");
    match s.split_once("..") {
        None => Ok(vec![s.trim().parse().map_err(|_| bad())?]),
        Some((a, b)) => {
            let a: u64 = a.trim().parse().map_err(|_| bad())?;
            let b: u64 = b.trim().parse().map_err(|_| bad())?;
            if a > b {
                return Err(bad());
            }
            Ok((a..=b).collect())
        }
    }
}

fn trace_dir() -> std::path::PathBuf {
    std::env::var_os("STRATA_SIM_TRACE_DIR")
        .map(Into::into)
        .unwrap_or_else(|| "target/sim-traces".into())
}

/// Writes the run's trace file; returns its path.
pub fn write_trace(r: &RunReport) -> Option<String> {
    let dir = trace_dir();
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("{}-{}.trace", r.name, r.seed));
    std::fs::write(&path, r.trace()).ok()?;
    Some(path.display().to_string())
}

pub fn summary_line(r: &RunReport) -> String {
    let speed = r.simulated.as_secs_f64() / r.wall.as_secs_f64().max(1e-9);
    format!(
        "{} seed {}: trace {:016x} · {} ops ({} ok), {} watch events · {:.0}s simulated in {:.2}s ({:.0}×) · {}",
        r.name,
        r.seed,
        r.trace_hash,
        r.ops,
        r.ops_ok,
        r.watch_events,
        r.simulated.as_secs_f64(),
        r.wall.as_secs_f64(),
        speed,
        if r.passed() { "PASS" } else { "FAIL" }
    )
}

fn load(scenario: &str) -> Result<Scenario, String> {
    match scenario.strip_prefix("swarm:") {
        Some(n) => n
            .parse()
            .map(crate::swarm::scenario)
            .map_err(|_| format!("{scenario}: expected swarm:N")),
        None => Scenario::load(scenario).map_err(|e| e.to_string()),
    }
}

/// Runs one (scenario, seed); prints its line, and on failure its violations, trace path and
/// replay command. Returns the report.
fn run_and_report(
    s: &Scenario,
    source: &str,
    seed: u64,
    trace: bool,
    bug: Option<Bug>,
) -> RunReport {
    let r = run_with(s, seed, bug);
    println!("{}", summary_line(&r));
    if !r.passed() || trace {
        if let Some(p) = write_trace(&r) {
            println!("  trace: {p}");
        }
    }
    if !r.passed() {
        for v in &r.violations {
            println!("  [{}] {}", v.checker, v.message);
        }
        let with_bug = bug
            .map(|b| format!(" --bug {}", b.name()))
            .unwrap_or_default();
        println!("  replay: strata-sim run {source} --seed {seed}{with_bug}");
        println!("  shrink: strata-sim shrink {source} --seed {seed}{with_bug}");
    }
    r
}

/// Totals over many runs.
#[derive(Default)]
struct Tally {
    runs: u64,
    failed: Vec<(String, u64, &'static str)>,
    simulated: std::time::Duration,
    wall: std::time::Duration,
    ops: u64,
    by_checker: std::collections::BTreeMap<&'static str, u64>,
}

impl Tally {
    fn add(&mut self, r: &RunReport, source: &str) {
        self.runs += 1;
        self.simulated += r.simulated;
        self.wall += r.wall;
        self.ops += r.ops as u64;
        if let Some(v) = r.violations.first() {
            self.failed.push((source.to_string(), r.seed, v.checker));
            for v in &r.violations {
                *self.by_checker.entry(v.checker).or_default() += 1;
            }
        }
    }

    fn print(&self) {
        let speed = self.simulated.as_secs_f64() / self.wall.as_secs_f64().max(1e-9);
        let per_hour = self.runs as f64 * 3600.0 / self.wall.as_secs_f64().max(1e-9);
        println!();
        println!("| runs | passed | failed | simulated | wall | speed | seeds/core-hour | ops |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {} | {} | {} | {:.0} s | {:.1} s | {:.0}× | {:.0} | {} |",
            self.runs,
            self.runs - self.failed.len() as u64,
            self.failed.len(),
            self.simulated.as_secs_f64(),
            self.wall.as_secs_f64(),
            speed,
            per_hour,
            self.ops
        );
        if !self.by_checker.is_empty() {
            println!();
            println!("| checker | violations |");
            println!("|---|---:|");
            for (c, n) in &self.by_checker {
                println!("| {c} | {n} |");
            }
            println!();
            println!("failed runs (replay each with the command shown):");
            for (src, seed, checker) in &self.failed {
                println!("  strata-sim run {src} --seed {seed}    # {checker}");
            }
        }
    }
}

/// The terminal's progress line: seeds done, failures, speed and the time left.
fn progress(done: u64, total: u64, failed: usize, started: std::time::Instant) {
    let width = 30;
    let filled = (done * width / total.max(1)) as usize;
    let elapsed = started.elapsed().as_secs_f64();
    let per_seed = elapsed / done.max(1) as f64;
    let eta = per_seed * (total - done) as f64;
    eprint!(
        "\r[{}{}] {done}/{total} runs, {failed} failed, {:.1} seeds/s, ETA {:.0}m{:02.0}s ",
        "#".repeat(filled),
        ".".repeat(width as usize - filled),
        1.0 / per_seed.max(1e-9),
        (eta / 60.0).floor(),
        eta % 60.0
    );
    if done == total {
        eprintln!();
    }
}

pub fn main() -> i32 {
    match dispatch(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

/// Runs one command: its exit code, or the error that kept it from running (exit 2).
fn dispatch(command: Command) -> Result<i32, String> {
    Ok(match command {
        Command::Swarm {
            seeds: range,
            print,
            bug: bug_name,
            shard,
            summary,
        } => {
            let bug = parse_bug(bug_name.as_deref())?;
            let mut seeds = parse_seeds(&range)?;
            let shard = shard.as_deref().map(Shard::parse).transpose()?;
            if let Some(shard) = shard {
                seeds = shard.select(&seeds);
            }
            let shard_name =
                shard.map_or("1/1".to_string(), |s| format!("{}/{}", s.index, s.count));
            let summary_path = summary.or_else(|| {
                shard.map(|s| {
                    let file = format!("swarm-{range}-shard-{}-of-{}.jsonl", s.index, s.count);
                    trace_dir().join(file).display().to_string()
                })
            });
            let mut summary_file = match (&summary_path, print) {
                (Some(path), false) => Some(create_summary(path)?),
                _ => None,
            };
            let mut tally = Tally::default();
            let total = seeds.len() as u64;
            let started = std::time::Instant::now();
            for (i, seed) in seeds.into_iter().enumerate() {
                let s = crate::swarm::scenario(seed);
                if print {
                    println!("{}", s.to_file());
                    continue;
                }
                let r = run_and_report(&s, &format!("swarm:{seed}"), seed, false, bug);
                tally.add(&r, &format!("swarm:{seed}"));
                if let Some(file) = summary_file.as_mut() {
                    let record = SeedRecord {
                        seed,
                        verdict: if r.passed() { "PASS" } else { "FAIL" }.into(),
                        checker: r.violations.first().map(|v| v.checker.to_string()),
                        trace_hash: format!("{:016x}", r.trace_hash),
                        simulated_secs: r.simulated.as_secs_f64(),
                        wall_secs: r.wall.as_secs_f64(),
                        ops: r.ops as u64,
                        seeds: range.clone(),
                        shard: shard_name.clone(),
                        bug: bug_name.clone(),
                    };
                    use std::io::Write as _;
                    writeln!(file, "{}", record.to_line())
                        .and_then(|()| file.flush())
                        .map_err(|e| format!("{}: {e}", summary_path.as_deref().unwrap_or("")))?;
                }
                progress(i as u64 + 1, total, tally.failed.len(), started);
            }
            if print {
                return Ok(0);
            }
            tally.print();
            if let Some(path) = &summary_path {
                println!("summary ({shard_name} of {range}): {path}");
            }
            i32::from(!tally.failed.is_empty())
        }
        Command::Merge { summaries } => merge_cli(&summaries)?,
        Command::Ci {
            scenarios,
            random,
            random_base,
        } => ci(&scenarios, random, random_base)?,
        Command::Shrink {
            scenario,
            seed,
            out,
            bug,
        } => {
            let bug = parse_bug(bug.as_deref())?;
            crate::shrink::shrink_cli(&load(&scenario)?, &scenario, seed, bug, out)
        }
        Command::Determinism { scenario, seed } => {
            let s = load(&scenario)?;
            let a = run(&s, seed);
            let b = run(&s, seed);
            println!(
                "{} seed {seed}: trace {:016x} then {:016x}: {}",
                s.name,
                a.trace_hash,
                b.trace_hash,
                if a.trace_hash == b.trace_hash {
                    "deterministic"
                } else {
                    "DIFFERENT"
                }
            );
            i32::from(a.trace_hash != b.trace_hash)
        }
        Command::Bugs {
            scenarios,
            max_seeds,
            only,
            list,
        } => crate::catalogue::hunt_cli(&scenarios, max_seeds, only.as_deref(), list),
        Command::Run {
            scenario,
            seed,
            trace,
            bug,
        } => {
            let bug = parse_bug(bug.as_deref())?;
            let s = load(&scenario)?;
            let seeds = parse_seeds(&seed)?;
            let mut failed = 0;
            for seed in seeds {
                if !run_and_report(&s, &scenario, seed, trace, bug).passed() {
                    failed += 1;
                }
            }
            i32::from(failed > 0)
        }
    })
}

fn create_summary(path: &str) -> Result<std::fs::File, String> {
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))
}

/// `strata-sim merge`: the shards' records as one swarm's table and verdict.
fn merge_cli(paths: &[String]) -> Result<i32, String> {
    let mut parts = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        parts.push((path.clone(), text));
    }
    let merged = crate::summary::merge(&parts)?;
    let failed = merged.failed();
    let speed = merged.simulated_secs / merged.wall_secs.max(1e-9);
    println!("| parts | runs | passed | failed | simulated | wall (summed) | speed | seeds/core-hour | ops |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {:.0} s | {:.1} s | {speed:.0}× | {:.0} | {} |",
        paths.len(),
        merged.records.len(),
        merged.records.len() - failed.len(),
        failed.len(),
        merged.simulated_secs,
        merged.wall_secs,
        merged.seeds_per_core_hour(),
        merged.ops
    );
    if !failed.is_empty() {
        println!();
        println!("| checker | failed seeds |");
        println!("|---|---:|");
        for (c, n) in &merged.by_checker {
            println!("| {c} | {n} |");
        }
        println!();
        println!("failed seeds (each replays alone):");
        for r in failed {
            let bug = r
                .bug
                .as_ref()
                .map(|b| format!(" --bug {b}"))
                .unwrap_or_default();
            println!(
                "  strata-sim run swarm:{0} --seed {0}{bug}    # {1}, trace {2}",
                r.seed,
                r.checker.as_deref().unwrap_or("?"),
                r.trace_hash
            );
        }
    }
    Ok(i32::from(merged.records.iter().any(|r| !r.passed())))
}

fn ci(dir: &str, random: u64, random_base: Option<u64>) -> Result<i32, String> {
    let mut tally = Tally::default();
    for (f, s) in Scenario::load_dir(dir)? {
        for &seed in &s.seeds {
            let r = run_and_report(&s, &f, seed, false, None);
            tally.add(&r, &f);
        }
    }
    let base = random_base.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            * 1000
    });
    if random > 0 {
        println!("random swarm batch: seeds {base}..{}", base + random - 1);
    }
    for seed in base..base + random {
        let s = crate::swarm::scenario(seed);
        let r = run_and_report(&s, &format!("swarm:{seed}"), seed, false, None);
        tally.add(&r, &format!("swarm:{seed}"));
    }
    tally.print();
    Ok(i32::from(!tally.failed.is_empty()))
}
