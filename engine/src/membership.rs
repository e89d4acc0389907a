//! The cluster's members as the state machine knows them: id, name, peer and client URLs,
//! learner flag, plus the ids of removed members (which may never rejoin, as in etcd).
//!
//! Changed only by applied entries: raft conf changes (add, remove, promote) carry a
//! [`MemberRecord`] as context, and normal entries carry URL updates and the attributes a member
//! publishes once started. Every change is staged into the caller's [`WriteBatch`], so the
//! table and the applied index reach the backend together.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;

use crate::backend::{BackendError, Bucket, KvBackend, Scan, WriteBatch};
use crate::proto::etcdserverpb::Member;
use crate::proto::strata::internal::{MemberAttributes, MemberRecord};
use crate::types::NodeId;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Members {
    members: BTreeMap<NodeId, MemberRecord>,
    removed: BTreeSet<NodeId>,
}

fn key(id: NodeId) -> Vec<u8> {
    id.0.to_be_bytes().to_vec()
}

fn decode_id(k: &[u8]) -> Result<NodeId, BackendError> {
    let bytes: [u8; 8] = k.try_into().map_err(|_| BackendError {
        op: "decode member id",
        reason: format!("key of {} bytes", k.len()),
    })?;
    Ok(NodeId(u64::from_be_bytes(bytes)))
}

impl Members {
    pub fn open(backend: &dyn KvBackend) -> Result<Members, BackendError> {
        let mut members = Members::default();
        let mut failure = None;
        backend.scan(Bucket::Members, b"", None, &mut |_, v| {
            match MemberRecord::decode(v) {
                Ok(m) => {
                    members.members.insert(NodeId(m.id), m);
                }
                Err(e) => failure = Some(e.to_string()),
            }
            Scan::Continue
        })?;
        if let Some(reason) = failure {
            return Err(BackendError {
                op: "decode member",
                reason,
            });
        }
        let mut ids = Vec::new();
        backend.scan(Bucket::MembersRemoved, b"", None, &mut |k, _| {
            ids.push(k.to_vec());
            Scan::Continue
        })?;
        for k in ids {
            members.removed.insert(decode_id(&k)?);
        }
        Ok(members)
    }

    /// Every member's record, in id order.
    pub fn records(&self) -> impl Iterator<Item = &MemberRecord> {
        self.members.values()
    }

    pub fn get(&self, id: NodeId) -> Option<&MemberRecord> {
        self.members.get(&id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }

    pub fn is_removed(&self, id: NodeId) -> bool {
        self.removed.contains(&id)
    }

    /// Ids of every member ever removed.
    pub fn removed(&self) -> &BTreeSet<NodeId> {
        &self.removed
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn learner_count(&self) -> usize {
        self.members.values().filter(|m| m.is_learner).count()
    }

    pub fn voters(&self) -> Vec<NodeId> {
        self.members
            .values()
            .filter(|m| !m.is_learner)
            .map(|m| NodeId(m.id))
            .collect()
    }

    /// Whether any member already uses one of `urls` as a peer URL (ignoring `except`).
    pub fn peer_url_taken(&self, urls: &[String], except: Option<NodeId>) -> bool {
        self.members
            .values()
            .filter(|m| Some(NodeId(m.id)) != except)
            .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
    }

    pub fn add(&mut self, record: MemberRecord, batch: &mut WriteBatch) {
        let id = NodeId(record.id);
        assert!(
            !self.removed.contains(&id),
            "re-adding removed member {}",
            id.hex()
        );
        self.store(record, batch);
    }

    pub fn remove(&mut self, id: NodeId, batch: &mut WriteBatch) {
        self.members.remove(&id);
        self.removed.insert(id);
        batch.delete(Bucket::Members, key(id));
        batch.put(Bucket::MembersRemoved, key(id), Vec::new());
    }

    pub fn promote(&mut self, id: NodeId, batch: &mut WriteBatch) {
        if let Some(mut m) = self.members.get(&id).cloned() {
            m.is_learner = false;
            self.store(m, batch);
        }
    }

    pub fn update_peer_urls(&mut self, id: NodeId, peer_urls: Vec<String>, batch: &mut WriteBatch) {
        if let Some(mut m) = self.members.get(&id).cloned() {
            m.peer_urls = peer_urls;
            self.store(m, batch);
        }
    }

    pub fn set_attributes(&mut self, attrs: &MemberAttributes, batch: &mut WriteBatch) {
        if let Some(mut m) = self.members.get(&NodeId(attrs.id)).cloned() {
            m.name = attrs.name.clone();
            m.client_urls = attrs.client_urls.clone();
            self.store(m, batch);
        }
    }

    /// Members in etcd's wire form, ordered by id.
    pub fn list(&self) -> Vec<Member> {
        self.members.values().map(to_member).collect()
    }

    fn store(&mut self, record: MemberRecord, batch: &mut WriteBatch) {
        let id = NodeId(record.id);
        batch.put(Bucket::Members, key(id), record.encode_to_vec());
        self.members.insert(id, record);
    }
}

pub fn to_member(m: &MemberRecord) -> Member {
    Member {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: m.peer_urls.clone(),
        client_ur_ls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

/// Whether every URL is an absolute `http(s)://host:port` URL, as etcd requires of peer URLs.
pub fn urls_valid(urls: &[String]) -> bool {
    !urls.is_empty()
        && urls.iter().all(|u| {
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"))
                .or_else(|| u.strip_prefix("unix://"))
                .or_else(|| u.strip_prefix("unixs://"));
            match rest {
                Some(hostport) => match hostport.rsplit_once(':') {
                    Some((host, port)) => {
                        !host.is_empty() && !port.is_empty() && port.parse::<u16>().is_ok()
                    }
                    None => false,
                },
                None => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;

    fn record(id: u64, url: &str, learner: bool) -> MemberRecord {
        MemberRecord {
            id,
            name: format!("n{id}"),
            peer_urls: vec![url.to_string()],
            client_urls: vec![],
            is_learner: learner,
        }
    }

    #[test]
    fn round_trips_through_the_backend() {
        let mut backend = MemBackend::new();
        let mut m = Members::default();
        let mut batch = WriteBatch::default();
        m.add(record(1, "http://a:1", false), &mut batch);
        m.add(record(2, "http://b:2", true), &mut batch);
        m.promote(NodeId(2), &mut batch);
        m.add(record(3, "http://c:3", false), &mut batch);
        m.remove(NodeId(3), &mut batch);
        backend.write(batch).unwrap();
        let reopened = Members::open(&backend).unwrap();
        assert_eq!(reopened, m);
        assert_eq!(reopened.voters(), vec![NodeId(1), NodeId(2)]);
        assert!(reopened.is_removed(NodeId(3)));
        assert!(reopened.peer_url_taken(&["http://a:1".into()], None));
        assert!(!reopened.peer_url_taken(&["http://a:1".into()], Some(NodeId(1))));
    }

    #[test]
    fn url_validation_matches_etcds_shape() {
        assert!(urls_valid(&["http://127.0.0.1:2380".into()]));
        assert!(!urls_valid(&["127.0.0.1:2380".into()]));
        assert!(!urls_valid(&["http://host".into()]));
        assert!(!urls_valid(&[]));
    }
}
