//! bbolt's file format (etcd's backend and snapshot files): a bounds-checked reader
//! ([`BoltReader`]) and a streaming writer ([`BoltWriter`]), only as far as etcd's files go —
//! top-level buckets of key/value pairs, no nested buckets.
//!
//! A file is a sequence of pages. Pages 0 and 1 are meta pages (the valid one with the higher
//! transaction id wins); the meta names the page of the root bucket, a B+tree whose leaf
//! entries are the top-level buckets. A bucket is a B+tree of branch and leaf pages, or, when
//! small, a page stored inline in its entry in the root. A page larger than one page size
//! spans `overflow` more contiguous pages. All integers are little-endian.
//!
//! The reader trusts nothing in the file: every page id, offset and length is checked before
//! use, and a page is only read when a walk reaches it, so memory is bounded by the tree's
//! depth, never by the file's size.

mod read;
mod write;

pub use read::BoltReader;
pub use write::{BoltWriter, BucketWriter};

/// The page size the writer uses (etcd's on Linux).
pub const PAGE_SIZE: usize = 4096;

pub(crate) const MAGIC: u32 = 0xED0C_DAED;
pub(crate) const VERSION: u32 = 2;
pub(crate) const PAGE_HEADER_SIZE: usize = 16;
pub(crate) const BRANCH_ELEMENT_SIZE: usize = 16;
pub(crate) const LEAF_ELEMENT_SIZE: usize = 16;
pub(crate) const BUCKET_HEADER_SIZE: usize = 16;
/// Bytes of the meta struct the checksum covers (everything before the checksum).
pub(crate) const META_CHECKED_SIZE: usize = 56;
pub(crate) const BRANCH_PAGE_FLAG: u16 = 0x01;
pub(crate) const LEAF_PAGE_FLAG: u16 = 0x02;
pub(crate) const META_PAGE_FLAG: u16 = 0x04;
/// A leaf element whose value is a bucket.
pub(crate) const BUCKET_LEAF_FLAG: u32 = 0x01;
/// The freelist page id of a file written without a freelist (etcd's `NoFreelistSync`).
pub(crate) const NO_FREELIST: u64 = u64::MAX;
/// bbolt's limits on keys and values.
pub(crate) const MAX_KEY_SIZE: usize = 32768;
pub(crate) const MAX_VALUE_SIZE: usize = (1 << 31) - 2;

#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a bolt database: {0}")]
    NotBolt(String),
    #[error("corrupt bolt database: {0}")]
    Corrupt(String),
    /// The writer was used against its contract (a programming error in the caller).
    #[error("{0}")]
    Misuse(String),
}

/// Positional reads, so the reader works on a file and on bytes in memory.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

/// FNV-1a, 64 bits: the meta page checksum.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

pub(crate) fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(all(test, not(madsim)))]
mod tests;
