//! Large reads on a real member (issue 19): a range read in chunks answers exactly what one
//! read would, at one revision while writes land; RangeStream, through the published proto,
//! merges into Range's answer; and large reads wait for the read budget instead of piling up.
//! Small `--max-request-bytes` make chunks of a few KiB, so a few thousand keys span many.

mod common;

use std::time::{Duration, Instant};

use common::{metric, runtime, Cluster};
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget};
use etcd_client::{Txn, TxnOp};
use prost::Message as _;
use strata_engine::proto::etcdserverpb::{range_request, RangeRequest, RangeResponse};
use strata_server::api::pb::etcdserverpb::kv_client::KvClient;

const CHUNKY: &[&str] = &["--max-request-bytes", "16384"];

fn value(i: usize, size: usize) -> String {
    format!("{i:06}-").repeat(size / 7 + 1)[..size].to_string()
}

/// The messages of a RangeStream merged as etcd's `RangeStreamToRangeResponse` does (protobuf
/// merge: fields set in later messages win, kvs append); also how many there were.
async fn range_stream(
    url: &str,
    req: RangeRequest,
) -> Result<(RangeResponse, usize), tonic::Status> {
    let mut kv = KvClient::connect(url.to_string()).await.expect("connect");
    let mut stream = kv.range_stream(req).await?.into_inner();
    let mut merged = RangeResponse::default();
    let mut messages = 0;
    while let Some(message) = stream.message().await? {
        messages += 1;
        let part = message
            .range_response
            .expect("a range_response")
            .into_range_response()
            .expect("decodes");
        merged
            .merge(part.encode_to_vec().as_slice())
            .expect("a message merges");
    }
    Ok((merged, messages))
}

/// A unary Range through the generated client (its answer is the wire bytes, decoded here).
async fn range(url: &str, req: RangeRequest) -> RangeResponse {
    let mut kv = KvClient::connect(url.to_string()).await.expect("connect");
    kv.range(req)
        .await
        .expect("range")
        .into_inner()
        .into_range_response()
        .expect("decodes")
}

/// Puts 400 keys `k0000`.. of 10 KB: 4 MB, more than the 2 MiB a client's HTTP/2 stream
/// window takes unread. Returns the range of them all.
async fn put_more_than_a_stream_window(url: &str) -> RangeRequest {
    let mut client = Client::connect([url], None).await.expect("connect");
    for i in 0..400 {
        client
            .put(format!("k{i:04}"), value(i, 10_000), None)
            .await
            .unwrap();
    }
    RangeRequest {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        ..Default::default()
    }
}

