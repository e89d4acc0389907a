//! etcd's watch guarantees (https://etcd.io/docs/v3.5/learning/api_guarantees/#watch-apis),
//! judged across every watch of the run, plus prev_kv, filters and the keys a watch covers.
//!
//! The canonical event log is built first: every `(revision, key)` any watch reported, merged
//! with the writes known to have happened (acknowledged writes, and lost writes whose values
//! were observed). Two watches reporting different events for one `(revision, key)`, or a watch
//! disagreeing with an acknowledged write, is a violation; so is an event at a revision an
//! acknowledged op created on a key that op did not write.
//!
//! Rules per watch (the revision of an event is its kv's mod_revision):
//! - **Ordered**: event revisions never decrease.
//! - **Unique**: no `(revision, key)` is delivered twice.
//! - **Atomic**: a response never starts with the revision the previous one ended with (one
//!   revision's events are never split).
//! - **Bookmarkable**: after a progress notification at P, no event at revision <= P arrives.
//! - **Resumable / start**: with a start revision S, no event below S; a watch from "now"
//!   delivers no event at or below a revision its member had already answered the same
//!   lifetime before the watch was created. A cancel for compaction is legal only if the
//!   watch's next revision is below the compact revision and a compaction to at least that
//!   revision was requested before.
//! - **Reliable**: every canonical event the watch covers (key in range, kind not filtered)
//!   from its first revision (S, or the created header + 1 for a watch from now) up to the
//!   highest revision it vouched for (its last event, or its last progress notification) was
//!   delivered. Header revisions of event responses vouch for nothing: etcd sends a catching-up
//!   watcher's old events under the current header.
//! - **Filters and range**: no put event with `filter_puts`, no delete with `filter_deletes`,
//!   no event on a key outside the range.
//! - **IsCreate**: a put event of version 1 has create_revision = its revision; of a higher
//!   version, a lower create_revision.
//! - **prev_kv**: a prev is an older state of the same key, no older than the last known
//!   write before the event; a created key (version 1) has no prev, an updated one has the
//!   previous version of the same incarnation. A missing prev for an update or a delete is a
//!   violation unless a compaction to at least the event's revision was requested.
//!
//! Bug classes: etcd #15271 (watch travels back in time after a partition), #17247 (duplicated
//! event), #17529 (events lost in stream starvation), #18089 / #19179 (dropped delete around
//! compaction), #15220 (progress notification ahead of events), #20221 (a watch on a future
//! revision gets old events).
//!
//! Limits: events nobody reported and no known write made (a lost write never observed, a
//! lease expiry no watch saw) are not in the canonical log, so their absence goes unnoticed;
//! a watch that silently stops, sends no progress notification and no later event, is not
//! caught (nothing it said vouches for the missing events).

use std::collections::{BTreeMap, HashSet};

use super::observations::{Observations, Source};
use super::{
    acked_effects, at, header_revision, in_range, is_read, keys_in, name, show, show_kv, Findings,
    Lifetimes,
};
use crate::history::{Call, Event, EventKind, History, Key, Kv, Outcome, Violation, Watch};

/// One event of the canonical log.
struct Canon {
    kind: EventKind,
    /// The value a put wrote.
    value: Vec<u8>,
    lease: i64,
    /// The whole kv, once a watch reported it.
    kv: Option<Kv>,
    /// Who reported it first, for messages.
    from: String,
}

/// The canonical log: per key, events by revision.
type Log = BTreeMap<Key, BTreeMap<i64, Canon>>;

pub fn check(h: &History) -> Vec<Violation> {
    let obs = Observations::new(h);
    let mut f = Findings::new("watch");
    for (source, message) in &obs.anomalies {
        if let Source::Watch { .. } = source {
            f.push(message.clone());
        }
    }
    let log = canonical_log(h, &obs, &mut f);
    let lives = Lifetimes::new(h);
    for w in &h.watches {
        let ctx = WatchCheck {
            h,
            log: &log,
            w,
            lives: &lives,
        };
        ctx.check(&mut f);
    }
    f.finish()
}

