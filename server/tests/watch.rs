//! Watch delivery on real processes: big revisions split into fragments for the watchers that
//! ask (etcd's `WatchCreateRequest.fragment`) and sent whole to the others; a client that stops
//! reading while thousands of writes land gets every event later, in order, none twice.

mod common;

use std::time::{Duration, Instant};

use common::{metric, runtime, Cluster};
use etcd_client::{Client, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use prost::Message as _;
use strata_engine::proto::etcdserverpb::{
    watch_request::RequestUnion, WatchCreateRequest, WatchRequest, WatchResponse,
};
use strata_server::api::pb::etcdserverpb::watch_client::WatchClient;
use tokio_real::sync::mpsc;

/// A watch stream over the raw gRPC API, to see what etcd-client hides (the `fragment` flag).
/// The request side stays open: a half-close would end the watch.
struct RawWatch {
    _requests: mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
}

impl RawWatch {
    async fn open(url: &str, create: WatchCreateRequest) -> RawWatch {
        let mut client = WatchClient::connect(url.to_string())
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(1);
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        })
        .await
        .expect("queue create");
        let responses = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("watch")
            .into_inner();
        let mut watch = RawWatch {
            _requests: tx,
            responses,
        };
        assert!(watch.next().await.created);
        watch
    }

    async fn next(&mut self) -> WatchResponse {
        tokio_real::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .expect("a watch response within 10 s")
            .expect("watch stream")
            .expect("stream open")
    }

    /// Responses up to the one that ends a fragmented series (or a whole response).
    async fn until_whole(&mut self) -> Vec<WatchResponse> {
        let mut parts = vec![self.next().await];
        while parts.last().unwrap().fragment {
            parts.push(self.next().await);
        }
        parts
    }
}

#[test]
fn a_big_revision_is_fragmented_only_for_watchers_that_ask() {
    const LIMIT: usize = 256 * 1024;
    const KEYS: usize = 3;
    let c = Cluster::start_with(1, &["--max-request-bytes", &LIMIT.to_string()]);
    let url = c.members[0].client_url();
    let rt = runtime();
    rt.block_on(async {
        let mut client = Client::connect([url.as_str()], None)
            .await
            .expect("connect");
        let old = "o".repeat(60_000);
        for i in 0..KEYS {
            client
                .put(format!("big/{i}"), old.as_str(), None)
                .await
                .expect("put");
        }
        let create = |fragment| WatchCreateRequest {
            key: b"big/".to_vec(),
            range_end: b"big0".to_vec(),
            prev_kv: true,
            fragment,
            ..WatchCreateRequest::default()
        };
        let mut fragmented = RawWatch::open(&url, create(true)).await;
        let mut whole = RawWatch::open(&url, create(false)).await;
        let mut crate_watch = client
            .watch(
                "big/",
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_prev_key()
                        .with_fragment(),
                ),
            )
            .await
            .expect("etcd-client watch");
        assert!(crate_watch
            .message()
            .await
            .expect("created")
            .expect("open")
            .created());

        // One revision whose events (new values and previous ones) exceed the limit, from a
        // txn that is itself under it.
        let new = "n".repeat(60_000);
        let puts: Vec<TxnOp> = (0..KEYS)
            .map(|i| TxnOp::put(format!("big/{i}"), new.as_str(), None))
            .collect();
        let txn = client.txn(Txn::new().and_then(puts)).await.expect("txn");
        let revision = txn.header().expect("header").revision();

        let parts = fragmented.until_whole().await;
        assert!(parts.len() >= 2, "{} responses", parts.len());
        for part in &parts {
            assert!(
                part.encoded_len() < LIMIT,
                "fragment of {} bytes",
                part.encoded_len()
            );
        }
        let flags: Vec<bool> = parts.iter().map(|p| p.fragment).collect();
        let mut expected = vec![true; parts.len() - 1];
        expected.push(false);
        assert_eq!(flags, expected);
        let events: Vec<_> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(events.len(), KEYS);
        for (i, ev) in events.iter().enumerate() {
            let kv = ev.kv.as_ref().expect("kv");
            assert_eq!(kv.key, format!("big/{i}").into_bytes());
            assert_eq!((kv.mod_revision, kv.value.len()), (revision, new.len()));
            assert_eq!(ev.prev_kv.as_ref().expect("prev_kv").value, old.as_bytes());
        }

        // Without `fragment`, etcd sends the big response whole.
        let parts = whole.until_whole().await;
        assert_eq!(parts.len(), 1);
        assert!(parts[0].encoded_len() >= LIMIT);
        assert_eq!(parts[0].events.len(), KEYS);

        // etcd-client asks for fragments but does not join them (etcd's Go clientv3 does):
        // the revision arrives as several responses of whole events.
        let mut got = Vec::new();
        let mut responses = 0;
        while got.len() < KEYS {
            let resp = crate_watch.message().await.expect("watch").expect("open");
            responses += 1;
            for ev in resp.events() {
                let kv = ev.kv().expect("kv");
                assert_eq!(kv.mod_revision(), revision);
                got.push(kv.key_str().expect("utf-8").to_string());
            }
        }
        assert!(
            responses >= 2,
            "etcd-client got the revision in one response"
        );
        assert_eq!(got, ["big/0", "big/1", "big/2"]);
    });
}

