use std::path::Path;

use zmesh_control::source::load_str;

use super::*;

const TIMEOUT: Duration = Duration::from_secs(10);

fn ns(name: &str, ambient: bool) -> String {
    let label = if ambient {
        "  labels:\n    istio.io/dataplane-mode: ambient\n"
    } else {
        ""
    };
    format!("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n{label}")
}

fn pod_opted_out(ns: &str, name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    istio.io/dataplane-mode: none\nspec:\n  serviceAccountName: sa-{name}\n"
    )
}

fn store(yaml: &str) -> Arc<Store> {
    Arc::new(load_str(Path::new("t.yaml"), yaml).store)
}

/// The core with a simulated clock; netns handles are numbers.
struct Harness {
    core: Core<u32>,
    now: Instant,
    next_req: ReqId,
}

impl Harness {
    fn new(yaml: &str) -> Self {
        Harness {
            core: Core::new(store(yaml)),
            now: Instant::now(),
            next_req: 0,
        }
    }

    fn add(&mut self, ns: &str, name: &str, netns: u32) -> ReqId {
        self.next_req += 1;
        let pod = NewPod {
            uid: format!("uid-{name}"),
            namespace: ns.into(),
            name: name.into(),
            container_id: format!("c-{name}"),
            cgroup: Ok(format!("/sys/fs/cgroup/pods/{name}")),
            netns,
        };
        self.core.cni_add(self.next_req, pod, TIMEOUT, self.now);
        self.next_req
    }

    fn actions(&mut self) -> Vec<Action<u32>> {
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.core.tick(self.now);
    }
}

fn send_add(conn: ConnId, name: &str, ns: &str, netns: u32) -> Action<u32> {
    Action::Send {
        conn,
        request: Request::Add {
            uid: format!("uid-{name}"),
            name: name.into(),
            namespace: ns.into(),
            service_account: "default".into(),
            cgroup: format!("/sys/fs/cgroup/pods/{name}"),
            netns,
        },
    }
}

fn send_del(conn: ConnId, name: &str) -> Action<u32> {
    Action::Send {
        conn,
        request: Request::Del {
            uid: format!("uid-{name}"),
        },
    }
}

fn snapshot(conn: ConnId) -> Action<u32> {
    Action::Send {
        conn,
        request: Request::SnapshotSent,
    }
}

fn reply(req: ReqId, result: Result<Enrollment, AddError>) -> Action<u32> {
    Action::Reply { req, result }
}

#[test]
fn add_of_an_ambient_pod_waits_for_the_proxy_ack() {
    let mut h = Harness::new(&ns("demo", true));
    h.core.proxy_connected(1);
    assert_eq!(h.actions(), vec![snapshot(1)]);
    h.core.proxy_ack(1, "");
    let req = h.add("demo", "web", 7);
    assert_eq!(
        h.actions(),
        vec![send_add(1, "web", "demo", 7)],
        "no reply before the ack"
    );
    h.core.proxy_ack(1, "");
    assert_eq!(h.actions(), vec![reply(req, Ok(Enrollment::Captured))]);
    let s = h.core.status("", "c-web").expect("known by container id");
    assert!(s.enrolled && s.captured);
}

#[test]
fn add_of_a_pod_outside_the_mesh_returns_at_once_and_sends_nothing() {
    let mut h = Harness::new(&format!("{}{}", ns("plain", false), ns("demo", true)));
    h.core.proxy_connected(1);
    h.core.proxy_ack(1, "");
    h.actions();
    let r1 = h.add("plain", "a", 1);
    let r2 = h.add("nolabel-ns-unknown", "b", 2);
    assert_eq!(
        h.actions(),
        vec![
            reply(r1, Ok(Enrollment::NotEnrolled)),
            reply(r2, Ok(Enrollment::NotEnrolled))
        ]
    );
}

#[test]
fn pod_opt_out_wins_over_the_namespace_label() {
    let mut h = Harness::new(&format!(
        "{}{}",
        ns("demo", true),
        pod_opted_out("demo", "x")
    ));
    h.core.proxy_connected(1);
    h.core.proxy_ack(1, "");
    h.actions();
    let r = h.add("demo", "x", 3);
    assert_eq!(h.actions(), vec![reply(r, Ok(Enrollment::NotEnrolled))]);
    // Dropping the opt-out label enrolls the running pod with its kept netns.
    h.core.set_store(store(&ns("demo", true)));
    assert_eq!(h.actions(), vec![send_add(1, "x", "demo", 3)]);
}

