//! etcd's revision pair and its on-disk form (`server/storage/mvcc/revision.go`).
//!
//! A write txn gets one *main* revision; its changes are numbered by *sub* revision from 0, in
//! the order they were made. The pair orders changes totally, and its byte form is the key of a
//! record in [`Bucket::Key`](crate::Bucket::Key):
//!
//! ```text
//! main (8 bytes, big-endian) · '_' · sub (8 bytes, big-endian) [· 't' for a tombstone]
//! ```
//!
//! Both numbers are non-negative, so byte order equals revision order and a scan of the bucket
//! visits changes in the order they happened.

/// Length of a revision key without the tombstone mark (etcd's `revBytesLen`).
pub(crate) const REV_BYTES_LEN: usize = 8 + 1 + 8;
/// The last byte of a tombstone's key (etcd's `markTombstone`).
pub(crate) const TOMBSTONE_MARK: u8 = b't';

/// etcd's `Revision{Main, Sub}`: which write txn made a change, and where inside it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Rev {
    pub main: i64,
    pub sub: i64,
}

impl Rev {
    pub fn new(main: i64, sub: i64) -> Rev {
        Rev { main, sub }
    }

    /// The record key of this change; tombstones carry the trailing mark.
    pub fn to_key(self, tombstone: bool) -> Vec<u8> {
        assert!(
            self.main >= 0 && self.sub >= 0,
            "negative revision {}_{}",
            self.main,
            self.sub
        );
        let mut key = Vec::with_capacity(REV_BYTES_LEN + 1);
        key.extend_from_slice(&(self.main as u64).to_be_bytes());
        key.push(b'_');
        key.extend_from_slice(&(self.sub as u64).to_be_bytes());
        if tombstone {
            key.push(TOMBSTONE_MARK);
        }
        key
    }

    /// Parses a record key into the revision and whether it marks a tombstone. A malformed key
    /// means the bucket is corrupt: the node stops.
    pub fn from_key(key: &[u8]) -> (Rev, bool) {
        assert!(
            key.len() == REV_BYTES_LEN || key.len() == REV_BYTES_LEN + 1,
            "revision key of {} bytes: {key:?}",
            key.len()
        );
        assert!(
            key[8] == b'_',
            "revision key without '_' separator: {key:?}"
        );
        let tombstone = key.len() == REV_BYTES_LEN + 1;
        if tombstone {
            assert!(
                key[REV_BYTES_LEN] == TOMBSTONE_MARK,
                "revision key with unknown mark {}: {key:?}",
                key[REV_BYTES_LEN]
            );
        }
        let main = u64::from_be_bytes(key[0..8].try_into().expect("8 bytes")) as i64;
        let sub = u64::from_be_bytes(key[9..17].try_into().expect("8 bytes")) as i64;
        assert!(main >= 0 && sub >= 0, "negative revision in key {key:?}");
        (Rev { main, sub }, tombstone)
    }
}

/// A scan bound: every record of a main revision below `main` sorts before it, every record of
/// `main` or later after it.
pub(crate) fn main_bound(main: i64) -> [u8; 8] {
    (main.max(0) as u64).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout_is_etcds() {
        let key = Rev::new(2, 1).to_key(false);
        assert_eq!(key, b"\0\0\0\0\0\0\0\x02_\0\0\0\0\0\0\0\x01");
        let tomb = Rev::new(2, 1).to_key(true);
        assert_eq!(tomb.len(), 18);
        assert_eq!(*tomb.last().unwrap(), b't');
        assert_eq!(Rev::from_key(&key), (Rev::new(2, 1), false));
        assert_eq!(Rev::from_key(&tomb), (Rev::new(2, 1), true));
    }

    #[test]
    fn byte_order_is_revision_order() {
        let revs = [
            Rev::new(1, 0),
            Rev::new(1, 1),
            Rev::new(2, 0),
            Rev::new(256, 0),
        ];
        for pair in revs.windows(2) {
            assert!(pair[0].to_key(true) < pair[1].to_key(false));
            assert!(pair[0].to_key(false) < pair[0].to_key(true));
        }
        assert!(Rev::new(3, 9).to_key(true).as_slice() < &main_bound(4)[..]);
        assert!(&main_bound(4)[..] < Rev::new(4, 0).to_key(false).as_slice());
    }
}
