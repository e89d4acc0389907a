//! The lessor: etcd's leases (`server/lease/lessor.go`), as a deterministic state structure.
//!
//! # What it owns
//!
//! - **Replicated state**, changed only by applied raft entries and therefore identical on every
//!   node: each lease's id, granted TTL, last checkpointed remaining TTL (`0` = none, use the
//!   full TTL) and the keys attached to it. Grants and checkpoints stage a `LeaseRecord` into the
//!   caller's [`WriteBatch`] (bucket [`Bucket::Lease`], key = the id as 8 big-endian bytes);
//!   revokes stage its deletion, in the same batch as the deletion of the lease's keys, so the
//!   backend never holds a lease without its keys or keys without their lease. Attached keys are
//!   not persisted: after [`Lessor::open`] the caller re-attaches them from the MVCC store, which
//!   records each key's lease (as etcd does).
//! - **Leader-local state**, meaningful only while this node is the *primary* lessor (the raft
//!   leader): each lease's expiry on the driver's monotonic clock, when [`Lessor::expired`] next
//!   looks at it, and when its remaining TTL is next due for a checkpoint. [`Lessor::demote`]
//!   drops all of it; [`Lessor::promote`] rebuilds it from the replicated state.
//!
//! # Why only the primary decides expiry
//!
//! Clocks of different nodes disagree, so a deadline cannot be replicated; only a duration can.
//! The primary alone measures time: it renews leases (keep-alives never go through raft) and
//! reports expired ones, which the driver proposes as an ordinary revoke. A lease therefore ends
//! at one revision on every node, and a node that merely *thinks* it is leader (a deposed leader
//! during the election timeout) cannot revoke anything: its proposal carries a stale term and
//! never commits.
//!
//! # Why promote extends
//!
//! A new leader does not know when the old one last renewed a lease. It restarts each countdown
//! from the replicated remaining TTL (or the full TTL), plus `extend_ms` — the driver passes the
//! election timeout — so that it never expires a lease earlier than the old leader could have
//! promised a client. The price is that leader changes lengthen leases (etcd issues #9395,
//! #13294). When many leases would expire together, promote also spreads them to at most ¾ of
//! [`LEASE_REVOKE_RATE_PER_SEC`] per second, as etcd does, so a leader change followed by a
//! revoke storm does not stall the cluster; spreading only ever delays an expiry.
//!
//! # Checkpoints and renewals
//!
//! Without checkpoints, a long lease survives forever if leaders change more often than its TTL
//! (issue #9888). So the primary periodically replicates each lease's remaining TTL
//! ([`Lessor::due_checkpoints`], etcd PR #9924); promote then restarts from that remaining TTL.
//! A keep-alive must undo a checkpoint before it is acknowledged: otherwise the client believes it
//! has a full TTL while a new leader would restart from the stale, smaller remaining TTL and
//! revoke the lease early. [`Lessor::renew`] therefore reports `needs_checkpoint_reset` when a
//! remaining TTL is recorded; the driver replicates a checkpoint with `remaining_ttl = 0` and
//! answers the keep-alive only once it is applied. Since only the first keep-alive after a
//! checkpoint needs this, each lease costs at most two raft entries per checkpoint interval.
//! etcd makes checkpointing opt-in (the `LeaseCheckpoint` feature gate, off by default even in
//! 3.6) and persisted checkpoints only since PR #13491; Strata always checkpoints and persists,
//! so remaining TTLs survive restarts as well as leader changes.
//!
//! # Ordering contract
//!
//! The replicated methods (`grant`, `revoke`, `checkpoint`, `attach`, `detach`) are called in
//! apply order on every node. `now_ms` never decreases between calls. `expired` and
//! `due_checkpoints` return nothing unless primary.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;

use crate::backend::{BackendError, Bucket, KvBackend, Scan, WriteBatch};
use crate::error::EtcdError;
use crate::limits::{LEASE_REVOKE_RATE_PER_SEC, MAX_LEASE_TTL_SECS};
use crate::proto::etcdserverpb::{LeaseGrantResponse, LeaseTimeToLiveResponse};
use crate::proto::strata::internal::{LeaseCheckpoint, LeaseRecord};
use crate::types::LeaseId;

/// After reporting an expired lease, the primary reports it again only after this long, in case
/// the revoke it proposed was lost (etcd's `defaultExpiredleaseRetryInterval`).
pub const EXPIRED_LEASE_RETRY_INTERVAL_MS: u64 = 3_000;

