//! Scenario files: the readable description of one simulated run, minus its seed.
//!
//! A scenario is TOML. It opens with a comment paragraph (the story: which property, why it
//! matters, which bug class it guards), then names the cluster's shape, the workload, a
//! timeline of faults and the time bounds the checkers hold the cluster to. Every field has a
//! default, so a scenario states only what it is about. See `scenarios/README.md` for the
//! full reference.
//!
//! ```toml
//! name = "leader-isolated"
//! duration = "20s"          # faults and workload; then the run heals, quiesces and checks
//! [cluster]
//! voters = 3
//! [workload]
//! clients = 4
//! [[fault]]
//! at = "5s"
//! kind = "isolate"
//! node = "leader"
//! [[fault]]
//! at = "12s"
//! kind = "heal"
//! ```
//!
//! Invariants: [`Scenario::validate`] accepts only scenarios the runner can execute (node
//! indexes within the cluster, times within the duration, rates within [0, 1]); a parse or
//! validation error names the field.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
}

/// A duration written as `"250ms"`, `"5s"`, `"1.5s"` or `"2m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Span(pub Duration);

impl Span {
    pub fn ms(ms: u64) -> Span {
        Span(Duration::from_millis(ms))
    }

    pub fn as_nanos(self) -> u64 {
        self.0.as_nanos() as u64
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl std::str::FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Span, String> {
        let s = s.trim();
        let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
            Some(i) => s.split_at(i),
            None => return Err(format!("duration {s:?} needs a unit (ms, s, m)")),
        };
        let n: f64 = num
            .trim()
            .parse()
            .map_err(|_| format!("duration {s:?}: {num:?} is not a number"))?;
        if !(n.is_finite() && n >= 0.0) {
            return Err(format!("duration {s:?} must be a non-negative number"));
        }
        let ms = match unit {
            "ms" => n,
            "s" => n * 1000.0,
            "m" => n * 60_000.0,
            _ => return Err(format!("duration {s:?}: unknown unit {unit:?} (ms, s, m)")),
        };
        Ok(Span(Duration::from_micros((ms * 1000.0).round() as u64)))
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which member a fault targets: its index (0-based, in start order) or a role resolved when
/// the fault fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Index(u32),
    /// The member the majority currently follows (none: the fault is skipped and logged).
    Leader,
    /// A member that is not the leader, chosen by the run's seed.
    Follower,
    /// Any member, chosen by the run's seed.
    Random,
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Target::Index(i) => s.serialize_u32(*i),
            Target::Leader => s.serialize_str("leader"),
            Target::Follower => s.serialize_str("follower"),
            Target::Random => s.serialize_str("random"),
        }
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Index(u32),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Index(i) => Ok(Target::Index(i)),
            Raw::Name(n) => match n.as_str() {
                "leader" => Ok(Target::Leader),
                "follower" => Ok(Target::Follower),
                "random" => Ok(Target::Random),
                other => Err(serde::de::Error::custom(format!(
                    "node {other:?}: expected an index, \"leader\", \"follower\" or \"random\""
                ))),
            },
        }
    }
}

/// How a crash treats writes that were not yet fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CrashDisk {
    /// Every unsynced write is lost.
    #[default]
    LoseUnsynced,
    /// A prefix of the unsynced writes reached the disk; the last of them is torn (its
    /// checksum fails), as a power cut mid-write leaves a log.
    TornTail,
    /// Unsynced writes survive (a process crash with the OS still up).
    KeepUnsynced,
}

