//! The raft log as raft-rs reads it: an in-memory mirror of what the driver has made durable
//! (etcd keeps its `MemoryStorage` beside the WAL the same way).
//!
//! Invariants:
//! - `entries[i].index == compacted.index + 1 + i`: the log is contiguous after the compaction
//!   point, whose term is kept for the log-matching check.
//! - Entries are appended here before raft-rs is told the Ready was handled
//!   (`advance_append_async`), as raft-rs requires; they count as persisted only once the
//!   driver acknowledges the matching `Persist` output.
//! - A snapshot to *send* is built lazily: [`Storage::snapshot`] answers
//!   `SnapshotTemporarilyUnavailable` and raises [`LogStore::snapshot_wanted`]; the node then
//!   builds one from the state machine at its applied index and caches it here. raft-rs retries.

use std::cell::Cell;
use std::collections::VecDeque;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::types::{LogIndex, Term};

#[derive(Debug, Default)]
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    compacted: (LogIndex, Term),
    entries: VecDeque<Entry>,
    cached_snapshot: Option<Snapshot>,
    snapshot_wanted: Cell<bool>,
}

impl LogStore {
    /// A log restored from what the driver persisted: hard state, the compaction point and the
    /// entries after it. `conf_state` is the membership as of the state machine's applied index.
    pub fn restore(
        hard_state: HardState,
        conf_state: ConfState,
        compacted: (LogIndex, Term),
        entries: Vec<Entry>,
    ) -> LogStore {
        let mut store = LogStore {
            hard_state,
            conf_state,
            compacted,
            ..LogStore::default()
        };
        for (i, e) in entries.iter().enumerate() {
            let expected = compacted.0 .0 + 1 + i as u64;
            assert_eq!(e.index, expected, "log restored with a gap at position {i}");
        }
        store.entries = entries.into();
        store
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    pub fn compacted(&self) -> (LogIndex, Term) {
        self.compacted
    }

    pub fn last_index_value(&self) -> u64 {
        self.compacted.0 .0 + self.entries.len() as u64
    }

    /// Appends entries, replacing any conflicting suffix (a new leader overwriting an
    /// uncommitted tail).
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        let first_kept = self.compacted.0 .0 + 1;
        assert!(
            first.index >= first_kept,
            "append at {} below the compaction point {}",
            first.index,
            self.compacted.0
        );
        assert!(
            first.index <= self.last_index_value() + 1,
            "append at {} leaves a gap after {}",
            first.index,
            self.last_index_value()
        );
        let keep = (first.index - first_kept) as usize;
        self.entries.truncate(keep);
        self.entries.extend(ents.iter().cloned());
    }

    /// Drops entries up to and including `index` (which must be applied and stored in the
    /// state machine).
    pub fn compact(&mut self, index: LogIndex) {
        if index <= self.compacted.0 {
            return;
        }
        assert!(
            index.0 <= self.last_index_value(),
            "compact to {index} beyond last index {}",
            self.last_index_value()
        );
        let term = self
            .term_of(index.0)
            .expect("term of an entry inside the log");
        let drop = (index.0 - self.compacted.0 .0) as usize;
        self.entries.drain(..drop);
        self.compacted = (index, Term(term));
    }

    /// Installs a received snapshot: the log restarts after it.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        let meta = snapshot.get_metadata();
        let index = LogIndex(meta.index);
        self.entries.clear();
        self.compacted = (index, Term(meta.term));
        self.conf_state = meta.get_conf_state().clone();
        if self.hard_state.commit < meta.index {
            self.hard_state.commit = meta.index;
        }
        if self.hard_state.term < meta.term {
            self.hard_state.term = meta.term;
        }
        self.cached_snapshot = Some(snapshot);
    }

    /// Whether raft-rs asked for a snapshot that is not built yet; clears the request.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    pub fn cached_snapshot_index(&self) -> Option<u64> {
        self.cached_snapshot
            .as_ref()
            .map(|s| s.get_metadata().index)
    }

    pub fn cache_snapshot(&mut self, snapshot: Snapshot) {
        self.cached_snapshot = Some(snapshot);
    }

    fn term_of(&self, idx: u64) -> Option<u64> {
        if idx == self.compacted.0 .0 {
            return Some(self.compacted.1 .0);
        }
        if idx < self.compacted.0 .0 || idx > self.last_index_value() {
            return None;
        }
        Some(self.entries[(idx - self.compacted.0 .0 - 1) as usize].term)
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.compacted.0 .0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index_value() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = self.compacted.0 .0 + 1;
        let mut ents: Vec<Entry> = self
            .entries
            .range((low - offset) as usize..(high - offset) as usize)
            .cloned()
            .collect();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.compacted.0 .0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.compacted.0 .0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_value())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match &self.cached_snapshot {
            Some(s)
                if s.get_metadata().index >= request_index
                    && s.get_metadata().index >= self.compacted.0 .0 =>
            {
                Ok(s.clone())
            }
            _ => {
                self.snapshot_wanted.set(true);
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    #[test]
    fn append_truncates_a_conflicting_tail() {
        let mut s = LogStore::default();
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        s.append(&[entry(2, 2)]);
        assert_eq!(s.last_index().unwrap(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
    }

    #[test]
    fn compaction_keeps_the_term_of_the_compaction_point() {
        let mut s = LogStore::default();
        s.append(&[entry(1, 1), entry(2, 2), entry(3, 2)]);
        s.compact(LogIndex(2));
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.term(2).unwrap(), 2);
        assert!(matches!(
            s.term(1),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(s.entries(3, 4, None, ctx()).unwrap().len(), 1);
        assert!(s.entries(2, 4, None, ctx()).is_err());
    }

    #[test]
    fn snapshot_is_built_on_demand() {
        let mut s = LogStore::default();
        s.append(&[entry(1, 1)]);
        assert!(s.snapshot(1, 2).is_err());
        assert!(s.take_snapshot_wanted());
        assert!(!s.take_snapshot_wanted());
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 1;
        snap.mut_metadata().term = 1;
        s.cache_snapshot(snap);
        assert_eq!(s.snapshot(1, 2).unwrap().get_metadata().index, 1);
    }
}
