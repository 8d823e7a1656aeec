use super::*;
use crate::model::{Clause, Rule, Scope};

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa)
}

fn conn<'a>(src: &str, identity: Option<&'a Identity>, dst: &str, port: u16) -> Connection<'a> {
    Connection {
        src_ip: src.parse().unwrap(),
        src_identity: identity,
        dst_ip: dst.parse().unwrap(),
        dst_port: port,
    }
}

fn policy(name: &str, action: Action, rules: Vec<Rule>) -> Authorization {
    Authorization {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        scope: Scope::Namespace,
        action,
        dry_run: false,
        rules,
    }
}

/// One rule, one clause, one match.
fn single(m: Match) -> Vec<Rule> {
    vec![Rule {
        clauses: vec![Clause { matches: vec![m] }],
    }]
}

fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.to_owned())
}

fn sa(ns: &str, sa: &str) -> ServiceAccountMatch {
    ServiceAccountMatch {
        namespace: ns.to_owned(),
        service_account: sa.to_owned(),
    }
}

/// Whether a single-match ALLOW policy matches `c`.
fn hit(m: Match, c: &Connection<'_>) -> bool {
    policy("p", Action::Allow, single(m)).matches(c)
}

const DENIED_NO_ALLOW: Decision = Decision::Deny {
    policy: String::new(),
};

#[test]
fn order_no_policies_allows() {
    let c = conn("10.0.0.1", None, "10.0.0.2", 80);
    assert_eq!(decide([], &c), Decision::Allow);
}

#[test]
fn order_matching_deny_wins_over_matching_allow() {
    let c = conn("10.0.0.1", None, "10.0.0.2", 80);
    let all = Match {
        destination_ports: vec![80],
        ..Match::default()
    };
    let allow = policy("allow", Action::Allow, single(all.clone()));
    let deny = policy("deny", Action::Deny, single(all));
    let want = Decision::Deny {
        policy: "default/deny".to_owned(),
    };
    assert_eq!(decide([&allow, &deny], &c), want);
    assert_eq!(decide([&deny, &allow], &c), want);
}

#[test]
fn order_non_matching_deny_and_no_allow_allows() {
    let c = conn("10.0.0.1", None, "10.0.0.2", 80);
    let deny = policy(
        "deny",
        Action::Deny,
        single(Match {
            destination_ports: vec![9999],
            ..Match::default()
        }),
    );
    assert_eq!(decide([&deny], &c), Decision::Allow);
}

#[test]
fn order_allow_present_but_none_matches_denies() {
    let c = conn("10.0.0.1", None, "10.0.0.2", 80);
    let m = |port| Match {
        destination_ports: vec![port],
        ..Match::default()
    };
    let a1 = policy("a1", Action::Allow, single(m(81)));
    let a2 = policy("a2", Action::Allow, single(m(82)));
    assert_eq!(decide([&a1, &a2], &c), DENIED_NO_ALLOW);
    let a3 = policy("a3", Action::Allow, single(m(80)));
    assert_eq!(decide([&a1, &a3, &a2], &c), Decision::Allow);
}

#[test]
fn dry_run_policies_never_decide() {
    let c = conn("10.0.0.1", None, "10.0.0.2", 80);
    let all = Match {
        destination_ports: vec![80],
        ..Match::default()
    };
    let mut deny = policy("deny", Action::Deny, single(all));
    deny.dry_run = true;
    assert_eq!(decide([&deny], &c), Decision::Allow);
    // A dry-run ALLOW does not count as an ALLOW policy, so nothing turns into default-deny.
    let mut allow = policy("allow", Action::Allow, single(Match::default()));
    allow.dry_run = true;
    assert_eq!(decide([&allow], &c), Decision::Allow);
}

#[test]
fn policy_with_no_rules_never_matches() {
    let c = conn("10.0.0.1", None, "10.0.0.2", 80);
    let allow = policy("allow", Action::Allow, vec![]);
    assert!(!allow.matches(&c));
    assert_eq!(decide([&allow], &c), DENIED_NO_ALLOW);
    let deny = policy("deny", Action::Deny, vec![]);
    assert_eq!(decide([&deny], &c), Decision::Allow);
}

#[test]
fn empty_clause_list_matches() {
    let c = conn("10.0.0.1", None, "10.0.0.2", 80);
    let p = policy("p", Action::Allow, vec![Rule { clauses: vec![] }]);
    assert!(p.matches(&c));
    // A clause with no matches also counts as a match.
    let p = policy(
        "p",
        Action::Allow,
        vec![Rule {
            clauses: vec![Clause { matches: vec![] }],
        }],
    );
    assert!(p.matches(&c));
}

