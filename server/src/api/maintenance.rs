//! The Maintenance service: Alarm, Status, Hash, HashKV and MoveLeader through the engine;
//! Defragment and Snapshot on this member's own backend.
//!
//! A snapshot is the backend's content at one applied index (Strata's `SnapshotData`
//! encoding), streamed in chunks and followed, as etcd does, by the SHA-256 of everything
//! before it, so `etcdctl snapshot save` writes a file `strata snapshot restore` can verify.

use std::pin::Pin;

use futures::Stream;
use sha2::{Digest, Sha256};
use strata_engine::node::ETCD_VERSION;
use strata_engine::proto::etcdserverpb::*;
use strata_engine::request::Request;
use strata_engine::EtcdError;
use tonic::{Request as Req, Response as Resp, Status};

use super::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use super::pb::etcdserverpb::maintenance_server::Maintenance;
use super::{status, Ctx};
use crate::expect_response;

/// Bytes per snapshot message (etcd sends 32 KiB).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

#[derive(Clone, Debug)]
pub struct MaintenanceService(pub Ctx);

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

impl MaintenanceService {}

/// Magic bytes opening a Strata snapshot file.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"STRATASN";

/// Frames a snapshot body as a file etcd's tools accept: magic, body length, body, zero
/// padding to a multiple of 512 bytes (etcdctl checks `size % 512 == 32`, a bolt file's page
/// alignment plus the digest), then the SHA-256 of everything before it, as etcd appends.
pub fn seal_snapshot(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 560);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(&body);
    out.resize(out.len().div_ceil(512) * 512, 0);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type SnapshotStream = SnapshotStream;

    async fn alarm(&self, req: Req<AlarmRequest>) -> Result<Resp<AlarmResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(self.0.call(Request::Alarm(msg), &md).await?, Alarm)
    }

    async fn status(&self, req: Req<StatusRequest>) -> Result<Resp<StatusResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(self.0.call(Request::Status(msg), &md).await?, Status)
    }

    async fn defragment(
        &self,
        _req: Req<DefragmentRequest>,
    ) -> Result<Resp<DefragmentResponse>, Status> {
        self.0
            .handle
            .defragment()
            .await
            .map_err(status)?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Resp::new(DefragmentResponse {
            header: Some(self.0.header()),
        }))
    }

    async fn hash(&self, req: Req<HashRequest>) -> Result<Resp<HashResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(self.0.call(Request::Hash(msg), &md).await?, Hash)
    }

    async fn hash_kv(&self, req: Req<HashKvRequest>) -> Result<Resp<HashKvResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(self.0.call(Request::HashKv(msg), &md).await?, HashKv)
    }

    async fn snapshot(&self, _req: Req<SnapshotRequest>) -> Result<Resp<SnapshotStream>, Status> {
        let body = self
            .0
            .handle
            .snapshot()
            .await
            .map_err(status)?
            .map_err(|e| Status::internal(e.to_string()))?;
        let blob = seal_snapshot(body);
        let header = self.0.header();
        let total = blob.len();
        let mut sent = 0usize;
        let chunks: Vec<Result<SnapshotResponse, Status>> = blob
            .chunks(SNAPSHOT_CHUNK)
            .map(|c| {
                sent += c.len();
                Ok(SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: (total - sent) as u64,
                    blob: c.to_vec(),
                    version: ETCD_VERSION.to_string(),
                })
            })
            .collect();
        Ok(Resp::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn move_leader(
        &self,
        req: Req<MoveLeaderRequest>,
    ) -> Result<Resp<MoveLeaderResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        match self.0.call_raw(Request::MoveLeader(msg), &md).await {
            Ok(resp) => expect_response!(resp, MoveLeader),
            Err(EtcdError::NotLeader) => {
                let ch = self.0.leader_channel(&md).await?;
                MaintenanceClient::new(ch)
                    .move_leader(self.0.forwarded(msg, &md).await?)
                    .await
            }
            Err(e) => Err(status(e)),
        }
    }

    async fn downgrade(
        &self,
        _req: Req<DowngradeRequest>,
    ) -> Result<Resp<DowngradeResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: downgrade is not supported by strata (single-version cluster)",
        ))
    }
}