/// One event of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// Cut the network between groups (both directions); members in no group keep every link.
    Partition {
        groups: Vec<Vec<u32>>,
    },
    /// Cut one member from everyone (both directions).
    Isolate {
        node: Target,
    },
    /// Drop traffic from `from` to `to` only.
    OneWay {
        from: Vec<u32>,
        to: Vec<u32>,
    },
    /// End one member's isolation (other network faults stay).
    Reconnect {
        node: Target,
    },
    /// FoundationDB's swizzle-clogging: isolate `nodes` one at a time, `every` apart, keep them
    /// all cut off for `hold`, then reconnect them one at a time, `every` apart, in the order
    /// `reconnect` (default: the reverse of `nodes`). Connections come back in an order other
    /// than the one they failed in, with whatever each stalled stream still holds.
    /// [`Scenario::timeline`] expands it into `isolate` and `reconnect` steps.
    Swizzle {
        nodes: Vec<u32>,
        every: Span,
        #[serde(default)]
        hold: Span,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reconnect: Vec<u32>,
    },
    /// Repair every network fault (partitions, isolation, one-way cuts, loss, latency).
    Heal,
    /// Each peer/client message is lost with this probability (TCP then retransmits: the
    /// stream stalls and backs off, as madsim models it).
    Loss {
        rate: f64,
    },
    /// Per-message latency drawn uniformly from [min, max].
    Latency {
        min: Span,
        max: Span,
    },
    /// SIGKILL: the process dies; unsynced writes are treated per `disk`.
    Kill {
        node: Target,
        #[serde(default)]
        disk: CrashDisk,
    },
    /// Start a killed member again from its disk.
    Restart {
        node: Target,
    },
    /// SIGSTOP / SIGCONT.
    Pause {
        node: Target,
    },
    Resume {
        node: Target,
    },
    /// The member's next fsync fails (the node must stop, never limp on).
    FsyncError {
        node: Target,
    },
    /// Every write and fsync of the member takes this long from now on (0 undoes).
    SlowDisk {
        node: Target,
        fsync: Span,
    },
    /// Flip one bit in a durable raft log record of a stopped or running member: its
    /// checksum must catch it at the next start.
    Bitrot {
        node: Target,
    },
    /// The member's clock runs fast (positive) or slow (negative), in parts per million.
    ClockDrift {
        node: Target,
        ppm: i64,
    },
    /// The member's clock jumps forward (a paused VM resumed).
    ClockJump {
        node: Target,
        by: Span,
    },
    /// `member add --learner` of a fresh member, started at once.
    AddLearner,
    /// `member promote` of the newest learner.
    Promote,
    /// `member remove` of a member; it is stopped.
    Remove {
        node: Target,
    },
    /// `move-leader` to a member.
    TransferLeader {
        to: Target,
    },
    /// Compact at the revision current minus `keep`.
    Compact {
        #[serde(default)]
        keep: i64,
    },
    /// Defragment a member's backend.
    Defrag {
        node: Target,
    },
}

impl Fault {
    /// The kind's name, as in scenario files.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Partition { .. } => "partition",
            Fault::Isolate { .. } => "isolate",
            Fault::OneWay { .. } => "one-way",
            Fault::Reconnect { .. } => "reconnect",
            Fault::Swizzle { .. } => "swizzle",
            Fault::Heal => "heal",
            Fault::Loss { .. } => "loss",
            Fault::Latency { .. } => "latency",
            Fault::Kill { .. } => "kill",
            Fault::Restart { .. } => "restart",
            Fault::Pause { .. } => "pause",
            Fault::Resume { .. } => "resume",
            Fault::FsyncError { .. } => "fsync-error",
            Fault::SlowDisk { .. } => "slow-disk",
            Fault::Bitrot { .. } => "bitrot",
            Fault::ClockDrift { .. } => "clock-drift",
            Fault::ClockJump { .. } => "clock-jump",
            Fault::AddLearner => "add-learner",
            Fault::Promote => "promote",
            Fault::Remove { .. } => "remove",
            Fault::TransferLeader { .. } => "transfer-leader",
            Fault::Compact { .. } => "compact",
            Fault::Defrag { .. } => "defrag",
        }
    }

    /// The member a single-member fault acts on.
    pub fn target(&self) -> Option<&Target> {
        match self {
            Fault::Isolate { node }
            | Fault::Reconnect { node }
            | Fault::Kill { node, .. }
            | Fault::Restart { node }
            | Fault::Pause { node }
            | Fault::Resume { node }
            | Fault::FsyncError { node }
            | Fault::SlowDisk { node, .. }
            | Fault::Bitrot { node }
            | Fault::ClockDrift { node, .. }
            | Fault::ClockJump { node, .. }
            | Fault::Remove { node }
            | Fault::Defrag { node } => Some(node),
            Fault::TransferLeader { to } => Some(to),
            _ => None,
        }
    }

    /// Member indexes the fault names explicitly.
    pub fn indexes(&self) -> Vec<u32> {
        match self {
            Fault::Partition { groups } => groups.iter().flatten().copied().collect(),
            Fault::OneWay { from, to } => from.iter().chain(to).copied().collect(),
            Fault::Swizzle {
                nodes, reconnect, ..
            } => nodes.iter().chain(reconnect).copied().collect(),
            _ => match self.target() {
                Some(Target::Index(i)) => vec![*i],
                _ => vec![],
            },
        }
    }
}

