//! Durable storage as the driver sees it: the raft log and hard state ([`LogStorage`]) beside
//! the MVCC backend the engine owns ([`strata_engine::KvBackend`]).
//!
//! Contract with the driver (the engine's async-storage-writes model):
//! - [`LogStorage::persist`] makes a group of [`PersistTask`]s durable in order, with at most
//!   one fsync for the whole group (group commit). It returns only once everything is durable,
//!   or fails; a failure is fatal: the node stops, because it cannot know what reached the disk.
//! - [`LogStorage::compact`] drops entries the state machine's snapshot covers. It is ordered
//!   after the backend writes of those entries, so a crash never leaves a hole between the
//!   backend's applied index and the log.
//! - [`LogStorage::load`] returns exactly what was acknowledged as durable (and possibly more
//!   that was written but not yet acknowledged), and refuses a log that fails its checksums or
//!   is not contiguous, naming the path.
//!
//! The logic behind both traits is written once ([`store`]) over a minimal [`device`]:
//! RocksDB in production ([`rocks`]), the fault disk ([`fault`]) in the simulator and in the
//! model-based test that holds RocksDB to the same contract.

pub mod device;
pub mod fault;
#[cfg(not(madsim))]
pub mod rocks;
pub mod store;

use std::future::Future;

use strata_engine::node::{PersistTask, PersistedLog};
use strata_engine::{LogIndex, Term};

/// Who a data directory belongs to: written at first start, checked at every start after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
    /// Joined an existing cluster (`--initial-cluster-state existing`) rather than
    /// bootstrapping one: its ids cannot be derived from the flags.
    pub joined: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{path}: corrupt raft log: {reason}")]
    Corrupt { path: String, reason: String },
    #[error(
        "{path}: data dir belongs to cluster {found_cluster:x} member {found_member:x}, \
         not cluster {want_cluster:x} member {want_member:x} (remove it, or fix --initial-cluster / --initial-cluster-token / --name)"
    )]
    WrongCluster {
        path: String,
        found_cluster: u64,
        found_member: u64,
        want_cluster: u64,
        want_member: u64,
    },
}

pub trait LogStorage: Send + 'static {
    /// Makes `tasks` durable, in order, with one fsync at most (none if no task needs one).
    fn persist(
        &mut self,
        tasks: Vec<PersistTask>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Drops every entry up to `index` (inclusive), remembering `(index, term)` as the log's
    /// start.
    fn compact(
        &mut self,
        index: LogIndex,
        term: Term,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// The persist task writing a bootstrap log (hard state and conf-change entries).
pub fn bootstrap_task(log: &PersistedLog) -> PersistTask {
    PersistTask {
        number: 0,
        hard_state: Some(log.hard_state.clone()),
        entries: log.entries.clone(),
        snapshot: None,
        must_sync: true,
    }
}

/// Checks a loaded log: contiguous from the compaction point, terms never decreasing, the
/// commit index within it.
pub fn check_contiguous(path: &str, log: &PersistedLog) -> Result<(), StorageError> {
    let mut expect = log.compacted.0 .0 + 1;
    // Raft's log matching: terms never go down along the log, from the compaction point on.
    let mut term = log.compacted.1 .0;
    for e in &log.entries {
        if e.index != expect {
            return Err(StorageError::Corrupt {
                path: path.to_string(),
                reason: format!("entry {} found where entry {expect} was expected", e.index),
            });
        }
        if e.term < term {
            return Err(StorageError::Corrupt {
                path: path.to_string(),
                reason: format!(
                    "entry {} has term {} after term {term} (a stale tail left by a snapshot install?)",
                    e.index, e.term
                ),
            });
        }
        term = e.term;
        expect += 1;
    }
    let last = expect - 1;
    if log.hard_state.commit > last {
        return Err(StorageError::Corrupt {
            path: path.to_string(),
            reason: format!(
                "hard state commits index {} but the log ends at {last}",
                log.hard_state.commit
            ),
        });
    }
    Ok(())
}
