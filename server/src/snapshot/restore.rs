//! `strata snapshot restore`: builds a new member's data dir from a snapshot file, as
//! `etcdutl snapshot restore` does for etcd. The file is etcd's (written by real etcd 3.4–3.6
//! or by Strata) or, for one release, Strata's earlier framing.
//!
//! The keyspace with its revisions and compaction, leases and auth come from the file; the
//! membership comes from the flags (`--initial-cluster`, `--initial-cluster-token`), so every
//! member of a new cluster is restored from the same file with its own `--name` and they agree
//! on the member and cluster ids.
//!
//! Nothing is left behind on failure: the data dir is built under a temporary name beside it
//! and renamed into place only when complete. An existing data dir is refused, as etcd refuses.

use std::path::{Path, PathBuf};

use strata_engine::mvcc::MvccStore;
use strata_engine::node::bootstrap_log;
use strata_engine::proto::strata::internal::MemberRecord;
use strata_engine::state_machine::records_for_new_cluster;
use strata_engine::{BackendError, Bucket, KvBackend, Revision, WriteBatch};

use super::layout::{Importer, LayoutError};
use super::{legacy, Format, SnapshotFile};
use crate::bolt::{BoltError, BoltReader, ReadAt};
use crate::config::{cluster_id, parse_initial_cluster, RestoreFlags};
use crate::storage::rocks::RocksStore;
use crate::storage::{Identity, LogStorage};

/// Bytes of records written to the new backend per batch.
const BATCH_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Bolt(#[from] BoltError),
    #[error("{0}")]
    Layout(#[from] LayoutError),
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("not an etcd backend: {0}")]
    NotEtcd(String),
}

/// The member a data dir is built for, and the cluster it starts in.
#[derive(Debug, Clone)]
pub struct NewMember {
    pub members: Vec<MemberRecord>,
    pub identity: Identity,
}

impl NewMember {
    /// etcd's restore flags: `name` must be in `initial_cluster` with exactly the advertised
    /// peer URLs; the ids derive from the URLs and the token, as at a first start.
    pub fn from_flags(
        name: &str,
        initial_cluster: &str,
        token: &str,
        advertise_peer_urls: &str,
    ) -> Result<NewMember, String> {
        let members = parse_initial_cluster(initial_cluster, token)?;
        let me = members.iter().find(|m| m.name == name).ok_or_else(|| {
            format!("couldn't find local name {name:?} in the initial cluster configuration")
        })?;
        let mut mine = me.peer_urls.clone();
        mine.sort();
        let mut advertised: Vec<String> = advertise_peer_urls
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        advertised.sort();
        if mine != advertised {
            return Err(format!(
                "--initial-cluster has {name}={} but missing from --initial-advertise-peer-urls={advertise_peer_urls}",
                me.peer_urls.join(","),
            ));
        }
        let identity = Identity {
            cluster_id: cluster_id(&members),
            member_id: me.id,
            joined: false,
        };
        Ok(NewMember { members, identity })
    }
}

pub fn restore(flags: &RestoreFlags) -> Result<String, String> {
    let data_dir = flags
        .data_dir
        .clone()
        .unwrap_or_else(|| format!("{}.strata", flags.name).into());
    if data_dir.exists() {
        return Err(format!(
            "data-dir {:?} exists",
            data_dir.display().to_string()
        ));
    }
    let target = NewMember::from_flags(
        &flags.name,
        &flags.initial_cluster,
        &flags.initial_cluster_token,
        &flags.initial_advertise_peer_urls,
    )?;
    let path = flags.file.display().to_string();
    let snapshot = SnapshotFile::open(&flags.file, flags.skip_hash_check)?;
    let count = build_data_dir(&data_dir, &target, |backend| match snapshot.format() {
        Format::Etcd => {
            load_etcd(&snapshot.file, snapshot.db_len, backend).map_err(|e| format!("{path}: {e}"))
        }
        Format::Legacy => load_legacy(&snapshot, backend).map_err(|e| format!("{path}: {e}")),
    })?;
    Ok(format!(
        "restored snapshot {path} into {} ({count} records; member {:x}, cluster {:x})",
        data_dir.display(),
        target.identity.member_id,
        target.identity.cluster_id
    ))
}

