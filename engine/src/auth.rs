//! etcd's auth store (`server/auth/store.go`, `range_perm_cache.go`, `simple_token.go`, and the
//! checks of `etcdserver/apply/auth.go` and the v3 API layer): users, roles, key-range
//! permissions, the enabled flag, the auth revision, and simple tokens.
//!
//! # What it owns
//!
//! - **Replicated state**, changed only by applied raft entries and therefore identical on every
//!   member: the enabled flag and the auth revision (bucket [`Bucket::Auth`], keys `enabled` and
//!   `revision`), users ([`Bucket::AuthUsers`], name → `authpb.User`: bcrypt hash bytes, sorted
//!   roles, options) and roles ([`Bucket::AuthRoles`], name → `authpb.Role`, permissions sorted
//!   by key). Every change stages its records into the caller's [`WriteBatch`], so it commits
//!   with the applied index and travels in raft snapshots with every other record.
//! - **A permission cache** per user: the read and write key intervals of all its roles
//!   (etcd's `rangePermCache`), rebuilt from the replicated state after every change.
//! - **Member-local state**: simple tokens, `token → (user, deadline)`. Applying an
//!   `Authenticate` entry registers one on every member (so any member accepts it), valid for
//!   the configured TTL after its last use on that member. Tokens are never persisted: a
//!   restarted member, or one that installs a snapshot, has forgotten them, and clients
//!   authenticate again, as with etcd. The deadline is measured on the `now_ms` the node is
//!   stepped with; it never changes replicated state.
//!
//! # Invariants
//!
//! - The auth revision starts at 1 and grows by one with each change of users, roles or
//!   permissions and with `AuthDisable` (etcd's `commitRevision`). `AuthEnable`, repeated
//!   grants of a role already granted, and refused requests leave it as it is.
//! - While auth is enabled, user `root` exists and holds role `root`: enabling requires it, and
//!   deleting `root`, revoking its `root` role or deleting role `root` is refused
//!   ([`EtcdError::InvalidAuthMgmt`]). Role `root` is implicit: its holders may do anything,
//!   and it can be granted before it is added.
//! - Disabling auth, deleting a user and changing its password end that user's (or every)
//!   token, as etcd's token provider does.
//! - The engine never hashes nor verifies a password: the server runs bcrypt, proposes
//!   etcd's base64 text of the hash in `hashed_password`, and checks a password against the
//!   bytes [`AuthStore::password_check`] returns.
//!
//! # Checks
//!
//! Every check passes while auth is disabled. Otherwise a request is checked as etcd checks
//! it, at the same stage: [`AuthStore::check_serve`] holds the API-layer checks (admin-only
//! operations, "a user is required", reads at serve time), [`AuthStore::check_apply`] the
//! apply-time checks of writes, made on every member with the user and auth revision the
//! proposal carries; a proposal whose revision is older than the store's is refused, since
//! the permissions it was admitted under may be gone. Key permissions follow
//! `range_perm_cache.go`: a single key is permitted when some interval holds it; a range when
//! the user's intervals that meet it cover it without a gap; a `"\0"` range end means "to the
//! end of the keyspace".

use std::cmp::Ordering;
use std::collections::BTreeMap;

use prost::Message as _;

use crate::backend::{BackendError, Bucket, KvBackend, Scan, WriteBatch};
use crate::error::EtcdError;
use crate::lease::Lessor;
use crate::proto::authpb::{permission, Permission, Role, User, UserAddOptions};
use crate::proto::etcdserverpb::{
    request_op, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleRevokePermissionRequest, AuthUserAddRequest, AuthUserChangePasswordRequest,
    AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest, DeleteRangeRequest,
    PutRequest, RequestOp, TxnRequest,
};
use crate::proto::strata::internal::{internal_request, InternalAuthenticateRequest};
use crate::request::{txn_is_read_only, Request};
use crate::types::{LeaseId, LogIndex};

pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

/// etcd's default `--auth-token-ttl`.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 300;

const KEY_ENABLED: &[u8] = b"enabled";
const KEY_REVISION: &[u8] = b"revision";

/// Who sent a request (etcd's `AuthInfo`): the user its token names and the auth revision its
/// permissions are read at. A request without a token has none (`Option::None`); while auth is
/// enabled every check refuses it with [`EtcdError::UserEmpty`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthInfo {
    pub username: String,
    pub revision: u64,
    /// The revision is the credential's own (a JWT's signed claims) and is checked as it is;
    /// otherwise it is the store's when the request arrived, and a read is checked at the
    /// store's revision when it is served (etcd resolves a simple token then).
    pub pinned: bool,
}

/// How a client proved who it is (the sources of etcd's `AuthInfoFromCtx`). The engine
/// resolves a simple token itself (it minted it); anything else the server has verified
/// before the request reaches the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A simple token (the gRPC `token` metadata), minted by an applied `Authenticate` entry.
    SimpleToken(String),
    /// A user the server authenticated: the signed claims of a verified JWT (`revision` as
    /// signed, so a token older than an auth change is refused as etcd refuses it), or, with
    /// `--client-cert-auth`, a verified client certificate's CN (`revision: None`, the store's
    /// current one, as etcd's `AuthInfoFromTLS`).
    User {
        username: String,
        revision: Option<u64>,
    },
    /// A token the server could not verify (bad signature, expired, another algorithm):
    /// `invalid auth token` while auth is enabled, ignored otherwise, like any token.
    Rejected,
}

/// What the server needs to check a password before proposing `Request::Authenticate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordCheck {
    /// The bcrypt hash, raw (etcd's `authpb.User.password`).
    pub hash: Vec<u8>,
    /// Goes into `InternalAuthenticateRequest::auth_revision`.
    pub auth_revision: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// etcd's `adt.BytesAffineComparable` order: the empty key is above every other key, so an
/// empty interval end means "no upper bound".
fn affine_cmp(a: &[u8], b: &[u8]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.cmp(b),
    }
}

/// A key interval `[begin, end)` in [`affine_cmp`] order.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Interval {
    begin: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    /// The interval a permission grants (etcd's `getMergedPerms`): a single key is
    /// `[key, key + "\0")`; a `"\0"` range end is unbounded.
    fn of_permission(perm: &Permission) -> Interval {
        if perm.range_end.is_empty() {
            let mut end = perm.key.clone();
            end.push(0);
            return Interval {
                begin: perm.key.clone(),
                end,
            };
        }
        let end = if perm.range_end == [0] {
            Vec::new()
        } else {
            perm.range_end.clone()
        };
        Interval {
            begin: perm.key.clone(),
            end,
        }
    }

    /// etcd's `Interval.Compare(query, self) == 0`: neither wholly left nor wholly right.
    fn meets(&self, begin: &[u8], end: &[u8]) -> bool {
        let left = affine_cmp(begin, &self.begin).is_lt() && affine_cmp(end, &self.begin).is_le();
        let right = affine_cmp(begin, &self.end).is_ge();
        !left && !right
    }

    fn holds(&self, key: &[u8]) -> bool {
        affine_cmp(&self.begin, key).is_le() && affine_cmp(key, &self.end).is_lt()
    }
}

