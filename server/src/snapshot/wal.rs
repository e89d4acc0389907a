//! A reader of etcd's write-ahead log (`member/wal/*.wal`), for `strata migrate`: who the
//! member is (the metadata record: member and cluster id), how far the log is committed (the
//! last hard state) and which entries it holds, so entries committed after the backend's
//! consistent index are found instead of silently dropped.
//!
//! A file is a sequence of frames: a little-endian 64-bit length word (the low 56 bits are the
//! record's length; if the top bit is set, bits 56–58 count padding bytes after it, which
//! keep frames 8-byte aligned), then a `walpb.Record {type, crc, data}`. A zero length word
//! ends the written part of a preallocated file; a frame running past the end is a torn write
//! at the tail, which etcd also drops. Records are not CRC-checked here: this reader only
//! decides whether migration may go on, and refuses on anything it cannot decode.
//!
//! Entries are classified by [`EntryKind`]: only a committed put past the consistent index
//! proves the backend is behind (etcd 3.4 leaves the index where it was for auth, lease and
//! membership changes, so those past it are usually already applied).

use std::path::{Path, PathBuf};

use prost::Message;
use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType, HardState};

const METADATA_TYPE: i64 = 1;
const ENTRY_TYPE: i64 = 2;
const STATE_TYPE: i64 = 3;

/// etcd's `walpb.Record`.
#[derive(Clone, PartialEq, prost::Message)]
struct Record {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(uint32, tag = "2")]
    crc: u32,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
}

/// etcd's `etcdserverpb.Metadata`, the WAL's first record.
#[derive(Clone, PartialEq, prost::Message)]
struct Metadata {
    #[prost(uint64, tag = "1")]
    node_id: u64,
    #[prost(uint64, tag = "2")]
    cluster_id: u64,
}

/// The part of etcd's `InternalRaftRequest` that tells a put: field 4.
#[derive(Clone, PartialEq, prost::Message)]
struct RaftRequestKind {
    #[prost(bytes = "vec", optional, tag = "4")]
    put: Option<Vec<u8>>,
}

/// What an entry does, as far as migration must know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A leader's empty entry: changes nothing.
    Empty,
    /// A put. etcd advances the backend's consistent index with every put it applies, so a
    /// committed put past that index was certainly not applied.
    Put,
    /// Anything else (deletes, txns, leases, auth, membership). etcd 3.4 advances the
    /// consistent index only with writes that change keys, so whether such an entry past it
    /// was applied cannot be told from the files.
    Other,
}

/// What the WAL says about the member and its log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WalSummary {
    pub member_id: u64,
    pub cluster_id: u64,
    /// The last hard state's commit index.
    pub commit_index: u64,
    /// The entries, as the log holds them once later writes overwrote earlier ones.
    pub entries: Vec<(u64, EntryKind)>,
}

impl WalSummary {
    /// Committed entries that change something and come after `applied`.
    pub fn committed_after(&self, applied: u64) -> Vec<(u64, EntryKind)> {
        self.entries
            .iter()
            .copied()
            .filter(|(i, kind)| {
                *i > applied && *i <= self.commit_index && *kind != EntryKind::Empty
            })
            .collect()
    }
}

/// Reads every `.wal` file of `dir` in name order (etcd names them `seq-index.wal`).
pub fn read_dir(dir: &Path) -> Result<WalSummary, String> {
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no .wal files", dir.display()));
    }
    let mut summary = WalSummary::default();
    for path in &files {
        let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
        read_file(&bytes, &mut summary).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(summary)
}

