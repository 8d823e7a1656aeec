//! What Istio's validating webhook rejects in AuthorizationPolicy and PeerAuthentication.
//! A rejected object is never applied: the source keeps the last valid version instead.

use std::net::IpAddr;

use super::{
    Action, AuthorizationPolicy, Condition, Object, Operation, PeerAuthentication, Rule, Source,
};

/// `when` keys Istio accepts; `request.headers[…]`, `request.auth.claims[…]` and
/// `experimental.envoy.filters.…` are matched as prefixes.
const WHEN_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];
const WHEN_KEY_PREFIXES: &[&str] = &[
    "request.headers[",
    "request.auth.claims[",
    "experimental.envoy.filters.",
];

/// Checks an object the way the API server's admission would; `Err` carries the reason.
pub fn validate(object: &Object) -> Result<(), String> {
    if object.meta().name.is_empty() {
        return Err("metadata.name is required".to_owned());
    }
    match object {
        Object::AuthorizationPolicy(p) => authorization_policy(p),
        Object::PeerAuthentication(p) => peer_authentication(p),
        _ => Ok(()),
    }
}

fn authorization_policy(p: &AuthorizationPolicy) -> Result<(), String> {
    let spec = &p.spec;
    let targeted = spec.target_ref.is_some() || !spec.target_refs.is_empty();
    if spec.selector.is_some() && targeted {
        return Err("only one of selector or targetRefs can be set".to_owned());
    }
    match (spec.action, spec.provider.is_some()) {
        (Action::Custom, false) => return Err("CUSTOM action requires a provider".to_owned()),
        (a, true) if a != Action::Custom => {
            return Err("provider can only be set with the CUSTOM action".to_owned());
        }
        _ => {}
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        check_rule(rule).map_err(|e| format!("rules[{i}]: {e}"))?;
    }
    Ok(())
}

fn check_rule(rule: &Rule) -> Result<(), String> {
    if let Some(from) = &rule.from {
        if from.is_empty() {
            return Err("`from` must not be empty".to_owned());
        }
        for (i, f) in from.iter().enumerate() {
            let source = f
                .source
                .as_ref()
                .ok_or_else(|| format!("from[{i}]: `source` must not be nil"))?;
            check_source(source).map_err(|e| format!("from[{i}].source: {e}"))?;
        }
    }
    if let Some(to) = &rule.to {
        if to.is_empty() {
            return Err("`to` must not be empty".to_owned());
        }
        for (i, t) in to.iter().enumerate() {
            let op = t
                .operation
                .as_ref()
                .ok_or_else(|| format!("to[{i}]: `operation` must not be nil"))?;
            check_operation(op).map_err(|e| format!("to[{i}].operation: {e}"))?;
        }
    }
    for (i, c) in rule.when.iter().flatten().enumerate() {
        check_condition(c).map_err(|e| format!("when[{i}]: {e}"))?;
    }
    Ok(())
}

fn check_source(s: &Source) -> Result<(), String> {
    let lists: [(&str, &[String]); 12] = [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        return Err("must not be empty".to_owned());
    }
    for (field, values) in lists {
        for v in values {
            let checked = match field {
                "principals" | "notPrincipals" => principal(v),
                "serviceAccounts" | "notServiceAccounts" => service_account(v),
                f if f.ends_with("pBlocks") => cidr(v).map(drop),
                _ => wildcard(v),
            };
            checked.map_err(|e| format!("{field}: {e}"))?;
        }
    }
    Ok(())
}

fn check_operation(op: &Operation) -> Result<(), String> {
    let lists: [(&str, &[String]); 8] = [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("ports", &op.ports),
        ("notPorts", &op.not_ports),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
        ("paths", &op.paths),
        ("notPaths", &op.not_paths),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        return Err("must not be empty".to_owned());
    }
    for (field, values) in lists {
        for v in values {
            let checked = match field {
                "ports" | "notPorts" => port(v).map(drop),
                _ => wildcard(v),
            };
            checked.map_err(|e| format!("{field}: {e}"))?;
        }
    }
    Ok(())
}

