//! What one measurement yields: every successful operation's latency, the errors, and the
//! wall time of the timed phase, summarised as throughput and nearest-rank percentiles.
//!
//! Latencies are kept whole (a sorted `Vec` of nanoseconds), not bucketed: a run is tens of
//! thousands of operations, so exact percentiles cost a few hundred kilobytes and no
//! dependency. Throughput counts successful operations only; a failed one is counted in
//! `errors` and leaves no latency.
//!
//! A recorder started at the phase's start also counts successes per second of the phase, so a
//! run shows its stalls (a snapshot, a compaction, a log truncation) as slow seconds rather
//! than only as a worse average.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Distinct error texts a recorder keeps as samples; the rest are only counted.
const ERROR_SAMPLES_MAX: usize = 5;

/// One client's record of the operations it ran.
#[derive(Debug, Default)]
pub struct Recorder {
    latencies_ns: Vec<u64>,
    errors: u64,
    error_samples: Vec<String>,
    /// The phase's start, when successes are counted per second.
    start: Option<Instant>,
    /// Successes completed in each second since `start`.
    per_second: Vec<u64>,
}

impl Recorder {
    /// A recorder that also counts successes per second since `start`.
    pub fn since(start: Instant) -> Recorder {
        Recorder {
            start: Some(start),
            ..Recorder::default()
        }
    }

    pub fn ok(&mut self, latency: Duration) {
        self.latencies_ns
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        if let Some(start) = self.start {
            let second = start.elapsed().as_secs() as usize;
            if self.per_second.len() <= second {
                self.per_second.resize(second + 1, 0);
            }
            self.per_second[second] += 1;
        }
    }

    pub fn error(&mut self, error: String) {
        self.errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES_MAX && !self.error_samples.contains(&error) {
            self.error_samples.push(error);
        }
    }

    /// Folds another client's record into this one.
    pub fn merge(&mut self, other: Recorder) {
        self.latencies_ns.extend(other.latencies_ns);
        self.errors += other.errors;
        if self.per_second.len() < other.per_second.len() {
            self.per_second.resize(other.per_second.len(), 0);
        }
        for (mine, theirs) in self.per_second.iter_mut().zip(other.per_second) {
            *mine += theirs;
        }
        for sample in other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES_MAX && !self.error_samples.contains(&sample)
            {
                self.error_samples.push(sample);
            }
        }
    }

    pub fn error_samples(&self) -> &[String] {
        &self.error_samples
    }

    /// The summary of a timed phase that took `elapsed` of wall time.
    pub fn summary(mut self, elapsed: Duration) -> Summary {
        self.latencies_ns.sort_unstable();
        let sorted = &self.latencies_ns;
        let ms = |ns: u64| ns as f64 / 1e6;
        let ok = sorted.len() as u64;
        let elapsed_secs = elapsed.as_secs_f64();
        Summary {
            ok,
            errors: self.errors,
            elapsed_secs,
            ops_per_sec: if elapsed_secs > 0.0 {
                ok as f64 / elapsed_secs
            } else {
                0.0
            },
            p50_ms: ms(percentile(sorted, 50.0)),
            p90_ms: ms(percentile(sorted, 90.0)),
            p99_ms: ms(percentile(sorted, 99.0)),
            max_ms: ms(sorted.last().copied().unwrap_or(0)),
            slowest_second_ratio: slowest_second_ratio(&self.per_second, elapsed),
            per_second: self.per_second,
        }
    }
}

/// The slowest whole second of a phase over its median second (1.0: even; below 0.5: a
/// collapse), counting only seconds the phase lasted entirely; `None` below three of them.
pub fn slowest_second_ratio(per_second: &[u64], elapsed: Duration) -> Option<f64> {
    let whole = (elapsed.as_secs() as usize).min(per_second.len());
    if whole < 3 {
        return None;
    }
    let mut seconds = per_second[..whole].to_vec();
    seconds.sort_unstable();
    let median = seconds[whole / 2];
    (median > 0).then(|| seconds[0] as f64 / median as f64)
}

/// Nearest-rank percentile of ascending `sorted` values (0 when there are none): the smallest
/// value with at least `q` % of the values at or below it.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    assert!((0.0..=100.0).contains(&q), "percentile {q} outside 0..=100");
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The figures one measurement reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Operations that succeeded.
    pub ok: u64,
    pub errors: u64,
    /// Wall time of the timed phase (connection and setup excluded).
    pub elapsed_secs: f64,
    /// Successful operations per second of `elapsed_secs`.
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Successes completed in each second of the phase (the last one partial).
    #[serde(default)]
    pub per_second: Vec<u64>,
    /// [`slowest_second_ratio`] of `per_second`.
    #[serde(default)]
    pub slowest_second_ratio: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50.0), 50);
        assert_eq!(percentile(&sorted, 90.0), 90);
        assert_eq!(percentile(&sorted, 99.0), 99);
        assert_eq!(percentile(&sorted, 100.0), 100);
        assert_eq!(percentile(&sorted, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 99.0), 0);
    }

    #[test]
    fn summary_counts_only_successes_in_throughput() {
        let mut a = Recorder::default();
        for ms in [1, 2, 3] {
            a.ok(Duration::from_millis(ms));
        }
        let mut b = Recorder::default();
        b.ok(Duration::from_millis(4));
        b.error("deadline exceeded".into());
        b.error("deadline exceeded".into());
        a.merge(b);
        assert_eq!(a.error_samples(), ["deadline exceeded"]);
        let s = a.summary(Duration::from_secs(2));
        assert_eq!((s.ok, s.errors), (4, 2));
        assert_eq!(s.ops_per_sec, 2.0);
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (2.0, 4.0, 4.0));
        assert!(s.per_second.is_empty(), "no start, no series");
    }

    #[test]
    fn seconds_are_counted_and_a_collapse_shows() {
        let start = Instant::now() - Duration::from_millis(1500);
        let mut a = Recorder::since(start);
        a.ok(Duration::from_millis(1));
        a.per_second = vec![100, 90, 30, 95, 12];
        let mut b = Recorder::since(start);
        b.per_second = vec![0, 10, 10, 5];
        a.merge(b);
        assert_eq!(a.per_second, vec![100, 100, 40, 100, 12]);
        let s = a.summary(Duration::from_millis(4500));
        // Whole seconds 100, 100, 40, 100: the slowest is 0.4 of the median.
        assert_eq!(s.slowest_second_ratio, Some(0.4));
        assert_eq!(slowest_second_ratio(&[5, 5], Duration::from_secs(2)), None);
    }
}
