//! Maintenance.Snapshot's file: the backend, as exported at one applied index, written as
//! etcd's bbolt database into an unlinked scratch file beside the backend, then read back in
//! chunks with the SHA-256 trailer last, as etcd's server sends it.
//!
//! Memory stays bounded whatever the store's size: records stream from the export into bbolt
//! pages on disk (only the small `meta` and `alarm` buckets are sorted in memory), and the
//! file streams out [`CHUNK`] by [`CHUNK`] through a bounded channel.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};
use strata_engine::state_machine::META_APPLIED_INDEX;
use strata_engine::{BackendError, Bucket};

use super::layout::{self, LayoutError};
use crate::bolt::{BoltError, BoltWriter};
use crate::driver::ExportedRecord;

/// Bytes per snapshot message (etcd sends 32 KiB).
pub const CHUNK: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("reading the backend: {0}")]
    Backend(#[from] BackendError),
    #[error("translating a record: {0}")]
    Layout(#[from] LayoutError),
    #[error("writing the snapshot: {0}")]
    Bolt(#[from] BoltError),
    #[error("snapshot scratch file: {0}")]
    Io(#[from] std::io::Error),
    #[error("backend export out of order: bucket {0:?} after the buckets that follow it")]
    OutOfOrder(Bucket),
}

/// Writes the export as etcd's database into a scratch file beside the backend, then hands
/// it to `send` chunk by chunk, its SHA-256 last.
pub fn save(
    export: crate::driver::BackendExport,
    send: &mut dyn FnMut(Chunk) -> bool,
) -> Result<(), SaveError> {
    let file = scratch_file(&export.scratch_dir)?;
    let (file, db_len) = write_db(export.records, file)?;
    Ok(stream_file(file, db_len, send)?)
}

/// Writes `records` (bucket by bucket in [`Bucket::ALL`] order) as etcd's backend into `out`;
/// returns it and the database's length.
pub fn write_db<I>(records: I, out: File) -> Result<(File, u64), SaveError>
where
    I: Iterator<Item = Result<ExportedRecord, BackendError>>,
{
    let mut records = records.peekable();
    let mut writer = BoltWriter::new(out)?;
    let mut applied_index = 0;
    for bucket in Bucket::ALL {
        let mut out = writer.bucket(layout::etcd_bucket(bucket))?;
        let mut held = Vec::new();
        while let Some(record) =
            records.next_if(|r| r.as_ref().map_or(true, |(b, _, _)| *b == bucket))
        {
            let (_, key, value) = record?;
            if bucket == Bucket::Meta {
                if key == META_APPLIED_INDEX {
                    applied_index = value.as_slice().try_into().map_or(0, u64::from_be_bytes);
                }
                if let Some(compacted) = layout::compact_revision_of(&key, &value) {
                    held.extend(layout::export_compaction(compacted));
                }
            }
            let Some((key, value)) = layout::export(bucket, &key, &value)? else {
                continue;
            };
            if layout::keeps_order(bucket) {
                out.put(&key, &value)?;
            } else {
                held.push((key, value));
            }
        }
        held.sort();
        for (key, value) in held {
            out.put(&key, &value)?;
        }
        out.finish()?;
    }
    if let Some(record) = records.next() {
        let (bucket, _, _) = record?;
        return Err(SaveError::OutOfOrder(bucket));
    }
    // etcd keeps the cluster version here; a file without one is read by every etcd version.
    writer.bucket(b"cluster")?.finish()?;
    Ok(writer.finish(applied_index.max(1) + 1)?)
}

/// An anonymous file in `dir`: created, then unlinked at once, so nothing is left behind
/// whatever happens to the process.
pub fn scratch_file(dir: &Path) -> std::io::Result<File> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("snapshot-{}-{n}.tmp", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// One message of the stream: a chunk of the database with the bytes still to come after
/// it, or, last, the SHA-256 of the database (with 0 remaining).
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    pub remaining_bytes: u64,
    pub blob: Vec<u8>,
}

/// Reads a written database from its start in [`CHUNK`]s, then its hash; `send` returns
/// false once the receiver is gone, which ends the reading.
pub fn stream_file(
    mut file: File,
    db_len: u64,
    send: &mut dyn FnMut(Chunk) -> bool,
) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    while sent < db_len {
        let n = CHUNK.min((db_len - sent) as usize);
        let mut blob = vec![0u8; n];
        file.read_exact(&mut blob)?;
        hasher.update(&blob);
        sent += n as u64;
        if !send(Chunk {
            remaining_bytes: db_len - sent,
            blob,
        }) {
            return Ok(());
        }
    }
    send(Chunk {
        remaining_bytes: 0,
        blob: hasher.finalize().to_vec(),
    });
    Ok(())
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use prost::Message as _;
    use strata_engine::proto::strata::internal::MemberRecord;

    use super::*;
    use crate::bolt::BoltReader;

    /// Members whose ids print to hex of different lengths sort differently as etcd's keys
    /// than as Strata's: the writer gets them in etcd's order.
    #[test]
    fn members_of_every_id_length_are_written() {
        let records: Vec<Result<ExportedRecord, BackendError>> =
            [0x1u64, 0x2f, 0xa000_0000_0000_0001]
                .into_iter()
                .map(|id| {
                    let m = MemberRecord {
                        id,
                        name: format!("m{id}"),
                        ..Default::default()
                    };
                    Ok((
                        Bucket::Members,
                        id.to_be_bytes().to_vec(),
                        m.encode_to_vec(),
                    ))
                })
                .collect();
        let file = tempfile::tempfile().expect("tempfile");
        let (file, len) = write_db(records.into_iter(), file).expect("written");
        let reader = BoltReader::open(&file, len).expect("open");
        let mut keys = Vec::new();
        reader
            .for_each(b"members", &mut |k, _| -> Result<(), BoltError> {
                keys.push(String::from_utf8(k.to_vec()).expect("utf-8"));
                Ok(())
            })
            .expect("walk");
        assert_eq!(keys, ["1", "2f", "a000000000000001"]);
    }
}