#[test]
fn a_watcher_that_stops_reading_later_gets_every_event_in_order() {
    const BATCH: usize = 64;
    const AFTER_STALL: usize = 2_000;
    const MAX_PUTS: usize = 40_000;
    let c = Cluster::start(3);
    let follower = (c.leader() + 1) % 3;
    let follower_url = c.members[follower].client_url();
    let rt = runtime();
    rt.block_on(async {
        let mut watcher = Client::connect([follower_url.as_str()], None)
            .await
            .expect("connect watcher");
        let mut stream = watcher
            .watch("slow/", Some(WatchOptions::new().with_prefix()))
            .await
            .expect("watch");
        assert!(stream
            .message()
            .await
            .expect("created")
            .expect("open")
            .created());

        // Write, without reading the watch, until the follower reports the stream stalled
        // (its queue full, its watcher parked), then as much again.
        let writer = Client::connect(c.client_urls(), None)
            .await
            .expect("connect");
        let value = "v".repeat(2048);
        let mut written: Vec<(i64, String)> = Vec::new();
        let mut stop_at = MAX_PUTS;
        while written.len() < stop_at {
            let puts = (0..BATCH).map(|i| {
                let mut kv = writer.kv_client();
                let key = format!("slow/{:03}", (written.len() + i) % 500);
                let value = value.clone();
                async move {
                    let resp = kv.put(key.as_str(), value, Some(PutOptions::new())).await;
                    (resp.expect("put").header().expect("header").revision(), key)
                }
            });
            written.extend(futures::future::join_all(puts).await);
            let stalls = metric(&follower_url, "strata_watch_stream_stalls_total");
            if stop_at == MAX_PUTS && stalls > 0 {
                println!("the watch stream stalled after {} puts", written.len());
                stop_at = written.len() + AFTER_STALL;
            }
        }
        assert!(
            stop_at < MAX_PUTS,
            "the stream never stalled in {MAX_PUTS} puts"
        );
        written.sort();
        let last = written.last().expect("puts").0;

        // Now read: every revision once, in order, with its key.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen: Vec<(i64, String)> = Vec::with_capacity(written.len());
        while seen.last().map(|s| s.0) != Some(last) {
            let left = deadline.saturating_duration_since(Instant::now());
            let resp = tokio_real::time::timeout(left, stream.message())
                .await
                .unwrap_or_else(|_| panic!("caught up only to {:?} of {last}", seen.last()))
                .expect("watch")
                .expect("open");
            assert!(!resp.canceled(), "{resp:?}");
            for ev in resp.events() {
                assert_eq!(ev.event_type(), EventType::Put);
                let kv = ev.kv().expect("kv");
                assert_eq!(kv.value().len(), value.len());
                seen.push((kv.mod_revision(), kv.key_str().expect("utf-8").to_string()));
            }
        }
        let stalls = metric(&follower_url, "strata_watch_stream_stalls_total");
        println!("{} events in order after {stalls} stalls", seen.len());
        assert_eq!(seen.len(), written.len(), "events missing or repeated");
        assert_eq!(seen, written);

        // Caught up: the follower counts no slow watcher any more.
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(&follower_url, "etcd_debugging_mvcc_slow_watcher_total") != 0 {
            assert!(Instant::now() < deadline, "the watcher stayed slow");
            tokio_real::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
