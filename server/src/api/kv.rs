//! The KV service: Range, Put, DeleteRange, Txn, Compact. Validation, limits and semantics are
//! the engine's; this layer only carries requests and maps errors.

use strata_engine::proto::etcdserverpb::*;
use strata_engine::request::Request;
use tonic::{Request as Req, Response as Resp, Status};

use super::pb::etcdserverpb::kv_server::Kv;
use super::Ctx;
use crate::expect_response;

#[derive(Clone, Debug)]
pub struct KvService(pub Ctx);

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Req<RangeRequest>) -> Result<Resp<RangeResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(self.0.call(Request::Range(msg), &md).await?, Range)
    }

    async fn put(&self, req: Req<PutRequest>) -> Result<Resp<PutResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(self.0.call(Request::Put(msg), &md).await?, Put)
    }

    async fn delete_range(
        &self,
        req: Req<DeleteRangeRequest>,
    ) -> Result<Resp<DeleteRangeResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(
            self.0.call(Request::DeleteRange(msg), &md).await?,
            DeleteRange
        )
    }

    async fn txn(&self, req: Req<TxnRequest>) -> Result<Resp<TxnResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(self.0.call(Request::Txn(msg), &md).await?, Txn)
    }

    async fn compact(
        &self,
        req: Req<CompactionRequest>,
    ) -> Result<Resp<CompactionResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        expect_response!(self.0.call(Request::Compact(msg), &md).await?, Compact)
    }
}
