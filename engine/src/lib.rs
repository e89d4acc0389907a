//! Strata's sans-I/O core. (Crate docs grow with the node; see `node.rs` for the ordering
//! contract.)

pub mod backend;
pub mod error;
pub mod lease;
pub mod limits;
pub mod membership;
pub mod prng;
pub mod proto;
pub mod raft_log;
pub mod request;
pub mod types;
pub mod watch;

pub use backend::{BackendError, Bucket, KvBackend, MemBackend, WriteBatch};
pub use error::{EtcdError, GrpcCode};
pub use limits::Limits;
pub use types::*;
