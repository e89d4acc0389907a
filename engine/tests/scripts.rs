//! Scripted interaction tests in the style of etcd-io/raft's `testdata/*.txt`: each file in
//! `engine/testdata/` is a story of commands against an in-memory cluster, each command
//! followed by `----` and its expected output. `REWRITE=1 cargo test --test scripts` rewrites
//! the expected outputs from what the engine does (review the diff before committing).
//!
//! Commands (arguments `key=value` unless noted; `<n>` is a node number):
//!   cluster voters=3 [seed=1] [snapshot-count=N] [catch-up=N] [checkpoint-ms=N]
//!       [quota=BYTES] [progress-notify-ms=N] [token-ttl=SECS]
//!   campaign <n> | tick [count=1] | stabilize | status | elect
//!   put <n> <key> [<value>] [lease=ID] [prev-kv] [ignore-value] [ignore-lease]
//!   put <n> <key> size=N   (the value is N bytes of `x`)
//!   get <n> <key> [end=K|prefix|from] [rev=R] [limit=L] [serializable] [keys-only]
//!       [count-only] [sort=TARGET:ORDER] [min-mod=R] [max-mod=R] [min-create=R] [max-create=R]
//!   del <n> <key> [end=K|prefix|from] [prev-kv]
//!   txn <n> [if=CMP;CMP] [then=OP;OP] [else=OP;OP]
//!       CMP: value(k)=v version(k)>1 create(k)=0 mod(k)<5 lease(k)!=0  (=, !=, >, <)
//!       OP:  put(k,v) put(k,v,lease=ID) get(k) get(k..end) get(k,rev=R) del(k) del(k..end)
//!       `N*CMP` / `N*OP` repeat it N times, the key suffixed with 1..N: 3*put(k,v) is
//!       put(k1,v);put(k2,v);put(k3,v)
//!   Keys: `""` is the empty key, `\0` the single byte 0 (`get 1 \0 from` reads every key).
//!   A value longer than 32 bytes prints as `<N bytes>`. sort=TARGET:ORDER also takes the
//!   enum numbers (sort=9:asc), to send what no name spells.
//!   compact <n> <rev> | hashkv <n> [rev=R] | hash <n> | status-of <n> | alarms <n>
//!   alarm-disarm <n> <member>  (deactivates that member's NOSPACE alarm, as etcdctl does)
//!   defrag <n>  (etcdutl's offline defrag: stop n, give its freed space back, restart it)
//!   lease-grant <n> <ttl> [id=ID] | lease-revoke <n> <id> | keepalive <n> <id>
//!   ttl <n> <id> [keys] | leases <n>
//!   member-add <n> <peer-url> [learner] | member-remove <n> <id|last> | member-list <n>
//!   member-promote <n> <id|last> | start-member <id|last>
//!   transfer-leader <n> <target>
//!   publish <n> <name> <client-url>...  (the member's attributes) | member-show <n> <id>
//!   watch <n> <stream> <key> [end=K|prefix|from] [from-rev=R] [prev-kv] [noput] [nodelete]
//!       [progress-notify] [id=W]
//!   watch-cancel <n> <stream> <id> | watch-progress <n> <stream> | events <n>
//!       Watch responses print as `stream S watch W [created] [canceled] [reason=".."]
//!       [compact-rev=C] rev=H` (H: the header revision), a progress notification as
//!       `stream S watch W progress rev=H`, then one line per event.
//!   submit <n> <command> <args>...  (any client command, sent without waiting; prints the
//!       request id) | answers  (the answers to submitted requests that arrived since)
//!   Auth (the runner plays the server: it "hashes" a password as `bcrypt:<password>`, sends
//!   etcd's base64 of that, and checks passwords against `Node::password_check`):
//!   auth-enable <n> | auth-disable <n> | auth-status <n>
//!   user-add <n> <name> [<password>|no-password] | user-delete <n> <name>
//!   user-passwd <n> <name> <password> | user-get <n> <name> | user-list <n>
//!   user-grant <n> <user> <role> | user-revoke <n> <user> <role>
//!   role-add <n> <name> | role-delete <n> <name> | role-get <n> <name> | role-list <n>
//!   role-grant <n> <role> read|write|readwrite <key> [end=K|prefix|from]
//!   role-revoke <n> <role> <key> [end=K|prefix|from]
//!   authenticate <n> <user> <password>  (prints the token and remembers it for the user)
//!   Any client command, `submit`, `watch` and `check-hashes` take `as=<user>` (send the
//!   user's last token)
//!   or `token=<text>` (send that text). Permissions print as `TYPE key` for one key,
//!   `TYPE key..end` for a range (`..\0`: to the end of the keyspace).
//!   partition <n>... | cut <a> <b> | heal | crash <n> | restart <n>
//!   persist <n> | deliver <from> <to> | drop <from> <to> | log <n>
//!   advance-ms <ms>   (moves the clock without ticking)
//!   tick-until-leader  | check-hashes  (HashKV equal on every live node)

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use strata_engine::proto::authpb::{permission, Permission, UserAddOptions};
use strata_engine::proto::etcdserverpb::{self as pb, compare, range_request, request_op};
use strata_engine::proto::mvccpb::{event::EventType, KeyValue};
use strata_engine::proto::strata::internal::InternalAuthenticateRequest;
use strata_engine::request::{prefix_end, Request, Response};
use strata_engine::testkit::Cluster;
use strata_engine::{Credential, EtcdError, NodeId, RequestId, StreamId};

struct Runner {
    cluster: Option<Cluster>,
    last_member: u64,
    /// Each user's last token, for `as=<user>`.
    tokens: BTreeMap<String, String>,
    /// Requests sent by `submit`, whose answers `answers` prints.
    submitted: BTreeSet<RequestId>,
}

