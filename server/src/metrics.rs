//! The member's Prometheus metrics, under etcd's family names so existing dashboards and
//! alerts keep working: `etcd_server_has_leader`, `etcd_server_leader_changes_seen_total`,
//! `etcd_server_proposals_{committed,applied,pending,failed}_total`,
//! `etcd_disk_wal_fsync_duration_seconds`, `etcd_disk_backend_commit_duration_seconds`,
//! `etcd_mvcc_db_total_size_in_bytes`, `etcd_server_quota_backend_bytes`, the client port's
//! gRPC traffic (`grpc`, `observe`), the standard `process_*` families (`process`), and a few
//! more. Counters are plain atomics; the text format is rendered on demand for `/metrics`.

pub mod grpc;
#[cfg(not(madsim))]
pub mod observe;
mod process;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A latency histogram over fixed bucket bounds (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// etcd's disk latency buckets: 0.001 s doubling to ~8 s.
const DISK_BOUNDS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// etcd's peer round-trip buckets: 0.1 ms doubling, 16 of them (to ~3.3 s).
const PEER_RTT_BOUNDS: [f64; 16] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192, 1.6384, 3.2768,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram::with_bounds(&DISK_BOUNDS)
    }
}

impl Histogram {
    pub fn with_bounds(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(out, name, "");
    }

    /// The series of one label set (`labels`: `To="…",` or empty).
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let plain = labels.trim_end_matches(',');
        let braces = if plain.is_empty() {
            String::new()
        } else {
            format!("{{{plain}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {sum}\n{name}_count{braces} {count}"
        );
    }
}

/// Round trips to each peer (`etcd_network_peer_round_trip_time_seconds{To}`), measured by
/// the driver from a heartbeat to its response.
#[derive(Debug, Default)]
pub struct PeerRoundTrips {
    peers: std::sync::Mutex<std::collections::BTreeMap<u64, Histogram>>,
}

impl PeerRoundTrips {
    pub fn observe(&self, peer: u64, d: Duration) {
        self.peers
            .lock()
            .expect("peer round trips lock")
            .entry(peer)
            .or_insert_with(|| Histogram::with_bounds(&PEER_RTT_BOUNDS))
            .observe(d);
    }

    fn render(&self, out: &mut String) {
        let name = "etcd_network_peer_round_trip_time_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Round-Trip-Time histogram between peers\n# TYPE {name} histogram"
        );
        for (peer, histogram) in self.peers.lock().expect("peer round trips lock").iter() {
            histogram.render_series(out, name, &format!("To=\"{peer:x}\","));
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub has_leader: AtomicU64,
    pub is_leader: AtomicU64,
    pub leader_changes: AtomicU64,
    pub proposals_committed: AtomicU64,
    pub proposals_applied: AtomicU64,
    pub proposals_pending: AtomicU64,
    pub proposals_failed: AtomicU64,
    pub db_size: AtomicU64,
    pub db_size_in_use: AtomicU64,
    pub revision: AtomicU64,
    pub watchers: AtomicU64,
    pub slow_watchers: AtomicU64,
    pub watch_stream_stalls: AtomicU64,
    pub wal_fsync: Histogram,
    pub backend_commit: Histogram,
    pub peer_sent_failures: AtomicU64,
    /// `--quota-backend-bytes` (its default when 0).
    pub quota_backend_bytes: AtomicU64,
    /// Bytes of gRPC traffic on the client port, each way.
    pub client_grpc_received_bytes: AtomicU64,
    pub client_grpc_sent_bytes: AtomicU64,
    pub peer_round_trips: PeerRoundTrips,
    /// The client port's gRPC calls (go-grpc-prometheus's families).
    pub grpc: grpc::GrpcMetrics,
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        };
        gauge(
            &mut out,
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            "gauge",
            &self.has_leader,
        );
        gauge(
            &mut out,
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            "gauge",
            &self.is_leader,
        );
        gauge(
            &mut out,
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            "counter",
            &self.leader_changes,
        );
        gauge(
            &mut out,
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            "gauge",
            &self.proposals_committed,
        );
        gauge(
            &mut out,
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            "gauge",
            &self.proposals_applied,
        );
        gauge(
            &mut out,
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            "gauge",
            &self.proposals_pending,
        );
        gauge(
            &mut out,
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            "counter",
            &self.proposals_failed,
        );
        gauge(
            &mut out,
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            "gauge",
            &self.db_size,
        );
        gauge(
            &mut out,
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            "gauge",
            &self.db_size_in_use,
        );
        gauge(
            &mut out,
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            "gauge",
            &self.revision,
        );
        gauge(
            &mut out,
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers.",
            "gauge",
            &self.watchers,
        );
        gauge(
            &mut out,
            "etcd_debugging_mvcc_slow_watcher_total",
            "Total number of unsynced slow watchers.",
            "gauge",
            &self.slow_watchers,
        );
        gauge(
            &mut out,
            "strata_watch_stream_stalls_total",
            "Times a watch stream's queue was full and its watchers were parked to catch up later.",
            "counter",
            &self.watch_stream_stalls,
        );
        gauge(
            &mut out,
            "etcd_network_peer_sent_failures_total",
            "The total number of send failures from peers.",
            "counter",
            &self.peer_sent_failures,
        );
        gauge(
            &mut out,
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            "gauge",
            &self.quota_backend_bytes,
        );
        gauge(
            &mut out,
            "etcd_network_client_grpc_received_bytes_total",
            "The total number of bytes received from grpc clients.",
            "counter",
            &self.client_grpc_received_bytes,
        );
        gauge(
            &mut out,
            "etcd_network_client_grpc_sent_bytes_total",
            "The total number of bytes sent to grpc clients.",
            "counter",
            &self.client_grpc_sent_bytes,
        );
        self.wal_fsync.render(
            &mut out,
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
        );
        self.backend_commit.render(
            &mut out,
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
        );
        self.peer_round_trips.render(&mut out);
        self.grpc.render(&mut out);
        process::render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.has_leader.store(1, Ordering::Relaxed);
        m.wal_fsync.observe(Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("etcd_server_has_leader 1\n"));
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.002\"} 0\n"));
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.004\"} 1\n"));
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_count 1\n"));
    }

    #[test]
    fn peer_round_trips_are_labelled_by_peer() {
        let m = Metrics::default();
        m.peer_round_trips.observe(0xab, Duration::from_micros(300));
        let text = m.render();
        let name = "etcd_network_peer_round_trip_time_seconds";
        assert!(text.contains(&format!("{name}_bucket{{To=\"ab\",le=\"0.0002\"}} 0\n")));
        assert!(text.contains(&format!("{name}_bucket{{To=\"ab\",le=\"0.0004\"}} 1\n")));
        assert!(text.contains(&format!("{name}_count{{To=\"ab\"}} 1\n")));
    }
}
