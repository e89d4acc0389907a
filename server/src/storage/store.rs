//! The storage logic, written once for every device: what a member writes to disk and what it
//! reads back after a crash. Production runs it over RocksDB ([`super::rocks`]), the
//! simulator over its fault disk ([`super::fault`]); only the [`Device`] differs.
//!
//! Layout, in the device's two spaces:
//! - `raft`: the log (`e` + big-endian index → sealed `eraftpb.Entry`), `hard_state`,
//!   `compacted` (index and term of the last entry dropped) and `identity` (cluster id,
//!   member id, joined flag). Every value is sealed: `crc32c(body)` big-endian, then `body`.
//! - `kv`: the MVCC backend, bucket tag byte + key → value (the engine's [`KvBackend`]).
//!
//! Rules:
//! - A group of persist tasks is one batch, synced when any task must sync (group commit).
//! - An append replaces any stored suffix from its first index on; a snapshot install drops
//!   the whole stored log (entries past the snapshot's index belong to the history it
//!   replaced) and restarts it after the snapshot.
//! - A log compaction is written without sync after the backend batches it covers: the device
//!   keeps a prefix of batches, so it is never durable without them.
//! - At start every record's checksum is verified and the log must be contiguous from the
//!   compaction point, its terms never decreasing, the hard state's commit within it;
//!   anything else refuses the start with one line naming the path.

use std::sync::Arc;

use crc::{Crc, Table, CRC_32_ISCSI};
use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};
use strata_engine::backend::{BatchOp, Scan};
use strata_engine::bugs::{self, Bug};
use strata_engine::node::{PersistTask, PersistedLog};
use strata_engine::{BackendError, Bucket, KvBackend, LogIndex, Term, WriteBatch};

use super::device::{Device, DeviceBatch, DeviceError, Space};
use super::{check_contiguous, Identity, LogStorage, StorageError};

const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_COMPACTED: &[u8] = b"compacted";
const KEY_IDENTITY: &[u8] = b"identity";
const ENTRY_PREFIX: u8 = b'e';

/// Slice-by-16 tables: every raft entry is sealed on the write path (4 KiB of tables, several
/// times the single table's speed).
static CRC32C: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISCSI);

/// One member's store over its device. Cloning shares the device: the log half and the
/// backend half are two views of it.
pub struct Store<D: Device> {
    device: Arc<D>,
}

impl<D: Device> Clone for Store<D> {
    fn clone(&self) -> Self {
        Store {
            device: Arc::clone(&self.device),
        }
    }
}

impl<D: Device> std::fmt::Debug for Store<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.device.path())
            .finish()
    }
}