#[test]
fn add_without_a_proxy_fails_after_the_bound() {
    let mut h = Harness::new(&ns("demo", true));
    let req = h.add("demo", "web", 7);
    h.advance(TIMEOUT - Duration::from_millis(1));
    assert_eq!(h.actions(), vec![]);
    assert_eq!(
        h.core.poll_timeout(),
        Some(h.now + Duration::from_millis(1))
    );
    h.advance(Duration::from_millis(1));
    assert_eq!(
        h.actions(),
        vec![reply(req, Err(AddError::NoProxy(TIMEOUT)))]
    );
    assert_eq!(h.core.poll_timeout(), None);
}

#[test]
fn add_waits_for_a_proxy_that_connects_late() {
    let mut h = Harness::new(&ns("demo", true));
    let req = h.add("demo", "web", 7);
    h.advance(Duration::from_secs(3));
    h.core.proxy_connected(4);
    assert_eq!(h.actions(), vec![send_add(4, "web", "demo", 7)]);
    h.core.proxy_ack(4, "");
    assert_eq!(
        h.actions(),
        vec![reply(req, Ok(Enrollment::Captured)), snapshot(4)]
    );
}

#[test]
fn an_ack_with_an_error_fails_the_add_and_is_not_retried() {
    let mut h = Harness::new(&ns("demo", true));
    h.core.proxy_connected(1);
    h.core.proxy_ack(1, "");
    h.actions();
    let req = h.add("demo", "web", 7);
    h.actions();
    h.core
        .proxy_ack(1, "listen on 0.0.0.0:15001: address in use");
    assert_eq!(
        h.actions(),
        vec![reply(
            req,
            Err(AddError::Rejected(
                "listen on 0.0.0.0:15001: address in use".into()
            ))
        )]
    );
    assert!(!h.core.status("uid-web", "").expect("known").captured);
    // A retried ADD tries again.
    let again = h.add("demo", "web", 7);
    assert_eq!(h.actions(), vec![send_add(1, "web", "demo", 7)]);
    h.core.proxy_ack(1, "");
    assert_eq!(h.actions(), vec![reply(again, Ok(Enrollment::Captured))]);
}

#[test]
fn proxy_connected_but_silent_fails_the_add_as_not_confirmed() {
    let mut h = Harness::new(&ns("demo", true));
    h.core.proxy_connected(1);
    h.core.proxy_ack(1, "");
    h.actions();
    let req = h.add("demo", "web", 7);
    h.actions();
    h.advance(TIMEOUT);
    assert_eq!(
        h.actions(),
        vec![reply(req, Err(AddError::NotConfirmed(TIMEOUT)))]
    );
}

#[test]
fn label_removal_releases_and_relabel_enrolls_again_with_the_kept_netns() {
    let two = format!("{}{}", ns("demo", true), ns("other", true));
    let mut h = Harness::new(&two);
    h.core.proxy_connected(1);
    h.core.proxy_ack(1, "");
    for (name, ns, fd) in [("a", "demo", 1), ("b", "demo", 2), ("c", "other", 3)] {
        h.add(ns, name, fd);
        h.core.proxy_ack(1, "");
    }
    h.actions();
    h.core.set_store(store(&format!(
        "{}{}",
        ns("demo", false),
        ns("other", true)
    )));
    assert_eq!(h.actions(), vec![send_del(1, "a")]);
    h.core.proxy_ack(1, "");
    assert_eq!(h.actions(), vec![send_del(1, "b")]);
    h.core.proxy_ack(1, "");
    assert_eq!(h.actions(), vec![]);
    h.core.set_store(store(&two));
    assert_eq!(h.actions(), vec![send_add(1, "a", "demo", 1)]);
    h.core.proxy_ack(1, "");
    assert_eq!(h.actions(), vec![send_add(1, "b", "demo", 2)]);
    h.core.proxy_ack(1, "");
    assert_eq!(h.actions(), vec![]);
}

