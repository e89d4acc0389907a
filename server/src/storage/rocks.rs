//! The production device: RocksDB, one database per member under `<data-dir>/member/db`, with
//! one column family per [`Space`] sharing one write-ahead log.
//!
//! How it keeps the [`Device`] contract: a `WriteBatch` is atomic; a synced write fsyncs the
//! shared WAL, which holds every earlier write of both column families; RocksDB recovers the
//! WAL as a prefix (a torn last record is dropped, as etcd's WAL repair does), and after a
//! failed WAL sync it refuses writes (its background error). Paranoid checks verify block
//! checksums of the files it reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions,
    WriteBatch as RocksBatch, WriteOptions, DB,
};

use super::device::{Device, DeviceBatch, DeviceError, DeviceOp, Export, Space};
use super::store::Store;
use super::StorageError;

/// A member's store on RocksDB.
pub type RocksStore = Store<RocksDevice>;

/// The open database of one member.
pub struct RocksDevice {
    db: Arc<DB>,
    path: PathBuf,
}

impl std::fmt::Debug for RocksDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDevice")
            .field("path", &self.path)
            .finish()
    }
}

/// The database directory inside a data dir.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("db")
}

/// Records an export reads ahead of its consumer.
const EXPORT_QUEUE: usize = 256;

impl Store<RocksDevice> {
    /// Whether `data_dir` already holds a member's database, whole or damaged: anything in
    /// `member/db` counts, so a database that lost files is refused at open, never taken
    /// for a fresh member's and bootstrapped over.
    pub fn exists(data_dir: &Path) -> bool {
        std::fs::read_dir(db_path(data_dir)).is_ok_and(|mut entries| entries.next().is_some())
    }

    /// Opens (creating if `create`) the database under `data_dir`.
    pub fn open(data_dir: &Path, create: bool) -> Result<RocksStore, StorageError> {
        RocksDevice::open(data_dir, create).map(Store::new)
    }
}

impl RocksDevice {
    pub fn open(data_dir: &Path, create: bool) -> Result<RocksDevice, StorageError> {
        let path = db_path(data_dir);
        let io = |reason: String| StorageError::Io {
            path: path.display().to_string(),
            reason,
        };
        if create {
            std::fs::create_dir_all(&path).map_err(|e| io(format!("create: {e}")))?;
        } else if !path.join("CURRENT").exists() {
            return Err(io(
                "no database here, or a damaged one (missing CURRENT file)".into(),
            ));
        }
        let mut opts = Options::default();
        opts.create_if_missing(create);
        opts.create_missing_column_families(create);
        opts.set_paranoid_checks(true);
        // The raft space's vector memtable (see `space_options`) takes one writer at a time.
        opts.set_allow_concurrent_memtable_write(false);
        let cfs = Space::ALL.map(|s| ColumnFamilyDescriptor::new(s.name(), space_options(s)));
        let db = DB::open_cf_descriptors(&opts, &path, cfs).map_err(|e| io(e.to_string()))?;
        Ok(RocksDevice {
            db: Arc::new(db),
            path,
        })
    }

    fn cf(&self, space: Space) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(space.name())
            .expect("column families opened with the database")
    }

    fn property(&self, space: Space, name: &str) -> u64 {
        self.db
            .property_int_value_cf(self.cf(space), name)
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}

/// Column family options. The raft space is written in index order and read only at start-up
/// (the engine keeps the log it needs in memory), so its memtable is a vector: an append
/// instead of a skiplist search per entry (the skiplist was ~10 % of a member's CPU under
/// puts). A vector memtable sorts a copy when read, which start-up does a handful of times.
fn space_options(space: Space) -> Options {
    let mut opts = Options::default();
    if space == Space::Raft {
        opts.set_memtable_factory(rocksdb::MemtableFactory::Vector);
    }
    opts
}

fn failed(op: &'static str) -> impl Fn(rocksdb::Error) -> DeviceError {
    move |e| DeviceError {
        op,
        reason: e.to_string(),
    }
}

