//! The Watch service: one bidirectional stream per client call, many watchers per stream. The
//! engine's watch hub owns every guarantee (ordering, replay from old revisions, progress,
//! compaction cancels); this layer opens an engine stream, feeds it the client's create,
//! cancel and progress requests, and relays responses in the order the engine emits them.
//! When either side goes away the engine stream is closed and its watchers dropped.

use std::pin::Pin;

use futures::Stream;
use strata_engine::proto::etcdserverpb::{watch_request, WatchRequest, WatchResponse};
use strata_engine::{Input, WatchId};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::pb::etcdserverpb::watch_server::Watch;
use super::{status, Ctx};

#[derive(Clone, Debug)]
pub struct WatchService(pub Ctx);

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        if self.0.is_learner() {
            return Err(status(strata_engine::EtcdError::NotSupportedForLearner));
        }
        let handle = self.0.handle.clone();
        let token = super::token(req.metadata());
        let mut inbound = req.into_inner();
        let (stream, events) = handle.watch_open().map_err(status)?;
        tokio::spawn(async move {
            loop {
                let msg = match inbound.next().await {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "watch stream ended by the client");
                        break;
                    }
                    None => break,
                };
                let input = match msg.request_union {
                    Some(watch_request::RequestUnion::CreateRequest(request)) => {
                        Input::WatchCreate {
                            stream,
                            request,
                            token: token.clone(),
                        }
                    }
                    Some(watch_request::RequestUnion::CancelRequest(c)) => Input::WatchCancel {
                        stream,
                        watch_id: WatchId(c.watch_id),
                    },
                    Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                        Input::WatchProgress { stream }
                    }
                    None => continue,
                };
                if handle.watch_input(input).is_err() {
                    return;
                }
            }
            let _ = handle.watch_input(Input::WatchStreamClosed { stream });
        });
        let out = UnboundedReceiverStream::new(events).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }
}
