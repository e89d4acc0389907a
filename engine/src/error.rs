//! Errors a client can see, with etcd's exact texts and gRPC codes
//! (`api/v3rpc/rpctypes/error.go`): etcd clients match on both, so neither may drift.
//!
//! Storage failures are not here: a failed backend write or fsync is [`crate::Fatal`], which
//! stops the node instead of answering anyone.

/// gRPC status codes, as numbers, without depending on a gRPC library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcCode {
    Canceled = 1,
    Unknown = 2,
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
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// etcd's `auth.ErrNoPasswordUser`, which has no rpctypes twin: etcd sends its text as is,
    /// with code Unknown. Authenticating as a user added with `no_password`, or a password
    /// hash that is not valid base64.
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
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
            | InvalidSortOption | RequestTooLarge | MemberBadUrls | InvalidArgument(_)
            | UserEmpty | RoleEmpty | AuthFailed | PermissionNotGiven | InvalidAuthMgmt
            | AuthOldRevision => GrpcCode::InvalidArgument,
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
            | BadLeaderTransferee
            | RootUserNotExist
            | RootRoleNotExist
            | UserAlreadyExist
            | UserNotFound
            | RoleAlreadyExist
            | RoleNotFound
            | RoleNotGranted
            | PermissionNotGranted
            | AuthNotEnabled => GrpcCode::FailedPrecondition,
            PermissionDenied => GrpcCode::PermissionDenied,
            InvalidAuthToken => GrpcCode::Unauthenticated,
            NoPasswordUser => GrpcCode::Unknown,
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

    /// The text of this error as a Go gRPC status prints it (`status.Error(..).Error()`),
    /// which is what etcd puts in a watch's `cancel_reason` when auth refuses the watch.
    pub fn grpc_status_text(&self) -> String {
        format!("rpc error: code = {} desc = {self}", self.code().name())
    }
}

impl GrpcCode {
    /// The code's name as gRPC prints it (`codes.Code.String()`).
    pub fn name(self) -> &'static str {
        match self {
            GrpcCode::Canceled => "Canceled",
            GrpcCode::Unknown => "Unknown",
            GrpcCode::InvalidArgument => "InvalidArgument",
            GrpcCode::DeadlineExceeded => "DeadlineExceeded",
            GrpcCode::NotFound => "NotFound",
            GrpcCode::FailedPrecondition => "FailedPrecondition",
            GrpcCode::OutOfRange => "OutOfRange",
            GrpcCode::ResourceExhausted => "ResourceExhausted",
            GrpcCode::PermissionDenied => "PermissionDenied",
            GrpcCode::Unavailable => "Unavailable",
            GrpcCode::DataLoss => "DataLoss",
            GrpcCode::Unauthenticated => "Unauthenticated",
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

    /// rpctypes/error.go, each auth error's code and text.
    #[test]
    fn auth_texts_and_codes_are_etcds() {
        use EtcdError::*;
        let cases = [
            (
                RootUserNotExist,
                GrpcCode::FailedPrecondition,
                "root user does not exist",
            ),
            (
                RootRoleNotExist,
                GrpcCode::FailedPrecondition,
                "root user does not have root role",
            ),
            (
                UserAlreadyExist,
                GrpcCode::FailedPrecondition,
                "user name already exists",
            ),
            (UserEmpty, GrpcCode::InvalidArgument, "user name is empty"),
            (
                UserNotFound,
                GrpcCode::FailedPrecondition,
                "user name not found",
            ),
            (
                RoleAlreadyExist,
                GrpcCode::FailedPrecondition,
                "role name already exists",
            ),
            (
                RoleNotFound,
                GrpcCode::FailedPrecondition,
                "role name not found",
            ),
            (RoleEmpty, GrpcCode::InvalidArgument, "role name is empty"),
            (
                AuthFailed,
                GrpcCode::InvalidArgument,
                "authentication failed, invalid user ID or password",
            ),
            (
                PermissionNotGiven,
                GrpcCode::InvalidArgument,
                "permission not given",
            ),
            (
                PermissionDenied,
                GrpcCode::PermissionDenied,
                "permission denied",
            ),
            (
                RoleNotGranted,
                GrpcCode::FailedPrecondition,
                "role is not granted to the user",
            ),
            (
                PermissionNotGranted,
                GrpcCode::FailedPrecondition,
                "permission is not granted to the role",
            ),
            (
                AuthNotEnabled,
                GrpcCode::FailedPrecondition,
                "authentication is not enabled",
            ),
            (
                InvalidAuthToken,
                GrpcCode::Unauthenticated,
                "invalid auth token",
            ),
            (
                InvalidAuthMgmt,
                GrpcCode::InvalidArgument,
                "invalid auth management",
            ),
            (
                AuthOldRevision,
                GrpcCode::InvalidArgument,
                "revision of auth store is old",
            ),
        ];
        for (e, code, text) in cases {
            assert_eq!(e.to_string(), format!("etcdserver: {text}"));
            assert_eq!(e.code(), code, "{e}");
        }
        assert_eq!(NoPasswordUser.code(), GrpcCode::Unknown);
        assert_eq!(
            PermissionDenied.grpc_status_text(),
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
        );
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
