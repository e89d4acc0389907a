//! The watch hub: which events each watcher sees, and when (etcd's `watchable_store.go`,
//! `watcher_group.go`, `watcher.go` and the per-stream rules of `v3rpc/watch.go`).
//!
//! # What it owns
//!
//! Watches are node-local, never replicated. The driver registers them per client stream; a
//! watcher is named by `(StreamId, WatchId)`. Each watcher is either
//!
//! - **synced**: it has received every matching event up to the hub's current revision, and
//!   [`WatchHub::notify`] hands it new events as revisions are applied. Synced watchers are
//!   indexed by key range (`KeyIndex`), so fan-out costs O(log n + matches) per event, not
//!   O(watchers); or
//! - **unsynced**: it asked for history (`start_revision <= current`), the node installed a
//!   snapshot ([`WatchHub::unsync_all`]) or its stream was parked and is writable again;
//!   [`WatchHub::sync`] replays it from a [`History`], at most [`WATCH_BATCH_MAX_REVS`]
//!   revisions per call, and moves it to synced once it reaches the current revision; or
//! - **parked**: its stream's client is not reading (see *Slow streams* below); it is given
//!   nothing until the stream is writable again.
//!
//! `next_rev` (etcd's `minRev`) is the lowest revision a watcher has not been given yet.
//!
//! # Guarantees (etcd's API guarantees for watch) and how they hold
//!
//! - *Ordered, unique*: a watcher is served by at most one of `notify` (synced) and `sync`
//!   (unsynced) at any time, each only hands it events at or above its `next_rev`, and then moves
//!   `next_rev` past them. A parked watcher is served by neither; its `next_rev` only moves back,
//!   to the first revision the client was refused.
//! - *Reliable*: a replay ends at `current` and the watcher joins the synced set in the same call,
//!   so the next revision it can miss is `current + 1`, which `notify` delivers. This needs the
//!   driver's ordering contract below.
//! - *Atomic*: one response carries all of a watcher's events of the revisions it covers; `sync`
//!   windows and `notify` batches consist of whole revisions. A watcher that asked for
//!   fragments may get a big response as several ([`fragments`], applied by the server as it
//!   writes the stream, after the queue below); its client joins them back.
//! - *Resumable*: a watch created with `start_revision = R + 1` sees exactly the events after R,
//!   or a compacted cancel when R + 1 is no longer in the history.
//! - *Bookmarkable*: a progress notification at revision R (the header revision, which the
//!   engine fills with its current revision) is only sent for synced watchers, which have then
//!   been given every event up to R.
//!
//! # Ordering contract
//!
//! - The driver passes every applied revision's events to `notify` (in revision order) before
//!   any call passes a `current` that includes that revision; `current` never decreases. Both
//!   are asserted. Revisions installed by a snapshot are never notified: the driver calls
//!   `unsync_all` instead, and `sync` replays them.
//! - Outputs are sent in the order returned; within one call they are ordered by
//!   `(stream, watch_id)`, and a stream-wide progress notification comes after the events of
//!   the same call.
//! - Response headers are left `None`; the engine fills them with its current revision, which is
//!   the revision each response speaks for (etcd uses `currentRev` likewise). A response held
//!   for a parked stream keeps the header it was given when first emitted.
//! - Every output passes [`WatchHub::route`] before it leaves the engine (`Node::emit_watch`
//!   does this), so nothing reaches a parked stream.
//! - The driver reports refusals ([`WatchHub::refused`]) before any other input that follows
//!   them, and reports a stream [`WatchHub::writable`] only after all its refusals: a stale
//!   refusal would rewind a watcher that reused the id of a canceled one.
//!
//! # Slow streams: bounded delivery
//!
//! The driver queues each stream's responses for its client in a bounded queue (etcd's
//! `chanBufLen`: 128 responses) and never waits on it. When the queue is full it refuses that
//! response and every later one for the stream, and hands them back through
//! [`WatchHub::refused`]. The hub then **parks** the stream, as etcd moves a watcher it cannot
//! send to into its victim set: every watcher of the stream leaves the synced and unsynced sets,
//! with `next_rev` rewound to the first revision of its first refused response (a synced
//! watcher was handed everything up to `current`, so it resumes at `current + 1` at the
//! latest). No event is dropped and none is buffered: a parked watcher's events stay in the MVCC
//! history. When the driver has room again it calls [`WatchHub::writable`]: the responses held
//! for the stream go out first, in order, then its watchers rejoin the unsynced set and `sync`
//! replays them from `next_rev`, one window at a time, exactly as a watcher that asked for an
//! old revision. If compaction passes a parked watcher's `next_rev` meanwhile, that replay
//! cancels it with `compact_revision`, as etcd cancels a victim that fell behind compaction.
//!
//! What a parked stream is not sent: created and canceled responses are held, in order, until
//! it is writable. A refused stream-wide progress notification becomes a deferred progress
//! request again, answered once the stream has caught up, so it still bookmarks. A refused
//! periodic notification of one watcher is dropped (etcd drops one it cannot send too); the
//! next round sends another.
//!
//! **Memory bound per stream**: the driver's queue (128 responses; each holds one watcher's
//! events of one `notify` batch, or of one replay window of at most [`WATCH_BATCH_MAX_REVS`]
//! revisions), plus, while parked, one fixed-size record per watcher and the created/canceled
//! responses owed (one per create or cancel the client sent while not reading). A client that
//! stops reading costs O(queue + watchers + its own requests), never O(events written while it
//! does not read). Refused responses live only from one driver step to the next.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use prost::Message as _;

use crate::error::EtcdError;
use crate::limits::WATCH_BATCH_MAX_REVS;
use crate::proto::etcdserverpb::{
    watch_create_request::FilterType, WatchCreateRequest, WatchResponse,
};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};
use crate::types::{Revision, StreamId, WatchId};

/// etcd's `clientv3.InvalidWatchID`: failed creates and stream-wide progress notifications.
pub const INVALID_WATCH_ID: WatchId = WatchId(-1);
/// etcd's `clientv3.AutoWatchID`: a create asking the server to pick the id.
const AUTO_WATCH_ID: i64 = 0;
/// `mvcc.ErrEmptyWatcherRange`, sent as a cancel reason.
pub const CANCEL_REASON_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// `mvcc.ErrWatcherDuplicateID`, sent as a cancel reason.
pub const CANCEL_REASON_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// A response for one stream. `response.header` is `None`: the engine fills it.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchOutput {
    pub stream: StreamId,
    pub response: WatchResponse,
    /// The watcher asked for fragments (`WatchCreateRequest.fragment`): the server may split
    /// this response with [`fragments`] when it sends it.
    pub fragment: bool,
}

/// The MVCC store's history, as the hub needs it to replay unsynced watchers.
pub trait History {
    /// Every event with from <= mod_revision <= to, in revision order, each with prev_kv filled
    /// when a previous version exists; Err(compact_revision) if `from` is compacted.
    fn events(&self, from: Revision, to: Revision) -> Result<Vec<Event>, Revision>;
}

type WatcherKey = (StreamId, WatchId);

/// A watched key range: `[start, end)`, `end: None` meaning to the end of the keyspace. A single
/// key `k` is the range `[k, k\0)`, which holds `k` alone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct KeyRange {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl KeyRange {
    /// etcd's `range_end` rules: empty = the key alone, `\0` = every key >= key, otherwise
    /// `[key, range_end)`, which must not be empty.
    fn parse(key: Vec<u8>, range_end: &[u8]) -> Option<KeyRange> {
        let end = match range_end {
            [] => {
                let mut next = key.clone();
                next.push(0);
                Some(next)
            }
            [0] => None,
            end if key.as_slice() >= end => return None,
            end => Some(end.to_vec()),
        };
        Some(KeyRange { start: key, end })
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && self.end.as_deref().is_none_or(|end| key < end)
    }

    fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        let end = match &self.end {
            Some(end) => Bound::Excluded(end.as_slice()),
            None => Bound::Unbounded,
        };
        (Bound::Included(self.start.as_slice()), end)
    }
}

/// Watchers by key range, for fan-out: which watchers does a key reach?
///
/// Watchers with the same range share a group (as in etcd's `watcherGroup`). The keyspace is cut
/// at every group's endpoints into segments; `segments[b]` holds the groups covering
/// `[b, next boundary)`, so stabbing a key is one ordered-map lookup. Invariant: a boundary
/// exists exactly where some group starts or ends (`endpoint_refs`), and removing one whose
/// count drops to zero leaves coverage unchanged, because no group starts or ends there.
#[derive(Clone, Debug, Default)]
struct KeyIndex {
    group_ids: BTreeMap<KeyRange, u64>,
    groups: BTreeMap<u64, Group>,
    segments: BTreeMap<Vec<u8>, BTreeSet<u64>>,
    endpoint_refs: BTreeMap<Vec<u8>, usize>,
    next_group: u64,
}

#[derive(Clone, Debug)]
struct Group {
    range: KeyRange,
    watchers: BTreeSet<WatcherKey>,
}

impl KeyIndex {
    fn insert(&mut self, range: &KeyRange, watcher: WatcherKey) {
        if let Some(id) = self.group_ids.get(range) {
            let fresh = self.groups.get_mut(id).unwrap().watchers.insert(watcher);
            assert!(fresh, "watcher {watcher:?} indexed twice");
            return;
        }
        let id = self.next_group;
        self.next_group += 1;
        self.group_ids.insert(range.clone(), id);
        let group = Group {
            range: range.clone(),
            watchers: BTreeSet::from([watcher]),
        };
        self.groups.insert(id, group);
        self.add_endpoint(&range.start);
        if let Some(end) = &range.end {
            self.add_endpoint(end);
        }
        for (_, covering) in self.segments.range_mut::<[u8], _>(range.bounds()) {
            covering.insert(id);
        }
    }

    fn remove(&mut self, range: &KeyRange, watcher: WatcherKey) {
        let id = *self
            .group_ids
            .get(range)
            .unwrap_or_else(|| panic!("watcher {watcher:?} not indexed"));
        let group = self.groups.get_mut(&id).unwrap();
        assert!(
            group.watchers.remove(&watcher),
            "watcher {watcher:?} not indexed"
        );
        if !group.watchers.is_empty() {
            return;
        }
        self.groups.remove(&id);
        self.group_ids.remove(range);
        for (_, covering) in self.segments.range_mut::<[u8], _>(range.bounds()) {
            covering.remove(&id);
        }
        self.release_endpoint(&range.start);
        if let Some(end) = &range.end {
            self.release_endpoint(end);
        }
    }

