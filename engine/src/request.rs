//! What clients ask of a node and what it answers: etcd's request and response messages,
//! grouped into one enum per direction so the driver hands the engine any client call.
//!
//! Auth: the server owns passwords. `UserAdd` and `UserChangePassword` must carry etcd's
//! `hashed_password` (base64 of the bcrypt hash; the engine drops any plaintext `password`
//! before proposing); `Authenticate` is not the client's `AuthenticateRequest` but what the
//! server proposes once it has checked the password against [`crate::Node::password_check`].

pub use crate::mvcc::{Counting, EncodedRange};
use crate::proto::etcdserverpb::*;
use crate::proto::strata::internal::InternalAuthenticateRequest;

/// The end of the range of keys starting with `prefix` (etcd's `clientv3.GetPrefixRangeEnd`):
/// `prefix` with its last byte below 0xff incremented and what follows dropped; `"\0"` (to
/// the end of the keyspace) when every byte is 0xff.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Range(RangeRequest),
    /// One chunk of a range the server splits (RangeStream, large unary ranges), answered
    /// with [`Response::RangeChunk`]: key-values left encoded, and with
    /// [`Counting::Skip`] no count, so a chunk costs O(limit) however many keys follow it
    /// (etcd 3.7's `CountTotal: false`). The first chunk is read as the client asked
    /// (linearizable or not) and counts; the next ones are serializable at its revision.
    RangeChunk(RangeChunk),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    LeaseGrant(LeaseGrantRequest),
    LeaseRevoke(LeaseRevokeRequest),
    LeaseKeepAlive(LeaseKeepAliveRequest),
    LeaseTimeToLive(LeaseTimeToLiveRequest),
    LeaseLeases(LeaseLeasesRequest),
    MemberAdd(MemberAddRequest),
    MemberRemove(MemberRemoveRequest),
    MemberUpdate(MemberUpdateRequest),
    MemberList(MemberListRequest),
    MemberPromote(MemberPromoteRequest),
    Alarm(AlarmRequest),
    Status(StatusRequest),
    Hash(HashRequest),
    HashKv(HashKvRequest),
    MoveLeader(MoveLeaderRequest),
    AuthEnable(AuthEnableRequest),
    AuthDisable(AuthDisableRequest),
    AuthStatus(AuthStatusRequest),
    Authenticate(InternalAuthenticateRequest),
    UserAdd(AuthUserAddRequest),
    UserGet(AuthUserGetRequest),
    UserList(AuthUserListRequest),
    UserDelete(AuthUserDeleteRequest),
    UserChangePassword(AuthUserChangePasswordRequest),
    UserGrantRole(AuthUserGrantRoleRequest),
    UserRevokeRole(AuthUserRevokeRoleRequest),
    RoleAdd(AuthRoleAddRequest),
    RoleGet(AuthRoleGetRequest),
    RoleList(AuthRoleListRequest),
    RoleDelete(AuthRoleDeleteRequest),
    RoleGrantPermission(AuthRoleGrantPermissionRequest),
    RoleRevokePermission(AuthRoleRevokePermissionRequest),
}

/// See [`Request::RangeChunk`].
#[derive(Clone, Debug, PartialEq)]
pub struct RangeChunk {
    pub range: RangeRequest,
    pub counting: Counting,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    Range(RangeResponse),
    RangeChunk(EncodedRange),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseKeepAlive(LeaseKeepAliveResponse),
    LeaseTimeToLive(LeaseTimeToLiveResponse),
    LeaseLeases(LeaseLeasesResponse),
    MemberAdd(MemberAddResponse),
    MemberRemove(MemberRemoveResponse),
    MemberUpdate(MemberUpdateResponse),
    MemberList(MemberListResponse),
    MemberPromote(MemberPromoteResponse),
    Alarm(AlarmResponse),
    Status(StatusResponse),
    Hash(HashResponse),
    HashKv(HashKvResponse),
    MoveLeader(MoveLeaderResponse),
    AuthEnable(AuthEnableResponse),
    AuthDisable(AuthDisableResponse),
    AuthStatus(AuthStatusResponse),
    Authenticate(AuthenticateResponse),
    UserAdd(AuthUserAddResponse),
    UserGet(AuthUserGetResponse),
    UserList(AuthUserListResponse),
    UserDelete(AuthUserDeleteResponse),
    UserChangePassword(AuthUserChangePasswordResponse),
    UserGrantRole(AuthUserGrantRoleResponse),
    UserRevokeRole(AuthUserRevokeRoleResponse),
    RoleAdd(AuthRoleAddResponse),
    RoleGet(AuthRoleGetResponse),
    RoleList(AuthRoleListResponse),
    RoleDelete(AuthRoleDeleteResponse),
    RoleGrantPermission(AuthRoleGrantPermissionResponse),
    RoleRevokePermission(AuthRoleRevokePermissionResponse),
}

impl Response {
    /// The response header, to be filled by the node.
    pub fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
        match self {
            Response::Range(r) => &mut r.header,
            Response::RangeChunk(r) => &mut r.header,
            Response::Put(r) => &mut r.header,
            Response::DeleteRange(r) => &mut r.header,
            Response::Txn(r) => &mut r.header,
            Response::Compact(r) => &mut r.header,
            Response::LeaseGrant(r) => &mut r.header,
            Response::LeaseRevoke(r) => &mut r.header,
            Response::LeaseKeepAlive(r) => &mut r.header,
            Response::LeaseTimeToLive(r) => &mut r.header,
            Response::LeaseLeases(r) => &mut r.header,
            Response::MemberAdd(r) => &mut r.header,
            Response::MemberRemove(r) => &mut r.header,
            Response::MemberUpdate(r) => &mut r.header,
            Response::MemberList(r) => &mut r.header,
            Response::MemberPromote(r) => &mut r.header,
            Response::Alarm(r) => &mut r.header,
            Response::Status(r) => &mut r.header,
            Response::Hash(r) => &mut r.header,
            Response::HashKv(r) => &mut r.header,
            Response::MoveLeader(r) => &mut r.header,
            Response::AuthEnable(r) => &mut r.header,
            Response::AuthDisable(r) => &mut r.header,
            Response::AuthStatus(r) => &mut r.header,
            Response::Authenticate(r) => &mut r.header,
            Response::UserAdd(r) => &mut r.header,
            Response::UserGet(r) => &mut r.header,
            Response::UserList(r) => &mut r.header,
            Response::UserDelete(r) => &mut r.header,
            Response::UserChangePassword(r) => &mut r.header,
            Response::UserGrantRole(r) => &mut r.header,
            Response::UserRevokeRole(r) => &mut r.header,
            Response::RoleAdd(r) => &mut r.header,
            Response::RoleGet(r) => &mut r.header,
            Response::RoleList(r) => &mut r.header,
            Response::RoleDelete(r) => &mut r.header,
            Response::RoleGrantPermission(r) => &mut r.header,
            Response::RoleRevokePermission(r) => &mut r.header,
        }
    }
}

/// Whether a txn (nested txns included) writes nothing, so it can be served as a read.
pub fn txn_is_read_only(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(t)) => txn_is_read_only(t),
            Some(_) => false,
        })
}

/// Whether a txn could put a key (etcd refuses those while the NOSPACE alarm is raised).
pub fn txn_has_put(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(t)) => txn_has_put(t),
            _ => false,
        })
}
