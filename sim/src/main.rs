//! The `strata-sim` command. The simulator only exists in the madsim build.

fn main() {
    eprintln!("strata-sim must be built with RUSTFLAGS=\"--cfg madsim\": run `bash ci/sim.sh`");
    std::process::exit(2);
}