fn canonical_log(h: &History, obs: &Observations, f: &mut Findings) -> Log {
    let mut log: Log = BTreeMap::new();
    for (key, by_rev) in &obs.known {
        for (rev, w) in by_rev {
            let kind = if w.value.is_some() {
                EventKind::Put
            } else {
                EventKind::Delete
            };
            let canon = Canon {
                kind,
                value: w.value.clone().unwrap_or_default(),
                lease: w.lease,
                kv: None,
                from: name(&h.ops[w.op]),
            };
            log.entry(key.clone()).or_default().insert(*rev, canon);
        }
    }
    // Revisions acknowledged ops created, with every key they wrote.
    let mut owners: BTreeMap<i64, (usize, Vec<&Key>)> = BTreeMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        if let Some(rev) = header_revision(op) {
            let keys: Vec<&Key> = acked_effects(op).iter().map(|e| e.key).collect();
            if !keys.is_empty() {
                owners.insert(rev, (i, keys));
            }
        }
    }
    for w in &h.watches {
        for (r, resp) in w.responses.iter().enumerate() {
            for ev in &resp.events {
                let rev = ev.kv.mod_revision;
                let from = format!("watch {} response {r}", w.id);
                if let Some((op, keys)) = owners.get(&rev) {
                    if !keys.contains(&&ev.kv.key) {
                        f.push(format!(
                            "{from} reports an event on {} at revision {rev}, which {} created writing only other keys",
                            show(&ev.kv.key),
                            name(&h.ops[*op])
                        ));
                        continue;
                    }
                }
                merge(&mut log, ev, from, f);
            }
        }
    }
    log
}

fn merge(log: &mut Log, ev: &Event, from: String, f: &mut Findings) {
    let rev = ev.kv.mod_revision;
    let by_rev = log.entry(ev.kv.key.clone()).or_default();
    let Some(canon) = by_rev.get_mut(&rev) else {
        by_rev.insert(
            rev,
            Canon {
                kind: ev.kind,
                value: ev.kv.value.clone(),
                lease: ev.kv.lease,
                kv: Some(ev.kv.clone()),
                from,
            },
        );
        return;
    };
    let same_write = canon.kind == ev.kind
        && (ev.kind == EventKind::Delete
            || (canon.value == ev.kv.value && canon.lease == ev.kv.lease));
    let same_kv = canon.kv.as_ref().is_none_or(|kv| kv == &ev.kv);
    if !same_write || !same_kv {
        f.push(format!(
            "{from} and {} disagree on {} at revision {rev}: {} vs {}",
            canon.from,
            show(&ev.kv.key),
            describe(ev.kind, &ev.kv),
            describe_canon(canon)
        ));
    } else if canon.kv.is_none() {
        canon.kv = Some(ev.kv.clone());
    }
}

fn describe(kind: EventKind, kv: &Kv) -> String {
    match kind {
        EventKind::Put => format!("put {}", show_kv(kv)),
        EventKind::Delete => "delete".to_string(),
    }
}

fn describe_canon(c: &Canon) -> String {
    match (&c.kv, c.kind) {
        (Some(kv), kind) => describe(kind, kv),
        (None, EventKind::Put) => format!("put {}", show(&c.value)),
        (None, EventKind::Delete) => "delete".to_string(),
    }
}

struct WatchCheck<'a> {
    h: &'a History,
    log: &'a Log,
    w: &'a Watch,
    lives: &'a Lifetimes,
}

