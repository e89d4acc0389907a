//! etcd's backend layout (its bbolt buckets, `server/storage/schema`) beside Strata's, and the
//! translation of records both ways.
//!
//! Most records are already byte for byte what etcd stores: the `key` bucket (revision keys,
//! `mvccpb.KeyValue` values, tombstone marks), leases (`leasepb.Lease` under the 8-byte id),
//! users and roles (`authpb`). The rest differ only in naming and encoding:
//!
//! | Strata | etcd |
//! |---|---|
//! | `Meta` `applied_index` / `applied_term` | `meta` `consistent_index` / `term` |
//! | `Meta` compact revision (8 bytes) | `meta` `scheduledCompactRev` and `finishedCompactRev` (a 17-byte revision key) |
//! | `Meta` current revision, conf state | not stored: etcd derives the revision from the `key` bucket |
//! | `Members` id (8 bytes) → `MemberRecord` | `members` id in unpadded hex → etcd's member JSON |
//! | `MembersRemoved` id (8 bytes) | `members_removed` id in unpadded hex → `removed` |
//! | `Alarm` member · alarm (12 bytes) | `alarm` `AlarmMember` protobuf |
//! | `Auth` `enabled` / `revision` | `auth` `authEnabled` / `authRevision` |
//!
//! Out ([`export`]): every Strata record has an etcd form or is deliberately left out, so etcd
//! opened on the file serves the same keyspace, revisions, leases and auth. In
//! ([`Importer`]): what seeds a *new* cluster, as etcd's `snapshot restore` keeps it: the
//! keyspace with its current and compacted revision, leases and auth; the old cluster's
//! members, alarms and consistent index are dropped because membership comes from the restore
//! flags. Every imported record is validated here, so a corrupt or foreign file is refused at
//! restore, with its bucket and key named, never by an assertion at the member's next start.

use prost::Message;
use strata_engine::mvcc::{COMPACT_REVISION_KEY, CURRENT_REVISION_KEY};
use strata_engine::proto::authpb::{Role, User};
use strata_engine::proto::etcdserverpb::AlarmMember;
use strata_engine::proto::mvccpb::KeyValue;
use strata_engine::proto::strata::internal::{LeaseRecord, MemberRecord};
use strata_engine::state_machine::{META_APPLIED_INDEX, META_APPLIED_TERM, META_CONF_STATE};
use strata_engine::Bucket;

/// A record of an etcd bucket: key, value.
pub type EtcdRecord = (Vec<u8>, Vec<u8>);
/// A Strata backend record: bucket, key, value.
pub type StrataRecord = (Bucket, Vec<u8>, Vec<u8>);

/// etcd's buckets, in bbolt's (byte) order.
pub const ETCD_BUCKETS: [&[u8]; 10] = [
    b"alarm",
    b"auth",
    b"authRoles",
    b"authUsers",
    b"cluster",
    b"key",
    b"lease",
    b"members",
    b"members_removed",
    b"meta",
];

const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
const META_TERM: &[u8] = b"term";
const META_SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const META_FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";
const STRATA_AUTH_ENABLED: &[u8] = b"enabled";
const STRATA_AUTH_REVISION: &[u8] = b"revision";
/// A revision key without the tombstone mark: main · `_` · sub.
const REVISION_KEY_LEN: usize = 17;

/// A record that cannot be translated: the file is not what it claims to be.
#[derive(Debug, thiserror::Error)]
#[error("bucket {bucket}, key {key}: {reason}")]
pub struct LayoutError {
    pub bucket: String,
    pub key: String,
    pub reason: String,
}

fn layout_error(bucket: &[u8], key: &[u8], reason: impl Into<String>) -> LayoutError {
    let printable = key.iter().all(|b| b.is_ascii_graphic());
    LayoutError {
        bucket: String::from_utf8_lossy(bucket).into_owned(),
        key: if printable {
            String::from_utf8_lossy(key).into_owned()
        } else {
            format!("0x{}", hex::encode(key))
        },
        reason: reason.into(),
    }
}

/// The etcd bucket a Strata bucket's records go to.
pub fn etcd_bucket(bucket: Bucket) -> &'static [u8] {
    match bucket {
        Bucket::Key => b"key",
        Bucket::Meta => b"meta",
        Bucket::Lease => b"lease",
        Bucket::Members => b"members",
        Bucket::MembersRemoved => b"members_removed",
        Bucket::Alarm => b"alarm",
        Bucket::Auth => b"auth",
        Bucket::AuthUsers => b"authUsers",
        Bucket::AuthRoles => b"authRoles",
    }
}

/// Whether a Strata bucket's records keep their order once translated, so they can be
/// streamed into etcd's bucket; the others are small and sorted first (member ids become
/// unpadded hex, alarms protobuf, meta keys other names).
pub fn keeps_order(bucket: Bucket) -> bool {
    !matches!(
        bucket,
        Bucket::Meta | Bucket::Alarm | Bucket::Members | Bucket::MembersRemoved
    )
}

