//! The Maintenance service: Alarm, Status, Hash, HashKV and MoveLeader through the engine;
//! Defragment and Snapshot on this member's own backend.
//!
//! A snapshot is the backend's content at one applied index as etcd's bbolt database
//! ([`crate::snapshot::save`]), streamed in chunks and followed, as etcd does, by its SHA-256,
//! so `etcdctl snapshot save` writes a file that etcd and `strata snapshot restore` both read.

use std::pin::Pin;

use futures::Stream;
use strata_engine::node::ETCD_VERSION;
use strata_engine::proto::etcdserverpb::*;
use strata_engine::request::Request;
use strata_engine::EtcdError;
use tonic::{Request as Req, Response as Resp, Status};

use super::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use super::pb::etcdserverpb::maintenance_server::Maintenance;
use super::{status, Ctx};
use crate::expect_response;
use crate::snapshot::save;

#[derive(Clone, Debug)]
pub struct MaintenanceService(pub Ctx);

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

/// Snapshot messages buffered ahead of a slow client.
#[cfg(not(madsim))]
const SNAPSHOT_QUEUE: usize = 4;

/// The snapshot's messages as they are written: the file work runs on the blocking pool and
/// hands over [`save::CHUNK`]s through a bounded channel, so memory stays bounded and the
/// async workers never wait on the disk. A failure ends the stream with `INTERNAL`.
#[cfg(not(madsim))]
fn stream_snapshot(
    export: crate::driver::BackendExport,
    message: impl Fn(save::Chunk) -> SnapshotResponse + Send + 'static,
) -> SnapshotStream {
    let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_QUEUE);
    tokio::task::spawn_blocking(move || {
        let mut send = |chunk| tx.blocking_send(Ok(message(chunk))).is_ok();
        if let Err(e) = save::save(export, &mut send) {
            tracing::warn!(error = %e, "snapshot failed");
            let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|msg| (msg, rx))
    }))
}

/// The simulator has no blocking pool, and its stores are small: the file is made at once.
#[cfg(madsim)]
fn stream_snapshot(
    export: crate::driver::BackendExport,
    message: impl Fn(save::Chunk) -> SnapshotResponse + Send + 'static,
) -> SnapshotStream {
    let mut messages = Vec::new();
    if let Err(e) = save::save(export, &mut |chunk| {
        messages.push(Ok(message(chunk)));
        true
    }) {
        messages.push(Err(Status::internal(e.to_string())));
    }
    Box::pin(futures::stream::iter(messages))
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
        let export = self
            .0
            .handle
            .snapshot()
            .await
            .map_err(status)?
            .map_err(|e| Status::internal(e.to_string()))?;
        let header = self.0.header();
        let message = move |chunk: save::Chunk| SnapshotResponse {
            header: Some(header),
            remaining_bytes: chunk.remaining_bytes,
            blob: chunk.blob,
            version: ETCD_VERSION.to_string(),
        };
        Ok(Resp::new(stream_snapshot(export, message)))
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
