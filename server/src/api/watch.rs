//! The Watch service: one bidirectional stream per client call, many watchers per stream. The
//! engine's watch hub owns every guarantee (ordering, replay from old revisions, progress,
//! compaction cancels); this layer opens an engine stream, feeds it the client's create,
//! cancel and progress requests, and relays responses in the order the engine emits them.
//! When either side goes away the engine stream is closed and its watchers dropped.
//!
//! Fragments (etcd's `sendFragments`, in its send loop too): a response for a watcher created
//! with `fragment` is split here, as it is written, when it reaches `--max-request-bytes`.
//! Splitting after the bounded queue keeps one queue slot per whole response, so a client that
//! stalls is refused whole responses, never half a revision.

use std::pin::Pin;

use futures::Stream;
use strata_engine::proto::etcdserverpb::{watch_request, WatchRequest, WatchResponse};
use strata_engine::watch::fragments;
use strata_engine::{Input, WatchId};
use tokio_stream::wrappers::ReceiverStream;
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
        let credential = self.0.credential(req.metadata());
        let mut inbound = req.into_inner();
        let (stream, events) = handle.watch_open().map_err(status)?;
        // A request the server cannot read (too large, malformed) ends the stream with gRPC's
        // status, as etcd's recvLoop does.
        let (unreadable_tx, unreadable_rx) = tokio::sync::oneshot::channel::<Status>();
        tokio::spawn(async move {
            loop {
                let msg = match inbound.next().await {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "watch stream ended by the client");
                        let _ = unreadable_tx.send(e);
                        break;
                    }
                    None => break,
                };
                let input = match msg.request_union {
                    Some(watch_request::RequestUnion::CreateRequest(request)) => {
                        Input::WatchCreate {
                            stream,
                            request,
                            credential: credential.clone(),
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
        let max_bytes = self.0.handle.shared.config.limits.max_request_bytes;
        let out = futures::StreamExt::flat_map(ReceiverStream::new(events), move |out| {
            let responses = if out.fragment {
                fragments(out.response, max_bytes)
            } else {
                vec![out.response]
            };
            futures::stream::iter(responses.into_iter().map(Ok))
        });
        // The reader sends its error before closing the stream, so once the responses end, the
        // error (if any) is there to end the stream with.
        let mut unreadable_rx = unreadable_rx;
        let unreadable = futures::stream::iter(std::iter::from_fn(move || {
            unreadable_rx.try_recv().ok().map(Err)
        }));
        Ok(Response::new(Box::pin(futures::StreamExt::chain(
            out, unreadable,
        ))))
    }
}