struct Cmd {
    name: String,
    pos: Vec<String>,
    kv: BTreeMap<String, String>,
}

impl Cmd {
    fn parse(line: &str) -> Cmd {
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or_default().to_string();
        let mut pos = Vec::new();
        let mut kv = BTreeMap::new();
        for w in words {
            match w.split_once('=') {
                Some((k, v)) if !k.contains('(') && !k.is_empty() => {
                    kv.insert(k.to_string(), v.to_string());
                }
                _ => pos.push(w.to_string()),
            }
        }
        Cmd { name, pos, kv }
    }

    fn node(&self, i: usize) -> NodeId {
        NodeId(
            self.pos[i]
                .parse()
                .unwrap_or_else(|_| panic!("{}: bad node {}", self.name, self.pos[i])),
        )
    }

    fn flag(&self, f: &str) -> bool {
        self.pos.iter().any(|p| p == f)
    }

    fn num(&self, k: &str, default: i64) -> i64 {
        self.kv
            .get(k)
            .map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{k}={v}")))
    }
}

/// A key as scripts write it: `""` is the empty key, `\0` the single byte 0.
fn key_bytes(text: &str) -> Vec<u8> {
    match text {
        "\"\"" => Vec::new(),
        "\\0" => vec![0],
        _ => text.as_bytes().to_vec(),
    }
}

/// Bytes as scripts print them: long values by their size, the byte 0 as `\0`.
fn show(bytes: &[u8]) -> String {
    if bytes.len() > 32 {
        return format!("<{} bytes>", bytes.len());
    }
    String::from_utf8_lossy(bytes).replace('\0', "\\0")
}

fn range_end(key: &[u8], end: Option<&String>, cmd: &Cmd) -> Vec<u8> {
    if cmd.flag("prefix") {
        return prefix_end(key);
    }
    if cmd.flag("from") {
        return vec![0];
    }
    end.map(|e| key_bytes(e)).unwrap_or_default()
}

fn fmt_kv(kv: &KeyValue) -> String {
    let mut s = format!(
        "{}={} mod={} create={} ver={}",
        show(&kv.key),
        show(&kv.value),
        kv.mod_revision,
        kv.create_revision,
        kv.version
    );
    if kv.lease != 0 {
        write!(s, " lease={}", kv.lease).expect("string");
    }
    s
}

fn fmt_error(e: &EtcdError) -> String {
    format!("error: {e} ({:?})", e.code())
}

