//! The MVCC backend: a small synchronous key-value interface under the state machine, in the
//! spirit of raft-rs' `Storage`. The server implements it over RocksDB; [`MemBackend`] is the
//! in-memory implementation for tests, benches and the simulator.
//!
//! Contract: a [`WriteBatch`] is applied atomically, including the applied raft index it
//! carries, so after a crash the backend reflects a prefix of the applied entries and the
//! node re-applies exactly the committed entries after `applied_index`. Reads see every batch
//! written before them. A backend error is fatal to the node ([`BackendError`]), never an
//! answer to a client.

use std::collections::BTreeMap;
use std::ops::Bound;

/// The backend's namespaces, like etcd's bbolt buckets. The tag is stored on disk: never
/// renumber a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bucket {
    /// MVCC revisions: revision bytes → `mvccpb.KeyValue`.
    Key = 1,
    /// Engine metadata: applied index/term, conf state, compaction marks.
    Meta = 2,
    /// Lease records.
    Lease = 3,
    /// Cluster members.
    Members = 4,
    /// Ids of removed members (they may never rejoin).
    MembersRemoved = 5,
    /// Raised alarms.
    Alarm = 6,
    /// Auth state: keys `enabled` (one byte, 1 = enabled) and `revision` (u64 big-endian).
    Auth = 7,
    /// Auth users: name → `authpb.User`.
    AuthUsers = 8,
    /// Auth roles: name → `authpb.Role`.
    AuthRoles = 9,
}

impl Bucket {
    pub const ALL: [Bucket; 9] = [
        Bucket::Key,
        Bucket::Meta,
        Bucket::Lease,
        Bucket::Members,
        Bucket::MembersRemoved,
        Bucket::Alarm,
        Bucket::Auth,
        Bucket::AuthUsers,
        Bucket::AuthRoles,
    ];

    pub fn tag(self) -> u8 {
        self as u8
    }

    pub fn from_tag(tag: u8) -> Option<Bucket> {
        Bucket::ALL.into_iter().find(|b| b.tag() == tag)
    }
}

/// A storage failure. The node must stop: it cannot know what reached the disk.
#[derive(Debug, thiserror::Error)]
#[error("backend {op} failed: {reason}")]
pub struct BackendError {
    pub op: &'static str,
    pub reason: String,
}

/// One change in a batch: `None` deletes the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchOp {
    pub bucket: Bucket,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Changes applied atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub ops: Vec<BatchOp>,
}

impl WriteBatch {
    pub fn put(&mut self, bucket: Bucket, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(BatchOp {
            bucket,
            key,
            value: Some(value),
        });
    }

