//! The wire types generated from `proto/`: etcd's v3 API (messages only) and Strata's internal
//! entry and snapshot formats. Module paths mirror the protobuf packages.

#![allow(clippy::all, missing_docs, rustdoc::all)]

pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
}

pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
}

pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
}

pub mod strata {
    pub mod internal {
        include!(concat!(env!("OUT_DIR"), "/strata.internal.rs"));
    }
}
