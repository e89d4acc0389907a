//! Command-line entry points of `strata-sim`.

use clap::{Parser, Subcommand};

use crate::run::{run, RunReport};
use crate::scenario::Scenario;

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
    },
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

pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            scenario,
            seed,
            trace,
        } => {
            let s = match Scenario::load(&scenario) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return 2;
                }
            };
            let seeds = match parse_seeds(&seed) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return 2;
                }
            };
            let mut failed = 0;
            for seed in seeds {
                let r = run(&s, seed);
                println!("{}", summary_line(&r));
                if !r.passed() || trace {
                    if let Some(p) = write_trace(&r) {
                        println!("  trace: {p}");
                    }
                }
                if !r.passed() {
                    failed += 1;
                    for v in &r.violations {
                        println!("  [{}] {}", v.checker, v.message);
                    }
                    println!("  replay: strata-sim run {scenario} --seed {seed}");
                }
            }
            i32::from(failed > 0)
        }
    }
}
