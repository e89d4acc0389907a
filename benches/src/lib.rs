//! Shared pieces of Strata's benches and local demo: the request shapes the benches measure,
//! and the load generator ([`load`]) that measures a running cluster, Strata's or etcd's.
//!
//! The put shape is the one etcd's performance guide measures (`benchmark put --key-size=8
//! --val-size=256`; Strata's keys are 10 bytes so they stay ordered), so once the server exists
//! its figures can sit next to etcd's for the same workload.

pub mod load;

use strata_engine::proto::etcdserverpb::PutRequest;

/// Value size of a benchmark put, in bytes (etcd's docs measure 256 B values).
pub const VALUE_BYTES: usize = 256;

/// The `i`-th benchmark key: `key/` and six digits, 10 bytes, ordered like `i` below a million.
pub fn key(i: u64) -> Vec<u8> {
    format!("key/{i:06}").into_bytes()
}

/// A put of `key(i)` with a 256-byte value.
pub fn put(i: u64) -> PutRequest {
    PutRequest {
        key: key(i),
        value: vec![b'v'; VALUE_BYTES],
        ..PutRequest::default()
    }
}

pub use strata_engine::request::prefix_end;

/// A prefix that `key(0..keys)` share with one `keys / 100` of them (keys a power of ten ≥ 100).
pub fn one_percent_prefix(keys: u64) -> Vec<u8> {
    assert!(keys >= 100, "{keys} keys: need at least 100");
    assert!(keys <= 1_000_000, "{keys} keys: key() has six digits");
    assert!(
        10u64.pow(keys.ilog10()) == keys,
        "{keys} keys: need a power of ten"
    );
    let covered_digits = (keys / 100).ilog10() as usize;
    let mut prefix = key(0);
    prefix.truncate(prefix.len() - covered_digits);
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_percent_prefix_covers_one_percent() {
        for keys in [100, 10_000, 100_000] {
            let prefix = one_percent_prefix(keys);
            let matching = (0..keys).filter(|i| key(*i).starts_with(&prefix)).count() as u64;
            assert_eq!(matching, keys / 100, "{keys} keys, prefix {prefix:?}");
        }
    }

    #[test]
    fn prefix_end_is_past_every_prefixed_key() {
        assert_eq!(prefix_end(b"key/0"), b"key/1".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
