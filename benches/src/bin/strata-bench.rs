//! `strata-bench`: a load generator for any etcd v3 endpoint, shaped like etcd's `benchmark`
//! tool (`--endpoints --conns --clients --total --key-size --val-size`), so the same command
//! measures etcd and Strata. Each workload subcommand runs `--total` operations and prints
//! throughput, latency percentiles and errors (`--json`: one JSON line, for `report`);
//! `report` turns the JSON lines of many runs into the side-by-side table `ci/bench.sh` prints.
//!
//! ```sh
//! strata-bench --endpoints 127.0.0.1:2379 --conns 4 --clients 16 put --total 20000 --val-size 256
//! strata-bench range --consistency s --total 50000
//! strata-bench report --results results.jsonl --rss rss.txt
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use strata_bench::load::report::{self, Record};
use strata_bench::load::workload::{self, Config, Measurement, Workload};
use strata_bench::load::{keys, stats::Summary};

#[derive(Parser)]
#[command(
    name = "strata-bench",
    version,
    about = "Load generator for etcd v3 endpoints"
)]
struct Cli {
    #[command(flatten)]
    run: RunFlags,
    #[command(subcommand)]
    command: Command,
}

/// The flags every workload takes (given before or after the subcommand).
#[derive(Args)]
struct RunFlags {
    /// Comma-separated client endpoints; connection `i` goes to endpoint `i mod count`.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// gRPC connections.
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Concurrent clients, spread over the connections.
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// Operations to run.
    #[arg(long, global = true, default_value_t = 10_000)]
    total: u64,
    /// Key size in bytes.
    #[arg(long, global = true, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, global = true, default_value_t = 8)]
    val_size: usize,
    /// End the run after this many seconds even if fewer than `--total` operations ran.
    #[arg(long, global = true)]
    max_secs: Option<f64>,
    /// Print one JSON line (the input of `report`) instead of the table.
    #[arg(long, global = true)]
    json: bool,
    /// The system under test, recorded in the JSON line (`etcd`, `strata`).
    #[arg(long, global = true, default_value = "")]
    label: String,
    /// The repetition number, recorded in the JSON line.
    #[arg(long, global = true)]
    rep: Option<u32>,
    /// The workload's name in the JSON line (default: the subcommand's, e.g. `put-random`);
    /// `ci/bench.sh` names its shapes (`put-c1000-leader`).
    #[arg(long, global = true)]
    name: Option<String>,
    /// CA that signed the members' certificates (TLS; etcd benchmark's flag).
    #[arg(long, global = true)]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate presented to the members (TLS).
    #[arg(long, global = true)]
    cert: Option<std::path::PathBuf>,
    /// Key of `--cert`.
    #[arg(long, global = true)]
    key: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Puts of `--val-size` values.
    Put {
        /// Write keys in order (ticket n writes key n mod the keyspace) instead of at random.
        #[arg(long)]
        sequential_keys: bool,
        /// Distinct keys written.
        #[arg(long, default_value_t = 100_000)]
        key_space_size: u64,
    },
    /// Single-key reads of random keys (written first if missing).
    Range {
        /// `l`: linearizable (read index), `s`: serializable (the member's local state).
        #[arg(long, value_enum, default_value_t = Consistency::L)]
        consistency: Consistency,
        /// Distinct keys read.
        #[arg(long, default_value_t = 1000)]
        key_space_size: u64,
    },
    /// Txns that put each client's key if its mod_revision is the one the client last wrote.
    TxnPut,
    /// Puts timed until a watcher on another connection receives the event.
    WatchLatency,
    /// Keep-alives of one lease per client, over its keep-alive stream.
    LeaseKeepalive {
        /// TTL of the leases granted.
        #[arg(long, default_value_t = 60)]
        ttl: i64,
    },
    /// The floor under a single client's put on this machine: fdatasync of an appended record
    /// in `--dir` (put it on the members' disk) and a loopback TCP round trip.
    Floor {
        /// A directory on the disk the members' data dirs are on.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value_t = 2000)]
        samples: usize,
        /// Bytes per appended record (a raft entry of a 256-byte put is ~300).
        #[arg(long, default_value_t = 512)]
        record_bytes: usize,
    },
    /// The side-by-side markdown table of many runs' JSON lines (medians per metric).
    Report {
        /// JSON lines from `--json` runs.
        #[arg(long)]
        results: PathBuf,
        /// `system member rss_kib` lines.
        #[arg(long)]
        rss: Option<PathBuf>,
        /// The system compared against.
        #[arg(long, default_value = "etcd")]
        baseline: String,
        /// The system measured.
        #[arg(long, default_value = "strata")]
        candidate: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Consistency {
    L,
    S,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Report {
            results,
            rss,
            baseline,
            candidate,
        } => report(&results, rss.as_ref(), &baseline, &candidate),
        Command::Floor {
            dir,
            samples,
            record_bytes,
        } => floor(&dir, samples, record_bytes),
        command => measure(&cli.run, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn measure(flags: &RunFlags, command: Command) -> Result<(), String> {
    let workload = match command {
        Command::Put {
            sequential_keys,
            key_space_size,
        } => Workload::Put {
            sequential: sequential_keys,
            key_space: key_space_size,
        },
        Command::Range {
            consistency,
            key_space_size,
        } => Workload::Range {
            serializable: matches!(consistency, Consistency::S),
            key_space: key_space_size,
        },
        Command::TxnPut => Workload::TxnPut,
        Command::WatchLatency => Workload::WatchLatency,
        Command::LeaseKeepalive { ttl } => Workload::LeaseKeepalive { ttl_secs: ttl },
        Command::Report { .. } | Command::Floor { .. } => {
            unreachable!("report and floor run no workload")
        }
    };
    if let Workload::Put { key_space, .. } | Workload::Range { key_space, .. } = workload {
        if key_space == 0 || !keys::fits(key_space, flags.key_size) {
            return Err(format!(
                "--key-space-size {key_space} does not fit --key-size {} (decimal keys)",
                flags.key_size
            ));
        }
    }
    if flags.conns == 0 || flags.clients == 0 || flags.endpoints.is_empty() {
        return Err("--conns, --clients and --endpoints must not be empty".into());
    }
    if flags.max_secs.is_some_and(|s| !(s > 0.0 && s.is_finite())) {
        return Err("--max-secs must be a positive number of seconds".into());
    }
    let config = Config {
        endpoints: flags.endpoints.clone(),
        conns: flags.conns,
        clients: flags.clients,
        total: flags.total,
        key_size: flags.key_size,
        val_size: flags.val_size,
        max_duration: flags.max_secs.map(Duration::from_secs_f64),
        tls: match (&flags.cacert, &flags.cert, &flags.key) {
            (None, None, None) => None,
            (Some(ca), cert, key) => Some(strata_bench::load::workload::TlsFiles {
                ca: ca.clone(),
                identity: cert.clone().zip(key.clone()),
            }),
            _ => return Err("--cert and --key need --cacert".into()),
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    let measurement = runtime.block_on(workload::run(&config, &workload))?;
    for sample in &measurement.error_samples {
        eprintln!("strata-bench: {}: error: {sample}", workload.name());
    }
    if flags.json {
        let record = Record {
            system: flags.label.clone(),
            workload: flags.name.clone().unwrap_or_else(|| workload.name().into()),
            rep: flags.rep,
            clients: config.clients,
            conns: config.conns,
            total: config.total,
            summary: measurement.summary,
            server_cpu_us_per_op: None,
        };
        println!(
            "{}",
            serde_json::to_string(&record).expect("a record serializes")
        );
    } else {
        print_table(&config, &workload, &measurement);
    }
    Ok(())
}

fn print_table(config: &Config, workload: &Workload, measurement: &Measurement) {
    let Summary {
        ok,
        errors,
        elapsed_secs,
        ops_per_sec,
        p50_ms,
        p90_ms,
        p99_ms,
        max_ms,
        ref per_second,
        slowest_second_ratio,
    } = measurement.summary;
    println!(
        "{}: {} ops, {} clients over {} conns to {}, key {} B, value {} B",
        workload.name(),
        ok + errors,
        config.clients,
        config.conns,
        config.endpoints.join(","),
        config.key_size,
        config.val_size
    );
    println!(
        "{:>8} {:>7} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "ok", "errors", "secs", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    println!(
        "{ok:>8} {errors:>7} {elapsed_secs:>8.2} {ops_per_sec:>10.1} {p50_ms:>9.3} {p90_ms:>9.3} \
         {p99_ms:>9.3} {max_ms:>9.3}"
    );
    if !per_second.is_empty() {
        let series: Vec<String> = per_second.iter().map(u64::to_string).collect();
        println!("per second: {}", series.join(" "));
    }
    if let Some(ratio) = slowest_second_ratio {
        println!("slowest whole second / median second: {ratio:.2}");
    }
}

fn floor(dir: &std::path::Path, samples: usize, record_bytes: usize) -> Result<(), String> {
    if samples == 0 {
        return Err("--samples must be positive".into());
    }
    let f = strata_bench::load::floor::measure(dir, samples, record_bytes)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    println!(
        "fdatasync of a {record_bytes}-byte append in {}: p50 {:.0} µs, p99 {:.0} µs",
        dir.display(),
        f.fdatasync_p50_us,
        f.fdatasync_p99_us
    );
    println!(
        "loopback TCP round trip (64 bytes): p50 {:.0} µs, p99 {:.0} µs",
        f.rtt_p50_us, f.rtt_p99_us
    );
    println!(
        "floor of a 1-client put on 3 members: {:.0} µs sequential (2 fdatasyncs + 2 round trips), \
         {:.0} µs overlapped (1 fdatasync + 2 round trips)",
        f.sequential_us(),
        f.overlapped_us()
    );
    Ok(())
}

fn report(
    results: &PathBuf,
    rss: Option<&PathBuf>,
    baseline: &str,
    candidate: &str,
) -> Result<(), String> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let records = report::parse_records(&read(results)?)?;
    let rss = match rss {
        Some(path) => report::parse_rss(&read(path)?)?,
        None => Vec::new(),
    };
    print!("{}", report::markdown(&records, &rss, baseline, candidate));
    Ok(())
}
