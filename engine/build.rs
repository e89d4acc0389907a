//! Generates the etcd v3 wire types (messages only; no gRPC services, which belong to the server)
//! and Strata's internal raft-entry payloads from the project's own `.proto` files. With the
//! `json` feature it also generates serde impls for the etcd packages (pbjson), from the
//! descriptor set prost-build writes, so both derive from one parse of the `.proto` files.

fn main() {
    // Read at run time, not with `env!`: a build script binary cached in a shared target dir
    // may have been compiled in another clone.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = std::path::Path::new(&manifest_dir).join("../proto");
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
    #[cfg(feature = "json")]
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"))
        .join("etcd-descriptors.bin");
    #[cfg(feature = "json")]
    config.file_descriptor_set_path(&descriptors);
    config
        .compile_protos(&paths, &[root])
        .expect("compile .proto files (is protoc installed? run ci/setup.sh)");
    #[cfg(feature = "json")]
    json(&descriptors);
}

/// etcd's gateway marshals with `JSONPb{OrigName: true}`: proto field names out, either name
/// in, unknown fields ignored, enums by name, default values omitted.
#[cfg(feature = "json")]
fn json(descriptors: &std::path::Path) {
    let set = std::fs::read(descriptors).expect("read the descriptor set prost-build wrote");
    pbjson_build::Builder::new()
        .register_descriptors(&set)
        .expect("parse the descriptor set")
        .btree_map(["."])
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[
            ".mvccpb",
            ".authpb",
            ".etcdserverpb",
            ".v3lockpb",
            ".v3electionpb",
        ])
        .expect("generate serde impls for the etcd messages");
}