fn fmt_response(resp: &Response) -> String {
    let mut s = String::new();
    let rev = |h: &Option<pb::ResponseHeader>| h.as_ref().map_or(0, |h| h.revision);
    match resp {
        Response::Put(r) => {
            write!(s, "ok rev={}", rev(&r.header)).expect("string");
            if let Some(p) = &r.prev_kv {
                write!(s, "\nprev: {}", fmt_kv(p)).expect("string");
            }
        }
        Response::Range(r) => fmt_range(&mut s, r),
        Response::RangeChunk(r) => {
            let decoded = pb::RangeResponse {
                header: r.header,
                kvs: r
                    .kvs
                    .iter()
                    .map(|kv| prost::Message::decode(&kv[..]).expect("a KeyValue"))
                    .collect(),
                more: r.more,
                count: r.count,
            };
            fmt_range(&mut s, &decoded)
        }
        Response::DeleteRange(r) => {
            write!(s, "deleted={} rev={}", r.deleted, rev(&r.header)).expect("string");
            for p in &r.prev_kvs {
                write!(s, "\nprev: {}", fmt_kv(p)).expect("string");
            }
        }
        Response::Txn(r) => {
            write!(s, "succeeded={} rev={}", r.succeeded, rev(&r.header)).expect("string");
            for op in &r.responses {
                match &op.response {
                    Some(pb::response_op::Response::ResponseRange(rr)) => {
                        s.push_str("\n  get: ");
                        let mut inner = String::new();
                        fmt_range(&mut inner, rr);
                        s.push_str(&inner.replace('\n', "\n    "));
                    }
                    Some(pb::response_op::Response::ResponsePut(_)) => s.push_str("\n  put: ok"),
                    Some(pb::response_op::Response::ResponseDeleteRange(d)) => {
                        write!(s, "\n  del: deleted={}", d.deleted).expect("string")
                    }
                    Some(pb::response_op::Response::ResponseTxn(t)) => {
                        write!(s, "\n  txn: succeeded={}", t.succeeded).expect("string")
                    }
                    None => s.push_str("\n  (empty)"),
                }
            }
        }
        Response::Compact(r) => write!(s, "compacted rev={}", rev(&r.header)).expect("string"),
        Response::LeaseGrant(r) => {
            write!(s, "granted id={} ttl={}", r.id, r.ttl).expect("string");
            if !r.error.is_empty() {
                write!(s, " error={}", r.error).expect("string");
            }
        }
        Response::LeaseRevoke(r) => write!(s, "revoked rev={}", rev(&r.header)).expect("string"),
        Response::LeaseKeepAlive(r) => {
            write!(s, "kept-alive id={} ttl={}", r.id, r.ttl).expect("string")
        }
        Response::LeaseTimeToLive(r) => {
            write!(s, "id={} ttl={} granted-ttl={}", r.id, r.ttl, r.granted_ttl).expect("string");
            for k in &r.keys {
                write!(s, " key={}", String::from_utf8_lossy(k)).expect("string");
            }
        }
        Response::LeaseLeases(r) => {
            let ids: Vec<String> = r.leases.iter().map(|l| l.id.to_string()).collect();
            write!(s, "leases=[{}]", ids.join(" ")).expect("string");
        }
        Response::MemberAdd(r) => {
            let m = r.member.as_ref().expect("member");
            write!(
                s,
                "added learner={} peer={}",
                m.is_learner,
                m.peer_ur_ls.join(",")
            )
            .expect("string");
            write!(s, "\n{}", fmt_members(&r.members)).expect("string");
        }
        Response::MemberRemove(r) => {
            write!(s, "removed\n{}", fmt_members(&r.members)).expect("string")
        }
        Response::MemberPromote(r) => {
            write!(s, "promoted\n{}", fmt_members(&r.members)).expect("string")
        }
        Response::MemberUpdate(r) => {
            write!(s, "updated\n{}", fmt_members(&r.members)).expect("string")
        }
        Response::MemberList(r) => s.push_str(&fmt_members(&r.members)),
        Response::Alarm(r) => {
            let alarms: Vec<String> = r
                .alarms
                .iter()
                .map(|a| {
                    let name = pb::AlarmType::try_from(a.alarm)
                        .map_or_else(|_| a.alarm.to_string(), |t| t.as_str_name().to_string());
                    format!("n{}:{name}", a.member_id)
                })
                .collect();
            write!(s, "alarms=[{}]", alarms.join(" ")).expect("string");
        }
        Response::Status(r) => write!(
            s,
            "leader={} term={} applied={} version={} learner={} errors={:?} db-size={} \
             db-in-use={} quota={}",
            r.leader,
            r.raft_term,
            r.raft_applied_index,
            r.version,
            r.is_learner,
            r.errors,
            r.db_size,
            r.db_size_in_use,
            r.db_size_quota
        )
        .expect("string"),
        Response::Hash(r) => write!(s, "hash={:08x}", r.hash).expect("string"),
        Response::HashKv(r) => write!(
            s,
            "hash={:08x} compact={} hash-rev={}",
            r.hash, r.compact_revision, r.hash_revision
        )
        .expect("string"),
        Response::MoveLeader(_) => s.push_str("moved"),
        Response::AuthEnable(_) => s.push_str("auth enabled"),
        Response::AuthDisable(_) => s.push_str("auth disabled"),
        Response::AuthStatus(r) => {
            write!(s, "enabled={} auth-revision={}", r.enabled, r.auth_revision).expect("string")
        }
        Response::Authenticate(r) => write!(s, "token={}", r.token).expect("string"),
        Response::UserAdd(_)
        | Response::UserDelete(_)
        | Response::UserChangePassword(_)
        | Response::UserGrantRole(_)
        | Response::UserRevokeRole(_)
        | Response::RoleAdd(_)
        | Response::RoleDelete(_)
        | Response::RoleGrantPermission(_)
        | Response::RoleRevokePermission(_) => s.push_str("ok"),
        Response::UserGet(r) => write!(s, "roles=[{}]", r.roles.join(" ")).expect("string"),
        Response::UserList(r) => write!(s, "users=[{}]", r.users.join(" ")).expect("string"),
        Response::RoleList(r) => write!(s, "roles=[{}]", r.roles.join(" ")).expect("string"),
        Response::RoleGet(r) => {
            let perms: Vec<String> = r.perm.iter().map(fmt_perm).collect();
            if perms.is_empty() {
                s.push_str("no permissions");
            } else {
                s.push_str(&perms.join("\n"));
            }
        }
    }
    s
}

fn fmt_perm(p: &Permission) -> String {
    let kind = permission::Type::try_from(p.perm_type)
        .map_or_else(|_| p.perm_type.to_string(), |t| t.as_str_name().to_string());
    let key = if p.key.is_empty() {
        "\"\"".to_string()
    } else {
        show(&p.key)
    };
    if p.range_end.is_empty() {
        format!("{kind} {key}")
    } else {
        format!("{kind} {key}..{}", show(&p.range_end))
    }
}

/// The runner's stand-in for bcrypt (the engine never looks inside a hash).
fn fake_bcrypt(password: &str) -> Vec<u8> {
    format!("bcrypt:{password}").into_bytes()
}

/// Base64 (standard, padded), as etcd's server encodes a hash for `hashed_password`.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn fmt_range(s: &mut String, r: &pb::RangeResponse) {
    let rev = r.header.as_ref().map_or(0, |h| h.revision);
    write!(s, "rev={rev} count={} more={}", r.count, r.more).expect("string");
    for kv in &r.kvs {
        write!(s, "\n{}", fmt_kv(kv)).expect("string");
    }
}

fn fmt_members(members: &[pb::Member]) -> String {
    let lines: Vec<String> = members
        .iter()
        .map(|m| {
            format!(
                "member {} learner={} peer={}",
                if m.id < 100 {
                    format!("n{}", m.id)
                } else {
                    "new".to_string()
                },
                m.is_learner,
                m.peer_ur_ls.join(",")
            )
        })
        .collect();
    lines.join("\n")
}

fn fmt_result(r: &Result<Response, EtcdError>) -> String {
    match r {
        Ok(resp) => fmt_response(resp),
        Err(e) => fmt_error(e),
    }
}

