//! `strata snapshot restore`: builds a new member's data dir from a snapshot file written by
//! `etcdctl snapshot save` (Maintenance.Snapshot), as `etcdutl snapshot restore` does for etcd.
//! The keyspace, revisions, leases and auth come from the snapshot; the membership comes from
//! the flags (`--initial-cluster`, `--initial-cluster-token`), so every member of the new
//! cluster is restored from the same file with its own `--name`.

use sha2::{Digest, Sha256};
use strata_engine::node::bootstrap_log;
use strata_engine::state_machine::records_for_new_cluster;
use strata_engine::KvBackend;

use crate::config::{cluster_id, parse_initial_cluster, RestoreFlags};
use crate::storage::rocks::RocksStore;
use crate::storage::{Identity, LogStorage};

/// Checks a snapshot file's SHA-256 trailer (unless skipped) and returns its body.
pub fn verify(file: &[u8], skip_hash_check: bool) -> Result<&[u8], String> {
    let has_checksum = file.len() % 512 == 32;
    if !skip_hash_check {
        if !has_checksum {
            return Err("snapshot missing hash but --skip-hash-check=false".into());
        }
        let (framed, sum) = file.split_at(file.len() - 32);
        let got = Sha256::digest(framed);
        if got.as_slice() != sum {
            return Err(format!(
                "expected sha256 {}, got {}",
                hex::encode(sum),
                hex::encode(got)
            ));
        }
    }
    let magic = crate::api::maintenance::SNAPSHOT_MAGIC;
    if file.len() < 16 || &file[..8] != magic {
        return Err("not a Strata snapshot file (bad magic)".into());
    }
    let len = u64::from_be_bytes(file[8..16].try_into().expect("8 bytes")) as usize;
    file.get(16..16 + len)
        .ok_or_else(|| "snapshot file is truncated".to_string())
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
    let file = std::fs::read(&flags.file).map_err(|e| format!("{}: {e}", flags.file.display()))?;
    let body = verify(&file, flags.skip_hash_check)?;
    let records =
        records_for_new_cluster(body).map_err(|e| format!("{}: {e}", flags.file.display()))?;
    let members = parse_initial_cluster(&flags.initial_cluster, &flags.initial_cluster_token)?;
    let me = members
        .iter()
        .find(|m| m.name == flags.name)
        .ok_or_else(|| {
            format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                flags.name
            )
        })?;
    let mut mine = me.peer_urls.clone();
    mine.sort();
    let mut advertised: Vec<String> = flags
        .initial_advertise_peer_urls
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    advertised.sort();
    if mine != advertised {
        return Err(format!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
            flags.name,
            me.peer_urls.join(","),
            flags.initial_advertise_peer_urls
        ));
    }
    let identity = Identity {
        cluster_id: cluster_id(&members),
        member_id: me.id,
        joined: false,
    };
    let result = (|| -> Result<(), String> {
        let store = RocksStore::open(&data_dir, true).map_err(|e| e.to_string())?;
        let count = records.len();
        store
            .backend()
            .replace_all(records)
            .map_err(|e| e.to_string())?;
        let log = bootstrap_log(&members);
        let task = crate::storage::bootstrap_task(&log);
        let mut raft_log = store.log();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(raft_log.persist(vec![task]))
            .map_err(|e| e.to_string())?;
        store.claim(identity).map_err(|e| e.to_string())?;
        tracing::debug!(records = count, "restored");
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&data_dir);
        return Err(e);
    }
    Ok(format!(
        "restored snapshot {} into {} (member {:x}, cluster {:x})",
        flags.file.display(),
        data_dir.display(),
        identity.member_id,
        identity.cluster_id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::maintenance::seal_snapshot;

    #[test]
    fn sealed_snapshots_verify_and_tampering_is_caught() {
        let file = seal_snapshot(b"hello".to_vec());
        assert_eq!(file.len() % 512, 32);
        assert_eq!(verify(&file, false).expect("valid"), b"hello");
        let mut bad = file.clone();
        bad[17] ^= 1;
        assert!(verify(&bad, false)
            .expect_err("tampered")
            .contains("expected sha256"));
        assert_eq!(verify(&bad[..bad.len() - 1], true).map(|_| ()), Ok(()));
        assert!(verify(b"short", false).is_err());
    }

    /// A snapshot file's bytes (a sealed `SnapshotData` with a few records).
    fn snapshot_seed() -> Vec<u8> {
        use prost::Message as _;
        use strata_engine::proto::strata::internal::{SnapshotData, SnapshotRecord};
        let records = (0..4u32)
            .map(|i| SnapshotRecord {
                bucket: i % 3,
                key: format!("key{i}").into_bytes(),
                value: vec![i as u8; 40],
            })
            .collect();
        let data = SnapshotData {
            applied_index: 42,
            applied_term: 3,
            records,
        };
        seal_snapshot(data.encode_to_vec())
    }

    /// Whatever a snapshot file holds, checking and decoding it gives records or an error,
    /// never a panic (a snapshot arrives from `etcdctl snapshot save` over the network).
    #[test]
    fn fuzz_snapshot_files() {
        use proptest::prelude::*;
        let corpus = crate::fuzzing::corpus("snapshot", vec![snapshot_seed()]);
        proptest!(crate::fuzzing::config(), |(input in crate::fuzzing::inputs(corpus))| {
            for skip in [false, true] {
                if let Ok(body) = verify(&input, skip) {
                    let _ = strata_engine::state_machine::records_for_new_cluster(body);
                }
            }
        });
    }
}
