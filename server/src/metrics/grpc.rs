//! go-grpc-prometheus's server families, as etcd exports them and as etcd's Grafana dashboard
//! and alerting rules (etcd-mixin) query them: `grpc_server_started_total`,
//! `grpc_server_handled_total` (with `grpc_code`), `grpc_server_msg_received_total` and
//! `grpc_server_msg_sent_total`, each labelled `grpc_type`, `grpc_service`, `grpc_method`.
//!
//! Like go-grpc-prometheus, every method of every service is registered up front, with every
//! code for `handled`, so each series exists at zero before its first call (rules that divide
//! rates need both sides). The table holds only counters; the client listener counts
//! (`crate::http`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// gRPC's status codes, in order (the index is the code).
pub const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// How a method streams (go-grpc-prometheus's `grpc_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unary,
    ServerStream,
    BidiStream,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Unary => "unary",
            Kind::ServerStream => "server_stream",
            Kind::BidiStream => "bidi_stream",
        }
    }
}

/// etcd's gRPC services and their methods.
const SERVICES: &[(&str, &[(&str, Kind)])] = &[
    (
        "etcdserverpb.KV",
        &[
            ("Range", Kind::Unary),
            ("Put", Kind::Unary),
            ("DeleteRange", Kind::Unary),
            ("Txn", Kind::Unary),
            ("Compact", Kind::Unary),
        ],
    ),
    ("etcdserverpb.Watch", &[("Watch", Kind::BidiStream)]),
    (
        "etcdserverpb.Lease",
        &[
            ("LeaseGrant", Kind::Unary),
            ("LeaseRevoke", Kind::Unary),
            ("LeaseKeepAlive", Kind::BidiStream),
            ("LeaseTimeToLive", Kind::Unary),
            ("LeaseLeases", Kind::Unary),
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            ("MemberAdd", Kind::Unary),
            ("MemberRemove", Kind::Unary),
            ("MemberUpdate", Kind::Unary),
            ("MemberList", Kind::Unary),
            ("MemberPromote", Kind::Unary),
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            ("Alarm", Kind::Unary),
            ("Status", Kind::Unary),
            ("Defragment", Kind::Unary),
            ("Hash", Kind::Unary),
            ("HashKV", Kind::Unary),
            ("Snapshot", Kind::ServerStream),
            ("MoveLeader", Kind::Unary),
            ("Downgrade", Kind::Unary),
        ],
    ),
    (
        "etcdserverpb.Auth",
        &[
            ("AuthEnable", Kind::Unary),
            ("AuthDisable", Kind::Unary),
            ("AuthStatus", Kind::Unary),
            ("Authenticate", Kind::Unary),
            ("UserAdd", Kind::Unary),
            ("UserGet", Kind::Unary),
            ("UserList", Kind::Unary),
            ("UserDelete", Kind::Unary),
            ("UserChangePassword", Kind::Unary),
            ("UserGrantRole", Kind::Unary),
            ("UserRevokeRole", Kind::Unary),
            ("RoleAdd", Kind::Unary),
            ("RoleGet", Kind::Unary),
            ("RoleList", Kind::Unary),
            ("RoleDelete", Kind::Unary),
            ("RoleGrantPermission", Kind::Unary),
            ("RoleRevokePermission", Kind::Unary),
        ],
    ),
    (
        "v3lockpb.Lock",
        &[("Lock", Kind::Unary), ("Unlock", Kind::Unary)],
    ),
    (
        "v3electionpb.Election",
        &[
            ("Campaign", Kind::Unary),
            ("Proclaim", Kind::Unary),
            ("Leader", Kind::Unary),
            ("Observe", Kind::ServerStream),
            ("Resign", Kind::Unary),
        ],
    ),
];

/// One method's counters.
#[derive(Debug)]
pub struct MethodCounters {
    pub service: &'static str,
    pub method: &'static str,
    pub kind: Kind,
    pub started: AtomicU64,
    pub handled: [AtomicU64; 17],
    pub received: AtomicU64,
    pub sent: AtomicU64,
}

impl MethodCounters {
    /// Counts a call as handled with `code` (an unknown code counts as `Unknown`, as grpc-go
    /// would report it).
    pub fn handled(&self, code: u32) {
        let at = usize::try_from(code)
            .ok()
            .filter(|c| *c < CODES.len())
            .unwrap_or(2);
        self.handled[at].fetch_add(1, Ordering::Relaxed);
    }
}

/// Every method's counters.
#[derive(Debug)]
pub struct GrpcMetrics {
    methods: Vec<MethodCounters>,
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        let methods = SERVICES
            .iter()
            .flat_map(|(service, methods)| {
                methods.iter().map(|(method, kind)| MethodCounters {
                    service,
                    method,
                    kind: *kind,
                    started: AtomicU64::new(0),
                    handled: std::array::from_fn(|_| AtomicU64::new(0)),
                    received: AtomicU64::new(0),
                    sent: AtomicU64::new(0),
                })
            })
            .collect();
        GrpcMetrics { methods }
    }
}

impl GrpcMetrics {
    /// Which method a request path (`/service/method`) names, as an index for [`Self::get`].
    pub fn index(&self, path: &str) -> Option<usize> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        self.methods
            .iter()
            .position(|m| m.service == service && m.method == method)
    }

    pub fn get(&self, index: usize) -> &MethodCounters {
        &self.methods[index]
    }

    /// The counters of the method a request path names.
    pub fn method(&self, path: &str) -> Option<&MethodCounters> {
        self.index(path).map(|i| self.get(i))
    }

    pub fn render(&self, out: &mut String) {
        type Counter = fn(&MethodCounters) -> u64;
        let families: [(&str, &str, Counter); 3] = [
            (
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                |m| m.started.load(Ordering::Relaxed),
            ),
            (
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                |m| m.received.load(Ordering::Relaxed),
            ),
            (
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                |m| m.sent.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for m in &self.methods {
                let _ = writeln!(
                    out,
                    "{name}{{grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"}} {}",
                    m.method,
                    m.service,
                    m.kind.label(),
                    value(m)
                );
            }
        }
        let name = "grpc_server_handled_total";
        let _ = writeln!(
            out,
            "# HELP {name} Total number of RPCs completed on the server, regardless of success or failure.\n# TYPE {name} counter"
        );
        for m in &self.methods {
            for (code, count) in CODES.iter().zip(&m.handled) {
                let _ = writeln!(
                    out,
                    "{name}{{grpc_code=\"{code}\",grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"}} {}",
                    m.method,
                    m.service,
                    m.kind.label(),
                    count.load(Ordering::Relaxed)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_at_zero_and_counts_by_code() {
        let metrics = GrpcMetrics::default();
        let put = metrics.method("/etcdserverpb.KV/Put").expect("known");
        put.started.fetch_add(1, Ordering::Relaxed);
        put.handled(0);
        metrics
            .method("/etcdserverpb.Watch/Watch")
            .expect("known")
            .handled(99);
        assert!(metrics.method("/v3/kv/range").is_none());
        assert!(metrics.method("/etcdserverpb.KV/Nope").is_none());
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(text.contains(
            "grpc_server_started_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1"
        ));
        assert!(text.contains(
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1"
        ));
        assert!(text.contains(
            "grpc_server_handled_total{grpc_code=\"Unknown\",grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 1"
        ));
        assert!(text.contains(
            "grpc_server_started_total{grpc_method=\"Snapshot\",grpc_service=\"etcdserverpb.Maintenance\",grpc_type=\"server_stream\"} 0"
        ));
    }
}