fn parse_compare(text: &str) -> pb::Compare {
    let (target, rest) = text.split_once('(').expect("compare like value(k)=v");
    let (key, rest) = rest.split_once(')').expect("closing paren");
    let (op, value) = if let Some(v) = rest.strip_prefix("!=") {
        (compare::CompareResult::NotEqual, v)
    } else if let Some(v) = rest.strip_prefix('=') {
        (compare::CompareResult::Equal, v)
    } else if let Some(v) = rest.strip_prefix('>') {
        (compare::CompareResult::Greater, v)
    } else if let Some(v) = rest.strip_prefix('<') {
        (compare::CompareResult::Less, v)
    } else {
        panic!("bad compare operator in {text}")
    };
    let (key, end) = match key.split_once("..") {
        Some((k, e)) => (k, key_bytes(e)),
        None => (key, Vec::new()),
    };
    let num = || {
        value
            .parse::<i64>()
            .unwrap_or_else(|_| panic!("number in {text}"))
    };
    let (t, union) = match target {
        "value" => (
            compare::CompareTarget::Value,
            compare::TargetUnion::Value(value.as_bytes().to_vec()),
        ),
        "version" => (
            compare::CompareTarget::Version,
            compare::TargetUnion::Version(num()),
        ),
        "create" => (
            compare::CompareTarget::Create,
            compare::TargetUnion::CreateRevision(num()),
        ),
        "mod" => (
            compare::CompareTarget::Mod,
            compare::TargetUnion::ModRevision(num()),
        ),
        "lease" => (
            compare::CompareTarget::Lease,
            compare::TargetUnion::Lease(num()),
        ),
        other => panic!("unknown compare target {other}"),
    };
    pb::Compare {
        result: op as i32,
        target: t as i32,
        key: key_bytes(key),
        range_end: end,
        target_union: Some(union),
    }
}

fn parse_op(text: &str) -> pb::RequestOp {
    let (name, rest) = text.split_once('(').expect("op like put(k,v)");
    let args = rest.strip_suffix(')').expect("closing paren");
    let request = match name {
        "put" => {
            let mut parts = args.split(',');
            let k = parts.next().expect("put(k,v)");
            let v = parts.next().expect("put(k,v)");
            let lease = parts.next().map_or(0, |l| {
                l.strip_prefix("lease=")
                    .and_then(|id| id.parse().ok())
                    .unwrap_or_else(|| panic!("put(k,v,lease=ID) in {text}"))
            });
            request_op::Request::RequestPut(pb::PutRequest {
                key: key_bytes(k),
                value: v.as_bytes().to_vec(),
                lease,
                ..Default::default()
            })
        }
        "get" => {
            let (span, revision) = match args.split_once(",rev=") {
                Some((span, rev)) => (span, rev.parse().expect("get(k,rev=R)")),
                None => (args, 0),
            };
            let (k, end) = span.split_once("..").map_or((span, ""), |(k, e)| (k, e));
            request_op::Request::RequestRange(pb::RangeRequest {
                key: key_bytes(k),
                range_end: key_bytes(end),
                revision,
                ..Default::default()
            })
        }
        "del" => {
            let (k, end) = args.split_once("..").map_or((args, ""), |(k, e)| (k, e));
            request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: key_bytes(k),
                range_end: key_bytes(end),
                ..Default::default()
            })
        }
        other => panic!("unknown txn op {other}"),
    };
    pb::RequestOp {
        request: Some(request),
    }
}

/// The items of a `;`-separated list, `N*ITEM` expanded to N copies of ITEM whose key (the
/// text after the first `(`) is suffixed with 1..N.
fn split_list(s: Option<&String>) -> Vec<String> {
    let mut items = Vec::new();
    for item in s.into_iter().flat_map(|s| s.split(';')) {
        let repeated = item
            .split_once('*')
            .and_then(|(n, rest)| Some((n.parse::<usize>().ok()?, rest)));
        match repeated {
            None if item.is_empty() => {}
            None => items.push(item.to_string()),
            Some((n, rest)) => {
                let (name, args) = rest.split_once('(').expect("N*name(key...)");
                let key_len = args.find([',', ')', '.']).unwrap_or(args.len());
                let (key, tail) = args.split_at(key_len);
                items.extend((1..=n).map(|i| format!("{name}({key}{i}{tail}")));
            }
        }
    }
    items
}

fn sort_option(spec: &str) -> (i32, i32) {
    let (target, order) = spec.split_once(':').unwrap_or((spec, "asc"));
    let target = match target {
        "key" => range_request::SortTarget::Key as i32,
        "version" => range_request::SortTarget::Version as i32,
        "create" => range_request::SortTarget::Create as i32,
        "mod" => range_request::SortTarget::Mod as i32,
        "value" => range_request::SortTarget::Value as i32,
        other => other
            .parse()
            .unwrap_or_else(|_| panic!("sort target {other}")),
    };
    let order = match order {
        "none" => range_request::SortOrder::None as i32,
        "asc" => range_request::SortOrder::Ascend as i32,
        "desc" => range_request::SortOrder::Descend as i32,
        other => other
            .parse()
            .unwrap_or_else(|_| panic!("sort order {other}")),
    };
    (order, target)
}

impl Runner {
    fn c(&mut self) -> &mut Cluster {
        self.cluster
            .as_mut()
            .expect("script must start with `cluster`")
    }

    fn member_arg(&self, s: &str) -> u64 {
        if s == "last" {
            self.last_member
        } else {
            s.parse().unwrap_or_else(|_| panic!("member id {s}"))
        }
    }