#[test]
fn reconnect_resends_every_enrolled_pod_then_the_snapshot() {
    let mut h = Harness::new(&format!("{}{}", ns("demo", true), ns("plain", false)));
    h.core.proxy_connected(1);
    h.core.proxy_ack(1, "");
    h.add("demo", "a", 1);
    h.core.proxy_ack(1, "");
    h.add("plain", "p", 9);
    h.add("demo", "b", 2);
    h.core.proxy_ack(1, "");
    h.actions();
    h.core.proxy_gone(1);
    h.core.proxy_connected(2);
    assert_eq!(h.actions(), vec![send_add(2, "a", "demo", 1)]);
    h.core.proxy_ack(2, "");
    assert_eq!(h.actions(), vec![send_add(2, "b", "demo", 2)]);
    // A late ack from the dead connection changes nothing.
    h.core.proxy_ack(1, "");
    assert_eq!(h.actions(), vec![]);
    h.core.proxy_ack(2, "");
    assert_eq!(h.actions(), vec![snapshot(2)]);
    h.core.proxy_ack(2, "");
    assert_eq!(h.actions(), vec![]);
}

#[test]
fn a_second_proxy_replaces_the_first() {
    let mut h = Harness::new(&ns("demo", true));
    h.core.proxy_connected(1);
    h.core.proxy_connected(2);
    assert_eq!(
        h.actions(),
        vec![snapshot(1), Action::Close { conn: 1 }, snapshot(2)]
    );
}

#[test]
fn del_releases_a_captured_pod_and_is_idempotent() {
    let mut h = Harness::new(&ns("demo", true));
    h.core.proxy_connected(1);
    h.core.proxy_ack(1, "");
    h.add("demo", "a", 1);
    h.core.proxy_ack(1, "");
    h.actions();
    assert_eq!(
        h.core.cni_del(50, ("", "c-a"), TIMEOUT, h.now),
        Some("uid-a".into())
    );
    assert_eq!(
        h.actions(),
        vec![send_del(1, "a")],
        "DEL waits for the release"
    );
    h.core.proxy_ack(1, "");
    assert_eq!(h.actions(), vec![reply(50, Ok(Enrollment::Released))]);
    assert_eq!(h.core.cni_del(51, ("uid-a", "c-a"), TIMEOUT, h.now), None);
    assert_eq!(h.actions(), vec![reply(51, Ok(Enrollment::Released))]);
    assert_eq!(h.core.status("uid-a", ""), None);
}

#[test]
fn del_while_the_add_is_in_flight_releases_after_the_ack() {
    let mut h = Harness::new(&ns("demo", true));
    h.core.proxy_connected(1);
    h.core.proxy_ack(1, "");
    h.actions();
    let req = h.add("demo", "a", 1);
    h.actions();
    h.core.cni_del(50, ("uid-a", ""), TIMEOUT, h.now);
    assert_eq!(h.actions(), vec![reply(req, Err(AddError::Deleted))]);
    h.core.proxy_ack(1, "");
    assert_eq!(h.actions(), vec![send_del(1, "a")]);
    h.core.proxy_ack(1, "");
    assert_eq!(h.actions(), vec![reply(50, Ok(Enrollment::Released))]);
}

#[test]
fn deleted_pods_are_not_in_the_next_snapshot() {
    let mut h = Harness::new(&ns("demo", true));
    h.add("demo", "a", 1);
    h.add("demo", "b", 2);
    h.advance(TIMEOUT);
    h.actions();
    h.core.cni_del(50, ("uid-a", ""), TIMEOUT, h.now);
    assert_eq!(
        h.actions(),
        vec![reply(50, Ok(Enrollment::Released))],
        "no proxy: at once"
    );
    h.core.proxy_connected(1);
    assert_eq!(h.actions(), vec![send_add(1, "b", "demo", 2)]);
}

#[test]
fn label_removed_while_waiting_answers_not_enrolled() {
    let mut h = Harness::new(&ns("demo", true));
    let req = h.add("demo", "a", 1);
    h.core.set_store(store(&ns("demo", false)));
    assert_eq!(h.actions(), vec![reply(req, Ok(Enrollment::NotEnrolled))]);
    assert_eq!(h.core.poll_timeout(), None);
}

