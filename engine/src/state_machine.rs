//! The replicated state machine: applies committed raft entries to MVCC, leases, members,
//! alarms and auth, all stored in one [`KvBackend`].
//!
//! Invariants:
//! - Entries are applied in log order, each exactly once: `applied_index` strictly increases and
//!   is written to the backend in the same batch as the entry's effects, so a restart
//!   re-applies exactly the committed entries after it.
//! - Applying is deterministic: the same entries on the same state give the same backend
//!   content on every node (the `Hash`/`HashKV` checks rely on it). Only leader-local lease
//!   timing reads the node's clock, and it never changes replicated state.
//! - A request rejected at apply time (NOSPACE, unknown lease, compacted revision, permission
//!   denied...) changes nothing but the applied index.
//! - While auth is enabled, a client's entry is checked against the auth store as it stands
//!   when the entry is applied, with the user and auth revision its proposer resolved
//!   ([`AuthStore::check_apply`]); commands the engine proposed itself (origin 0) are not.

use std::collections::BTreeSet;

use prost::Message as _;
use raft::eraftpb::{ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType};

use crate::auth::{AuthInfo, AuthStore};
use crate::backend::{BackendError, Bucket, KvBackend, Scan, WriteBatch};
use crate::error::{Error, EtcdError};
use crate::lease::Lessor;
use crate::membership::{self, Members};
use crate::mvcc::MvccStore;
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmResponse, AlarmType, AuthDisableResponse,
    AuthEnableResponse, AuthRoleAddResponse, AuthRoleDeleteResponse,
    AuthRoleGrantPermissionResponse, AuthRoleRevokePermissionResponse, AuthUserAddResponse,
    AuthUserChangePasswordResponse, AuthUserDeleteResponse, AuthUserGrantRoleResponse,
    AuthUserRevokeRoleResponse, AuthenticateResponse, CompactionResponse, LeaseRevokeResponse,
    MemberUpdateResponse,
};
use crate::proto::mvccpb::Event;
use crate::proto::strata::internal::{
    internal_request, InternalRequest, MemberRecord, SnapshotData, SnapshotRecord,
};
use crate::request::{txn_has_put, Response};
use crate::types::{LeaseId, LogIndex, NodeId, Revision, Term};

/// `Bucket::Meta` key of the applied raft index (8 bytes, big-endian; etcd's
/// `consistent_index`).
pub const META_APPLIED_INDEX: &[u8] = b"applied_index";
/// `Bucket::Meta` key of the term of the applied index (8 bytes, big-endian).
pub const META_APPLIED_TERM: &[u8] = b"applied_term";
/// `Bucket::Meta` key of the conf state at the applied index (raft's protobuf).
pub const META_CONF_STATE: &[u8] = b"conf_state";

/// Who waits for an applied entry's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub node: NodeId,
    pub proposal: u64,
}

/// How an applied request turned out, for the node that proposed it.
#[derive(Debug)]
pub enum Outcome {
    /// The client's answer.
    Done(Box<Response>),
    /// Applied; the proposer builds the answer from what it asked for (a membership change
    /// answers with the member list after raft applied it, a keep-alive with its TTL).
    Accepted,
}

/// What applying one entry produced.
#[derive(Debug, Default)]
pub struct Applied {
    /// The result for the client waiting on the proposing node.
    pub reply: Option<(Origin, Result<Outcome, EtcdError>)>,
    /// Watch events of the entry's revision, `prev_kv` filled.
    pub events: Vec<Event>,
    /// A membership change raft must now apply (the node calls `apply_conf_change`).
    pub conf_change: Option<ConfChangeV2>,
    /// The member a conf change named, for the reply built after raft applied it.
    pub member: Option<MemberRecord>,
}

pub struct StateMachine<B: KvBackend> {
    backend: B,
    pub mvcc: MvccStore,
    pub lessor: Lessor,
    pub members: Members,
    pub auth: AuthStore,
    alarms: BTreeSet<(u64, i32)>,
    applied: (LogIndex, Term),
    conf_state: ConfState,
    batch: WriteBatch,
}

/// The applied index a backend holds (0 for a fresh one), read without opening the state
/// machine (`--force-new-cluster` rewrites the log from it).
pub fn stored_applied_index(backend: &dyn KvBackend) -> Result<LogIndex, BackendError> {
    Ok(LogIndex(read_u64(backend, META_APPLIED_INDEX)?))
}

