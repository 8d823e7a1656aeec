//! The object store: every object a source has applied, keyed by (kind, namespace, name).
//! Sources write it (the directory source rebuilds it per load, a Kubernetes API source would
//! update it per event); translation only reads it. Objects are shared (`Arc`), so building a
//! new store from an old one copies pointers, not objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::objects::{
    AuthorizationPolicy, Deployment, Kind, Namespace, Object, ObjectKey, PeerAuthentication, Pod,
    Service,
};

/// Applied objects, ordered by kind, then namespace, then name: the objects of one kind in one
/// namespace are a contiguous range, which is how translation finds a namespace's services.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Store {
    objects: BTreeMap<ObjectKey, Arc<Object>>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces an object; returns the version it replaced.
    pub fn insert(&mut self, object: Arc<Object>) -> Option<Arc<Object>> {
        self.objects.insert(object.key(), object)
    }

    pub fn remove(&mut self, key: &ObjectKey) -> Option<Arc<Object>> {
        self.objects.remove(key)
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Arc<Object>> {
        self.objects.get(key)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &Arc<Object>)> {
        self.objects.iter()
    }

    /// Every object of `kind`.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        let start = ObjectKey::new(kind, "", "");
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, o)| o.as_ref())
    }

    /// Every object of `kind` in `namespace`.
    pub fn in_namespace<'a>(
        &'a self,
        kind: Kind,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Object> {
        let start = ObjectKey::new(kind, namespace, "");
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.kind == kind && k.namespace == namespace)
            .map(|(_, o)| o.as_ref())
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        match self
            .get(&ObjectKey::new(Kind::Namespace, "", name))?
            .as_ref()
        {
            Object::Namespace(n) => Some(n),
            _ => None,
        }
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.of_kind(Kind::Namespace).filter_map(|o| match o {
            Object::Namespace(n) => Some(n),
            _ => None,
        })
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.of_kind(Kind::Pod).filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.of_kind(Kind::Service).filter_map(|o| match o {
            Object::Service(s) => Some(s),
            _ => None,
        })
    }

    pub fn deployments_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Deployment> {
        self.in_namespace(Kind::Deployment, namespace)
            .filter_map(|o| match o {
                Object::Deployment(d) => Some(d),
                _ => None,
            })
    }

    pub fn authorization_policies(&self) -> impl Iterator<Item = &AuthorizationPolicy> {
        self.of_kind(Kind::AuthorizationPolicy)
            .filter_map(|o| match o {
                Object::AuthorizationPolicy(p) => Some(p),
                _ => None,
            })
    }

    pub fn peer_authentications(&self) -> impl Iterator<Item = &PeerAuthentication> {
        self.of_kind(Kind::PeerAuthentication)
            .filter_map(|o| match o {
                Object::PeerAuthentication(p) => Some(p),
                _ => None,
            })
    }
}

impl FromIterator<Arc<Object>> for Store {
    fn from_iter<T: IntoIterator<Item = Arc<Object>>>(iter: T) -> Self {
        let mut s = Store::new();
        for o in iter {
            s.insert(o);
        }
        s
    }
}