#[test]
fn service_account_comes_from_the_pod_object() {
    let yaml = format!(
        "{}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: demo\nspec:\n  serviceAccountName: api\n",
        ns("demo", true)
    );
    let mut h = Harness::new(&yaml);
    h.core.proxy_connected(1);
    h.core.proxy_ack(1, "");
    h.actions();
    h.add("demo", "a", 1);
    match h.actions().as_slice() {
        [
            Action::Send {
                request: Request::Add {
                    service_account, ..
                },
                ..
            },
        ] => assert_eq!(service_account, "api"),
        other => panic!("expected one add, got {other:?}"),
    }
}

#[test]
fn an_enrolled_pod_without_a_cgroup_fails_at_once_but_others_do_not_need_one() {
    let mut h = Harness::new(&format!("{}{}", ns("demo", true), ns("plain", false)));
    h.core.proxy_connected(1);
    h.core.proxy_ack(1, "");
    h.actions();
    let mut pod = NewPod {
        uid: "u1".into(),
        namespace: "demo".into(),
        name: "a".into(),
        container_id: "c1".into(),
        cgroup: Err("no process runs in the netns".into()),
        netns: 1,
    };
    h.core.cni_add(1, pod.clone(), TIMEOUT, h.now);
    assert_eq!(
        h.actions(),
        vec![reply(
            1,
            Err(AddError::NoCgroup("no process runs in the netns".into()))
        )]
    );
    pod.namespace = "plain".into();
    pod.uid = "u2".into();
    h.core.cni_add(2, pod, TIMEOUT, h.now);
    assert_eq!(h.actions(), vec![reply(2, Ok(Enrollment::NotEnrolled))]);
}

#[test]
fn pods_restored_after_an_agent_restart_are_in_the_snapshot() {
    let mut h = Harness::new(&format!("{}{}", ns("demo", true), ns("plain", false)));
    for (name, ns, fd) in [("a", "demo", 1), ("p", "plain", 2)] {
        h.core.restore(NewPod {
            uid: format!("uid-{name}"),
            namespace: ns.into(),
            name: name.into(),
            container_id: format!("c-{name}"),
            cgroup: Ok(format!("/sys/fs/cgroup/pods/{name}")),
            netns: fd,
        });
    }
    assert_eq!(h.actions(), vec![], "nothing to answer, no proxy yet");
    h.core.proxy_connected(1);
    assert_eq!(h.actions(), vec![send_add(1, "a", "demo", 1)]);
    h.core.proxy_ack(1, "");
    assert_eq!(h.actions(), vec![snapshot(1)]);
}

#[test]
fn del_succeeds_when_the_proxy_does_not_answer_or_goes_away() {
    let mut h = Harness::new(&ns("demo", true));
    h.core.proxy_connected(1);
    h.core.proxy_ack(1, "");
    h.add("demo", "a", 1);
    h.core.proxy_ack(1, "");
    h.add("demo", "b", 2);
    h.core.proxy_ack(1, "");
    h.actions();
    h.core
        .cni_del(50, ("uid-a", ""), Duration::from_secs(5), h.now);
    assert_eq!(h.actions(), vec![send_del(1, "a")]);
    h.advance(Duration::from_secs(5));
    assert_eq!(h.actions(), vec![reply(50, Ok(Enrollment::Released))]);
    h.core.proxy_ack(1, "");
    h.core
        .cni_del(51, ("uid-b", ""), Duration::from_secs(5), h.now);
    assert_eq!(h.actions(), vec![send_del(1, "b")]);
    h.core.proxy_gone(1);
    assert_eq!(h.actions(), vec![reply(51, Ok(Enrollment::Released))]);
}

#[test]
fn a_repeated_add_during_the_first_add_is_answered_by_the_add_of_the_new_netns() {
    let mut h = Harness::new(&ns("demo", true));
    h.core.proxy_connected(1);
    h.core.proxy_ack(1, "");
    h.actions();
    let first = h.add("demo", "a", 1);
    assert_eq!(h.actions(), vec![send_add(1, "a", "demo", 1)]);
    let second = h.add("demo", "a", 2);
    assert_eq!(h.actions(), vec![]);
    h.core.proxy_ack(1, "");
    assert_eq!(
        h.actions(),
        vec![send_add(1, "a", "demo", 2)],
        "the old netns's ack is not enough"
    );
    h.core.proxy_ack(1, "");
    assert_eq!(
        h.actions(),
        vec![
            reply(first, Ok(Enrollment::Captured)),
            reply(second, Ok(Enrollment::Captured))
        ]
    );
}
