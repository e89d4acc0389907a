//! What must hold of a node after every step, whatever its inputs: checked by
//! [`Node::check_invariants`] at the end of every [`Node::step_batch`] in builds with feature
//! `invariants` (the simulator's and the engine's tests), never in production. A violation
//! stops the node with [`InvariantViolation`], whose `name` the simulator reports as the
//! failing check.
//!
//! - `commit-covers-applied`: the state machine never applies past raft's commit index.
//! - `backend-applied-index`: the backend's stored applied index is the state machine's
//!   (every apply batch carries it), so a restart resumes exactly where apply stopped.
//! - `lessor-primary-iff-leader`: the lessor expires and renews leases exactly when this
//!   node leads (etcd's primary lessor); a follower that expires leases revokes them twice.
//! - `held-persist-numbers-increase`: messages held until their Ready is persisted are
//!   released in the order the Readies were persisted.
//! - `revision-never-decreases`: the MVCC revision only moves forward within a node's life.

use super::*;

/// A broken invariant: `name` is stable (reports and tests match on it), `detail` says how.
#[derive(Debug, thiserror::Error)]
#[error("invariant {name} violated on n{node}: {detail}")]
pub struct InvariantViolation {
    pub name: &'static str,
    pub node: NodeId,
    pub detail: String,
}

/// Whether steps check the invariants in this build.
pub const CHECKED: bool = cfg!(any(test, feature = "invariants"));

/// What the checks remember between steps.
#[derive(Debug, Default)]
pub(super) struct Marks {
    revision: Revision,
}

impl<B: KvBackend> Node<B> {
    fn violation(&self, name: &'static str, detail: String) -> InvariantViolation {
        InvariantViolation {
            name,
            node: self.config.id,
            detail,
        }
    }

    /// Checks every invariant of the module's list; the first broken one is returned.
    pub fn check_invariants(&mut self) -> Result<(), InvariantViolation> {
        let applied = self.sm.applied().0;
        let committed = self.raw.raft.raft_log.committed;
        if applied.0 > committed {
            return Err(self.violation(
                "commit-covers-applied",
                format!("applied {applied} past commit index {committed}"),
            ));
        }
        let stored = crate::state_machine::stored_applied_index(self.sm.backend())
            .map_err(|e| self.violation("backend-applied-index", format!("cannot read it: {e}")))?;
        if stored != applied {
            return Err(self.violation(
                "backend-applied-index",
                format!("the backend holds {stored}, the state machine applied {applied}"),
            ));
        }
        // The catalogue's `follower-expires-leases` breaks this on purpose to prove the lease
        // checker; the invariant stands aside for it so the checker still has to catch it.
        if self.sm.lessor.is_primary() != self.is_leader()
            && !bugs::active(self.config.bug, Bug::FollowerExpiresLeases)
        {
            return Err(self.violation(
                "lessor-primary-iff-leader",
                format!(
                    "lessor primary: {}, raft role: {:?}",
                    self.sm.lessor.is_primary(),
                    self.raw.raft.state
                ),
            ));
        }
        if let Some(w) = self
            .held_messages
            .iter()
            .zip(self.held_messages.iter().skip(1))
            .find(|(a, b)| a.0 >= b.0)
        {
            return Err(self.violation(
                "held-persist-numbers-increase",
                format!("Ready {} is held before Ready {}", w.0 .0, w.1 .0),
            ));
        }
        let revision = self.revision();
        if revision < self.marks.revision {
            return Err(self.violation(
                "revision-never-decreases",
                format!("revision {revision} after {}", self.marks.revision),
            ));
        }
        self.marks.revision = revision;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;

    fn node() -> Node<MemBackend> {
        let config = Config::new(NodeId(1), 7, 42);
        let members = vec![crate::proto::strata::internal::MemberRecord {
            id: 1,
            name: "a".into(),
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            client_urls: vec![],
            is_learner: false,
        }];
        Node::open(config, MemBackend::new(), bootstrap_log(&members)).expect("open")
    }

    #[test]
    fn a_fresh_node_holds_every_invariant() {
        let mut n = node();
        n.check_invariants().expect("invariants");
    }

    #[test]
    fn a_lessor_primary_on_a_follower_is_caught() {
        let mut n = node();
        n.sm.lessor.promote(0, 0);
        let err = n
            .check_invariants()
            .expect_err("follower with a primary lessor");
        assert_eq!(err.name, "lessor-primary-iff-leader");
    }

    #[test]
    fn a_revision_going_back_is_caught() {
        let mut n = node();
        n.marks.revision = Revision(n.revision().0 + 5);
        let err = n.check_invariants().expect_err("revision went back");
        assert_eq!(err.name, "revision-never-decreases");
    }

    #[test]
    fn held_messages_out_of_order_are_caught() {
        let mut n = node();
        n.held_messages.push_back((3, Vec::new()));
        n.held_messages.push_back((2, Vec::new()));
        let err = n.check_invariants().expect_err("out of order");
        assert_eq!(err.name, "held-persist-numbers-increase");
    }
}