    fn run(&mut self, line: &str) -> String {
        let cmd = Cmd::parse(line);
        match cmd.name.as_str() {
            "cluster" => {
                let voters = cmd.num("voters", 3) as u64;
                let seed = cmd.num("seed", 1) as u64;
                let settings = Settings {
                    snapshot_count: cmd.num("snapshot-count", 0) as u64,
                    catch_up: cmd.num("catch-up", -1),
                    checkpoint_ms: cmd.num("checkpoint-ms", 0) as u64,
                    quota_bytes: cmd.num("quota", 0) as u64,
                    progress_notify_ms: cmd.num("progress-notify-ms", 0) as u64,
                    token_ttl_secs: cmd.num("token-ttl", 0) as u64,
                };
                CONFIG.with(|c| c.set(settings));
                self.cluster = Some(Cluster::with_config(voters, seed, configure));
                "ok".into()
            }
            "campaign" => {
                let n = cmd.node(0);
                self.c().step(n, strata_engine::node::Input::Campaign);
                "ok".into()
            }
            "publish" => {
                let n = cmd.node(0);
                let input = strata_engine::node::Input::Publish {
                    name: cmd.pos[1].clone(),
                    client_urls: cmd.pos[2..].to_vec(),
                };
                self.c().step(n, input);
                "ok".into()
            }
            "member-show" => {
                let (n, id) = (cmd.node(0), cmd.node(1));
                let req = Request::MemberList(pb::MemberListRequest {
                    linearizable: false,
                });
                match self.c().call(n, req) {
                    Ok(Response::MemberList(r)) => match r.members.iter().find(|m| m.id == id.0) {
                        Some(m) => format!(
                            "name={} peer={} client={}",
                            m.name,
                            m.peer_ur_ls.join(","),
                            m.client_ur_ls.join(",")
                        ),
                        None => "no such member".into(),
                    },
                    other => format!("unexpected: {other:?}"),
                }
            }
            "tick" => {
                // Time passes on a working network: each tick, then everything deliverable.
                for _ in 0..cmd.num("count", 1) {
                    self.c().tick();
                    self.c().stabilize();
                }
                "ok".into()
            }
            "stabilize" => {
                self.c().stabilize();
                "ok".into()
            }
            "elect" | "tick-until-leader" => match self.c().elect(500) {
                Some(l) => format!("leader n{l}"),
                None => "no leader".into(),
            },
            "status" => self.c().status_lines().trim_end().to_string(),
            "advance-ms" => {
                let ms = cmd.pos[0].parse::<u64>().expect("ms");
                self.c().now_ms += ms;
                "ok".into()
            }
            "partition" => {
                let side: Vec<NodeId> = (0..cmd.pos.len()).map(|i| cmd.node(i)).collect();
                self.c().partition(&side);
                "ok".into()
            }
            "cut" => {
                let (a, b) = (cmd.node(0), cmd.node(1));
                self.c().cut(a, b);
                "ok".into()
            }
            "heal" => {
                self.c().heal();
                "ok".into()
            }
            "crash" => {
                let n = cmd.node(0);
                self.c().crash(n);
                "ok".into()
            }
            "restart" => {
                let n = cmd.node(0);
                self.c().restart(n);
                "ok".into()
            }
            "defrag" => {
                let n = cmd.node(0);
                self.c().defrag_offline(n);
                "ok".into()
            }
            "persist" => {
                let n = cmd.node(0);
                self.c().persist(n);
                "ok".into()
            }
            "deliver" => {
                let (a, b) = (cmd.node(0), cmd.node(1));
                let mut count = 0;
                while self.c().deliver_one(a, b) {
                    count += 1;
                }
                format!("delivered {count}")
            }
            "drop" => {
                let (a, b) = (cmd.node(0), cmd.node(1));
                self.c().cut(a, b);
                let mut count = 0;
                while self.c().deliver_one(a, b) {
                    count += 1;
                }
                self.c().uncut(a, b);
                format!("dropped {count}")
            }
            "log" => {
                let n = cmd.node(0);
                let node = self.c().node(n);
                let entries = node.log_entries(strata_engine::LogIndex(0));
                match (entries.first(), entries.last()) {
                    (Some(first), Some(last)) => format!(
                        "entries {}..{} (terms {}..{})",
                        first.index, last.index, first.term, last.term
                    ),
                    _ => "no entries".into(),
                }
            }
            "submit" => {
                let n = cmd.node(0);
                let mut pos = vec![cmd.pos[0].clone()];
                pos.extend_from_slice(&cmd.pos[2..]);
                let inner = Cmd {
                    name: cmd.pos[1].clone(),
                    pos,
                    kv: cmd.kv.clone(),
                };
                let req = self.request(&inner);
                let token = self.token(&cmd);
                let id = self.c().submit_as(n, req, token);
                self.submitted.insert(id);
                format!("request {id}")
            }
            "authenticate" => self.authenticate(&cmd),
            "answers" => {
                let answers = std::mem::take(&mut self.c().answers);
                let lines: Vec<String> = answers
                    .iter()
                    .filter(|a| self.submitted.contains(&a.id))
                    .map(|a| format!("n{} request {}: {}", a.node, a.id, fmt_result(&a.result)))
                    .collect();
                if lines.is_empty() {
                    "none".into()
                } else {
                    lines.join("\n")
                }
            }
            "start-member" => {
                let id = self.member_arg(&cmd.pos[0]);
                self.c().add_node(NodeId(id), Default::default());
                "ok".into()
            }
            "watch" => {
                let n = cmd.node(0);
                let stream = StreamId(cmd.pos[1].parse().expect("stream"));
                let key = key_bytes(&cmd.pos[2]);
                let mut filters = Vec::new();
                if cmd.flag("noput") {
                    filters.push(pb::watch_create_request::FilterType::Noput as i32);
                }
                if cmd.flag("nodelete") {
                    filters.push(pb::watch_create_request::FilterType::Nodelete as i32);
                }
                let req = pb::WatchCreateRequest {
                    key: key.clone(),
                    range_end: range_end(&key, cmd.kv.get("end"), &cmd),
                    start_revision: cmd.num("from-rev", 0),
                    progress_notify: cmd.flag("progress-notify"),
                    filters,
                    prev_kv: cmd.flag("prev-kv"),
                    watch_id: cmd.num("id", 0),
                    fragment: false,
                };
                let token = self.token(&cmd);
                self.c().watch_as(n, stream, req, token);
                self.c().stabilize();
                self.events(n)
            }
            "watch-cancel" => {
                let n = cmd.node(0);
                let stream = StreamId(cmd.pos[1].parse().expect("stream"));
                let watch_id = strata_engine::WatchId(cmd.pos[2].parse().expect("watch id"));
                self.c().step(
                    n,
                    strata_engine::node::Input::WatchCancel { stream, watch_id },
                );
                self.events(n)
            }
            "watch-progress" => {
                let n = cmd.node(0);
                let stream = StreamId(cmd.pos[1].parse().expect("stream"));
                self.c()
                    .step(n, strata_engine::node::Input::WatchProgress { stream });
                self.events(n)
            }
            "events" => {
                let n = cmd.node(0);
                self.events(n)
            }
            "check-hashes" => {
                let c = self.c();
                let ids: Vec<NodeId> = c.ids().into_iter().filter(|id| c.is_up(*id)).collect();
                let mut lines = Vec::new();
                let token = self.token(&cmd);
                let c = self.c();
                for id in ids {
                    let req = Request::HashKv(pb::HashKvRequest { revision: 0 });
                    let r = c.call_as(id, req, token.clone());
                    lines.push(format!("n{id}: {}", fmt_result(&r)));
                }
                lines.join("\n")
            }
            _ => self.client_call(&cmd),
        }
    }

