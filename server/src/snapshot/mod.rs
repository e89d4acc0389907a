//! Snapshot files, in etcd's format: what `etcdctl snapshot save` receives from
//! Maintenance.Snapshot ([`save`]), what `strata snapshot restore` builds a data dir from
//! ([`restore`]), what `strata snapshot status` describes ([`status`]), and the offline import
//! of a stopped etcd member's data dir ([`migrate`]).
//!
//! A file is a bbolt database laid out as etcd's backend ([`layout`], [`crate::bolt`]),
//! followed by the SHA-256 of the database (32 bytes). bbolt's pages make the database a
//! multiple of 512 bytes, which is how etcd's tools tell a file with the trailer (`size % 512
//! == 32`) from a bare `member/snap/db`. Files of Strata's earlier framing (`STRATASN`) are
//! still read by `restore` ([`legacy`]).

pub mod layout;
pub mod legacy;
#[cfg(not(madsim))]
pub mod migrate;
#[cfg(not(madsim))]
pub mod restore;
pub mod save;
pub mod status;
#[cfg(not(madsim))]
mod wal;

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Length of the SHA-256 trailer.
pub const HASH_LEN: u64 = 32;

/// A snapshot file opened for reading, its trailer checked.
#[derive(Debug)]
pub struct SnapshotFile {
    pub file: File,
    /// Bytes of the database part (the file without its trailer).
    pub db_len: u64,
}

/// What a file holds, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// etcd's: a bbolt database.
    Etcd,
    /// Strata's earlier framing.
    Legacy,
}

impl SnapshotFile {
    /// Opens `path` and, unless `skip_hash_check`, verifies the SHA-256 trailer over the
    /// database, reading it in bounded chunks. Errors are etcd's texts where it has them.
    pub fn open(path: &Path, skip_hash_check: bool) -> Result<SnapshotFile, String> {
        let name = path.display();
        let mut file = File::open(path).map_err(|e| format!("{name}: {e}"))?;
        let len = file.metadata().map_err(|e| format!("{name}: {e}"))?.len();
        let has_hash = len % 512 == HASH_LEN;
        if !has_hash && !skip_hash_check {
            return Err(format!(
                "{name}: snapshot missing hash but --skip-hash-check=false"
            ));
        }
        let db_len = if has_hash { len - HASH_LEN } else { len };
        if has_hash && !skip_hash_check {
            let mut hasher = Sha256::new();
            let mut left = db_len;
            let mut buf = vec![0u8; 1 << 20];
            while left > 0 {
                let n = (left as usize).min(buf.len());
                file.read_exact(&mut buf[..n])
                    .map_err(|e| format!("{name}: {e}"))?;
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            let mut want = [0u8; HASH_LEN as usize];
            file.read_exact(&mut want)
                .map_err(|e| format!("{name}: {e}"))?;
            let got = hasher.finalize();
            if got.as_slice() != want {
                return Err(format!(
                    "{name}: expected sha256 {}, got {} (the file is damaged or truncated)",
                    hex::encode(want),
                    hex::encode(got)
                ));
            }
        }
        Ok(SnapshotFile { file, db_len })
    }

    /// The file's format, from its first bytes.
    pub fn format(&self) -> Format {
        use std::os::unix::fs::FileExt;
        let mut magic = [0u8; 8];
        match self.file.read_exact_at(&mut magic, 0) {
            Ok(()) if &magic == legacy::SNAPSHOT_MAGIC => Format::Legacy,
            _ => Format::Etcd,
        }
    }
}