/// etcd's 17-byte revision key of `main` (sub revision 0), as its compaction marks store it.
fn revision_key(main: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(REVISION_KEY_LEN);
    key.extend_from_slice(&(main as u64).to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&0u64.to_be_bytes());
    key
}

fn u64_be(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

/// etcd's key of a member: its id in hex, unpadded (`types.ID.String()`).
fn member_key(id: u64) -> Vec<u8> {
    format!("{id:x}").into_bytes()
}

/// etcd's member JSON (`membership.Member`): `id` as a number, `isLearner` and the
/// attributes omitted when empty, as Go's `omitempty` does.
fn member_json(m: &MemberRecord) -> Vec<u8> {
    let mut json = serde_json::Map::new();
    json.insert("id".into(), m.id.into());
    json.insert("peerURLs".into(), m.peer_urls.clone().into());
    if m.is_learner {
        json.insert("isLearner".into(), true.into());
    }
    if !m.name.is_empty() {
        json.insert("name".into(), m.name.clone().into());
    }
    if !m.client_urls.is_empty() {
        json.insert("clientURLs".into(), m.client_urls.clone().into());
    }
    serde_json::Value::Object(json).to_string().into_bytes()
}

/// One Strata backend record in etcd's form: `None` for records etcd does not store.
pub fn export(bucket: Bucket, key: &[u8], value: &[u8]) -> Result<Option<EtcdRecord>, LayoutError> {
    let bad = |reason: &str| layout_error(etcd_bucket(bucket), key, reason);
    let record = match bucket {
        Bucket::Key | Bucket::Lease | Bucket::AuthUsers | Bucket::AuthRoles => {
            (key.to_vec(), value.to_vec())
        }
        Bucket::Meta => match key {
            k if k == META_APPLIED_INDEX => (META_CONSISTENT_INDEX.to_vec(), value.to_vec()),
            k if k == META_APPLIED_TERM => (META_TERM.to_vec(), value.to_vec()),
            k if k == CURRENT_REVISION_KEY || k == META_CONF_STATE => return Ok(None),
            // The compaction marks are both written by `export_meta_extra`.
            k if k == COMPACT_REVISION_KEY => return Ok(None),
            _ => return Err(bad("unknown meta key")),
        },
        Bucket::Members => {
            let member = MemberRecord::decode(value).map_err(|e| bad(&e.to_string()))?;
            (member_key(member.id), member_json(&member))
        }
        Bucket::MembersRemoved => {
            let id = u64_be(key).ok_or_else(|| bad("member id is not 8 bytes"))?;
            (member_key(id), b"removed".to_vec())
        }
        Bucket::Alarm => {
            if key.len() != 12 {
                return Err(bad("alarm key is not 12 bytes"));
            }
            let member = u64_be(&key[..8]).expect("8 bytes");
            let alarm = i32::from_be_bytes(key[8..12].try_into().expect("4 bytes"));
            let record = AlarmMember {
                member_id: member,
                alarm,
            };
            (record.encode_to_vec(), Vec::new())
        }
        Bucket::Auth => match key {
            k if k == STRATA_AUTH_ENABLED => (AUTH_ENABLED.to_vec(), value.to_vec()),
            k if k == STRATA_AUTH_REVISION => (AUTH_REVISION.to_vec(), value.to_vec()),
            _ => return Err(bad("unknown auth key")),
        },
    };
    Ok(Some(record))
}

/// The `meta` records etcd keeps for a compaction at `compact_revision` (both marks: the
/// compaction is finished).
pub fn export_compaction(compact_revision: i64) -> Vec<EtcdRecord> {
    vec![
        (
            META_FINISHED_COMPACT.to_vec(),
            revision_key(compact_revision),
        ),
        (
            META_SCHEDULED_COMPACT.to_vec(),
            revision_key(compact_revision),
        ),
    ]
}

/// The compact revision a Strata `Meta` record carries, if it is that record.
pub fn compact_revision_of(key: &[u8], value: &[u8]) -> Option<i64> {
    (key == COMPACT_REVISION_KEY)
        .then(|| u64_be(value).map(|v| v as i64))
        .flatten()
}

/// Parses etcd's revision key (`main_sub`, `t` for a tombstone) into its main revision.
fn parse_revision_key(key: &[u8]) -> Result<(i64, bool), &'static str> {
    let tombstone = match key.len() {
        REVISION_KEY_LEN => false,
        n if n == REVISION_KEY_LEN + 1 && key[REVISION_KEY_LEN] == b't' => true,
        _ => return Err("not a revision key (17 bytes, or 18 ending in 't')"),
    };
    if key[8] != b'_' {
        return Err("revision key without '_' separator");
    }
    let main = u64_be(&key[..8]).expect("8 bytes");
    let sub = u64_be(&key[9..17]).expect("8 bytes");
    if main > i64::MAX as u64 || sub > i64::MAX as u64 {
        return Err("negative revision");
    }
    Ok((main as i64, tombstone))
}