/// Why a keep-alive renewed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenewRefused {
    /// This node does not hold the leases' expiries (it is not the leader).
    NotPrimary,
    /// No such lease: etcd answers the keep-alive with TTL 0.
    NotFound,
    /// The lease's expiry has passed; its revoke is (or will be) proposed. The answer waits
    /// for that revoke to apply (TTL 0) or for this node to lose leadership (retry elsewhere).
    Expired,
}

/// The answer to a keep-alive on the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewal {
    pub ttl_secs: i64,
    /// A remaining TTL is checkpointed: replicate `LeaseCheckpoint { id, remaining_ttl: 0 }` and
    /// answer the client only once it is applied.
    pub needs_checkpoint_reset: bool,
}

#[derive(Clone, Debug)]
struct Lease {
    ttl_secs: i64,
    /// Last checkpointed remaining TTL; 0 = none (use `ttl_secs`).
    remaining_ttl_secs: i64,
    keys: BTreeSet<Vec<u8>>,
}

impl Lease {
    /// What a countdown restarts from (etcd's `getRemainingTTL`).
    fn countdown_secs(&self) -> i64 {
        if self.remaining_ttl_secs > 0 {
            self.remaining_ttl_secs
        } else {
            self.ttl_secs
        }
    }
}

fn secs_to_ms(secs: i64) -> u64 {
    assert!(secs >= 0, "negative lease duration {secs}s");
    secs as u64 * 1000
}

/// A time per lease, also ordered by time, so the earliest is found in O(log n).
#[derive(Clone, Debug, Default)]
struct Schedule {
    at: BTreeMap<LeaseId, u64>,
    queue: BTreeSet<(u64, LeaseId)>,
}

impl Schedule {
    fn set(&mut self, id: LeaseId, at_ms: u64) {
        if let Some(old) = self.at.insert(id, at_ms) {
            self.queue.remove(&(old, id));
        }
        self.queue.insert((at_ms, id));
    }

    fn remove(&mut self, id: LeaseId) {
        if let Some(old) = self.at.remove(&id) {
            self.queue.remove(&(old, id));
        }
    }

    fn get(&self, id: LeaseId) -> Option<u64> {
        self.at.get(&id).copied()
    }

    /// The earliest entry at or before `limit_ms`, removed.
    fn pop_until(&mut self, limit_ms: u64) -> Option<(u64, LeaseId)> {
        let &(at, id) = self.queue.first()?;
        if at > limit_ms {
            return None;
        }
        self.remove(id);
        Some((at, id))
    }
}

/// Leader-local state; exists only while primary.
#[derive(Clone, Debug, Default)]
struct Primary {
    /// Each lease's deadline: expired once `now_ms >= expiry`.
    expiry: Schedule,
    /// When `expired()` next looks at a lease: its expiry, or a retry time once reported.
    revisit: Schedule,
    /// When each lease was armed for its next checkpoint (due one interval later).
    checkpoint_armed: Schedule,
}

impl Primary {
    fn set_expiry(&mut self, id: LeaseId, expiry_ms: u64) {
        self.expiry.set(id, expiry_ms);
        self.revisit.set(id, expiry_ms);
    }

    fn forget(&mut self, id: LeaseId) {
        self.expiry.remove(id);
        self.revisit.remove(id);
        self.checkpoint_armed.remove(id);
    }

    fn expiry_of(&self, id: LeaseId) -> u64 {
        self.expiry
            .get(id)
            .unwrap_or_else(|| panic!("primary has no expiry for lease {id}"))
    }
}

#[derive(Clone, Debug)]
pub struct Lessor {
    min_ttl_secs: i64,
    leases: BTreeMap<LeaseId, Lease>,
    primary: Option<Primary>,
}

fn record_key(id: LeaseId) -> Vec<u8> {
    id.get().to_be_bytes().to_vec()
}

fn decode_record(key: &[u8], value: &[u8]) -> Result<LeaseRecord, BackendError> {
    let corrupt = |reason: String| BackendError {
        op: "load lease record",
        reason,
    };
    let record = LeaseRecord::decode(value).map_err(|e| corrupt(format!("key {key:02x?}: {e}")))?;
    if key != record_key(LeaseId(record.id)) {
        return Err(corrupt(format!("key {key:02x?} holds lease {}", record.id)));
    }
    Ok(record)
}