fn check_condition(c: &Condition) -> Result<(), String> {
    let known = WHEN_KEYS.contains(&c.key.as_str())
        || WHEN_KEY_PREFIXES.iter().any(|p| c.key.starts_with(p));
    if !known {
        return Err(format!("unknown attribute {:?}", c.key));
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(format!("{}: values or notValues must be set", c.key));
    }
    for v in c.values.iter().chain(&c.not_values) {
        let checked = match c.key.as_str() {
            "source.ip" | "remote.ip" | "destination.ip" => cidr(v).map(drop),
            "destination.port" => port(v).map(drop),
            "source.principal" => principal(v),
            _ => nonempty(v),
        };
        checked.map_err(|e| format!("{}: {e}", c.key))?;
    }
    Ok(())
}

fn peer_authentication(p: &PeerAuthentication) -> Result<(), String> {
    let spec = &p.spec;
    let has_labels = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !spec.port_level_mtls.is_empty() && !has_labels {
        return Err("portLevelMtls requires a workload selector".to_owned());
    }
    for port in spec.port_level_mtls.keys() {
        if !(1..=65535).contains(port) {
            return Err(format!("portLevelMtls: port {port} out of range 1-65535"));
        }
    }
    Ok(())
}

fn nonempty(v: &str) -> Result<(), String> {
    if v.is_empty() {
        Err("empty value is not allowed".to_owned())
    } else {
        Ok(())
    }
}

/// `*` alone, or one `*` as the first or the last character.
fn wildcard(v: &str) -> Result<(), String> {
    nonempty(v)?;
    if v == "*" {
        return Ok(());
    }
    let stars = v.matches('*').count();
    let at_edge = v.starts_with('*') || v.ends_with('*');
    if stars > 1 || (stars == 1 && !at_edge) {
        return Err(format!(
            "{v:?}: wildcard '*' is only allowed alone, as a prefix or as a suffix"
        ));
    }
    Ok(())
}

/// Istio principals are `<trust domain>/ns/<namespace>/sa/<service account>` without the
/// `spiffe://` scheme (the peer's SPIFFE id is matched with the scheme removed).
fn principal(v: &str) -> Result<(), String> {
    if v.starts_with("spiffe://") {
        return Err(format!(
            "{v:?}: write principals without the spiffe:// prefix (td/ns/<ns>/sa/<sa>)"
        ));
    }
    wildcard(v)
}

/// `<sa>` (the policy's namespace) or `<ns>/<sa>`, no wildcards.
fn service_account(v: &str) -> Result<(), String> {
    nonempty(v)?;
    let parts: Vec<&str> = v.split('/').collect();
    let ok = parts.len() <= 2 && parts.iter().all(|p| !p.is_empty() && !p.contains('*'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{v:?}: expected <service account> or <namespace>/<service account>"
        ))
    }
}

/// An IP address or a CIDR.
pub(crate) fn cidr(v: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("{v:?} is not an IP address or CIDR");
    let (ip, len) = match v.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (v, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(bad)?,
        None => max,
    };
    Ok((ip, len))
}

/// A port number 1–65535.
pub(crate) fn port(v: &str) -> Result<u16, String> {
    match v.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => u16::try_from(p).map_err(|e| e.to_string()),
        Ok(p) => Err(format!("port {p} out of range 1-65535")),
        Err(_) => Err(format!("{v:?} is not a port number")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard("*").is_ok());
        assert!(wildcard("*.example.com").is_ok());
        assert!(wildcard("cluster.local/ns/a/*").is_ok());
        assert!(wildcard("cluster.local/*/sa/x").is_err());
        assert!(wildcard("*a*").is_err());
        assert!(wildcard("").is_err());
    }

    #[test]
    fn principals_reject_spiffe_uris() {
        assert!(principal("cluster.local/ns/a/sa/b").is_ok());
        let e = principal("spiffe://cluster.local/ns/a/sa/b").unwrap_err();
        assert!(e.contains("spiffe://"), "{e}");
    }

    #[test]
    fn cidrs_and_ports() {
        assert_eq!(cidr("10.0.0.1").unwrap().1, 32);
        assert_eq!(cidr("10.0.0.0/8").unwrap().1, 8);
        assert_eq!(cidr("fd00::/8").unwrap().1, 8);
        assert!(cidr("10.0.0.0/33").is_err());
        assert!(cidr("10.0.0/8").is_err());
        assert_eq!(port("8080"), Ok(8080));
        assert!(port("0").is_err());
        assert!(port("65536").is_err());
        assert!(port("http").is_err());
    }
}
