//! Which pods are enrolled: the same rule as the controller's translation (and Istio's), so a
//! pod the node proxy captures is exactly a pod the controller serves as an HBONE workload.

use zmesh_control::objects::{Kind, Object, ObjectKey, Pod};
use zmesh_control::store::Store;

/// The label users set on a namespace (or a pod) to enroll it; `none` on a pod opts it out.
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";

/// Whether the pod `namespace/name` is enrolled. When the Pod object is not in the store
/// (yet), its namespace decides; host-network pods share the node's netns and never are.
pub fn enrolled(store: &Store, namespace: &str, name: &str) -> bool {
    let pod = pod(store, namespace, name);
    if pod.is_some_and(|p| p.spec.host_network) {
        return false;
    }
    match pod.and_then(|p| p.metadata.labels.get(DATAPLANE_MODE)) {
        Some(m) if m == "none" => false,
        Some(m) if m == "ambient" => true,
        _ => namespace_ambient(store, namespace),
    }
}

/// The pod's service account (`default` when the Pod object is not known).
pub fn service_account(store: &Store, namespace: &str, name: &str) -> String {
    pod(store, namespace, name)
        .map(|p| p.service_account().to_owned())
        .unwrap_or_else(|| "default".to_owned())
}

fn namespace_ambient(store: &Store, namespace: &str) -> bool {
    store
        .namespace(namespace)
        .and_then(|n| n.metadata.labels.get(DATAPLANE_MODE))
        .is_some_and(|m| m == "ambient")
}

fn pod<'a>(store: &'a Store, namespace: &str, name: &str) -> Option<&'a Pod> {
    match store
        .get(&ObjectKey::new(Kind::Pod, namespace, name))?
        .as_ref()
    {
        Object::Pod(p) => Some(p),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zmesh_control::source::load_str;

    fn store(yaml: &str) -> Store {
        load_str(std::path::Path::new("test.yaml"), yaml).store
    }

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels:\n    istio.io/dataplane-mode: ambient\n";

    #[test]
    fn namespace_label_enrolls_pods_not_yet_known() {
        assert!(enrolled(&store(NS), "demo", "web-1"));
        assert!(!enrolled(&store(NS), "other", "web-1"));
        assert!(!enrolled(&Store::new(), "demo", "web-1"));
    }

    #[test]
    fn pod_label_opts_out_or_in() {
        let pods = "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: demo\n  labels:\n    istio.io/dataplane-mode: none\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: b\n  namespace: plain\n  labels:\n    istio.io/dataplane-mode: ambient\nspec:\n  serviceAccountName: bee\n";
        let s = store(&format!("{NS}{pods}"));
        assert!(!enrolled(&s, "demo", "a"));
        assert!(enrolled(&s, "plain", "b"));
        assert_eq!(service_account(&s, "plain", "b"), "bee");
        assert_eq!(service_account(&s, "demo", "zzz"), "default");
    }

    #[test]
    fn host_network_pods_are_never_enrolled() {
        let pod = "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: h\n  namespace: demo\nspec:\n  hostNetwork: true\n";
        assert!(!enrolled(&store(&format!("{NS}{pod}")), "demo", "h"));
    }
}
