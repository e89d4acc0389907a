//! Oversized requests on a real process, through the `etcd-client` crate: etcd's two limits
//! give etcd's two answers, nothing is stored, and the member keeps serving. A request over
//! `--max-request-bytes` is refused by etcd's server ("etcdserver: request is too large",
//! InvalidArgument); one over that plus gRPC's 512 KiB allowance is refused by gRPC itself
//! (grpc-go's "received message larger than max", ResourceExhausted), on a unary call and in a
//! stream alike.

mod common;

use common::{runtime, Cluster};
use etcd_client::{Client, Error, GetOptions, WatchOptions};

/// The gRPC code's name and the message of a refused call.
fn status(e: Error) -> (String, String) {
    match e {
        Error::GRpcStatus(s) => (format!("{:?}", s.code()), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[test]
fn oversized_requests_get_etcds_codes_and_texts() {
    const MAX_REQUEST_BYTES: usize = 1024 * 1024;
    let c = Cluster::start_with(1, &["--max-request-bytes", &MAX_REQUEST_BYTES.to_string()]);
    runtime().block_on(async {
        let mut client = Client::connect(c.client_urls(), None)
            .await
            .expect("connect");

        // Over --max-request-bytes, under gRPC's receive limit: the server refuses it.
        let big = "v".repeat(MAX_REQUEST_BYTES + 100 * 1024);
        let (code, text) = status(client.put("big", big, None).await.unwrap_err());
        assert_eq!(
            (code.as_str(), text.as_str()),
            ("InvalidArgument", "etcdserver: request is too large")
        );

        // Over gRPC's receive limit (max + 512 KiB): gRPC refuses it, in grpc-go's words.
        let huge = "v".repeat(MAX_REQUEST_BYTES + 1024 * 1024);
        let (code, text) = status(client.put("huge", huge, None).await.unwrap_err());
        assert_eq!(code, "ResourceExhausted", "{text}");
        let limit = MAX_REQUEST_BYTES + 512 * 1024;
        assert!(
            text.starts_with("grpc: received message larger than max (")
                && text.ends_with(&format!(" vs. {limit})")),
            "{text}"
        );

        // The same inside a stream: a watch created on a key too big to receive.
        let huge_key = "k".repeat(MAX_REQUEST_BYTES + 1024 * 1024);
        let refused = match client.watch(huge_key, Some(WatchOptions::new())).await {
            Err(e) => status(e),
            Ok(mut stream) => status(stream.message().await.unwrap_err()),
        };
        assert_eq!(refused.0, "ResourceExhausted", "{}", refused.1);
        assert!(
            refused
                .1
                .starts_with("grpc: received message larger than max ("),
            "{}",
            refused.1
        );

        // Nothing was stored, and the member still serves.
        client
            .put("small", "ok", None)
            .await
            .expect("put after refusals");
        let resp = client
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .expect("get");
        let keys: Vec<&str> = resp.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
        assert_eq!(keys, vec!["small"]);
    });
}
