//! etcd's multi-version key-value store (`server/storage/mvcc` and the apply logic of
//! `server/etcdserver/txn`), sans I/O: the store owns its in-memory index and the writes it has
//! staged; the caller owns the backend, passes it to every call, and writes the staged batches.
//!
//! # Revisions
//! A fresh store is at revision 1 and its first write gets revision 2, as in etcd (`NewStore`
//! starts `currentRev` at 1). Each write operation that changes anything (a Put, a DeleteRange
//! that deleted something, a Txn with at least one such op, a lease revoke) gets exactly one new
//! revision; its changes are told apart by sub revision. The compact revision is -1 until the
//! first compaction (etcd's `compactMainRev`), so a fresh store accepts a compaction at 0 once,
//! exactly like etcd.
//!
//! # Storage layout
//! - `Bucket::Key`: one record per change, keyed by its revision (`revision.rs`): a put stores
//!   the prost-encoded `mvccpb.KeyValue`; a delete stores a tombstone (key marked `t`) whose
//!   value is `KeyValue{key}` only, byte for byte what etcd stores, so HashKV matches etcd's.
//! - `Bucket::Meta`, [`CURRENT_REVISION_KEY`] and [`COMPACT_REVISION_KEY`]: 8-byte big-endian
//!   revisions, staged in the same batch as the change that moves them. A restart therefore never
//!   sees the revision go backwards, even when compaction removed the newest record (etcd#17780).
//!
//! # Contract with the caller
//! - Every write returns the etcd [`Event`]s it made, in revision and sub-revision order. A
//!   delete event's `kv` is etcd's tombstone form (`key` and `mod_revision` only). While
//!   [`MvccStore::set_fill_prev_kv`] is on (the default), `prev_kv` is filled when the key
//!   existed at `mod_revision - 1` (how etcd's watch fills it, so two changes of one key in one
//!   txn carry the same `prev_kv`); the watch layer strips it for watchers that did not ask.
//!   Off, no write reads a previous record (the node turns it off while no watcher asked).
//! - Every write also records how it moved keys between leases ([`LeaseMove`], from the
//!   in-memory lease map, never the backend); the caller drains them with
//!   [`MvccStore::take_lease_moves`] to keep the lessor's attachments in step.
//! - [`MvccStore::take_batch`] hands over the staged writes; the caller must write that batch
//!   (with its applied index) before the next call. Until taken, staged writes are visible to
//!   every read of the store.
//! - An error changes nothing, neither the store nor the staged batch. Response headers of
//!   the outermost response are `None`; the header revision etcd would report is
//!   [`MvccStore::current_revision`] after the call.
//! - Requests are validated by the [`validate_range`] family before they are proposed; the
//!   store applies what it is given, as etcd's apply does.
//! - Leases: the store checks that a put's lease exists (through the caller's `lease_exists`)
//!   and records each key's lease, but attachments are the lease module's: it follows the
//!   events in order (a put attaches the key to `kv.lease`, a delete detaches it).

mod compact;
mod key_index;
mod range;
mod revision;
mod staged;
mod validate;
mod write;

use std::collections::BTreeMap;

use prost::Message;

use crate::backend::{BackendError, Bucket, KvBackend, Scan, WriteBatch};
use crate::error::{Error, EtcdError};
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::{Event, KeyValue};
use crate::types::{LeaseId, Revision};

use key_index::Index;
pub use range::{Counting, EncodedRange};
use range::{KeySpan, ReadView};
use revision::{main_bound, Rev};
use staged::Staged;
use write::{check_lease, Change, WriteTxn};

pub use validate::{validate_delete_range, validate_put, validate_range, validate_txn};

/// `Bucket::Meta` key of the current revision (8 bytes, big-endian).
pub const CURRENT_REVISION_KEY: &[u8] = b"mvcc_current_revision";
/// `Bucket::Meta` key of the compact revision (8 bytes, big-endian); absent until the first
/// compaction.
pub const COMPACT_REVISION_KEY: &[u8] = b"mvcc_compact_revision";

/// The revision of a fresh store (etcd's initial `currentRev`).
const FIRST_REVISION: i64 = 1;
/// The compact revision of a store never compacted (etcd's initial `compactMainRev`).
const NEVER_COMPACTED: i64 = -1;