/// `fault` for each of `nodes` in turn, the first at `start`, then one every `every`.
fn staggered(
    start: Span,
    every: Span,
    nodes: &[u32],
    fault: fn(Target) -> Fault,
) -> Vec<(Span, Fault)> {
    let mut at = start;
    let mut steps = Vec::with_capacity(nodes.len());
    for (i, &n) in nodes.iter().enumerate() {
        if i > 0 {
            at = at + every;
        }
        steps.push((at, fault(Target::Index(n))));
    }
    steps
}

impl Fault {
    /// How long the fault takes from its start to its last step (zero but for a swizzle).
    pub fn length(&self) -> Span {
        self.steps().last().map(|s| s.0).unwrap_or_default()
    }

    /// A swizzle's steps, at offsets from its start: each node isolated in turn, then each
    /// reconnected in turn. Any other fault is its own single step.
    fn steps(&self) -> Vec<(Span, Fault)> {
        let Fault::Swizzle {
            nodes,
            every,
            hold,
            reconnect,
        } = self
        else {
            return vec![(Span::default(), self.clone())];
        };
        let order: Vec<u32> = if reconnect.is_empty() {
            nodes.iter().rev().copied().collect()
        } else {
            reconnect.clone()
        };
        let mut steps = staggered(Span::default(), *every, nodes, |node| Fault::Isolate {
            node,
        });
        let reconnect_at = steps.last().map(|s| s.0).unwrap_or_default() + *hold;
        steps.extend(staggered(reconnect_at, *every, &order, |node| {
            Fault::Reconnect { node }
        }));
        steps
    }
}

/// A fault at a point of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timed {
    pub at: Span,
    #[serde(flatten)]
    pub fault: Fault,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// Voting members at bootstrap (1–7).
    pub voters: u32,
    /// Learners added (and started) right after bootstrap.
    pub learners: u32,
    /// etcd's `--heartbeat-interval`.
    pub heartbeat: Span,
    /// etcd's `--election-timeout`.
    pub election_timeout: Span,
    /// etcd's `--snapshot-count` (small values make followers catch up by snapshot).
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot for slightly lagging followers (etcd's
    /// `--experimental-snapshot-catchup-entries`, 5000); a member further behind is sent a
    /// snapshot. Small values make catching up by snapshot common.
    pub snapshot_catch_up_entries: u64,
    /// etcd's `--experimental-lease-checkpoint-interval` (5 minutes): how often the leader
    /// replicates each lease's remaining TTL. Short values make checkpoints, their reset by
    /// keep-alives and their use by a new leader happen within a run.
    pub lease_checkpoint_interval: Span,
    /// etcd's `--experimental-watch-progress-notify-interval` (10 minutes): how often a
    /// watcher created with `progress_notify` that got no event is told where it stands.
    pub progress_notify_interval: Span,
}