/// Builds a member's database under a temporary data dir beside `data_dir` with the records
/// `fill` writes, the new cluster's bootstrap log and the member's identity, then moves it
/// into place: the whole data dir when `data_dir` does not exist, else (an etcd data dir
/// converted in place) its `member/db`. Returns what `fill` returned.
pub fn build_data_dir(
    data_dir: &Path,
    target: &NewMember,
    fill: impl FnOnce(&mut dyn KvBackend) -> Result<u64, String>,
) -> Result<u64, String> {
    let tmp = temporary_dir(data_dir);
    if tmp.exists() {
        // Left by an earlier attempt that was killed: ours to remove.
        std::fs::remove_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    }
    let built = (|| -> Result<u64, String> {
        let store = RocksStore::open(&tmp, true).map_err(|e| e.to_string())?;
        let count = fill(&mut store.backend())?;
        let log = bootstrap_log(&target.members);
        let mut raft_log = store.log(None);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(raft_log.persist(vec![crate::storage::bootstrap_task(&log)]))
            .map_err(|e| e.to_string())?;
        store.claim(target.identity).map_err(|e| e.to_string())?;
        Ok(count)
    })();
    let moved = built.and_then(|count| {
        let io = |e: std::io::Error| format!("{}: {e}", data_dir.display());
        if data_dir.exists() {
            let db = crate::storage::rocks::db_path(data_dir);
            std::fs::rename(crate::storage::rocks::db_path(&tmp), &db).map_err(io)?;
            std::fs::remove_dir_all(&tmp).map_err(io)?;
        } else {
            std::fs::rename(&tmp, data_dir).map_err(io)?;
        }
        Ok(count)
    });
    if moved.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    moved
}

/// `.<name>.restoring` beside `data_dir`.
fn temporary_dir(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    data_dir.with_file_name(format!(".{name}.restoring"))
}

/// Writes the records of an etcd backend (the first `db_len` bytes of `source`: a snapshot
/// file, or `member/snap/db`) into `backend`, as a new cluster keeps them. Returns the number
/// of records written.
pub fn load_etcd<R: ReadAt>(
    source: R,
    db_len: u64,
    backend: &mut dyn KvBackend,
) -> Result<u64, LoadError> {
    let reader = BoltReader::open(source, db_len)?;
    reader.check()?;
    let buckets = reader.buckets()?;
    for required in [b"key".as_slice(), b"meta"] {
        if !buckets.iter().any(|b| b == required) {
            return Err(LoadError::NotEtcd(format!(
                "no {:?} bucket",
                String::from_utf8_lossy(required)
            )));
        }
    }
    let mut importer = Importer::default();
    let mut batch = Batcher::default();
    for name in &buckets {
        reader.for_each(name, &mut |key, value| -> Result<(), LoadError> {
            if let Some((bucket, key, value)) = importer.record(name, key, value)? {
                batch.put(backend, bucket, key, value)?;
            }
            Ok(())
        })?;
    }
    let revisions = importer.finish();
    for (bucket, key, value) in Importer::revision_records(&revisions) {
        batch.put(backend, bucket, key, value)?;
    }
    let written = batch.flush(backend)?;
    if let Some(rev) = revisions.unfinished_compaction {
        // etcd finishes a scheduled compaction when it opens the backend; so does this.
        let mut mvcc = MvccStore::open(backend)?;
        mvcc.compact(backend, Revision(rev))
            .map_err(|e| LoadError::NotEtcd(format!("unfinished compaction at {rev}: {e}")))?;
        backend.write(mvcc.take_batch())?;
    }
    Ok(written)
}

fn load_legacy(snapshot: &SnapshotFile, backend: &mut dyn KvBackend) -> Result<u64, String> {
    let len = usize::try_from(snapshot.db_len).map_err(|e| e.to_string())?;
    let mut file = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(&snapshot.file, &mut file, 0)
        .map_err(|e| e.to_string())?;
    let records = records_for_new_cluster(legacy::body(&file)?).map_err(|e| e.to_string())?;
    let count = records.len() as u64;
    backend.replace_all(records).map_err(|e| e.to_string())?;
    Ok(count)
}

/// Accumulates records into write batches of about [`BATCH_BYTES`].
#[derive(Debug, Default)]
struct Batcher {
    batch: WriteBatch,
    bytes: usize,
    written: u64,
}

