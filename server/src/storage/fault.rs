//! The fault disk: the [`Device`] contract as a model, in memory, with the faults a real disk
//! has. The simulator runs every member's storage logic over one; the model-based test holds
//! RocksDB to it. (madsim's `fs` has no power-failure model, hence this.)
//!
//! Model:
//! - `current` is what reads see; `durable` is what survives a power cut; `pending` are the
//!   batches written since the last fsync, in order (in the page cache).
//! - A synced write applies `pending` and itself to `durable` (one fsync). A slow disk makes
//!   the caller wait [`Device::sync_delay`] first.
//! - An injected fsync error loses `pending` (the kernel forgets failed pages: "fsyncgate"),
//!   fails the write, and leaves the device refusing writes until the process restarts (as
//!   RocksDB does after a failed WAL sync): the member must stop.
//! - A crash ([`FaultDevice::crash`]) keeps a prefix of `pending` (none, some with the next
//!   batch torn — a torn batch is dropped whole, as RocksDB's WAL recovery drops a torn last
//!   record — or all), then `current` restarts from `durable`.
//! - Bit rot flips one bit of a durable record of the raft space: the storage logic's
//!   checksums must catch it at the next start.
//!
//! Invariant: after a crash, `current == durable ==` the replay of a prefix of the batches
//! written, and that prefix includes every batch a synced write returned `Ok` after.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::device::{Device, DeviceBatch, DeviceError, DeviceOp, Export, Space};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// Both spaces' records, and the bytes each holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Spaces {
    maps: [Map; 2],
    live: [u64; 2],
}

impl Spaces {
    fn map(&self, space: Space) -> &Map {
        &self.maps[space as usize]
    }

    fn map_mut(&mut self, space: Space) -> &mut Map {
        &mut self.maps[space as usize]
    }

    /// Applies `batch`; returns the bytes of the kv space its deletes and overwrites freed.
    fn apply(&mut self, batch: &DeviceBatch) -> u64 {
        let mut freed = [0u64; 2];
        for op in &batch.ops {
            match op {
                DeviceOp::Put(space, k, v) => {
                    self.live[*space as usize] += (k.len() + v.len()) as u64;
                    if let Some(old) = self.map_mut(*space).insert(k.clone(), v.clone()) {
                        freed[*space as usize] += (k.len() + old.len()) as u64;
                    }
                }
                DeviceOp::Delete(space, k) => {
                    if let Some(old) = self.map_mut(*space).remove(k) {
                        freed[*space as usize] += (k.len() + old.len()) as u64;
                    }
                }
                DeviceOp::DeleteRange(space, start, end) => {
                    if start >= end {
                        continue;
                    }
                    let map = self.map_mut(*space);
                    let doomed: Vec<Vec<u8>> = map
                        .range::<[u8], _>((Bound::Included(&start[..]), Bound::Excluded(&end[..])))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        if let Some(old) = map.remove(&k) {
                            freed[*space as usize] += (k.len() + old.len()) as u64;
                        }
                    }
                }
            }
        }
        for space in Space::ALL {
            self.live[space as usize] -= freed[space as usize];
        }
        freed[Space::Kv as usize]
    }
}

/// How a crash treats the batches written since the last fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// All lost (power cut).
    LoseUnsynced,
    /// A prefix reached the platter and the next batch was torn mid-write (dropped whole).
    TornTail,
    /// All kept (the process died, the OS flushed its page cache).
    KeepUnsynced,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub writes: u64,
    pub fsyncs: u64,
    pub torn_tails: u64,
    /// Batches a crash or a failed fsync lost.
    pub lost_batches: u64,
}

#[derive(Debug, Default)]
struct DiskState {
    current: Spaces,
    durable: Spaces,
    pending: Vec<DeviceBatch>,
    /// A failed fsync: writes are refused until the next crash (process restart).
    failed: bool,
    fail_next_fsync: bool,
    slow: Duration,
    /// Bytes deleted or overwritten in the kv space since the last defragment.
    freed: u64,
    stats: DiskStats,
}

/// One member's disk. Cloning shares it: the member's storage and the nemesis hold it, and it
/// outlives the member's process.
#[derive(Clone, Debug)]
pub struct FaultDevice {
    inner: Arc<Mutex<DiskState>>,
    name: String,
}

impl FaultDevice {
    pub fn new(name: impl Into<String>) -> FaultDevice {
        FaultDevice {
            inner: Arc::default(),
            name: name.into(),
        }
    }

