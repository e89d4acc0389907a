//! What one measurement yields: every successful operation's latency, the errors, and the
//! wall time of the timed phase, summarised as throughput and nearest-rank percentiles.
//!
//! Latencies are kept whole (a sorted `Vec` of nanoseconds), not bucketed: a run is tens of
//! thousands of operations, so exact percentiles cost a few hundred kilobytes and no
//! dependency. Throughput counts successful operations only; a failed one is counted in
//! `errors` and leaves no latency.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Distinct error texts a recorder keeps as samples; the rest are only counted.
const ERROR_SAMPLES_MAX: usize = 5;

/// One client's record of the operations it ran.
#[derive(Debug, Default)]
pub struct Recorder {
    latencies_ns: Vec<u64>,
    errors: u64,
    error_samples: Vec<String>,
}

impl Recorder {
    pub fn ok(&mut self, latency: Duration) {
        self.latencies_ns
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
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
        }
    }
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
    }
}
