//! The Auth service. The engine owns users, roles, permissions and tokens; this layer does the
//! one thing the engine must not: bcrypt. Passwords are hashed here before `UserAdd` /
//! `UserChangePassword` are proposed (only the hash enters the raft log, as in etcd 3.5+), and
//! `Authenticate` checks the password against the hash the engine holds, then proposes the
//! login with a fresh random token; if the auth store changed in between (the engine answers
//! `revision of auth store is old`), it checks again, as etcd does.

use base64::Engine as _;
use rand::Rng as _;
use strata_engine::proto::etcdserverpb::*;
use strata_engine::proto::strata::internal::InternalAuthenticateRequest;
use strata_engine::request::Request;
use strata_engine::EtcdError;
use tonic::{Request as Req, Response as Resp, Status};

use super::pb::etcdserverpb::auth_server::Auth;
use super::{status, Ctx, Tokens};
use crate::expect_response;

#[derive(Clone, Debug)]
pub struct AuthService {
    pub ctx: Ctx,
    pub bcrypt_cost: u32,
}

/// Attempts at a login whose password check raced an auth change.
const LOGIN_ATTEMPTS: usize = 3;

impl AuthService {
    /// bcrypt-hashes `password`, base64-encoded as etcd stores it in `hashed_password`.
    fn hash(&self, password: &str) -> Result<String, Status> {
        let salt: [u8; 16] = rand::rng().random();
        let hash = bcrypt::hash_with_salt(password, self.bcrypt_cost, salt)
            .map_err(|e| {
                Status::invalid_argument(format!("etcdserver: cannot hash password: {e}"))
            })?
            .format_for_version(bcrypt::Version::TwoA);
        Ok(base64::engine::general_purpose::STANDARD.encode(hash))
    }
}