    fn state(&self) -> MutexGuard<'_, DiskState> {
        self.inner.lock().expect("disk lock")
    }

    pub fn stats(&self) -> DiskStats {
        self.state().stats
    }

    /// The member's process ended: unsynced batches are kept, lost or torn per `mode`;
    /// `draw` picks how many survive a torn tail (it gets the count pending, returns
    /// `0..=count`).
    pub fn crash(&self, mode: Crash, draw: impl FnOnce(usize) -> usize) {
        let mut st = self.state();
        let pending = std::mem::take(&mut st.pending);
        let keep = match mode {
            Crash::KeepUnsynced => pending.len(),
            Crash::LoseUnsynced => 0,
            Crash::TornTail => {
                let keep = draw(pending.len()).min(pending.len());
                if keep < pending.len() {
                    st.stats.torn_tails += 1;
                }
                keep
            }
        };
        st.stats.lost_batches += (pending.len() - keep) as u64;
        for batch in &pending[..keep] {
            st.durable.apply(batch);
        }
        st.current = st.durable.clone();
        st.failed = false;
    }

    /// Flips one bit of a durable record of the raft space; false if there is none.
    pub fn bitrot(&self, draw: impl FnOnce(usize) -> usize) -> bool {
        let mut st = self.state();
        let keys: Vec<Vec<u8>> = st.durable.map(Space::Raft).keys().cloned().collect();
        if keys.is_empty() {
            return false;
        }
        let key = &keys[draw(keys.len()) % keys.len()];
        let mut value = st.durable.map(Space::Raft)[key].clone();
        if value.is_empty() {
            return false;
        }
        let bit = (key.len() * 7919 + value.len()) % (value.len() * 8);
        value[bit / 8] ^= 1 << (bit % 8);
        st.durable
            .map_mut(Space::Raft)
            .insert(key.clone(), value.clone());
        // A running member's later reads see the platter too (no cache in this model).
        st.current.map_mut(Space::Raft).insert(key.clone(), value);
        true
    }

    pub fn fail_next_fsync(&self) {
        self.state().fail_next_fsync = true;
    }

    pub fn set_slow(&self, by: Duration) {
        self.state().slow = by;
    }

    /// Ends every injected fault still pending (the final heal): no slowness, no armed fsync
    /// error. Bit rot already on the platter stays.
    pub fn heal(&self) {
        let mut st = self.state();
        st.slow = Duration::ZERO;
        st.fail_next_fsync = false;
    }

    /// The records of `space` as reads see them now, in key order (the export's copy).
    pub fn contents(&self, space: Space) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.state()
            .current
            .map(space)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl Device for FaultDevice {
    fn path(&self) -> String {
        format!("sim-disk/{}", self.name)
    }

    fn scratch_dir(&self) -> PathBuf {
        std::env::temp_dir()
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, DeviceError> {
        Ok(self.state().current.map(space).get(key).cloned())
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), DeviceError> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        // Visit outside the lock: a visitor may read the device again.
        let mut from = Bound::Included(start.to_vec());
        loop {
            let next = {
                let st = self.state();
                let upper = end.map_or(Bound::Unbounded, |e| Bound::Excluded(e.to_vec()));
                st.current
                    .map(space)
                    .range((from.clone(), upper))
                    .next()
                    .map(|(k, v)| (k.clone(), v.clone()))
            };
            let Some((k, v)) = next else { return Ok(()) };
            if !visit(&k, &v) {
                return Ok(());
            }
            from = Bound::Excluded(k);
        }
    }

    fn last_below(&self, space: Space, end: &[u8]) -> Result<Option<Vec<u8>>, DeviceError> {
        Ok(self
            .state()
            .current
            .map(space)
            .range(..end.to_vec())
            .next_back()
            .map(|(k, _)| k.clone()))
    }

    fn write(&self, batch: DeviceBatch, sync: bool) -> Result<(), DeviceError> {
        let mut st = self.state();
        if st.failed {
            return Err(DeviceError {
                op: "write",
                reason: "the disk failed an earlier fsync; restart the process".into(),
            });
        }
        st.stats.writes += 1;
        st.freed += st.current.apply(&batch);
        st.pending.push(batch);
        if !sync {
            return Ok(());
        }
        st.stats.fsyncs += 1;
        if st.fail_next_fsync {
            st.fail_next_fsync = false;
            st.failed = true;
            st.stats.lost_batches += st.pending.len() as u64;
            st.pending.clear();
            return Err(DeviceError {
                op: "fsync",
                reason: "input/output error (injected)".into(),
            });
        }
        let pending = std::mem::take(&mut st.pending);
        for batch in &pending {
            st.durable.apply(batch);
        }
        Ok(())
    }

    fn sync_delay(&self) -> Duration {
        self.state().slow
    }

    /// A copy: simulated stores are small.
    fn export(&self, space: Space) -> Result<Export, DeviceError> {
        Ok(Box::new(self.contents(space).into_iter().map(Ok)))
    }

    fn compact_files(&self) -> Result<(), DeviceError> {
        self.state().freed = 0;
        Ok(())
    }

    fn size_bytes(&self, space: Space) -> u64 {
        let freed = if space == Space::Kv {
            self.state().freed
        } else {
            0
        };
        self.size_in_use_bytes(space) + freed
    }

    fn size_in_use_bytes(&self, space: Space) -> u64 {
        self.state().current.live[space as usize]
    }
}
