//! The simulated disk: the project's own fault disk behind the server's storage traits
//! ([`LogStorage`] for the raft log, [`ServerBackend`] for MVCC), because madsim's `fs` has no
//! power-failure model.
//!
//! Model (a write-ahead log, as RocksDB's WAL and etcd's WAL are):
//! - Every write appends one sealed record (`crc32c ‖ body`) to `pending`: written, in the
//!   page cache, not yet durable. Backend writes never fsync on their own; like RocksDB's
//!   shared WAL, they become durable with the next raft-log fsync.
//! - `persist` with a task that must sync moves `pending` to `durable` (one fsync for the
//!   group). A slow disk sleeps first; an injected fsync error drops `pending` (the kernel
//!   forgets failed pages: "fsyncgate") and fails, and the node must stop.
//! - A crash ([`SimDisk::crash`]) loses `pending`, or keeps a prefix of it with the last record
//!   torn, or keeps it all (process crash, OS alive).
//! - [`SimDisk::load`] replays `durable` in order, verifying every checksum: a bad last
//!   record is a torn tail and is dropped (as etcd's WAL repair does); a bad record anywhere
//!   else is corruption and the member refuses to start, naming the disk.
//! - Bit rot flips one bit of a durable record that is not the last.
//!
//! Invariant: the state `load` returns is exactly the replay of a prefix of the records
//! written, and includes every record that was durable when an fsync returned `Ok`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};
use strata_engine::backend::{BatchOp, Bucket, KvBackend, MemBackend, Scan, WriteBatch};
use strata_engine::node::{PersistTask, PersistedLog};
use strata_engine::{BackendError, LogIndex, Term};
use strata_server::driver::{BackendExport, ServerBackend};
use strata_server::storage::{check_contiguous, LogStorage, StorageError};

use crate::scenario::CrashDisk;

static CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Records beyond which a sync folds the durable log into one checkpoint record.
const CHECKPOINT_AFTER: usize = 4096;

/// One member's disk. Cloning shares it: the member's storage and the nemesis hold it, and it
/// outlives the member's process.
#[derive(Clone, Debug)]
pub struct SimDisk {
    inner: Arc<Mutex<DiskState>>,
    name: String,
}

#[derive(Debug, Default)]
struct DiskState {
    durable: Vec<Vec<u8>>,
    pending: Vec<Vec<u8>>,
    fail_next_fsync: bool,
    slow: Duration,
    stats: DiskStats,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub writes: u64,
    pub fsyncs: u64,
    pub torn_tails: u64,
    pub lost_records: u64,
}

/// What a disk holds, decoded.
#[derive(Debug)]
pub struct Loaded {
    pub log: PersistedLog,
    pub backend: MemBackend,
    /// Whether anything was ever written (a fresh disk bootstraps).
    pub fresh: bool,
    /// A torn tail record was dropped.
    pub torn_tail: bool,
}

impl SimDisk {
    pub fn new(name: String) -> SimDisk {
        SimDisk {
            inner: Arc::default(),
            name,
        }
    }