    fn add_endpoint(&mut self, boundary: &[u8]) {
        *self.endpoint_refs.entry(boundary.to_vec()).or_default() += 1;
        if !self.segments.contains_key(boundary) {
            let inherited = self.covering_below(boundary).cloned().unwrap_or_default();
            self.segments.insert(boundary.to_vec(), inherited);
        }
    }

    fn release_endpoint(&mut self, boundary: &[u8]) {
        let refs = self.endpoint_refs.get_mut(boundary).unwrap();
        *refs -= 1;
        if *refs > 0 {
            return;
        }
        self.endpoint_refs.remove(boundary);
        let covering = self.segments.remove(boundary).unwrap();
        let below = self.covering_below(boundary).cloned().unwrap_or_default();
        assert_eq!(
            covering, below,
            "segment at {boundary:02x?} differs from its predecessor with no endpoint there"
        );
    }

    /// The groups covering the keys just below `boundary`.
    fn covering_below(&self, boundary: &[u8]) -> Option<&BTreeSet<u64>> {
        let below = (Bound::Unbounded, Bound::Excluded(boundary));
        self.segments
            .range::<[u8], _>(below)
            .next_back()
            .map(|(_, s)| s)
    }

    /// Every watcher whose range holds `key`.
    fn stab<'a>(&'a self, key: &'a [u8]) -> impl Iterator<Item = WatcherKey> + 'a {
        let at_or_below = (Bound::Unbounded, Bound::Included(key));
        let covering = self.segments.range::<[u8], _>(at_or_below).next_back();
        covering
            .into_iter()
            .flat_map(|(_, ids)| ids)
            .flat_map(move |id| {
                let group = &self.groups[id];
                assert!(
                    group.range.contains(key),
                    "{key:02x?} outside {:?}",
                    group.range
                );
                group.watchers.iter().copied()
            })
    }
}

/// Which of the hub's sets serves a watcher (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// In the key index; `notify` hands it new revisions.
    Synced,
    /// In the replay queue; `sync` replays it from `next_rev`.
    Unsynced,
    /// Its stream is parked; nothing serves it until the stream is writable.
    Parked,
}

#[derive(Clone, Debug)]
struct Watcher {
    range: KeyRange,
    /// As requested (etcd's `startRev`); 0 means "from the next revision".
    start_revision: Revision,
    /// etcd's `minRev`: the lowest revision this watcher has not been given.
    next_rev: Revision,
    phase: Phase,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    /// An event response went out since the last periodic progress round; etcd then skips the
    /// watcher's next periodic notification.
    sent_since_progress: bool,
}

