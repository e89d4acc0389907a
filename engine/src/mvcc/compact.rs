//! Compaction and HashKV (`kvstore_compaction.go`, `hash.go`, `kvstore.go`'s `hashByRev`).
//!
//! Compaction at `c` keeps, for each key, the latest revision `<= c` of the generation alive at
//! `c` ([`super::key_index`]) and deletes every other record with main revision `<= c`. Unlike
//! etcd, which deletes in batches after persisting a "scheduled" mark (and so needed the fix
//! for etcd#17780 on restart), the whole compaction is one staged batch together with the new
//! compact revision, so a crash leaves either all of it or none.
//!
//! HashKV hashes, with CRC-32C, the bucket name `"key"` and then, in revision order, the
//! record key and value of:
//! - every record with `compact < main <= rev`;
//! - records with `main <= compact` that the index would keep at `rev` ([`Index::keep`]:
//!   each key's latest revision at `rev`, tombstones excluded). etcd skips this filter when the
//!   keep set is empty, and so does this code;
//! - never a tombstone at exactly the compact revision (etcd < 3.5.16 deleted those; skipping
//!   them keeps hashes equal across versions).
//!
//! A compaction computes the same hash for `(previous compact, c]` as it deletes; that hash
//! equals a HashKV at `c` taken just before the compaction, which is how etcd's corruption
//! check compares members. As etcd's `hashStorage` does, the store remembers the last ten
//! compaction hashes in memory and HashKV at one of those revisions answers the remembered
//! hash.
//!
//! [`Index::keep`]: super::key_index::Index::keep

use std::collections::HashSet;

use crate::backend::{KvBackend, Scan};
use crate::error::{Error, EtcdError};
use crate::types::Revision;

use super::revision::{main_bound, Rev};
use super::{HashKv, MvccStore, COMPACT_REVISION_KEY};

/// etcd's `hashStorageMaxSize`.
const COMPACTION_HASHES_MAX: usize = 10;

/// etcd's `kvHasher`.
struct KvHasher<'k> {
    digest: crc::Digest<'static, u32>,
    compact_revision: i64,
    revision: i64,
    keep: &'k HashSet<Rev>,
}

static CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

impl<'k> KvHasher<'k> {
    fn new(compact_revision: i64, revision: i64, keep: &'k HashSet<Rev>) -> KvHasher<'k> {
        let mut digest = CASTAGNOLI.digest();
        digest.update(b"key");
        KvHasher {
            digest,
            compact_revision,
            revision,
            keep,
        }
    }

    fn write(&mut self, key: &[u8], value: &[u8]) {
        let (rev, tombstone) = Rev::from_key(key);
        if rev.main > self.revision {
            return;
        }
        if rev.main <= self.compact_revision && !self.keep.is_empty() && !self.keep.contains(&rev) {
            return;
        }
        if rev.main == self.compact_revision && tombstone {
            return;
        }
        self.digest.update(key);
        self.digest.update(value);
    }

    fn finish(self) -> HashKv {
        HashKv {
            hash: self.digest.finalize(),
            compact_revision: Revision(self.compact_revision),
            hash_revision: Revision(self.revision),
        }
    }
}

impl MvccStore {
    pub(crate) fn compact_at(
        &mut self,
        backend: &dyn KvBackend,
        rev: i64,
    ) -> Result<HashKv, Error> {
        if rev <= self.compact_revision {
            return Err(EtcdError::Compacted.into());
        }
        if rev > self.current_revision {
            return Err(EtcdError::FutureRev.into());
        }
        let available = self.index.available(rev);
        let mut hasher = KvHasher::new(self.compact_revision, rev, &available);
        let mut doomed = Vec::new();
        self.staged.scan_records(
            backend,
            &[],
            Some(&main_bound(rev + 1)),
            &mut |key, value| {
                if !available.contains(&Rev::from_key(key).0) {
                    doomed.push(key.to_vec());
                }
                hasher.write(key, value);
                Scan::Continue
            },
        )?;
        let hash = hasher.finish();
        // Nothing has changed yet: a backend error above leaves the store as it was.
        for key in doomed {
            self.staged.delete_record(key);
        }
        self.index.compact(rev);
        self.compact_revision = rev;
        self.staged
            .put_meta(COMPACT_REVISION_KEY, rev.to_be_bytes().to_vec());
        self.remember_compaction_hash(hash);
        Ok(hash)
    }

    fn remember_compaction_hash(&mut self, hash: HashKv) {
        self.compaction_hashes.push(hash);
        self.compaction_hashes.sort_by_key(|h| h.hash_revision);
        let excess = self
            .compaction_hashes
            .len()
            .saturating_sub(COMPACTION_HASHES_MAX);
        self.compaction_hashes.drain(..excess);
    }

    pub(crate) fn hash_at(&self, backend: &dyn KvBackend, rev: i64) -> Result<HashKv, Error> {
        if let Some(hash) = self
            .compaction_hashes
            .iter()
            .find(|h| h.hash_revision.0 == rev)
        {
            return Ok(*hash);
        }
        if rev > 0 && rev < self.compact_revision {
            return Err(EtcdError::Compacted.into());
        }
        if rev > 0 && rev > self.current_revision {
            return Err(EtcdError::FutureRev.into());
        }
        let rev = if rev == 0 { self.current_revision } else { rev };
        let keep = self.index.keep(rev);
        let mut hasher = KvHasher::new(self.compact_revision, rev, &keep);
        self.staged.scan_records(
            backend,
            &[],
            Some(&main_bound(rev + 1)),
            &mut |key, value| {
                hasher.write(key, value);
                Scan::Continue
            },
        )?;
        Ok(hasher.finish())
    }
}