#[test]
fn empty_match_is_skipped() {
    let c = conn("10.0.0.1", None, "10.0.0.2", 80);
    assert!(!hit(Match::default(), &c));
    let p = policy(
        "p",
        Action::Allow,
        vec![Rule {
            clauses: vec![Clause {
                matches: vec![
                    Match::default(),
                    Match {
                        destination_ports: vec![80],
                        ..Match::default()
                    },
                ],
            }],
        }],
    );
    assert!(p.matches(&c));
}

#[test]
fn rules_any_clauses_all_matches_any() {
    let c = conn("10.0.0.1", None, "10.0.0.2", 80);
    let port = |p| Match {
        destination_ports: vec![p],
        ..Match::default()
    };
    let clause = |ms: Vec<Match>| Clause { matches: ms };
    // All clauses must match: 80 and 81 cannot both hold.
    let both = Rule {
        clauses: vec![clause(vec![port(80)]), clause(vec![port(81)])],
    };
    assert!(!policy("p", Action::Allow, vec![both.clone()]).matches(&c));
    // Any match in a clause is enough.
    let either = Rule {
        clauses: vec![clause(vec![port(81), port(80)])],
    };
    assert!(policy("p", Action::Allow, vec![either.clone()]).matches(&c));
    // Any rule is enough.
    assert!(policy("p", Action::Allow, vec![both, either]).matches(&c));
}

#[test]
fn fields_within_a_match_are_anded() {
    let c = conn("10.0.0.1", None, "10.0.0.2", 80);
    let m = Match {
        destination_ports: vec![80],
        source_ips: nets(&["192.168.0.0/16"]),
        ..Match::default()
    };
    assert!(!hit(m, &c));
}

#[test]
fn source_and_destination_cidrs_v4_and_v6() {
    let v4 = conn("10.1.2.3", None, "10.9.0.1", 80);
    let v6 = conn("fd00::1", None, "fd00:9::1", 80);
    let src = |p: &[&str]| Match {
        source_ips: nets(p),
        ..Match::default()
    };
    let not_src = |p: &[&str]| Match {
        not_source_ips: nets(p),
        ..Match::default()
    };
    let dst = |p: &[&str]| Match {
        destination_ips: nets(p),
        ..Match::default()
    };
    let not_dst = |p: &[&str]| Match {
        not_destination_ips: nets(p),
        ..Match::default()
    };
    assert!(hit(src(&["10.0.0.0/8"]), &v4));
    assert!(!hit(src(&["10.0.0.0/8"]), &v6));
    assert!(hit(src(&["192.168.0.0/16", "fd00::/64"]), &v6));
    assert!(hit(src(&["10.1.2.3/32"]), &v4));
    assert!(!hit(not_src(&["10.0.0.0/8"]), &v4));
    assert!(hit(not_src(&["10.0.0.0/8"]), &v6));
    assert!(hit(dst(&["10.9.0.0/16"]), &v4));
    assert!(!hit(dst(&["10.8.0.0/16"]), &v4));
    assert!(hit(dst(&["fd00:9::/32"]), &v6));
    assert!(!hit(not_dst(&["fd00:9::/32"]), &v6));
    assert!(hit(not_dst(&["fd00:8::/32"]), &v6));
}

#[test]
fn destination_ports() {
    let c = conn("10.0.0.1", None, "10.0.0.2", 8080);
    let ports = |p: Vec<u16>| Match {
        destination_ports: p,
        ..Match::default()
    };
    let not_ports = |p: Vec<u16>| Match {
        not_destination_ports: p,
        ..Match::default()
    };
    assert!(hit(ports(vec![80, 8080]), &c));
    assert!(!hit(ports(vec![80]), &c));
    assert!(!hit(not_ports(vec![8080]), &c));
    assert!(hit(not_ports(vec![9999]), &c));
}