fn read_file(bytes: &[u8], summary: &mut WalSummary) -> Result<(), String> {
    let mut at = 0usize;
    while let Some(word) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        if word == 0 {
            break;
        }
        let len = (word & !(0xffu64 << 56)) as usize;
        let pad = if word >> 63 == 1 {
            ((word >> 56) & 0x7) as usize
        } else {
            0
        };
        let Some(frame) = bytes.get(at + 8..).and_then(|rest| rest.get(..len)) else {
            break; // torn tail
        };
        let record = Record::decode(frame).map_err(|e| format!("record at {at}: {e}"))?;
        match record.r#type {
            METADATA_TYPE => {
                let meta = Metadata::decode(record.data.as_slice())
                    .map_err(|e| format!("metadata at {at}: {e}"))?;
                summary.member_id = meta.node_id;
                summary.cluster_id = meta.cluster_id;
            }
            ENTRY_TYPE => {
                let entry = Entry::parse_from_bytes(&record.data)
                    .map_err(|e| format!("entry at {at}: {e}"))?;
                // A later entry at an index replaces the earlier one and everything after it.
                summary.entries.retain(|(i, _)| *i < entry.index);
                summary.entries.push((entry.index, kind(&entry)));
            }
            STATE_TYPE => {
                let state = HardState::parse_from_bytes(&record.data)
                    .map_err(|e| format!("hard state at {at}: {e}"))?;
                summary.commit_index = summary.commit_index.max(state.commit);
            }
            _ => {}
        }
        at += 8 + len + pad;
    }
    Ok(())
}

fn kind(entry: &Entry) -> EntryKind {
    if entry.get_entry_type() != EntryType::EntryNormal {
        return EntryKind::Other;
    }
    if entry.data.is_empty() {
        return EntryKind::Empty;
    }
    match RaftRequestKind::decode(entry.data.as_ref()) {
        Ok(RaftRequestKind { put: Some(_) }) => EntryKind::Put,
        _ => EntryKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(r#type: i64, data: Vec<u8>) -> Vec<u8> {
        let record = Record {
            r#type,
            crc: 0,
            data,
        }
        .encode_to_vec();
        let pad = (8 - record.len() % 8) % 8;
        let mut word = record.len() as u64;
        if pad > 0 {
            word |= (0x80 | pad as u64) << 56;
        }
        let mut out = word.to_le_bytes().to_vec();
        out.extend_from_slice(&record);
        out.resize(out.len() + pad, 0);
        out
    }

    fn entry(index: u64, data: &[u8]) -> Vec<u8> {
        let e = Entry {
            index,
            term: 2,
            data: data.to_vec().into(),
            ..Default::default()
        };
        e.write_to_bytes().expect("encode")
    }

    #[test]
    fn finds_committed_entries_past_the_applied_index() {
        let mut wal = frame(
            METADATA_TYPE,
            Metadata {
                node_id: 7,
                cluster_id: 9,
            }
            .encode_to_vec(),
        );
        let put = RaftRequestKind {
            put: Some(b"k".to_vec()),
        }
        .encode_to_vec();
        for (i, data) in [(1, &put[..]), (2, b""), (3, b"c"), (4, b"d")] {
            wal.extend(frame(ENTRY_TYPE, entry(i, data)));
        }
        let hs = HardState {
            commit: 3,
            ..Default::default()
        };
        wal.extend(frame(STATE_TYPE, hs.write_to_bytes().expect("encode")));
        // Index 3 rewritten by a new leader: the old 3 and 4 are gone.
        wal.extend(frame(ENTRY_TYPE, entry(3, b"")));
        wal.extend([0u8; 64]);
        let mut summary = WalSummary::default();
        read_file(&wal, &mut summary).expect("valid");
        assert_eq!((summary.member_id, summary.cluster_id), (7, 9));
        assert_eq!(summary.commit_index, 3);
        assert_eq!(summary.committed_after(0), vec![(1, EntryKind::Put)]);
        assert!(summary.committed_after(1).is_empty());
    }

    #[test]
    fn garbage_is_an_error_or_a_torn_tail_never_a_panic() {
        let mut summary = WalSummary::default();
        let _ = read_file(&[0xff; 40], &mut summary);
        let _ = read_file(&[1, 0, 0, 0, 0, 0, 0, 0, 0xff], &mut summary);
    }
}
