//! The Lease service. Grant, revoke and list go through the engine on any member; keep-alive
//! and time-to-live are answered by the leader (it alone knows the remaining TTL), so a
//! follower forwards them, as etcd's `LeaseServer` does. etcd's quirks are kept: a keep-alive
//! for an unknown lease answers `TTL: 0`, and `TimeToLive` of an unknown lease answers
//! `TTL: -1`, both without an error.
//!
//! A follower forwards a client's keep-alive stream over one stream of its own to the leader,
//! opened at the first keep-alive it cannot answer and kept while the client's stream lasts.
//! (One stream per keep-alive, reset after its answer, runs into h2's limit on locally reset
//! streams under load and fails the connection to the leader with every call on it.)

use std::pin::Pin;

use futures::Stream;
use strata_engine::proto::etcdserverpb::*;
use strata_engine::request::{Request, Response};
use strata_engine::EtcdError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataMap;
use tonic::{Request as Req, Response as Resp, Status, Streaming};

use super::pb::etcdserverpb::lease_client::LeaseClient;
use super::pb::etcdserverpb::lease_server::Lease;
use super::{status, Ctx};
use crate::expect_response;

#[derive(Clone, Debug)]
pub struct LeaseService(pub Ctx);

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

/// A client's keep-alives on their way to the leader.
struct Forward {
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    answers: Streaming<LeaseKeepAliveResponse>,
}

impl LeaseService {
    async fn keep_alive_once(
        &self,
        req: LeaseKeepAliveRequest,
        md: &MetadataMap,
        forward: &mut Option<Forward>,
    ) -> Result<LeaseKeepAliveResponse, Status> {
        let id = req.id;
        match self.0.call_raw(Request::LeaseKeepAlive(req), md).await {
            Ok(Response::LeaseKeepAlive(r)) => Ok(r),
            Ok(other) => Err(Status::internal(format!(
                "engine answered keep-alive with {other:?}"
            ))),
            Err(EtcdError::LeaseNotFound) => Ok(LeaseKeepAliveResponse {
                header: Some(self.0.header()),
                id,
                ttl: 0,
            }),
            Err(EtcdError::NotLeader) => {
                let f = match forward {
                    Some(f) => f,
                    None => {
                        let ch = self.0.leader_channel(md).await?;
                        let (requests, rx) = mpsc::channel(16);
                        let answers = LeaseClient::new(ch)
                            .lease_keep_alive(self.0.forwarded(ReceiverStream::new(rx), md).await?)
                            .await?
                            .into_inner();
                        forward.insert(Forward { requests, answers })
                    }
                };
                let answer = match f.requests.send(req).await {
                    Ok(()) => f.answers.next().await,
                    Err(_) => None,
                };
                match answer {
                    Some(Ok(r)) => Ok(r),
                    Some(Err(e)) => {
                        *forward = None;
                        Err(e)
                    }
                    None => {
                        *forward = None;
                        Err(status(EtcdError::LeaderChanged))
                    }
                }
            }
            Err(e) => Err(status(e)),
        }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_grant(
        &self,
        req: Req<LeaseGrantRequest>,
    ) -> Result<Resp<LeaseGrantResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(
            self.0.call(Request::LeaseGrant(msg), &md).await?,
            LeaseGrant
        )
    }

    async fn lease_revoke(
        &self,
        req: Req<LeaseRevokeRequest>,
    ) -> Result<Resp<LeaseRevokeResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(
            self.0.call(Request::LeaseRevoke(msg), &md).await?,
            LeaseRevoke
        )
    }

    async fn lease_keep_alive(
        &self,
        req: Req<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Resp<KeepAliveStream>, Status> {
        if self.0.is_learner() {
            return Err(status(EtcdError::NotSupportedForLearner));
        }
        let (md, _, mut inbound) = req.into_parts();
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            let mut forward = None;
            while let Some(msg) = inbound.next().await {
                let answer = match msg {
                    Ok(req) => this.keep_alive_once(req, &md, &mut forward).await,
                    // A request the server cannot read (too large, malformed) ends the stream
                    // with gRPC's status, as etcd's does.
                    Err(e) => Err(e),
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Resp::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Req<LeaseTimeToLiveRequest>,
    ) -> Result<Resp<LeaseTimeToLiveResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        let id = msg.id;
        match self.0.call_raw(Request::LeaseTimeToLive(msg), &md).await {
            Ok(resp) => expect_response!(resp, LeaseTimeToLive),
            Err(EtcdError::LeaseNotFound) => Ok(Resp::new(LeaseTimeToLiveResponse {
                header: Some(self.0.header()),
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: vec![],
            })),
            Err(EtcdError::NotLeader) => {
                let ch = self.0.leader_channel(&md).await?;
                LeaseClient::new(ch)
                    .lease_time_to_live(self.0.forwarded(msg, &md).await?)
                    .await
            }
            Err(e) => Err(status(e)),
        }
    }

    async fn lease_leases(
        &self,
        req: Req<LeaseLeasesRequest>,
    ) -> Result<Resp<LeaseLeasesResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(
            self.0.call(Request::LeaseLeases(msg), &md).await?,
            LeaseLeases
        )
    }
}