    fn path(&self) -> String {
        format!("sim-disk/{}", self.name)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, DiskState> {
        self.inner.lock().expect("disk lock")
    }

    pub fn stats(&self) -> DiskStats {
        self.state().stats
    }

    fn write(&self, rec: &Record) {
        let mut st = self.state();
        st.stats.writes += 1;
        st.pending.push(seal(&rec.encode()));
    }

    /// Makes every pending record durable: one fsync.
    async fn sync(&self) -> Result<(), StorageError> {
        let slow = self.state().slow;
        if !slow.is_zero() {
            tokio::time::sleep(slow).await;
        }
        let mut st = self.state();
        st.stats.fsyncs += 1;
        if st.fail_next_fsync {
            st.fail_next_fsync = false;
            let lost = st.pending.len() as u64;
            st.stats.lost_records += lost;
            st.pending.clear();
            return Err(StorageError::Io {
                path: self.path(),
                reason: "fsync: input/output error (injected)".into(),
            });
        }
        let pending = std::mem::take(&mut st.pending);
        st.durable.extend(pending);
        let fold = st.durable.len() > CHECKPOINT_AFTER;
        drop(st);
        if fold {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Replaces the durable records by one record of the state they replay to (a log
    /// rewrite: what defragmentation and WAL cuts do on a real disk).
    fn checkpoint(&self) -> Result<(), StorageError> {
        let loaded = self.load()?;
        let mut st = self.state();
        if !st.pending.is_empty() {
            return Ok(()); // only fold a quiet disk: pending records follow the durable ones
        }
        let rec = Record::Checkpoint {
            log: loaded.log,
            backend: snapshot_of(&loaded.backend),
        };
        st.durable = vec![seal(&rec.encode())];
        Ok(())
    }

    /// The member crashed: unsynced records are lost or torn per `mode`; `draw` picks how
    /// many survive a torn tail (it gets the count of pending records, returns 0..=count).
    pub fn crash(&self, mode: CrashDisk, draw: impl FnOnce(usize) -> usize) {
        let mut st = self.state();
        let pending = std::mem::take(&mut st.pending);
        match mode {
            CrashDisk::KeepUnsynced => st.durable.extend(pending),
            CrashDisk::LoseUnsynced => st.stats.lost_records += pending.len() as u64,
            CrashDisk::TornTail => {
                let keep = draw(pending.len()).min(pending.len());
                st.stats.lost_records += (pending.len() - keep) as u64;
                let mut it = pending.into_iter();
                st.durable.extend(it.by_ref().take(keep));
                if let Some(next) = it.next() {
                    // Half of the next record reached the platter.
                    st.durable.push(next[..next.len() / 2].to_vec());
                    st.stats.torn_tails += 1;
                }
            }
        }
    }

    /// Flips one bit of a durable record other than the last; false if there is none.
    pub fn bitrot(&self, draw: impl FnOnce(usize) -> usize) -> bool {
        let mut st = self.state();
        let n = st.durable.len();
        if n < 2 {
            return false;
        }
        let which = draw(n - 1) % (n - 1);
        let rec = &mut st.durable[which];
        let bit = (which * 7919 + rec.len()) % (rec.len() * 8);
        rec[bit / 8] ^= 1 << (bit % 8);
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

    /// Replays the durable records.
    pub fn load(&self) -> Result<Loaded, StorageError> {
        let records = self.state().durable.clone();
        let mut log = LogState::default();
        let mut backend = MemBackend::new();
        let mut torn_tail = false;
        let last = records.len().saturating_sub(1);
        for (i, raw) in records.iter().enumerate() {
            let rec = match unseal(raw).and_then(|body| Record::decode(&body)) {
                Some(rec) => rec,
                None if i == last => {
                    torn_tail = true;
                    break;
                }
                None => {
                    return Err(StorageError::Corrupt {
                        path: self.path(),
                        reason: format!(
                            "checksum mismatch in record {i} of {} (not the tail)",
                            records.len()
                        ),
                    })
                }
            };
            log.replay(rec, &mut backend)
                .map_err(|e| StorageError::Corrupt {
                    path: self.path(),
                    reason: e.reason,
                })?;
        }
        let log = log.into_persisted();
        check_contiguous(&self.path(), &log)?;
        if torn_tail {
            // Repair, as etcd's WAL does: the torn record is cut off for good.
            let mut st = self.state();
            let n = st.durable.len();
            st.durable.truncate(n - 1);
        }
        Ok(Loaded {
            fresh: records.is_empty(),
            log,
            backend,
            torn_tail,
        })
    }

    /// The member's raft-log half.
    pub fn log(&self) -> SimLog {
        SimLog { disk: self.clone() }
    }

    /// The member's MVCC half, starting from `backend` (as loaded).
    pub fn backend(&self, backend: MemBackend) -> SimBackend {
        SimBackend {
            disk: self.clone(),
            mem: Mutex::new(backend),
        }
    }
}

#[derive(Default)]
struct LogState {
    hard_state: HardState,
    compacted: (u64, u64),
    entries: BTreeMap<u64, Entry>,
}

impl LogState {
    fn drop_through(&mut self, index: u64, term: u64) {
        if index <= self.compacted.0 {
            return;
        }
        self.entries = self.entries.split_off(&(index + 1));
        self.compacted = (index, term);
    }

    fn replay(&mut self, rec: Record, backend: &mut MemBackend) -> Result<(), BackendError> {
        match rec {
            Record::Task {
                hard_state,
                entries,
                snapshot,
            } => {
                if let Some((index, term)) = snapshot {
                    self.entries.clear();
                    self.compacted = (index, term);
                }
                if let Some(first) = entries.first() {
                    self.entries.split_off(&first.index);
                }
                for e in entries {
                    self.entries.insert(e.index, e);
                }
                if let Some(hs) = hard_state {
                    self.hard_state = hs;
                }
            }
            Record::Compact { index, term } => self.drop_through(index, term),
            Record::Batch(ops) => backend.write(WriteBatch { ops })?,
            Record::Replace(ops) => backend.replace_all(ops)?,
            Record::Checkpoint { log, backend: ops } => {
                self.hard_state = log.hard_state;
                self.compacted = (log.compacted.0 .0, log.compacted.1 .0);
                self.entries = log.entries.into_iter().map(|e| (e.index, e)).collect();
                backend.replace_all(ops)?;
            }
        }
        Ok(())
    }

    fn into_persisted(self) -> PersistedLog {
        PersistedLog {
            hard_state: self.hard_state,
            compacted: (LogIndex(self.compacted.0), Term(self.compacted.1)),
            entries: self.entries.into_values().collect(),
        }
    }
}

fn snapshot_of(backend: &MemBackend) -> Vec<BatchOp> {
    let mut ops = Vec::new();
    for bucket in Bucket::ALL {
        backend
            .scan(bucket, b"", None, &mut |k, v| {
                ops.push(BatchOp {
                    bucket,
                    key: k.to_vec(),
                    value: Some(v.to_vec()),
                });
                Scan::Continue
            })
            .expect("memory backend scans");
    }
    ops
}

/// The raft-log half of a [`SimDisk`].
#[derive(Debug)]
pub struct SimLog {
    disk: SimDisk,
}

impl LogStorage for SimLog {
    async fn persist(&mut self, tasks: Vec<PersistTask>) -> Result<(), StorageError> {
        let mut sync = false;
        for task in tasks {
            sync |= task.must_sync;
            self.disk.write(&Record::Task {
                hard_state: task.hard_state,
                entries: task.entries,
                snapshot: task.snapshot.map(|(i, t)| (i.0, t.0)),
            });
        }
        if sync {
            self.disk.sync().await?;
        }
        Ok(())
    }

    async fn compact(&mut self, index: LogIndex, term: Term) -> Result<(), StorageError> {
        self.disk.write(&Record::Compact {
            index: index.0,
            term: term.0,
        });
        Ok(())
    }
}

/// The MVCC half of a [`SimDisk`]: reads from memory, writes to memory and the disk.
#[derive(Debug)]
pub struct SimBackend {
    disk: SimDisk,
    mem: Mutex<MemBackend>,
}

impl SimBackend {
    fn mem(&self) -> std::sync::MutexGuard<'_, MemBackend> {
        self.mem.lock().expect("backend lock")
    }
}

impl KvBackend for SimBackend {
    fn get(&self, bucket: Bucket, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.mem().get(bucket, key)
    }

    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Scan,
    ) -> Result<(), BackendError> {
        self.mem().scan(bucket, start, end, visit)
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), BackendError> {
        self.disk.write(&Record::Batch(batch.ops.clone()));
        self.mem().write(batch)
    }

    fn replace_all(&mut self, records: Vec<BatchOp>) -> Result<(), BackendError> {
        self.disk.write(&Record::Replace(records.clone()));
        self.mem().replace_all(records)
    }

    fn size_bytes(&self) -> u64 {
        self.mem().size_bytes()
    }

    fn size_in_use_bytes(&self) -> u64 {
        self.mem().size_in_use_bytes()
    }
}

impl ServerBackend for SimBackend {
    fn defragment(&self) -> Result<(), BackendError> {
        self.mem().defragment();
        Ok(())
    }

    /// A copy of every record: simulated stores are small.
    fn export(&self) -> Result<BackendExport, BackendError> {
        let mut records = Vec::new();
        let mem = self.mem();
        for bucket in Bucket::ALL {
            mem.scan(bucket, b"", None, &mut |k, v| {
                records.push(Ok((bucket, k.to_vec(), v.to_vec())));
                Scan::Continue
            })?;
        }
        Ok(BackendExport {
            records: Box::new(records.into_iter()),
            scratch_dir: std::env::temp_dir(),
        })
    }
}

/// What one disk record holds.
#[derive(Debug)]
enum Record {
    Task {
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        snapshot: Option<(u64, u64)>,
    },
    Compact {
        index: u64,
        term: u64,
    },
    Batch(Vec<BatchOp>),
    Replace(Vec<BatchOp>),
    Checkpoint {
        log: PersistedLog,
        backend: Vec<BatchOp>,
    },
}

const TAG_TASK: u8 = 1;
const TAG_COMPACT: u8 = 2;
const TAG_BATCH: u8 = 3;
const TAG_REPLACE: u8 = 4;
const TAG_CHECKPOINT: u8 = 5;

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut w = Vec::new();
        match self {
            Record::Task {
                hard_state,
                entries,
                snapshot,
            } => {
                w.push(TAG_TASK);
                put_opt_msg(&mut w, hard_state.as_ref());
                put_entries(&mut w, entries);
                match snapshot {
                    Some((i, t)) => {
                        w.push(1);
                        put_u64(&mut w, *i);
                        put_u64(&mut w, *t);
                    }
                    None => w.push(0),
                }
            }
            Record::Compact { index, term } => {
                w.push(TAG_COMPACT);
                put_u64(&mut w, *index);
                put_u64(&mut w, *term);
            }
            Record::Batch(ops) => {
                w.push(TAG_BATCH);
                put_ops(&mut w, ops);
            }
            Record::Replace(ops) => {
                w.push(TAG_REPLACE);
                put_ops(&mut w, ops);
            }
            Record::Checkpoint { log, backend } => {
                w.push(TAG_CHECKPOINT);
                put_opt_msg(&mut w, Some(&log.hard_state));
                put_u64(&mut w, log.compacted.0 .0);
                put_u64(&mut w, log.compacted.1 .0);
                put_entries(&mut w, &log.entries);
                put_ops(&mut w, backend);
            }
        }
        w
    }

    fn decode(body: &[u8]) -> Option<Record> {
        let mut r = Reader(body);
        let rec = match r.u8()? {
            TAG_TASK => Record::Task {
                hard_state: r.opt_msg()?,
                entries: r.entries()?,
                snapshot: match r.u8()? {
                    0 => None,
                    _ => Some((r.u64()?, r.u64()?)),
                },
            },
            TAG_COMPACT => Record::Compact {
                index: r.u64()?,
                term: r.u64()?,
            },
            TAG_BATCH => Record::Batch(r.ops()?),
            TAG_REPLACE => Record::Replace(r.ops()?),
            TAG_CHECKPOINT => {
                let hard_state = r.opt_msg()?.unwrap_or_default();
                let compacted = (LogIndex(r.u64()?), Term(r.u64()?));
                let entries = r.entries()?;
                Record::Checkpoint {
                    log: PersistedLog {
                        hard_state,
                        compacted,
                        entries,
                    },
                    backend: r.ops()?,
                }
            }
            _ => return None,
        };
        r.0.is_empty().then_some(rec)
    }
}

fn put_u64(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_be_bytes());
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    put_u64(w, b.len() as u64);
    w.extend_from_slice(b);
}