impl Batcher {
    fn put(
        &mut self,
        backend: &mut dyn KvBackend,
        bucket: Bucket,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), BackendError> {
        self.bytes += key.len() + value.len();
        self.batch.put(bucket, key, value);
        if self.bytes >= BATCH_BYTES {
            self.flush(backend)?;
        }
        Ok(())
    }

    fn flush(&mut self, backend: &mut dyn KvBackend) -> Result<u64, BackendError> {
        self.written += self.batch.len() as u64;
        backend.write(std::mem::take(&mut self.batch))?;
        self.bytes = 0;
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_files_verify_and_tampering_is_caught() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snap.db");
        let file = legacy::seal(b"hello");
        std::fs::write(&path, &file).expect("write");
        let opened = SnapshotFile::open(&path, false).expect("valid");
        assert_eq!(opened.format(), Format::Legacy);
        let mut bad = file.clone();
        bad[17] ^= 1;
        std::fs::write(&path, &bad).expect("write");
        let err = SnapshotFile::open(&path, false).expect_err("tampered");
        assert!(err.contains("expected sha256"), "{err}");
        std::fs::write(&path, &bad[..bad.len() - 1]).expect("write");
        let err = SnapshotFile::open(&path, false).expect_err("truncated");
        assert!(
            err.ends_with("snapshot missing hash but --skip-hash-check=false"),
            "{err}"
        );
        assert!(SnapshotFile::open(&path, true).is_ok());
    }

    #[test]
    fn the_restore_flags_must_name_this_member_with_its_urls() {
        let cluster = "a=http://127.0.0.1:1,b=http://127.0.0.1:2";
        let ok = NewMember::from_flags("b", cluster, "t", "http://127.0.0.1:2").expect("valid");
        assert_eq!(ok.members.len(), 2);
        assert_eq!(ok.identity.member_id, ok.members[1].id);
        let err = NewMember::from_flags("c", cluster, "t", "http://127.0.0.1:2").expect_err("c");
        assert!(err.contains("couldn't find local name"), "{err}");
        let err = NewMember::from_flags("a", cluster, "t", "http://127.0.0.1:2").expect_err("a");
        assert!(
            err.contains("missing from --initial-advertise-peer-urls"),
            "{err}"
        );
    }

    /// A bbolt database that is not etcd's backend is refused by name, before any record.
    #[test]
    fn foreign_bolt_files_are_refused() {
        use crate::bolt::BoltWriter;
        // Buckets named, each holding one record if `true`.
        let db = |buckets: &[(&[u8], bool)]| {
            let mut writer = BoltWriter::new(std::io::Cursor::new(Vec::new())).expect("new");
            for (name, filled) in buckets {
                let mut bucket = writer.bucket(name).expect("bucket");
                if *filled {
                    bucket.put(b"k", b"v").expect("put");
                }
                bucket.finish().expect("finish");
            }
            writer.finish(1).expect("finish").0.into_inner()
        };
        let mut backend = strata_engine::MemBackend::default();
        let containerd = db(&[(b"v1", true)]);
        let err = load_etcd(containerd.as_slice(), containerd.len() as u64, &mut backend)
            .expect_err("containerd's layout");
        assert_eq!(err.to_string(), "not an etcd backend: no \"key\" bucket");
        let newer = db(&[
            (b"key", false),
            (b"meta", false),
            (b"leaseCheckpoints", true),
        ]);
        let err = load_etcd(newer.as_slice(), newer.len() as u64, &mut backend)
            .expect_err("a newer layout");
        assert!(err.to_string().contains("unknown bucket"), "{err}");
    }

    /// Whatever a snapshot file holds, importing it gives records or an error, never a panic
    /// (a snapshot arrives from the network and from other tools).
    #[test]
    fn fuzz_snapshot_files() {
        use proptest::prelude::*;
        let seed = include_bytes!("../bolt/testdata/etcd-3.4.db").to_vec();
        let corpus = crate::fuzzing::corpus("snapshot", vec![seed]);
        proptest!(crate::fuzzing::config(), |(input in crate::fuzzing::inputs(corpus))| {
            let mut backend = strata_engine::MemBackend::default();
            let _ = load_etcd(input.as_slice(), input.len() as u64, &mut backend);
        });
    }
}
