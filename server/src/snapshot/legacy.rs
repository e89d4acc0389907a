//! Strata's first snapshot framing, read for one release so files saved before the switch to
//! etcd's format still restore: magic `STRATASN`, the body's length (8 bytes, big-endian), the
//! body (a `SnapshotData`), zero padding to a multiple of 512 bytes, the SHA-256 trailer.

/// Magic bytes opening a legacy Strata snapshot file.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"STRATASN";

/// The body of a legacy file whose trailer [`super::SnapshotFile::open`] checked.
pub fn body(file: &[u8]) -> Result<&[u8], String> {
    if file.len() < 16 || &file[..8] != SNAPSHOT_MAGIC {
        return Err("not a Strata snapshot file (bad magic)".into());
    }
    let len = u64::from_be_bytes(file[8..16].try_into().expect("8 bytes"));
    usize::try_from(len)
        .ok()
        .and_then(|len| file.get(16..16usize.checked_add(len)?))
        .ok_or_else(|| "snapshot file is truncated".to_string())
}

#[cfg(test)]
pub fn seal(body: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = SNAPSHOT_MAGIC.to_vec();
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512, 0);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}