#[test]
fn principals_exact_prefix_suffix_presence() {
    let peer = id("ns1", "client");
    let c = conn("10.0.0.1", Some(&peer), "10.0.0.2", 80);
    let pr = |s: StringMatch| Match {
        principals: vec![s],
        ..Match::default()
    };
    let not_pr = |s: StringMatch| Match {
        not_principals: vec![s],
        ..Match::default()
    };
    assert!(hit(pr(exact("cluster.local/ns/ns1/sa/client")), &c));
    // Principals are compared without the scheme.
    assert!(!hit(
        pr(exact("spiffe://cluster.local/ns/ns1/sa/client")),
        &c
    ));
    assert!(!hit(pr(exact("cluster.local/ns/ns1/sa/other")), &c));
    assert!(hit(
        pr(StringMatch::Prefix("cluster.local/ns/ns1/".into())),
        &c
    ));
    assert!(!hit(
        pr(StringMatch::Prefix("cluster.local/ns/ns2/".into())),
        &c
    ));
    assert!(hit(pr(StringMatch::Suffix("/sa/client".into())), &c));
    assert!(!hit(pr(StringMatch::Suffix("/sa/server".into())), &c));
    assert!(hit(pr(StringMatch::Presence), &c));
    assert!(!hit(not_pr(StringMatch::Presence), &c));
    assert!(hit(not_pr(exact("cluster.local/ns/ns1/sa/other")), &c));
}

#[test]
fn namespaces() {
    let peer = id("ns1", "client");
    let c = conn("10.0.0.1", Some(&peer), "10.0.0.2", 80);
    let ns = |s: StringMatch| Match {
        namespaces: vec![s],
        ..Match::default()
    };
    let not_ns = |s: StringMatch| Match {
        not_namespaces: vec![s],
        ..Match::default()
    };
    assert!(hit(ns(exact("ns1")), &c));
    assert!(!hit(ns(exact("ns2")), &c));
    assert!(hit(ns(StringMatch::Prefix("ns".into())), &c));
    assert!(hit(ns(StringMatch::Presence), &c));
    assert!(!hit(not_ns(exact("ns1")), &c));
    assert!(hit(not_ns(exact("ns2")), &c));
}

#[test]
fn service_accounts() {
    let peer = Identity::new("other.domain", "ns1", "client");
    let c = conn("10.0.0.1", Some(&peer), "10.0.0.2", 80);
    let sas = |s| Match {
        service_accounts: vec![s],
        ..Match::default()
    };
    let not_sas = |s| Match {
        not_service_accounts: vec![s],
        ..Match::default()
    };
    // The trust domain is not compared.
    assert!(hit(sas(sa("ns1", "client")), &c));
    assert!(!hit(sas(sa("ns1", "server")), &c));
    assert!(!hit(sas(sa("ns2", "client")), &c));
    assert!(!hit(not_sas(sa("ns1", "client")), &c));
    assert!(hit(not_sas(sa("ns1", "server")), &c));
}

#[test]
fn plaintext_peer_has_empty_principal_and_namespace() {
    let c = conn("10.0.0.1", None, "10.0.0.2", 80);
    let m = |f: fn(&mut Match)| {
        let mut m = Match::default();
        f(&mut m);
        m
    };
    assert!(!hit(m(|m| m.principals = vec![StringMatch::Presence]), &c));
    assert!(hit(
        m(|m| m.not_principals = vec![StringMatch::Presence]),
        &c
    ));
    assert!(!hit(m(|m| m.namespaces = vec![StringMatch::Presence]), &c));
    assert!(hit(
        m(|m| m.not_namespaces = vec![StringMatch::Presence]),
        &c
    ));
    assert!(hit(m(|m| m.principals = vec![exact("")]), &c));
    assert!(hit(m(|m| m.namespaces = vec![exact("")]), &c));
    assert!(!hit(m(|m| m.namespaces = vec![exact("default")]), &c));
    assert!(!hit(
        m(|m| m.service_accounts = vec![sa("", "default")]),
        &c
    ));
    assert!(hit(
        m(|m| m.not_service_accounts = vec![sa("ns1", "a")]),
        &c
    ));
}

#[test]
fn strict_mtls_deny_from_istiod() {
    // PeerAuthentication STRICT with port 9090 PERMISSIVE, as istiod converts it.
    let deny = Authorization {
        name: "converted_peer_authentication_x".into(),
        scope: Scope::WorkloadSelector,
        ..policy(
            "",
            Action::Deny,
            single(Match {
                not_principals: vec![StringMatch::Presence],
                not_destination_ports: vec![9090],
                ..Match::default()
            }),
        )
    };
    let peer = id("ns1", "client");
    let plain = conn("10.0.0.1", None, "10.0.0.2", 80);
    let plain_9090 = conn("10.0.0.1", None, "10.0.0.2", 9090);
    let mtls = conn("10.0.0.1", Some(&peer), "10.0.0.2", 80);
    assert!(!decide([&deny], &plain).is_allow());
    assert!(decide([&deny], &plain_9090).is_allow());
    assert!(decide([&deny], &mtls).is_allow());
}