/// etcd's HashKV answer (`KeyValueHash`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKv {
    pub hash: u32,
    pub compact_revision: Revision,
    pub hash_revision: Revision,
}

/// The MVCC state machine. See the module docs for its contract.
#[derive(Debug)]
pub struct MvccStore {
    index: Index,
    current_revision: i64,
    compact_revision: i64,
    /// Live keys that carry a lease.
    leases: BTreeMap<Vec<u8>, LeaseId>,
    staged: Staged,
    /// The hashes of the latest compactions, oldest first (etcd's `hashStorage`); not persisted.
    compaction_hashes: Vec<HashKv>,
    /// Whether write events carry `prev_kv`: a read of each changed key's previous record.
    fill_prev_kv: bool,
    /// Lease attachments moved by writes since the last [`MvccStore::take_lease_moves`].
    lease_moves: Vec<LeaseMove>,
    /// The simulator's injected bug, if any (see [`crate::bugs`]).
    pub(crate) bug: Option<crate::bugs::Bug>,
}

/// A write moved `key` from lease `from` to lease `to` (`None`: no lease).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseMove {
    pub key: Vec<u8>,
    pub from: Option<LeaseId>,
    pub to: Option<LeaseId>,
}

impl MvccStore {
    /// Rebuilds the store from the backend (etcd's `restore`): the index from every record in
    /// revision order, the revisions from `Bucket::Meta`.
    pub fn open(backend: &dyn KvBackend) -> Result<MvccStore, BackendError> {
        let persisted_current = read_meta(backend, CURRENT_REVISION_KEY)?;
        let persisted_compact = read_meta(backend, COMPACT_REVISION_KEY)?;
        let mut store = MvccStore {
            index: Index::default(),
            current_revision: FIRST_REVISION,
            compact_revision: persisted_compact.unwrap_or(NEVER_COMPACTED),
            leases: BTreeMap::new(),
            staged: Staged::default(),
            compaction_hashes: Vec::new(),
            fill_prev_kv: true,
            lease_moves: Vec::new(),
            bug: None,
        };
        backend.scan(Bucket::Key, &[], None, &mut |key, value| {
            store.restore_record(key, value);
            Scan::Continue
        })?;
        let newest_record = store.current_revision;
        if let Some(persisted) = persisted_current {
            assert!(
                persisted >= newest_record,
                "backend holds revision {newest_record} beyond the persisted current revision \
                 {persisted}: a batch was split"
            );
            store.current_revision = persisted;
        }
        assert!(
            store.compact_revision <= store.current_revision,
            "compact revision {} beyond current revision {}",
            store.compact_revision,
            store.current_revision
        );
        Ok(store)
    }

    fn restore_record(&mut self, key: &[u8], value: &[u8]) {
        let (rev, tombstone) = Rev::from_key(key);
        assert!(
            rev.main >= self.current_revision,
            "record {rev:?} out of order after revision {}",
            self.current_revision
        );
        let kv = decode_kv(rev, value);
        self.index
            .restore(&kv.key, rev, tombstone, kv.create_revision, kv.version);
        self.record_lease(&kv.key, if tombstone { 0 } else { kv.lease });
        self.current_revision = rev.main;
    }

    /// Whether the events of later writes carry `prev_kv` (see the module's contract).
    pub fn set_fill_prev_kv(&mut self, fill: bool) {
        self.fill_prev_kv = fill;
    }

    /// Injects the simulator's bug into the store's evaluation (a no-op without feature `bugs`).
    pub fn set_bug(&mut self, bug: Option<crate::bugs::Bug>) {
        self.bug = bug;
    }

    /// The lease attachments writes moved since the last call, in write order.
    pub fn take_lease_moves(&mut self) -> Vec<LeaseMove> {
        std::mem::take(&mut self.lease_moves)
    }

    fn record_lease(&mut self, key: &[u8], lease: i64) {
        match lease {
            0 => self.leases.remove(key),
            lease => self.leases.insert(key.to_vec(), LeaseId(lease)),
        };
    }

    /// The revision of the last write (1 for a fresh store).
    pub fn current_revision(&self) -> Revision {
        Revision(self.current_revision)
    }

