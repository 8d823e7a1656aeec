//! L4 authorization: does a policy match a connection, and what do the applicable policies
//! decide. Follows ztunnel's evaluation (src/rbac.rs, `assert_rbac`) so that a policy means the
//! same on both proxies.

use std::net::IpAddr;

use crate::identity::Identity;
use crate::model::{Action, Authorization, Match, ServiceAccountMatch, StringMatch};

/// What authorization sees of an inbound connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection<'a> {
    pub src_ip: IpAddr,
    /// The peer's identity from its client certificate; `None` for plaintext.
    pub src_identity: Option<&'a Identity>,
    pub dst_ip: IpAddr,
    /// The target port, after service → target port translation.
    pub dst_port: u16,
}

/// The verdict on a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// `policy` is the key of the matching DENY policy, or `""` when no ALLOW policy matched.
    Deny {
        policy: String,
    },
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// The peer attributes that string matches look at, computed once per connection.
struct Peer<'a> {
    /// `td/ns/x/sa/y`, or `""` for a plaintext peer.
    principal: String,
    /// The identity's namespace, or `""` for a plaintext peer.
    namespace: &'a str,
}

impl<'a> Peer<'a> {
    fn of(conn: &Connection<'a>) -> Peer<'a> {
        Peer {
            principal: conn
                .src_identity
                .map(Identity::principal)
                .unwrap_or_default(),
            namespace: conn.src_identity.map_or("", |id| id.namespace.as_str()),
        }
    }
}

/// Applies the order of evaluation to the policies that apply to a destination: a matching
/// DENY denies; else no ALLOW policy allows; else a matching ALLOW allows; else deny. Dry-run
/// policies never decide.
pub fn decide<'p>(
    policies: impl IntoIterator<Item = &'p Authorization>,
    conn: &Connection<'_>,
) -> Decision {
    let peer = Peer::of(conn);
    let mut any_allow = false;
    let mut allowed = false;
    for policy in policies.into_iter().filter(|p| !p.dry_run) {
        match policy.action {
            Action::Deny if policy.matches_peer(conn, &peer) => {
                return Decision::Deny {
                    policy: policy.key(),
                };
            }
            Action::Deny => {}
            Action::Allow => {
                any_allow = true;
                // Once allowed, later ALLOWs need no evaluation; DENYs still do.
                allowed = allowed || policy.matches_peer(conn, &peer);
            }
        }
    }
    if !any_allow || allowed {
        Decision::Allow
    } else {
        Decision::Deny {
            policy: String::new(),
        }
    }
}

impl Authorization {
    /// Whether any rule of this policy matches the connection (a policy with no rules never
    /// matches). Ignores `action` and `dry_run`.
    pub fn matches(&self, conn: &Connection<'_>) -> bool {
        self.matches_peer(conn, &Peer::of(conn))
    }

    fn matches_peer(&self, conn: &Connection<'_>, peer: &Peer<'_>) -> bool {
        self.rules.iter().any(|rule| {
            rule.clauses.iter().all(|clause| {
                clause.matches.is_empty()
                    || clause
                        .matches
                        .iter()
                        .any(|m| !m.is_empty() && m.matches(conn, peer))
            })
        })
    }
}

impl Match {
    /// A match with no populated field is skipped: it matches nothing.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.source_ips.is_empty()
            && self.not_source_ips.is_empty()
            && self.destination_ips.is_empty()
            && self.not_destination_ips.is_empty()
            && self.destination_ports.is_empty()
            && self.not_destination_ports.is_empty()
            && self.service_accounts.is_empty()
            && self.not_service_accounts.is_empty()
    }

    fn matches(&self, conn: &Connection<'_>, peer: &Peer<'_>) -> bool {
        let identity = conn.src_identity;
        check(&self.destination_ips, &self.not_destination_ips, |n| {
            n.contains(&conn.dst_ip)
        }) && check(&self.source_ips, &self.not_source_ips, |n| {
            n.contains(&conn.src_ip)
        }) && check(&self.destination_ports, &self.not_destination_ports, |p| {
            *p == conn.dst_port
        }) && check(&self.service_accounts, &self.not_service_accounts, |s| {
            s.matches(identity)
        }) && check(&self.principals, &self.not_principals, |s| {
            s.matches(&peer.principal)
        }) && check(&self.namespaces, &self.not_namespaces, |s| {
            s.matches(peer.namespace)
        })
    }
}

/// An empty list passes; a positive list needs any entry to match, a negative list none.
fn check<T>(positive: &[T], negative: &[T], pred: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&pred)) && !negative.iter().any(&pred)
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

impl ServiceAccountMatch {
    /// Compares namespace and service account, not the trust domain; a plaintext peer never
    /// matches.
    pub fn matches(&self, identity: Option<&Identity>) -> bool {
        identity.is_some_and(|id| {
            id.namespace == self.namespace && id.service_account == self.service_account
        })
    }
}

#[cfg(test)]
mod tests;
