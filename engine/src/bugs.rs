//! The catalogue of deliberately injected bugs: the simulator's proof of power. Each one is a
//! real mistake a consensus store can make; the simulator must catch every one (README: seeds
//! and time to catch each).
//!
//! Injection sites check [`active`], which is `false` at compile time unless the crate is
//! built with feature `bugs` (only the simulator's build enables it); a production binary
//! cannot carry one. A node runs at most one bug, named in `Config::bug`.

/// One injected bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bug {
    /// The driver ignores `must_sync`: log appends and votes are acknowledged unsynced.
    SkipFsync,
    /// The vote is dropped from the persisted hard state: after a crash a member can vote
    /// twice in one term.
    VoteNotPersisted,
    /// Linearizable reads are served from local state, as if serializable.
    SerializableAsLinearizable,
    /// Linearizable reads are answered once the read index is known, before it is applied.
    ReadIndexNotApplied,
    /// raft's lease-based read index (no quorum round; trusts clocks).
    LeaseBasedReads,
    /// Followers run lease expiry on their own clocks and propose revokes.
    FollowerExpiresLeases,
    /// Synced watchers miss every event whose revision is a multiple of 7.
    DropWatchEvent,
    /// Synced watchers receive the last event of each applied batch twice.
    DuplicateWatchEvent,
    /// A watch event's `prev_kv` is the new key-value, not the previous one.
    WrongPrevKv,
    /// A txn's response header names the revision after the one it produced.
    TxnRevisionOffByOne,
    /// A snapshot is installed without its leases.
    SnapshotWithoutLeases,
    /// A leader answers the keep-alive of a lease that expired on its clock with TTL 0 at
    /// once, before any revoke commits (Strata's own bug, swarm seed 302121).
    ExpiredKeepAliveAnswered,
    /// v3lock's `Lock` answers as soon as the caller's key is in the queue, without waiting
    /// for the keys created before it to be deleted.
    LockSkipsWait,
    /// A new leader renews leases before it has applied an entry of its own term, so a revoke
    /// the previous leader left in the log can land after the renewal (Strata's own bug,
    /// swarm seed 1121).
    RenewBeforeOwnTerm,
    /// Storage logic: a snapshot install deletes the stored log only up to the snapshot's
    /// index, so a tail of the history the snapshot replaced survives a restart (Strata's own
    /// bug, issue 15).
    StaleTailAfterSnapshot,
    /// Storage logic: an append that conflicts with stored entries overwrites the ones it
    /// carries but leaves the stored entries after them, so a restart loads the replaced
    /// history's tail behind the new entries.
    AppendKeepsStaleSuffix,
    /// Server: a range read in chunks reads every chunk after the first at the latest
    /// revision instead of the first chunk's, so a range that straddles a write mixes two
    /// revisions under one header (what etcd 3.7's RangeStream pins its revision against).
    RangeChunksUnpinned,
    /// A keep-alive of a lease whose remaining TTL was checkpointed is answered at once, without
    /// replicating the checkpoint's reset (etcd #13294): a leader elected before the next
    /// checkpoint restores the stale remaining TTL and expires the lease before the TTL the
    /// client was just promised.
    CheckpointNotReset,
    /// A txn's VALUE compare on a missing key compares the empty value instead of failing
    /// (etcd: "nil == empty string in grpc; no way to represent missing value"), so `value <
    /// "x"` or `value != "x"` holds for a deleted key.
    CompareMissingValueAsEmpty,
    /// A read at exactly the compact revision is refused as compacted, although compaction
    /// keeps that revision (etcd serves it; a watch may start there).
    CompactRevisionRefused,
}

impl Bug {
    pub const ALL: [Bug; 20] = [
        Bug::SkipFsync,
        Bug::VoteNotPersisted,
        Bug::SerializableAsLinearizable,
        Bug::ReadIndexNotApplied,
        Bug::LeaseBasedReads,
        Bug::FollowerExpiresLeases,
        Bug::DropWatchEvent,
        Bug::DuplicateWatchEvent,
        Bug::WrongPrevKv,
        Bug::TxnRevisionOffByOne,
        Bug::SnapshotWithoutLeases,
        Bug::ExpiredKeepAliveAnswered,
        Bug::LockSkipsWait,
        Bug::RenewBeforeOwnTerm,
        Bug::StaleTailAfterSnapshot,
        Bug::AppendKeepsStaleSuffix,
        Bug::RangeChunksUnpinned,
        Bug::CheckpointNotReset,
        Bug::CompareMissingValueAsEmpty,
        Bug::CompactRevisionRefused,
    ];

    /// The kebab-case name the simulator's `--bug` takes.
    pub fn name(self) -> &'static str {
        match self {
            Bug::SkipFsync => "skip-fsync",
            Bug::VoteNotPersisted => "vote-not-persisted",
            Bug::SerializableAsLinearizable => "serializable-as-linearizable",
            Bug::ReadIndexNotApplied => "read-index-not-applied",
            Bug::LeaseBasedReads => "lease-based-reads",
            Bug::FollowerExpiresLeases => "follower-expires-leases",
            Bug::DropWatchEvent => "drop-watch-event",
            Bug::DuplicateWatchEvent => "duplicate-watch-event",
            Bug::WrongPrevKv => "wrong-prev-kv",
            Bug::TxnRevisionOffByOne => "txn-revision-off-by-one",
            Bug::SnapshotWithoutLeases => "snapshot-without-leases",
            Bug::ExpiredKeepAliveAnswered => "expired-keepalive-answered",
            Bug::LockSkipsWait => "lock-skips-wait",
            Bug::RenewBeforeOwnTerm => "renew-before-own-term",
            Bug::StaleTailAfterSnapshot => "stale-tail-after-snapshot",
            Bug::AppendKeepsStaleSuffix => "append-keeps-stale-suffix",
            Bug::RangeChunksUnpinned => "range-chunks-unpinned",
            Bug::CheckpointNotReset => "checkpoint-not-reset",
            Bug::CompareMissingValueAsEmpty => "compare-missing-value-as-empty",
            Bug::CompactRevisionRefused => "compact-revision-refused",
        }
    }

    pub fn parse(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// Whether `bug` is injected in this build and run.
#[inline]
pub fn active(configured: Option<Bug>, bug: Bug) -> bool {
    cfg!(feature = "bugs") && configured == Some(bug)
}