/// One access kind's intervals for one user, sorted by begin (etcd's interval tree).
#[derive(Clone, Debug, Default)]
struct Intervals(Vec<Interval>);

impl Intervals {
    fn insert(&mut self, iv: Interval) {
        let at = self
            .0
            .partition_point(|x| affine_cmp(&x.begin, &iv.begin).is_le());
        self.0.insert(at, iv);
    }

    /// etcd's `checkKeyPoint` (`IntervalTree.Intersects` with a point).
    fn holds(&self, key: &[u8]) -> bool {
        self.0.iter().any(|iv| iv.holds(key))
    }

    /// etcd's `IntervalTree.Contains`: the intervals meeting `[begin, end)`, in begin order,
    /// leave no gap and reach from at or below `begin` to at or above `end`.
    fn cover(&self, begin: &[u8], end: &[u8]) -> bool {
        let mut span: Option<(&[u8], &[u8])> = None;
        for iv in self.0.iter().filter(|iv| iv.meets(begin, end)) {
            span = match span {
                None => Some((&iv.begin, &iv.end)),
                Some((_, max_end)) if affine_cmp(max_end, &iv.begin).is_lt() => return false,
                Some((min_begin, max_end)) => Some((
                    min_begin,
                    std::cmp::max_by(max_end, &iv.end, |a, b| affine_cmp(a, b)),
                )),
            };
        }
        span.is_some_and(|(min_begin, max_end)| {
            affine_cmp(max_end, end).is_ge() && affine_cmp(min_begin, begin).is_le()
        })
    }
}

/// A user's merged permissions (etcd's `unifiedRangePermissions`).
#[derive(Clone, Debug, Default)]
struct UserPerms {
    read: Intervals,
    write: Intervals,
}

impl UserPerms {
    /// etcd's `isRangeOpPermitted`: an empty range end names one key.
    fn permits(&self, key: &[u8], range_end: &[u8], access: Access) -> bool {
        let intervals = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        if range_end.is_empty() {
            return intervals.holds(key);
        }
        let end: &[u8] = if range_end == [0] { &[] } else { range_end };
        intervals.cover(key, end)
    }
}

#[derive(Clone, Debug)]
struct Token {
    username: String,
    /// Valid while `now_ms <= deadline_ms`.
    deadline_ms: u64,
}

pub struct AuthStore {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    perms: BTreeMap<String, UserPerms>,
    tokens: BTreeMap<String, Token>,
    token_ttl_ms: u64,
}

fn corrupt(op: &'static str, reason: String) -> BackendError {
    BackendError { op, reason }
}

fn has_root_role(user: &User) -> bool {
    user.roles
        .binary_search_by(|r| r.as_str().cmp(ROOT_ROLE))
        .is_ok()
}

/// etcd's `isValidPermissionRange`.
fn valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    range_end.is_empty() || affine_cmp(key, range_end).is_lt() || range_end == [0]
}

