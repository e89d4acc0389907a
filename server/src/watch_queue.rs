//! The driver's side of watch delivery: one bounded queue per watch stream, between the driver
//! loop and the task that writes the stream to its client.
//!
//! The loop never waits for a client. [`WatchQueues::offer`] puts a response in its stream's
//! queue with `try_send`; when the queue is full the stream *stalls*: that response and every
//! later one for it are refused and kept, in order, until [`WatchQueues::take_reports`] turns
//! them into `Input::WatchRefused` for the engine, which parks the stream's watchers (etcd's
//! victims) and rewinds each to the first revision its client was refused. Once the queue has
//! drained to half its size, `take_reports` sends `Input::WatchWritable`, and the engine replays
//! the watchers from the MVCC history. So a client that stops reading holds at most
//! [`WATCH_QUEUE_LEN`] responses here, plus the refusals of one loop step; events written
//! meanwhile stay in the history, not in memory (`strata_engine::watch`, *Slow streams*).
//!
//! Ordering contract (the engine's): reports come before any other input of the step, every
//! refusal of a stream before its `WatchWritable`, and a stream stays stalled (refusing
//! everything) from its first refusal until its `WatchWritable` is sent.
//!
//! Room is checked whenever the loop wakes (at least every tick), not signalled by the writer:
//! a stalled stream resumes within one tick of its client catching up, as etcd retries its
//! victims from a periodic loop.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use strata_engine::proto::etcdserverpb::WatchResponse;
use strata_engine::watch::WatchOutput;
use strata_engine::{Input, StreamId};
use tokio::sync::mpsc::{self, error::TrySendError};

/// Responses queued per watch stream before it stalls (etcd's `chanBufLen`).
pub const WATCH_QUEUE_LEN: usize = 128;
/// Free slots a stalled queue needs before its stream resumes: resuming at the first free slot
/// would refill it at once and stall again.
const RESUME_FREE_SLOTS: usize = WATCH_QUEUE_LEN / 2;
const _: () = assert!(0 < RESUME_FREE_SLOTS && RESUME_FREE_SLOTS <= WATCH_QUEUE_LEN);

/// What became of an offered response.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// Queued, or dropped because its stream is unknown (closed before the engine knew).
    Sent,
    /// Refused, and the stream stalled with it.
    Stalled,
    /// Refused: the stream was already stalled.
    Refused,
    /// The stream's writer is gone; the engine must be told the stream closed.
    Gone,
}

#[derive(Debug, Default)]
pub struct WatchQueues {
    queues: HashMap<StreamId, mpsc::Sender<WatchOutput>>,
    /// Refused responses not yet reported, per stream, in emission order.
    refused: BTreeMap<StreamId, Vec<WatchResponse>>,
    /// Streams refusing everything until their `WatchWritable` is sent.
    stalled: BTreeSet<StreamId>,
}

impl WatchQueues {
    /// A queue for a new stream: the sender goes in the driver, the receiver to the writer.
    pub fn channel() -> (mpsc::Sender<WatchOutput>, mpsc::Receiver<WatchOutput>) {
        mpsc::channel(WATCH_QUEUE_LEN)
    }

    pub fn open(&mut self, stream: StreamId, queue: mpsc::Sender<WatchOutput>) {
        self.queues.insert(stream, queue);
    }

    /// The stream is closed: whatever it was refused is moot.
    pub fn close(&mut self, stream: StreamId) {
        self.queues.remove(&stream);
        self.refused.remove(&stream);
        self.stalled.remove(&stream);
    }

    pub fn offer(&mut self, out: WatchOutput) -> Offered {
        let Some(queue) = self.queues.get(&out.stream) else {
            return Offered::Sent;
        };
        let stream = out.stream;
        if self.stalled.contains(&stream) {
            self.refused.entry(stream).or_default().push(out.response);
            return Offered::Refused;
        }
        match queue.try_send(out) {
            Ok(()) => Offered::Sent,
            Err(TrySendError::Full(out)) => {
                self.stalled.insert(stream);
                self.refused.entry(stream).or_default().push(out.response);
                Offered::Stalled
            }
            Err(TrySendError::Closed(_)) => {
                self.close(stream);
                Offered::Gone
            }
        }
    }