#[test]
fn chunked_reads_answer_what_one_read_would() {
    let c = Cluster::start_with(1, CHUNKY);
    let url = c.members[0].client_url();
    runtime().block_on(async {
        let mut client = Client::connect([url.clone()], None).await.expect("connect");
        let lease = client.lease_grant(600, None).await.expect("grant").id();
        for i in 0..1500 {
            let opts = (i % 7 == 0).then(|| PutOptions::new().with_lease(lease));
            client
                .put(format!("k{i:05}"), value(i, 300), opts)
                .await
                .expect("put");
        }
        let middle = client
            .get("k00000", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        for i in (0..1500).step_by(5) {
            client
                .put(format!("k{i:05}"), value(i + 1, 200), None)
                .await
                .unwrap();
        }
        for i in (0..1500).step_by(11) {
            client.delete(format!("k{i:05}"), None).await.unwrap();
        }
        let all = |r: RangeRequest| RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            ..r
        };
        let cases = [
            all(RangeRequest::default()),
            all(RangeRequest {
                keys_only: true,
                ..Default::default()
            }),
            all(RangeRequest {
                limit: 777,
                ..Default::default()
            }),
            all(RangeRequest {
                revision: middle,
                ..Default::default()
            }),
            all(RangeRequest {
                revision: middle,
                keys_only: true,
                ..Default::default()
            }),
            all(RangeRequest {
                sort_order: range_request::SortOrder::Descend as i32,
                sort_target: range_request::SortTarget::Mod as i32,
                limit: 30,
                ..Default::default()
            }),
            all(RangeRequest {
                count_only: true,
                ..Default::default()
            }),
            RangeRequest {
                key: b"k00700".to_vec(),
                range_end: vec![0],
                serializable: true,
                ..Default::default()
            },
            RangeRequest {
                key: b"k00001".to_vec(),
                ..Default::default()
            },
        ];
        let live = (0..1500).filter(|i| i % 11 != 0).count() as i64;
        for req in cases {
            // etcd-client decodes Range as any etcd client does.
            let mut opts = GetOptions::new().with_range(req.range_end.clone());
            if req.keys_only {
                opts = opts.with_keys_only();
            }
            if req.count_only {
                opts = opts.with_count_only();
            }
            if req.serializable {
                opts = opts.with_serializable();
            }
            if req.limit > 0 {
                opts = opts.with_limit(req.limit);
            }
            if req.revision > 0 {
                opts = opts.with_revision(req.revision);
            }
            if req.sort_order != 0 {
                opts = opts.with_sort(SortTarget::Mod, SortOrder::Descend);
            }
            let unary = client.get(req.key.clone(), Some(opts)).await.expect("get");
            let decoded = range(&url, req.clone()).await;
            let (streamed, _) = range_stream(&url, req.clone()).await.expect("stream");
            let label = format!("{req:?}");
            assert_eq!(decoded.kvs.len(), unary.kvs().len(), "{label}");
            for (a, b) in decoded.kvs.iter().zip(unary.kvs()) {
                assert_eq!(
                    (&a.key[..], a.mod_revision, a.lease, &a.value[..]),
                    (b.key(), b.mod_revision(), b.lease(), b.value()),
                    "{label}"
                );
            }
            assert_eq!(
                (decoded.count, decoded.more),
                (unary.count(), unary.more()),
                "{label}"
            );
            assert_eq!(streamed.kvs, decoded.kvs, "{label}");
            assert_eq!(
                (streamed.count, streamed.more),
                (decoded.count, decoded.more),
                "{label}"
            );
            assert_eq!(
                streamed.header.as_ref().map(|h| h.revision),
                decoded.header.as_ref().map(|h| h.revision),
                "{label}"
            );
        }
        let whole = range(&url, all(RangeRequest::default())).await;
        assert_eq!(whole.count, live);
        assert_eq!(whole.kvs.len() as i64, live);
        assert!(whole.kvs.iter().any(|kv| kv.lease == lease));
        let keys_only = range(
            &url,
            all(RangeRequest {
                keys_only: true,
                ..Default::default()
            }),
        )
        .await;
        assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));
        assert_eq!(
            keys_only
                .kvs
                .iter()
                .map(|kv| (kv.mod_revision, kv.lease))
                .collect::<Vec<_>>(),
            whole
                .kvs
                .iter()
                .map(|kv| (kv.mod_revision, kv.lease))
                .collect::<Vec<_>>(),
        );
        let (_, messages) = range_stream(&url, all(RangeRequest::default()))
            .await
            .unwrap();
        assert!(
            messages > 10,
            "a large range streams in chunks ({messages} messages)"
        );

        // What the member refuses, the stream refuses before sending anything.
        let future = range_stream(
            &url,
            all(RangeRequest {
                revision: 1_000_000,
                ..Default::default()
            }),
        )
        .await
        .expect_err("a future revision");
        assert_eq!(future.code(), tonic::Code::OutOfRange);
        assert_eq!(
            future.message(),
            "etcdserver: mvcc: required revision is a future revision"
        );
    });
}

