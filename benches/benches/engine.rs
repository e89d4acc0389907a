//! Engine benches: the sans-I/O core alone, in memory, on one thread. No fsync (a `Persist` is
//! acknowledged at once) and no network (peer messages are handed over in memory), so these
//! figures bound what the engine costs per operation; they are not comparable with etcd's
//! server figures, which include both.
//!
//! - `single_node_put_apply`: puts proposed, persisted, committed and applied on a one-member
//!   cluster; one put per round, and 100 per round (group commit: one persist covers them).
//! - `three_node_commit`: puts replicated to three members and applied on all of them.
//! - `range_100k`: reads from an MVCC store of 100,000 keys.
//! - `watch_fanout_1000`: one put's event handed to 1,000 watchers of its key.
//!
//! `cargo test` runs each bench once (criterion's test mode) in a debug build, in about two
//! seconds, so a broken bench fails the suite.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use strata_bench::{key, one_percent_prefix, prefix_end, put, VALUE_BYTES};
use strata_engine::mvcc::{Counting, MvccStore};
use strata_engine::proto::etcdserverpb::{RangeRequest, WatchCreateRequest};
use strata_engine::proto::mvccpb::{event::EventType, Event, KeyValue};
use strata_engine::request::{Request, Response};
use strata_engine::testkit::Cluster;
use strata_engine::watch::WatchHub;
use strata_engine::{KvBackend, MemBackend, NodeId, Revision, StreamId};

/// Distinct keys the put benches cycle through, so the MVCC index holds many keys with history.
const PUT_KEYS: u64 = 10_000;
/// Puts one cluster takes before the bench starts a fresh one (outside the timed part): the
/// in-memory backend keeps every revision, so this bounds the bench's memory.
const PUTS_PER_CLUSTER: u64 = 50_000;
/// Keys of the range bench. Building them takes about a second in a debug build, so
/// `cargo test` (which runs each bench once) keeps the full size.
const RANGE_KEYS: u64 = 100_000;
const WATCHERS: u64 = 1_000;

/// A cluster with an elected leader and the puts it has taken so far.
struct PutRun {
    cluster: Cluster,
    leader: NodeId,
    puts: u64,
}

impl PutRun {
    fn new(voters: u64) -> PutRun {
        let mut cluster = Cluster::new(voters, 7);
        cluster.set_tracing(false);
        let leader = cluster
            .elect(100)
            .unwrap_or_else(|| panic!("no leader among {voters} voters"));
        PutRun {
            cluster,
            leader,
            puts: 0,
        }
    }

    /// Submits `batch` puts to the leader and stabilizes: every put is persisted, committed
    /// and applied on every member, and answered.
    fn round(&mut self, batch: u64) {
        let requests = (0..batch)
            .map(|i| Request::Put(put((self.puts + i) % PUT_KEYS)))
            .collect();
        self.cluster.submit_batch(self.leader, requests);
        self.puts += batch;
        self.cluster.stabilize();
        let answers = std::mem::take(&mut self.cluster.answers);
        assert_eq!(answers.len() as u64, batch, "answers of one round");
        for a in &answers {
            assert!(
                matches!(a.result, Ok(Response::Put(_))),
                "put {} on n{}: {:?}",
                a.id,
                a.node,
                a.result
            );
        }
    }

    /// Every member applied every put, each at its own revision (the first write is rev 2).
    fn check(&self) {
        for id in self.cluster.ids() {
            let revision = self.cluster.node(id).revision();
            assert_eq!(revision.get(), 1 + self.puts as i64, "n{id} revision");
        }
    }
}

/// Times `rounds` rounds of `batch` puts on a `voters`-member cluster; building clusters and
/// electing their leaders is not timed.
fn time_put_rounds(voters: u64, batch: u64, rounds: u64) -> Duration {
    let mut run = PutRun::new(voters);
    let mut timed = Duration::ZERO;
    for _ in 0..rounds {
        if run.puts + batch > PUTS_PER_CLUSTER {
            run.check();
            run = PutRun::new(voters);
        }
        let start = Instant::now();
        run.round(batch);
        timed += start.elapsed();
    }
    run.check();
    timed
}

fn put_rounds(c: &mut Criterion, group: &str, voters: u64, batches: &[u64]) {
    let mut group = c.benchmark_group(group);
    for &batch in batches {
        group.throughput(Throughput::Elements(batch));
        group.bench_function(BenchmarkId::new("puts_per_round", batch), |b| {
            b.iter_custom(|rounds| time_put_rounds(voters, batch, rounds))
        });
    }
    group.finish();
}