    fn events(&mut self, n: NodeId) -> String {
        let outs: Vec<_> = self
            .c()
            .watch_outputs
            .iter()
            .filter(|(id, _)| *id == n)
            .cloned()
            .collect();
        self.c().watch_outputs.retain(|(id, _)| *id != n);
        let mut lines = Vec::new();
        for (_, out) in outs {
            let r = &out.response;
            let mut s = format!("stream {} watch {}", out.stream, r.watch_id);
            if r.created {
                s.push_str(" created");
            }
            if r.canceled {
                s.push_str(" canceled");
            }
            if !r.cancel_reason.is_empty() {
                write!(s, " reason={:?}", r.cancel_reason).expect("string");
            }
            if r.compact_revision != 0 {
                write!(s, " compact-rev={}", r.compact_revision).expect("string");
            }
            if r.events.is_empty() && !r.created && !r.canceled {
                s.push_str(" progress");
            }
            write!(s, " rev={}", r.header.as_ref().map_or(0, |h| h.revision)).expect("string");
            for ev in &r.events {
                let kind = if ev.r#type == EventType::Put as i32 {
                    "PUT"
                } else {
                    "DELETE"
                };
                let kv = ev.kv.as_ref().expect("event kv");
                write!(s, "\n  {kind} {}", fmt_kv(kv)).expect("string");
                if let Some(p) = &ev.prev_kv {
                    write!(s, " (prev {})", fmt_kv(p)).expect("string");
                }
            }
            lines.push(s);
        }
        if lines.is_empty() {
            "no events".into()
        } else {
            lines.join("\n")
        }
    }

    /// The credential a command carries: `cert=<user>` (a user the server verified, as a
    /// client certificate's CN names one), `signed=<user>@<auth revision>` (a verified JWT's
    /// claims), `cred=rejected` (a token the server could not verify), or a token.
    fn credential(&self, cmd: &Cmd) -> Option<Credential> {
        if let Some(user) = cmd.kv.get("cert") {
            return Some(Credential::User {
                username: user.clone(),
                revision: None,
            });
        }
        if let Some(claims) = cmd.kv.get("signed") {
            let (user, rev) = claims.split_once('@').expect("signed=<user>@<revision>");
            return Some(Credential::User {
                username: user.to_string(),
                revision: Some(rev.parse().expect("revision")),
            });
        }
        if cmd.kv.get("cred").is_some_and(|c| c == "rejected") {
            return Some(Credential::Rejected);
        }
        self.token(cmd).map(Credential::SimpleToken)
    }

    /// The token `as=<user>` or `token=<text>` names, if any.
    fn token(&self, cmd: &Cmd) -> Option<String> {
        if let Some(user) = cmd.kv.get("as") {
            let token = self.tokens.get(user);
            return Some(
                token
                    .unwrap_or_else(|| panic!("{user} never authenticated"))
                    .clone(),
            );
        }
        cmd.kv.get("token").cloned()
    }

    /// What etcd's server does for `Authenticate`: check the password against the stored
    /// hash, propose, and start over if the auth store moved in between.
    fn authenticate(&mut self, cmd: &Cmd) -> String {
        let n = cmd.node(0);
        let (user, password) = (cmd.pos[1].clone(), cmd.pos[2].clone());
        for _ in 0..3 {
            let check = match self.c().node(n).password_check(&user) {
                Ok(check) => check,
                Err(e) => return fmt_error(&e),
            };
            if check.hash != fake_bcrypt(&password) {
                return fmt_error(&EtcdError::AuthFailed);
            }
            let req = Request::Authenticate(InternalAuthenticateRequest {
                name: user.clone(),
                simple_token: user.clone(),
                auth_revision: check.auth_revision,
                certificate: false,
            });
            match self.c().call(n, req) {
                Err(EtcdError::AuthOldRevision) => continue,
                Ok(Response::Authenticate(r)) => {
                    self.tokens.insert(user, r.token.clone());
                    return format!("token={}", r.token);
                }
                other => return fmt_result(&other),
            }
        }
        panic!("authenticate {user}: the auth store kept moving")
    }

    fn client_call(&mut self, cmd: &Cmd) -> String {
        let n = cmd.node(0);
        let request = self.request(cmd);
        let credential = self.credential(cmd);
        let result = self.c().call_with(n, request, credential);
        if let Ok(Response::MemberAdd(r)) = &result {
            self.last_member = r.member.as_ref().map_or(0, |m| m.id);
        }
        fmt_result(&result)
    }

    /// The request a client command sends.
    fn request(&self, cmd: &Cmd) -> Request {
        let arg = |i: usize| cmd.pos.get(i).cloned().unwrap_or_default();
        match cmd.name.as_str() {
            "put" => Request::Put(pb::PutRequest {
                key: key_bytes(&arg(1)),
                value: match cmd.kv.get("size") {
                    Some(n) => vec![b'x'; n.parse().expect("size=N")],
                    // The value is optional (with ignore-value): a flag is not a value.
                    None => cmd
                        .pos
                        .get(2)
                        .filter(|v| {
                            !["prev-kv", "ignore-value", "ignore-lease"].contains(&v.as_str())
                        })
                        .map_or_else(Vec::new, |v| v.as_bytes().to_vec()),
                },
                lease: cmd.num("lease", 0),
                prev_kv: cmd.flag("prev-kv"),
                ignore_value: cmd.flag("ignore-value"),
                ignore_lease: cmd.flag("ignore-lease"),
            }),
            "get" => {
                let key = key_bytes(&arg(1));
                let (sort_order, sort_target) =
                    cmd.kv.get("sort").map_or((0, 0), |s| sort_option(s));
                Request::Range(pb::RangeRequest {
                    range_end: range_end(&key, cmd.kv.get("end"), cmd),
                    key,
                    limit: cmd.num("limit", 0),
                    revision: cmd.num("rev", 0),
                    sort_order,
                    sort_target,
                    serializable: cmd.flag("serializable"),
                    keys_only: cmd.flag("keys-only"),
                    count_only: cmd.flag("count-only"),
                    min_mod_revision: cmd.num("min-mod", 0),
                    max_mod_revision: cmd.num("max-mod", 0),
                    min_create_revision: cmd.num("min-create", 0),
                    max_create_revision: cmd.num("max-create", 0),
                })
            }
            "del" => {
                let key = key_bytes(&arg(1));
                Request::DeleteRange(pb::DeleteRangeRequest {
                    range_end: range_end(&key, cmd.kv.get("end"), cmd),
                    key,
                    prev_kv: cmd.flag("prev-kv"),
                })
            }
            "txn" => Request::Txn(pb::TxnRequest {
                compare: split_list(cmd.kv.get("if"))
                    .into_iter()
                    .map(|c| parse_compare(&c))
                    .collect(),
                success: split_list(cmd.kv.get("then"))
                    .into_iter()
                    .map(|o| parse_op(&o))
                    .collect(),
                failure: split_list(cmd.kv.get("else"))
                    .into_iter()
                    .map(|o| parse_op(&o))
                    .collect(),
            }),
            "compact" => Request::Compact(pb::CompactionRequest {
                revision: arg(1).parse().expect("revision"),
                physical: true,
            }),
            "hashkv" => Request::HashKv(pb::HashKvRequest {
                revision: cmd.num("rev", 0),
            }),
            "hash" => Request::Hash(pb::HashRequest {}),
            "status-of" => Request::Status(pb::StatusRequest {}),
            "alarms" => Request::Alarm(pb::AlarmRequest {
                action: pb::alarm_request::AlarmAction::Get as i32,
                member_id: 0,
                alarm: pb::AlarmType::None as i32,
            }),
            "alarm-disarm" => Request::Alarm(pb::AlarmRequest {
                action: pb::alarm_request::AlarmAction::Deactivate as i32,
                member_id: arg(1).parse().expect("member id"),
                alarm: pb::AlarmType::Nospace as i32,
            }),
            "lease-grant" => Request::LeaseGrant(pb::LeaseGrantRequest {
                ttl: arg(1).parse().expect("ttl"),
                id: cmd.num("id", 0),
            }),
            "lease-revoke" => Request::LeaseRevoke(pb::LeaseRevokeRequest {
                id: arg(1).parse().expect("id"),
            }),
            "keepalive" => Request::LeaseKeepAlive(pb::LeaseKeepAliveRequest {
                id: arg(1).parse().expect("id"),
            }),
            "ttl" => Request::LeaseTimeToLive(pb::LeaseTimeToLiveRequest {
                id: arg(1).parse().expect("id"),
                keys: cmd.flag("keys"),
            }),
            "leases" => Request::LeaseLeases(pb::LeaseLeasesRequest {}),
            "member-add" => Request::MemberAdd(pb::MemberAddRequest {
                peer_ur_ls: vec![arg(1)],
                is_learner: cmd.flag("learner"),
            }),
            "member-remove" => Request::MemberRemove(pb::MemberRemoveRequest {
                id: self.member_arg(&arg(1)),
            }),
            "member-promote" => Request::MemberPromote(pb::MemberPromoteRequest {
                id: self.member_arg(&arg(1)),
            }),
            "member-list" => Request::MemberList(pb::MemberListRequest { linearizable: true }),
            "transfer-leader" => Request::MoveLeader(pb::MoveLeaderRequest {
                target_id: arg(1).parse().expect("target"),
            }),
            "auth-enable" => Request::AuthEnable(pb::AuthEnableRequest {}),
            "auth-disable" => Request::AuthDisable(pb::AuthDisableRequest {}),
            "auth-status" => Request::AuthStatus(pb::AuthStatusRequest {}),
            "user-add" => {
                let no_password = cmd.flag("no-password");
                Request::UserAdd(pb::AuthUserAddRequest {
                    name: arg(1),
                    password: String::new(),
                    options: Some(UserAddOptions { no_password }),
                    hashed_password: if no_password {
                        String::new()
                    } else {
                        base64(&fake_bcrypt(&arg(2)))
                    },
                })
            }
            "user-delete" => Request::UserDelete(pb::AuthUserDeleteRequest { name: arg(1) }),
            "user-passwd" => Request::UserChangePassword(pb::AuthUserChangePasswordRequest {
                name: arg(1),
                password: String::new(),
                hashed_password: base64(&fake_bcrypt(&arg(2))),
            }),
            "user-get" => Request::UserGet(pb::AuthUserGetRequest { name: arg(1) }),
            "user-list" => Request::UserList(pb::AuthUserListRequest {}),
            "user-grant" => Request::UserGrantRole(pb::AuthUserGrantRoleRequest {
                user: arg(1),
                role: arg(2),
            }),
            "user-revoke" => Request::UserRevokeRole(pb::AuthUserRevokeRoleRequest {
                name: arg(1),
                role: arg(2),
            }),
            "role-add" => Request::RoleAdd(pb::AuthRoleAddRequest { name: arg(1) }),
            "role-delete" => Request::RoleDelete(pb::AuthRoleDeleteRequest { role: arg(1) }),
            "role-get" => Request::RoleGet(pb::AuthRoleGetRequest { role: arg(1) }),
            "role-list" => Request::RoleList(pb::AuthRoleListRequest {}),
            "role-grant" => {
                let perm_type = match arg(2).as_str() {
                    "read" => permission::Type::Read,
                    "write" => permission::Type::Write,
                    "readwrite" => permission::Type::Readwrite,
                    other => panic!("permission type {other}"),
                };
                let key = key_bytes(&arg(3));
                Request::RoleGrantPermission(pb::AuthRoleGrantPermissionRequest {
                    name: arg(1),
                    perm: Some(Permission {
                        perm_type: perm_type as i32,
                        range_end: range_end(&key, cmd.kv.get("end"), cmd),
                        key,
                    }),
                })
            }
            "role-revoke" => {
                let key = key_bytes(&arg(2));
                Request::RoleRevokePermission(pb::AuthRoleRevokePermissionRequest {
                    role: arg(1),
                    range_end: range_end(&key, cmd.kv.get("end"), cmd),
                    key,
                })
            }
            other => panic!("unknown command {other}"),
        }
    }
}

