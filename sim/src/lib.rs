//! `strata-sim`: whole Strata clusters in one process under madsim.
//!
//! - [`history`]: what a run observed; [`check`]: the checkers that judge it. Both are plain
//!   Rust (no madsim), unit-tested in the normal build.
//! - The runner and the nemesis exist only in the madsim build (members run the server's own
//!   start-up and storage logic over its fault disk, `strata_server::storage::fault`)
//!   (`RUSTFLAGS="--cfg madsim"`, see `ci/sim.sh`).

pub mod check;
pub mod history;
pub mod scenario;
pub mod summary;
pub mod swarm;

#[cfg(madsim)]
pub mod catalogue;
#[cfg(madsim)]
pub mod cli;
#[cfg(madsim)]
pub mod client;
#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod nemesis;
#[cfg(madsim)]
pub mod recorder;
#[cfg(madsim)]
pub mod run;
#[cfg(madsim)]
pub mod shrink;
