//! The tonic side of delta ADS: authenticate the stream, then run one task per stream that
//! feeds client requests and new snapshots into its [`Session`] and sends what comes out.
//!
//! Each task reads the latest snapshot from a watch channel: while a slow client is still
//! receiving one push, later changes coalesce into one diff, and other streams are unaffected.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use zmesh_proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryService;
use zmesh_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

use super::Stats;
use super::session::{RequestKind, Session};
use super::snapshot::Snapshot;
use crate::auth::{self, Authenticator, Caller};

/// Responses queued per stream beyond the one being written; small, because a queue only
/// delays coalescing.
const STREAM_QUEUE: usize = 2;

/// The ADS gRPC service.
#[derive(Clone)]
pub struct AdsService {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    auth: Arc<dyn Authenticator>,
    stats: Arc<Stats>,
}

impl AdsService {
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        auth: Arc<dyn Authenticator>,
        stats: Arc<Stats>,
    ) -> AdsService {
        AdsService {
            snapshots,
            auth,
            stats,
        }
    }
}

type ResponseStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let caller = match auth::authenticate(&*self.auth, request.metadata()).await {
            Ok(c) => c,
            Err(status) => {
                tracing::info!(remote = ?request.remote_addr(), reason = status.message(),
                    "ads: refused stream");
                return Err(status);
            }
        };
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let stream = StreamTask {
            caller,
            node_id: String::new(),
            session: Session::new(),
            snapshots: self.snapshots.clone(),
            tx,
            stats: self.stats.clone(),
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct StreamTask {
    caller: Caller,
    /// The xDS node id the client announced (`ztunnel~ip~pod.ns~ns.svc.cluster.local`).
    node_id: String,
    session: Session,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    stats: Arc<Stats>,
}

impl StreamTask {
    async fn run(mut self, mut requests: Streaming<DeltaDiscoveryRequest>) {
        self.stats.stream_opened();
        tracing::info!(node = %self.caller.node, "ads: stream opened");
        let reason = loop {
            tokio::select! {
                msg = requests.message() => match msg {
                    Ok(Some(req)) => {
                        if !self.on_request(&req).await {
                            break "client went away";
                        }
                    }
                    Ok(None) => break "client closed the stream",
                    Err(status) => {
                        tracing::debug!(node = %self.caller.node, %status, "ads: receive failed");
                        break "receive failed";
                    }
                },
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        break "server shutting down";
                    }
                    if !self.on_snapshot().await {
                        break "client went away";
                    }
                }
                () = self.tx.closed() => break "client went away",
            }
        };
        self.stats.stream_closed();
        tracing::info!(node = %self.caller.node, node_id = %self.node_id, reason, "ads: stream closed");
    }

    /// Handles one request; false when the client is gone.
    async fn on_request(&mut self, req: &DeltaDiscoveryRequest) -> bool {
        if let (true, Some(node)) = (self.node_id.is_empty(), &req.node) {
            self.note_node(node);
        }
        // `borrow`, not `borrow_and_update`: a new snapshot must still wake the select loop so
        // the other subscribed types get it too.
        let snapshot = self.snapshots.borrow().clone();
        let outcome = self.session.handle_request(req, &snapshot);
        let (node, node_id, type_url) = (&self.caller.node, &self.node_id, &req.type_url);
        match &outcome.kind {
            RequestKind::Subscribe { initial_versions } => {
                tracing::info!(%node, %node_id, %type_url, initial_versions, "ads: subscribed");
            }
            RequestKind::Ack { nonce } => {
                self.stats.ack();
                tracing::debug!(%node, %type_url, %nonce, "ads: ack");
            }
            RequestKind::Nack { nonce, message } => {
                self.stats.nack();
                tracing::warn!(%node, %node_id, %type_url, %nonce, %message,
                    "ads: client rejected resources (NACK); not resending until they change");
            }
            RequestKind::Resubscribe => {
                tracing::debug!(%node, %type_url, "ads: subscription change ignored (wildcard only)");
            }
            RequestKind::UnknownType => {
                tracing::warn!(%node, %node_id, %type_url, "ads: request for a type this server does not serve");
            }
        }
        match outcome.response {
            Some(resp) => self.send(resp).await,
            None => true,
        }
    }

    async fn on_snapshot(&mut self) -> bool {
        let snapshot = self.snapshots.borrow_and_update().clone();
        for resp in self.session.handle_snapshot(&snapshot) {
            if !self.send(resp).await {
                return false;
            }
        }
        true
    }

    async fn send(&self, resp: DeltaDiscoveryResponse) -> bool {
        let bytes = prost::Message::encoded_len(&resp);
        let (resources, removals) = (resp.resources.len(), resp.removed_resources.len());
        tracing::debug!(node = %self.caller.node, type_url = %resp.type_url, nonce = %resp.nonce,
            resources, removals, bytes, "ads: push");
        if self.tx.send(Ok(resp)).await.is_err() {
            return false;
        }
        self.stats.response(resources, removals, bytes);
        true
    }

    /// Records the announced node id and warns when its `NODE_NAME` metadata disagrees with
    /// the node the token belongs to (the token wins: it is what was authenticated).
    fn note_node(&mut self, node: &zmesh_proto::discovery::Node) {
        self.node_id = node.id.clone();
        let claimed = node
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("NODE_NAME"))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.as_str()),
                _ => None,
            });
        if let Some(claimed) = claimed
            && claimed != self.caller.node
        {
            tracing::warn!(node = %self.caller.node, claimed, node_id = %self.node_id,
                "ads: NODE_NAME metadata differs from the node of the token");
        }
    }
}