fn put_opt_msg<M: protobuf::Message>(w: &mut Vec<u8>, m: Option<&M>) {
    match m {
        Some(m) => {
            w.push(1);
            put_bytes(w, &m.write_to_bytes().expect("encode raft message"));
        }
        None => w.push(0),
    }
}

fn put_entries(w: &mut Vec<u8>, entries: &[Entry]) {
    put_u64(w, entries.len() as u64);
    for e in entries {
        put_bytes(w, &e.write_to_bytes().expect("encode raft entry"));
    }
}

fn put_ops(w: &mut Vec<u8>, ops: &[BatchOp]) {
    put_u64(w, ops.len() as u64);
    for op in ops {
        w.push(op.bucket.tag());
        put_bytes(w, &op.key);
        match &op.value {
            Some(v) => {
                w.push(1);
                put_bytes(w, v);
            }
            None => w.push(0),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u64(&mut self) -> Option<u64> {
        if self.0.len() < 8 {
            return None;
        }
        let (head, rest) = self.0.split_at(8);
        self.0 = rest;
        Some(u64::from_be_bytes(head.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = usize::try_from(self.u64()?).ok()?;
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head.to_vec())
    }

    fn opt_msg<M: protobuf::Message>(&mut self) -> Option<Option<M>> {
        match self.u8()? {
            0 => Some(None),
            _ => M::parse_from_bytes(&self.bytes()?).ok().map(Some),
        }
    }

    fn entries(&mut self) -> Option<Vec<Entry>> {
        let n = self.u64()?;
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(Entry::parse_from_bytes(&self.bytes()?).ok()?);
        }
        Some(out)
    }

    fn ops(&mut self) -> Option<Vec<BatchOp>> {
        let n = self.u64()?;
        let mut out = Vec::new();
        for _ in 0..n {
            let bucket = Bucket::from_tag(self.u8()?)?;
            let key = self.bytes()?;
            let value = match self.u8()? {
                0 => None,
                _ => Some(self.bytes()?),
            };
            out.push(BatchOp { bucket, key, value });
        }
        Some(out)
    }
}

fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = CRC32C.checksum(body).to_be_bytes().to_vec();
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
