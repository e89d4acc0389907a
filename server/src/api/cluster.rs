//! The Cluster service: member add (voter or learner), remove, update, list, promote. The
//! engine validates and proposes each change as a raft conf change; promote is decided by the
//! leader (it alone knows whether the learner caught up), so a follower forwards it.

use strata_engine::proto::etcdserverpb::*;
use strata_engine::request::Request;
use strata_engine::EtcdError;
use tonic::{Request as Req, Response as Resp, Status};

use super::pb::etcdserverpb::cluster_client::ClusterClient;
use super::pb::etcdserverpb::cluster_server::Cluster;
use super::{status, Ctx};
use crate::expect_response;

#[derive(Clone, Debug)]
pub struct ClusterService(pub Ctx);

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Req<MemberAddRequest>,
    ) -> Result<Resp<MemberAddResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(self.0.call(Request::MemberAdd(msg), &md).await?, MemberAdd)
    }

    async fn member_remove(
        &self,
        req: Req<MemberRemoveRequest>,
    ) -> Result<Resp<MemberRemoveResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(
            self.0.call(Request::MemberRemove(msg), &md).await?,
            MemberRemove
        )
    }

    async fn member_update(
        &self,
        req: Req<MemberUpdateRequest>,
    ) -> Result<Resp<MemberUpdateResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(
            self.0.call(Request::MemberUpdate(msg), &md).await?,
            MemberUpdate
        )
    }

    async fn member_list(
        &self,
        req: Req<MemberListRequest>,
    ) -> Result<Resp<MemberListResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(
            self.0.call(Request::MemberList(msg), &md).await?,
            MemberList
        )
    }

    async fn member_promote(
        &self,
        req: Req<MemberPromoteRequest>,
    ) -> Result<Resp<MemberPromoteResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        match self.0.call_raw(Request::MemberPromote(msg), &md).await {
            Ok(resp) => expect_response!(resp, MemberPromote),
            Err(EtcdError::NotLeader) => {
                let ch = self.0.leader_channel(&md).await?;
                ClusterClient::new(ch)
                    .member_promote(self.0.forwarded(msg, &md).await?)
                    .await
            }
            Err(e) => Err(status(e)),
        }
    }
}