    /// The revision of the last compaction; -1 before the first (etcd's `compactMainRev`).
    pub fn compact_revision(&self) -> Revision {
        Revision(self.compact_revision)
    }

    /// The writes staged since the last call. Write it to the backend before the next call.
    pub fn take_batch(&mut self) -> WriteBatch {
        self.staged.take()
    }

    /// Live keys that carry a lease, in key order (to rebuild lease attachments after `open`).
    pub fn lease_keys(&self) -> Vec<(Vec<u8>, LeaseId)> {
        self.leases.iter().map(|(k, l)| (k.clone(), *l)).collect()
    }

    /// The hashes of the last compactions, oldest first (etcd's `HashStorage.Hashes`, used by
    /// the compaction hash check).
    pub fn compaction_hashes(&self) -> &[HashKv] {
        &self.compaction_hashes
    }

    /// etcd's Range, counting the whole span or not ([`Counting`]). The header is left `None`.
    pub fn range(
        &self,
        backend: &dyn KvBackend,
        req: &RangeRequest,
        counting: Counting,
    ) -> Result<RangeResponse, Error> {
        let mut resp = ReadView::committed(self, backend).range_counting(req, counting)?;
        resp.header = None;
        Ok(resp)
    }

    /// etcd's Range with the key-values left encoded ([`EncodedRange`]). The header is left
    /// `None`.
    pub fn range_encoded(
        &self,
        backend: &dyn KvBackend,
        req: &RangeRequest,
        counting: Counting,
    ) -> Result<EncodedRange, Error> {
        let mut resp = ReadView::committed(self, backend).range_encoded(req, counting)?;
        resp.header = None;
        Ok(resp)
    }

    /// One key's value at `rev` (0: current).
    pub fn get_at(
        &self,
        backend: &dyn KvBackend,
        key: &[u8],
        rev: Revision,
    ) -> Result<Option<KeyValue>, Error> {
        let view = ReadView::committed(self, backend);
        let at = view.resolve(rev.0)?;
        Ok(view.kvs(KeySpan::One(key), at)?.pop())
    }

    /// etcd's Put. `lease_exists` says whether a lease is granted.
    pub fn put(
        &mut self,
        backend: &dyn KvBackend,
        req: &PutRequest,
        lease_exists: &dyn Fn(LeaseId) -> bool,
    ) -> Result<(PutResponse, Vec<Event>), Error> {
        check_lease(req, lease_exists)?;
        let mut txn = WriteTxn::new(self, backend);
        let mut resp = txn.put(req)?;
        let changes = txn.into_changes();
        resp.header = None;
        Ok((resp, self.commit(backend, changes)?))
    }

    /// etcd's DeleteRange: no new revision when nothing was deleted.
    pub fn delete_range(
        &mut self,
        backend: &dyn KvBackend,
        req: &DeleteRangeRequest,
    ) -> Result<(DeleteRangeResponse, Vec<Event>), Error> {
        let mut txn = WriteTxn::new(self, backend);
        let mut resp = txn.delete_range(req)?;
        let changes = txn.into_changes();
        resp.header = None;
        Ok((resp, self.commit(backend, changes)?))
    }

    /// etcd's Txn: one revision for the whole txn if it changes anything (see `write.rs` for
    /// the phases and what the nested responses carry).
    pub fn txn(
        &mut self,
        backend: &dyn KvBackend,
        req: &TxnRequest,
        lease_exists: &dyn Fn(LeaseId) -> bool,
    ) -> Result<(TxnResponse, Vec<Event>), Error> {
        let mut txn = WriteTxn::new(self, backend);
        let plan = txn.plan(req)?;
        txn.check(req, &plan, lease_exists)?;
        let mut resp = txn.execute(req, &plan)?;
        let changes = txn.into_changes();
        resp.header = None;
        Ok((resp, self.commit(backend, changes)?))
    }

    /// A txn that writes nothing (see `request::txn_is_read_only`), served from committed state
    /// like a Range, with no revision and no staged change.
    pub fn read_txn(
        &self,
        backend: &dyn KvBackend,
        req: &TxnRequest,
    ) -> Result<TxnResponse, Error> {
        let mut txn = WriteTxn::new(self, backend);
        let plan = txn.plan(req)?;
        txn.check(req, &plan, &|_| true)?;
        let mut resp = txn.execute(req, &plan)?;
        let changes = txn.into_changes();
        assert!(
            changes.is_empty(),
            "read-only txn produced {} changes",
            changes.len()
        );
        resp.header = None;
        Ok(resp)
    }