/// Turns the records of an etcd backend, bucket by bucket in any order and key order within
/// each, into the Strata records that seed a new cluster ([`Importer::record`]), then the
/// revisions ([`Importer::finish`]).
#[derive(Debug, Default)]
pub struct Importer {
    /// The newest main revision in the `key` bucket.
    last_revision: i64,
    scheduled_compact: Option<i64>,
    finished_compact: Option<i64>,
}

/// What the importer makes of a file once every record is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportedRevisions {
    pub current: i64,
    /// The compaction etcd finished (`None`: never compacted).
    pub compacted: Option<i64>,
    /// A compaction etcd scheduled but had not finished: the caller completes it, as etcd
    /// does when it opens such a backend.
    pub unfinished_compaction: Option<i64>,
}

impl Importer {
    /// The Strata record for one etcd record; `None` for what a new cluster does not keep.
    pub fn record(
        &mut self,
        bucket: &[u8],
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<StrataRecord>, LayoutError> {
        let bad = |reason: String| layout_error(bucket, key, reason);
        let keep = |b: Bucket| Ok(Some((b, key.to_vec(), value.to_vec())));
        match bucket {
            b"key" => {
                let (main, tombstone) = parse_revision_key(key).map_err(|e| bad(e.into()))?;
                let kv = KeyValue::decode(value).map_err(|e| bad(format!("value: {e}")))?;
                if !tombstone && kv.mod_revision != main {
                    return Err(bad(format!(
                        "mod_revision {} differs from the key's revision {main}",
                        kv.mod_revision
                    )));
                }
                if kv.key.is_empty() {
                    return Err(bad("a change of the empty key".into()));
                }
                self.last_revision = self.last_revision.max(main);
                keep(Bucket::Key)
            }
            b"lease" => {
                let record = LeaseRecord::decode(value).map_err(|e| bad(e.to_string()))?;
                if u64_be(key) != Some(record.id as u64) {
                    return Err(bad(format!("holds lease {:x}", record.id)));
                }
                keep(Bucket::Lease)
            }
            b"authUsers" => {
                let user = User::decode(value).map_err(|e| bad(e.to_string()))?;
                if user.name != key {
                    return Err(bad("holds another user".into()));
                }
                keep(Bucket::AuthUsers)
            }
            b"authRoles" => {
                let role = Role::decode(value).map_err(|e| bad(e.to_string()))?;
                if role.name != key {
                    return Err(bad("holds another role".into()));
                }
                keep(Bucket::AuthRoles)
            }
            b"auth" => match key {
                AUTH_ENABLED => match value {
                    [0] | [1] => Ok(Some((
                        Bucket::Auth,
                        STRATA_AUTH_ENABLED.to_vec(),
                        value.to_vec(),
                    ))),
                    _ => Err(bad("not one byte 0 or 1".into())),
                },
                AUTH_REVISION => {
                    u64_be(value).ok_or_else(|| bad("not 8 bytes".into()))?;
                    Ok(Some((
                        Bucket::Auth,
                        STRATA_AUTH_REVISION.to_vec(),
                        value.to_vec(),
                    )))
                }
                _ => Ok(None),
            },
            b"meta" => {
                let compaction = match key {
                    META_SCHEDULED_COMPACT => &mut self.scheduled_compact,
                    META_FINISHED_COMPACT => &mut self.finished_compact,
                    _ => return Ok(None),
                };
                let (main, _) = parse_revision_key(value)
                    .map_err(|e| bad(format!("value: {e}")))
                    .and_then(|r| match r {
                        (_, true) => Err(bad("value: a tombstone key".into())),
                        r => Ok(r),
                    })?;
                *compaction = Some(main);
                Ok(None)
            }
            // The new cluster's membership and alarms come from its own flags and history.
            b"members" | b"members_removed" | b"cluster" | b"alarm" => Ok(None),
            _ => Err(bad(
                "unknown bucket (a newer etcd's layout, or not an etcd backend)".into(),
            )),
        }
    }

    /// The revisions of the imported keyspace.
    pub fn finish(&self) -> ImportedRevisions {
        let compacted = self.finished_compact;
        let unfinished = match (self.scheduled_compact, compacted) {
            (Some(s), Some(f)) if s > f => Some(s),
            (Some(s), None) => Some(s),
            _ => None,
        };
        let newest_compaction = unfinished.or(compacted).unwrap_or(0);
        // A compaction at a final delete removes its tombstone: the revision is then the
        // compaction's (etcd's restore does the same, `currentRev = compactMainRev`).
        let current = self.last_revision.max(newest_compaction).max(1);
        ImportedRevisions {
            current,
            compacted,
            unfinished_compaction: unfinished,
        }
    }

    /// The Strata `Meta` records of the revisions.
    pub fn revision_records(revisions: &ImportedRevisions) -> Vec<StrataRecord> {
        let mut records = vec![(
            Bucket::Meta,
            CURRENT_REVISION_KEY.to_vec(),
            (revisions.current as u64).to_be_bytes().to_vec(),
        )];
        if let Some(c) = revisions.compacted {
            records.push((
                Bucket::Meta,
                COMPACT_REVISION_KEY.to_vec(),
                (c as u64).to_be_bytes().to_vec(),
            ));
        }
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_buckets_are_in_bbolt_order() {
        let mut sorted = ETCD_BUCKETS;
        sorted.sort();
        assert_eq!(sorted, ETCD_BUCKETS);
        for bucket in Bucket::ALL {
            assert!(ETCD_BUCKETS.contains(&etcd_bucket(bucket)));
        }
    }

    #[test]
    fn member_keys_are_etcds_unpadded_hex() {
        let removed = export(Bucket::MembersRemoved, &0x0abcu64.to_be_bytes(), &[])
            .expect("valid")
            .expect("kept");
        assert_eq!(removed, (b"abc".to_vec(), b"removed".to_vec()));
        assert!(!keeps_order(Bucket::Members) && !keeps_order(Bucket::MembersRemoved));
    }

    #[test]
    fn members_are_written_as_etcd_json() {
        let m = MemberRecord {
            id: 0x8e9e05c52164694d,
            name: "default".into(),
            peer_urls: vec!["http://localhost:2380".into()],
            client_urls: vec!["http://localhost:2379".into()],
            is_learner: false,
        };
        let (key, value) = export(Bucket::Members, &m.id.to_be_bytes(), &m.encode_to_vec())
            .expect("valid")
            .expect("kept");
        assert_eq!(key, b"8e9e05c52164694d");
        assert_eq!(
            String::from_utf8(value).expect("utf-8"),
            r#"{"clientURLs":["http://localhost:2379"],"id":10276657743932975437,"name":"default","peerURLs":["http://localhost:2380"]}"#
        );
    }

    #[test]
    fn auth_and_alarm_keys_translate_both_ways() {
        let (k, v) = export(Bucket::Auth, b"enabled", &[1])
            .expect("valid")
            .expect("kept");
        assert_eq!((k.as_slice(), v.as_slice()), (AUTH_ENABLED, &[1u8][..]));
        let mut importer = Importer::default();
        let back = importer.record(b"auth", &k, &v).expect("valid");
        assert_eq!(back, Some((Bucket::Auth, b"enabled".to_vec(), vec![1])));
        let mut alarm = 7u64.to_be_bytes().to_vec();
        alarm.extend_from_slice(&1i32.to_be_bytes());
        let (k, _) = export(Bucket::Alarm, &alarm, &[])
            .expect("valid")
            .expect("kept");
        let decoded = AlarmMember::decode(k.as_slice()).expect("protobuf");
        assert_eq!((decoded.member_id, decoded.alarm), (7, 1));
    }

    #[test]
    fn revisions_come_from_the_key_bucket_and_the_compaction_marks() {
        let mut importer = Importer::default();
        let kv = |main: i64| KeyValue {
            key: b"a".to_vec(),
            mod_revision: main,
            ..Default::default()
        };
        importer
            .record(b"key", &revision_key(5), &kv(5).encode_to_vec())
            .expect("valid");
        for (name, rev) in [(META_FINISHED_COMPACT, 4), (META_SCHEDULED_COMPACT, 7)] {
            importer
                .record(b"meta", name, &revision_key(rev))
                .expect("valid");
        }
        let revisions = importer.finish();
        assert_eq!(
            revisions,
            ImportedRevisions {
                current: 7,
                compacted: Some(4),
                unfinished_compaction: Some(7)
            }
        );
    }

    #[test]
    fn foreign_records_are_refused_with_their_place() {
        let mut importer = Importer::default();
        let err = importer
            .record(b"key", b"short", b"")
            .expect_err("not a revision");
        assert!(err.to_string().starts_with("bucket key, key short: "));
        let err = importer
            .record(b"leaseCheckpoints", b"x", b"")
            .expect_err("unknown");
        assert!(err.to_string().contains("unknown bucket"), "{err}");
        let kv = KeyValue {
            key: b"a".to_vec(),
            mod_revision: 3,
            ..Default::default()
        };
        let err = importer
            .record(b"key", &revision_key(2), &kv.encode_to_vec())
            .expect_err("revision mismatch");
        assert!(err.to_string().contains("mod_revision 3"), "{err}");
    }
}