fn read_u64(backend: &dyn KvBackend, key: &[u8]) -> Result<u64, BackendError> {
    match backend.get(Bucket::Meta, key)? {
        None => Ok(0),
        Some(v) => {
            let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| BackendError {
                op: "decode meta",
                reason: format!("{} holds {} bytes", String::from_utf8_lossy(key), v.len()),
            })?;
            Ok(u64::from_be_bytes(bytes))
        }
    }
}

/// The records of a snapshot (`snapshot_data`) to seed a brand-new cluster with, as etcd's
/// `snapshot restore` does: the keyspace, its revisions and compaction mark, leases and auth
/// are kept; the old cluster's members, removed ids, alarms, applied index and conf state are
/// dropped, so the new cluster's bootstrap conf changes apply on top from index 1.
pub fn records_for_new_cluster(data: &[u8]) -> Result<Vec<crate::backend::BatchOp>, BackendError> {
    let snap = SnapshotData::decode(data).map_err(|e| BackendError {
        op: "decode snapshot",
        reason: e.to_string(),
    })?;
    let mut ops = Vec::with_capacity(snap.records.len());
    for r in snap.records {
        let bucket = Bucket::from_tag(r.bucket as u8).ok_or_else(|| BackendError {
            op: "decode snapshot",
            reason: format!("unknown bucket {}", r.bucket),
        })?;
        let dropped = matches!(
            bucket,
            Bucket::Members | Bucket::MembersRemoved | Bucket::Alarm
        ) || (bucket == Bucket::Meta
            && [META_APPLIED_INDEX, META_APPLIED_TERM, META_CONF_STATE]
                .contains(&r.key.as_slice()));
        if !dropped {
            ops.push(crate::backend::BatchOp {
                bucket,
                key: r.key,
                value: Some(r.value),
            });
        }
    }
    Ok(ops)
}

fn alarm_key(member: u64, alarm: i32) -> Vec<u8> {
    let mut k = member.to_be_bytes().to_vec();
    k.extend_from_slice(&alarm.to_be_bytes());
    k
}