    pub fn delete(&mut self, bucket: Bucket, key: Vec<u8>) {
        self.ops.push(BatchOp {
            bucket,
            key,
            value: None,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// Whether a scan goes on after a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    Continue,
    Stop,
}

pub trait KvBackend {
    fn get(&self, bucket: Bucket, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;

    /// The values of `keys` in `bucket`, in the order given; a backend may look them up
    /// together (a range chunk reads one record per key).
    fn get_many(
        &self,
        bucket: Bucket,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        keys.iter().map(|key| self.get(bucket, key)).collect()
    }

    /// Visits records of `bucket` with `start <= key < end` (no `end`: to the bucket's end) in
    /// key order until `visit` says stop.
    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Scan,
    ) -> Result<(), BackendError>;

    /// Applies `batch` atomically.
    fn write(&mut self, batch: WriteBatch) -> Result<(), BackendError>;

    /// Replaces the whole content with `records` atomically (snapshot install).
    fn replace_all(&mut self, records: Vec<BatchOp>) -> Result<(), BackendError>;

    /// Bytes the backend occupies (etcd's `dbSize`).
    fn size_bytes(&self) -> u64;

    /// Bytes of live data (etcd's `dbSizeInUse`).
    fn size_in_use_bytes(&self) -> u64;
}

/// An in-memory backend: a sorted map per bucket. Its "size" counts key and value bytes, with
/// deleted bytes still counted in `size_bytes` until [`MemBackend::defragment`], as a B-tree
/// file keeps its freed pages.
#[derive(Clone, Debug, Default)]
pub struct MemBackend {
    data: BTreeMap<(Bucket, Vec<u8>), Vec<u8>>,
    live_bytes: u64,
    freed_bytes: u64,
}

impl MemBackend {
    pub fn new() -> MemBackend {
        MemBackend::default()
    }

    /// Returns freed space, as etcd's defragment does.
    pub fn defragment(&mut self) {
        self.freed_bytes = 0;
    }

    fn record_size(key: &[u8], value: &[u8]) -> u64 {
        (key.len() + value.len()) as u64
    }
}

impl KvBackend for MemBackend {
    fn get(&self, bucket: Bucket, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.data.get(&(bucket, key.to_vec())).cloned())
    }

    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Scan,
    ) -> Result<(), BackendError> {
        let lower = Bound::Included((bucket, start.to_vec()));
        let upper = match end {
            Some(end) => Bound::Excluded((bucket, end.to_vec())),
            None => match Bucket::from_tag(bucket.tag() + 1) {
                Some(next) => Bound::Excluded((next, Vec::new())),
                None => Bound::Unbounded,
            },
        };
        if let (Bound::Included((_, s)), Bound::Excluded((b, e))) = (&lower, &upper) {
            if *b == bucket && s >= e {
                return Ok(());
            }
        }
        for ((_, k), v) in self.data.range((lower, upper)) {
            if visit(k, v) == Scan::Stop {
                break;
            }
        }
        Ok(())
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), BackendError> {
        for op in batch.ops {
            let new_size = op.value.as_ref().map(|v| Self::record_size(&op.key, v));
            let old = match op.value {
                Some(v) => self.data.insert((op.bucket, op.key.clone()), v),
                None => self.data.remove(&(op.bucket, op.key.clone())),
            };
            if let Some(old) = old {
                let old_size = Self::record_size(&op.key, &old);
                self.live_bytes -= old_size;
                self.freed_bytes += old_size;
            }
            if let Some(size) = new_size {
                self.live_bytes += size;
            }
        }
        Ok(())
    }

    fn replace_all(&mut self, records: Vec<BatchOp>) -> Result<(), BackendError> {
        *self = MemBackend::new();
        self.write(WriteBatch { ops: records })
    }

    fn size_bytes(&self) -> u64 {
        self.live_bytes + self.freed_bytes
    }

    fn size_in_use_bytes(&self) -> u64 {
        self.live_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(b: &MemBackend, bucket: Bucket, start: &[u8], end: Option<&[u8]>) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        b.scan(bucket, start, end, &mut |k, _| {
            keys.push(k.to_vec());
            Scan::Continue
        })
        .unwrap();
        keys
    }

    #[test]
    fn scan_stays_inside_its_bucket() {
        let mut b = MemBackend::new();
        let mut batch = WriteBatch::default();
        batch.put(Bucket::Key, b"a".to_vec(), b"1".to_vec());
        batch.put(Bucket::Key, b"b".to_vec(), b"2".to_vec());
        batch.put(Bucket::Meta, b"a".to_vec(), b"3".to_vec());
        b.write(batch).unwrap();
        assert_eq!(
            scan_all(&b, Bucket::Key, b"", None),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(scan_all(&b, Bucket::Key, b"b", None), vec![b"b".to_vec()]);
        assert_eq!(
            scan_all(&b, Bucket::Key, b"a", Some(b"b")),
            vec![b"a".to_vec()]
        );
        assert_eq!(scan_all(&b, Bucket::Meta, b"", None), vec![b"a".to_vec()]);
        assert!(scan_all(&b, Bucket::Key, b"c", Some(b"a")).is_empty());
    }

    #[test]
    fn size_tracks_live_and_freed_bytes() {
        let mut b = MemBackend::new();
        let mut batch = WriteBatch::default();
        batch.put(Bucket::Key, b"k".to_vec(), b"vv".to_vec());
        b.write(batch).unwrap();
        assert_eq!(b.size_in_use_bytes(), 3);
        let mut batch = WriteBatch::default();
        batch.delete(Bucket::Key, b"k".to_vec());
        b.write(batch).unwrap();
        assert_eq!(b.size_in_use_bytes(), 0);
        assert_eq!(b.size_bytes(), 3);
        b.defragment();
        assert_eq!(b.size_bytes(), 0);
    }
}