    /// Whether the next step has reports to carry; the loop wakes for them.
    pub fn has_reports(&self) -> bool {
        !self.refused.is_empty() || self.stalled.iter().any(|s| self.resumable(s))
    }

    /// A stalled stream whose queue has room again, or whose writer has gone.
    fn resumable(&self, stream: &StreamId) -> bool {
        self.queues
            .get(stream)
            .is_none_or(|q| q.is_closed() || q.capacity() >= RESUME_FREE_SLOTS)
    }

    /// The inputs that must open the next step: every refusal, then `WatchWritable` for each
    /// stalled stream with room (or `WatchStreamClosed` for one whose writer has gone).
    pub fn take_reports(&mut self) -> Vec<Input> {
        let mut inputs: Vec<Input> = std::mem::take(&mut self.refused)
            .into_iter()
            .map(|(stream, responses)| Input::WatchRefused { stream, responses })
            .collect();
        let resumed: Vec<StreamId> = self
            .stalled
            .iter()
            .copied()
            .filter(|s| self.resumable(s))
            .collect();
        for stream in resumed {
            self.stalled.remove(&stream);
            if self.queues.get(&stream).is_none_or(|q| q.is_closed()) {
                self.close(stream);
                inputs.push(Input::WatchStreamClosed { stream });
            } else {
                inputs.push(Input::WatchWritable { stream });
            }
        }
        inputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(stream: u64, watch_id: i64) -> WatchOutput {
        WatchOutput {
            stream: StreamId(stream),
            response: WatchResponse {
                watch_id,
                ..WatchResponse::default()
            },
            fragment: false,
        }
    }

    fn reported(inputs: &[Input]) -> Vec<String> {
        inputs
            .iter()
            .map(|i| match i {
                Input::WatchRefused { stream, responses } => {
                    let ids: Vec<i64> = responses.iter().map(|r| r.watch_id).collect();
                    format!("refused {} {ids:?}", stream.0)
                }
                Input::WatchWritable { stream } => format!("writable {}", stream.0),
                Input::WatchStreamClosed { stream } => format!("closed {}", stream.0),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_full_queue_refuses_everything_after_until_it_has_room() {
        let mut queues = WatchQueues::default();
        let (tx, mut rx) = WatchQueues::channel();
        queues.open(StreamId(1), tx);
        for id in 0..WATCH_QUEUE_LEN as i64 {
            assert_eq!(queues.offer(output(1, id)), Offered::Sent);
        }
        assert_eq!(queues.offer(output(1, 1000)), Offered::Stalled);
        // One slot frees up, but the stream stays stalled: no gap can open.
        rx.try_recv().unwrap();
        assert_eq!(queues.offer(output(1, 1001)), Offered::Refused);
        assert!(queues.has_reports());
        assert_eq!(
            reported(&queues.take_reports()),
            vec!["refused 1 [1000, 1001]"]
        );
        assert!(!queues.has_reports(), "one free slot is not enough");
        for _ in 0..RESUME_FREE_SLOTS {
            rx.try_recv().unwrap();
        }
        assert!(queues.has_reports());
        assert_eq!(reported(&queues.take_reports()), vec!["writable 1"]);
        assert_eq!(queues.offer(output(1, 1002)), Offered::Sent);
    }

    #[test]
    fn a_stalled_stream_whose_writer_left_is_reported_closed() {
        let mut queues = WatchQueues::default();
        let (tx, rx) = WatchQueues::channel();
        queues.open(StreamId(2), tx);
        for id in 0..=WATCH_QUEUE_LEN as i64 {
            queues.offer(output(2, id));
        }
        drop(rx);
        assert_eq!(
            reported(&queues.take_reports()),
            vec!["refused 2 [128]", "closed 2"]
        );
        assert_eq!(queues.offer(output(2, 7)), Offered::Sent, "unknown now");
    }
}