impl<B: KvBackend> StateMachine<B> {
    /// Opens the state machine over `backend`, rebuilding every in-memory index.
    pub fn open(
        backend: B,
        min_lease_ttl_secs: i64,
        auth_token_ttl_ms: u64,
    ) -> Result<StateMachine<B>, BackendError> {
        let (mvcc, lessor, members, alarms, applied, conf_state) =
            Self::open_parts(&backend, min_lease_ttl_secs)?;
        let auth = AuthStore::open(&backend, auth_token_ttl_ms)?;
        Ok(StateMachine {
            backend,
            mvcc,
            lessor,
            members,
            auth,
            alarms,
            applied,
            conf_state,
            batch: WriteBatch::default(),
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn into_backend(self) -> B {
        self.backend
    }

    pub fn applied(&self) -> (LogIndex, Term) {
        self.applied
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.alarms
            .iter()
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    pub fn nospace(&self) -> bool {
        self.alarms
            .iter()
            .any(|&(_, a)| a == AlarmType::Nospace as i32)
    }

    /// Applies one committed entry. The caller must call [`StateMachine::commit`] before the
    /// next read of the backend by anyone else.
    pub fn apply(&mut self, entry: &Entry, now_ms: u64) -> Result<Applied, BackendError> {
        let index = LogIndex(entry.index);
        assert!(
            index > self.applied.0,
            "entry {index} applied after {}",
            self.applied.0
        );
        self.applied = (index, Term(entry.term));
        self.batch.put(
            Bucket::Meta,
            META_APPLIED_INDEX.to_vec(),
            entry.index.to_be_bytes().to_vec(),
        );
        self.batch.put(
            Bucket::Meta,
            META_APPLIED_TERM.to_vec(),
            entry.term.to_be_bytes().to_vec(),
        );
        match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => Ok(Applied::default()),
            EntryType::EntryNormal => self.apply_normal(index, &entry.data, now_ms),
            EntryType::EntryConfChange => {
                panic!("entry {index}: v1 conf changes are never proposed by Strata")
            }
            EntryType::EntryConfChangeV2 => self.apply_conf_change(entry),
        }
    }

    /// Writes everything applied since the last commit, with the applied index, atomically.
    pub fn commit(&mut self) -> Result<(), BackendError> {
        let mut batch = std::mem::take(&mut self.batch);
        batch.ops.extend(self.mvcc.take_batch().ops);
        if batch.is_empty() {
            return Ok(());
        }
        self.backend.write(batch)
    }

    /// Records the membership raft reports after applying a conf change.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.batch.put(
            Bucket::Meta,
            META_CONF_STATE.to_vec(),
            protobuf::Message::write_to_bytes(&cs).expect("encode conf state"),
        );
        self.conf_state = cs;
    }

    fn apply_normal(
        &mut self,
        index: LogIndex,
        data: &[u8],
        now_ms: u64,
    ) -> Result<Applied, BackendError> {
        let req = InternalRequest::decode(data).unwrap_or_else(|e| {
            panic!("committed entry does not decode as an InternalRequest: {e}")
        });
        let origin = Origin {
            node: NodeId(req.origin),
            proposal: req.request_id,
        };
        let Some(request) = req.request else {
            return Ok(Applied::default());
        };
        let authenticated = (req.auth_revision != 0).then_some(AuthInfo {
            username: req.username,
            revision: req.auth_revision,
            pinned: true,
        });
        let sender = (origin.node.0 != 0).then_some(authenticated);
        let (result, events) = match self.apply_request(request, index, now_ms, sender) {
            Ok((outcome, events)) => (Ok(outcome), events),
            Err(Error::Etcd(e)) => (Err(e), Vec::new()),
            Err(Error::Backend(e)) => return Err(e),
        };
        Ok(Applied {
            reply: (origin.node.0 != 0).then_some((origin, result)),
            events,
            ..Applied::default()
        })
    }

    /// `sender`: `None` for a command the engine proposed itself; for a client's request, who
    /// sent it (`Some(None)`: no one authenticated).
    fn apply_request(
        &mut self,
        request: internal_request::Request,
        index: LogIndex,
        now_ms: u64,
        sender: Option<Option<AuthInfo>>,
    ) -> Result<(Outcome, Vec<Event>), Error> {
        use internal_request::Request as R;
        use Outcome::{Accepted, Done};
        if let Some(ai) = &sender {
            self.auth.check_apply(ai.as_ref(), &request, &self.lessor)?;
        }
        let nospace = self.nospace();
        let done = |resp: Response| Ok((Done(Box::new(resp)), Vec::new()));
        let batch = &mut self.batch;
        match request {
            R::Put(put) => {
                if nospace {
                    return Err(EtcdError::NoSpace.into());
                }
                let lessor = &self.lessor;
                let (resp, events) = self
                    .mvcc
                    .put(&self.backend, &put, &|id| lessor.contains(id))?;
                self.track_leases();
                Ok((Done(Box::new(Response::Put(resp))), events))
            }
            R::DeleteRange(del) => {
                let (resp, events) = self.mvcc.delete_range(&self.backend, &del)?;
                self.track_leases();
                Ok((Done(Box::new(Response::DeleteRange(resp))), events))
            }
            R::Txn(txn) => {
                if nospace && txn_has_put(&txn) {
                    return Err(EtcdError::NoSpace.into());
                }
                let lessor = &self.lessor;
                let (resp, events) = self
                    .mvcc
                    .txn(&self.backend, &txn, &|id| lessor.contains(id))?;
                self.track_leases();
                Ok((Done(Box::new(Response::Txn(resp))), events))
            }
            R::Compaction(c) => {
                self.mvcc.compact(&self.backend, Revision(c.revision))?;
                Ok((
                    Done(Box::new(Response::Compact(CompactionResponse::default()))),
                    Vec::new(),
                ))
            }
            R::LeaseGrant(g) => {
                if nospace {
                    return Err(EtcdError::NoSpace.into());
                }
                let resp = self
                    .lessor
                    .grant(LeaseId(g.id), g.ttl, now_ms, &mut self.batch)?;
                Ok((Done(Box::new(Response::LeaseGrant(resp))), Vec::new()))
            }
            R::LeaseRevoke(r) => {
                let keys = self.lessor.revoke(LeaseId(r.id), &mut self.batch)?;
                let events = self.mvcc.delete_keys(&self.backend, &keys)?;
                // The revoked lease is gone from the lessor: nothing left to detach.
                self.track_leases();
                let resp = Response::LeaseRevoke(LeaseRevokeResponse::default());
                Ok((Done(Box::new(resp)), events))
            }
            R::LeaseCheckpoint(cps) => {
                for cp in &cps.checkpoints {
                    if self.lessor.contains(LeaseId(cp.id)) {
                        self.lessor.checkpoint(cp, now_ms, &mut self.batch);
                    }
                }
                // A keep-alive may wait on this reset; the node answers it with the TTL.
                Ok((Accepted, Vec::new()))
            }
            R::Alarm(a) => {
                let resp = AlarmResponse {
                    header: None,
                    alarms: self.apply_alarm(a.action, a.member_id, a.alarm),
                };
                Ok((Done(Box::new(Response::Alarm(resp))), Vec::new()))
            }
            R::MemberUpdate(m) => {
                let id = NodeId(m.id);
                if !self.members.contains(id) {
                    return Err(EtcdError::MemberNotFound.into());
                }
                if self.members.peer_url_taken(&m.peer_urls, Some(id)) {
                    return Err(EtcdError::PeerUrlExist.into());
                }
                self.members
                    .update_peer_urls(id, m.peer_urls, &mut self.batch);
                let resp = MemberUpdateResponse {
                    header: None,
                    members: self.members.list(),
                };
                Ok((Done(Box::new(Response::MemberUpdate(resp))), Vec::new()))
            }
            R::MemberAttributes(attrs) => {
                self.members.set_attributes(&attrs, &mut self.batch);
                Ok((Accepted, Vec::new()))
            }
            R::AuthEnable(_) => {
                self.auth.enable(batch)?;
                done(Response::AuthEnable(AuthEnableResponse::default()))
            }
            R::AuthDisable(_) => {
                self.auth.disable(batch);
                done(Response::AuthDisable(AuthDisableResponse::default()))
            }
            R::Authenticate(a) => {
                let token = self.auth.authenticate(&a, index, now_ms)?;
                let resp = AuthenticateResponse {
                    header: None,
                    token,
                };
                done(Response::Authenticate(resp))
            }
            R::AuthUserAdd(r) => {
                self.auth.user_add(&r, batch)?;
                done(Response::UserAdd(AuthUserAddResponse::default()))
            }
            R::AuthUserDelete(r) => {
                self.auth.user_delete(&r.name, batch)?;
                done(Response::UserDelete(AuthUserDeleteResponse::default()))
            }
            R::AuthUserChangePassword(r) => {
                self.auth.user_change_password(&r, batch)?;
                let resp = AuthUserChangePasswordResponse::default();
                done(Response::UserChangePassword(resp))
            }
            R::AuthUserGrantRole(r) => {
                self.auth.user_grant_role(&r, batch)?;
                done(Response::UserGrantRole(AuthUserGrantRoleResponse::default()))
            }
            R::AuthUserRevokeRole(r) => {
                self.auth.user_revoke_role(&r, batch)?;
                done(Response::UserRevokeRole(
                    AuthUserRevokeRoleResponse::default(),
                ))
            }
            R::AuthRoleAdd(r) => {
                self.auth.role_add(&r.name, batch)?;
                done(Response::RoleAdd(AuthRoleAddResponse::default()))
            }
            R::AuthRoleDelete(r) => {
                self.auth.role_delete(&r.role, batch)?;
                done(Response::RoleDelete(AuthRoleDeleteResponse::default()))
            }
            R::AuthRoleGrantPermission(r) => {
                self.auth.role_grant_permission(&r, batch)?;
                let resp = AuthRoleGrantPermissionResponse::default();
                done(Response::RoleGrantPermission(resp))
            }
            R::AuthRoleRevokePermission(r) => {
                self.auth.role_revoke_permission(&r, batch)?;
                let resp = AuthRoleRevokePermissionResponse::default();
                done(Response::RoleRevokePermission(resp))
            }
        }
    }

    /// etcd's `applierV3backend.Alarm`: the answer names the alarm activated (even if it was
    /// already active) or the one deactivated, and nothing when there was none to deactivate.
    /// Clients print it (`etcdctl alarm disarm` lists what it disarmed).
    fn apply_alarm(&mut self, action: i32, member: u64, alarm: i32) -> Vec<AlarmMember> {
        let key = alarm_key(member, alarm);
        let changed = if action == AlarmAction::Activate as i32 && alarm != AlarmType::None as i32 {
            self.alarms.insert((member, alarm));
            self.batch.put(Bucket::Alarm, key, Vec::new());
            true
        } else if action == AlarmAction::Deactivate as i32 {
            let was_active = self.alarms.remove(&(member, alarm));
            if was_active {
                self.batch.delete(Bucket::Alarm, key);
            }
            was_active
        } else {
            false
        };
        let member_id = member;
        changed
            .then_some(AlarmMember { member_id, alarm })
            .into_iter()
            .collect()
    }

    /// Keeps lease attachments in step with the keys written: a put moves a key to its new
    /// lease, a delete detaches it.
    fn track_leases(&mut self) {
        for moved in self.mvcc.take_lease_moves() {
            if let Some(from) = moved.from {
                if self.lessor.contains(from) {
                    self.lessor.detach(from, &moved.key);
                }
            }
            if let Some(to) = moved.to {
                self.lessor.attach(to, &moved.key);
            }
        }
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<Applied, BackendError> {
        let cc: ConfChangeV2 = protobuf::Message::parse_from_bytes(&entry.data)
            .unwrap_or_else(|e| panic!("entry {}: bad conf change: {e}", entry.index));
        let ctx = InternalRequest::decode(cc.get_context())
            .unwrap_or_else(|e| panic!("entry {}: bad conf change context: {e}", entry.index));
        let origin = Origin {
            node: NodeId(ctx.origin),
            proposal: ctx.request_id,
        };
        let Some(internal_request::Request::MemberUpdate(member)) = ctx.request else {
            panic!("entry {}: conf change without a member record", entry.index);
        };
        let change = cc.get_changes().first().cloned().unwrap_or_else(|| {
            panic!(
                "entry {}: Strata proposes one change per conf change",
                entry.index
            )
        });
        let id = NodeId(change.node_id);
        let verdict = self.validate_conf_change(change.get_change_type(), id, &member);
        let mut applied = Applied::default();
        match verdict {
            Err(e) => {
                applied.reply = (origin.node.0 != 0).then_some((origin, Err(e)));
            }
            Ok(()) => {
                match change.get_change_type() {
                    ConfChangeType::AddNode if self.members.contains(id) => {
                        self.members.promote(id, &mut self.batch)
                    }
                    ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                        self.members.add(member.clone(), &mut self.batch)
                    }
                    ConfChangeType::RemoveNode => self.members.remove(id, &mut self.batch),
                }
                applied.conf_change = Some(cc);
                applied.member = Some(member);
                if origin.node.0 != 0 {
                    applied.reply = Some((origin, Ok(Outcome::Accepted)));
                }
            }
        }
        Ok(applied)
    }

    /// etcd's `ValidateConfigurationChange`, re-checked at apply time: the membership may have
    /// changed since the proposal was accepted.
    fn validate_conf_change(
        &self,
        kind: ConfChangeType,
        id: NodeId,
        member: &MemberRecord,
    ) -> Result<(), EtcdError> {
        if self.members.is_removed(id) {
            return Err(EtcdError::MemberNotFound);
        }
        match kind {
            ConfChangeType::AddNode if self.members.contains(id) => {
                // Promotion: only a learner can be promoted.
                match self.members.get(id) {
                    Some(m) if m.is_learner => Ok(()),
                    _ => Err(EtcdError::MemberNotLearner),
                }
            }
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if self.members.contains(id) {
                    return Err(EtcdError::MemberExist);
                }
                if self.members.peer_url_taken(&member.peer_urls, None) {
                    return Err(EtcdError::PeerUrlExist);
                }
                Ok(())
            }
            ConfChangeType::RemoveNode => {
                if !self.members.contains(id) {
                    return Err(EtcdError::MemberNotFound);
                }
                let voters = self.members.voters();
                let is_voter = voters.contains(&id);
                if is_voter && voters.len() == 1 {
                    return Err(EtcdError::MemberNotEnoughStarted);
                }
                Ok(())
            }
        }
    }