impl<D: Device> Store<D> {
    pub fn new(device: D) -> Store<D> {
        Store {
            device: Arc::new(device),
        }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn path(&self) -> String {
        self.device.path()
    }

    fn io(&self, e: DeviceError) -> StorageError {
        StorageError::Io {
            path: self.path(),
            reason: e.to_string(),
        }
    }

    fn corrupt(&self, reason: String) -> StorageError {
        StorageError::Corrupt {
            path: self.path(),
            reason,
        }
    }

    /// Reads and verifies one sealed record of the raft space.
    fn read_sealed(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(raw) = self.device.get(Space::Raft, key).map_err(|e| self.io(e))? else {
            return Ok(None);
        };
        self.unseal(key, &raw).map(Some)
    }

    fn unseal(&self, key: &[u8], raw: &[u8]) -> Result<Vec<u8>, StorageError> {
        unseal(raw)
            .ok_or_else(|| self.corrupt(format!("checksum mismatch in {}", record_name(key))))
    }

    /// Whether nothing was ever written: no identity, no hard state, no log.
    pub fn is_empty(&self) -> Result<bool, StorageError> {
        let mut any = false;
        self.device
            .scan(Space::Raft, b"", None, &mut |_, _| {
                any = true;
                false
            })
            .map_err(|e| self.io(e))?;
        Ok(!any)
    }

    pub fn identity(&self) -> Result<Option<Identity>, StorageError> {
        let Some(body) = self.read_sealed(KEY_IDENTITY)? else {
            return Ok(None);
        };
        if body.len() != 17 {
            return Err(self.corrupt(format!("identity record has {} bytes", body.len())));
        }
        Ok(Some(Identity {
            cluster_id: u64::from_be_bytes(body[..8].try_into().expect("8 bytes")),
            member_id: u64::from_be_bytes(body[8..16].try_into().expect("8 bytes")),
            joined: body[16] == 1,
        }))
    }

    /// Records who this data dir belongs to, or checks it against what was recorded.
    pub fn claim(&self, want: Identity) -> Result<(), StorageError> {
        match self.identity()? {
            Some(found) if found == want => Ok(()),
            Some(found) => Err(StorageError::WrongCluster {
                path: self.path(),
                found_cluster: found.cluster_id,
                found_member: found.member_id,
                want_cluster: want.cluster_id,
                want_member: want.member_id,
            }),
            None => {
                let mut body = want.cluster_id.to_be_bytes().to_vec();
                body.extend_from_slice(&want.member_id.to_be_bytes());
                body.push(want.joined as u8);
                let mut batch = DeviceBatch::default();
                batch.put(Space::Raft, KEY_IDENTITY, seal(&body));
                self.device.write(batch, true).map_err(|e| self.io(e))
            }
        }
    }

    /// Reads the persisted raft log, verifying every checksum and the log's contiguity.
    pub fn load_log(&self) -> Result<PersistedLog, StorageError> {
        let mut log = PersistedLog::default();
        if let Some(body) = self.read_sealed(KEY_HARD_STATE)? {
            log.hard_state = HardState::parse_from_bytes(&body)
                .map_err(|e| self.corrupt(format!("hard state: {e}")))?;
        }
        if let Some(body) = self.read_sealed(KEY_COMPACTED)? {
            if body.len() != 16 {
                return Err(self.corrupt("compaction point record is malformed".into()));
            }
            log.compacted = (
                LogIndex(u64::from_be_bytes(body[..8].try_into().expect("8 bytes"))),
                Term(u64::from_be_bytes(body[8..].try_into().expect("8 bytes"))),
            );
        }
        let start = entry_key(log.compacted.0 .0 + 1);
        let end = [ENTRY_PREFIX + 1];
        let mut failed = None;
        self.device
            .scan(Space::Raft, &start, Some(&end), &mut |key, value| {
                let entry = self.unseal(key, value).and_then(|body| {
                    Entry::parse_from_bytes(&body)
                        .map_err(|e| self.corrupt(format!("{}: {e}", record_name(key))))
                });
                match entry {
                    Ok(e) => {
                        log.entries.push(e);
                        true
                    }
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })
            .map_err(|e| self.io(e))?;
        if let Some(e) = failed {
            return Err(e);
        }
        check_contiguous(&self.path(), &log)?;
        Ok(log)
    }

    /// The raft log half. `bug` is the simulator's injected bug, if any.
    pub fn log(&self, bug: Option<Bug>) -> StoreLog<D> {
        StoreLog {
            store: self.clone(),
            last_index: None,
            bug,
        }
    }

    /// The MVCC backend half.
    pub fn backend(&self) -> StoreBackend<D> {
        StoreBackend {
            store: self.clone(),
        }
    }
}

/// A record's name for messages: `entry 42`, `hard_state`, ...
fn record_name(key: &[u8]) -> String {
    match key {
        [ENTRY_PREFIX, index @ ..] if index.len() == 8 => {
            format!(
                "entry {}",
                u64::from_be_bytes(index.try_into().expect("8 bytes"))
            )
        }
        _ => format!("record {}", String::from_utf8_lossy(key)),
    }
}

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ENTRY_PREFIX;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// `crc32c(body)` (big-endian) followed by `body`.
fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&CRC32C.checksum(body).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn unseal(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() < 4 {
        return None;
    }
    let (sum, body) = raw.split_at(4);
    (u32::from_be_bytes(sum.try_into().ok()?) == CRC32C.checksum(body)).then(|| body.to_vec())
}

fn compaction_body(index: LogIndex, term: Term) -> Vec<u8> {
    let mut body = index.0.to_be_bytes().to_vec();
    body.extend_from_slice(&term.0.to_be_bytes());
    body
}

/// The raft-log half of a member's store.
#[derive(Debug)]
pub struct StoreLog<D: Device> {
    store: Store<D>,
    /// The highest entry index stored (read from the device on first use).
    last_index: Option<u64>,
    bug: Option<Bug>,
}

impl<D: Device> StoreLog<D> {
    /// The highest stored entry index (0 for an empty log).
    fn last_index(&mut self) -> Result<u64, StorageError> {
        if let Some(last) = self.last_index {
            return Ok(last);
        }
        let store = &self.store;
        let found = store
            .device
            .last_below(Space::Raft, &[ENTRY_PREFIX + 1])
            .map_err(|e| store.io(e))?;
        let last = match found {
            Some(key) if key.len() == 9 && key[0] == ENTRY_PREFIX => {
                u64::from_be_bytes(key[1..].try_into().expect("8 bytes"))
            }
            _ => 0,
        };
        self.last_index = Some(last);
        Ok(last)
    }

    /// The batch that makes `tasks` durable, and whether it must be synced.
    fn batch(&mut self, tasks: Vec<PersistTask>) -> Result<(DeviceBatch, bool), StorageError> {
        let mut last = self.last_index()?;
        let mut batch = DeviceBatch::default();
        let mut sync = false;
        for task in tasks {
            sync |= task.must_sync;
            if let Some((index, term)) = task.snapshot {
                // The state machine installed a snapshot: the log restarts after it, empty.
                // Stored entries past the snapshot's index belong to a history the snapshot
                // replaced (raft-rs installs one only when its last entry does not match the
                // log), so they go too: kept, they would load after a restart as a tail whose
                // terms go back below the snapshot's (raft-rs's `MemStorage` drops them alike).
                let through = if bugs::active(self.bug, Bug::StaleTailAfterSnapshot) {
                    index.0
                } else {
                    last.max(index.0)
                };
                batch.delete_range(Space::Raft, entry_key(0), entry_key(through + 1));
                batch.put(
                    Space::Raft,
                    KEY_COMPACTED,
                    seal(&compaction_body(index, term)),
                );
                last = if bugs::active(self.bug, Bug::StaleTailAfterSnapshot) {
                    last.max(index.0)
                } else {
                    index.0
                };
            }
            if let Some(first) = task.entries.first() {
                // An append replaces any stored suffix from its first index on. Only a
                // conflicting append overlaps stored entries; a range tombstone on every
                // append piled up until RocksDB's memtable switch went quadratic (members
                // stalled and ran out of memory after ~170 K writes).
                if first.index <= last && !bugs::active(self.bug, Bug::AppendKeepsStaleSuffix) {
                    batch.delete_range(Space::Raft, entry_key(first.index), entry_key(last + 1));
                }
                last = task.entries.last().map(|e| e.index).unwrap_or(last);
                for e in &task.entries {
                    let body = e.write_to_bytes().expect("encode raft entry");
                    batch.put(Space::Raft, entry_key(e.index), seal(&body));
                }
            }
            if let Some(hs) = &task.hard_state {
                let body = hs.write_to_bytes().expect("encode hard state");
                batch.put(Space::Raft, KEY_HARD_STATE, seal(&body));
            }
        }
        self.last_index = Some(last);
        Ok((batch, sync))
    }
}

impl<D: Device> LogStorage for StoreLog<D> {
    async fn persist(&mut self, tasks: Vec<PersistTask>) -> Result<(), StorageError> {
        let (batch, sync) = match self.batch(tasks) {
            Ok(b) => b,
            Err(e) => {
                self.last_index = None;
                return Err(e);
            }
        };
        let device = &self.store.device;
        if sync {
            let delay = device.sync_delay();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        device.write(batch, sync).map_err(|e| {
            self.last_index = None;
            self.store.io(e)
        })
    }

    async fn compact(&mut self, index: LogIndex, term: Term) -> Result<(), StorageError> {
        let mut batch = DeviceBatch::default();
        batch.delete_range(Space::Raft, entry_key(0), entry_key(index.0 + 1));
        batch.put(
            Space::Raft,
            KEY_COMPACTED,
            seal(&compaction_body(index, term)),
        );
        self.store
            .device
            .write(batch, false)
            .map_err(|e| self.store.io(e))
    }
}

/// The MVCC backend half: the engine's [`KvBackend`] over the `kv` space.
#[derive(Debug)]
pub struct StoreBackend<D: Device> {
    store: Store<D>,
}

fn backend_error(op: &'static str, e: DeviceError) -> BackendError {
    BackendError {
        op,
        reason: e.to_string(),
    }
}

fn kv_key(bucket: Bucket, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(bucket.tag());
    k.extend_from_slice(key);
    k
}

impl<D: Device> crate::driver::ServerBackend for StoreBackend<D> {
    fn defragment(&self) -> Result<(), BackendError> {
        self.store
            .device
            .compact_files()
            .map_err(|e| backend_error("defragment", e))
    }

    /// The device's point-in-time view of the backend, decoded record by record as the
    /// consumer reads: the export costs no memory beyond what the device reads ahead.
    fn export(&self) -> Result<crate::driver::BackendExport, BackendError> {
        let records = self
            .store
            .device
            .export(Space::Kv)
            .map_err(|e| backend_error("export", e))?;
        let records = records.map(|item| {
            let (k, v) = item.map_err(|e| backend_error("export", e))?;
            let bucket = k
                .first()
                .and_then(|tag| Bucket::from_tag(*tag))
                .ok_or_else(|| BackendError {
                    op: "export",
                    reason: format!("record of no bucket: {k:?}"),
                })?;
            Ok((bucket, k[1..].to_vec(), v))
        });
        Ok(crate::driver::BackendExport {
            records: Box::new(records),
            scratch_dir: self.store.device.scratch_dir(),
        })
    }
}

impl<D: Device> KvBackend for StoreBackend<D> {
    fn get(&self, bucket: Bucket, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.store
            .device
            .get(Space::Kv, &kv_key(bucket, key))
            .map_err(|e| backend_error("get", e))
    }

    fn get_many(
        &self,
        bucket: Bucket,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| kv_key(bucket, k)).collect();
        self.store
            .device
            .get_many(Space::Kv, &keys)
            .map_err(|e| backend_error("get", e))
    }

    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Scan,
    ) -> Result<(), BackendError> {
        let from = kv_key(bucket, start);
        let upper = match end {
            Some(end) => kv_key(bucket, end),
            None => vec![bucket.tag() + 1],
        };
        self.store
            .device
            .scan(Space::Kv, &from, Some(&upper), &mut |k, v| {
                visit(&k[1..], v) == Scan::Continue
            })
            .map_err(|e| backend_error("scan", e))
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), BackendError> {
        let mut out = DeviceBatch::default();
        for op in batch.ops {
            let key = kv_key(op.bucket, &op.key);
            match op.value {
                Some(v) => out.put(Space::Kv, key, v),
                None => out.delete(Space::Kv, key),
            }
        }
        self.store
            .device
            .write(out, false)
            .map_err(|e| backend_error("write", e))
    }

    fn replace_all(&mut self, records: Vec<BatchOp>) -> Result<(), BackendError> {
        let mut out = DeviceBatch::default();
        out.delete_range(Space::Kv, [0u8], [0xffu8; 2]);
        for op in records {
            if let Some(v) = op.value {
                out.put(Space::Kv, kv_key(op.bucket, &op.key), v);
            }
        }
        self.store
            .device
            .write(out, true)
            .map_err(|e| backend_error("replace", e))
    }

    fn size_bytes(&self) -> u64 {
        self.store.device.size_bytes(Space::Kv)
    }

    fn size_in_use_bytes(&self) -> u64 {
        self.store
            .device
            .size_in_use_bytes(Space::Kv)
            .min(self.size_bytes())
    }
}

#[cfg(test)]
pub(crate) mod tests;