impl Default for Cluster {
    fn default() -> Cluster {
        Cluster {
            voters: 3,
            learners: 0,
            heartbeat: Span::ms(100),
            election_timeout: Span::ms(1000),
            snapshot_count: 10_000,
            // The engine's `SNAPSHOT_CATCH_UP_ENTRIES`, as etcd.
            snapshot_catch_up_entries: 5_000,
            lease_checkpoint_interval: Span::ms(5 * 60 * 1000),
            progress_notify_interval: Span::ms(10 * 60 * 1000),
        }
    }
}

/// Relative weights of the operations clients issue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mix {
    pub get: u32,
    pub serializable_get: u32,
    pub put: u32,
    pub delete: u32,
    /// Compare-and-swap on one key (txn: mod_revision compare, put on success, get on
    /// failure).
    pub cas: u32,
    /// A txn writing two keys at once.
    pub multi_put: u32,
    /// A range read over every workload key.
    pub range: u32,
    /// A put attached to the client's lease (granted and kept alive by the client).
    pub lease_put: u32,
    /// `etcdctl lock`: Lock on the shared lock with the client's lease, hold it for a think
    /// time, Unlock.
    pub lock: u32,
    /// `etcdctl elect`: Campaign in the shared election with the client's lease, read the
    /// Leader, Resign.
    pub election: u32,
    /// A txn guarded by one compare of any target (version, create, mod, value, lease) and
    /// result (=, !=, >, <) against what the client just read of the key, give or take one,
    /// with puts, deletes and gets in its branches.
    pub compare_txn: u32,
    /// A linearizable get or range at a past revision (around the compaction revision once
    /// one was refused), judged by revision consistency and the refusal rules.
    pub historical_read: u32,
}

