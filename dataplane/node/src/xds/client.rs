//! The delta ADS stream: connect, subscribe (with the versions held), apply and answer each
//! response, publish the resulting snapshot; on any end of the stream, back off and reconnect.
//! The published snapshot stays as it is while disconnected.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use zmesh_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use zmesh_proto::discovery::{DeltaDiscoveryRequest, Node};
use zmesh_state::Snapshot;

use super::store::{Store, TYPES};
use super::{XdsMetrics, XdsStatus};
use crate::backoff::{Backoff, jitter};
use crate::grpc::{GrpcError, Target};

/// Istio's limit on one xDS message.
const MAX_MESSAGE: usize = 200 * 1024 * 1024;
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(15);

/// A new snapshot for the control loop.
#[derive(Debug)]
pub struct MeshUpdate {
    pub snapshot: Arc<Snapshot>,
    /// Every subscribed type has had its first response applied.
    pub synced: bool,
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("the server closed the stream")]
    Closed,
    #[error("the control loop is gone")]
    Stopped,
}

/// Everything the client needs; runs until the receiver of updates is dropped.
pub struct XdsClient {
    pub target: Target,
    pub node: Node,
    pub updates: mpsc::Sender<MeshUpdate>,
    pub status: Arc<Mutex<XdsStatus>>,
    pub metrics: Arc<XdsMetrics>,
}

impl XdsClient {
    pub async fn run(self) {
        let mut store = Store::default();
        let mut seen = BTreeSet::new();
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
        loop {
            let err = self.session(&mut store, &mut seen, &mut backoff).await;
            self.metrics.terminations.fetch_add(1, Ordering::Relaxed);
            self.update_status(|s| {
                s.connected = false;
                s.last_error = Some(err.to_string());
            });
            if matches!(err, StreamError::Stopped) {
                return;
            }
            let delay = backoff.next_delay(jitter());
            tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "xDS stream ended; serving the last config");
            tokio::time::sleep(delay).await;
        }
    }

    fn update_status(&self, f: impl FnOnce(&mut XdsStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    async fn session(
        &self,
        store: &mut Store,
        seen: &mut BTreeSet<String>,
        backoff: &mut Backoff,
    ) -> StreamError {
        match self.stream(store, seen, backoff).await {
            Ok(()) => StreamError::Closed,
            Err(e) => e,
        }
    }

    async fn stream(
        &self,
        store: &mut Store,
        seen: &mut BTreeSet<String>,
        backoff: &mut Backoff,
    ) -> Result<(), StreamError> {
        let channel = self.target.connect().await?;
        let mut client =
            AggregatedDiscoveryServiceClient::with_interceptor(channel, self.target.headers()?)
                .max_decoding_message_size(MAX_MESSAGE);
        let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
        for req in store.initial_requests(&self.node) {
            tracing::debug!(type_url = %req.type_url, known = req.initial_resource_versions.len(), "subscribing");
            let _ = tx.send(req);
        }
        let requests =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let mut responses = client
            .delta_aggregated_resources(requests)
            .await?
            .into_inner();
        self.update_status(|s| {
            s.connected = true;
            s.connects += 1;
            s.last_error = None;
        });
        tracing::info!(address = %self.target.url(), "xDS stream open");
        while let Some(resp) = responses.message().await? {
            backoff.reset();
            self.metrics.message(&resp.type_url, resp.encoded_len());
            let applied = store.apply(&resp);
            let first = seen.insert(resp.type_url.clone());
            tracing::debug!(type_url = %resp.type_url, resources = resp.resources.len(), removed = resp.removed_resources.len(), nonce = %resp.nonce, rejected = applied.rejected.len(), "xDS response");
            if applied.changed || first {
                let (snapshot, _) = store.snapshot();
                let synced = TYPES.iter().all(|t| seen.contains(*t));
                let update = MeshUpdate {
                    snapshot: Arc::new(snapshot),
                    synced,
                };
                self.updates
                    .send(update)
                    .await
                    .map_err(|_| StreamError::Stopped)?;
            }
            self.update_status(|s| {
                let t = resp.type_url.clone();
                s.resources.insert(t.clone(), store.len(&t));
                match &applied.reply.error_detail {
                    None => {
                        s.last_acked_nonce.insert(t, resp.nonce.clone());
                    }
                    Some(d) => {
                        s.last_nacked
                            .insert(t, (resp.nonce.clone(), d.message.clone()));
                    }
                }
            });
            if tx.send(applied.reply).is_err() {
                return Err(StreamError::Closed);
            }
        }
        Ok(())
    }
}
