//! The Kubernetes API source: one kube-rs watcher per kind, every object converted into the
//! same types the directory source produces (through the same parsing and validation), kept in
//! one [`Store`], translated and published after a short debounce. Nothing is published before
//! every kind has been listed once, so node proxies never see pods without their policies.
//!
//! An object that fails validation (no Istio webhook installed, or an older one) is treated as
//! the directory source treats it: its last valid version stays in effect.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, stream};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio::time::Instant;

use super::documents::{Parsed, parse_value};
use super::{Diagnostic, DiagnosticKind};
use crate::objects::{Kind, Object, ObjectKey};
use crate::resources::Resources;
use crate::store::Store;
use crate::translate::{MeshOptions, translate};

/// Why the Kubernetes source stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    #[error("the watch streams ended")]
    Ended,
}

/// How many kinds are watched.
const KINDS: usize = 7;

fn api_version(kind: Kind) -> &'static str {
    match kind {
        Kind::Namespace | Kind::Pod | Kind::Service | Kind::ServiceAccount => "v1",
        Kind::Deployment => "apps/v1",
        Kind::AuthorizationPolicy | Kind::PeerAuthentication => "security.istio.io/v1",
    }
}

/// The API resources watched, one per [`Kind`].
pub fn api_resources() -> Vec<(Kind, ApiResource)> {
    let r = |kind, group: &str, version: &str, name: &str, plural: &str| {
        let api_version = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        let resource = ApiResource {
            group: group.to_owned(),
            version: version.to_owned(),
            api_version,
            kind: name.to_owned(),
            plural: plural.to_owned(),
        };
        (kind, resource)
    };
    vec![
        r(Kind::Namespace, "", "v1", "Namespace", "namespaces"),
        r(Kind::Pod, "", "v1", "Pod", "pods"),
        r(Kind::Service, "", "v1", "Service", "services"),
        r(
            Kind::ServiceAccount,
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
        ),
        r(Kind::Deployment, "apps", "v1", "Deployment", "deployments"),
        r(
            Kind::AuthorizationPolicy,
            "security.istio.io",
            "v1",
            "AuthorizationPolicy",
            "authorizationpolicies",
        ),
        r(
            Kind::PeerAuthentication,
            "security.istio.io",
            "v1",
            "PeerAuthentication",
            "peerauthentications",
        ),
    ]
}

/// The objects the watchers have reported, and the lists in progress.
#[derive(Debug, Default)]
pub struct KubeState {
    store: Store,
    /// Per kind, since its last `Init`: the objects listed, or the keys of rejected ones.
    listing: HashMap<Kind, Vec<Result<Arc<Object>, ObjectKey>>>,
    /// Kinds listed completely at least once.
    listed: HashSet<Kind>,
}

impl KubeState {
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether every kind has been listed once (before that the view is partial).
    pub fn is_complete(&self) -> bool {
        self.listed.len() == KINDS
    }

    /// Applies one watch event of `kind`; returns what could not be applied.
    pub fn apply(&mut self, kind: Kind, event: Event<DynamicObject>) -> Vec<Diagnostic> {
        let mut diagnostics = Vec::new();
        match event {
            Event::Init => {
                self.listing.insert(kind, Vec::new());
            }
            Event::InitApply(obj) => {
                let entry = match self.convert(kind, obj, &mut diagnostics) {
                    Some(Ok(o)) => Ok(Arc::new(o)),
                    Some(Err(key)) => Err(key),
                    None => return diagnostics,
                };
                self.listing.entry(kind).or_default().push(entry);
            }
            Event::InitDone => self.finish_listing(kind),
            Event::Apply(obj) => {
                // A rejected object changes nothing: the version in the store (if any) stays.
                if let Some(Ok(o)) = self.convert(kind, obj, &mut diagnostics) {
                    self.store.insert(Arc::new(o));
                }
            }
            Event::Delete(obj) => {
                let meta = &obj.metadata;
                let namespace = if kind.is_namespaced() {
                    meta.namespace
                        .clone()
                        .unwrap_or_else(|| "default".to_owned())
                } else {
                    String::new()
                };
                let name = meta.name.clone().unwrap_or_default();
                self.store.remove(&ObjectKey::new(kind, namespace, name));
            }
        }
        diagnostics
    }

