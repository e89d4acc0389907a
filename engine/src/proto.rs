//! The wire types generated from `proto/`: etcd's v3 API (messages only) and Strata's internal
//! entry and snapshot formats. Module paths mirror the protobuf packages. The `json` feature adds
//! serde impls for the etcd packages in protobuf's JSON mapping (see `build.rs`).

#![allow(clippy::all, missing_docs, rustdoc::all)]

pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

pub mod strata {
    pub mod internal {
        include!(concat!(env!("OUT_DIR"), "/strata.internal.rs"));
    }
}