impl Device for RocksDevice {
    fn path(&self) -> String {
        self.path.display().to_string()
    }

    fn scratch_dir(&self) -> PathBuf {
        self.path.parent().unwrap_or(&self.path).to_path_buf()
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, DeviceError> {
        self.db.get_cf(self.cf(space), key).map_err(failed("get"))
    }

    /// RocksDB's batched MultiGet: one pass over the memtables and table files for the lot.
    fn get_many(
        &self,
        space: Space,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, DeviceError> {
        self.db
            .batched_multi_get_cf(self.cf(space), keys, false)
            .into_iter()
            .map(|r| {
                r.map(|v| v.map(|p| p.to_vec()))
                    .map_err(failed("multi_get"))
            })
            .collect()
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), DeviceError> {
        let mut opts = ReadOptions::default();
        if let Some(end) = end {
            opts.set_iterate_upper_bound(end.to_vec());
        }
        let iter = self.db.iterator_cf_opt(
            self.cf(space),
            opts,
            IteratorMode::From(start, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(failed("scan"))?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn last_below(&self, space: Space, end: &[u8]) -> Result<Option<Vec<u8>>, DeviceError> {
        // SeekForPrev lands on the greatest key <= end: step past `end` itself.
        let iter = self
            .db
            .iterator_cf(self.cf(space), IteratorMode::From(end, Direction::Reverse));
        for item in iter {
            let (key, _) = item.map_err(failed("seek"))?;
            if &*key < end {
                return Ok(Some(key.into_vec()));
            }
        }
        Ok(None)
    }

    fn write(&self, batch: DeviceBatch, sync: bool) -> Result<(), DeviceError> {
        let mut rb = RocksBatch::default();
        for op in batch.ops {
            match op {
                DeviceOp::Put(space, k, v) => rb.put_cf(self.cf(space), k, v),
                DeviceOp::Delete(space, k) => rb.delete_cf(self.cf(space), k),
                DeviceOp::DeleteRange(space, start, end) => {
                    rb.delete_range_cf(self.cf(space), start, end)
                }
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(rb, &opts).map_err(failed("write"))
    }

    /// A RocksDB snapshot taken by a reader thread before this returns (so it holds exactly
    /// what was written so far), then read record by record into a bounded queue.
    fn export(&self, space: Space) -> Result<Export, DeviceError> {
        let db = Arc::clone(&self.db);
        let (taken_tx, taken_rx) = std::sync::mpsc::sync_channel::<()>(0);
        let (tx, rx) = std::sync::mpsc::sync_channel(EXPORT_QUEUE);
        std::thread::Builder::new()
            .name("backend-export".into())
            .spawn(move || {
                let snapshot = db.snapshot();
                let _ = taken_tx.send(());
                let cf = db
                    .cf_handle(space.name())
                    .expect("column families opened with the database");
                for item in snapshot.iterator_cf(cf, IteratorMode::Start) {
                    let record = item
                        .map(|(k, v)| (k.into_vec(), v.into_vec()))
                        .map_err(failed("export"));
                    let failed = record.is_err();
                    if tx.send(record).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| DeviceError {
                op: "export",
                reason: format!("cannot start the reader thread: {e}"),
            })?;
        taken_rx.recv().map_err(|_| DeviceError {
            op: "export",
            reason: "the reader thread ended before taking its snapshot".into(),
        })?;
        Ok(Box::new(rx.into_iter()))
    }

    fn compact_files(&self) -> Result<(), DeviceError> {
        let cf = self.cf(Space::Kv);
        self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        self.db.flush_cf(cf).map_err(failed("flush"))?;
        self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    fn size_bytes(&self, space: Space) -> u64 {
        self.property(space, "rocksdb.total-sst-files-size")
            + self.property(space, "rocksdb.cur-size-all-mem-tables")
    }

    fn size_in_use_bytes(&self, space: Space) -> u64 {
        self.property(space, "rocksdb.estimate-live-data-size")
            + self.property(space, "rocksdb.cur-size-all-mem-tables")
    }
}