    /// Every backend record at the applied index, as a raft snapshot's data.
    pub fn snapshot_data(&self) -> Result<Vec<u8>, BackendError> {
        let mut records = Vec::new();
        for bucket in Bucket::ALL {
            self.backend.scan(bucket, b"", None, &mut |k, v| {
                records.push(SnapshotRecord {
                    bucket: bucket.tag() as u32,
                    key: k.to_vec(),
                    value: v.to_vec(),
                });
                Scan::Continue
            })?;
        }
        let data = SnapshotData {
            applied_index: self.applied.0 .0,
            applied_term: self.applied.1 .0,
            records,
        };
        Ok(data.encode_to_vec())
    }

    /// Replaces the whole state with a snapshot's data, atomically, then rebuilds the indexes.
    pub fn install_snapshot(
        &mut self,
        data: &[u8],
        min_lease_ttl_secs: i64,
    ) -> Result<(), BackendError> {
        let snap = SnapshotData::decode(data).map_err(|e| BackendError {
            op: "decode snapshot",
            reason: e.to_string(),
        })?;
        let mut ops = Vec::with_capacity(snap.records.len());
        for r in snap.records {
            let bucket = Bucket::from_tag(r.bucket as u8).ok_or_else(|| BackendError {
                op: "decode snapshot",
                reason: format!("unknown bucket {}", r.bucket),
            })?;
            ops.push(crate::backend::BatchOp {
                bucket,
                key: r.key,
                value: Some(r.value),
            });
        }
        self.backend.replace_all(ops)?;
        assert!(
            !self.lessor.is_primary(),
            "a leader never installs a snapshot"
        );
        assert!(
            self.batch.is_empty(),
            "snapshot installed over uncommitted writes"
        );
        let (mvcc, lessor, members, alarms, applied, conf_state) =
            Self::open_parts(&self.backend, min_lease_ttl_secs)?;
        // Tokens registered by the entries the snapshot replaces are unknown here, and some of
        // them were ended by later entries: forget them all; their clients authenticate again.
        self.auth = AuthStore::open(&self.backend, self.auth.token_ttl_ms())?;
        self.mvcc = mvcc;
        self.lessor = lessor;
        self.members = members;
        self.alarms = alarms;
        self.applied = applied;
        self.conf_state = conf_state;
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn open_parts(
        backend: &B,
        min_lease_ttl_secs: i64,
    ) -> Result<
        (
            MvccStore,
            Lessor,
            Members,
            BTreeSet<(u64, i32)>,
            (LogIndex, Term),
            ConfState,
        ),
        BackendError,
    > {
        let mvcc = MvccStore::open(backend)?;
        let mut lessor = Lessor::open(backend, min_lease_ttl_secs)?;
        for (key, lease) in mvcc.lease_keys() {
            if lessor.contains(lease) {
                lessor.attach(lease, &key);
            }
        }
        let members = Members::open(backend)?;
        let mut alarms = BTreeSet::new();
        backend.scan(Bucket::Alarm, b"", None, &mut |k, _| {
            if k.len() == 12 {
                let member = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
                let alarm = i32::from_be_bytes(k[8..].try_into().expect("4 bytes"));
                alarms.insert((member, alarm));
            }
            Scan::Continue
        })?;
        let applied = (
            LogIndex(read_u64(backend, META_APPLIED_INDEX)?),
            Term(read_u64(backend, META_APPLIED_TERM)?),
        );
        let conf_state = match backend.get(Bucket::Meta, META_CONF_STATE)? {
            None => ConfState::default(),
            Some(v) => protobuf::Message::parse_from_bytes(&v).map_err(|e| BackendError {
                op: "decode conf state",
                reason: e.to_string(),
            })?,
        };
        Ok((mvcc, lessor, members, alarms, applied, conf_state))
    }

    /// etcd's `Hash`: a CRC-32C over every backend record except the bookkeeping that differs
    /// between members (applied index and term).
    pub fn hash(&self) -> Result<u32, BackendError> {
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
        let mut digest = crc.digest();
        for bucket in Bucket::ALL {
            self.backend.scan(bucket, b"", None, &mut |k, v| {
                let ignored =
                    bucket == Bucket::Meta && (k == META_APPLIED_INDEX || k == META_APPLIED_TERM);
                if !ignored {
                    digest.update(&[bucket.tag()]);
                    digest.update(k);
                    digest.update(v);
                }
                Scan::Continue
            })?;
        }
        Ok(digest.finalize())
    }
}

pub use membership::to_member;