impl Watcher {
    fn wants(&self, event: &Event) -> bool {
        let dropped = match EventType::try_from(event.r#type) {
            Ok(EventType::Put) => self.no_put,
            Ok(EventType::Delete) => self.no_delete,
            Err(_) => panic!("event of unknown type {}", event.r#type),
        };
        !dropped
    }

    /// The event as this watcher receives it: `prev_kv` only if asked for.
    fn render(&self, event: &Event) -> Event {
        Event {
            r#type: event.r#type,
            kv: event.kv.clone(),
            prev_kv: if self.prev_kv {
                event.prev_kv.clone()
            } else {
                None
            },
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Stream {
    /// etcd's `nextID`: auto-assigned ids count up from 0, skipping ids in use.
    next_auto_id: i64,
    watchers: BTreeSet<WatchId>,
    /// The driver refused a response and has not reported the stream writable since.
    parked: bool,
    /// Created and canceled responses held while parked, in emission order, headers kept.
    owed: Vec<WatchResponse>,
}

#[derive(Clone, Debug)]
pub struct WatchHub {
    watchers: BTreeMap<WatcherKey, Watcher>,
    streams: BTreeMap<StreamId, Stream>,
    synced: KeyIndex,
    /// Unsynced watchers by `next_rev`, so the laggard is first.
    unsynced: BTreeSet<(Revision, WatcherKey)>,
    /// How many watchers are parked.
    parked: usize,
    /// Watchers that asked for periodic progress notifications.
    progress_notify: BTreeSet<WatcherKey>,
    /// How many watchers asked for `prev_kv` (the node reads previous records only then).
    prev_kv_watchers: usize,
    /// Unsynced watchers created below the compaction: the next `sync` cancels them.
    compacted_on_create: BTreeMap<WatcherKey, Revision>,
    /// Streams owed a progress notification once all their watchers are synced.
    progress_deferred: BTreeSet<StreamId>,
    /// The highest revision the driver has reported (through `current` or `notify`).
    current: Revision,
    next_progress_round_ms: Option<u64>,
    /// Revisions per replay window: [`WATCH_BATCH_MAX_REVS`]; tests shrink it.
    batch_max_revs: i64,
}

impl Default for WatchHub {
    fn default() -> WatchHub {
        WatchHub {
            watchers: BTreeMap::new(),
            streams: BTreeMap::new(),
            synced: KeyIndex::default(),
            unsynced: BTreeSet::new(),
            parked: 0,
            progress_notify: BTreeSet::new(),
            prev_kv_watchers: 0,
            compacted_on_create: BTreeMap::new(),
            progress_deferred: BTreeSet::new(),
            current: Revision::ZERO,
            next_progress_round_ms: None,
            batch_max_revs: WATCH_BATCH_MAX_REVS,
        }
    }
}

fn kv_of(event: &Event) -> &KeyValue {
    event
        .kv
        .as_ref()
        .unwrap_or_else(|| panic!("watch event without kv: {event:?}"))
}

fn revision_of(event: &Event) -> Revision {
    Revision(kv_of(event).mod_revision)
}

/// A failed create: watch id -1, created and canceled at once, with etcd's reason.
pub fn created_and_canceled(stream: StreamId, reason: &str) -> WatchOutput {
    control_output(
        stream,
        WatchResponse {
            watch_id: INVALID_WATCH_ID.get(),
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..WatchResponse::default()
        },
    )
}

/// A response without events: never fragmented.
fn control_output(stream: StreamId, response: WatchResponse) -> WatchOutput {
    WatchOutput {
        stream,
        response,
        fragment: false,
    }
}

fn events_output((stream, id): WatcherKey, events: Vec<Event>, fragment: bool) -> WatchOutput {
    WatchOutput {
        stream,
        response: WatchResponse {
            watch_id: id.get(),
            events,
            ..WatchResponse::default()
        },
        fragment,
    }
}

fn progress_output(stream: StreamId, id: WatchId) -> WatchOutput {
    control_output(
        stream,
        WatchResponse {
            watch_id: id.get(),
            ..WatchResponse::default()
        },
    )
}

/// etcd's `sendFragments` (v3rpc/watch.go): a response of at least `max_bytes` encoded with two
/// or more events becomes several responses of whole events, each under `max_bytes` unless one
/// event alone is larger, all but the last marked `fragment`; any other response is sent whole.
/// Fragments share the header and watch id; the client joins them back (etcd's clientv3 does).
/// Only for watchers that asked for it: etcd sends everyone else the big response whole.
pub fn fragments(mut response: WatchResponse, max_bytes: usize) -> Vec<WatchResponse> {
    if response.encoded_len() < max_bytes || response.events.len() < 2 {
        return vec![response];
    }
    let events = std::mem::take(&mut response.events);
    let template = WatchResponse {
        fragment: true,
        ..response
    };
    let empty_len = template.encoded_len();
    let mut out = Vec::new();
    let mut current = template.clone();
    let mut current_len = empty_len;
    for event in events {
        // `events` is field 11 of WatchResponse.
        let event_len = prost::encoding::message::encoded_len(11, &event);
        if !current.events.is_empty() && current_len + event_len >= max_bytes {
            out.push(std::mem::replace(&mut current, template.clone()));
            current_len = empty_len;
        }
        current.events.push(event);
        current_len += event_len;
    }
    current.fragment = false;
    out.push(current);
    out
}

impl WatchHub {
    pub fn new() -> WatchHub {
        WatchHub::default()
    }

    /// Records the driver's current revision; it never goes back.
    fn advance(&mut self, current: Revision) {
        assert!(
            current >= self.current,
            "current revision went back from {} to {current}",
            self.current
        );
        self.current = current;
    }

    /// A `WatchCreateRequest`, answered as etcd's v3rpc layer does: failures come back as a
    /// created-and-canceled response with watch id -1 and etcd's reason. A watch starting at 0 or
    /// in the future is synced; one starting at or below `current` is replayed by `sync`, and if
    /// its start is below `compact`, the next `sync` cancels it with `compact_revision` set
    /// (etcd likewise sends the created response first and the compacted cancel from its sync
    /// loop).
    pub fn create(
        &mut self,
        stream: StreamId,
        req: &WatchCreateRequest,
        current: Revision,
        compact: Revision,
    ) -> WatchOutput {
        self.advance(current);
        // etcd: an empty key means `\0`, the smallest key.
        let key = if req.key.is_empty() {
            vec![0]
        } else {
            req.key.clone()
        };
        if req.start_revision < 0 {
            return created_and_canceled(stream, &EtcdError::Compacted.to_string());
        }
        let Some(range) = KeyRange::parse(key, &req.range_end) else {
            return created_and_canceled(stream, CANCEL_REASON_EMPTY_RANGE);
        };
        let Some(id) = self.assign_id(stream, req.watch_id) else {
            return created_and_canceled(stream, CANCEL_REASON_DUPLICATE_ID);
        };
        let start_revision = Revision(req.start_revision);
        let synced = start_revision == Revision::ZERO || start_revision > current;
        let phase = if self.streams[&stream].parked {
            Phase::Parked
        } else if synced {
            Phase::Synced
        } else {
            Phase::Unsynced
        };
        let watcher = Watcher {
            range,
            start_revision,
            next_rev: if synced {
                start_revision.max(current.next())
            } else {
                start_revision
            },
            phase,
            no_put: req.filters.contains(&(FilterType::Noput as i32)),
            no_delete: req.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: req.prev_kv,
            progress_notify: req.progress_notify,
            fragment: req.fragment,
            sent_since_progress: false,
        };
        self.insert(stream, id, watcher);
        if !synced && start_revision < compact {
            self.compacted_on_create.insert((stream, id), compact);
        }
        control_output(
            stream,
            WatchResponse {
                watch_id: id.get(),
                created: true,
                ..WatchResponse::default()
            },
        )
    }

    /// etcd's `watchStream.Watch` id rules: `0` asks for the next free id counting up from 0;
    /// any other id is the client's and must not be in use on the stream.
    fn assign_id(&mut self, stream: StreamId, requested: i64) -> Option<WatchId> {
        let s = self.streams.entry(stream).or_default();
        if requested != AUTO_WATCH_ID {
            let id = WatchId(requested);
            return (!s.watchers.contains(&id)).then_some(id);
        }
        while s.watchers.contains(&WatchId(s.next_auto_id)) {
            s.next_auto_id += 1;
        }
        let id = WatchId(s.next_auto_id);
        s.next_auto_id += 1;
        Some(id)
    }

    fn insert(&mut self, stream: StreamId, id: WatchId, watcher: Watcher) {
        let key = (stream, id);
        match watcher.phase {
            Phase::Synced => self.synced.insert(&watcher.range, key),
            Phase::Unsynced => {
                self.unsynced.insert((watcher.next_rev, key));
            }
            Phase::Parked => self.parked += 1,
        }
        if watcher.progress_notify {
            self.progress_notify.insert(key);
        }
        self.prev_kv_watchers += usize::from(watcher.prev_kv);
        self.streams.entry(stream).or_default().watchers.insert(id);
        let old = self.watchers.insert(key, watcher);
        assert!(old.is_none(), "watcher {key:?} created twice");
    }

    fn remove(&mut self, key: WatcherKey) -> Option<Watcher> {
        let watcher = self.watchers.remove(&key)?;
        match watcher.phase {
            Phase::Synced => self.synced.remove(&watcher.range, key),
            Phase::Unsynced => {
                let was_unsynced = self.unsynced.remove(&(watcher.next_rev, key));
                assert!(was_unsynced, "unsynced watcher {key:?} not queued");
            }
            Phase::Parked => self.parked -= 1,
        }
        self.progress_notify.remove(&key);
        self.prev_kv_watchers -= usize::from(watcher.prev_kv);
        self.compacted_on_create.remove(&key);
        if let Some(s) = self.streams.get_mut(&key.0) {
            s.watchers.remove(&key.1);
        }
        Some(watcher)
    }

    /// A `WatchCancelRequest`. Unknown ids get no answer, as in etcd.
    pub fn cancel(&mut self, stream: StreamId, id: WatchId) -> Option<WatchOutput> {
        self.remove((stream, id))?;
        Some(control_output(
            stream,
            WatchResponse {
                watch_id: id.get(),
                canceled: true,
                ..WatchResponse::default()
            },
        ))
    }

    /// The client stream ended: drop its watchers, answer nothing.
    pub fn close_stream(&mut self, stream: StreamId) {
        let Some(s) = self.streams.remove(&stream) else {
            return;
        };
        for id in s.watchers {
            self.remove((stream, id));
        }
        self.progress_deferred.remove(&stream);
    }

    /// Hands the events of one or more just-applied revisions (in revision order) to synced
    /// watchers: one response per watcher holding all its matching events, `prev_kv` stripped
    /// unless asked for; watchers whose events are all filtered out get nothing.
    pub fn notify(&mut self, events: &[Event]) -> Vec<WatchOutput> {
        let Some(last) = events.last() else {
            return Vec::new();
        };
        let first = revision_of(&events[0]);
        assert!(
            first > self.current,
            "notify of revision {first} at or below current revision {}",
            self.current
        );
        let mut batches: BTreeMap<WatcherKey, Vec<Event>> = BTreeMap::new();
        let mut previous = first;
        for event in events {
            let revision = revision_of(event);
            assert!(
                revision >= previous,
                "notify events out of order: {revision} after {previous}"
            );
            previous = revision;
            for key in self.synced.stab(&kv_of(event).key) {
                let w = &self.watchers[&key];
                if revision >= w.next_rev && w.wants(event) {
                    batches.entry(key).or_default().push(w.render(event));
                }
            }
        }
        self.current = revision_of(last);
        let mut out = self.deliver(batches);
        self.answer_deferred_progress(&mut out);
        out
    }

    fn deliver(&mut self, batches: BTreeMap<WatcherKey, Vec<Event>>) -> Vec<WatchOutput> {
        let mut out = Vec::with_capacity(batches.len());
        for (key, events) in batches {
            let w = self.watchers.get_mut(&key).unwrap();
            w.sent_since_progress = true;
            out.push(events_output(key, events, w.fragment));
        }
        out
    }

    /// Replays unsynced watchers: one window of at most [`WATCH_BATCH_MAX_REVS`] revisions
    /// starting at the laggard's `next_rev`, served to every unsynced watcher whose `next_rev`
    /// falls inside it (they then advance together). Watchers reaching `current` become synced.
    /// Watchers whose next revision is compacted get etcd's compacted cancel and are removed.
    /// Also answers deferred progress requests of streams now fully synced.
    pub fn sync(&mut self, history: &dyn History, current: Revision) -> Vec<WatchOutput> {
        self.advance(current);
        let mut out = Vec::new();
        self.cancel_created_compacted(&mut out);
        while let Some(&(from, _)) = self.unsynced.first() {
            if from > current {
                self.resync_future_watchers();
                break;
            }
            let to = current.min(Revision(from.get() + self.batch_max_revs - 1));
            match history.events(from, to) {
                Ok(events) => {
                    self.replay(from, to, &events, &mut out);
                    break;
                }
                // The history is the authority: at least the watchers at `from` are gone.
                Err(compact) => self.cancel_compacted(compact.max(from.next()), compact, &mut out),
            }
        }
        self.answer_deferred_progress(&mut out);
        out
    }

    fn cancel_created_compacted(&mut self, out: &mut Vec<WatchOutput>) {
        for (key, compact) in std::mem::take(&mut self.compacted_on_create) {
            self.remove(key);
            out.push(compacted_output(key, compact));
        }
    }

    /// Cancels every unsynced watcher with `next_rev < below` (etcd's `minRev < compactRev`).
    fn cancel_compacted(&mut self, below: Revision, compact: Revision, out: &mut Vec<WatchOutput>) {
        let doomed: Vec<WatcherKey> = self
            .unsynced
            .iter()
            .take_while(|(next_rev, _)| *next_rev < below)
            .map(|&(_, key)| key)
            .collect();
        assert!(
            !doomed.is_empty(),
            "history compacted at {compact} but no watcher below {below}"
        );
        for key in doomed {
            self.remove(key);
            out.push(compacted_output(key, compact));
        }
    }

    /// Unsynced watchers already past `current` (a future start revision, moved by
    /// `unsync_all`) have nothing to replay.
    fn resync_future_watchers(&mut self) {
        for (_, key) in std::mem::take(&mut self.unsynced) {
            let w = self.watchers.get_mut(&key).unwrap();
            assert!(
                w.next_rev > self.current,
                "watcher {key:?} skipped its replay"
            );
            w.phase = Phase::Synced;
            self.synced.insert(&w.range, key);
        }
    }

    fn replay(
        &mut self,
        from: Revision,
        to: Revision,
        events: &[Event],
        out: &mut Vec<WatchOutput>,
    ) {
        let served: Vec<(Revision, WatcherKey)> = self
            .unsynced
            .range(..=(to, (StreamId(u64::MAX), WatchId(i64::MAX))))
            .copied()
            .collect();
        let mut index = KeyIndex::default();
        for (_, key) in &served {
            index.insert(&self.watchers[key].range, *key);
        }
        let mut batches: BTreeMap<WatcherKey, Vec<Event>> = BTreeMap::new();
        let mut previous = from;
        for event in events {
            let revision = revision_of(event);
            assert!(
                previous <= revision && revision <= to,
                "history gave revision {revision} after {previous} for [{from}, {to}]"
            );
            previous = revision;
            for key in index.stab(&kv_of(event).key) {
                let w = &self.watchers[&key];
                if revision >= w.next_rev && w.wants(event) {
                    batches.entry(key).or_default().push(w.render(event));
                }
            }
        }
        for entry @ (_, key) in served {
            self.unsynced.remove(&entry);
            let w = self.watchers.get_mut(&key).unwrap();
            w.next_rev = to.next();
            if to == self.current {
                w.phase = Phase::Synced;
                self.synced.insert(&w.range, key);
            } else {
                self.unsynced.insert((w.next_rev, key));
            }
        }
        out.extend(self.deliver(batches));
    }

    /// Moves every synced watcher back to unsynced, to be replayed from the revision after the
    /// last one it was given: the node installed a snapshot, so revisions were applied that
    /// `notify` never saw (etcd's `watchableStore.Restore`).
    pub fn unsync_all(&mut self) {
        let synced: Vec<WatcherKey> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.phase == Phase::Synced)
            .map(|(&key, _)| key)
            .collect();
        self.synced = KeyIndex::default();
        for key in synced {
            let w = self.watchers.get_mut(&key).unwrap();
            w.phase = Phase::Unsynced;
            w.next_rev = w.next_rev.max(self.current.next());
            self.unsynced.insert((w.next_rev, key));
        }
    }

    /// A `WatchProgressRequest`: a stream-wide progress notification (watch id -1) at `current`,
    /// only if every watcher of the stream is synced (and none starts in the future), as etcd's
    /// `progressAll`. Otherwise the answer is deferred until `sync`, `notify` or `tick` finds the
    /// stream synced. etcd 3.5.8–3.5.12 deferred too (#15220, PR #15237) but re-checked only
    /// after sending events, so a watcher syncing without events left the request unanswered;
    /// 3.5.13 and 3.6 drop the request instead (PR #17557) and clients must ask again. Deferring
    /// and re-checking on every sync keeps the guarantee without that bug. A stream without
    /// watchers gets no answer, as in etcd, and loses its deferred request.
    pub fn request_progress(&mut self, stream: StreamId, current: Revision) -> Option<WatchOutput> {
        self.advance(current);
        if self.stream_is_synced(stream)? {
            self.progress_deferred.remove(&stream);
            Some(progress_output(stream, INVALID_WATCH_ID))
        } else {
            self.progress_deferred.insert(stream);
            None
        }
    }

    /// `None` for a stream without watchers.
    fn stream_is_synced(&self, stream: StreamId) -> Option<bool> {
        let s = self
            .streams
            .get(&stream)
            .filter(|s| !s.watchers.is_empty())?;
        Some(
            s.watchers
                .iter()
                .all(|&id| self.is_bookmarkable(&self.watchers[&(stream, id)])),
        )
    }

    /// etcd's `progressIfSync`: synced, and not waiting for a future start revision.
    fn is_bookmarkable(&self, w: &Watcher) -> bool {
        w.phase == Phase::Synced && self.current >= w.start_revision
    }

    fn answer_deferred_progress(&mut self, out: &mut Vec<WatchOutput>) {
        let deferred: Vec<StreamId> = self.progress_deferred.iter().copied().collect();
        for stream in deferred {
            match self.stream_is_synced(stream) {
                Some(false) => continue,
                Some(true) => out.push(progress_output(stream, INVALID_WATCH_ID)),
                None => {}
            }
            self.progress_deferred.remove(&stream);
        }
    }

    /// Periodic progress notifications (etcd's `--experimental-watch-progress-notify-interval`,
    /// default 10 minutes): every `interval_ms`, each synced watcher that asked for them and was
    /// sent no events since the previous round gets a notification with its own id. The first
    /// call starts the clock. etcd adds random jitter per stream; the driver may jitter
    /// `interval_ms` itself.
    pub fn tick(&mut self, now_ms: u64, interval_ms: u64, current: Revision) -> Vec<WatchOutput> {
        self.advance(current);
        let mut out = Vec::new();
        let due = *self
            .next_progress_round_ms
            .get_or_insert(now_ms.saturating_add(interval_ms));
        if now_ms >= due {
            self.next_progress_round_ms = Some(now_ms.saturating_add(interval_ms));
            self.progress_round(&mut out);
        }
        self.answer_deferred_progress(&mut out);
        out
    }

    fn progress_round(&mut self, out: &mut Vec<WatchOutput>) {
        for &key in &self.progress_notify {
            let w = &self.watchers[&key];
            if !w.sent_since_progress && self.is_bookmarkable(w) {
                out.push(progress_output(key.0, key.1));
            }
        }
        for key in &self.progress_notify {
            self.watchers.get_mut(key).unwrap().sent_since_progress = false;
        }
    }

    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// Whether any watcher asked for `prev_kv`: only then must events carry it.
    pub fn wants_prev_kv(&self) -> bool {
        self.prev_kv_watchers > 0
    }

    /// Watchers still waiting for a replay; the driver calls `sync` again while any remain.
    pub fn unsynced_count(&self) -> usize {
        self.unsynced.len()
    }

    /// Watchers whose stream is parked (etcd's victims; counted in its slow-watcher gauge).
    pub fn parked_count(&self) -> usize {
        self.parked
    }

    /// Passes a response on to the driver, unless its stream is parked: then it is held in
    /// order, or turned back into what it stands for (see the module docs), and `None` is
    /// returned. Every output leaves the engine through here.
    pub fn route(&mut self, out: WatchOutput) -> Option<WatchOutput> {
        if !self.streams.get(&out.stream).is_some_and(|s| s.parked) {
            return Some(out);
        }
        assert!(
            out.response.events.is_empty(),
            "events for watcher {} of parked stream {:?}",
            out.response.watch_id,
            out.stream
        );
        self.hold(out.stream, out.response);
        None
    }

    /// The driver could not queue these responses for `stream` (its client is not reading):
    /// the first one its queue refused and every later one for the stream, in emission order.
    /// Parks the stream until [`WatchHub::writable`]; nothing in them is lost.
    pub fn refused(&mut self, stream: StreamId, responses: Vec<WatchResponse>) {
        self.park(stream);
        for response in responses {
            self.hold(stream, response);
        }
    }

    fn park(&mut self, stream: StreamId) {
        let s = self.streams.entry(stream).or_default();
        if s.parked {
            return;
        }
        s.parked = true;
        for &id in &s.watchers {
            let key = (stream, id);
            let w = self.watchers.get_mut(&key).unwrap();
            match w.phase {
                Phase::Synced => {
                    self.synced.remove(&w.range, key);
                    // A synced watcher has been handed every revision up to `current`.
                    w.next_rev = w.next_rev.max(self.current.next());
                }
                Phase::Unsynced => {
                    let queued = self.unsynced.remove(&(w.next_rev, key));
                    assert!(queued, "unsynced watcher {key:?} not queued");
                }
                Phase::Parked => panic!("watcher {key:?} parked on a stream that is not"),
            }
            w.phase = Phase::Parked;
            self.parked += 1;
        }
    }

    /// Keeps what a response refused by (or never sent to) a parked stream stands for.
    fn hold(&mut self, stream: StreamId, response: WatchResponse) {
        if let Some(first) = response.events.first() {
            // The client has everything before this response; a canceled watcher is owed nothing.
            let key = (stream, WatchId(response.watch_id));
            if let Some(w) = self.watchers.get_mut(&key) {
                assert_eq!(w.phase, Phase::Parked, "refused events for {key:?}");
                w.next_rev = w.next_rev.min(revision_of(first));
            }
        } else if response.created || response.canceled {
            let s = self.streams.get_mut(&stream).expect("a parked stream");
            s.owed.push(response);
        } else if response.watch_id == INVALID_WATCH_ID.get() {
            // Asked for, so owed: answered once the stream has caught up.
            self.progress_deferred.insert(stream);
        }
        // Otherwise a periodic notification of one watcher: the next round sends another.
    }

    /// The driver has room for `stream` again: the responses held for it, in order, first;
    /// its watchers rejoin the unsynced set and `sync` replays them from `next_rev`.
    pub fn writable(&mut self, stream: StreamId) -> Vec<WatchOutput> {
        let Some(s) = self.streams.get_mut(&stream).filter(|s| s.parked) else {
            return Vec::new();
        };
        s.parked = false;
        for &id in &s.watchers {
            let key = (stream, id);
            let w = self.watchers.get_mut(&key).unwrap();
            assert_eq!(w.phase, Phase::Parked, "watcher {key:?} of a parked stream");
            w.phase = Phase::Unsynced;
            self.unsynced.insert((w.next_rev, key));
            self.parked -= 1;
        }
        std::mem::take(&mut s.owed)
            .into_iter()
            .map(|response| control_output(stream, response))
            .collect()
    }
}

fn compacted_output((stream, id): WatcherKey, compact: Revision) -> WatchOutput {
    control_output(
        stream,
        WatchResponse {
            watch_id: id.get(),
            canceled: true,
            compact_revision: compact.get(),
            ..WatchResponse::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A naive MVCC history: every event ever, latest values for prev_kv, a compaction mark.
    #[derive(Default)]
    struct Store {
        latest: BTreeMap<Vec<u8>, KeyValue>,
        events: Vec<Event>,
        current: Revision,
        compact: Revision,
    }

    impl History for Store {
        fn events(&self, from: Revision, to: Revision) -> Result<Vec<Event>, Revision> {
            if from < self.compact {
                return Err(self.compact);
            }
            let within = |e: &&Event| (from..=to).contains(&revision_of(e));
            Ok(self.events.iter().filter(within).cloned().collect())
        }
    }

    impl Store {
        /// One revision: `Some(value)` puts, `None` deletes. Returns its events.
        fn commit(&mut self, ops: &[(&[u8], Option<&[u8]>)]) -> Vec<Event> {
            let rev = self.current.next();
            let mut events = Vec::new();
            for (key, value) in ops {
                let prev = self.latest.get(*key).cloned();
                let event = match value {
                    Some(value) => {
                        let kv = KeyValue {
                            key: key.to_vec(),
                            create_revision: prev.as_ref().map_or(rev.get(), |p| p.create_revision),
                            mod_revision: rev.get(),
                            version: prev.as_ref().map_or(1, |p| p.version + 1),
                            value: value.to_vec(),
                            lease: 0,
                        };
                        self.latest.insert(key.to_vec(), kv.clone());
                        Event {
                            r#type: EventType::Put as i32,
                            kv: Some(kv),
                            prev_kv: prev,
                        }
                    }
                    None => {
                        let Some(prev) = self.latest.remove(*key) else {
                            continue;
                        };
                        let kv = KeyValue {
                            key: key.to_vec(),
                            mod_revision: rev.get(),
                            ..KeyValue::default()
                        };
                        Event {
                            r#type: EventType::Delete as i32,
                            kv: Some(kv),
                            prev_kv: Some(prev),
                        }
                    }
                };
                events.push(event);
            }
            if !events.is_empty() {
                self.current = rev;
                self.events.extend(events.iter().cloned());
            }
            events
        }

        fn put(&mut self, key: &[u8]) -> Vec<Event> {
            self.commit(&[(key, Some(b"v"))])
        }
    }

    const S1: StreamId = StreamId(1);
    const S2: StreamId = StreamId(2);

    fn watch(key: &[u8], range_end: &[u8], start: i64) -> WatchCreateRequest {
        WatchCreateRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            start_revision: start,
            ..WatchCreateRequest::default()
        }
    }

    fn create(
        hub: &mut WatchHub,
        stream: StreamId,
        req: WatchCreateRequest,
        store: &Store,
    ) -> WatchId {
        let out = hub.create(stream, &req, store.current, store.compact);
        assert!(out.response.created && !out.response.canceled, "{out:?}");
        WatchId(out.response.watch_id)
    }

    /// (stream, watch_id, [revisions of its events]) per output.
    fn revs(outs: &[WatchOutput]) -> Vec<(u64, i64, Vec<i64>)> {
        outs.iter()
            .map(|o| {
                let revs = o
                    .response
                    .events
                    .iter()
                    .map(|e| revision_of(e).get())
                    .collect();
                (o.stream.get(), o.response.watch_id, revs)
            })
            .collect()
    }

    fn keys(out: &WatchOutput) -> Vec<Vec<u8>> {
        out.response
            .events
            .iter()
            .map(|e| kv_of(e).key.clone())
            .collect()
    }

    #[test]
    fn auto_ids_count_from_zero_per_stream_skipping_client_ids() {
        let (mut hub, store) = (WatchHub::new(), Store::default());
        let mut client = watch(b"a", b"", 0);
        client.watch_id = 1;
        assert_eq!(create(&mut hub, S1, client, &store), WatchId(1));
        assert_eq!(
            create(&mut hub, S1, watch(b"a", b"", 0), &store),
            WatchId(0)
        );
        assert_eq!(
            create(&mut hub, S1, watch(b"a", b"", 0), &store),
            WatchId(2)
        );
        assert_eq!(
            create(&mut hub, S2, watch(b"a", b"", 0), &store),
            WatchId(0)
        );
        assert_eq!(hub.watcher_count(), 4);
    }

    #[test]
    fn duplicate_client_id_is_refused_as_etcd_does() {
        let (mut hub, store) = (WatchHub::new(), Store::default());
        let mut req = watch(b"a", b"", 0);
        req.watch_id = 7;
        create(&mut hub, S1, req.clone(), &store);
        let out = hub.create(S1, &req, store.current, store.compact);
        let r = &out.response;
        assert_eq!((r.watch_id, r.created, r.canceled), (-1, true, true));
        assert_eq!(r.cancel_reason, CANCEL_REASON_DUPLICATE_ID);
        assert_eq!(hub.watcher_count(), 1);
        // The same id on another stream is fine.
        create(&mut hub, S2, req, &store);
    }

    #[test]
    fn invalid_ranges_and_negative_start_are_refused() {
        let (mut hub, store) = (WatchHub::new(), Store::default());
        let out = hub.create(S1, &watch(b"b", b"a", 0), Revision(0), Revision(0));
        assert_eq!(out.response.cancel_reason, CANCEL_REASON_EMPTY_RANGE);
        let out = hub.create(S1, &watch(b"b", b"b", 0), Revision(0), Revision(0));
        assert_eq!(out.response.cancel_reason, CANCEL_REASON_EMPTY_RANGE);
        let out = hub.create(S1, &watch(b"b", b"", -1), Revision(0), Revision(0));
        assert_eq!(
            out.response.cancel_reason,
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(out.response.watch_id, -1);
        assert_eq!(hub.watcher_count(), 0);
        let _ = store;
    }

    #[test]
    fn range_end_rules_match_range() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        let single = create(&mut hub, S1, watch(b"k", b"", 0), &store);
        let prefix = create(&mut hub, S1, watch(b"k", b"l", 0), &store);
        let from_key = create(&mut hub, S1, watch(b"k", b"\0", 0), &store);
        let all = create(&mut hub, S1, watch(b"", b"\0", 0), &store);
        let mut outs = Vec::new();
        for key in [&b"a"[..], b"k", b"k1", b"z"] {
            outs.extend(hub.notify(&store.put(key)));
        }
        let seen = |id: WatchId| -> Vec<Vec<u8>> {
            outs.iter()
                .filter(|o| o.response.watch_id == id.get())
                .flat_map(keys)
                .collect()
        };
        assert_eq!(seen(single), vec![b"k".to_vec()]);
        assert_eq!(seen(prefix), vec![b"k".to_vec(), b"k1".to_vec()]);
        assert_eq!(
            seen(from_key),
            vec![b"k".to_vec(), b"k1".to_vec(), b"z".to_vec()]
        );
        assert_eq!(seen(all).len(), 4);
    }

    #[test]
    fn a_revision_reaches_a_watcher_in_one_response() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        let id = create(&mut hub, S1, watch(b"a", b"z", 0), &store);
        let mut events =
            store.commit(&[(b"a", Some(b"1")), (b"b", Some(b"1")), (b"zz", Some(b"1"))]);
        events.extend(store.commit(&[(b"c", Some(b"1"))]));
        let outs = hub.notify(&events);
        assert_eq!(revs(&outs), vec![(1, id.get(), vec![1, 1, 2])]);
        assert_eq!(outs[0].response.header, None);
    }

    #[test]
    fn filters_drop_events_and_empty_responses() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        let mut no_put = watch(b"a", b"", 0);
        no_put.filters = vec![FilterType::Noput as i32];
        let mut no_delete = watch(b"a", b"", 0);
        no_delete.filters = vec![FilterType::Nodelete as i32];
        let no_put = create(&mut hub, S1, no_put, &store);
        let no_delete = create(&mut hub, S1, no_delete, &store);
        let outs = hub.notify(&store.put(b"a"));
        assert_eq!(revs(&outs), vec![(1, no_delete.get(), vec![1])]);
        let outs = hub.notify(&store.commit(&[(b"a", None)]));
        assert_eq!(revs(&outs), vec![(1, no_put.get(), vec![2])]);
        assert_eq!(outs[0].response.events[0].r#type, EventType::Delete as i32);
    }

    #[test]
    fn prev_kv_only_when_asked() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        store.put(b"a");
        let plain = create(&mut hub, S1, watch(b"a", b"", 0), &store);
        let mut with_prev = watch(b"a", b"", 0);
        with_prev.prev_kv = true;
        let with_prev = create(&mut hub, S1, with_prev, &store);
        let outs = hub.notify(&store.put(b"a"));
        let prev = |id: WatchId| {
            let out = outs
                .iter()
                .find(|o| o.response.watch_id == id.get())
                .unwrap();
            out.response.events[0].prev_kv.clone()
        };
        assert_eq!(prev(plain), None);
        assert_eq!(prev(with_prev).unwrap().mod_revision, 1);
    }

    #[test]
    fn replay_then_live_has_no_gap_and_no_duplicate() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        for _ in 0..5 {
            store.put(b"a");
        }
        let id = create(&mut hub, S1, watch(b"a", b"", 2), &store);
        assert_eq!(hub.unsynced_count(), 1);
        // Revision 6 applies while the watcher is still unsynced: notify skips it...
        assert!(hub.notify(&store.put(b"a")).is_empty());
        // ...and the replay covers it, up to the current revision.
        let replayed = hub.sync(&store, store.current);
        assert_eq!(revs(&replayed), vec![(1, id.get(), vec![2, 3, 4, 5, 6])]);
        assert_eq!(hub.unsynced_count(), 0);
        assert!(hub.sync(&store, store.current).is_empty());
        let live = hub.notify(&store.put(b"a"));
        assert_eq!(revs(&live), vec![(1, id.get(), vec![7])]);
    }

    #[test]
    fn replay_goes_in_windows_of_whole_revisions() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        let total = 2 * WATCH_BATCH_MAX_REVS + 500;
        for _ in 0..total {
            store.commit(&[(b"a", Some(b"v")), (b"b", Some(b"v"))]);
        }
        let early = create(&mut hub, S1, watch(b"a", b"c", 1), &store);
        let late = create(
            &mut hub,
            S1,
            watch(b"a", b"", WATCH_BATCH_MAX_REVS + 500),
            &store,
        );
        let first = hub.sync(&store, store.current);
        assert_eq!(revs(&first).len(), 1, "only the laggard's window");
        let evs = &first[0].response.events;
        assert_eq!(
            evs.len() as i64,
            2 * WATCH_BATCH_MAX_REVS,
            "two events per revision"
        );
        assert_eq!(revision_of(evs.last().unwrap()).get(), WATCH_BATCH_MAX_REVS);
        // Second window: both watchers are inside it and then move together.
        let second = hub.sync(&store, store.current);
        let got = revs(&second);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, early.get());
        assert_eq!(got[0].2.first(), Some(&(WATCH_BATCH_MAX_REVS + 1)));
        assert_eq!(got[1].1, late.get());
        assert_eq!(got[1].2.first(), Some(&(WATCH_BATCH_MAX_REVS + 500)));
        assert_eq!(got[1].2.last(), Some(&(2 * WATCH_BATCH_MAX_REVS)));
        let third = hub.sync(&store, store.current);
        assert!(revs(&third)
            .iter()
            .all(|(_, _, r)| *r.last().unwrap() == total));
        assert_eq!(hub.unsynced_count(), 0);
    }

    #[test]
    fn start_below_compaction_is_created_then_canceled() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        for _ in 0..10 {
            store.put(b"a");
        }
        store.compact = Revision(5);
        let out = hub.create(S1, &watch(b"a", b"", 4), store.current, store.compact);
        assert_eq!((out.response.watch_id, out.response.created), (0, true));
        let outs = hub.sync(&store, store.current);
        let r = &outs[0].response;
        assert_eq!((r.watch_id, r.canceled, r.compact_revision), (0, true, 5));
        assert!(r.events.is_empty());
        assert_eq!(hub.watcher_count(), 0);
        // At the compaction revision itself the history is still there.
        let id = create(&mut hub, S1, watch(b"a", b"", 5), &store);
        assert_eq!(
            revs(&hub.sync(&store, store.current)),
            vec![(1, id.get(), (5..=10).collect())]
        );
    }

    #[test]
    fn compaction_overtaking_a_replay_cancels_the_watcher() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        let total = 2 * WATCH_BATCH_MAX_REVS;
        for _ in 0..total {
            store.put(b"a");
        }
        let id = create(&mut hub, S1, watch(b"a", b"", 1), &store);
        let synced = create(&mut hub, S1, watch(b"a", b"", 0), &store);
        assert_eq!(hub.sync(&store, store.current).len(), 1);
        store.compact = Revision(total - 10);
        let outs = hub.sync(&store, store.current);
        assert_eq!(outs.len(), 1);
        let r = &outs[0].response;
        assert_eq!(
            (r.watch_id, r.canceled, r.compact_revision),
            (id.get(), true, total - 10)
        );
        assert_eq!(hub.watcher_count(), 1);
        assert_eq!(
            revs(&hub.notify(&store.put(b"a"))),
            vec![(1, synced.get(), vec![total + 1])]
        );
    }

    #[test]
    fn resuming_from_the_last_revision_plus_one_loses_nothing() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        let first = create(&mut hub, S1, watch(b"a", b"b", 0), &store);
        let mut seen = Vec::new();
        for key in [&b"a"[..], b"a1", b"a"] {
            seen.extend(
                revs(&hub.notify(&store.put(key)))
                    .into_iter()
                    .flat_map(|r| r.2),
            );
        }
        // The stream breaks after revision 2 was delivered; the client resumes at 3.
        hub.close_stream(S1);
        seen.truncate(2);
        store.put(b"a2");
        let resumed = create(&mut hub, S2, watch(b"a", b"b", 3), &store);
        seen.extend(
            revs(&hub.sync(&store, store.current))
                .into_iter()
                .flat_map(|r| r.2),
        );
        assert_eq!(seen, vec![1, 2, 3, 4]);
        assert_eq!(hub.watcher_count(), 1);
        let _ = (first, resumed);
    }

    #[test]
    fn future_start_revision_waits_for_it() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        store.put(b"a");
        let id = create(&mut hub, S1, watch(b"a", b"", 3), &store);
        assert_eq!(hub.unsynced_count(), 0, "a future watch is synced");
        assert!(hub.notify(&store.put(b"a")).is_empty());
        assert_eq!(
            revs(&hub.notify(&store.put(b"a"))),
            vec![(1, id.get(), vec![3])]
        );
    }

    #[test]
    fn progress_request_answers_at_once_when_synced() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        assert_eq!(
            hub.request_progress(S1, store.current),
            None,
            "no watchers, no answer"
        );
        create(&mut hub, S1, watch(b"a", b"", 0), &store);
        store.put(b"x");
        let out = hub.request_progress(S1, store.current).unwrap();
        assert_eq!(out.stream, S1);
        assert_eq!(out.response.watch_id, -1);
        assert!(out.response.events.is_empty() && !out.response.canceled);
    }

    #[test]
    fn progress_request_is_deferred_until_the_stream_is_synced() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        for _ in 0..3 {
            store.put(b"a");
        }
        let synced = create(&mut hub, S1, watch(b"b", b"", 0), &store);
        let replaying = create(&mut hub, S1, watch(b"a", b"", 2), &store);
        create(&mut hub, S2, watch(b"a", b"", 1), &store);
        assert_eq!(hub.request_progress(S1, store.current), None);
        // A live event for the synced watcher does not answer it: the stream is not synced.
        let outs = hub.notify(&store.put(b"b"));
        assert_eq!(revs(&outs), vec![(1, synced.get(), vec![4])]);
        let outs = hub.sync(&store, store.current);
        let got = revs(&outs);
        assert_eq!(got[0], (1, replaying.get(), vec![2, 3]));
        assert_eq!(got[1].0, 2);
        assert_eq!(
            got[2],
            (1, -1, vec![]),
            "the progress comes after the replayed events"
        );
        assert!(hub.sync(&store, store.current).is_empty(), "answered once");
    }

    #[test]
    fn deferred_progress_is_answered_when_the_replay_has_no_events() {
        // etcd PR #17557: a watcher that synced without events left the deferred request unanswered.
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        store.put(b"other");
        create(&mut hub, S1, watch(b"a", b"", 1), &store);
        assert_eq!(hub.request_progress(S1, store.current), None);
        let outs = hub.sync(&store, store.current);
        assert_eq!(revs(&outs), vec![(1, -1, vec![])]);
    }

    #[test]
    fn progress_waits_for_a_future_start_revision() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        create(&mut hub, S1, watch(b"a", b"", 2), &store);
        assert_eq!(hub.request_progress(S1, store.current), None);
        store.put(b"x");
        assert_eq!(revs(&hub.notify(&store.put(b"x"))), vec![(1, -1, vec![])]);
    }

    #[test]
    fn periodic_progress_for_idle_synced_watchers_that_asked() {
        let interval = 1_000;
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        store.put(b"a");
        let mut asks = watch(b"a", b"", 0);
        asks.progress_notify = true;
        let idle = create(&mut hub, S1, asks.clone(), &store);
        let busy = create(
            &mut hub,
            S1,
            watch(b"b", b"", 0).tap(|r| r.progress_notify = true),
            &store,
        );
        create(&mut hub, S1, watch(b"a", b"", 0), &store); // did not ask
        let mut lagging = asks;
        lagging.start_revision = 1;
        create(&mut hub, S2, lagging, &store); // unsynced: no progress
        assert!(
            hub.tick(0, interval, store.current).is_empty(),
            "first tick starts the clock"
        );
        hub.notify(&store.put(b"b"));
        assert!(hub.tick(999, interval, store.current).is_empty());
        // `busy` was sent an event since the last round: etcd skips it once.
        assert_eq!(
            revs(&hub.tick(1_000, interval, store.current)),
            vec![(1, idle.get(), vec![])]
        );
        let both = revs(&hub.tick(2_000, interval, store.current));
        assert_eq!(both, vec![(1, idle.get(), vec![]), (1, busy.get(), vec![])]);
    }

    trait Tap: Sized {
        fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
            f(&mut self);
            self
        }
    }
    impl Tap for WatchCreateRequest {}

    #[test]
    fn cancel_answers_once_and_stops_events() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        let id = create(&mut hub, S1, watch(b"a", b"", 0), &store);
        let out = hub.cancel(S1, id).unwrap();
        assert_eq!(
            (out.response.watch_id, out.response.canceled),
            (id.get(), true)
        );
        assert_eq!(
            hub.cancel(S1, id),
            None,
            "unknown ids get no answer, as in etcd"
        );
        assert!(hub.notify(&store.put(b"a")).is_empty());
        assert_eq!(hub.watcher_count(), 0);
    }

    #[test]
    fn close_stream_drops_only_its_watchers() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        store.put(b"a");
        create(&mut hub, S1, watch(b"a", b"", 0), &store);
        create(&mut hub, S1, watch(b"a", b"", 1), &store);
        let other = create(&mut hub, S2, watch(b"a", b"", 0), &store);
        hub.request_progress(S1, store.current);
        hub.close_stream(S1);
        assert_eq!(hub.watcher_count(), 1);
        assert_eq!(hub.unsynced_count(), 0);
        assert_eq!(
            revs(&hub.notify(&store.put(b"a"))),
            vec![(2, other.get(), vec![2])]
        );
        assert!(
            hub.sync(&store, store.current).is_empty(),
            "no deferred progress left"
        );
    }

    #[test]
    fn events_carry_the_fragment_flag_of_their_watcher() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        let mut req = watch(b"a", b"", 0);
        req.fragment = true;
        let fragmented = create(&mut hub, S1, req, &store);
        create(&mut hub, S1, watch(b"a", b"", 0), &store);
        let outs = hub.notify(&store.put(b"a"));
        let flags: Vec<(i64, bool)> = outs
            .iter()
            .map(|o| (o.response.watch_id, o.fragment))
            .collect();
        assert_eq!(flags, vec![(fragmented.get(), true), (1, false)]);
    }

    /// A response of `n` events of `value_len` bytes each, all at revision 7.
    fn big_response(n: usize, value_len: usize) -> WatchResponse {
        let events = (0..n)
            .map(|i| Event {
                r#type: EventType::Put as i32,
                kv: Some(KeyValue {
                    key: format!("k{i}").into_bytes(),
                    value: vec![b'v'; value_len],
                    mod_revision: 7,
                    ..KeyValue::default()
                }),
                prev_kv: None,
            })
            .collect();
        WatchResponse {
            watch_id: 3,
            events,
            ..WatchResponse::default()
        }
    }

    #[test]
    fn fragments_split_at_the_limit_as_etcd_does() {
        let whole = big_response(5, 100);
        let event_len = prost::encoding::message::encoded_len(11, &whole.events[0]);
        // Two events and the response's other fields fit under the limit; a third reaches it.
        let limit = 3 * event_len;
        let parts = fragments(whole.clone(), limit);
        let shape: Vec<(usize, bool)> =
            parts.iter().map(|p| (p.events.len(), p.fragment)).collect();
        assert_eq!(shape, vec![(2, true), (2, true), (1, false)]);
        for part in &parts {
            assert!(
                part.encoded_len() < limit,
                "{} >= {limit}",
                part.encoded_len()
            );
            assert_eq!(part.watch_id, 3);
        }
        let joined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, whole.events);
    }

    #[test]
    fn fragments_leave_small_and_single_event_responses_whole() {
        let small = big_response(3, 10);
        assert_eq!(fragments(small.clone(), 1 << 20), vec![small]);
        // One event larger than the limit cannot be split: it goes alone, not marked.
        let single = big_response(1, 1000);
        assert_eq!(fragments(single.clone(), 100), vec![single]);
        // Several events each larger than the limit: one per fragment.
        let parts = fragments(big_response(3, 1000), 100);
        let shape: Vec<(usize, bool)> =
            parts.iter().map(|p| (p.events.len(), p.fragment)).collect();
        assert_eq!(shape, vec![(1, true), (1, true), (1, false)]);
    }

    /// The driver's side of the streams, as these tests play it: a stream listed in
    /// `capacity` has a queue of that many responses that refuses once full, and everything
    /// after, until the stream is reported writable; other streams take everything.
    #[derive(Default)]
    struct Driver {
        capacity: BTreeMap<StreamId, usize>,
        queued: BTreeMap<StreamId, Vec<WatchResponse>>,
        refused: BTreeMap<StreamId, Vec<WatchResponse>>,
        stalled: BTreeSet<StreamId>,
    }

    impl Driver {
        fn emit(&mut self, hub: &mut WatchHub, outs: Vec<WatchOutput>) {
            for out in outs.into_iter().filter_map(|o| hub.route(o)) {
                let queue = self.queued.entry(out.stream).or_default();
                let full = self
                    .capacity
                    .get(&out.stream)
                    .is_some_and(|&c| queue.len() >= c);
                if full || self.stalled.contains(&out.stream) {
                    self.stalled.insert(out.stream);
                    self.refused
                        .entry(out.stream)
                        .or_default()
                        .push(out.response);
                } else {
                    queue.push(out.response);
                }
            }
        }

        /// What the driver does first in each step: report refusals, then streams with room.
        fn report(&mut self, hub: &mut WatchHub) {
            for (stream, responses) in std::mem::take(&mut self.refused) {
                hub.refused(stream, responses);
            }
            let room: Vec<StreamId> = self
                .stalled
                .iter()
                .copied()
                .filter(|s| self.queued.get(s).map_or(0, Vec::len) <= self.capacity[s] / 2)
                .collect();
            for stream in room {
                self.stalled.remove(&stream);
                let outs = hub.writable(stream);
                self.emit(hub, outs);
            }
        }

        /// The client reads everything queued for it.
        fn read(&mut self, stream: StreamId) -> Vec<WatchResponse> {
            std::mem::take(self.queued.entry(stream).or_default())
        }
    }

    /// The revisions of the events a watcher got, in order of arrival.
    fn revisions_of(responses: &[WatchResponse], id: WatchId) -> Vec<i64> {
        responses
            .iter()
            .filter(|r| r.watch_id == id.get())
            .flat_map(|r| r.events.iter().map(|e| revision_of(e).get()))
            .collect()
    }

    #[test]
    fn a_client_that_stops_reading_misses_nothing_and_gets_nothing_twice() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        let mut driver = Driver::default();
        driver.capacity.insert(S1, 4);
        let slow = create(&mut hub, S1, watch(b"a", b"b", 0), &store);
        let fast = create(&mut hub, S2, watch(b"a", b"b", 0), &store);
        let step = |hub: &mut WatchHub, store: &mut Store, driver: &mut Driver, key: &[u8]| {
            driver.report(hub);
            let outs = hub.notify(&store.put(key));
            driver.emit(hub, outs);
            let outs = hub.sync(store, store.current);
            driver.emit(hub, outs);
        };
        for i in 0..50 {
            step(
                &mut hub,
                &mut store,
                &mut driver,
                format!("a{}", i % 3).as_bytes(),
            );
        }
        // The fifth response was refused: the stream is parked and nothing more is emitted for
        // it, while the other stream gets every revision.
        assert_eq!(driver.queued[&S1].len(), 4);
        assert_eq!(hub.parked_count(), 1);
        assert_eq!(
            revisions_of(&driver.read(S2), fast),
            (1..=50).collect::<Vec<_>>()
        );
        // While parked, a new watcher's created response is held and a progress request waits.
        let late = hub.create(S1, &watch(b"a", b"b", 0), store.current, store.compact);
        let late_id = WatchId(late.response.watch_id);
        driver.emit(&mut hub, vec![late]);
        assert_eq!(hub.request_progress(S1, store.current), None);
        for _ in 0..10 {
            step(&mut hub, &mut store, &mut driver, b"a");
        }
        assert_eq!(
            driver.queued[&S1].len(),
            4,
            "nothing reaches a parked stream"
        );
        // The client reads again: held responses first, then the replay from the history.
        let mut got = Vec::new();
        for _ in 0..5 {
            got.extend(driver.read(S1));
            driver.report(&mut hub);
            let outs = hub.sync(&store, store.current);
            driver.emit(&mut hub, outs);
        }
        got.extend(driver.read(S1));
        assert_eq!(hub.parked_count() + hub.unsynced_count(), 0);
        assert_eq!(revisions_of(&got, slow), (1..=60).collect::<Vec<_>>());
        assert_eq!(revisions_of(&got, late_id), (51..=60).collect::<Vec<_>>());
        let position = |pred: &dyn Fn(&WatchResponse) -> bool| got.iter().position(pred).unwrap();
        let created = position(&|r| r.created && r.watch_id == late_id.get());
        let first_late_event = position(&|r| r.watch_id == late_id.get() && !r.events.is_empty());
        assert!(created < first_late_event, "created after events: {got:?}");
        let progress = position(&|r| r.watch_id == -1);
        assert_eq!(
            progress,
            got.len() - 1,
            "the progress bookmarks every event before it"
        );
        // Synced again: live events flow as before.
        step(&mut hub, &mut store, &mut driver, b"a");
        assert_eq!(revisions_of(&driver.read(S1), slow), vec![61]);
    }

    #[test]
    fn a_parked_watcher_overtaken_by_compaction_is_canceled() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        let mut driver = Driver::default();
        driver.capacity.insert(S1, 2);
        let id = create(&mut hub, S1, watch(b"a", b"", 0), &store);
        for _ in 0..5 {
            driver.report(&mut hub);
            let outs = hub.notify(&store.put(b"a"));
            driver.emit(&mut hub, outs);
        }
        driver.report(&mut hub);
        assert_eq!(hub.parked_count(), 1);
        assert_eq!(revisions_of(&driver.read(S1), id), vec![1, 2]);
        // Revision 3 was the first refused; it is compacted before the client reads again.
        store.compact = Revision(4);
        driver.report(&mut hub);
        let outs = hub.sync(&store, store.current);
        driver.emit(&mut hub, outs);
        let got = driver.read(S1);
        let r = &got[0];
        assert_eq!(
            (r.watch_id, r.canceled, r.compact_revision),
            (id.get(), true, 4)
        );
        assert_eq!(hub.watcher_count(), 0);
    }

    #[test]
    fn snapshot_install_replays_what_notify_never_saw() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        let id = create(&mut hub, S1, watch(b"a", b"", 0), &store);
        hub.notify(&store.put(b"a"));
        // A snapshot brings revisions 2..=4 without notify.
        for _ in 0..3 {
            store.put(b"a");
        }
        hub.unsync_all();
        assert_eq!(
            revs(&hub.sync(&store, store.current)),
            vec![(1, id.get(), vec![2, 3, 4])]
        );
        assert_eq!(
            revs(&hub.notify(&store.put(b"a"))),
            vec![(1, id.get(), vec![5])]
        );
    }

    #[test]
    fn fan_out_to_a_thousand_watchers_of_one_key() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        for _ in 0..1000 {
            create(&mut hub, S1, watch(b"hot", b"", 0), &store);
        }
        create(&mut hub, S2, watch(b"cold", b"", 0), &store);
        create(&mut hub, S2, watch(b"h", b"i", 0), &store);
        let outs = hub.notify(&store.put(b"hot"));
        assert_eq!(outs.len(), 1001);
        assert!(hub.notify(&store.put(b"lukewarm")).is_empty());
        for id in 0..1000 {
            hub.cancel(S1, WatchId(id));
        }
        assert_eq!(hub.notify(&store.put(b"hot")).len(), 1);
        assert_eq!(hub.synced.groups.len(), 2);
    }

    #[test]
    #[should_panic(expected = "at or below current revision")]
    fn notify_of_an_old_revision_is_a_broken_contract() {
        let (mut hub, mut store) = (WatchHub::new(), Store::default());
        let events = store.put(b"a");
        hub.notify(&store.put(b"a"));
        hub.notify(&events);
    }

    mod model {
        //! Random histories, watches, syncs, compactions, progress requests and clients that
        //! stop reading, judged by etcd's watch guarantees against the naive store. The checker
        //! plays the driver: outputs pass `route`, a blocked stream's queue refuses them, and
        //! refusals are reported before the next operation, as the driver does.
        use super::*;
        use proptest::prelude::*;

        const KEYS: [&[u8]; 5] = [b"a", b"ab", b"b", b"c", b"cd"];

        #[derive(Clone, Debug)]
        enum Op {
            Commit(Vec<(usize, bool)>),
            Create {
                stream: u64,
                range: usize,
                start: i64,
                filter: usize,
                prev_kv: bool,
            },
            Sync,
            Compact(i64),
            Progress(u64),
            Cancel(u64, i64),
            UnsyncAll,
            /// Periodic progress: every watcher of the model asks for it.
            Tick,
            /// The stream's client stops reading: its queue refuses everything from now on.
            Block(u64),
            /// The client reads again: the queue has room.
            Unblock(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => prop::collection::vec((0..KEYS.len(), any::<bool>()), 1..3).prop_map(Op::Commit),
                2 => (0..3u64, 0..6usize, -1..8i64, 0..3usize, any::<bool>()).prop_map(
                    |(stream, range, start, filter, prev_kv)| Op::Create { stream, range, start, filter, prev_kv }
                ),
                2 => Just(Op::Sync),
                1 => (0..6i64).prop_map(Op::Compact),
                1 => (0..3u64).prop_map(Op::Progress),
                1 => (0..3u64, 0..4i64).prop_map(|(s, id)| Op::Cancel(s, id)),
                1 => Just(Op::UnsyncAll),
                1 => Just(Op::Tick),
                1 => (0..3u64).prop_map(Op::Block),
                1 => (0..3u64).prop_map(Op::Unblock),
            ]
        }

        fn range(i: usize) -> (&'static [u8], &'static [u8]) {
            [
                (&b"a"[..], &b""[..]),
                (b"a", b"b"),
                (b"ab", b"\0"),
                (b"", b"\0"),
                (b"b", b"cd"),
                (b"c", b""),
            ][i]
        }

        /// What the test knows about a live watcher.
        struct Tracked {
            range: KeyRange,
            /// As requested: a future start holds back stream-wide progress.
            start: Revision,
            from: Revision,
            filters: Vec<i32>,
            prev_kv: bool,
            got: Vec<Event>,
            /// Its created response was delivered.
            created: bool,
        }

        #[derive(Default)]
        struct Checker {
            store: Store,
            hub: WatchHub,
            live: BTreeMap<WatcherKey, Tracked>,
            /// Streams with an unanswered progress request.
            owed: BTreeSet<StreamId>,
            now_ms: u64,
            /// Streams whose client does not read: their queue refuses every response.
            blocked: BTreeSet<StreamId>,
            /// Streams that refused a response and were not reported writable since.
            stalled: BTreeSet<StreamId>,
            /// Refused responses not yet reported to the hub.
            refused: BTreeMap<StreamId, Vec<WatchResponse>>,
            /// Watchers the hub canceled for compaction whose cancel is not delivered yet.
            gone: BTreeSet<WatcherKey>,
        }

        impl Checker {
            /// Like etcd's `progressAll`, a request is dropped once its stream has no watchers.
            fn release_if_empty(&mut self, stream: StreamId) {
                if self.hub_watchers_of(stream).next().is_none() {
                    self.owed.remove(&stream);
                }
            }

            /// The live watchers the hub still has.
            fn hub_watchers_of(&self, stream: StreamId) -> impl Iterator<Item = &WatcherKey> {
                self.watchers_of(stream)
                    .map(|(key, _)| key)
                    .filter(|key| !self.gone.contains(key))
            }

            /// What the driver does with outputs: `route`, then the stream's queue, which
            /// refuses once full and then everything after.
            fn emit(&mut self, outs: Vec<WatchOutput>) {
                for out in outs {
                    let r = &out.response;
                    if r.canceled && r.compact_revision > 0 {
                        self.gone.insert((out.stream, WatchId(r.watch_id)));
                        self.release_if_empty(out.stream);
                    }
                    let Some(out) = self.hub.route(out) else {
                        continue;
                    };
                    if self.stalled.contains(&out.stream) || self.blocked.contains(&out.stream) {
                        self.stalled.insert(out.stream);
                        self.refused
                            .entry(out.stream)
                            .or_default()
                            .push(out.response);
                    } else {
                        self.judge(out);
                    }
                }
            }

            /// The driver reports refusals first thing in its next step.
            fn report_refused(&mut self) {
                for (stream, responses) in std::mem::take(&mut self.refused) {
                    self.hub.refused(stream, responses);
                }
            }

            /// The queue has room again: a stalled stream is reported writable.
            fn unblock(&mut self, stream: StreamId) {
                self.blocked.remove(&stream);
                self.report_refused();
                if self.stalled.remove(&stream) {
                    let outs = self.hub.writable(stream);
                    self.emit(outs);
                }
            }

            fn watchers_of(
                &self,
                stream: StreamId,
            ) -> impl Iterator<Item = (&WatcherKey, &Tracked)> {
                self.live
                    .range((stream, WatchId(i64::MIN))..=(stream, WatchId(i64::MAX)))
            }

            fn expected(&self, t: &Tracked, upto: Revision) -> Vec<Event> {
                let probe = Watcher {
                    range: t.range.clone(),
                    start_revision: t.from,
                    next_rev: t.from,
                    phase: Phase::Unsynced,
                    no_put: t.filters.contains(&(FilterType::Noput as i32)),
                    no_delete: t.filters.contains(&(FilterType::Nodelete as i32)),
                    prev_kv: t.prev_kv,
                    progress_notify: false,
                    fragment: false,
                    sent_since_progress: false,
                };
                self.store
                    .events
                    .iter()
                    .filter(|e| (t.from..=upto).contains(&revision_of(e)))
                    .filter(|e| t.range.contains(&kv_of(e).key) && probe.wants(e))
                    .map(|e| probe.render(e))
                    .collect()
            }

            fn run(&mut self, op: Op) {
                self.report_refused();
                let current = self.store.current;
                let outs = match op {
                    Op::Commit(ops) => {
                        let ops: Vec<(&[u8], Option<&[u8]>)> = ops
                            .iter()
                            .map(|&(k, put)| (KEYS[k], put.then_some(&b"v"[..])))
                            .collect();
                        let events = self.store.commit(&ops);
                        self.hub.notify(&events)
                    }
                    Op::Create {
                        stream,
                        range: r,
                        start,
                        filter,
                        prev_kv,
                    } => {
                        let (key, end) = range(r);
                        let filters = [
                            vec![],
                            vec![FilterType::Noput as i32],
                            vec![FilterType::Nodelete as i32],
                        ][filter]
                            .clone();
                        let req = WatchCreateRequest {
                            key: key.to_vec(),
                            range_end: end.to_vec(),
                            start_revision: start,
                            filters: filters.clone(),
                            prev_kv,
                            progress_notify: true,
                            ..WatchCreateRequest::default()
                        };
                        let out =
                            self.hub
                                .create(StreamId(stream), &req, current, self.store.compact);
                        let created = out.clone();
                        if !out.response.canceled {
                            let from = if start == 0 {
                                current.next()
                            } else {
                                Revision(start)
                            };
                            let key = if key.is_empty() {
                                vec![0]
                            } else {
                                key.to_vec()
                            };
                            let tracked = Tracked {
                                range: KeyRange::parse(key, end).unwrap(),
                                start: Revision(start),
                                from,
                                filters,
                                prev_kv,
                                got: Vec::new(),
                                created: false,
                            };
                            self.live.insert(
                                (StreamId(stream), WatchId(out.response.watch_id)),
                                tracked,
                            );
                        }
                        vec![created]
                    }
                    Op::Sync => self.hub.sync(&self.store, current),
                    Op::Compact(back) => {
                        self.store.compact = self.store.compact.max(Revision(current.get() - back));
                        vec![]
                    }
                    Op::Progress(stream) => {
                        let stream = StreamId(stream);
                        let out = self.hub.request_progress(stream, current);
                        if self.hub_watchers_of(stream).next().is_some() {
                            // Refused or deferred, it is owed until delivered.
                            self.owed.insert(stream);
                        }
                        out.into_iter().collect()
                    }
                    Op::Cancel(stream, id) => {
                        let key = (StreamId(stream), WatchId(id));
                        let out = self.hub.cancel(key.0, key.1);
                        let known = self.live.contains_key(&key) && !self.gone.contains(&key);
                        assert_eq!(out.is_some(), known);
                        if known {
                            self.live.remove(&key);
                        }
                        self.release_if_empty(key.0);
                        out.into_iter().collect()
                    }
                    Op::UnsyncAll => {
                        self.hub.unsync_all();
                        vec![]
                    }
                    Op::Tick => {
                        self.now_ms += 1;
                        self.hub.tick(self.now_ms, 1, current)
                    }
                    Op::Block(stream) => {
                        self.blocked.insert(StreamId(stream));
                        vec![]
                    }
                    Op::Unblock(stream) => {
                        self.unblock(StreamId(stream));
                        vec![]
                    }
                };
                self.emit(outs);
            }

            fn judge(&mut self, out: WatchOutput) {
                let current = self.store.current;
                let r = &out.response;
                if r.created {
                    // Created (or refused at once, with id -1): events may follow.
                    if let Some(t) = self.live.get_mut(&(out.stream, WatchId(r.watch_id))) {
                        assert!(!r.canceled && !t.created, "{r:?}");
                        t.created = true;
                    }
                    return;
                }
                if r.canceled && r.compact_revision == 0 {
                    let key = (out.stream, WatchId(r.watch_id));
                    assert!(
                        !self.live.contains_key(&key),
                        "{key:?} canceled by the client"
                    );
                    return;
                }
                if r.watch_id == -1 {
                    // Bookmarkable: every watcher of the stream has everything up to `current`.
                    for (key, t) in self.watchers_of(out.stream) {
                        assert_eq!(
                            t.got,
                            self.expected(t, current),
                            "progress before {key:?} got all"
                        );
                    }
                    self.owed.remove(&out.stream);
                    return;
                }
                let key = (out.stream, WatchId(r.watch_id));
                if r.canceled {
                    assert!(
                        r.compact_revision > 0,
                        "only compaction cancels here: {r:?}"
                    );
                    let t = self.live.remove(&key).expect("cancel of a live watcher");
                    assert!(t.created, "{key:?} canceled before its created response");
                    self.gone.remove(&key);
                    let next = t.got.last().map_or(t.from, |e| revision_of(e).next());
                    assert!(
                        next < Revision(r.compact_revision),
                        "canceled though {next} is not compacted"
                    );
                    return;
                }
                if r.events.is_empty() {
                    // Bookmarkable, per watcher: everything up to `current` was sent.
                    let t = &self.live[&key];
                    assert_eq!(
                        t.got,
                        self.expected(t, current),
                        "progress before {key:?} got all"
                    );
                    return;
                }
                let expected_all = self.expected(&self.live[&key], current);
                let t = self.live.get_mut(&key).expect("events for a live watcher");
                assert!(t.created, "{key:?}: events before its created response");
                let last = t.got.last().map(revision_of);
                let first = revision_of(&r.events[0]);
                // Ordered, unique, atomic: a response starts after every revision already sent...
                assert!(
                    last.is_none_or(|l| first > l),
                    "{key:?}: revision {first} after {last:?}"
                );
                t.got.extend(r.events.iter().cloned());
                // ...reliable and filtered: what was sent so far is a prefix of the expectation,
                // ending with a whole revision.
                assert!(
                    t.got.len() <= expected_all.len(),
                    "{key:?} got extra events"
                );
                assert_eq!(
                    t.got,
                    expected_all[..t.got.len()],
                    "{key:?} got wrong events"
                );
                let end = revision_of(t.got.last().unwrap());
                assert!(
                    expected_all
                        .get(t.got.len())
                        .is_none_or(|e| revision_of(e) > end),
                    "{key:?}: revision {end} split"
                );
            }

            /// Liveness: once syncing has caught up, every live watcher has exactly its history.
            fn settle(&mut self) {
                let streams: Vec<StreamId> = self.blocked.union(&self.stalled).copied().collect();
                for stream in streams {
                    self.unblock(stream);
                }
                loop {
                    let outs = self.hub.sync(&self.store, self.store.current);
                    self.emit(outs);
                    if self.hub.unsynced_count() == 0 {
                        break;
                    }
                }
                let current = self.store.current;
                for &stream in &self.owed {
                    let mut watchers = self.watchers_of(stream).peekable();
                    let waits =
                        watchers.peek().is_none() || watchers.any(|(_, t)| t.start > current);
                    assert!(waits, "progress request of {stream:?} never answered");
                }
                for (key, t) in &self.live {
                    assert_eq!(t.got, self.expected(t, current), "{key:?} missed events");
                }
                assert_eq!(self.hub.watcher_count(), self.live.len());
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn watch_guarantees_hold(ops in prop::collection::vec(op(), 1..60)) {
                let mut checker = Checker::default();
                // Small replay windows, so replays span several `sync` calls.
                checker.hub.batch_max_revs = 2;
                for op in ops {
                    checker.run(op);
                }
                checker.settle();
            }
        }
    }

    mod index {
        //! The key index against a linear scan.
        use super::*;
        use proptest::prelude::*;

        fn key() -> impl Strategy<Value = Vec<u8>> {
            prop::collection::vec(0..3u8, 0..3)
        }

        proptest! {
            #[test]
            fn stab_matches_a_scan(
                ranges in prop::collection::vec((key(), key(), 0..3u8), 1..20),
                removals in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
                probes in prop::collection::vec(key(), 1..20),
            ) {
                let mut index = KeyIndex::default();
                let mut all = Vec::new();
                for (i, (start, end, kind)) in ranges.into_iter().enumerate() {
                    let end = match kind { 0 => vec![], 1 => vec![0], _ => end };
                    let Some(range) = KeyRange::parse(start, &end) else { continue };
                    let key = (StreamId(0), WatchId(i as i64));
                    index.insert(&range, key);
                    all.push((range, key));
                }
                for r in removals {
                    if all.is_empty() { break; }
                    let (range, key) = all.swap_remove(r.index(all.len()));
                    index.remove(&range, key);
                }
                for probe in probes {
                    let mut got: Vec<WatcherKey> = index.stab(&probe).collect();
                    got.sort();
                    let mut want: Vec<WatcherKey> =
                        all.iter().filter(|(r, _)| r.contains(&probe)).map(|(_, k)| *k).collect();
                    want.sort();
                    prop_assert_eq!(got, want);
                }
                for (range, key) in all {
                    index.remove(&range, key);
                }
                prop_assert!(index.segments.is_empty() && index.endpoint_refs.is_empty());
            }
        }
    }
}
