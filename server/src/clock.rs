//! Where time enters the node. The driver reads the engine's `now_ms` and paces its ticks
//! through a [`NodeClock`]; production leaves it exact, the simulator skews it.
//!
//! Invariants:
//! - `now_ms` never decreases (the engine's contract): like etcd, which measures leases on
//!   Go's monotonic clock, Strata only sees time jump forward (a paused VM, a stalled
//!   process); a wall-clock step backwards does not exist for it.
//! - Drift is a rate: a clock at +50_000 ppm runs 5% fast, so its ticks come 5% sooner and its
//!   lease deadlines pass 5% sooner in real time. The rate is bounded to ±50%.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest drift accepted, in parts per million.
pub const MAX_DRIFT_PPM: i64 = 500_000;

/// A node's clock adjustments, shared between the driver and whoever skews it.
#[derive(Clone, Debug, Default)]
pub struct NodeClock {
    inner: Arc<Adjustments>,
}

#[derive(Debug, Default)]
struct Adjustments {
    /// Forward jumps so far, in milliseconds.
    jumped_ms: AtomicU64,
    drift_ppm: AtomicI64,
}

impl NodeClock {
    /// Moves this node's time forward by `by` at once.
    pub fn jump(&self, by: Duration) {
        self.inner
            .jumped_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    /// Sets the rate error, clamped to ±[`MAX_DRIFT_PPM`].
    pub fn set_drift_ppm(&self, ppm: i64) {
        self.inner
            .drift_ppm
            .store(ppm.clamp(-MAX_DRIFT_PPM, MAX_DRIFT_PPM), Ordering::Relaxed);
    }

    pub fn drift_ppm(&self) -> i64 {
        self.inner.drift_ppm.load(Ordering::Relaxed)
    }

    fn jumped_ms(&self) -> u64 {
        self.inner.jumped_ms.load(Ordering::Relaxed)
    }

    /// How long `local` of this node's time lasts in real time.
    pub fn real_duration(&self, local: Duration) -> Duration {
        let ppm = self.drift_ppm();
        let nanos = local.as_nanos() as i128 * 1_000_000 / (1_000_000 + ppm as i128);
        Duration::from_nanos(nanos.max(1) as u64)
    }
}

/// The driver's reading of a [`NodeClock`]: integrates the drift piecewise, so changing the
/// rate never moves time backwards.
#[derive(Debug)]
pub struct LocalTime {
    clock: NodeClock,
    last_real: tokio::time::Instant,
    /// Local microseconds elapsed up to `last_real`, drift applied, jumps excluded.
    local_us: u64,
}

impl LocalTime {
    pub fn new(clock: NodeClock) -> LocalTime {
        LocalTime {
            clock,
            last_real: tokio::time::Instant::now(),
            local_us: 0,
        }
    }

    pub fn clock(&self) -> &NodeClock {
        &self.clock
    }

    /// Milliseconds of local time since the driver started; never decreases.
    pub fn now_ms(&mut self) -> u64 {
        let now = tokio::time::Instant::now();
        let real_us = now.duration_since(self.last_real).as_micros() as i128;
        let ppm = self.clock.drift_ppm() as i128;
        self.local_us += (real_us * (1_000_000 + ppm) / 1_000_000).max(0) as u64;
        self.last_real = now;
        self.local_us / 1000 + self.clock.jumped_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_scales_real_durations() {
        let clock = NodeClock::default();
        assert_eq!(
            clock.real_duration(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        clock.set_drift_ppm(100_000);
        let fast = clock.real_duration(Duration::from_millis(110));
        assert_eq!(fast, Duration::from_millis(100));
        clock.set_drift_ppm(10_000_000);
        assert_eq!(clock.drift_ppm(), MAX_DRIFT_PPM);
    }
}
