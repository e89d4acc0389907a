//! Strata's sans-I/O core. (Crate docs grow with the node; see `node.rs` for the ordering
//! contract.)

pub mod backend;
pub mod error;
pub mod limits;
pub mod mvcc;
pub mod prng;
pub mod proto;
pub mod types;

pub use backend::{BackendError, Bucket, KvBackend, MemBackend, WriteBatch};
pub use error::{EtcdError, GrpcCode};
pub use limits::Limits;
pub use mvcc::MvccStore;
pub use types::*;
