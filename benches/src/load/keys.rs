//! The keys and values the workloads write.
//!
//! Keys are exactly `--key-size` bytes so both servers store the same shapes. The shared
//! keyspace (`put`, `range`) is decimal digits, zero-padded, so key `n` sorts like `n`; the
//! per-client keys of `txn-put` and `watch-latency` start with a letter, so they never collide
//! with it or with each other's workload.

/// Shared-keyspace key `n`: `n` in decimal, zero-padded to `key_size` bytes.
pub fn key(n: u64, key_size: usize) -> Vec<u8> {
    let key = format!("{n:0key_size$}").into_bytes();
    assert!(
        key.len() == key_size,
        "key {n} needs more than --key-size {key_size} digits"
    );
    key
}

/// The private key of client `client` in the workload tagged `tag` (one ASCII letter).
pub fn client_key(tag: u8, client: u64, key_size: usize) -> Vec<u8> {
    assert!(tag.is_ascii_alphabetic(), "key tag {tag} is not a letter");
    assert!(
        key_size >= 2,
        "--key-size {key_size}: per-client keys need 2 bytes"
    );
    let mut key = vec![tag];
    key.extend(self::key(client, key_size - 1));
    key
}

/// Whether `key_size` decimal digits can name every key of `0..key_space`.
pub fn fits(key_space: u64, key_size: usize) -> bool {
    key_space <= 1 || (key_space - 1).to_string().len() <= key_size
}

/// A value of `size` bytes from a fixed seed: incompressible, like etcd's `benchmark`
/// (`mustRandBytes`), so RocksDB's block compression gains nothing bbolt would not.
pub fn value(size: usize) -> Vec<u8> {
    let mut rng = SplitMix64(0x5EED);
    (0..size).map(|_| rng.next_u64() as u8).collect()
}

/// SplitMix64: the random key choice of one client, reproducible from its seed.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0; the modulo bias is negligible for keyspaces).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "empty range");
        self.next_u64() % bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_size_and_order() {
        assert_eq!(key(42, 8), b"00000042");
        assert!(key(9, 8) < key(10, 8));
        assert_eq!(client_key(b't', 3, 8), b"t0000003");
        assert!(fits(100_000_000, 8));
        assert!(!fits(100_000_001, 8));
        assert!(fits(0, 1));
    }

    #[test]
    fn values_are_fixed_by_the_seed() {
        assert_eq!(value(256).len(), 256);
        assert_eq!(value(32), value(32));
        assert!(value(256).iter().any(|&b| b != value(256)[0]));
    }
}