    /// Deletes `keys` in one revision, as etcd's lessor does on revoke (in key order; absent
    /// keys are skipped).
    pub fn delete_keys(
        &mut self,
        backend: &dyn KvBackend,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Event>, Error> {
        let mut sorted: Vec<&Vec<u8>> = keys.iter().collect();
        sorted.sort();
        sorted.dedup();
        let mut txn = WriteTxn::new(self, backend);
        for key in sorted {
            txn.delete_range(&DeleteRangeRequest {
                key: key.clone(),
                ..DeleteRangeRequest::default()
            })?;
        }
        let changes = txn.into_changes();
        Ok(self.commit(backend, changes)?)
    }

    /// etcd's Compact: `Compacted` at or below the compact revision, `FutureRev` beyond the
    /// current one. Returns the compaction's hash of `(previous compact revision, rev]` (see
    /// `compact.rs`).
    pub fn compact(&mut self, backend: &dyn KvBackend, rev: Revision) -> Result<HashKv, Error> {
        self.compact_at(backend, rev.0)
    }

    /// etcd's HashKV at `rev` (0: current).
    pub fn hash_kv(&self, backend: &dyn KvBackend, rev: Revision) -> Result<HashKv, Error> {
        self.hash_at(backend, rev.0)
    }

    /// Every event with `from <= mod_revision <= to`, in revision and sub-revision order, each
    /// with its `prev_kv` when the key existed at `mod_revision - 1` and that revision is not
    /// compacted.
    ///
    /// `Compacted` when `from` is below the compact revision: as etcd's watch (`chooseAll`:
    /// `minRev < compactRev`), a watch may start *at* the compact revision, whose records
    /// compaction kept (only each key's last change in that revision, tombstones included).
    /// `FutureRev` when `to` is beyond the current revision.
    pub fn events(
        &self,
        backend: &dyn KvBackend,
        from: Revision,
        to: Revision,
    ) -> Result<Vec<Event>, Error> {
        if from.0 < self.compact_revision {
            return Err(EtcdError::Compacted.into());
        }
        if to.0 > self.current_revision {
            return Err(EtcdError::FutureRev.into());
        }
        let mut records = Vec::new();
        if from <= to {
            self.staged.scan_records(
                backend,
                &main_bound(from.0),
                Some(&main_bound(to.0 + 1)),
                &mut |key, value| {
                    records.push((key.to_vec(), value.to_vec()));
                    Scan::Continue
                },
            )?;
        }
        let mut events = Vec::with_capacity(records.len());
        for (key, value) in records {
            let (rev, tombstone) = Rev::from_key(&key);
            let change = Change {
                kv: decode_kv(rev, &value),
                tombstone,
            };
            let prev = match rev.main > self.compact_revision {
                true => self.kv_at(backend, &change.kv.key, rev.main - 1)?,
                false => None,
            };
            events.push(event(change, rev.main, prev));
        }
        Ok(events)
    }

    /// A key's value at `at`, no questions asked about compaction.
    fn kv_at(
        &self,
        backend: &dyn KvBackend,
        key: &[u8],
        at: i64,
    ) -> Result<Option<KeyValue>, BackendError> {
        match self.index.get(key, at) {
            Some(state) => self.read_kv(backend, state.modified).map(Some),
            None => Ok(None),
        }
    }

    /// The record of a live revision the index points at.
    fn read_kv(&self, backend: &dyn KvBackend, rev: Rev) -> Result<KeyValue, BackendError> {
        Ok(decode_kv(rev, &self.read_record(backend, rev)?))
    }

    /// The records of `revs` as stored, in order, looked up together.
    fn read_records(
        &self,
        backend: &dyn KvBackend,
        revs: &[Rev],
    ) -> Result<Vec<Vec<u8>>, BackendError> {
        let keys: Vec<Vec<u8>> = revs.iter().map(|r| r.to_key(false)).collect();
        let records = self.staged.get_records(backend, &keys)?;
        Ok(records
            .into_iter()
            .zip(revs)
            .map(|(record, rev)| {
                record.unwrap_or_else(|| {
                    panic!(
                        "index points at revision {}_{} but neither the staged writes nor the \
                         backend hold it (was a taken batch not written?)",
                        rev.main, rev.sub
                    )
                })
            })
            .collect())
    }

    /// The record of `rev` as stored: an encoded `mvccpb.KeyValue`.
    fn read_record(&self, backend: &dyn KvBackend, rev: Rev) -> Result<Vec<u8>, BackendError> {
        let Some(value) = self.staged.get_record(backend, &rev.to_key(false))? else {
            panic!(
                "index points at revision {}_{} but neither the staged writes nor the backend \
                 hold it (was a taken batch not written?)",
                rev.main, rev.sub
            );
        };
        Ok(value)
    }

    /// Applies the changes of one write operation at the next revision: records staged, index
    /// and leases updated, events made.
    fn commit(
        &mut self,
        backend: &dyn KvBackend,
        changes: Vec<Change>,
    ) -> Result<Vec<Event>, BackendError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let revision = self.current_revision + 1;
        // Every change sees the state before the write (two changes of one key in a txn
        // carry the same prev_kv, and the same lease to leave).
        let mut prevs = Vec::with_capacity(changes.len());
        let mut prev_leases = Vec::with_capacity(changes.len());
        for change in &changes {
            prevs.push(match self.fill_prev_kv {
                true => self.kv_at(backend, &change.kv.key, self.current_revision)?,
                false => None,
            });
            prev_leases.push(self.leases.get(&change.kv.key).copied());
        }
        let mut events = Vec::with_capacity(changes.len());
        let changed = changes.into_iter().zip(prevs).zip(prev_leases);
        for (sub, ((change, prev), prev_lease)) in changed.enumerate() {
            let rev = Rev::new(revision, sub as i64);
            let key = &change.kv.key;
            let to = match (change.tombstone, change.kv.lease) {
                (true, _) | (false, 0) => None,
                (false, lease) => Some(LeaseId(lease)),
            };
            if prev_lease.is_some() || to.is_some() {
                self.lease_moves.push(LeaseMove {
                    key: key.clone(),
                    from: prev_lease,
                    to,
                });
            }
            if change.tombstone {
                self.index.tombstone(key, rev);
                self.record_lease(key, 0);
            } else {
                assert!(
                    change.kv.mod_revision == revision,
                    "put of {key:?} at {} inside the write of revision {revision}",
                    change.kv.mod_revision
                );
                self.index.put(key, rev);
                self.record_lease(key, change.kv.lease);
            }
            self.staged
                .put_record(rev.to_key(change.tombstone), change.encode());
            events.push(event(change, revision, prev));
        }
        self.current_revision = revision;
        self.staged
            .put_meta(CURRENT_REVISION_KEY, revision.to_be_bytes().to_vec());
        Ok(events)
    }
}

fn event(change: Change, revision: i64, prev_kv: Option<KeyValue>) -> Event {
    let (kind, kv) = match change.tombstone {
        true => (
            EventType::Delete,
            KeyValue {
                key: change.kv.key,
                mod_revision: revision,
                ..KeyValue::default()
            },
        ),
        false => (EventType::Put, change.kv),
    };
    Event {
        r#type: kind as i32,
        kv: Some(kv),
        prev_kv,
    }
}

fn decode_kv(rev: Rev, value: &[u8]) -> KeyValue {
    KeyValue::decode(value).unwrap_or_else(|e| {
        panic!(
            "record {}_{} holds no mvccpb.KeyValue ({e}): the backend is corrupt",
            rev.main, rev.sub
        )
    })
}

fn read_meta(backend: &dyn KvBackend, name: &[u8]) -> Result<Option<i64>, BackendError> {
    let Some(value) = backend.get(Bucket::Meta, name)? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = value.as_slice().try_into().unwrap_or_else(|_| {
        panic!(
            "meta {:?} holds {} bytes, not an 8-byte revision",
            String::from_utf8_lossy(name),
            value.len()
        )
    });
    Ok(Some(i64::from_be_bytes(bytes)))
}

#[cfg(test)]
mod tests;
