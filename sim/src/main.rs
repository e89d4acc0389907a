//! The `strata-sim` command: run scenarios with seeds, swarm over random schedules, shrink
//! failures, and the CI batch. The simulator exists only in the madsim build
//! (`RUSTFLAGS="--cfg madsim"`; `bash ci/sim.sh` builds and runs it).

#[cfg(not(madsim))]
fn main() {
    eprintln!("strata-sim must be built with RUSTFLAGS=\"--cfg madsim\": run `bash ci/sim.sh`");
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() {
    std::process::exit(strata_sim::cli::main());
}
