//! RocksDB storage: one database per member, under `<data-dir>/member/db`, with two column
//! families sharing one write-ahead log:
//!
//! - `raft`: the raft log (`e` + big-endian index → crc32c + `eraftpb.Entry`), the hard state,
//!   the compaction point and the member's identity (cluster id, member id).
//! - `kv`: the MVCC backend (bucket tag byte + key → value), the engine's [`KvBackend`].
//!
//! Fsync policy: a log append is written with `sync = true` (one fsync per group of tasks:
//! group commit). Backend batches are written to the WAL without fsync: they are re-applied
//! from the log after a crash. Because both column families share one WAL, which RocksDB
//! recovers as a prefix, a log compaction (written after the backend batches it covers) is
//! never durable without those batches. Every log record carries a CRC-32C; a mismatch, a gap
//! or a commit index past the log's end refuses the start, naming the path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crc::{Crc, CRC_32_ISCSI};
use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions,
    WriteBatch as RocksBatch, WriteOptions, DB,
};
use strata_engine::backend::{BatchOp, Scan};
use strata_engine::node::{PersistTask, PersistedLog};
use strata_engine::{BackendError, Bucket, KvBackend, LogIndex, Term, WriteBatch};

use super::{check_contiguous, Identity, LogStorage, StorageError};

const CF_RAFT: &str = "raft";
const CF_KV: &str = "kv";
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_COMPACTED: &[u8] = b"compacted";
const KEY_IDENTITY: &[u8] = b"identity";
const ENTRY_PREFIX: u8 = b'e';

const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// The open database of one member.
#[derive(Clone)]
pub struct RocksStore {
    db: Arc<DB>,
    path: PathBuf,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .finish()
    }
}

/// The database directory inside a data dir.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("db")
}

impl RocksStore {
    /// Whether `data_dir` already holds a member's database.
    pub fn exists(data_dir: &Path) -> bool {
        db_path(data_dir).join("CURRENT").exists()
    }

    /// Opens (creating if `create`) the database under `data_dir`.
    pub fn open(data_dir: &Path, create: bool) -> Result<RocksStore, StorageError> {
        let path = db_path(data_dir);
        let io = |reason: String| StorageError::Io {
            path: path.display().to_string(),
            reason,
        };
        if create {
            std::fs::create_dir_all(&path).map_err(|e| io(format!("create: {e}")))?;
        } else if !RocksStore::exists(data_dir) {
            return Err(io("no database here (missing CURRENT file)".into()));
        }
        let mut opts = Options::default();
        opts.create_if_missing(create);
        opts.create_missing_column_families(create);
        opts.set_paranoid_checks(true);
        let cfs =
            [CF_RAFT, CF_KV].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, &path, cfs).map_err(|e| io(e.to_string()))?;
        Ok(RocksStore {
            db: Arc::new(db),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn path_string(&self) -> String {
        self.path.display().to_string()
    }

    fn io(&self, op: &str, e: rocksdb::Error) -> StorageError {
        StorageError::Io {
            path: self.path_string(),
            reason: format!("{op}: {e}"),
        }
    }

    fn corrupt(&self, reason: String) -> StorageError {
        StorageError::Corrupt {
            path: self.path_string(),
            reason,
        }
    }

    fn raft_cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_RAFT)
            .expect("raft column family opened")
    }

    fn kv_cf(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(CF_KV).expect("kv column family opened")
    }

