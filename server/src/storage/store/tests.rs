//! The storage logic's tests, each run over RocksDB and over the fault disk; and the
//! model-based test (redb's way of testing its backends): one random sequence of persist
//! tasks, compactions, snapshot installs, backend writes and restarts drives the logic over
//! both devices, which must then hold the same records and load the same log.

use proptest::prelude::*;
use raft::eraftpb::{Entry, HardState};

use super::*;
use crate::storage::fault::{Crash, FaultDevice};
use crate::storage::rocks::RocksDevice;

/// A device the tests can restart: the process ends (the OS keeps what it was given) and the
/// store is opened again.
trait Harness {
    type D: Device;
    fn store(&self) -> Store<Self::D>;
    fn restart(&mut self);
}

struct Rocks {
    dir: tempfile::TempDir,
    store: Option<Store<RocksDevice>>,
}

impl Rocks {
    fn new() -> Rocks {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(RocksDevice::open(dir.path(), true).expect("open"));
        Rocks {
            dir,
            store: Some(store),
        }
    }
}

impl Harness for Rocks {
    type D = RocksDevice;
    fn store(&self) -> Store<RocksDevice> {
        self.store.clone().expect("open")
    }
    fn restart(&mut self) {
        let store = self.store.take().expect("open");
        assert_eq!(
            Arc::strong_count(&store.device),
            1,
            "every view of the store is dropped before a restart"
        );
        drop(store);
        self.store = Some(Store::new(
            RocksDevice::open(self.dir.path(), false).expect("reopen"),
        ));
    }
}

struct Model(Store<FaultDevice>);

impl Model {
    fn new() -> Model {
        Model(Store::new(FaultDevice::new("model")))
    }
}

impl Harness for Model {
    type D = FaultDevice;
    fn store(&self) -> Store<FaultDevice> {
        self.0.clone()
    }
    fn restart(&mut self) {
        self.0.device().crash(Crash::KeepUnsynced, |n| n);
    }
}

/// Runs a test body over both devices.
macro_rules! on_both_devices {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn rocksdb() {
                super::$name(super::Rocks::new());
            }
            #[test]
            fn fault_disk() {
                super::$name(super::Model::new());
            }
        }
    )*};
}

on_both_devices!(
    log_survives_reopen_and_suffix_is_replaced,
    conflicting_append_after_reopen_replaces_the_stored_suffix,
    a_snapshot_install_drops_the_stale_tail,
    a_log_whose_terms_go_down_is_refused_at_load,
    compaction_keeps_the_tail,
    corrupt_entry_is_refused_with_the_path,
    a_data_dir_of_another_cluster_is_refused,
    backend_scan_stays_in_bucket_and_range,
    backend_get_many_answers_as_get_does,
);

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: vec![index as u8; 8].into(),
        ..Default::default()
    }
}

