//! The delta ADS state of one stream, without IO: what the client holds, per type URL, and
//! what to send it when it asks or when the resources change.
//!
//! Istio's node proxy subscribes to each type with a wildcard on its first request of that
//! type, sending `initial_resource_versions` when it reconnects. The first response carries
//! every resource whose version the client lacks (and removals for names it holds that no longer
//! exist); later responses carry only changes. Versions are recorded as sent, not as
//! acknowledged: a NACKed resource is not sent again until it changes, so a client that
//! rejects something never gets into a resend loop.

use std::collections::{BTreeMap, HashMap};

use zmesh_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};

use super::snapshot::{Snapshot, TYPE_URLS, TypeSnapshot};

/// What a client request was, for logs and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// First request of this type on the stream: a (wildcard) subscription.
    Subscribe { initial_versions: usize },
    /// The client accepted the response with this nonce.
    Ack { nonce: String },
    /// The client rejected (part of) the response with this nonce.
    Nack { nonce: String, message: String },
    /// A request with no nonce on a type already subscribed, e.g. a change of named
    /// subscriptions; this server only serves wildcard subscriptions, so nothing changes.
    Resubscribe,
    /// A type URL this server does not serve.
    UnknownType,
}

/// The outcome of one request.
#[derive(Debug, PartialEq)]
pub struct RequestOutcome {
    pub kind: RequestKind,
    pub response: Option<DeltaDiscoveryResponse>,
}

#[derive(Debug, Default)]
struct Subscription {
    /// Versions the client holds (or was sent), by resource name.
    known: HashMap<String, String>,
    /// The snapshot generation `known` equals, once a response was computed.
    generation: Option<u64>,
}

/// One stream's delta ADS state.
#[derive(Debug, Default)]
pub struct Session {
    subscriptions: BTreeMap<&'static str, Subscription>,
    nonces: u64,
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    /// Handles a client request against the current resources.
    pub fn handle_request(
        &mut self,
        request: &DeltaDiscoveryRequest,
        snapshot: &Snapshot,
    ) -> RequestOutcome {
        let (Some(type_url), Some(resources)) = (
            TYPE_URLS.iter().find(|t| **t == request.type_url),
            snapshot.of_type(&request.type_url),
        ) else {
            return outcome(RequestKind::UnknownType, None);
        };
        if !self.subscriptions.contains_key(type_url) {
            // A first request, whatever its nonce: after a reconnect the client may well send an
            // ACK-looking request first, and it must still get its full state.
            let known = request.initial_resource_versions.clone();
            let kind = RequestKind::Subscribe {
                initial_versions: known.len(),
            };
            let mut sub = Subscription {
                known,
                generation: None,
            };
            let response = self.respond(type_url, &mut sub, resources, snapshot, true);
            self.subscriptions.insert(type_url, sub);
            return outcome(kind, response);
        }
        let nonce = request.response_nonce.clone();
        let kind = match (&request.error_detail, nonce.is_empty()) {
            (_, true) => RequestKind::Resubscribe,
            (Some(status), false) => RequestKind::Nack {
                nonce,
                message: status.message.clone(),
            },
            (None, false) => RequestKind::Ack { nonce },
        };
        outcome(kind, None)
    }

    /// The responses that bring every subscription up to `snapshot`; empty when nothing
    /// changed for this client.
    pub fn handle_snapshot(&mut self, snapshot: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        let mut out = Vec::new();
        let mut subscriptions = std::mem::take(&mut self.subscriptions);
        for type_url in TYPE_URLS {
            if let (Some(sub), Some(resources)) =
                (subscriptions.get_mut(type_url), snapshot.of_type(type_url))
            {
                out.extend(self.respond(type_url, sub, resources, snapshot, false));
            }
        }
        self.subscriptions = subscriptions;
        out
    }

    /// Whether the stream has subscribed to `type_url`.
    pub fn is_subscribed(&self, type_url: &str) -> bool {
        self.subscriptions.contains_key(type_url)
    }

    fn respond(
        &mut self,
        type_url: &str,
        sub: &mut Subscription,
        resources: &TypeSnapshot,
        snapshot: &Snapshot,
        always: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        if !always && sub.generation == Some(snapshot.generation) {
            return None;
        }
        let (changed, removed) = match (sub.generation, snapshot.base) {
            (Some(held), Some(base)) if held == base && !always => {
                diff_names(&sub.known, resources, &resources.touched)
            }
            _ => diff(&sub.known, resources),
        };
        sub.generation = Some(snapshot.generation);
        if changed.is_empty() && removed.is_empty() && !always {
            return None;
        }
        for r in &changed {
            sub.known.insert(r.name.clone(), r.version.clone());
        }
        for name in &removed {
            sub.known.remove(name);
        }
        self.nonces += 1;
        Some(DeltaDiscoveryResponse {
            system_version_info: snapshot.generation.to_string(),
            resources: changed,
            type_url: type_url.to_string(),
            nonce: self.nonces.to_string(),
            removed_resources: removed,
        })
    }
}

fn outcome(kind: RequestKind, response: Option<DeltaDiscoveryResponse>) -> RequestOutcome {
    RequestOutcome { kind, response }
}

/// What a client holding `known` lacks to reach `resources`: the resources it does not hold at
/// their current version, and the names it holds that are gone.
pub fn diff(
    known: &HashMap<String, String>,
    resources: &TypeSnapshot,
) -> (Vec<Resource>, Vec<String>) {
    let changed = resources
        .entries
        .iter()
        .filter(|(name, e)| known.get(*name).map(String::as_str) != Some(&*e.version))
        .map(|(name, e)| resource(name, e))
        .collect();
    let mut removed: Vec<String> = known
        .keys()
        .filter(|name| !resources.entries.contains_key(*name))
        .cloned()
        .collect();
    removed.sort();
    (changed, removed)
}

/// [`diff`] restricted to `names`, for a client known to hold everything else already.
pub fn diff_names<'a>(
    known: &HashMap<String, String>,
    resources: &TypeSnapshot,
    names: impl IntoIterator<Item = &'a String>,
) -> (Vec<Resource>, Vec<String>) {
    let (mut changed, mut removed) = (Vec::new(), Vec::new());
    for name in names {
        match resources.entries.get(name) {
            Some(e) if known.get(name).map(String::as_str) != Some(&*e.version) => {
                changed.push(resource(name, e));
            }
            Some(_) => {}
            None if known.contains_key(name) => removed.push(name.clone()),
            None => {}
        }
    }
    (changed, removed)
}

fn resource(name: &str, e: &super::snapshot::Entry) -> Resource {
    Resource {
        version: e.version.to_string(),
        resource: Some((*e.body).clone()),
        name: name.to_string(),
        aliases: Vec::new(),
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
