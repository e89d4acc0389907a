//! The KV service: Range, RangeStream, Put, DeleteRange, Txn, Compact. Validation, limits and
//! semantics are the engine's; this layer only carries requests and maps errors (ranges are
//! read in chunks by `range`).

use strata_engine::proto::etcdserverpb::*;
use strata_engine::request::Request;
use tonic::{Request as Req, Response as Resp, Status};

use super::pb::etcdserverpb::kv_server::Kv;
#[cfg(not(madsim))]
use super::range::EncodedRangeResponse;
use super::{range, Ctx};
use crate::expect_response;

#[derive(Clone, Debug)]
pub struct KvService(pub Ctx);

#[tonic::async_trait]
impl Kv for KvService {
    #[cfg(not(madsim))]
    async fn range(&self, req: Req<RangeRequest>) -> Result<Resp<EncodedRangeResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        let answer = range::range(&self.0, &md, msg).await?;
        // The client listener sends the key-values as read and holds the budget until they
        // are sent (`crate::range_body`).
        let spliced =
            crate::range_body::SplicedRange::new(answer.grant, answer.response.wire_kvs());
        let mut resp = Resp::new(answer.response);
        resp.extensions_mut().insert(spliced);
        Ok(resp)
    }

    #[cfg(madsim)]
    async fn range(&self, req: Req<RangeRequest>) -> Result<Resp<RangeResponse>, Status> {
        let (md, _, msg) = req.into_parts();
        let answer = range::range(&self.0, &md, msg).await?;
        let resp = answer
            .response
            .into_range_response()
            .map_err(|e| Status::internal(format!("a range response does not decode: {e}")))?;
        Ok(Resp::new(resp))
    }

    type RangeStreamStream = range::RangeStream;

    async fn range_stream(
        &self,
        req: Req<RangeRequest>,
    ) -> Result<Resp<Self::RangeStreamStream>, Status> {
        let (md, _, msg) = req.into_parts();
        Ok(Resp::new(range::range_stream(&self.0, &md, msg).await?))
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
