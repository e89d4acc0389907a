//! Generates the etcd v3 wire types (messages only; no gRPC services, which belong to the server)
//! and Strata's internal raft-entry payloads from the project's own `.proto` files.

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let files = [
        "mvccpb/kv.proto",
        "authpb/auth.proto",
        "etcdserverpb/rpc.proto",
        "v3lockpb/v3lock.proto",
        "v3electionpb/v3election.proto",
        "strata/internal.proto",
    ];
    let paths: Vec<_> = files.iter().map(|f| root.join(f)).collect();
    for p in &paths {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let mut config = prost_build::Config::new();
    config.btree_map(["."]);
    config
        .compile_protos(&paths, &[root])
        .expect("compile .proto files (is protoc installed? run ci/setup.sh)");
}