impl Lessor {
    /// Loads every lease record. Keys are re-attached by the caller ([`Lessor::attach`]); the
    /// lessor starts as a non-primary.
    pub fn open(backend: &dyn KvBackend, min_ttl_secs: i64) -> Result<Lessor, BackendError> {
        let mut lessor = Lessor {
            min_ttl_secs,
            leases: BTreeMap::new(),
            primary: None,
        };
        let mut failure = None;
        backend.scan(Bucket::Lease, &[], None, &mut |key, value| {
            match decode_record(key, value) {
                Ok(record) => lessor.load(record),
                Err(e) => failure = Some(e),
            }
            if failure.is_some() {
                Scan::Stop
            } else {
                Scan::Continue
            }
        })?;
        match failure {
            Some(e) => Err(e),
            None => Ok(lessor),
        }
    }

    fn load(&mut self, record: LeaseRecord) {
        // etcd raises TTLs below the minimum on recovery too (the minimum may have grown since).
        let lease = Lease {
            ttl_secs: record.ttl.max(self.min_ttl_secs),
            remaining_ttl_secs: record.remaining_ttl,
            keys: BTreeSet::new(),
        };
        self.leases.insert(LeaseId(record.id), lease);
    }

    fn persist(&self, id: LeaseId, batch: &mut WriteBatch) {
        let lease = &self.leases[&id];
        let record = LeaseRecord {
            id: id.get(),
            ttl: lease.ttl_secs,
            remaining_ttl: lease.remaining_ttl_secs,
        };
        batch.put(Bucket::Lease, record_key(id), record.encode_to_vec());
    }

    /// Applies a grant. TTLs below the minimum are raised to it (etcd); a primary starts the new
    /// lease's countdown at `now_ms`.
    pub fn grant(
        &mut self,
        id: LeaseId,
        ttl_secs: i64,
        now_ms: u64,
        batch: &mut WriteBatch,
    ) -> Result<LeaseGrantResponse, EtcdError> {
        // etcd's lessor answers "not found" for id 0; proposers always pick a non-zero id.
        if id.is_none() {
            return Err(EtcdError::LeaseNotFound);
        }
        if ttl_secs > MAX_LEASE_TTL_SECS {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(EtcdError::LeaseExist);
        }
        let ttl_secs = ttl_secs.max(self.min_ttl_secs);
        self.leases.insert(
            id,
            Lease {
                ttl_secs,
                remaining_ttl_secs: 0,
                keys: BTreeSet::new(),
            },
        );
        self.persist(id, batch);
        if let Some(primary) = &mut self.primary {
            primary.set_expiry(id, now_ms + secs_to_ms(ttl_secs));
            primary.checkpoint_armed.set(id, now_ms);
        }
        Ok(LeaseGrantResponse {
            header: None,
            id: id.get(),
            ttl: ttl_secs,
            error: String::new(),
        })
    }

    /// Applies a revoke: forgets the lease and returns its keys in key order, which the caller
    /// deletes in one revision, in the same batch.
    pub fn revoke(
        &mut self,
        id: LeaseId,
        batch: &mut WriteBatch,
    ) -> Result<Vec<Vec<u8>>, EtcdError> {
        let lease = self.leases.remove(&id).ok_or(EtcdError::LeaseNotFound)?;
        batch.delete(Bucket::Lease, record_key(id));
        if let Some(primary) = &mut self.primary {
            primary.forget(id);
        }
        Ok(lease.keys.into_iter().collect())
    }

    /// Records that `key` now carries lease `id`. The lease must exist: a put naming an unknown
    /// lease is rejected before it is applied.
    pub fn attach(&mut self, id: LeaseId, key: &[u8]) {
        let lease = self
            .leases
            .get_mut(&id)
            .unwrap_or_else(|| panic!("attach of key {key:02x?} to unknown lease {id}"));
        lease.keys.insert(key.to_vec());
    }