fn task(number: u64, entries: Vec<Entry>, commit: u64) -> PersistTask {
    let hs = HardState {
        term: entries.last().map_or(2, |e| e.term.max(2)),
        commit,
        ..Default::default()
    };
    PersistTask {
        number,
        hard_state: Some(hs),
        entries,
        snapshot: None,
        must_sync: true,
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn persist<D: Device>(store: &Store<D>, tasks: Vec<PersistTask>) {
    block_on(store.log(None).persist(tasks)).expect("persist");
}

fn indexes_and_terms(log: &PersistedLog) -> Vec<(u64, u64)> {
    log.entries.iter().map(|e| (e.index, e.term)).collect()
}

fn log_survives_reopen_and_suffix_is_replaced(mut h: impl Harness) {
    persist(
        &h.store(),
        vec![
            task(1, (1..=5).map(|i| entry(i, 1)).collect(), 3),
            task(2, vec![entry(4, 2)], 4),
        ],
    );
    h.restart();
    let log = h.store().load_log().expect("load");
    assert_eq!(
        indexes_and_terms(&log),
        vec![(1, 1), (2, 1), (3, 1), (4, 2)]
    );
    assert_eq!(log.hard_state.commit, 4);
}

fn conflicting_append_after_reopen_replaces_the_stored_suffix(mut h: impl Harness) {
    persist(
        &h.store(),
        vec![task(1, (1..=5).map(|i| entry(i, 1)).collect(), 2)],
    );
    h.restart();
    // Appends that only extend the log leave no range delete behind; a conflicting one
    // (index 3 of a later term) must find the stored end and cut it.
    let mut log = h.store().log(None);
    block_on(log.persist(vec![task(2, vec![entry(3, 2)], 2)])).expect("persist");
    block_on(log.persist(vec![task(3, vec![entry(4, 2)], 2)])).expect("persist");
    drop(log);
    let loaded = h.store().load_log().expect("load");
    assert_eq!(
        indexes_and_terms(&loaded),
        vec![(1, 1), (2, 1), (3, 2), (4, 2)]
    );
}

/// A snapshot replacing a divergent history drops the stored tail past its index: after a
/// restart the log holds nothing older than the snapshot's term after it (issue 15's
/// stale-tail bug: entries 6..8 of term 1 survived a snapshot at 5 of term 3).
fn a_snapshot_install_drops_the_stale_tail(mut h: impl Harness) {
    {
        let mut log = h.store().log(None);
        block_on(log.persist(vec![task(1, (1..=8).map(|i| entry(i, 1)).collect(), 4)]))
            .expect("persist");
        let mut install = task(2, Vec::new(), 5);
        install.snapshot = Some((LogIndex(5), Term(3)));
        block_on(log.persist(vec![install])).expect("install");
        // The member crashes before appending anything after the snapshot.
    }
    h.restart();
    let loaded = h.store().load_log().expect("load");
    assert_eq!(loaded.compacted, (LogIndex(5), Term(3)));
    assert!(loaded.entries.is_empty(), "{:?}", loaded.entries);
    // The next append goes right after the snapshot.
    persist(&h.store(), vec![task(3, vec![entry(6, 3)], 6)]);
    let loaded = h.store().load_log().expect("load");
    assert_eq!(indexes_and_terms(&loaded), vec![(6, 3)]);
}

fn a_log_whose_terms_go_down_is_refused_at_load(h: impl Harness) {
    persist(&h.store(), vec![task(1, vec![entry(1, 2), entry(2, 1)], 1)]);
    let err = h.store().load_log().expect_err("terms go down");
    assert!(
        err.to_string().contains("entry 2 has term 1 after term 2"),
        "{err}"
    );
}

fn compaction_keeps_the_tail(h: impl Harness) {
    let store = h.store();
    let mut log = store.log(None);
    block_on(log.persist(vec![task(1, (1..=6).map(|i| entry(i, 1)).collect(), 6)]))
        .expect("persist");
    block_on(log.compact(LogIndex(4), Term(1))).expect("compact");
    let loaded = store.load_log().expect("load");
    assert_eq!(loaded.compacted, (LogIndex(4), Term(1)));
    let got: Vec<_> = loaded.entries.iter().map(|e| e.index).collect();
    assert_eq!(got, vec![5, 6]);
}

fn corrupt_entry_is_refused_with_the_path(mut h: impl Harness) {
    {
        let store = h.store();
        persist(&store, vec![task(1, vec![entry(1, 1), entry(2, 1)], 1)]);
        // Flip a byte of entry 2 behind the checksum's back.
        let mut raw = store
            .device()
            .get(Space::Raft, &entry_key(2))
            .expect("get")
            .expect("present");
        let last = raw.len() - 1;
        raw[last] ^= 0xff;
        let mut batch = DeviceBatch::default();
        batch.put(Space::Raft, entry_key(2), raw);
        store.device().write(batch, true).expect("write");
    }
    h.restart();
    let store = h.store();
    let err = store
        .load_log()
        .expect_err("corruption detected")
        .to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(err.contains(&store.path()), "{err}");
}

fn a_data_dir_of_another_cluster_is_refused(h: impl Harness) {
    let store = h.store();
    let me = Identity {
        cluster_id: 1,
        member_id: 2,
        joined: false,
    };
    assert!(store.is_empty().expect("read"));
    store.claim(me).expect("first claim");
    assert!(!store.is_empty().expect("read"));
    store.claim(me).expect("same identity");
    let err = store
        .claim(Identity {
            cluster_id: 9,
            member_id: 2,
            joined: false,
        })
        .expect_err("other cluster");
    assert!(err.to_string().contains("belongs to cluster 1"), "{err}");
}

fn backend_scan_stays_in_bucket_and_range(h: impl Harness) {
    let mut b = h.store().backend();
    let mut batch = WriteBatch::default();
    for k in ["a", "b", "c", "d"] {
        batch.put(Bucket::Key, k.as_bytes().to_vec(), b"v".to_vec());
        batch.put(Bucket::Lease, k.as_bytes().to_vec(), b"l".to_vec());
    }
    b.write(batch).expect("write");
    let mut seen = Vec::new();
    b.scan(Bucket::Key, b"b", Some(b"d"), &mut |k, v| {
        seen.push((k.to_vec(), v.to_vec()));
        Scan::Continue
    })
    .expect("scan");
    assert_eq!(
        seen,
        vec![
            (b"b".to_vec(), b"v".to_vec()),
            (b"c".to_vec(), b"v".to_vec())
        ]
    );
    let mut all = 0;
    b.scan(Bucket::Lease, b"", None, &mut |_, _| {
        all += 1;
        Scan::Continue
    })
    .expect("scan");
    assert_eq!(all, 4);
}

fn backend_get_many_answers_as_get_does(h: impl Harness) {
    let mut b = h.store().backend();
    let mut batch = WriteBatch::default();
    for k in ["a", "c", "e"] {
        batch.put(
            Bucket::Key,
            k.as_bytes().to_vec(),
            format!("v{k}").into_bytes(),
        );
        batch.put(Bucket::Lease, b"b".to_vec(), b"other bucket".to_vec());
    }
    b.write(batch).expect("write");
    let keys: Vec<Vec<u8>> = ["e", "b", "a", "a", "z", "c"]
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .collect();
    let one_by_one: Vec<_> = keys
        .iter()
        .map(|k| b.get(Bucket::Key, k).expect("get"))
        .collect();
    assert_eq!(
        b.get_many(Bucket::Key, &keys).expect("get_many"),
        one_by_one
    );
    assert_eq!(
        one_by_one.iter().filter(|v| v.is_some()).count(),
        4,
        "present, absent and repeated keys, in the order asked"
    );
    assert_eq!(
        b.get_many(Bucket::Key, &[]).expect("none"),
        Vec::<Option<Vec<u8>>>::new()
    );
}

// ---- the model-based test ---------------------------------------------------------------

/// One step of a random storage history.
#[derive(Clone, Debug)]
enum Step {
    /// Append `len` entries starting `back` entries before the log's end (0: extend it), in
    /// the current term or a new one, in a group of `tasks` tasks, synced or not.
    Append {
        back: u64,
        len: u64,
        new_term: bool,
        sync: bool,
    },
    /// Install a snapshot `ahead` entries past the log's end (or before it: negative).
    Snapshot { ahead: i64 },
    /// Compact the log up to `back` entries before its end.
    Compact { back: u64 },
    /// A backend batch over a few keys of a bucket.
    Backend { keys: Vec<(u8, Option<u8>)> },
    /// Replace the whole backend (a state machine snapshot install).
    ReplaceAll { keys: Vec<u8> },
    /// The process ends and starts again.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0u64..4, 1u64..5, any::<bool>(), any::<bool>())
            .prop_map(|(back, len, new_term, sync)| Step::Append { back, len, new_term, sync }),
        1 => (-3i64..4).prop_map(|ahead| Step::Snapshot { ahead }),
        1 => (0u64..4).prop_map(|back| Step::Compact { back }),
        3 => prop::collection::vec((0u8..16, prop::option::of(any::<u8>())), 1..4)
            .prop_map(|keys| Step::Backend { keys }),
        1 => prop::collection::vec(0u8..16, 0..4).prop_map(|keys| Step::ReplaceAll { keys }),
        1 => Just(Step::Restart),
    ]
}

/// What the test driver knows of the log, to make every task one raft could issue.
#[derive(Default)]
struct Shape {
    first: u64,
    last: u64,
    term: u64,
    number: u64,
    /// The term of every stored entry.
    terms: std::collections::BTreeMap<u64, u64>,
}

/// The same step on one device.
fn apply<H: Harness>(h: &mut H, log: &mut Option<StoreLog<H::D>>, shape: &Shape, s: &Step) {
    match s {
        Step::Restart => {
            *log = None;
            h.restart();
        }
        Step::Backend { keys } => {
            let mut batch = WriteBatch::default();
            for (k, v) in keys {
                match v {
                    Some(v) => batch.put(Bucket::Key, vec![*k], vec![*v]),
                    None => batch.delete(Bucket::Key, vec![*k]),
                }
            }
            h.store().backend().write(batch).expect("backend write");
        }
        Step::ReplaceAll { keys } => {
            let ops = keys
                .iter()
                .map(|k| BatchOp {
                    bucket: Bucket::Lease,
                    key: vec![*k],
                    value: Some(vec![*k]),
                })
                .collect();
            h.store().backend().replace_all(ops).expect("replace");
        }
        _ => {
            let log = log.get_or_insert_with(|| h.store().log(None));
            match *s {
                Step::Append {
                    back,
                    len,
                    new_term,
                    sync,
                } => {
                    let from = (shape.last + 1).saturating_sub(back).max(shape.first);
                    let term = shape.term + u64::from(new_term);
                    let entries = (from..from + len).map(|i| entry(i, term)).collect();
                    let mut t = task(shape.number, entries, 0);
                    t.hard_state.as_mut().expect("hard state").term = term;
                    t.must_sync = sync;
                    block_on(log.persist(vec![t])).expect("persist");
                }
                Step::Snapshot { ahead } => {
                    let index = (shape.last as i64 + ahead).max(shape.first as i64) as u64;
                    let mut t = task(shape.number, Vec::new(), index);
                    t.snapshot = Some((LogIndex(index), Term(shape.term + 1)));
                    t.hard_state.as_mut().expect("hard state").term = shape.term + 1;
                    block_on(log.persist(vec![t])).expect("install");
                }
                Step::Compact { back } => {
                    let index = shape.last.saturating_sub(back);
                    if let Some(term) = shape.terms.get(&index).filter(|_| index >= shape.first) {
                        block_on(log.compact(LogIndex(index), Term(*term))).expect("compact");
                    }
                }
                Step::Restart | Step::Backend { .. } | Step::ReplaceAll { .. } => {
                    unreachable!("handled above")
                }
            }
        }
    }
}

/// Advances the driver's view of the log after `s`.
fn advance(shape: &mut Shape, s: &Step) {
    shape.number += 1;
    match *s {
        Step::Append {
            back,
            len,
            new_term,
            ..
        } => {
            let from = (shape.last + 1).saturating_sub(back).max(shape.first);
            shape.term += u64::from(new_term);
            shape.last = from + len - 1;
            shape.terms.split_off(&from);
            shape
                .terms
                .extend((from..=shape.last).map(|i| (i, shape.term)));
        }
        Step::Snapshot { ahead } => {
            let index = (shape.last as i64 + ahead).max(shape.first as i64) as u64;
            shape.term += 1;
            shape.first = index + 1;
            shape.last = index;
            shape.terms.clear();
        }
        Step::Compact { back } => {
            let index = shape.last.saturating_sub(back);
            if shape.terms.contains_key(&index) && index >= shape.first {
                shape.first = index + 1;
                shape.terms = shape.terms.split_off(&(index + 1));
            }
        }
        _ => {}
    }
}

/// Every record of both spaces, as the device holds them.
fn records<D: Device>(d: &D) -> Vec<(Space, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for space in Space::ALL {
        d.scan(space, b"", None, &mut |k, v| {
            out.push((space, k.to_vec(), v.to_vec()));
            true
        })
        .expect("scan");
    }
    out
}

fn loaded<D: Device>(store: &Store<D>) -> Result<PersistedLog, String> {
    store
        .load_log()
        .map_err(|e| e.to_string().replace(&store.path(), "<path>"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn rocksdb_holds_what_the_model_holds(steps in prop::collection::vec(step(), 1..40)) {
        let mut rocks = Rocks::new();
        let mut model = Model::new();
        let (mut rocks_log, mut model_log) = (None, None);
        let mut shape = Shape { first: 1, ..Shape::default() };
        for s in steps.iter().chain([Step::Restart].iter()) {
            apply(&mut rocks, &mut rocks_log, &shape, s);
            apply(&mut model, &mut model_log, &shape, s);
            advance(&mut shape, s);
            if matches!(s, Step::Restart) {
                prop_assert_eq!(records(rocks.store().device()), records(model.store().device()));
                let (r, m) = (loaded(&rocks.store()), loaded(&model.store()));
                prop_assert_eq!(&r, &m);
                let log = r.map_err(TestCaseError::fail)?;
                // What was loaded is the log the driver wrote: from its first index to its last.
                let first = log.entries.first().map(|e| e.index);
                prop_assert!(first.is_none() || first == Some(shape.first), "{:?} vs {}", first, shape.first);
                prop_assert_eq!(log.entries.last().map_or(log.compacted.0.0, |e| e.index), shape.last);
            }
        }
    }
}