pub(super) fn simple_token() -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char)
        .collect()
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Req<AuthEnableRequest>,
    ) -> Result<Resp<AuthEnableResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(
            self.ctx.call(Request::AuthEnable(msg), &md).await?,
            AuthEnable
        )
    }

    async fn auth_disable(
        &self,
        req: Req<AuthDisableRequest>,
    ) -> Result<Resp<AuthDisableResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(
            self.ctx.call(Request::AuthDisable(msg), &md).await?,
            AuthDisable
        )
    }

    async fn auth_status(
        &self,
        req: Req<AuthStatusRequest>,
    ) -> Result<Resp<AuthStatusResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(
            self.ctx.call(Request::AuthStatus(msg), &md).await?,
            AuthStatus
        )
    }

    async fn user_get(
        &self,
        req: Req<AuthUserGetRequest>,
    ) -> Result<Resp<AuthUserGetResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(self.ctx.call(Request::UserGet(msg), &md).await?, UserGet)
    }

    async fn user_list(
        &self,
        req: Req<AuthUserListRequest>,
    ) -> Result<Resp<AuthUserListResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(self.ctx.call(Request::UserList(msg), &md).await?, UserList)
    }

    async fn user_delete(
        &self,
        req: Req<AuthUserDeleteRequest>,
    ) -> Result<Resp<AuthUserDeleteResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(
            self.ctx.call(Request::UserDelete(msg), &md).await?,
            UserDelete
        )
    }

    async fn user_grant_role(
        &self,
        req: Req<AuthUserGrantRoleRequest>,
    ) -> Result<Resp<AuthUserGrantRoleResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(
            self.ctx.call(Request::UserGrantRole(msg), &md).await?,
            UserGrantRole
        )
    }

    async fn user_revoke_role(
        &self,
        req: Req<AuthUserRevokeRoleRequest>,
    ) -> Result<Resp<AuthUserRevokeRoleResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(
            self.ctx.call(Request::UserRevokeRole(msg), &md).await?,
            UserRevokeRole
        )
    }

    async fn role_add(
        &self,
        req: Req<AuthRoleAddRequest>,
    ) -> Result<Resp<AuthRoleAddResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(self.ctx.call(Request::RoleAdd(msg), &md).await?, RoleAdd)
    }

    async fn role_get(
        &self,
        req: Req<AuthRoleGetRequest>,
    ) -> Result<Resp<AuthRoleGetResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(self.ctx.call(Request::RoleGet(msg), &md).await?, RoleGet)
    }

    async fn role_list(
        &self,
        req: Req<AuthRoleListRequest>,
    ) -> Result<Resp<AuthRoleListResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(self.ctx.call(Request::RoleList(msg), &md).await?, RoleList)
    }

    async fn role_delete(
        &self,
        req: Req<AuthRoleDeleteRequest>,
    ) -> Result<Resp<AuthRoleDeleteResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(
            self.ctx.call(Request::RoleDelete(msg), &md).await?,
            RoleDelete
        )
    }

    async fn role_grant_permission(
        &self,
        req: Req<AuthRoleGrantPermissionRequest>,
    ) -> Result<Resp<AuthRoleGrantPermissionResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(
            self.ctx
                .call(Request::RoleGrantPermission(msg), &md)
                .await?,
            RoleGrantPermission
        )
    }

    async fn role_revoke_permission(
        &self,
        req: Req<AuthRoleRevokePermissionRequest>,
    ) -> Result<Resp<AuthRoleRevokePermissionResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(
            self.ctx
                .call(Request::RoleRevokePermission(msg), &md)
                .await?,
            RoleRevokePermission
        )
    }

    async fn authenticate(
        &self,
        req: Req<AuthenticateRequest>,
    ) -> Result<Resp<AuthenticateResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        for _ in 0..LOGIN_ATTEMPTS {
            let check = self
                .ctx
                .handle
                .password_check(msg.name.clone())
                .await
                .map_err(status)?;
            let hash = String::from_utf8_lossy(&check.hash).into_owned();
            let password = msg.password.clone();
            let ok = bcrypt::verify(password, &hash).unwrap_or(false);
            if !ok {
                return Err(status(EtcdError::AuthFailed));
            }
            // A JWT is minted here once the login commits; a simple token by the engine.
            let jwt = match &self.ctx.tokens {
                Tokens::Jwt(jwt) => Some(jwt.clone()),
                Tokens::Simple => None,
            };
            let login = InternalAuthenticateRequest {
                name: msg.name.clone(),
                simple_token: if jwt.is_some() {
                    String::new()
                } else {
                    simple_token()
                },
                auth_revision: check.auth_revision,
                certificate: false,
            };
            match (
                self.ctx.call_raw(Request::Authenticate(login), &md).await,
                jwt,
            ) {
                (Err(EtcdError::AuthOldRevision), _) => continue,
                (Err(e), _) => return Err(status(e)),
                (Ok(strata_engine::request::Response::Authenticate(mut resp)), Some(jwt)) => {
                    resp.token = jwt
                        .assign(&msg.name, check.auth_revision)
                        .map_err(Status::failed_precondition)?;
                    return Ok(Resp::new(resp));
                }
                (Ok(resp), _) => return expect_response!(resp, Authenticate),
            }
        }
        Err(status(EtcdError::AuthOldRevision))
    }

    async fn user_add(
        &self,
        req: Req<AuthUserAddRequest>,
    ) -> Result<Resp<AuthUserAddResponse>, Status> {
        let (md, _, mut msg) = req.into_parts();
        let no_password = msg.options.as_ref().is_some_and(|o| o.no_password);
        if !no_password && msg.hashed_password.is_empty() {
            msg.hashed_password = self.hash(&msg.password)?;
        }
        msg.password.clear();
        expect_response!(self.ctx.call(Request::UserAdd(msg), &md).await?, UserAdd)
    }

    async fn user_change_password(
        &self,
        req: Req<AuthUserChangePasswordRequest>,
    ) -> Result<Resp<AuthUserChangePasswordResponse>, Status> {
        let (md, _, mut msg) = req.into_parts();
        if msg.hashed_password.is_empty() {
            msg.hashed_password = self.hash(&msg.password)?;
        }
        msg.password.clear();
        expect_response!(
            self.ctx.call(Request::UserChangePassword(msg), &md).await?,
            UserChangePassword
        )
    }
}