impl Default for Mix {
    fn default() -> Mix {
        Mix {
            get: 30,
            serializable_get: 5,
            put: 30,
            delete: 5,
            cas: 15,
            multi_put: 5,
            range: 5,
            lease_put: 5,
            lock: 0,
            election: 0,
            compare_txn: 0,
            historical_read: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// Concurrent clients; each sends to one member (round robin) and moves to another when
    /// its member fails it.
    pub clients: u32,
    /// Hot keys the clients share.
    pub keys: u32,
    /// Pause between one client's operations.
    pub think: Span,
    /// Give up on an answer after this long (the op's outcome is then unknown).
    pub timeout: Span,
    /// Each client stays on its first member whatever happens (an etcd client given one
    /// endpoint); by default a client moves to the next member after a failure.
    pub sticky: bool,
    pub mix: Mix,
    /// Watchers over every workload key; a broken watch is re-created from the next revision
    /// it has not seen.
    pub watchers: u32,
    /// Watchers ask for `prev_kv` (and, every other one, filter out deletes).
    pub watch_prev_kv: bool,
    /// Watchers ask for periodic progress notifications (`progress_notify`; they come every
    /// `cluster.progress_notify_interval`).
    pub watch_progress_notify: bool,
    /// TTL of the clients' leases; each client keeps its lease alive every ttl/3 and, with
    /// probability `lease_abandon`, stops doing so to let it expire.
    pub lease_ttl_secs: i64,
    pub lease_abandon: f64,
    /// Clients send no new operation from this time on, so the cluster idles (watchers keep
    /// watching); by default they run until the liveness window ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Span>,
}

impl Default for Workload {
    fn default() -> Workload {
        Workload {
            clients: 4,
            keys: 4,
            think: Span::ms(20),
            timeout: Span::ms(3000),
            sticky: false,
            mix: Mix::default(),
            watchers: 2,
            watch_prev_kv: true,
            watch_progress_notify: false,
            lease_ttl_secs: 5,
            lease_abandon: 0.0,
            stop: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Checks {
    /// After the end of the timeline every fault is healed; a leader and an acknowledged
    /// write must follow within this.
    pub liveness: Span,
    /// Quiet time after healing before the final reads and hashes.
    pub settle: Span,
}

impl Default for Checks {
    fn default() -> Checks {
        Checks {
            liveness: Span::ms(15_000),
            settle: Span::ms(5_000),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Length of the workload and timeline.
    #[serde(default = "default_duration")]
    pub duration: Span,
    #[serde(default)]
    pub cluster: Cluster,
    #[serde(default)]
    pub workload: Workload,
    #[serde(default, rename = "fault")]
    pub faults: Vec<Timed>,
    #[serde(default)]
    pub checks: Checks,
    /// Seeds CI runs this scenario with (besides any random batch).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// The story paragraph (the leading comment), kept for printing and shrinking.
    #[serde(skip)]
    pub story: String,
}

fn default_duration() -> Span {
    Span::ms(20_000)
}

fn default_seeds() -> Vec<u64> {
    vec![1, 2, 3]
}

impl Scenario {
    pub fn parse(path: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let mut s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: path.to_string(),
            source: Box::new(e),
        })?;
        s.story = text
            .lines()
            .take_while(|l| l.starts_with('#') || l.trim().is_empty())
            .map(|l| l.trim_start_matches('#').trim_start_matches(' '))
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
            .to_string();
        s.faults.sort_by_key(|t| t.at);
        s.validate().map_err(|reason| ScenarioError::Invalid {
            path: path.to_string(),
            reason,
        })?;
        Ok(s)
    }

    pub fn load(path: &str) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Io {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        Scenario::parse(path, &text)
    }

    /// Every `*.toml` scenario directly in `dir` (not its subdirectories: `scenarios/open/`
    /// holds failing stories kept out of CI), sorted by path.
    pub fn load_dir(dir: &str) -> Result<Vec<(String, Scenario)>, String> {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{dir}: {e}"))?;
        let mut files: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().display().to_string())
            .filter(|p| p.ends_with(".toml"))
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|f| {
                let s = Scenario::load(&f).map_err(|e| e.to_string())?;
                Ok((f, s))
            })
            .collect()
    }

    /// Members that can exist in this run: voters, initial learners, and one per
    /// `add-learner` fault.
    pub fn max_members(&self) -> u32 {
        self.cluster.voters
            + self.cluster.learners
            + self
                .faults
                .iter()
                .filter(|t| matches!(t.fault, Fault::AddLearner))
                .count() as u32
    }

    pub fn validate(&self) -> Result<(), String> {
        let c = &self.cluster;
        if !(1..=7).contains(&c.voters) {
            return Err(format!("cluster.voters = {}: must be 1 to 7", c.voters));
        }
        if c.voters + c.learners > 9 {
            return Err("cluster: at most 9 members (voters + learners)".into());
        }
        if c.heartbeat.0.is_zero() || c.election_timeout < c.heartbeat * 5 {
            return Err(
                "cluster: election_timeout must be at least 5 × heartbeat (etcd's rule)".into(),
            );
        }
        if c.lease_checkpoint_interval.0 < Duration::from_millis(1)
            || c.progress_notify_interval.0 < Duration::from_millis(1)
        {
            return Err(
                "cluster.lease_checkpoint_interval and progress_notify_interval must be at least 1ms"
                    .into(),
            );
        }
        if self.workload.clients == 0 && !self.faults.is_empty() {
            // Allowed: a fault-only run still has raft and liveness checks.
        }
        if self.workload.keys == 0 {
            return Err("workload.keys must be at least 1".into());
        }
        if self.workload.timeout.0.is_zero() {
            return Err("workload.timeout must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.workload.lease_abandon) {
            return Err("workload.lease_abandon must be within [0, 1]".into());
        }
        if self.workload.stop.is_some_and(|stop| stop > self.duration) {
            return Err("workload.stop must be within the duration".into());
        }
        if self.workload.lease_ttl_secs < 1 {
            return Err("workload.lease_ttl_secs must be at least 1".into());
        }
        let n = self.max_members();
        for (i, t) in self.faults.iter().enumerate() {
            if t.at > self.duration {
                return Err(format!(
                    "fault {i} ({}) at {} is after the duration {}",
                    t.fault.kind(),
                    t.at,
                    self.duration
                ));
            }
            if let Some(bad) = t.fault.indexes().into_iter().find(|&ix| ix >= n) {
                return Err(format!(
                    "fault {i} ({}) names member {bad}, but the run has {n} (0-based)",
                    t.fault.kind()
                ));
            }
            match &t.fault {
                Fault::Loss { rate } if !(0.0..=1.0).contains(rate) => {
                    return Err(format!(
                        "fault {i} (loss): rate {rate} is not within [0, 1]"
                    ))
                }
                Fault::Latency { min, max } if min > max => {
                    return Err(format!("fault {i} (latency): min {min} > max {max}"))
                }
                Fault::Swizzle {
                    nodes, reconnect, ..
                } => {
                    validate_swizzle(nodes, reconnect)
                        .map_err(|e| format!("fault {i} (swizzle): {e}"))?;
                    let end = t.at + t.fault.length();
                    if end > self.duration {
                        return Err(format!(
                            "fault {i} (swizzle) ends at {end}, after the duration {}",
                            self.duration
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The timeline as the nemesis carries it out: every fault in time order, compound
    /// faults (`swizzle`) expanded into their steps.
    pub fn timeline(&self) -> Vec<Timed> {
        let mut out: Vec<Timed> = self
            .faults
            .iter()
            .flat_map(|t| {
                t.fault.steps().into_iter().map(|(offset, fault)| Timed {
                    at: t.at + offset,
                    fault,
                })
            })
            .collect();
        out.sort_by_key(|t| t.at);
        out
    }

    /// The scenario as a file: story comment, then TOML.
    pub fn to_file(&self) -> String {
        let mut out = String::new();
        for line in self.story.lines() {
            if line.is_empty() {
                out.push_str("#\n");
            } else {
                out.push_str(&format!("# {line}\n"));
            }
        }
        out.push('\n');
        out.push_str(&toml::to_string(self).expect("a scenario serializes"));
        out
    }
}

fn validate_swizzle(nodes: &[u32], reconnect: &[u32]) -> Result<(), String> {
    if nodes.is_empty() {
        return Err("nodes is empty".into());
    }
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != nodes.len() {
        return Err(format!("nodes {nodes:?} names a member twice"));
    }
    if !reconnect.is_empty() {
        let mut r = reconnect.to_vec();
        r.sort_unstable();
        if r != sorted {
            return Err(format!(
                "reconnect {reconnect:?} must name each of nodes {nodes:?} once"
            ));
        }
    }
    Ok(())
}

impl std::ops::Add for Span {
    type Output = Span;
    fn add(self, other: Span) -> Span {
        Span(self.0 + other.0)
    }
}

impl std::ops::Mul<u32> for Span {
    type Output = Span;
    fn mul(self, n: u32) -> Span {
        Span(self.0 * n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"# Story line one.
# Story line two.

name = "example"
duration = "10s"

[cluster]
voters = 5

[[fault]]
at = "2s"
kind = "partition"
groups = [[0, 1], [2, 3, 4]]

[[fault]]
at = "1s"
kind = "kill"
node = "leader"
disk = "torn-tail"

[[fault]]
at = "8s"
kind = "heal"
"#;

    #[test]
    fn parses_and_sorts_the_timeline() {
        let s = Scenario::parse("example.toml", EXAMPLE).unwrap();
        assert_eq!(s.cluster.voters, 5);
        assert_eq!(s.story, "Story line one.\nStory line two.");
        assert_eq!(s.faults[0].at, Span::ms(1000));
        assert_eq!(
            s.faults[0].fault,
            Fault::Kill {
                node: Target::Leader,
                disk: CrashDisk::TornTail
            }
        );
        assert_eq!(s.faults[2].fault, Fault::Heal);
    }

    #[test]
    fn round_trips_through_a_file() {
        let s = Scenario::parse("example.toml", EXAMPLE).unwrap();
        let again = Scenario::parse("again.toml", &s.to_file()).unwrap();
        assert_eq!(s, again);
    }

    #[test]
    fn errors_name_the_field() {
        let bad = EXAMPLE.replace("voters = 5", "voters = 2");
        let e = Scenario::parse("x.toml", &bad).unwrap_err().to_string();
        assert!(e.contains("names member 2, but the run has 2"), "{e}");
        let bad = EXAMPLE.replace("\"torn-tail\"", "\"melted\"");
        let e = Scenario::parse("x.toml", &bad).unwrap_err().to_string();
        assert!(e.contains("melted"), "{e}");
        let bad = EXAMPLE.replace("\"2s\"", "\"2 parsecs\"");
        let e = Scenario::parse("x.toml", &bad).unwrap_err().to_string();
        assert!(e.contains("unknown unit"), "{e}");
        let bad = EXAMPLE.replace("at = \"8s\"", "at = \"80s\"");
        let e = Scenario::parse("x.toml", &bad).unwrap_err().to_string();
        assert!(e.contains("after the duration"), "{e}");
    }

    const SWIZZLE: &str = r#"name = "swizzle"
duration = "10s"

[cluster]
voters = 5

[[fault]]
at = "1s"
kind = "swizzle"
nodes = [3, 0, 4]
every = "500ms"
hold = "2s"
reconnect = [0, 4, 3]

[[fault]]
at = "2200ms"
kind = "heal"
"#;

    #[test]
    fn swizzle_expands_into_isolations_then_reconnects_in_its_order() {
        let s = Scenario::parse("swizzle.toml", SWIZZLE).unwrap();
        let steps: Vec<(u64, &str, Option<Target>)> = s
            .timeline()
            .iter()
            .map(|t| {
                (
                    t.at.0.as_millis() as u64,
                    t.fault.kind(),
                    t.fault.target().cloned(),
                )
            })
            .collect();
        let ix = |i| Some(Target::Index(i));
        assert_eq!(
            steps,
            vec![
                (1000, "isolate", ix(3)),
                (1500, "isolate", ix(0)),
                (2000, "isolate", ix(4)),
                (2200, "heal", None),
                (4000, "reconnect", ix(0)),
                (4500, "reconnect", ix(4)),
                (5000, "reconnect", ix(3)),
            ]
        );
        let reversed = SWIZZLE.replace("reconnect = [0, 4, 3]\n", "");
        let s = Scenario::parse("swizzle.toml", &reversed).unwrap();
        let order: Vec<Option<Target>> = s
            .timeline()
            .iter()
            .filter(|t| t.fault.kind() == "reconnect")
            .map(|t| t.fault.target().cloned())
            .collect();
        assert_eq!(order, vec![ix(4), ix(0), ix(3)], "default: reverse order");
    }

    #[test]
    fn swizzle_errors_name_the_field() {
        let cases = [
            (
                "reconnect = [0, 4, 3]",
                "reconnect = [0, 4]",
                "must name each of nodes",
            ),
            (
                "nodes = [3, 0, 4]",
                "nodes = [3, 3, 4]",
                "names a member twice",
            ),
            ("nodes = [3, 0, 4]", "nodes = [3, 0, 5]", "names member 5"),
            (
                "hold = \"2s\"",
                "hold = \"9s\"",
                "(swizzle) ends at 12s, after the duration",
            ),
        ];
        for (from, to, want) in cases {
            let bad = SWIZZLE.replace(from, to);
            let e = Scenario::parse("x.toml", &bad).unwrap_err().to_string();
            assert!(e.contains(want), "{to}: {e}");
        }
    }

    #[test]
    fn spans_parse() {
        assert_eq!("250ms".parse::<Span>().unwrap(), Span::ms(250));
        assert_eq!("1.5s".parse::<Span>().unwrap(), Span::ms(1500));
        assert_eq!("2m".parse::<Span>().unwrap(), Span::ms(120_000));
        assert!("5".parse::<Span>().is_err());
        assert!("-1s".parse::<Span>().is_err());
    }
}
