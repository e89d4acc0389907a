//! Generates the gRPC service stubs (server and client) for etcd's v3 API from the project's own
//! `.proto` files. The messages themselves come from `strata-engine` (`extern_path`), so the
//! engine and the services share one set of types.

fn main() {
    // Read at run time, not with `env!`: a build script binary cached in a shared target dir
    // may have been compiled in another clone.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = std::path::Path::new(&manifest_dir).join("../proto");
    let files = [
        "etcdserverpb/rpc.proto",
        "v3lockpb/v3lock.proto",
        "v3electionpb/v3election.proto",
    ];
    let paths: Vec<_> = files.iter().map(|f| root.join(f)).collect();
    let mut builder = tonic_build::configure()
        .build_client(true)
        .build_server(true);
    for package in [
        "mvccpb",
        "authpb",
        "etcdserverpb",
        "v3lockpb",
        "v3electionpb",
    ] {
        builder = builder.extern_path(
            format!(".{package}"),
            format!("::strata_engine::proto::{package}"),
        );
    }
    // Production serves Range and RangeStream from wire bytes built chunk by chunk
    // (`api::range`); the simulator's transport passes messages as values, so there they stay
    // the generated messages.
    if std::env::var_os("CARGO_CFG_MADSIM").is_none() {
        builder = builder
            .extern_path(
                ".etcdserverpb.RangeResponse",
                "crate::api::range::EncodedRangeResponse",
            )
            .extern_path(
                ".etcdserverpb.RangeStreamResponse",
                "crate::api::range::EncodedRangeStreamResponse",
            );
    }
    builder
        .compile_protos(&paths, &[root])
        .expect("compile .proto files (is protoc installed? run ci/setup.sh)");
}
