//! Newtypes for the numbers the engine juggles, so a log index can never be passed where an
//! MVCC revision is expected. "Index" is always a raft log index; "revision" always an MVCC
//! revision (etcd's words).

use std::fmt;

macro_rules! newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $inner);

        impl $name {
            pub const fn get(self) -> $inner {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

newtype!(
    /// A raft peer id, which is also the etcd member id.
    NodeId(u64)
);
newtype!(
    /// A raft term.
    Term(u64)
);
newtype!(
    /// A position in the raft log.
    LogIndex(u64)
);
newtype!(
    /// An MVCC revision (etcd's `revision`, `mod_revision`, `create_revision`): one per write txn,
    /// starting at 1.
    Revision(i64)
);
newtype!(
    /// A lease id; 0 means "no lease".
    LeaseId(i64)
);
newtype!(
    /// A watch id, unique within one watch stream.
    WatchId(i64)
);
newtype!(
    /// Identifies a client request on the node it was submitted to, chosen by the driver.
    RequestId(u64)
);
newtype!(
    /// Identifies one client watch stream on this node, chosen by the driver.
    StreamId(u64)
);

impl NodeId {
    /// etcd prints member ids in hex.
    pub fn hex(self) -> String {
        format!("{:x}", self.0)
    }
}

impl LogIndex {
    pub const ZERO: LogIndex = LogIndex(0);
}

impl Revision {
    pub const ZERO: Revision = Revision(0);

    pub fn next(self) -> Revision {
        Revision(self.0 + 1)
    }
}

impl LeaseId {
    pub const NONE: LeaseId = LeaseId(0);

    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}