/// Writers rewrite a group of keys in one txn each, tagging every value with the txn's number;
/// a range split into chunks must still see every key of the group from the same txn.
#[test]
fn a_read_in_chunks_sees_one_revision_while_writes_land() {
    let c = Cluster::start_with(1, CHUNKY);
    let url = c.members[0].client_url();
    runtime().block_on(async {
        let mut client = Client::connect([url.clone()], None).await.expect("connect");
        const KEYS: usize = 40;
        let group = |generation: usize| -> Vec<TxnOp> {
            (0..KEYS)
                .map(|i| {
                    let tag = format!("{generation:06}:");
                    TxnOp::put(format!("g{i:03}"), tag.repeat(30), None)
                })
                .collect()
        };
        client
            .txn(Txn::new().and_then(group(0)))
            .await
            .expect("first txn");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writer = client.clone();
        let writing = stop.clone();
        let writes = tokio_real::spawn(async move {
            let mut generation = 1;
            while !writing.load(std::sync::atomic::Ordering::SeqCst) {
                let txn = Txn::new()
                    .when([Compare::version("g000", CompareOp::Greater, 0)])
                    .and_then(group(generation));
                writer.txn(txn).await.expect("txn");
                generation += 1;
            }
            generation
        });
        let mut mixed_reads = 0;
        for _ in 0..60 {
            let req = RangeRequest {
                key: b"g".to_vec(),
                range_end: b"h".to_vec(),
                ..Default::default()
            };
            let (streamed, messages) = range_stream(&url, req.clone()).await.expect("stream");
            assert!(messages > 2, "the group spans several chunks");
            for answer in [range(&url, req).await, streamed] {
                assert_eq!(answer.kvs.len(), KEYS);
                let tags: std::collections::BTreeSet<&[u8]> =
                    answer.kvs.iter().map(|kv| &kv.value[..7]).collect();
                if tags.len() != 1 {
                    mixed_reads += 1;
                }
                let newest = answer.kvs.iter().map(|kv| kv.mod_revision).max().unwrap();
                assert!(newest <= answer.header.unwrap().revision);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let generations = writes.await.unwrap();
        assert!(
            generations > 10,
            "writes landed during the reads ({generations})"
        );
        assert_eq!(mixed_reads, 0, "reads saw keys from different txns");
    });
}

/// A stream whose client reads nothing holds its share of the budget; a large read behind it
/// waits (and says so in `/metrics`) until the stream goes away, then is served whole.
#[test]
fn a_large_read_waits_for_the_budget() {
    let c = Cluster::start_with(
        1,
        &[
            "--max-request-bytes",
            "16384",
            "--max-read-bytes-in-flight",
            "65536",
        ],
    );
    let url = c.members[0].client_url();
    runtime().block_on(async {
        let all = put_more_than_a_stream_window(&url).await;
        assert_eq!(metric(&url, "strata_read_bytes_in_flight_limit"), 65536);
        // Open a stream and read only its first message.
        let mut kv = KvClient::connect(url.clone()).await.expect("connect");
        let mut stalled = kv.range_stream(all.clone()).await.unwrap().into_inner();
        stalled.message().await.unwrap().expect("the header");
        let held = metric(&url, "strata_read_bytes_in_flight");
        assert!(
            held >= 3 * 16384,
            "the stream holds room for its chunks ({held})"
        );

        let reader_url = url.clone();
        let read = tokio_real::spawn(async move { range(&reader_url, all).await });
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric(&url, "strata_reads_waiting_for_memory") == 0 {
            assert!(Instant::now() < deadline, "the large read never queued");
            assert!(
                !read.is_finished(),
                "the large read did not wait for the budget"
            );
            tokio_real::time::sleep(Duration::from_millis(20)).await;
        }
        drop(stalled);
        drop(kv);
        let answer = read.await.unwrap();
        assert_eq!(answer.kvs.len(), 400);
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric(&url, "strata_read_bytes_in_flight") != 0 {
            assert!(Instant::now() < deadline, "the budget was never released");
            tokio_real::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// A stream whose client stops reading is cut after `--grpc-keepalive-timeout` and releases
/// its budget; the client, reading again, gets what was already sent and then etcd's
/// `Unavailable`, never an end that looks complete.
#[test]
fn a_stalled_stream_is_cut_and_releases_its_budget() {
    let c = Cluster::start_with(
        1,
        &[
            "--max-request-bytes",
            "16384",
            "--grpc-keepalive-timeout",
            "2s",
        ],
    );
    let url = c.members[0].client_url();
    runtime().block_on(async {
        let all = put_more_than_a_stream_window(&url).await;
        let mut kv = KvClient::connect(url.clone()).await.expect("connect");
        let mut stalled = kv.range_stream(all.clone()).await.unwrap().into_inner();
        stalled.message().await.unwrap().expect("the header");
        assert!(metric(&url, "strata_read_bytes_in_flight") > 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric(&url, "strata_read_bytes_in_flight") != 0 {
            assert!(
                Instant::now() < deadline,
                "the stalled stream was never cut"
            );
            tokio_real::time::sleep(Duration::from_millis(100)).await;
        }
        let mut received = 0;
        let cut = loop {
            match stalled.message().await {
                Ok(Some(message)) => {
                    let part = message.range_response.expect("a range_response");
                    received += part.into_range_response().expect("decodes").kvs.len();
                }
                Ok(None) => panic!("a cut stream ended as if complete ({received} keys)"),
                Err(status) => break status,
            }
        };
        assert!(received < 400, "the stream was cut before its end");
        assert_eq!(cut.code(), tonic::Code::Unavailable);
        assert_eq!(cut.message(), strata_server::api::range::STALLED_MESSAGE);
        // The member serves on.
        assert_eq!(range(&url, all).await.kvs.len(), 400);
    });
}

/// Rust clients (h2) send GOAWAY `too_many_data_frames` to a server that sends them more than
/// 100 empty DATA frames on a connection, and count small ones: gets that find nothing, and
/// gets of one small key, hundreds of them over one connection, all succeed.
#[test]
fn many_small_answers_share_one_connection() {
    let c = Cluster::start(1);
    let url = c.members[0].client_url();
    runtime().block_on(async {
        let mut client = Client::connect([url.clone()], None).await.expect("connect");
        client.put("present", "v", None).await.unwrap();
        for i in 0..300 {
            let missing = client.get(format!("missing{i}"), None).await.expect("get");
            assert!(missing.kvs().is_empty());
            let present = client.get("present", None).await.expect("get");
            assert_eq!(present.kvs()[0].value(), b"v");
            let prefix = client
                .get("missing", Some(GetOptions::new().with_prefix()))
                .await
                .expect("range");
            assert_eq!(prefix.count(), 0);
        }
    });
}