/// The `cluster` options that change node configs; 0 (or -1 for `catch_up`) keeps the default.
#[derive(Clone, Copy)]
struct Settings {
    snapshot_count: u64,
    catch_up: i64,
    checkpoint_ms: u64,
    quota_bytes: u64,
    progress_notify_ms: u64,
    token_ttl_secs: u64,
}

thread_local! {
    static CONFIG: std::cell::Cell<Settings> = const {
        std::cell::Cell::new(Settings {
            snapshot_count: 0,
            catch_up: -1,
            checkpoint_ms: 0,
            quota_bytes: 0,
            progress_notify_ms: 0,
            token_ttl_secs: 0,
        })
    };
}

fn configure(config: &mut strata_engine::node::Config) {
    let s = CONFIG.with(|c| c.get());
    let limits = &mut config.limits;
    if s.snapshot_count > 0 {
        limits.snapshot_count = s.snapshot_count;
    }
    if s.catch_up >= 0 {
        limits.snapshot_catch_up_entries = s.catch_up as u64;
    }
    if s.checkpoint_ms > 0 {
        limits.lease_checkpoint_interval_ms = s.checkpoint_ms;
    }
    if s.quota_bytes > 0 {
        limits.quota_backend_bytes = s.quota_bytes;
    }
    if s.progress_notify_ms > 0 {
        limits.progress_notify_interval_ms = s.progress_notify_ms;
    }
    if s.token_ttl_secs > 0 {
        config.auth_token_ttl_secs = s.token_ttl_secs;
    }
}

