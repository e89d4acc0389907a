//! `strata migrate --from-etcd-data-dir DIR [--data-dir OUT]`: converts a stopped etcd member's
//! data dir into a Strata member's, in place by default (Strata's database goes to
//! `DIR/member/db`, beside etcd's `member/snap` and `member/wal`, which are left untouched as
//! the way back), so `strata` starts on it with the flags etcd ran with.
//!
//! The member keeps its identity: its member and cluster id come from the WAL's metadata, the
//! membership from the backend's `members` bucket, the keyspace, leases and auth from
//! `member/snap/db` as `snapshot restore` imports them. The backend holds everything up to its
//! `consistent_index`; replaying etcd's requests from the WAL is not supported, so a committed
//! put after that index (proof the backend is behind) makes migration refuse, naming the fix
//! (start etcd once and stop it cleanly, which applies it). Other entries after the index are
//! taken as applied and counted in the report (see [`wal::EntryKind`]). Every member of a
//! cluster must be migrated at the same consistent index; the command prints it.

use std::fs::File;

use strata_engine::proto::strata::internal::MemberRecord;

use super::restore::{build_data_dir, load_etcd, NewMember};
use super::wal;
use crate::bolt::{BoltError, BoltReader};
use crate::config::MigrateFlags;
use crate::storage::rocks::RocksStore;
use crate::storage::Identity;

pub fn migrate(flags: &MigrateFlags) -> Result<String, String> {
    let from = &flags.from_etcd_data_dir;
    let db_path = from.join("member").join("snap").join("db");
    let wal_dir = flags
        .wal_dir
        .clone()
        .unwrap_or_else(|| from.join("member").join("wal"));
    let data_dir = flags.data_dir.clone().unwrap_or_else(|| from.clone());
    if !db_path.is_file() {
        return Err(format!(
            "{}: no etcd backend here (see --from-etcd-data-dir)",
            db_path.display()
        ));
    }
    if RocksStore::exists(&data_dir) || (data_dir != *from && data_dir.exists()) {
        return Err(format!(
            "data-dir {:?} exists",
            data_dir.display().to_string()
        ));
    }
    let log = wal::read_dir(&wal_dir)?;
    let name = db_path.display().to_string();
    let file = File::open(&db_path).map_err(|e| format!("{name}: {e}"))?;
    let len = file.metadata().map_err(|e| format!("{name}: {e}"))?.len();
    let backend = read_backend_facts(&file, len).map_err(|e| format!("{name}: {e}"))?;
    let pending = log.committed_after(backend.consistent_index);
    let unapplied: Vec<u64> = pending
        .iter()
        .filter(|(_, kind)| *kind == wal::EntryKind::Put)
        .map(|(index, _)| *index)
        .collect();
    if let Some(first) = unapplied.first() {
        return Err(format!(
            "{}: {} committed puts after the backend's consistent index {} (first at {first}) are only in the WAL, and strata cannot replay etcd's WAL; start etcd on this data dir once more and stop it cleanly (or use `etcdctl snapshot save` and `strata snapshot restore`)",
            wal_dir.display(),
            unapplied.len(),
            backend.consistent_index,
        ));
    }
    let mut members = backend.members;
    members.sort_by_key(|m| m.id);
    let me = members
        .iter()
        .find(|m| m.id == log.member_id)
        .ok_or_else(|| {
            format!(
                "{name}: the WAL's member {:x} is not in the backend's members bucket",
                log.member_id
            )
        })?
        .clone();
    let target = NewMember {
        members,
        identity: Identity {
            cluster_id: log.cluster_id,
            member_id: log.member_id,
            joined: true,
        },
    };
    let count = build_data_dir(&data_dir, &target, |kv| {
        load_etcd(&file, len, kv).map_err(|e| format!("{name}: {e}"))
    })?;
    let mut report = format!(
        "migrated etcd member {} ({:x}) of cluster {:x} at consistent index {}: {count} records into {}",
        me.name,
        me.id,
        log.cluster_id,
        backend.consistent_index,
        crate::storage::rocks::db_path(&data_dir).display()
    );
    if !pending.is_empty() {
        report.push_str(&format!(
            "\n{} committed entries after the consistent index change no keys (auth, leases, membership); etcd 3.4 does not move the index for them, so they are taken as applied (true after a clean stop)",
            pending.len()
        ));
    }
    Ok(report)
}

/// What migration needs from the backend besides its records.
struct BackendFacts {
    consistent_index: u64,
    members: Vec<MemberRecord>,
}

fn read_backend_facts(file: &File, len: u64) -> Result<BackendFacts, String> {
    let reader = BoltReader::open(file, len).map_err(|e| e.to_string())?;
    let mut consistent_index = 0;
    reader
        .for_each(b"meta", &mut |k, v| -> Result<(), BoltError> {
            if k == b"consistent_index" {
                if let Ok(bytes) = <[u8; 8]>::try_from(v) {
                    consistent_index = u64::from_be_bytes(bytes);
                }
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    let mut members = Vec::new();
    let mut bad = None;
    reader
        .for_each(b"members", &mut |k, v| -> Result<(), BoltError> {
            match member_from_json(v) {
                Some(m) => members.push(m),
                None => bad = Some(String::from_utf8_lossy(k).into_owned()),
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    if let Some(key) = bad {
        return Err(format!("bucket members, key {key}: not etcd's member JSON"));
    }
    if members.is_empty() {
        return Err("the members bucket is empty".into());
    }
    Ok(BackendFacts {
        consistent_index,
        members,
    })
}

/// etcd's member JSON (`{"id":…,"peerURLs":[…],"isLearner":…,"name":…,"clientURLs":[…]}`).
fn member_from_json(value: &[u8]) -> Option<MemberRecord> {
    let json: serde_json::Value = serde_json::from_slice(value).ok()?;
    let urls = |field: &str| -> Option<Vec<String>> {
        match json.get(field) {
            None => Some(Vec::new()),
            Some(v) => v
                .as_array()?
                .iter()
                .map(|u| u.as_str().map(str::to_string))
                .collect(),
        }
    };
    Some(MemberRecord {
        id: json.get("id")?.as_u64()?,
        name: json
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string(),
        peer_urls: urls("peerURLs")?,
        client_urls: urls("clientURLs")?,
        is_learner: json
            .get("isLearner")
            .and_then(|l| l.as_bool())
            .unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_etcds_member_json() {
        let m = member_from_json(
            br#"{"id":10276657743932975437,"peerURLs":["http://localhost:2380"],"name":"default","clientURLs":["http://localhost:2379"]}"#,
        )
        .expect("valid");
        assert_eq!(m.id, 10276657743932975437);
        assert_eq!(m.name, "default");
        assert!(!m.is_learner);
        let learner = member_from_json(br#"{"id":5,"peerURLs":["http://a:1"],"isLearner":true}"#)
            .expect("valid");
        assert!(learner.is_learner && learner.client_urls.is_empty());
        assert!(member_from_json(br#"{"peerURLs":[]}"#).is_none());
        assert!(member_from_json(b"not json").is_none());
    }
}
