//! `strata`: etcd's flags in, a member out. `strata snapshot restore` rebuilds a data dir.

use std::process::ExitCode;

use clap::Parser;
use strata_server::config::{Cli, Command, MemberConfig, SnapshotCommand};
use tracing_subscriber::EnvFilter;

fn init_logging(cfg: &MemberConfig) -> Result<(), String> {
    let level = match cfg.log_level.as_str() {
        "dpanic" | "panic" | "fatal" => "error",
        l => l,
    };
    let filter = EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},h2=warn,hyper=warn,tower=warn")));
    let builder = tracing_subscriber::fmt()
        .event_format(strata_server::logging::Zap)
        .with_env_filter(filter);
    match cfg.log_outputs.first().map(String::as_str) {
        None | Some("default") | Some("stderr") => builder.with_writer(std::io::stderr).init(),
        Some("stdout") => builder.with_writer(std::io::stdout).init(),
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("--log-outputs: {path}: {e}"))?;
            builder.with_writer(std::sync::Mutex::new(file)).init()
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line, as the issue asks: the first line of clap's report.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("strata: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Snapshot(SnapshotCommand::Restore(flags))) => report(
            "snapshot restore",
            strata_server::snapshot::restore::restore(&flags),
        ),
        Some(Command::Snapshot(SnapshotCommand::Status(flags))) => {
            report("snapshot status", snapshot_status(&flags))
        }
        Some(Command::Migrate(flags)) => {
            report("migrate", strata_server::snapshot::migrate::migrate(&flags))
        }
        None => run_member(cli.member),
    }
}

/// Prints a one-shot command's outcome: its answer on stdout, or one line naming the command
/// and the problem on stderr, with a failing exit code.
fn report(command: &str, outcome: Result<String, String>) -> ExitCode {
    match outcome {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("strata {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn snapshot_status(flags: &strata_server::config::StatusFlags) -> Result<String, String> {
    use strata_server::snapshot::{status, SnapshotFile};
    let file = SnapshotFile::open(&flags.file, true)?;
    let found = status::status(&file).map_err(|e| format!("{}: {e}", flags.file.display()))?;
    status::render(&found, &flags.write_out)
}

fn run_member(flags: strata_server::config::MemberFlags) -> ExitCode {
    let cfg = match flags.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strata: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&cfg) {
        eprintln!("strata: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (_member, stopped) = match strata_server::server::start(cfg, stop_rx).await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("strata: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("strata: cannot watch SIGTERM: {e}");
                    return ExitCode::FAILURE;
                }
            };
        let mut stopped = stopped;
        tokio::select! {
            biased;
            _ = term.recv() => tracing::info!("received SIGTERM, shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT, shutting down"),
            result = &mut stopped => {
                // Stop the listeners gracefully and give in-flight answers (such as the
                // MemberRemove that removed this member) a moment to reach their clients.
                let _ = stop_tx.send(true);
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                return match result {
                    Ok(strata_server::driver::Stopped::Removed) => ExitCode::SUCCESS,
                    Ok(e) => { eprintln!("strata: {e}"); ExitCode::FAILURE }
                    Err(e) => { eprintln!("strata: driver task failed: {e}"); ExitCode::FAILURE }
                };
            }
        }
        strata_server::notify::notify("STOPPING=1");
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stopped).await;
        ExitCode::SUCCESS
    })
}