fn single_node_put_apply(c: &mut Criterion) {
    put_rounds(c, "single_node_put_apply", 1, &[1, 100]);
}

fn three_node_commit(c: &mut Criterion) {
    put_rounds(c, "three_node_commit", 3, &[1, 100]);
}

/// An MVCC store holding `key(0..keys)`, one put per revision, all written to the backend.
fn store_with_keys(keys: u64) -> (MvccStore, MemBackend) {
    let mut backend = MemBackend::new();
    let mut store = MvccStore::open(&backend).expect("open a fresh store");
    for i in 0..keys {
        store
            .put(&backend, &put(i), &|_| false)
            .unwrap_or_else(|e| panic!("put {i}: {e}"));
        backend.write(store.take_batch()).expect("memory backend");
    }
    (store, backend)
}

fn range_100k(c: &mut Criterion) {
    let (store, backend) = store_with_keys(RANGE_KEYS);
    let everything = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..RangeRequest::default()
    };
    let prefix = one_percent_prefix(RANGE_KEYS);
    let cases = [
        (
            "count_only_all",
            RangeRequest {
                count_only: true,
                ..everything.clone()
            },
            0,
        ),
        (
            "all_limit_1000",
            RangeRequest {
                limit: 1000,
                ..everything.clone()
            },
            1000,
        ),
        (
            "prefix_1_percent",
            RangeRequest {
                range_end: prefix_end(&prefix),
                key: prefix,
                ..RangeRequest::default()
            },
            RANGE_KEYS / 100,
        ),
        (
            "point_get",
            RangeRequest {
                key: key(RANGE_KEYS / 2),
                ..RangeRequest::default()
            },
            1,
        ),
    ];
    let chunk = RangeRequest {
        limit: 1000,
        ..everything.clone()
    };
    let mut group = c.benchmark_group("range_100k");
    for (name, request, kvs) in cases {
        // What each case reads, checked once before timing it.
        let resp = store
            .range(&backend, &request, Counting::Total)
            .expect("range");
        assert_eq!(resp.kvs.len() as u64, kvs, "{name}: kvs returned");
        assert!(resp.count >= kvs as i64, "{name}: count {}", resp.count);
        group.bench_function(name, |b| {
            b.iter(|| {
                store
                    .range(&backend, black_box(&request), Counting::Total)
                    .expect("range")
            })
        });
    }
    // A chunk after the first of a range read in chunks: no count, so O(limit).
    let resp = store
        .range(&backend, &chunk, Counting::Skip)
        .expect("range");
    assert_eq!(resp.kvs.len(), 1000);
    group.bench_function("all_limit_1000_uncounted_chunk", |b| {
        b.iter(|| {
            store
                .range(&backend, black_box(&chunk), Counting::Skip)
                .expect("range")
        })
    });
    group.finish();
}

fn watch_fanout_1000(c: &mut Criterion) {
    let watched = b"watched".to_vec();
    let mut hub = WatchHub::new();
    let start = Revision(1);
    for stream in 0..WATCHERS {
        let request = WatchCreateRequest {
            key: watched.clone(),
            ..WatchCreateRequest::default()
        };
        let created = hub.create(StreamId(stream), &request, start, Revision(-1));
        assert!(!created.response.canceled, "watch on stream {stream}");
    }
    let mut revision = start.get();
    let mut group = c.benchmark_group("watch_fanout_1000");
    group.throughput(Throughput::Elements(WATCHERS));
    group.bench_function("one_put_event", |b| {
        b.iter_batched(
            || {
                revision += 1;
                let kv = KeyValue {
                    key: watched.clone(),
                    value: vec![b'v'; VALUE_BYTES],
                    create_revision: 2,
                    mod_revision: revision,
                    version: revision - 1,
                    lease: 0,
                };
                Event {
                    r#type: EventType::Put as i32,
                    kv: Some(kv),
                    prev_kv: None,
                }
            },
            |event| {
                let outputs = hub.notify(std::slice::from_ref(&event));
                assert_eq!(outputs.len() as u64, WATCHERS, "watchers notified");
                outputs
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(
    benches,
    single_node_put_apply,
    three_node_commit,
    range_100k,
    watch_fanout_1000
);
criterion_main!(benches);
