//! Errors a client can see, with etcd's exact texts and gRPC codes
//! (`api/v3rpc/rpctypes/error.go`): etcd clients match on both, so neither may drift.
//!
//! Storage failures are not here: a failed backend write or fsync is [`crate::Fatal`], which
//! stops the node instead of answering anyone.

/// gRPC status codes, as numbers, without depending on a gRPC library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcCode {
    Canceled = 1,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    FailedPrecondition = 9,
    OutOfRange = 11,
    ResourceExhausted = 8,
    PermissionDenied = 7,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

/// An error returned to an etcd client. The `Display` text is etcd's, byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    TimeoutDueToLeaderFail,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// A malformed request etcd would reject while decoding or validating; the text names the
    /// field at fault.
    #[error("{0}")]
    InvalidArgument(String),
}

impl EtcdError {
    /// The gRPC code etcd answers this error with.
    pub fn code(&self) -> GrpcCode {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | InvalidSortOption | RequestTooLarge | MemberBadUrls | InvalidArgument(_) => {
                GrpcCode::InvalidArgument
            }
            Compacted | FutureRev | LeaseTtlTooLarge => GrpcCode::OutOfRange,
            NoSpace | TooManyRequests => GrpcCode::ResourceExhausted,
            LeaseNotFound | MemberNotFound => GrpcCode::NotFound,
            LeaseExist
            | MemberExist
            | PeerUrlExist
            | MemberNotEnoughStarted
            | MemberNotLearner
            | LearnerNotReady
            | TooManyLearners
            | NotLeader
            | BadLeaderTransferee => GrpcCode::FailedPrecondition,
            NoLeader
            | LeaderChanged
            | Timeout
            | TimeoutDueToLeaderFail
            | NotSupportedForLearner
            | Stopped
            | Unhealthy => GrpcCode::Unavailable,
            Corrupt => GrpcCode::DataLoss,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_codes_are_etcds() {
        assert_eq!(
            EtcdError::Compacted.to_string(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(EtcdError::Compacted.code(), GrpcCode::OutOfRange);
        assert_eq!(
            EtcdError::LeaseNotFound.to_string(),
            "etcdserver: requested lease not found"
        );
        assert_eq!(EtcdError::LeaseNotFound.code(), GrpcCode::NotFound);
        assert_eq!(EtcdError::NoSpace.code(), GrpcCode::ResourceExhausted);
    }
}

/// What a state-machine operation can fail with: an answer for the client, or a storage
/// failure that stops the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
}