impl WatchCheck<'_> {
    fn name(&self) -> String {
        let w = self.w;
        let range = if w.end.is_empty() {
            show(&w.start)
        } else {
            format!("[{}, {})", show(&w.start), show(&w.end))
        };
        format!(
            "watch {} (c{}@n{} {range} from {})",
            w.id, w.client, w.node, w.start_revision
        )
    }

    fn covers(&self, key: &[u8], kind: EventKind) -> bool {
        let w = self.w;
        in_range(key, &w.start, &w.end)
            && !(kind == EventKind::Put && w.filter_puts)
            && !(kind == EventKind::Delete && w.filter_deletes)
    }

    fn check(&self, f: &mut Findings) {
        let w = self.w;
        let floor = self.now_floor();
        let mut delivered: HashSet<(i64, &Key)> = HashSet::new();
        let mut last = 0i64;
        // The last response with events: (its index, its last revision).
        let mut last_response_end: Option<(usize, i64)> = None;
        let mut bookmark = 0i64;
        let mut vouched = 0i64;
        for (r, resp) in w.responses.iter().enumerate() {
            if resp.canceled && resp.compact_revision > 0 {
                self.compacted_cancel(f, r, last);
            }
            if let (Some((prev, end)), Some(first)) = (last_response_end, resp.events.first()) {
                if first.kv.mod_revision == end {
                    f.push(format!(
                        "{}: Atomic: revision {end} split across responses {prev} and {r}",
                        self.name()
                    ));
                }
            }
            for ev in &resp.events {
                let rev = ev.kv.mod_revision;
                let key = show(&ev.kv.key);
                let here = format!("{} response {r} at {}", self.name(), at(resp.at));
                if !in_range(&ev.kv.key, &w.start, &w.end) {
                    f.push(format!("{here}: event on {key}, outside the watched range"));
                }
                let filtered = match ev.kind {
                    EventKind::Put => w.filter_puts,
                    EventKind::Delete => w.filter_deletes,
                };
                if filtered {
                    f.push(format!(
                        "{here}: {key} {:?} event despite its filter",
                        ev.kind
                    ));
                }
                if w.start_revision > 0 && rev < w.start_revision {
                    f.push(format!(
                        "{here}: Resumable: event on {key} at revision {rev}, before the start revision"
                    ));
                }
                if let Some((floor, op)) = floor {
                    if rev <= floor {
                        f.push(format!(
                            "{here}: event on {key} at revision {rev}, but n{} had answered revision {floor} ({}) before the watch was created",
                            w.node,
                            name(&self.h.ops[op])
                        ));
                    }
                }
                if rev < last {
                    f.push(format!(
                        "{here}: Ordered: event on {key} at revision {rev} after revision {last}"
                    ));
                }
                if !delivered.insert((rev, &ev.kv.key)) {
                    f.push(format!(
                        "{here}: Unique: event on {key} at revision {rev} delivered again"
                    ));
                }
                if rev <= bookmark {
                    f.push(format!(
                        "{here}: Bookmarkable: event on {key} at revision {rev} after a progress notification at {bookmark}"
                    ));
                }
                self.is_create(f, &here, ev);
                if w.prev_kv {
                    self.prev_kv(f, &here, ev, resp.at);
                }
                last = last.max(rev);
            }
            if let Some(ev) = resp.events.last() {
                last_response_end = Some((r, ev.kv.mod_revision));
                vouched = vouched.max(ev.kv.mod_revision);
            }
            if resp.progress {
                bookmark = bookmark.max(resp.header_revision);
                vouched = vouched.max(resp.header_revision);
            }
        }
        self.reliable(f, &delivered, vouched);
    }

    /// The highest revision the watch's member answered a read with, in this lifetime, before
    /// a watch from "now" was created: the watch may not deliver events at or below it. (Only
    /// reads: a member may answer a write it forwarded before applying it.)
    fn now_floor(&self) -> Option<(i64, usize)> {
        let w = self.w;
        if w.start_revision != 0 {
            return None;
        }
        let epoch = self.lives.epoch(w.node, w.invoke);
        self.h
            .ops
            .iter()
            .enumerate()
            .filter(|(_, op)| {
                op.node == w.node
                    && op.complete < w.invoke
                    && is_read(&op.call)
                    && self.lives.epoch(op.node, op.invoke) == epoch
            })
            .filter_map(|(i, op)| Some((header_revision(op)?, i)))
            .max()
    }

    fn compacted_cancel(&self, f: &mut Findings, r: usize, last: i64) {
        let w = self.w;
        let resp = &w.responses[r];
        let compact = resp.compact_revision;
        let next = if last > 0 { last + 1 } else { w.start_revision };
        if next > 0 && next >= compact {
            f.push(format!(
                "{} response {r}: canceled as compacted at {compact}, but its next revision {next} is not compacted",
                self.name()
            ));
        }
        let requested = self.h.ops.iter().any(|op| {
            matches!(op.call, Call::Compact { revision } if revision >= compact)
                && !matches!(op.outcome, Outcome::Failed(_))
                && op.invoke < resp.at
        });
        if !requested {
            f.push(format!(
                "{} response {r}: canceled as compacted at {compact}, but no compaction to {compact} was requested",
                self.name()
            ));
        }
    }

    fn is_create(&self, f: &mut Findings, here: &str, ev: &Event) {
        if ev.kind != EventKind::Put {
            return;
        }
        let kv = &ev.kv;
        let ok = if kv.version == 1 {
            kv.create_revision == kv.mod_revision
        } else {
            kv.version > 1 && kv.create_revision < kv.mod_revision
        };
        if !ok {
            f.push(format!(
                "{here}: put event {}={} has version {} but create_revision {}",
                show(&kv.key),
                show_kv(kv),
                kv.version,
                kv.create_revision
            ));
        }
    }

    fn prev_kv(&self, f: &mut Findings, here: &str, ev: &Event, t: u64) {
        let kv = &ev.kv;
        let rev = kv.mod_revision;
        let key = show(&kv.key);
        let before = self
            .log
            .get(&kv.key)
            .and_then(|by_rev| by_rev.range(..rev).next_back());
        let Some(prev) = &ev.prev else {
            let must_exist = ev.kind == EventKind::Delete || kv.version > 1;
            let compacted = self.h.ops.iter().any(|op| {
                matches!(op.call, Call::Compact { revision } if revision >= rev)
                    && !matches!(op.outcome, Outcome::Failed(_))
                    && op.invoke < t
            });
            if must_exist && !compacted {
                f.push(format!(
                    "{here}: prev_kv missing for the event on {key} at revision {rev}"
                ));
            }
            return;
        };
        let shown = show_kv(prev);
        if prev.key != kv.key || prev.mod_revision >= rev {
            f.push(format!(
                "{here}: prev_kv {}={shown} is not an earlier state of {key} at revision {rev}",
                show(&prev.key)
            ));
            return;
        }
        if ev.kind == EventKind::Put && kv.version == 1 {
            f.push(format!(
                "{here}: {key} created at revision {rev} but prev_kv is {shown}"
            ));
        }
        if ev.kind == EventKind::Put
            && kv.version > 1
            && (prev.version != kv.version - 1 || prev.create_revision != kv.create_revision)
        {
            f.push(format!(
                "{here}: prev_kv {shown} (version {}) does not precede {} (version {})",
                prev.version,
                show_kv(kv),
                kv.version
            ));
        }
        if let Some((&last_rev, c)) = before {
            let stale = match c.kind {
                EventKind::Put => {
                    prev.mod_revision < last_rev
                        || (prev.mod_revision == last_rev && prev.value != c.value)
                }
                EventKind::Delete => prev.mod_revision <= last_rev,
            };
            if stale {
                f.push(format!(
                    "{here}: prev_kv of {key} at revision {rev} is {shown}, but {} {} it at revision {last_rev}",
                    c.from,
                    match c.kind {
                        EventKind::Put => "put",
                        EventKind::Delete => "deleted",
                    }
                ));
            }
        }
    }

    fn reliable(&self, f: &mut Findings, delivered: &HashSet<(i64, &Key)>, vouched: i64) {
        let w = self.w;
        let first = if w.start_revision > 0 {
            Some(w.start_revision)
        } else if let Some(created) = w.created_revision {
            Some(created + 1)
        } else {
            delivered.iter().map(|(rev, _)| *rev).min()
        };
        let Some(first) = first else { return };
        if w.responses.iter().any(|r| r.compact_revision > 0) {
            return;
        }
        let mut missing: Vec<(i64, &Key, &Canon)> = Vec::new();
        for (key, by_rev) in keys_in(self.log, &w.start, &w.end) {
            for (&rev, canon) in by_rev.range(first..) {
                if rev > vouched {
                    break;
                }
                if self.covers(key, canon.kind) && !delivered.contains(&(rev, key)) {
                    missing.push((rev, key, canon));
                }
            }
        }
        missing.sort_by_key(|(rev, key, _)| (*rev, *key));
        if let Some((rev, key, canon)) = missing.first() {
            f.push(format!(
                "{}: Reliable: {} events missing up to revision {vouched}, first {} {} at revision {rev} (from {})",
                self.name(),
                missing.len(),
                show(key),
                describe_canon(canon),
                canon.from
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::*;

    fn violations(run: &Run) -> Vec<String> {
        check(&run.h).into_iter().map(|v| v.message).collect()
    }

    fn assert_clean(run: &Run) {
        let found = violations(run);
        assert!(found.is_empty(), "{found:#?}");
    }

    fn assert_caught(run: &Run, needle: &str) {
        let found = violations(run);
        assert!(
            found.iter().any(|m| m.contains(needle)),
            "expected a violation containing {needle:?}, got {found:#?}"
        );
    }

    /// k=v1 at 2, k=v2 at 3, j=w1 at 4, k deleted at 5; a watch on [j, l) from revision 2.
    fn base() -> (Run, usize) {
        let mut run = Run::new();
        run.op(1, put("k", "v1"), 0, 10, put_ok(2));
        run.op(1, put("k", "v2"), 20, 30, put_ok(3));
        run.op(1, put("j", "w1"), 40, 50, put_ok(4));
        run.op(1, delete("k"), 60, 70, delete_ok(5, 1));
        let w = run.watch("j", "l", 2, 0, 1);
        (run, w)
    }

    fn all_events() -> Vec<Event> {
        vec![
            put_event(kv("k", "v1", 2, 2, 1)),
            put_event(kv("k", "v2", 2, 3, 2)),
            put_event(kv("j", "w1", 4, 4, 1)),
            delete_event("k", 5),
        ]
    }

    #[test]
    fn complete_ordered_delivery_passes() {
        let (mut run, w) = base();
        let evs = all_events();
        run.respond(w, events(15, 2, evs[..1].to_vec()));
        run.respond(w, events(35, 3, evs[1..2].to_vec()));
        run.respond(w, events(75, 5, evs[2..].to_vec()));
        run.respond(w, progress(80, 5));
        assert_clean(&run);
    }

    #[test]
    fn dropped_event_is_caught() {
        let (mut run, w) = base();
        let evs = all_events();
        run.respond(w, events(15, 2, evs[..1].to_vec()));
        run.respond(w, events(75, 5, evs[2..].to_vec()));
        assert_caught(
            &run,
            "Reliable: 1 events missing up to revision 5, first \"k\" put \"v2\"",
        );
    }

    #[test]
    fn dropped_event_before_a_progress_notification_is_caught() {
        let (mut run, w) = base();
        let evs = all_events();
        run.respond(w, events(15, 2, evs[..2].to_vec()));
        run.respond(w, progress(80, 5));
        assert_caught(&run, "Reliable: 2 events missing up to revision 5");
    }

    #[test]
    fn duplicated_event_is_caught() {
        let (mut run, w) = base();
        let evs = all_events();
        run.respond(w, events(15, 2, evs[..1].to_vec()));
        run.respond(w, events(35, 3, evs[..2].to_vec()));
        assert_caught(&run, "Unique: event on \"k\" at revision 2 delivered again");
        assert_caught(&run, "Atomic: revision 2 split");
    }

    #[test]
    fn out_of_order_event_is_caught() {
        let (mut run, w) = base();
        let evs = all_events();
        run.respond(w, events(35, 3, vec![evs[1].clone()]));
        run.respond(w, events(36, 3, vec![evs[0].clone()]));
        assert_caught(
            &run,
            "Ordered: event on \"k\" at revision 2 after revision 3",
        );
    }

    #[test]
    fn event_before_start_revision_is_caught() {
        let (mut run, _) = base();
        let w = run.watch("k", "", 3, 0, 1);
        run.respond(w, events(15, 2, vec![put_event(kv("k", "v1", 2, 2, 1))]));
        assert_caught(
            &run,
            "Resumable: event on \"k\" at revision 2, before the start revision",
        );
    }

    #[test]
    fn watches_disagreeing_on_a_revision_are_caught() {
        let (mut run, w) = base();
        let other = run.watch("k", "", 2, 0, 1);
        run.respond(w, events(15, 2, vec![put_event(kv("k", "v1", 2, 2, 1))]));
        // Same revision, same value, but a different version.
        run.respond(
            other,
            events(15, 2, vec![put_event(kv("k", "v1", 2, 2, 7))]),
        );
        assert_caught(&run, "disagree on \"k\" at revision 2");
    }

    #[test]
    fn event_contradicting_an_acked_write_is_caught() {
        let (mut run, w) = base();
        run.respond(w, events(15, 2, vec![delete_event("k", 3)]));
        assert_caught(&run, "disagree on \"k\" at revision 3");
    }

    #[test]
    fn progress_notification_ahead_of_events_is_caught() {
        let (mut run, w) = base();
        let evs = all_events();
        run.respond(w, events(15, 2, evs[..1].to_vec()));
        run.respond(w, progress(20, 3));
        run.respond(w, events(35, 3, evs[1..2].to_vec()));
        assert_caught(
            &run,
            "Bookmarkable: event on \"k\" at revision 3 after a progress notification at 3",
        );
    }

    #[test]
    fn filters_are_honoured() {
        let (mut run, _) = base();
        let w = run.watch("k", "", 2, 0, 1);
        run.h.watches[w].filter_deletes = true;
        run.respond(w, events(75, 5, vec![delete_event("k", 5)]));
        assert_caught(&run, "Delete event despite its filter");
    }

    #[test]
    fn prev_kv_must_be_the_previous_state() {
        let (mut run, _) = base();
        let w = run.watch("k", "", 3, 0, 1);
        run.h.watches[w].prev_kv = true;
        let mut update = put_event(kv("k", "v2", 2, 3, 2));
        update.prev = Some(kv("k", "v1", 2, 2, 1));
        let mut delete = delete_event("k", 5);
        delete.prev = Some(kv("k", "v2", 2, 3, 2));
        run.respond(w, events(35, 3, vec![update]));
        run.respond(w, events(75, 5, vec![delete.clone()]));
        assert_clean(&run);

        let (mut run, _) = base();
        let w = run.watch("k", "", 5, 0, 1);
        run.h.watches[w].prev_kv = true;
        delete.prev = Some(kv("k", "v1", 2, 2, 1));
        run.respond(w, events(75, 5, vec![delete]));
        assert_caught(&run, "prev_kv of \"k\" at revision 5 is \"v1\"@2, but op 2");
    }

    #[test]
    fn compaction_cancel_needs_a_compaction() {
        let (mut run, _) = base();
        let w = run.watch("k", "", 2, 100, 5);
        let mut cancel = events(101, 5, Vec::new());
        cancel.canceled = true;
        cancel.compact_revision = 4;
        run.respond(w, cancel);
        assert_caught(&run, "no compaction to 4 was requested");
        run.op(2, compact(4), 80, 90, compact_ok(5));
        assert_clean(&run);
    }

    #[test]
    fn watch_from_now_gets_no_old_events() {
        // etcd #20221: a new watch on n0 replays an event older than what n0 already served.
        let (mut run, _) = base();
        run.op(2, get("k"), 80, 90, get_ok(5, vec![]));
        let w = run.watch("k", "", 0, 100, 5);
        run.respond(w, events(101, 5, vec![put_event(kv("k", "v2", 2, 3, 2))]));
        assert_caught(
            &run,
            "event on \"k\" at revision 3, but n0 had answered revision 5",
        );
    }
}
