//! Strata's sans-I/O core: Raft (tikv raft-rs) and etcd's v3 state machine — MVCC, leases,
//! watches, membership, auth — with no I/O, no clock, no threads and no unseeded randomness.
//!
//! [`node::Node`] is the one entry point: the driver feeds it [`node::Input`]s and executes the
//! [`node::Output`]s it returns, in order; `node.rs` states the ordering contract. The MVCC
//! data and all replicated state live behind the synchronous [`KvBackend`] trait: RocksDB in
//! the server, [`MemBackend`] in tests and the simulator.
#![forbid(unsafe_code)]

pub mod auth;
pub mod backend;
pub mod bugs;
pub mod error;
pub mod lease;
pub mod limits;
pub mod membership;
pub mod mvcc;
pub mod node;
pub mod prng;
pub mod proto;
pub mod raft_log;
pub mod request;
pub mod state_machine;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod types;
pub mod watch;

pub use auth::{AuthInfo, Credential, PasswordCheck};
pub use backend::{BackendError, Bucket, KvBackend, MemBackend, WriteBatch};
pub use error::{EtcdError, GrpcCode};
pub use limits::Limits;
pub use node::{Config, Fatal, Input, Node, Output};
pub use types::*;