    pub fn identity(&self) -> Result<Option<Identity>, StorageError> {
        let raw = self
            .db
            .get_cf(self.raft_cf(), KEY_IDENTITY)
            .map_err(|e| self.io("read identity", e))?;
        let Some(raw) = raw else { return Ok(None) };
        let body = self.unseal(KEY_IDENTITY, &raw)?;
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
                path: self.path_string(),
                found_cluster: found.cluster_id,
                found_member: found.member_id,
                want_cluster: want.cluster_id,
                want_member: want.member_id,
            }),
            None => {
                let mut body = want.cluster_id.to_be_bytes().to_vec();
                body.extend_from_slice(&want.member_id.to_be_bytes());
                body.push(want.joined as u8);
                let mut opts = WriteOptions::default();
                opts.set_sync(true);
                self.db
                    .put_cf_opt(self.raft_cf(), KEY_IDENTITY, seal(&body), &opts)
                    .map_err(|e| self.io("write identity", e))
            }
        }
    }

    /// Reads the persisted raft log, verifying every checksum and the log's contiguity.
    pub fn load_log(&self) -> Result<PersistedLog, StorageError> {
        let cf = self.raft_cf();
        let mut log = PersistedLog::default();
        if let Some(raw) = self
            .db
            .get_cf(cf, KEY_HARD_STATE)
            .map_err(|e| self.io("read hard state", e))?
        {
            let body = self.unseal(KEY_HARD_STATE, &raw)?;
            log.hard_state = HardState::parse_from_bytes(&body)
                .map_err(|e| self.corrupt(format!("hard state: {e}")))?;
        }
        if let Some(raw) = self
            .db
            .get_cf(cf, KEY_COMPACTED)
            .map_err(|e| self.io("read compaction point", e))?
        {
            let body = self.unseal(KEY_COMPACTED, &raw)?;
            if body.len() != 16 {
                return Err(self.corrupt("compaction point record is malformed".into()));
            }
            log.compacted = (
                LogIndex(u64::from_be_bytes(body[..8].try_into().expect("8 bytes"))),
                Term(u64::from_be_bytes(body[8..].try_into().expect("8 bytes"))),
            );
        }
        let start = entry_key(log.compacted.0 .0 + 1);
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
        {
            let (key, value) = item.map_err(|e| self.io("read log", e))?;
            if key.first() != Some(&ENTRY_PREFIX) {
                break;
            }
            let body = self.unseal(&key, &value)?;
            let entry = Entry::parse_from_bytes(&body)
                .map_err(|e| self.corrupt(format!("entry {:?}: {e}", key)))?;
            log.entries.push(entry);
        }
        check_contiguous(&self.path_string(), &log)?;
        Ok(log)
    }

    /// The MVCC backend over the same database.
    pub fn backend(&self) -> RocksBackend {
        RocksBackend {
            store: self.clone(),
        }
    }

    /// The raft log half.
    pub fn log(&self) -> RocksLog {
        RocksLog {
            last_index: None,
            store: self.clone(),
        }
    }

    /// Compacts the backend's files, returning freed space (etcd's defragment).
    pub fn defragment(&self) -> Result<(), StorageError> {
        self.db
            .compact_range_cf(self.kv_cf(), None::<&[u8]>, None::<&[u8]>);
        self.db
            .flush_cf(self.kv_cf())
            .map_err(|e| self.io("flush", e))?;
        self.db
            .compact_range_cf(self.kv_cf(), None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    fn unseal(&self, key: &[u8], raw: &[u8]) -> Result<Vec<u8>, StorageError> {
        unseal(raw).ok_or_else(|| {
            self.corrupt(format!(
                "checksum mismatch in record {}",
                String::from_utf8_lossy(key)
            ))
        })
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

/// The raft-log half of a member's database.
#[derive(Debug)]
pub struct RocksLog {
    store: RocksStore,
    /// The highest entry index stored (read from the database on first use).
    last_index: Option<u64>,
}

impl RocksLog {
    /// The highest stored entry index (0 for an empty log).
    fn last_index(&mut self) -> Result<u64, StorageError> {
        if let Some(last) = self.last_index {
            return Ok(last);
        }
        let store = &self.store;
        let end = entry_key(u64::MAX);
        let mut it = store.db.iterator_cf(
            store.raft_cf(),
            IteratorMode::From(&end, Direction::Reverse),
        );
        let last = match it.next() {
            Some(Ok((key, _))) if key.first() == Some(&ENTRY_PREFIX) && key.len() == 9 => {
                u64::from_be_bytes(key[1..].try_into().expect("8 bytes"))
            }
            Some(Err(e)) => return Err(store.io("read log end", e)),
            _ => 0,
        };
        self.last_index = Some(last);
        Ok(last)
    }

    fn write_tasks(&mut self, tasks: Vec<PersistTask>) -> Result<(), StorageError> {
        let mut last = self.last_index()?;
        let store = &self.store;
        let cf = store.raft_cf();
        let mut batch = RocksBatch::default();
        let mut sync = false;
        for task in tasks {
            sync |= task.must_sync;
            if let Some((index, term)) = task.snapshot {
                // The state machine installed a snapshot: the log restarts after it, empty.
                // Stored entries past the snapshot's index belong to a history the snapshot
                // replaced (raft-rs installs one only when its last entry does not match the
                // log), so they go too: kept, they would load after a restart as a tail whose
                // terms go back below the snapshot's (raft-rs's `MemStorage` drops them alike).
                batch.delete_range_cf(cf, entry_key(0), entry_key(last.max(index.0) + 1));
                batch.put_cf(cf, KEY_COMPACTED, seal(&compaction_body(index, term)));
                last = index.0;
            }
            if let Some(first) = task.entries.first() {
                // An append replaces any stored suffix from its first index on. Only a
                // conflicting append overlaps stored entries; a range tombstone on every
                // append piled up until RocksDB's memtable switch went quadratic (members
                // stalled and ran out of memory after ~170 K writes).
                if first.index <= last {
                    batch.delete_range_cf(cf, entry_key(first.index), entry_key(last + 1));
                }
                last = task.entries.last().map(|e| e.index).unwrap_or(last);
                for e in &task.entries {
                    let body = e.write_to_bytes().expect("encode raft entry");
                    batch.put_cf(cf, entry_key(e.index), seal(&body));
                }
            }
            if let Some(hs) = &task.hard_state {
                let body = hs.write_to_bytes().expect("encode hard state");
                batch.put_cf(cf, KEY_HARD_STATE, seal(&body));
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        store
            .db
            .write_opt(batch, &opts)
            .map_err(|e| store.io("append raft log", e))?;
        self.last_index = Some(last);
        Ok(())
    }
}

fn compaction_body(index: LogIndex, term: Term) -> Vec<u8> {
    let mut body = index.0.to_be_bytes().to_vec();
    body.extend_from_slice(&term.0.to_be_bytes());
    body
}

impl LogStorage for RocksLog {
    async fn persist(&mut self, tasks: Vec<PersistTask>) -> Result<(), StorageError> {
        self.write_tasks(tasks)
    }

    async fn compact(&mut self, index: LogIndex, term: Term) -> Result<(), StorageError> {
        let store = &self.store;
        let cf = store.raft_cf();
        let mut batch = RocksBatch::default();
        batch.delete_range_cf(cf, entry_key(0), entry_key(index.0 + 1));
        batch.put_cf(cf, KEY_COMPACTED, seal(&compaction_body(index, term)));
        store
            .db
            .write(batch)
            .map_err(|e| store.io("compact raft log", e))
    }
}

/// The MVCC backend half: the engine's [`KvBackend`] over the `kv` column family.
#[derive(Debug)]
pub struct RocksBackend {
    store: RocksStore,
}

/// Records an export reads ahead of its consumer.
const EXPORT_QUEUE: usize = 256;

impl crate::driver::ServerBackend for RocksBackend {
    fn defragment(&self) -> Result<(), BackendError> {
        self.store.defragment().map_err(|e| BackendError {
            op: "defragment",
            reason: e.to_string(),
        })
    }

    /// A RocksDB snapshot taken by a reader thread before this returns (so it holds exactly
    /// what the driver has written), then read record by record into a bounded queue: the
    /// export costs no memory beyond the queue, whatever the store's size.
    fn export(&self) -> Result<crate::driver::BackendExport, BackendError> {
        let db = Arc::clone(&self.store.db);
        let (taken_tx, taken_rx) = std::sync::mpsc::sync_channel::<()>(0);
        let (tx, rx) = std::sync::mpsc::sync_channel(EXPORT_QUEUE);
        std::thread::Builder::new()
            .name("backend-export".into())
            .spawn(move || {
                let snapshot = db.snapshot();
                let _ = taken_tx.send(());
                let cf = db.cf_handle(CF_KV).expect("kv column family opened");
                for item in snapshot.iterator_cf(cf, IteratorMode::Start) {
                    let record = item
                        .map_err(|e| backend_error("export", e))
                        .and_then(|(k, v)| {
                            let bucket = k
                                .first()
                                .and_then(|tag| Bucket::from_tag(*tag))
                                .ok_or_else(|| BackendError {
                                    op: "export",
                                    reason: format!("record of no bucket: {k:?}"),
                                })?;
                            Ok((bucket, k[1..].to_vec(), v.into_vec()))
                        });
                    let failed = record.is_err();
                    if tx.send(record).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| BackendError {
                op: "export",
                reason: format!("cannot start the reader thread: {e}"),
            })?;
        taken_rx.recv().map_err(|_| BackendError {
            op: "export",
            reason: "the reader thread ended before taking its snapshot".into(),
        })?;
        Ok(crate::driver::BackendExport {
            records: Box::new(rx.into_iter()),
            scratch_dir: self
                .store
                .path
                .parent()
                .unwrap_or(&self.store.path)
                .to_path_buf(),
        })
    }
}

fn backend_error(op: &'static str, e: rocksdb::Error) -> BackendError {
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

impl KvBackend for RocksBackend {
    fn get(&self, bucket: Bucket, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.store
            .db
            .get_cf(self.store.kv_cf(), kv_key(bucket, key))
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
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(upper);
        let iter = self.store.db.iterator_cf_opt(
            self.store.kv_cf(),
            opts,
            IteratorMode::From(&from, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| backend_error("scan", e))?;
            if visit(&k[1..], &v) == Scan::Stop {
                break;
            }
        }
        Ok(())
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), BackendError> {
        let cf = self.store.kv_cf();
        let mut rb = RocksBatch::default();
        for op in batch.ops {
            let key = kv_key(op.bucket, &op.key);
            match op.value {
                Some(v) => rb.put_cf(cf, key, v),
                None => rb.delete_cf(cf, key),
            }
        }
        self.store
            .db
            .write(rb)
            .map_err(|e| backend_error("write", e))
    }

    fn replace_all(&mut self, records: Vec<BatchOp>) -> Result<(), BackendError> {
        let cf = self.store.kv_cf();
        let mut rb = RocksBatch::default();
        rb.delete_range_cf(cf, [0u8].as_slice(), [0xffu8; 2].as_slice());
        for op in records {
            if let Some(v) = op.value {
                rb.put_cf(cf, kv_key(op.bucket, &op.key), v);
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.store
            .db
            .write_opt(rb, &opts)
            .map_err(|e| backend_error("replace", e))
    }

    fn size_bytes(&self) -> u64 {
        let prop = |name: &str| {
            self.store
                .db
                .property_int_value_cf(self.store.kv_cf(), name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        prop("rocksdb.total-sst-files-size") + prop("rocksdb.cur-size-all-mem-tables")
    }

    fn size_in_use_bytes(&self) -> u64 {
        let prop = |name: &str| {
            self.store
                .db
                .property_int_value_cf(self.store.kv_cf(), name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        let live =
            prop("rocksdb.estimate-live-data-size") + prop("rocksdb.cur-size-all-mem-tables");
        live.min(self.size_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Entry;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 8].into(),
            ..Default::default()
        }
    }

    fn task(number: u64, entries: Vec<Entry>, commit: u64) -> PersistTask {
        let hs = HardState {
            term: 2,
            commit,
            ..Default::default()
        };
        PersistTask {
            number,
            hard_state: Some(hs),
            entries,
            snapshot: None,
            must_sync: true,
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn log_survives_reopen_and_suffix_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = RocksStore::open(dir.path(), true).expect("open");
            let mut log = store.log();
            block_on(log.persist(vec![
                task(1, (1..=5).map(|i| entry(i, 1)).collect(), 3),
                task(2, vec![entry(4, 2)], 4),
            ]))
            .expect("persist");
        }
        let store = RocksStore::open(dir.path(), false).expect("reopen");
        let log = store.load_log().expect("load");
        let got: Vec<_> = log.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, vec![(1, 1), (2, 1), (3, 1), (4, 2)]);
        assert_eq!(log.hard_state.commit, 4);
    }

    #[test]
    fn conflicting_append_after_reopen_replaces_the_stored_suffix() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = RocksStore::open(dir.path(), true).expect("open");
            block_on(
                store
                    .log()
                    .persist(vec![task(1, (1..=5).map(|i| entry(i, 1)).collect(), 2)]),
            )
            .expect("persist");
        }
        let store = RocksStore::open(dir.path(), false).expect("reopen");
        let mut log = store.log();
        // Appends that only extend the log leave no range delete behind; a conflicting one
        // (index 3 of a later term) must find the stored end and cut it.
        block_on(log.persist(vec![task(2, vec![entry(3, 2)], 2)])).expect("persist");
        block_on(log.persist(vec![task(3, vec![entry(4, 2)], 2)])).expect("persist");
        let loaded = store.load_log().expect("load");
        let got: Vec<_> = loaded.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
    }

    /// A snapshot replacing a divergent history drops the stored tail past its index: after a
    /// restart the log holds nothing older than the snapshot's term after it (issue 15's
    /// stale-tail bug: entries 6..8 of term 1 survived a snapshot at 5 of term 3).
    #[test]
    fn a_snapshot_install_drops_the_stale_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = RocksStore::open(dir.path(), true).expect("open");
            let mut log = store.log();
            block_on(log.persist(vec![task(1, (1..=8).map(|i| entry(i, 1)).collect(), 4)]))
                .expect("persist");
            let mut install = task(2, Vec::new(), 5);
            install.snapshot = Some((LogIndex(5), Term(3)));
            block_on(log.persist(vec![install])).expect("install");
            // The member crashes before appending anything after the snapshot.
        }
        let store = RocksStore::open(dir.path(), false).expect("reopen");
        let loaded = store.load_log().expect("load");
        assert_eq!(loaded.compacted, (LogIndex(5), Term(3)));
        assert!(loaded.entries.is_empty(), "{:?}", loaded.entries);
        // The next append goes right after the snapshot.
        block_on(store.log().persist(vec![task(3, vec![entry(6, 3)], 6)])).expect("append");
        let loaded = store.load_log().expect("load");
        let got: Vec<_> = loaded.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, vec![(6, 3)]);
    }

    #[test]
    fn a_log_whose_terms_go_down_is_refused_at_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), true).expect("open");
        let entries = vec![entry(1, 2), entry(2, 1)];
        block_on(store.log().persist(vec![task(1, entries, 1)])).expect("persist");
        let err = store.load_log().expect_err("terms go down");
        assert!(
            err.to_string().contains("entry 2 has term 1 after term 2"),
            "{err}"
        );
    }

    #[test]
    fn compaction_keeps_the_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), true).expect("open");
        let mut log = store.log();
        block_on(log.persist(vec![task(1, (1..=6).map(|i| entry(i, 1)).collect(), 6)]))
            .expect("persist");
        block_on(log.compact(LogIndex(4), Term(1))).expect("compact");
        let loaded = store.load_log().expect("load");
        assert_eq!(loaded.compacted, (LogIndex(4), Term(1)));
        let got: Vec<_> = loaded.entries.iter().map(|e| e.index).collect();
        assert_eq!(got, vec![5, 6]);
    }

    #[test]
    fn corrupt_entry_is_refused_with_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = RocksStore::open(dir.path(), true).expect("open");
            block_on(
                store
                    .log()
                    .persist(vec![task(1, vec![entry(1, 1), entry(2, 1)], 1)]),
            )
            .expect("persist");
            // Flip a byte of entry 2 behind the checksum's back.
            let mut raw = store
                .db
                .get_cf(store.raft_cf(), entry_key(2))
                .expect("get")
                .expect("present");
            let last = raw.len() - 1;
            raw[last] ^= 0xff;
            store
                .db
                .put_cf(store.raft_cf(), entry_key(2), raw)
                .expect("put");
        }
        let store = RocksStore::open(dir.path(), false).expect("reopen");
        let err = store
            .load_log()
            .expect_err("corruption detected")
            .to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        assert!(err.contains("member/db"), "{err}");
    }

    #[test]
    fn a_data_dir_of_another_cluster_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), true).expect("open");
        let me = Identity {
            cluster_id: 1,
            member_id: 2,
            joined: false,
        };
        store.claim(me).expect("first claim");
        store.claim(me).expect("same identity");
        let err = store
            .claim(Identity {
                cluster_id: 9,
                member_id: 2,
                joined: false,
            })
            .expect_err("other cluster");
        assert!(err.to_string().contains("belongs to cluster 1"), "{err}");
    }

    #[test]
    fn backend_scan_stays_in_bucket_and_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), true).expect("open");
        let mut b = store.backend();
        let mut batch = WriteBatch::default();
        for k in ["a", "b", "c", "d"] {
            batch.put(Bucket::Key, k.as_bytes().to_vec(), b"v".to_vec());
            batch.put(Bucket::Lease, k.as_bytes().to_vec(), b"l".to_vec());
        }
        b.write(batch).expect("write");
        let mut seen = Vec::new();
        b.scan(Bucket::Key, b"b", Some(b"d"), &mut |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            Scan::Continue
        })
        .expect("scan");
        assert_eq!(
            seen,
            vec![
                (b"b".to_vec(), b"v".to_vec()),
                (b"c".to_vec(), b"v".to_vec())
            ]
        );
        let mut all = 0;
        b.scan(Bucket::Lease, b"", None, &mut |_, _| {
            all += 1;
            Scan::Continue
        })
        .expect("scan");
        assert_eq!(all, 4);
    }
}