impl AuthStore {
    /// Loads the replicated state; no tokens.
    pub fn open(backend: &dyn KvBackend, token_ttl_ms: u64) -> Result<AuthStore, BackendError> {
        let enabled = backend
            .get(Bucket::Auth, KEY_ENABLED)?
            .is_some_and(|v| v == [1]);
        let revision = match backend.get(Bucket::Auth, KEY_REVISION)? {
            // etcd's NewAuthStore commits revision 1 into a new store.
            None => 1,
            Some(v) => u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| corrupt("load auth revision", format!("{} bytes", v.len())))?,
            ),
        };
        let mut users = BTreeMap::new();
        let mut roles = BTreeMap::new();
        let mut failure = None;
        backend.scan(Bucket::AuthUsers, b"", None, &mut |k, v| {
            match User::decode(v) {
                Ok(u) => {
                    users.insert(String::from_utf8_lossy(k).into_owned(), u);
                }
                Err(e) => failure = Some(corrupt("load auth user", format!("{k:02x?}: {e}"))),
            }
            Scan::Continue
        })?;
        backend.scan(Bucket::AuthRoles, b"", None, &mut |k, v| {
            match Role::decode(v) {
                Ok(r) => {
                    roles.insert(String::from_utf8_lossy(k).into_owned(), r);
                }
                Err(e) => failure = Some(corrupt("load auth role", format!("{k:02x?}: {e}"))),
            }
            Scan::Continue
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        let mut store = AuthStore {
            enabled,
            revision,
            users,
            roles,
            perms: BTreeMap::new(),
            tokens: BTreeMap::new(),
            token_ttl_ms,
        };
        store.refresh_perms();
        Ok(store)
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// etcd's `authRevision`.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn token_ttl_ms(&self) -> u64 {
        self.token_ttl_ms
    }

    // ---- tokens ---------------------------------------------------------------------------

    /// The raft index a simple token names (`<prefix>.<index>`); `None` if it is malformed.
    pub fn token_index(token: &str) -> Option<LogIndex> {
        let (_, index) = token.split_once('.')?;
        if index.is_empty() || index.contains('.') || !index.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        index.parse().ok().map(LogIndex)
    }

    /// The user a token names, if it is registered and unexpired; its deadline moves to
    /// `now_ms + ttl` (etcd resets a token's TTL on each use). `None` is etcd's "invalid auth
    /// token". Not a check: the caller decides what a missing user means.
    pub fn resolve_token(&mut self, token: &str, now_ms: u64) -> Option<AuthInfo> {
        let entry = self.tokens.get_mut(token)?;
        if now_ms > entry.deadline_ms {
            self.tokens.remove(token);
            return None;
        }
        entry.deadline_ms = now_ms + self.token_ttl_ms;
        Some(AuthInfo {
            username: entry.username.clone(),
            revision: self.revision,
            pinned: false,
        })
    }

    /// Forgets expired tokens (etcd's TTL keeper sweeps once a second).
    pub fn purge_expired_tokens(&mut self, now_ms: u64) {
        self.tokens.retain(|_, t| now_ms <= t.deadline_ms);
    }

    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    fn invalidate_user_tokens(&mut self, username: &str) {
        self.tokens.retain(|_, t| t.username != username);
    }

    /// etcd's `CheckPassword` without bcrypt, which the server runs on the returned hash.
    pub fn password_check(&self, name: &str) -> Result<PasswordCheck, EtcdError> {
        if !self.enabled {
            return Err(EtcdError::AuthNotEnabled);
        }
        let user = self.users.get(name).ok_or(EtcdError::AuthFailed)?;
        if user.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(EtcdError::NoPasswordUser);
        }
        Ok(PasswordCheck {
            hash: user.password.clone(),
            auth_revision: self.revision,
        })
    }

    // ---- replicated changes -----------------------------------------------------------------

    fn bump_revision(&mut self, batch: &mut WriteBatch) {
        self.revision += 1;
        batch.put(
            Bucket::Auth,
            KEY_REVISION.to_vec(),
            self.revision.to_be_bytes().to_vec(),
        );
    }

    fn put_user(&mut self, user: User, batch: &mut WriteBatch) {
        let name = String::from_utf8_lossy(&user.name).into_owned();
        batch.put(Bucket::AuthUsers, user.name.clone(), user.encode_to_vec());
        self.users.insert(name, user);
    }

    fn put_role(&mut self, role: Role, batch: &mut WriteBatch) {
        let name = String::from_utf8_lossy(&role.name).into_owned();
        batch.put(Bucket::AuthRoles, role.name.clone(), role.encode_to_vec());
        self.roles.insert(name, role);
    }

    /// Bumps the revision and rebuilds the permission cache: the end of every change.
    fn changed(&mut self, batch: &mut WriteBatch) {
        self.bump_revision(batch);
        self.refresh_perms();
    }

    /// etcd's `refreshRangePermCache`.
    fn refresh_perms(&mut self) {
        let mut perms = BTreeMap::new();
        for (name, user) in &self.users {
            let mut merged = UserPerms::default();
            for perm in user
                .roles
                .iter()
                .filter_map(|r| self.roles.get(r))
                .flat_map(|r| &r.key_permission)
            {
                let (read, write) = match permission::Type::try_from(perm.perm_type) {
                    Ok(permission::Type::Read) => (true, false),
                    Ok(permission::Type::Write) => (false, true),
                    Ok(permission::Type::Readwrite) => (true, true),
                    Err(_) => (false, false),
                };
                let iv = Interval::of_permission(perm);
                if read {
                    merged.read.insert(iv.clone());
                }
                if write {
                    merged.write.insert(iv);
                }
            }
            perms.insert(name.clone(), merged);
        }
        self.perms = perms;
    }

    /// etcd's `AuthEnable`: a no-op when enabled already; the revision does not move.
    pub fn enable(&mut self, batch: &mut WriteBatch) -> Result<(), EtcdError> {
        if self.enabled {
            return Ok(());
        }
        let root = self
            .users
            .get(ROOT_USER)
            .ok_or(EtcdError::RootUserNotExist)?;
        if !has_root_role(root) {
            return Err(EtcdError::RootRoleNotExist);
        }
        self.enabled = true;
        batch.put(Bucket::Auth, KEY_ENABLED.to_vec(), vec![1]);
        Ok(())
    }

    /// etcd's `AuthDisable`: every token ends.
    pub fn disable(&mut self, batch: &mut WriteBatch) {
        if !self.enabled {
            return;
        }
        self.enabled = false;
        batch.put(Bucket::Auth, KEY_ENABLED.to_vec(), vec![0]);
        self.bump_revision(batch);
        self.tokens.clear();
    }

    /// Applies an `Authenticate` entry at `index`: registers and returns the token (see
    /// `InternalAuthenticateRequest::certificate` for logins by a client certificate). An entry
    /// with no `simple_token` registers none and answers an empty token: the server mints a
    /// signed token itself (`--auth-token jwt`) once the login has committed.
    pub fn authenticate(
        &mut self,
        r: &InternalAuthenticateRequest,
        index: LogIndex,
        now_ms: u64,
    ) -> Result<String, EtcdError> {
        if !self.enabled {
            return Err(EtcdError::AuthNotEnabled);
        }
        let user = self.users.get(&r.name).ok_or(EtcdError::AuthFailed)?;
        // A certificate login checked no password: a no-password user (etcd's users for
        // certificate auth) may log in so, and no password check can be stale.
        if !r.certificate {
            if user.options.as_ref().is_some_and(|o| o.no_password) {
                return Err(EtcdError::AuthFailed);
            }
            // etcd re-checks the password when the store moved while it was checked; here
            // the server learns it from this answer and checks again.
            if r.auth_revision < self.revision {
                return Err(EtcdError::AuthOldRevision);
            }
        }
        if r.simple_token.is_empty() {
            return Ok(String::new());
        }
        let token = format!("{}.{}", r.simple_token, index.0);
        let fresh = Token {
            username: r.name.clone(),
            deadline_ms: now_ms + self.token_ttl_ms,
        };
        let old = self.tokens.insert(token.clone(), fresh);
        assert!(old.is_none(), "token of entry {index} assigned twice");
        Ok(token)
    }

    /// The hash a user add or password change stores: etcd's `selectPassword` minus the
    /// pre-3.5 plaintext path (the engine never hashes).
    fn stored_hash(hashed_password: &str) -> Result<Vec<u8>, EtcdError> {
        let hash = base64_decode(hashed_password).ok_or(EtcdError::NoPasswordUser)?;
        if hash.is_empty() {
            return Err(EtcdError::InvalidArgument(
                "etcdserver: hashed password is empty; only a user added with no_password may \
                 have none"
                    .into(),
            ));
        }
        Ok(hash)
    }

    pub fn user_add(
        &mut self,
        r: &AuthUserAddRequest,
        batch: &mut WriteBatch,
    ) -> Result<(), EtcdError> {
        if r.name.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        if self.users.contains_key(&r.name) {
            return Err(EtcdError::UserAlreadyExist);
        }
        let options = r.options.unwrap_or(UserAddOptions { no_password: false });
        let password = if options.no_password {
            Vec::new()
        } else {
            Self::stored_hash(&r.hashed_password)?
        };
        let user = User {
            name: r.name.as_bytes().to_vec(),
            password,
            roles: Vec::new(),
            options: Some(options),
        };
        self.put_user(user, batch);
        self.changed(batch);
        Ok(())
    }

    pub fn user_delete(&mut self, name: &str, batch: &mut WriteBatch) -> Result<(), EtcdError> {
        if self.enabled && name == ROOT_USER {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        if self.users.remove(name).is_none() {
            return Err(EtcdError::UserNotFound);
        }
        batch.delete(Bucket::AuthUsers, name.as_bytes().to_vec());
        self.changed(batch);
        self.invalidate_user_tokens(name);
        Ok(())
    }

    pub fn user_change_password(
        &mut self,
        r: &AuthUserChangePasswordRequest,
        batch: &mut WriteBatch,
    ) -> Result<(), EtcdError> {
        let user = self.users.get(&r.name).ok_or(EtcdError::UserNotFound)?;
        // A no-password user stays one: etcd ignores the password given.
        let no_password = user.options.as_ref().is_some_and(|o| o.no_password);
        let password = if no_password {
            Vec::new()
        } else {
            Self::stored_hash(&r.hashed_password)?
        };
        let user = User {
            password,
            ..user.clone()
        };
        self.put_user(user, batch);
        self.changed(batch);
        self.invalidate_user_tokens(&r.name);
        Ok(())
    }

    /// Granting a role already granted succeeds and changes nothing (etcd).
    pub fn user_grant_role(
        &mut self,
        r: &AuthUserGrantRoleRequest,
        batch: &mut WriteBatch,
    ) -> Result<(), EtcdError> {
        let user = self.users.get(&r.user).ok_or(EtcdError::UserNotFound)?;
        if r.role != ROOT_ROLE && !self.roles.contains_key(&r.role) {
            return Err(EtcdError::RoleNotFound);
        }
        let Err(at) = user.roles.binary_search(&r.role) else {
            return Ok(());
        };
        let mut user = user.clone();
        user.roles.insert(at, r.role.clone());
        self.put_user(user, batch);
        self.changed(batch);
        Ok(())
    }

    pub fn user_revoke_role(
        &mut self,
        r: &AuthUserRevokeRoleRequest,
        batch: &mut WriteBatch,
    ) -> Result<(), EtcdError> {
        if self.enabled && r.name == ROOT_USER && r.role == ROOT_ROLE {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        let user = self.users.get(&r.name).ok_or(EtcdError::UserNotFound)?;
        let Ok(at) = user.roles.binary_search(&r.role) else {
            return Err(EtcdError::RoleNotGranted);
        };
        let mut user = user.clone();
        user.roles.remove(at);
        self.put_user(user, batch);
        self.changed(batch);
        Ok(())
    }

    pub fn role_add(&mut self, name: &str, batch: &mut WriteBatch) -> Result<(), EtcdError> {
        if name.is_empty() {
            return Err(EtcdError::RoleEmpty);
        }
        if self.roles.contains_key(name) {
            return Err(EtcdError::RoleAlreadyExist);
        }
        let role = Role {
            name: name.as_bytes().to_vec(),
            key_permission: Vec::new(),
        };
        self.put_role(role, batch);
        self.changed(batch);
        Ok(())
    }

    /// Deleting a role revokes it from every user holding it.
    pub fn role_delete(&mut self, name: &str, batch: &mut WriteBatch) -> Result<(), EtcdError> {
        if self.enabled && name == ROOT_ROLE {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        if self.roles.remove(name).is_none() {
            return Err(EtcdError::RoleNotFound);
        }
        batch.delete(Bucket::AuthRoles, name.as_bytes().to_vec());
        let holders: Vec<User> = self
            .users
            .values()
            .filter(|u| u.roles.iter().any(|r| r == name))
            .cloned()
            .collect();
        for mut user in holders {
            user.roles.retain(|r| r != name);
            self.put_user(user, batch);
        }
        self.changed(batch);
        Ok(())
    }

    /// etcd's merge: the permission with the first key at or above the new one is updated in
    /// place when key and range end both match; otherwise the new one is added and the list
    /// re-sorted by key (stably; etcd's sort is stable at the sizes roles have).
    pub fn role_grant_permission(
        &mut self,
        r: &AuthRoleGrantPermissionRequest,
        batch: &mut WriteBatch,
    ) -> Result<(), EtcdError> {
        let perm = r.perm.as_ref().ok_or(EtcdError::PermissionNotGiven)?;
        if !valid_permission_range(&perm.key, &perm.range_end) {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        let mut role = self
            .roles
            .get(&r.name)
            .cloned()
            .ok_or(EtcdError::RoleNotFound)?;
        let perms = &mut role.key_permission;
        let at = perms.partition_point(|p| p.key < perm.key);
        match perms.get_mut(at) {
            Some(p) if p.key == perm.key && p.range_end == perm.range_end => {
                p.perm_type = perm.perm_type;
            }
            _ => {
                perms.push(Permission {
                    perm_type: perm.perm_type,
                    key: perm.key.clone(),
                    range_end: perm.range_end.clone(),
                });
                perms.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        self.put_role(role, batch);
        self.changed(batch);
        Ok(())
    }

    /// Revokes every permission with exactly this key and range end.
    pub fn role_revoke_permission(
        &mut self,
        r: &AuthRoleRevokePermissionRequest,
        batch: &mut WriteBatch,
    ) -> Result<(), EtcdError> {
        let mut role = self
            .roles
            .get(&r.role)
            .cloned()
            .ok_or(EtcdError::RoleNotFound)?;
        let before = role.key_permission.len();
        role.key_permission
            .retain(|p| p.key != r.key || p.range_end != r.range_end);
        if role.key_permission.len() == before {
            return Err(EtcdError::PermissionNotGranted);
        }
        self.put_role(role, batch);
        self.changed(batch);
        Ok(())
    }

    // ---- reads ------------------------------------------------------------------------------

    /// A user's roles, sorted.
    pub fn user_get(&self, name: &str) -> Result<AuthUserGetResponse, EtcdError> {
        let user = self.users.get(name).ok_or(EtcdError::UserNotFound)?;
        Ok(AuthUserGetResponse {
            header: None,
            roles: user.roles.clone(),
        })
    }

    /// Role `root` answers with one permission on every key, whatever it was granted.
    pub fn role_get(&self, name: &str) -> Result<AuthRoleGetResponse, EtcdError> {
        let role = self.roles.get(name).ok_or(EtcdError::RoleNotFound)?;
        let perm = if name == ROOT_ROLE {
            vec![Permission {
                perm_type: permission::Type::Readwrite as i32,
                key: Vec::new(),
                range_end: vec![0],
            }]
        } else {
            role.key_permission.clone()
        };
        Ok(AuthRoleGetResponse { header: None, perm })
    }

    /// User names, sorted.
    pub fn user_list(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Role names, sorted.
    pub fn role_list(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    fn has_role(&self, username: &str, role: &str) -> bool {
        self.users
            .get(username)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    // ---- checks -----------------------------------------------------------------------------

    /// etcd's `isOpPermitted`.
    fn check_op(
        &self,
        ai: Option<&AuthInfo>,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        let Some(ai) = ai.filter(|ai| ai.revision != 0) else {
            return Err(EtcdError::UserEmpty);
        };
        if ai.revision < self.revision {
            return Err(EtcdError::AuthOldRevision);
        }
        let Some(user) = self.users.get(&ai.username) else {
            return Err(EtcdError::PermissionDenied);
        };
        if has_root_role(user) {
            return Ok(());
        }
        match self.perms.get(&ai.username) {
            Some(perms) if perms.permits(key, range_end, access) => Ok(()),
            _ => Err(EtcdError::PermissionDenied),
        }
    }

    /// etcd's `IsRangePermitted`.
    pub fn check_range(
        &self,
        ai: Option<&AuthInfo>,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), EtcdError> {
        self.check_op(ai, key, range_end, Access::Read)
    }

    /// etcd's `IsAdminPermitted`: the user holds role `root`. The revision is not checked.
    pub fn check_admin(&self, ai: Option<&AuthInfo>) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        let Some(ai) = ai.filter(|ai| !ai.username.is_empty()) else {
            return Err(EtcdError::UserEmpty);
        };
        let user = self
            .users
            .get(&ai.username)
            .ok_or(EtcdError::UserNotFound)?;
        if has_root_role(user) {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// etcd's `requireAuthInfo`: any authenticated user.
    fn require_user(&self, ai: Option<&AuthInfo>) -> Result<(), EtcdError> {
        if self.enabled && ai.is_none() {
            return Err(EtcdError::UserEmpty);
        }
        Ok(())
    }

    /// etcd's `checkPutAuth`: write on the key, write on every key of the lease it attaches
    /// (whoever cannot revoke the lease may not extend it), read too for `prev_kv`.
    fn check_put(
        &self,
        ai: Option<&AuthInfo>,
        put: &PutRequest,
        lessor: &Lessor,
    ) -> Result<(), EtcdError> {
        self.check_op(ai, &put.key, &[], Access::Write)?;
        self.check_lease_puts(ai, lessor, LeaseId(put.lease))?;
        if put.prev_kv {
            self.check_op(ai, &put.key, &[], Access::Read)?;
        }
        Ok(())
    }

    /// etcd's `checkLeasePuts`: write on every key of the lease, if it exists.
    fn check_lease_puts(
        &self,
        ai: Option<&AuthInfo>,
        lessor: &Lessor,
        lease: LeaseId,
    ) -> Result<(), EtcdError> {
        let Some(keys) = lessor.keys(lease) else {
            return Ok(());
        };
        if self.check_admin(ai).is_ok() {
            return Ok(());
        }
        keys.iter()
            .try_for_each(|k| self.check_op(ai, k, &[], Access::Write))
    }

    /// etcd's `checkLeaseRenew`, `checkLeaseTimeToLive` and `checkLeaseLeases`: a user, then
    /// admin or `access` on every key of the leases.
    fn check_lease_keys(
        &self,
        ai: Option<&AuthInfo>,
        lessor: &Lessor,
        leases: &[LeaseId],
        access: Access,
    ) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        if ai.is_none() {
            return Err(EtcdError::UserEmpty);
        }
        if self.check_admin(ai).is_ok() {
            return Ok(());
        }
        leases
            .iter()
            .filter_map(|l| lessor.keys(*l))
            .flatten()
            .try_for_each(|k| self.check_op(ai, k, &[], access))
    }

    /// etcd's `checkTxnPermission`: read on every compare, each op as its own request would
    /// be checked, nested txns alike.
    fn check_txn(
        &self,
        ai: Option<&AuthInfo>,
        txn: &TxnRequest,
        lessor: &Lessor,
    ) -> Result<(), EtcdError> {
        for c in &txn.compare {
            self.check_op(ai, &c.key, &c.range_end, Access::Read)?;
        }
        self.check_txn_ops(ai, &txn.success, lessor)?;
        self.check_txn_ops(ai, &txn.failure, lessor)
    }

    fn check_txn_ops(
        &self,
        ai: Option<&AuthInfo>,
        ops: &[RequestOp],
        lessor: &Lessor,
    ) -> Result<(), EtcdError> {
        use request_op::Request as Op;
        for op in ops {
            match &op.request {
                None => {}
                Some(Op::RequestRange(r)) => {
                    self.check_op(ai, &r.key, &r.range_end, Access::Read)?
                }
                Some(Op::RequestPut(p)) => self.check_put(ai, p, lessor)?,
                Some(Op::RequestDeleteRange(d)) => {
                    if d.prev_kv {
                        self.check_op(ai, &d.key, &d.range_end, Access::Read)?;
                    }
                    self.check_op(ai, &d.key, &d.range_end, Access::Write)?;
                }
                Some(Op::RequestTxn(t)) => self.check_txn(ai, t, lessor)?,
            }
        }
        Ok(())
    }

    /// etcd's DeleteRange check at apply: write, then read for `prev_kv`.
    fn check_delete(&self, ai: Option<&AuthInfo>, d: &DeleteRangeRequest) -> Result<(), EtcdError> {
        self.check_op(ai, &d.key, &d.range_end, Access::Write)?;
        if d.prev_kv {
            self.check_op(ai, &d.key, &d.range_end, Access::Read)?;
        }
        Ok(())
    }

    /// The checks etcd makes before a request is proposed or while it is served (v3rpc and
    /// `v3_server.go`): reads (Range, read-only Txn) when served, after any read-index wait;
    /// admin-only operations (Compact, Hash, HashKV, MoveLeader, membership changes, alarm
    /// changes, UserList, RoleList); "any user" (Status, MemberList, alarm list, LeaseGrant,
    /// LeaseRevoke, LeaseTimeToLive); key permissions behind leases (keep-alive: write on the
    /// lease's keys; TimeToLive with keys, Leases: read); UserGet of oneself and RoleGet of
    /// one's own roles. Writes and auth changes pass here: [`AuthStore::check_apply`] checks
    /// them. `AuthStatus` and `Authenticate` are never checked.
    pub fn check_serve(
        &self,
        ai: Option<&AuthInfo>,
        request: &Request,
        lessor: &Lessor,
    ) -> Result<(), EtcdError> {
        use crate::proto::etcdserverpb::alarm_request::AlarmAction;
        if !self.enabled {
            return Ok(());
        }
        match request {
            Request::Range(r) => self.check_op(ai, &r.key, &r.range_end, Access::Read),
            Request::RangeChunk(c) => {
                self.check_op(ai, &c.range.key, &c.range.range_end, Access::Read)
            }
            Request::Txn(t) if txn_is_read_only(t) => self.check_txn(ai, t, lessor),
            Request::Compact(_)
            | Request::Hash(_)
            | Request::HashKv(_)
            | Request::MoveLeader(_)
            | Request::MemberAdd(_)
            | Request::MemberRemove(_)
            | Request::MemberUpdate(_)
            | Request::MemberPromote(_)
            | Request::UserList(_)
            | Request::RoleList(_) => self.check_admin(ai),
            Request::Alarm(a) if a.action == AlarmAction::Get as i32 => self.require_user(ai),
            Request::Alarm(_) => self.check_admin(ai),
            Request::Status(_)
            | Request::MemberList(_)
            | Request::LeaseGrant(_)
            | Request::LeaseRevoke(_) => self.require_user(ai),
            Request::LeaseKeepAlive(k) => {
                self.check_lease_keys(ai, lessor, &[LeaseId(k.id)], Access::Write)
            }
            Request::LeaseTimeToLive(t) => {
                self.require_user(ai)?;
                if !t.keys {
                    return Ok(());
                }
                self.check_lease_keys(ai, lessor, &[LeaseId(t.id)], Access::Read)
            }
            Request::LeaseLeases(_) => {
                self.check_lease_keys(ai, lessor, &lessor.leases(), Access::Read)
            }
            Request::UserGet(r) => match self.check_admin(ai) {
                Err(e) if ai.map_or("", |ai| &ai.username) != r.name => Err(e),
                _ => Ok(()),
            },
            Request::RoleGet(r) => match self.check_admin(ai) {
                Err(e) if !self.has_role(ai.map_or("", |ai| &ai.username), &r.role) => Err(e),
                _ => Ok(()),
            },
            Request::Put(_)
            | Request::DeleteRange(_)
            | Request::Txn(_)
            | Request::AuthEnable(_)
            | Request::AuthDisable(_)
            | Request::AuthStatus(_)
            | Request::Authenticate(_)
            | Request::UserAdd(_)
            | Request::UserDelete(_)
            | Request::UserChangePassword(_)
            | Request::UserGrantRole(_)
            | Request::UserRevokeRole(_)
            | Request::RoleAdd(_)
            | Request::RoleDelete(_)
            | Request::RoleGrantPermission(_)
            | Request::RoleRevokePermission(_) => Ok(()),
        }
    }

    /// The checks etcd's `authApplierV3` makes when a client's entry is applied, on every
    /// member, with the sender its proposer resolved: key permissions of Put, DeleteRange,
    /// Txn and LeaseRevoke, and admin for every auth change but `Authenticate`.
    pub fn check_apply(
        &self,
        ai: Option<&AuthInfo>,
        request: &internal_request::Request,
        lessor: &Lessor,
    ) -> Result<(), EtcdError> {
        use internal_request::Request as R;
        if !self.enabled {
            return Ok(());
        }
        match request {
            R::Put(p) => self.check_put(ai, p, lessor),
            R::DeleteRange(d) => self.check_delete(ai, d),
            R::Txn(t) => self.check_txn(ai, t, lessor),
            R::LeaseRevoke(r) => self.check_lease_puts(ai, lessor, LeaseId(r.id)),
            R::AuthEnable(_)
            | R::AuthDisable(_)
            | R::AuthUserAdd(_)
            | R::AuthUserDelete(_)
            | R::AuthUserChangePassword(_)
            | R::AuthUserGrantRole(_)
            | R::AuthUserRevokeRole(_)
            | R::AuthRoleAdd(_)
            | R::AuthRoleDelete(_)
            | R::AuthRoleGrantPermission(_)
            | R::AuthRoleRevokePermission(_) => self.check_admin(ai),
            R::Authenticate(_)
            | R::Compaction(_)
            | R::LeaseGrant(_)
            | R::LeaseCheckpoint(_)
            | R::Alarm(_)
            | R::MemberUpdate(_)
            | R::MemberAttributes(_) => Ok(()),
        }
    }
}

/// Go's `base64.StdEncoding` as `DecodeString` reads it: standard alphabet, canonical padding,
/// leftover bits in the last character ignored. etcd carries a bcrypt hash as this text in
/// `hashed_password`.
const GO_STD_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Decodes `hashed_password` text; `None` if malformed.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    GO_STD_BASE64.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;
    use crate::proto::etcdserverpb::{Compare, RangeRequest};

    const TTL_MS: u64 = 300_000;

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    struct Fixture {
        store: AuthStore,
        backend: MemBackend,
        batch: WriteBatch,
        lessor: Lessor,
    }

    impl Fixture {
        fn new() -> Fixture {
            let backend = MemBackend::new();
            Fixture {
                store: AuthStore::open(&backend, TTL_MS).unwrap(),
                lessor: Lessor::open(&backend, 5).unwrap(),
                backend,
                batch: WriteBatch::default(),
            }
        }

        fn commit(&mut self) {
            let batch = std::mem::take(&mut self.batch);
            self.backend.write(batch).unwrap();
        }

        fn user(&mut self, name: &str, roles: &[&str]) {
            let add = AuthUserAddRequest {
                name: name.into(),
                hashed_password: b64(format!("hash-of-{name}").as_bytes()),
                ..Default::default()
            };
            self.store.user_add(&add, &mut self.batch).unwrap();
            for role in roles {
                if *role != ROOT_ROLE && !self.store.roles.contains_key(*role) {
                    self.store.role_add(role, &mut self.batch).unwrap();
                }
                let grant = AuthUserGrantRoleRequest {
                    user: name.into(),
                    role: role.to_string(),
                };
                self.store.user_grant_role(&grant, &mut self.batch).unwrap();
            }
        }

        fn grant(&mut self, role: &str, t: permission::Type, key: &[u8], end: &[u8]) {
            let r = AuthRoleGrantPermissionRequest {
                name: role.into(),
                perm: Some(Permission {
                    perm_type: t as i32,
                    key: key.to_vec(),
                    range_end: end.to_vec(),
                }),
            };
            self.store
                .role_grant_permission(&r, &mut self.batch)
                .unwrap();
        }

        fn enable(&mut self) {
            self.user(ROOT_USER, &[ROOT_ROLE]);
            self.store.enable(&mut self.batch).unwrap();
        }

        fn ai(&self, name: &str) -> AuthInfo {
            AuthInfo {
                username: name.into(),
                revision: self.store.revision(),
                pinned: false,
            }
        }

        fn read(&self, name: &str, key: &[u8], end: &[u8]) -> Result<(), EtcdError> {
            self.store.check_range(Some(&self.ai(name)), key, end)
        }

        fn write(&self, name: &str, key: &[u8], end: &[u8]) -> Result<(), EtcdError> {
            self.store
                .check_op(Some(&self.ai(name)), key, end, Access::Write)
        }
    }

    #[test]
    fn base64_round_trips_and_rejects_malformed_text() {
        for text in [
            &b""[..],
            b"a",
            b"ab",
            b"abc",
            b"$2a$10$abcdefghijklmnopqrstuv",
        ] {
            assert_eq!(base64_decode(&b64(text)).as_deref(), Some(text), "{text:?}");
        }
        assert_eq!(base64_decode("YQ"), None);
        assert_eq!(base64_decode("Y=Q="), None);
        assert_eq!(base64_decode("YQ==YQ=="), None);
        assert_eq!(base64_decode("Y!Q="), None);
    }

    #[test]
    fn single_key_range_and_prefix_permissions() {
        use permission::Type::*;
        let mut f = Fixture::new();
        f.user("u", &["r"]);
        f.grant("r", Read, b"k", b"");
        f.grant("r", Readwrite, b"dir/", b"dir0");
        f.grant("r", Write, b"w", b"");
        f.enable();
        assert_eq!(f.read("u", b"k", b""), Ok(()));
        assert_eq!(f.read("u", b"k2", b""), Err(EtcdError::PermissionDenied));
        // A single-key permission covers exactly [k, k\0).
        assert_eq!(f.read("u", b"k", b"k\0"), Ok(()));
        assert_eq!(f.read("u", b"k", b"l"), Err(EtcdError::PermissionDenied));
        assert_eq!(f.read("u", b"dir/a", b""), Ok(()));
        assert_eq!(f.read("u", b"dir/", b"dir0"), Ok(()));
        assert_eq!(f.read("u", b"dir/a", b"dir/b"), Ok(()));
        assert_eq!(
            f.read("u", b"dir", b"dir0"),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(
            f.read("u", b"dir/", b"\0"),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(f.write("u", b"dir/x", b""), Ok(()));
        assert_eq!(f.write("u", b"k", b""), Err(EtcdError::PermissionDenied));
        assert_eq!(f.write("u", b"w", b""), Ok(()));
        assert_eq!(f.read("u", b"w", b""), Err(EtcdError::PermissionDenied));
    }

    #[test]
    fn from_key_permission_is_unbounded() {
        use permission::Type::*;
        let mut f = Fixture::new();
        f.user("u", &["r"]);
        f.grant("r", Read, b"m", b"\0");
        f.enable();
        assert_eq!(f.read("u", b"m", b""), Ok(()));
        assert_eq!(f.read("u", b"zzzz", b""), Ok(()));
        assert_eq!(f.read("u", b"m", b"\0"), Ok(()));
        assert_eq!(f.read("u", b"n", b"\0"), Ok(()));
        assert_eq!(f.read("u", b"l", b""), Err(EtcdError::PermissionDenied));
        assert_eq!(f.read("u", b"a", b"\0"), Err(EtcdError::PermissionDenied));
    }

    #[test]
    fn adjacent_intervals_cover_a_range_and_a_gap_does_not() {
        use permission::Type::*;
        let mut f = Fixture::new();
        f.user("u", &["r1", "r2"]);
        f.grant("r1", Read, b"a", b"c");
        f.grant("r2", Read, b"c", b"e");
        f.grant("r2", Read, b"f", b"h");
        f.enable();
        assert_eq!(f.read("u", b"a", b"e"), Ok(()));
        assert_eq!(f.read("u", b"b", b"d"), Ok(()));
        assert_eq!(f.read("u", b"a", b"g"), Err(EtcdError::PermissionDenied));
        assert_eq!(f.read("u", b"e", b"f"), Err(EtcdError::PermissionDenied));
        assert_eq!(f.read("u", b"f", b"h"), Ok(()));
    }

    #[test]
    fn root_role_may_do_anything_and_nobody_else_is_admin() {
        let mut f = Fixture::new();
        f.user("u", &[]);
        f.user("boss", &[ROOT_ROLE]);
        f.enable();
        assert_eq!(f.read("root", b"any", b"\0"), Ok(()));
        assert_eq!(f.write("boss", b"any", b""), Ok(()));
        assert_eq!(f.store.check_admin(Some(&f.ai("boss"))), Ok(()));
        assert_eq!(
            f.store.check_admin(Some(&f.ai("u"))),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(
            f.store.check_admin(Some(&f.ai("ghost"))),
            Err(EtcdError::UserNotFound)
        );
        assert_eq!(f.store.check_admin(None), Err(EtcdError::UserEmpty));
        assert_eq!(f.read("ghost", b"k", b""), Err(EtcdError::PermissionDenied));
        assert_eq!(
            f.store.check_range(None, b"k", b""),
            Err(EtcdError::UserEmpty)
        );
    }

    #[test]
    fn root_rules_while_enabled() {
        let mut f = Fixture::new();
        let mut batch = WriteBatch::default();
        assert_eq!(f.store.enable(&mut batch), Err(EtcdError::RootUserNotExist));
        f.user(ROOT_USER, &[]);
        assert_eq!(f.store.enable(&mut batch), Err(EtcdError::RootRoleNotExist));
        // Role root may be granted before it exists.
        let grant = AuthUserGrantRoleRequest {
            user: ROOT_USER.into(),
            role: ROOT_ROLE.into(),
        };
        f.store.user_grant_role(&grant, &mut batch).unwrap();
        f.store.enable(&mut batch).unwrap();
        assert_eq!(
            f.store.user_delete(ROOT_USER, &mut batch),
            Err(EtcdError::InvalidAuthMgmt)
        );
        let revoke = AuthUserRevokeRoleRequest {
            name: ROOT_USER.into(),
            role: ROOT_ROLE.into(),
        };
        assert_eq!(
            f.store.user_revoke_role(&revoke, &mut batch),
            Err(EtcdError::InvalidAuthMgmt)
        );
        assert_eq!(
            f.store.role_delete(ROOT_ROLE, &mut batch),
            Err(EtcdError::InvalidAuthMgmt)
        );
        f.store.disable(&mut batch);
        assert_eq!(
            f.store.role_delete(ROOT_ROLE, &mut batch),
            Err(EtcdError::RoleNotFound)
        );
        f.store.user_revoke_role(&revoke, &mut batch).unwrap();
        f.store.user_delete(ROOT_USER, &mut batch).unwrap();
    }

    #[test]
    fn revision_moves_with_every_change_and_only_then() {
        use permission::Type::*;
        let mut f = Fixture::new();
        assert_eq!(f.store.revision(), 1);
        f.user("u", &["r"]); // user add, role add, grant: three changes
        assert_eq!(f.store.revision(), 4);
        let again = AuthUserGrantRoleRequest {
            user: "u".into(),
            role: "r".into(),
        };
        f.store.user_grant_role(&again, &mut f.batch).unwrap();
        assert_eq!(f.store.revision(), 4, "a repeated grant changes nothing");
        assert_eq!(
            f.store.role_add("r", &mut f.batch),
            Err(EtcdError::RoleAlreadyExist)
        );
        assert_eq!(f.store.revision(), 4, "a refused request changes nothing");
        f.grant("r", Read, b"k", b"");
        assert_eq!(f.store.revision(), 5);
        f.enable(); // root user add + grant; enabling itself does not move it
        assert_eq!(f.store.revision(), 7);
        // A request admitted at an older revision is refused.
        let stale = AuthInfo {
            username: "u".into(),
            revision: 6,
            pinned: true,
        };
        assert_eq!(
            f.store.check_range(Some(&stale), b"k", b""),
            Err(EtcdError::AuthOldRevision)
        );
        f.store.disable(&mut f.batch);
        assert_eq!(f.store.revision(), 8);
        f.commit();
        let reopened = AuthStore::open(&f.backend, TTL_MS).unwrap();
        assert_eq!(reopened.revision(), 8);
        assert!(!reopened.is_enabled());
        assert_eq!(reopened.user_list(), vec!["root", "u"]);
        assert_eq!(reopened.role_get("r").unwrap().perm.len(), 1);
    }

    #[test]
    fn grant_permission_merges_by_key_and_range_end() {
        use permission::Type::*;
        let mut f = Fixture::new();
        f.store.role_add("r", &mut f.batch).unwrap();
        f.grant("r", Read, b"b", b"");
        f.grant("r", Read, b"a", b"c");
        f.grant("r", Write, b"b", b"");
        f.grant("r", Read, b"b", b"c");
        let perms = f.store.role_get("r").unwrap().perm;
        let summary: Vec<(i32, &[u8], &[u8])> = perms
            .iter()
            .map(|p| (p.perm_type, &p.key[..], &p.range_end[..]))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Read as i32, &b"a"[..], &b"c"[..]),
                (Write as i32, b"b", b""),
                (Read as i32, b"b", b"c"),
            ]
        );
        let bad = AuthRoleGrantPermissionRequest {
            name: "r".into(),
            perm: Some(Permission {
                perm_type: Read as i32,
                key: b"b".to_vec(),
                range_end: b"a".to_vec(),
            }),
        };
        assert_eq!(
            f.store.role_grant_permission(&bad, &mut f.batch),
            Err(EtcdError::InvalidAuthMgmt)
        );
        let none = AuthRoleGrantPermissionRequest {
            name: "r".into(),
            perm: None,
        };
        assert_eq!(
            f.store.role_grant_permission(&none, &mut f.batch),
            Err(EtcdError::PermissionNotGiven)
        );
        let revoke = AuthRoleRevokePermissionRequest {
            role: "r".into(),
            key: b"b".to_vec(),
            range_end: Vec::new(),
        };
        f.store
            .role_revoke_permission(&revoke, &mut f.batch)
            .unwrap();
        assert_eq!(
            f.store.role_revoke_permission(&revoke, &mut f.batch),
            Err(EtcdError::PermissionNotGranted)
        );
    }

    #[test]
    fn role_delete_revokes_it_from_its_holders() {
        use permission::Type::*;
        let mut f = Fixture::new();
        f.user("u", &["r", "s"]);
        f.grant("r", Read, b"k", b"");
        f.enable();
        assert_eq!(f.read("u", b"k", b""), Ok(()));
        f.store.role_delete("r", &mut f.batch).unwrap();
        assert_eq!(f.store.user_get("u").unwrap().roles, vec!["s"]);
        assert_eq!(f.read("u", b"k", b""), Err(EtcdError::PermissionDenied));
    }

    #[test]
    fn tokens_expire_after_ttl_since_last_use() {
        let mut f = Fixture::new();
        f.user("u", &[]);
        f.enable();
        let auth = |name: &str, prefix: &str| InternalAuthenticateRequest {
            name: name.into(),
            simple_token: prefix.into(),
            auth_revision: f.store.revision(),
            certificate: false,
        };
        let (a, b) = (auth("u", "aaa"), auth("u", "bbb"));
        let token = f.store.authenticate(&a, LogIndex(7), 1_000).unwrap();
        assert_eq!(token, "aaa.7");
        assert_eq!(AuthStore::token_index(&token), Some(LogIndex(7)));
        let at = |ms: u64| 1_000 + ms;
        assert!(f.store.resolve_token(&token, at(TTL_MS)).is_some());
        // Used at TTL: valid for another TTL from then.
        assert!(f.store.resolve_token(&token, at(2 * TTL_MS)).is_some());
        assert!(f.store.resolve_token(&token, at(3 * TTL_MS + 1)).is_none());
        assert!(
            f.store.resolve_token(&token, at(0)).is_none(),
            "forgotten once expired"
        );
        let other = f.store.authenticate(&b, LogIndex(9), at(0)).unwrap();
        f.store.purge_expired_tokens(at(TTL_MS + 1));
        assert_eq!(f.store.token_count(), 0);
        assert!(f.store.resolve_token(&other, at(1)).is_none());
    }

    #[test]
    fn password_change_delete_and_disable_end_tokens() {
        let mut f = Fixture::new();
        f.user("u", &[]);
        f.user("v", &[]);
        f.enable();
        let rev = f.store.revision();
        let login = |store: &mut AuthStore, name: &str, index: u64| {
            let r = InternalAuthenticateRequest {
                name: name.into(),
                simple_token: "t".into(),
                auth_revision: store.revision(),
                certificate: false,
            };
            store.authenticate(&r, LogIndex(index), 0).unwrap()
        };
        let u = login(&mut f.store, "u", 1);
        let v = login(&mut f.store, "v", 2);
        let change = AuthUserChangePasswordRequest {
            name: "u".into(),
            password: String::new(),
            hashed_password: b64(b"new"),
        };
        f.store.user_change_password(&change, &mut f.batch).unwrap();
        assert!(f.store.resolve_token(&u, 0).is_none());
        assert!(f.store.resolve_token(&v, 0).is_some());
        assert_eq!(f.store.password_check("u").unwrap().hash, b"new");
        // The store moved: a password checked before is stale.
        let stale = InternalAuthenticateRequest {
            name: "v".into(),
            simple_token: "t".into(),
            auth_revision: rev,
            certificate: false,
        };
        assert_eq!(
            f.store.authenticate(&stale, LogIndex(3), 0),
            Err(EtcdError::AuthOldRevision)
        );
        let rev = f.store.revision();
        let fresh = InternalAuthenticateRequest {
            auth_revision: rev,
            ..stale
        };
        let v2 = f.store.authenticate(&fresh, LogIndex(4), 0).unwrap();
        f.store.user_delete("v", &mut f.batch).unwrap();
        assert!(f.store.resolve_token(&v, 0).is_none());
        assert!(f.store.resolve_token(&v2, 0).is_none());
        let u2 = login(&mut f.store, "u", 5);
        f.store.disable(&mut f.batch);
        assert!(f.store.resolve_token(&u2, 0).is_none());
    }

    #[test]
    fn no_password_users_cannot_authenticate() {
        let mut f = Fixture::new();
        f.enable();
        let add = AuthUserAddRequest {
            name: "svc".into(),
            options: Some(UserAddOptions { no_password: true }),
            ..Default::default()
        };
        f.store.user_add(&add, &mut f.batch).unwrap();
        assert_eq!(
            f.store.password_check("svc"),
            Err(EtcdError::NoPasswordUser)
        );
        assert_eq!(f.store.password_check("nobody"), Err(EtcdError::AuthFailed));
        let r = InternalAuthenticateRequest {
            name: "svc".into(),
            simple_token: "t".into(),
            auth_revision: f.store.revision(),
            certificate: false,
        };
        assert_eq!(
            f.store.authenticate(&r, LogIndex(1), 0),
            Err(EtcdError::AuthFailed)
        );
        // A client certificate naming the no-password user logs it in, at any revision.
        let by_cert = InternalAuthenticateRequest {
            auth_revision: 0,
            certificate: true,
            ..r
        };
        let token = f.store.authenticate(&by_cert, LogIndex(2), 0).unwrap();
        assert_eq!(
            f.store.resolve_token(&token, 0).map(|ai| ai.username),
            Some("svc".into())
        );
        let nobody = InternalAuthenticateRequest {
            name: "nobody".into(),
            ..by_cert
        };
        assert_eq!(
            f.store.authenticate(&nobody, LogIndex(3), 0),
            Err(EtcdError::AuthFailed)
        );
        let empty = AuthUserAddRequest {
            name: "nohash".into(),
            ..Default::default()
        };
        assert!(matches!(
            f.store.user_add(&empty, &mut f.batch),
            Err(EtcdError::InvalidArgument(_))
        ));
    }

    #[test]
    fn txn_needs_read_for_compares_and_ranges_and_write_for_changes() {
        use permission::Type::*;
        let mut f = Fixture::new();
        f.user("u", &["r"]);
        f.grant("r", Read, b"r", b"");
        f.grant("r", Write, b"w", b"");
        f.enable();
        let ai = f.ai("u");
        let op = |r: request_op::Request| RequestOp { request: Some(r) };
        let get = |k: &[u8]| {
            op(request_op::Request::RequestRange(RangeRequest {
                key: k.to_vec(),
                ..Default::default()
            }))
        };
        let put = |k: &[u8]| {
            op(request_op::Request::RequestPut(PutRequest {
                key: k.to_vec(),
                ..Default::default()
            }))
        };
        let cmp = |k: &[u8]| Compare {
            key: k.to_vec(),
            ..Default::default()
        };
        let txn = |compare, success, failure| TxnRequest {
            compare,
            success,
            failure,
        };
        let check = |t: &TxnRequest| f.store.check_txn(Some(&ai), t, &f.lessor);
        assert_eq!(
            check(&txn(vec![cmp(b"r")], vec![put(b"w")], vec![get(b"r")])),
            Ok(())
        );
        assert_eq!(
            check(&txn(vec![cmp(b"w")], vec![], vec![])),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(
            check(&txn(vec![], vec![], vec![put(b"r")])),
            Err(EtcdError::PermissionDenied)
        );
        let nested = op(request_op::Request::RequestTxn(txn(
            vec![],
            vec![get(b"w")],
            vec![],
        )));
        assert_eq!(
            check(&txn(vec![], vec![nested], vec![])),
            Err(EtcdError::PermissionDenied)
        );
    }
}
