//! Every limit the engine enforces, in one place, with etcd's defaults
//! (`server/embed/config.go`, `server/storage/quota.go`, `server/lease/lessor.go`).

/// etcd's `DefaultMaxRequestBytes`: 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024 * 3 / 2;
/// etcd's `DefaultMaxTxnOps`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// etcd's `DefaultQuotaBytes`: 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// etcd 3.6's default `--snapshot-count`.
pub const DEFAULT_SNAPSHOT_COUNT: u64 = 10_000;
/// Entries kept behind a snapshot so slightly lagging followers catch up from the log
/// (etcd's `SnapshotCatchUpEntries`).
pub const SNAPSHOT_CATCH_UP_ENTRIES: u64 = 5_000;
/// etcd's `MaxLeaseTTL`, in seconds.
pub const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;
/// Leases revoked per second at most by an expiring leader (etcd's `defaultLeaseRevokeRate`).
pub const LEASE_REVOKE_RATE_PER_SEC: usize = 1000;
/// How often the leader checkpoints remaining lease TTLs (etcd's `defaultLeaseCheckpointInterval`).
pub const DEFAULT_LEASE_CHECKPOINT_INTERVAL_MS: u64 = 5 * 60 * 1000;
/// Leases per checkpoint entry (etcd's `maxLeaseCheckpointBatchSize`).
pub const LEASE_CHECKPOINT_BATCH: usize = 1000;
/// etcd's watch progress-notify interval.
pub const DEFAULT_PROGRESS_NOTIFY_INTERVAL_MS: u64 = 10 * 60 * 1000;
/// Revisions replayed per unsynced watcher per step (etcd's `watchBatchMaxRevs`).
pub const WATCH_BATCH_MAX_REVS: i64 = 1000;
/// A learner may be promoted once its match index reaches this share of the leader's
/// (etcd's `readyPercentThreshold`, 0.9).
pub const LEARNER_READY_PERCENT: u64 = 90;
/// etcd's `DefaultMaxLearners`.
pub const DEFAULT_MAX_LEARNERS: usize = 1;

const _: () = assert!(SNAPSHOT_CATCH_UP_ENTRIES < DEFAULT_SNAPSHOT_COUNT);
const _: () = assert!(DEFAULT_MAX_REQUEST_BYTES as u64 <= DEFAULT_QUOTA_BACKEND_BYTES);

/// Limits a node enforces, set from the operator's flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// Past this backend size, writes raise the NOSPACE alarm. 0 means the default; negative
    /// quotas are rejected by the flag parser.
    pub quota_backend_bytes: u64,
    pub snapshot_count: u64,
    pub snapshot_catch_up_entries: u64,
    pub max_learners: usize,
    pub lease_checkpoint_interval_ms: u64,
    pub progress_notify_interval_ms: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            quota_backend_bytes: DEFAULT_QUOTA_BACKEND_BYTES,
            snapshot_count: DEFAULT_SNAPSHOT_COUNT,
            snapshot_catch_up_entries: SNAPSHOT_CATCH_UP_ENTRIES,
            max_learners: DEFAULT_MAX_LEARNERS,
            lease_checkpoint_interval_ms: DEFAULT_LEASE_CHECKPOINT_INTERVAL_MS,
            progress_notify_interval_ms: DEFAULT_PROGRESS_NOTIFY_INTERVAL_MS,
        }
    }
}

/// etcd's minimum lease TTL: `ceil(1.5 × election timeout)`, in seconds.
pub fn min_lease_ttl_secs(election_timeout_ms: u64) -> i64 {
    let ms = election_timeout_ms * 3 / 2;
    ms.div_ceil(1000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ttl_matches_etcd_defaults() {
        // 10 ticks × 100 ms: 1.5 s rounds up to 2 s.
        assert_eq!(min_lease_ttl_secs(1000), 2);
        assert_eq!(min_lease_ttl_secs(2000), 3);
    }
}