/// Runs one script; returns the text with outputs as the engine produced them.
fn run_script(text: &str) -> String {
    let mut runner = Runner {
        cluster: None,
        last_member: 0,
        tokens: BTreeMap::new(),
        submitted: BTreeSet::new(),
    };
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        out.push_str(line);
        out.push('\n');
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        assert_eq!(
            lines.next(),
            Some("----"),
            "command `{trimmed}` must be followed by ----"
        );
        // Skip the old expected output: every line up to a blank line or the end.
        while let Some(l) = lines.peek() {
            if l.trim().is_empty() {
                break;
            }
            lines.next();
        }
        let result = runner.run(trimmed);
        out.push_str("----\n");
        out.push_str(result.trim_end());
        out.push('\n');
    }
    out
}

#[test]
fn scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let rewrite = std::env::var_os("REWRITE").is_some();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("engine/testdata")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scripts in {}", dir.display());
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read script");
        let got = match std::panic::catch_unwind(|| run_script(&text)) {
            Ok(got) => got,
            Err(_) => {
                failures.push(format!("{}: panicked (see above)", path.display()));
                continue;
            }
        };
        if got != text {
            if rewrite {
                std::fs::write(path, &got).expect("rewrite script");
            } else {
                failures.push(format!("{}:\n{}", path.display(), diff(&text, &got)));
            }
        }
    }
    println!("{} scripts run", files.len());
    assert!(
        failures.is_empty(),
        "scripts differ (REWRITE=1 to accept):\n{}",
        failures.join("\n")
    );
}

fn diff(want: &str, got: &str) -> String {
    let mut s = String::new();
    for (i, (w, g)) in want.lines().zip(got.lines()).enumerate() {
        if w != g {
            writeln!(s, "line {}:\n  want: {w}\n  got:  {g}", i + 1).expect("string");
            break;
        }
    }
    if s.is_empty() {
        writeln!(
            s,
            "lengths differ: want {} lines, got {}",
            want.lines().count(),
            got.lines().count()
        )
        .expect("string");
    }
    s
}
