//! The run's shared record: clients, watchers, members' observers and the nemesis append to
//! one [`History`] through a [`Recorder`], stamping simulated time. Everything runs on
//! madsim's single thread, so the order of appends is the run's deterministic order.

use std::sync::{Arc, Mutex};

use crate::history::{History, Nanos, NodeIx, Op, RaftEvent, RaftRecord, Watch};

#[derive(Clone, Debug)]
pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
    start: tokio::time::Instant,
}

#[derive(Debug, Default)]
struct Inner {
    history: History,
    next_op: u64,
    /// Human-readable nemesis and cluster log, part of the trace.
    log: Vec<String>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            inner: Arc::default(),
            start: tokio::time::Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("recorder lock")
    }

    /// Simulated nanoseconds since the run started.
    pub fn now(&self) -> Nanos {
        self.start.elapsed().as_nanos() as Nanos
    }

    pub fn next_op_id(&self) -> u64 {
        let mut inner = self.lock();
        inner.next_op += 1;
        inner.next_op
    }

    pub fn op(&self, op: Op) {
        self.lock().history.ops.push(op);
    }

    pub fn watch(&self, watch: Watch) {
        self.lock().history.watches.push(watch);
    }

    pub fn raft(&self, node: NodeIx, event: RaftEvent) {
        let at = self.now();
        self.lock()
            .history
            .raft
            .push(RaftRecord { at, node, event });
    }

    /// One line of the run's story ("12.300s kill s1 (leader)").
    pub fn log(&self, line: impl Into<String>) {
        let at = self.now();
        let line = format!(
            "{:>4}.{:03}s {}",
            at / 1_000_000_000,
            at / 1_000_000 % 1000,
            line.into()
        );
        self.lock().log.push(line);
    }

    pub fn with_history<T>(&self, f: impl FnOnce(&mut History) -> T) -> T {
        f(&mut self.lock().history)
    }

    /// The history (ops sorted by invoke time) and the log.
    pub fn finish(&self) -> (History, Vec<String>) {
        let mut inner = self.lock();
        let mut history = std::mem::take(&mut inner.history);
        history.ops.sort_by_key(|o| (o.invoke, o.id));
        history.watches.sort_by_key(|w| (w.invoke, w.id));
        (history, std::mem::take(&mut inner.log))
    }
}
