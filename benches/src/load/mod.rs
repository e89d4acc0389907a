//! The load generator behind `strata-bench`: etcd `benchmark`-style workloads against any etcd
//! v3 endpoint (so one tool measures etcd and Strata alike), their statistics, and the
//! side-by-side report `ci/bench.sh` prints; and the floor a single client's put stands on
//! (the disk's fdatasync and a loopback round trip, [`floor`]).
//!
//! Nothing here knows Strata: it speaks the etcd v3 gRPC API through the `etcd-client` crate.

pub mod floor;
pub mod keys;
pub mod report;
pub mod stats;
pub mod workload;