    /// Replaces every object of `kind` with the completed list; a rejected object keeps the
    /// version the store had.
    fn finish_listing(&mut self, kind: Kind) {
        let listed = self.listing.remove(&kind).unwrap_or_default();
        let mut fresh = Vec::with_capacity(listed.len());
        for entry in listed {
            match entry {
                Ok(o) => fresh.push(o),
                Err(key) => fresh.extend(self.store.get(&key).cloned()),
            }
        }
        let stale: Vec<ObjectKey> = self
            .store
            .iter()
            .filter(|(k, _)| k.kind == kind)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            self.store.remove(&key);
        }
        for o in fresh {
            self.store.insert(o);
        }
        self.listed.insert(kind);
    }

    /// `Some(Ok)` a usable object, `Some(Err(key))` a rejected one, `None` unidentifiable.
    fn convert(
        &self,
        kind: Kind,
        obj: DynamicObject,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> Option<Result<Object, ObjectKey>> {
        let mut value = serde_json::to_value(&obj).ok()?;
        if let Some(map) = value.as_object_mut() {
            // Watch events may omit the type fields: the watcher knows them.
            map.insert("apiVersion".to_owned(), api_version(kind).into());
            map.insert("kind".to_owned(), kind.as_str().into());
        }
        let diag = |object, kind, reason: String| Diagnostic {
            file: PathBuf::from("kubernetes"),
            document: None,
            line: None,
            object,
            kind,
            reason,
        };
        match parse_value(value, None) {
            Parsed::Object(o) => Some(Ok(Arc::unwrap_or_clone(o))),
            Parsed::Rejected { key, reason, .. } => {
                let kept = self.store.get(&key).is_some();
                let kind = DiagnosticKind::Rejected {
                    kept_previous: kept,
                };
                diagnostics.push(diag(Some(key.clone()), kind, reason));
                Some(Err(key))
            }
            Parsed::Broken { reason, .. } => {
                diagnostics.push(diag(None, DiagnosticKind::Broken, reason));
                None
            }
            Parsed::Unknown { type_name } => {
                let reason = format!("{type_name} is not read by zmesh");
                diagnostics.push(diag(None, DiagnosticKind::UnknownKind, reason));
                None
            }
        }
    }
}

/// Watches the API server through `client` and publishes translated resources on `resources`
/// (only when they changed) until the watch streams end. Watch errors are retried with
/// backoff by kube-rs and logged.
pub async fn run(
    client: kube::Client,
    mesh: MeshOptions,
    debounce: Duration,
    resources: watch::Sender<Arc<Resources>>,
) -> Result<(), KubeError> {
    let streams = api_resources().into_iter().map(|(kind, ar)| {
        let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |ev| (kind, ev))
            .boxed()
    });
    let mut events = stream::select_all(streams);
    let mut state = KubeState::default();
    let mut deadline: Option<Instant> = None;
    loop {
        let publish_at = deadline.filter(|_| state.is_complete());
        tokio::select! {
            ev = events.next() => match ev {
                None => return Err(KubeError::Ended),
                Some((kind, Ok(event))) => {
                    for d in state.apply(kind, event) {
                        d.log();
                    }
                    deadline.get_or_insert_with(|| Instant::now() + debounce);
                }
                Some((kind, Err(e))) => tracing::warn!(%kind, error = %e, "kubernetes watch"),
            },
            () = sleep_until(publish_at), if publish_at.is_some() => {
                deadline = None;
                publish(&state, &mesh, &resources);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

fn publish(state: &KubeState, mesh: &MeshOptions, resources: &watch::Sender<Arc<Resources>>) {
    let translation = translate(state.store(), mesh);
    for w in &translation.warnings {
        w.log();
    }
    let new = translation.resources;
    let changed = resources.send_if_modified(|current| {
        if **current == new {
            return false;
        }
        *current = Arc::new(new);
        true
    });
    tracing::info!(
        objects = state.store().len(),
        changed,
        "kubernetes config translated"
    );
}

fn watcher(
    api: Api<DynamicObject>,
    config: watcher::Config,
) -> impl futures_util::Stream<Item = Result<Event<DynamicObject>, watcher::Error>> + Send {
    watcher::watcher(api, config)
}