    /// Records that `key` no longer carries lease `id`. A no-op for a revoked lease: the keys of
    /// a revoked lease are deleted after the lease is gone.
    pub fn detach(&mut self, id: LeaseId, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.remove(key);
        }
    }

    pub fn contains(&self, id: LeaseId) -> bool {
        self.leases.contains_key(&id)
    }

    /// The keys attached to a lease, in key order; `None` for an unknown lease.
    pub fn keys(&self, id: LeaseId) -> Option<&BTreeSet<Vec<u8>>> {
        self.leases.get(&id).map(|l| &l.keys)
    }

    /// Applies one checkpoint of a `LeaseCheckpoints` entry. Unknown leases are ignored (the
    /// lease may have been revoked after the checkpoint was proposed). On the primary, the lease
    /// is armed for its next checkpoint, and a reset (`remaining_ttl == 0`, proposed by a
    /// keep-alive) restarts its countdown now, as etcd's renew does once its reset is applied.
    pub fn checkpoint(&mut self, cp: &LeaseCheckpoint, now_ms: u64, batch: &mut WriteBatch) {
        assert!(
            cp.remaining_ttl >= 0,
            "checkpoint of lease {} with remaining TTL {}",
            cp.id,
            cp.remaining_ttl
        );
        let id = LeaseId(cp.id);
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        lease.remaining_ttl_secs = cp.remaining_ttl;
        let ttl_ms = secs_to_ms(lease.ttl_secs);
        self.persist(id, batch);
        let Some(primary) = &mut self.primary else {
            return;
        };
        primary.checkpoint_armed.set(id, now_ms);
        let expiry = primary.expiry_of(id);
        // Never revive an expired lease: its revoke may already be on its way.
        if cp.remaining_ttl == 0 && now_ms < expiry {
            primary.set_expiry(id, expiry.max(now_ms + ttl_ms));
        }
    }

    /// Every lease id, ascending.
    pub fn leases(&self) -> Vec<LeaseId> {
        self.leases.keys().copied().collect()
    }

    /// This node became leader: it starts every countdown afresh, `extend_ms` later than the
    /// replicated remaining TTL (or full TTL) would end.
    pub fn promote(&mut self, now_ms: u64, extend_ms: u64) {
        assert!(
            self.primary.is_none(),
            "promote of a lessor already primary"
        );
        let mut primary = Primary::default();
        for (&id, lease) in &self.leases {
            primary.set_expiry(id, now_ms + extend_ms + secs_to_ms(lease.countdown_secs()));
            primary.checkpoint_armed.set(id, now_ms);
        }
        self.primary = Some(primary);
        self.spread_expiries(now_ms, extend_ms);
    }

    /// etcd's pile-up avoidance in `Promote`: when at least [`LEASE_REVOKE_RATE_PER_SEC`] leases
    /// exist, leases crowding into one second beyond ¾ of the revoke rate are pushed later, to
    /// `expires / target` seconds past the start of their window. Expiries only ever move later.
    fn spread_expiries(&mut self, now_ms: u64, extend_ms: u64) {
        if self.leases.len() < LEASE_REVOKE_RATE_PER_SEC {
            return;
        }
        let primary = self.primary.as_mut().expect("spread while primary");
        let target = (LEASE_REVOKE_RATE_PER_SEC * 3 / 4) as u64;
        let by_expiry: Vec<(u64, LeaseId)> = primary.expiry.queue.iter().copied().collect();
        let mut base_ms = by_expiry[0].0 - now_ms;
        let mut next_window_ms = base_ms + 1000;
        let mut expires = 0u64;
        for (expiry, id) in by_expiry {
            let remaining_ms = expiry - now_ms;
            if remaining_ms > next_window_ms {
                base_ms = remaining_ms;
                next_window_ms = base_ms + 1000;
                expires = 1;
                continue;
            }
            expires += 1;
            if expires <= target {
                continue;
            }
            let delay_ms = (1000 * expires / target).saturating_sub(remaining_ms - base_ms);
            next_window_ms = base_ms + delay_ms;
            let countdown_ms = secs_to_ms(self.leases[&id].countdown_secs());
            primary.set_expiry(id, now_ms + delay_ms + extend_ms + countdown_ms);
        }
    }

    /// This node stopped being leader: forget every expiry and schedule.
    pub fn demote(&mut self) {
        self.primary = None;
    }

    pub fn is_primary(&self) -> bool {
        self.primary.is_some()
    }

    /// A keep-alive, on the primary only (followers forward it). An expired lease is never
    /// renewed: its revoke may be in flight, or may never commit if this primary is deposed.
    /// etcd's lessor blocks such a renewal until the revoke applies ("not found") or the primary
    /// is demoted ("not primary", and the client retries on the new leader); the caller parks
    /// the request on [`RenewRefused::Expired`] and settles it the same way.
    pub fn renew(&mut self, id: LeaseId, now_ms: u64) -> Result<Renewal, RenewRefused> {
        let primary = self.primary.as_mut().ok_or(RenewRefused::NotPrimary)?;
        let lease = self.leases.get(&id).ok_or(RenewRefused::NotFound)?;
        if now_ms >= primary.expiry_of(id) {
            return Err(RenewRefused::Expired);
        }
        primary.set_expiry(id, now_ms + secs_to_ms(lease.ttl_secs));
        Ok(Renewal {
            ttl_secs: lease.ttl_secs,
            needs_checkpoint_reset: lease.remaining_ttl_secs > 0,
        })
    }

    /// etcd's `LeaseTimeToLive`. An unknown lease answers `TTL: -1` (what etcd's v3rpc layer
    /// turns the lessor's "not found" into). The primary counts from its expiry, truncating to
    /// whole seconds as etcd's `int64(Remaining().Seconds())` does; another node answers from the
    /// replicated state (etcd forwards to the leader instead).
    pub fn time_to_live(
        &self,
        id: LeaseId,
        now_ms: u64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, EtcdError> {
        let Some(lease) = self.leases.get(&id) else {
            return Ok(LeaseTimeToLiveResponse {
                header: None,
                id: id.get(),
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            });
        };
        let ttl = match &self.primary {
            Some(primary) => (primary.expiry_of(id) as i64 - now_ms as i64) / 1000,
            None => lease.countdown_secs(),
        };
        Ok(LeaseTimeToLiveResponse {
            header: None,
            id: id.get(),
            ttl,
            granted_ttl: lease.ttl_secs,
            keys: if keys {
                lease.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        })
    }

    /// Leases past their expiry, earliest first, at most `max` (the driver's share of
    /// [`LEASE_REVOKE_RATE_PER_SEC`]); the driver proposes a revoke for each. A reported lease is
    /// reported again only after [`EXPIRED_LEASE_RETRY_INTERVAL_MS`], in case its revoke was lost
    /// (etcd re-checks after the same interval), or after demote + promote. Empty unless primary.
    pub fn expired(&mut self, now_ms: u64, max: usize) -> Vec<LeaseId> {
        let Some(primary) = &mut self.primary else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while out.len() < max {
            let Some((_, id)) = primary.revisit.pop_until(now_ms) else {
                break;
            };
            let expiry = primary.expiry_of(id);
            assert!(
                now_ms >= expiry,
                "lease {id} revisited at {now_ms} before its expiry {expiry}"
            );
            primary
                .revisit
                .set(id, now_ms + EXPIRED_LEASE_RETRY_INTERVAL_MS);
            out.push(id);
        }
        out
    }

    /// Remaining TTLs to replicate: leases armed at least `interval_ms` ago, at most `max`. As in
    /// etcd, leases whose TTL fits in one interval are never checkpointed, and neither are expired
    /// leases or leases still at their full TTL. A returned lease is re-armed now (so a lost
    /// proposal is retried an interval later) and again when its checkpoint applies. Empty unless
    /// primary.
    pub fn due_checkpoints(
        &mut self,
        now_ms: u64,
        interval_ms: u64,
        max: usize,
    ) -> Vec<LeaseCheckpoint> {
        let Some(primary) = &mut self.primary else {
            return Vec::new();
        };
        let Some(armed_limit) = now_ms.checked_sub(interval_ms) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut not_yet = Vec::new();
        while out.len() < max {
            let Some((_, id)) = primary.checkpoint_armed.pop_until(armed_limit) else {
                break;
            };
            let lease = &self.leases[&id];
            if secs_to_ms(lease.ttl_secs) <= interval_ms {
                continue;
            }
            let expiry = primary.expiry_of(id);
            if now_ms >= expiry {
                continue;
            }
            let remaining_secs = (expiry - now_ms).div_ceil(1000) as i64;
            if remaining_secs < lease.ttl_secs {
                out.push(LeaseCheckpoint {
                    id: id.get(),
                    remaining_ttl: remaining_secs,
                });
            }
            not_yet.push(id);
        }
        for id in not_yet {
            primary.checkpoint_armed.set(id, now_ms);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;

    const MIN_TTL: i64 = 2;

    fn lessor() -> Lessor {
        Lessor::open(&MemBackend::new(), MIN_TTL).unwrap()
    }

    fn grant(l: &mut Lessor, id: i64, ttl: i64, now_ms: u64) -> LeaseGrantResponse {
        l.grant(LeaseId(id), ttl, now_ms, &mut WriteBatch::default())
            .unwrap()
    }

    fn cp(id: i64, remaining_ttl: i64) -> LeaseCheckpoint {
        LeaseCheckpoint { id, remaining_ttl }
    }

    fn ttl(l: &Lessor, id: i64, now_ms: u64) -> i64 {
        l.time_to_live(LeaseId(id), now_ms, false).unwrap().ttl
    }

    #[test]
    fn grant_raises_ttl_to_minimum() {
        let mut l = lessor();
        let resp = grant(&mut l, 1, 1, 0);
        assert_eq!((resp.id, resp.ttl), (1, MIN_TTL));
        assert_eq!(grant(&mut l, 2, -5, 0).ttl, MIN_TTL);
        assert_eq!(grant(&mut l, 3, 60, 0).ttl, 60);
    }

    #[test]
    fn grant_rejects_too_large_ttl_duplicate_and_id_zero() {
        let mut l = lessor();
        let mut batch = WriteBatch::default();
        assert_eq!(
            l.grant(LeaseId(1), MAX_LEASE_TTL_SECS + 1, 0, &mut batch),
            Err(EtcdError::LeaseTtlTooLarge)
        );
        assert_eq!(
            l.grant(LeaseId(0), 10, 0, &mut batch),
            Err(EtcdError::LeaseNotFound)
        );
        assert!(batch.is_empty());
        grant(&mut l, 1, MAX_LEASE_TTL_SECS, 0);
        assert_eq!(
            l.grant(LeaseId(1), 10, 0, &mut batch),
            Err(EtcdError::LeaseExist)
        );
        assert!(batch.is_empty(), "a rejected grant stages nothing");
    }

    #[test]
    fn revoke_returns_attached_keys_in_key_order() {
        let mut l = lessor();
        grant(&mut l, 7, 10, 0);
        for key in [&b"c"[..], b"a", b"b", b"d"] {
            l.attach(LeaseId(7), key);
        }
        l.detach(LeaseId(7), b"d");
        let mut batch = WriteBatch::default();
        let keys = l.revoke(LeaseId(7), &mut batch).unwrap();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert!(!l.contains(LeaseId(7)));
        assert_eq!(batch.ops.len(), 1);
        assert_eq!(batch.ops[0].value, None, "revoke stages a delete");
        assert_eq!(
            l.revoke(LeaseId(7), &mut batch),
            Err(EtcdError::LeaseNotFound)
        );
        // The caller deletes the keys after the revoke; detaching them is a no-op.
        l.detach(LeaseId(7), b"a");
    }

    #[test]
    #[should_panic(expected = "unknown lease 9")]
    fn attach_to_unknown_lease_is_a_broken_invariant() {
        lessor().attach(LeaseId(9), b"k");
    }

    #[test]
    fn open_round_trips_through_the_backend() {
        let mut backend = MemBackend::new();
        let mut l = Lessor::open(&backend, MIN_TTL).unwrap();
        let mut batch = WriteBatch::default();
        l.grant(LeaseId(1), 100, 0, &mut batch).unwrap();
        l.grant(LeaseId(2), 30, 0, &mut batch).unwrap();
        l.grant(LeaseId(3), 30, 0, &mut batch).unwrap();
        l.checkpoint(&cp(1, 40), 0, &mut batch);
        l.revoke(LeaseId(3), &mut batch).unwrap();
        backend.write(batch).unwrap();

        // A larger minimum on restart raises lease 2, as etcd's recovery does.
        let reopened = Lessor::open(&backend, 31).unwrap();
        assert_eq!(reopened.leases(), vec![LeaseId(1), LeaseId(2)]);
        let one = reopened.time_to_live(LeaseId(1), 0, false).unwrap();
        assert_eq!((one.ttl, one.granted_ttl), (40, 100));
        assert_eq!(ttl(&reopened, 2, 0), 31);
        assert!(!reopened.is_primary());
    }

    #[test]
    fn open_rejects_a_record_under_the_wrong_key() {
        let mut backend = MemBackend::new();
        let mut batch = WriteBatch::default();
        let record = LeaseRecord {
            id: 5,
            ttl: 10,
            remaining_ttl: 0,
        };
        batch.put(
            Bucket::Lease,
            record_key(LeaseId(6)),
            record.encode_to_vec(),
        );
        backend.write(batch).unwrap();
        let err = Lessor::open(&backend, MIN_TTL).unwrap_err();
        assert!(err.reason.contains("holds lease 5"), "{err}");
    }

    #[test]
    fn promote_extends_from_remaining_or_full_ttl() {
        let mut l = lessor();
        grant(&mut l, 1, 100, 0);
        grant(&mut l, 2, 100, 0);
        l.checkpoint(&cp(2, 30), 0, &mut WriteBatch::default());
        l.promote(50_000, 2_000);
        assert_eq!(ttl(&l, 1, 50_000), 102);
        assert_eq!(ttl(&l, 2, 50_000), 32);
        // Lease 2 ends 32 s after promotion, not one millisecond earlier.
        assert!(l.expired(50_000 + 31_999, 10).is_empty());
        assert_eq!(l.expired(50_000 + 32_000, 10), vec![LeaseId(2)]);
    }

    #[test]
    fn promote_spreads_a_pile_up_of_expiries() {
        let mut l = lessor();
        let n = 2 * LEASE_REVOKE_RATE_PER_SEC as i64;
        for id in 1..=n {
            grant(&mut l, id, 10, 0);
        }
        l.promote(0, 0);
        let target = LEASE_REVOKE_RATE_PER_SEC * 3 / 4;
        let mut per_second = BTreeMap::<i64, usize>::new();
        for id in 1..=n {
            let t = ttl(&l, id, 0);
            assert!(t >= 10, "lease {id} shortened to {t}s");
            *per_second.entry(t).or_default() += 1;
        }
        assert!(
            per_second.values().all(|&c| c <= target),
            "more than {target} leases expire in one second: {per_second:?}"
        );
        assert_eq!(per_second.values().sum::<usize>(), n as usize);
    }

    #[test]
    fn non_primary_never_expires_and_refuses_renewal() {
        let mut l = lessor();
        grant(&mut l, 1, 5, 0);
        assert!(l.expired(u64::MAX / 2, 10).is_empty());
        assert_eq!(l.renew(LeaseId(1), 0), Err(RenewRefused::NotPrimary));
        assert!(l.due_checkpoints(u64::MAX / 2, 1, 10).is_empty());
        assert_eq!(ttl(&l, 1, 0), 5, "a follower answers from replicated state");
    }

    #[test]
    fn renew_restarts_the_countdown() {
        let mut l = lessor();
        l.promote(0, 0);
        grant(&mut l, 1, 10, 1_000);
        assert_eq!(ttl(&l, 1, 1_000), 10);
        assert_eq!(ttl(&l, 1, 4_500), 6, "truncates 6.5 s as etcd does");
        let renewal = l.renew(LeaseId(1), 8_000).unwrap();
        assert_eq!(
            renewal,
            Renewal {
                ttl_secs: 10,
                needs_checkpoint_reset: false
            }
        );
        assert!(l.expired(17_999, 10).is_empty());
        assert_eq!(l.expired(18_000, 10), vec![LeaseId(1)]);
        assert_eq!(l.renew(LeaseId(2), 8_000), Err(RenewRefused::NotFound));
    }

    #[test]
    fn expired_lease_is_not_renewed() {
        let mut l = lessor();
        l.promote(0, 0);
        grant(&mut l, 1, 10, 0);
        assert_eq!(l.renew(LeaseId(1), 10_000), Err(RenewRefused::Expired));
        assert_eq!(l.expired(10_000, 10), vec![LeaseId(1)]);
    }

    #[test]
    fn renew_after_checkpoint_needs_a_replicated_reset() {
        let mut l = lessor();
        l.promote(0, 0);
        grant(&mut l, 1, 600, 0);
        let mut batch = WriteBatch::default();
        l.checkpoint(&cp(1, 300), 300_000, &mut batch);
        let renewal = l.renew(LeaseId(1), 310_000).unwrap();
        assert!(renewal.needs_checkpoint_reset);
        // The driver replicates the reset; once applied, a new leader restarts from the full TTL.
        l.checkpoint(&cp(1, 0), 310_500, &mut batch);
        assert!(!l.renew(LeaseId(1), 311_000).unwrap().needs_checkpoint_reset);
        l.demote();
        l.promote(400_000, 1_000);
        assert_eq!(ttl(&l, 1, 400_000), 601);
    }

    #[test]
    fn reset_checkpoint_restarts_countdown_on_primary_at_apply() {
        let mut l = lessor();
        l.promote(0, 0);
        grant(&mut l, 1, 600, 0);
        l.checkpoint(&cp(1, 300), 300_000, &mut WriteBatch::default());
        l.renew(LeaseId(1), 310_000).unwrap();
        l.checkpoint(&cp(1, 0), 312_000, &mut WriteBatch::default());
        assert_eq!(ttl(&l, 1, 312_000), 600);
    }

    #[test]
    fn checkpoint_of_unknown_lease_is_ignored() {
        let mut l = lessor();
        let mut batch = WriteBatch::default();
        l.checkpoint(&cp(42, 10), 0, &mut batch);
        assert!(batch.is_empty());
        assert!(l.leases().is_empty());
    }

    #[test]
    fn expired_is_ordered_and_rate_limited() {
        let mut l = lessor();
        l.promote(0, 0);
        grant(&mut l, 3, 5, 0);
        grant(&mut l, 1, 7, 0);
        grant(&mut l, 2, 6, 0);
        grant(&mut l, 4, 100, 0);
        assert!(l.expired(4_999, 10).is_empty());
        assert_eq!(l.expired(8_000, 2), vec![LeaseId(3), LeaseId(2)]);
        assert_eq!(l.expired(8_000, 2), vec![LeaseId(1)]);
        assert!(l.expired(8_000, 2).is_empty(), "reported leases wait");
    }

    #[test]
    fn expired_lease_is_reported_again_after_the_retry_interval() {
        let mut l = lessor();
        l.promote(0, 0);
        grant(&mut l, 1, 5, 0);
        assert_eq!(l.expired(5_000, 10), vec![LeaseId(1)]);
        let retry = 5_000 + EXPIRED_LEASE_RETRY_INTERVAL_MS;
        assert!(l.expired(retry - 1, 10).is_empty());
        assert_eq!(l.expired(retry, 10), vec![LeaseId(1)]);
        // After demote + promote the lease gets a fresh countdown.
        l.demote();
        l.promote(retry, 0);
        assert!(l.expired(retry + 4_999, 10).is_empty());
        // Once the revoke applies, it is gone for good.
        l.revoke(LeaseId(1), &mut WriteBatch::default()).unwrap();
        assert!(l.expired(u64::MAX / 2, 10).is_empty());
    }

    #[test]
    fn demote_forgets_expiries() {
        let mut l = lessor();
        l.promote(0, 0);
        grant(&mut l, 1, 5, 0);
        l.demote();
        assert!(!l.is_primary());
        assert!(l.expired(10_000, 10).is_empty());
        assert_eq!(ttl(&l, 1, 10_000), 5);
    }

    #[test]
    fn time_to_live_of_unknown_lease_is_minus_one() {
        let l = lessor();
        let resp = l.time_to_live(LeaseId(9), 0, true).unwrap();
        assert_eq!((resp.id, resp.ttl, resp.granted_ttl), (9, -1, 0));
        assert!(resp.keys.is_empty());
    }

    #[test]
    fn time_to_live_lists_keys_only_when_asked() {
        let mut l = lessor();
        grant(&mut l, 1, 10, 0);
        l.attach(LeaseId(1), b"b");
        l.attach(LeaseId(1), b"a");
        assert!(l
            .time_to_live(LeaseId(1), 0, false)
            .unwrap()
            .keys
            .is_empty());
        let keys = l.time_to_live(LeaseId(1), 0, true).unwrap().keys;
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn due_checkpoints_replicate_remaining_ttl_each_interval() {
        let interval = 300_000;
        let mut l = lessor();
        l.promote(0, 0);
        grant(&mut l, 1, 900, 0);
        grant(&mut l, 2, 200, 0); // fits in one interval: never checkpointed
        assert!(l.due_checkpoints(interval - 1, interval, 10).is_empty());
        let due = l.due_checkpoints(interval, interval, 10);
        assert_eq!(due, vec![cp(1, 600)]);
        assert!(l.due_checkpoints(interval, interval, 10).is_empty());
        // Applying it persists the remaining TTL and re-arms the lease.
        let mut batch = WriteBatch::default();
        l.checkpoint(&due[0], interval + 100, &mut batch);
        assert_eq!(batch.len(), 1);
        assert!(l.due_checkpoints(2 * interval, interval, 10).is_empty());
        assert_eq!(
            l.due_checkpoints(2 * interval + 100, interval, 10),
            vec![cp(1, 300)]
        );
    }

    #[test]
    fn lost_checkpoint_is_retried_an_interval_later() {
        let interval = 300_000;
        let mut l = lessor();
        l.promote(0, 0);
        grant(&mut l, 1, 900, 0);
        assert_eq!(l.due_checkpoints(interval, interval, 10), vec![cp(1, 600)]);
        // The proposal never applies.
        assert_eq!(
            l.due_checkpoints(2 * interval, interval, 10),
            vec![cp(1, 300)]
        );
    }

    #[test]
    fn due_checkpoints_respects_max() {
        let interval = 1_000;
        let mut l = lessor();
        l.promote(0, 0);
        for id in 1..=5 {
            grant(&mut l, id, 100, id as u64);
        }
        let first = l.due_checkpoints(10_000, interval, 3);
        let ids: Vec<i64> = first.iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![1, 2, 3], "earliest armed first");
        let rest: Vec<i64> = l
            .due_checkpoints(10_000, interval, 3)
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(rest, vec![4, 5]);
    }
}
