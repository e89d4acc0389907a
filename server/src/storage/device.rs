//! The device under the storage logic: what [`super::store`] needs from a disk and nothing
//! more. Two ordered key spaces (the raft log's records and the MVCC backend's), atomic
//! batches, point and range reads, and one durability rule.
//!
//! Contract (RocksDB with one write-ahead log keeps it; the simulator's [`super::fault`] disk
//! models it, faults included):
//! - A batch is applied atomically, after every batch written before it, and is visible to
//!   reads at once.
//! - A batch written with `sync` returns only once it and every earlier batch are durable
//!   (one fsync). A batch written without `sync` becomes durable with the next synced one.
//! - A crash keeps a prefix of the batches written: never a later batch without an earlier
//!   one, never part of a batch.
//! - A failed write (a failed fsync above all) leaves the device refusing writes: the caller
//!   must stop, because it cannot know what reached the disk.

use std::path::PathBuf;
use std::time::Duration;

/// The two key spaces of a member's store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// The raft log, hard state, compaction point and identity, each record sealed with a
    /// checksum by the storage logic.
    Raft,
    /// The MVCC backend: bucket tag byte + key → value.
    Kv,
}

impl Space {
    pub const ALL: [Space; 2] = [Space::Raft, Space::Kv];

    /// The RocksDB column family (and the simulator's map) holding the space.
    pub fn name(self) -> &'static str {
        match self {
            Space::Raft => "raft",
            Space::Kv => "kv",
        }
    }
}

/// One change of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceOp {
    Put(Space, Vec<u8>, Vec<u8>),
    Delete(Space, Vec<u8>),
    /// Deletes every key `start <= key < end`.
    DeleteRange(Space, Vec<u8>, Vec<u8>),
}

/// Changes applied atomically, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceBatch {
    pub ops: Vec<DeviceOp>,
}

impl DeviceBatch {
    pub fn put(&mut self, space: Space, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.ops.push(DeviceOp::Put(space, key.into(), value));
    }

    pub fn delete(&mut self, space: Space, key: impl Into<Vec<u8>>) {
        self.ops.push(DeviceOp::Delete(space, key.into()));
    }

    pub fn delete_range(
        &mut self,
        space: Space,
        start: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
    ) {
        self.ops
            .push(DeviceOp::DeleteRange(space, start.into(), end.into()));
    }
}

/// A device operation failed; `op` names it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {reason}")]
pub struct DeviceError {
    pub op: &'static str,
    pub reason: String,
}

/// Records of one space read from a point-in-time view, in key order.
pub type Export = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), DeviceError>> + Send>;

pub trait Device: Send + Sync + 'static {
    /// Where the data lives, for messages (a directory, or the simulator's disk name).
    fn path(&self) -> String;

    /// A directory for scratch files beside the data (snapshot files being built).
    fn scratch_dir(&self) -> PathBuf;

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, DeviceError>;

    /// The values of `keys`, in the order given (a device may look them up together).
    fn get_many(
        &self,
        space: Space,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, DeviceError> {
        keys.iter().map(|key| self.get(space, key)).collect()
    }

    /// Visits `start <= key < end` (no `end`: to the space's end) in key order while `visit`
    /// returns true.
    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), DeviceError>;

    /// The greatest key below `end`, if any.
    fn last_below(&self, space: Space, end: &[u8]) -> Result<Option<Vec<u8>>, DeviceError>;

    /// Applies `batch` (see the module's contract for `sync`).
    fn write(&self, batch: DeviceBatch, sync: bool) -> Result<(), DeviceError>;

    /// How long a synced write waits before it starts (the simulator's slow disk); the
    /// caller sleeps it on its runtime's clock. Real devices take their own time.
    fn sync_delay(&self) -> Duration {
        Duration::ZERO
    }

    /// The records of `space` as they are now, read lazily: later writes do not show.
    fn export(&self, space: Space) -> Result<Export, DeviceError>;

    /// Rewrites the files of the MVCC space to return the space of deleted records (etcd's
    /// defragment).
    fn compact_files(&self) -> Result<(), DeviceError>;

    /// Bytes `space` occupies, freed space included.
    fn size_bytes(&self, space: Space) -> u64;

    /// Bytes of live records in `space`.
    fn size_in_use_bytes(&self, space: Space) -> u64;
}
