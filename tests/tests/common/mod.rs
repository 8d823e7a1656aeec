//! Helpers shared by the wire and abuse tests. Each test binary uses only some of them.
#![allow(dead_code)]

pub mod frames;
pub mod peer;

use std::time::{Duration, Instant};

use zmesh_tests::Node;

/// Waits until `name{labels}` on `node` reaches `at_least`; returns the last value seen.
/// Counters move on the node's shard threads after the connection ended, so a test polls.
pub fn wait_metric(node: &Node, name: &str, labels: &[&str], at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = tokio::task::block_in_place(|| node.metric(name, labels));
        if v >= at_least || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A counter's value now, read without stalling the runtime's other tasks.
pub fn metric_now(node: &Node, name: &str, labels: &[&str]) -> f64 {
    tokio::task::block_in_place(|| node.metric(name, labels))
}

/// Asserts that `name{labels}` on `node` grew past `before` (and returns the new value).
#[track_caller]
pub fn assert_moved(node: &Node, name: &str, labels: &[&str], before: f64) -> f64 {
    let now = wait_metric(node, name, labels, before + 1.0);
    assert!(
        now > before,
        "{name}{labels:?} on {} stayed at {before}",
        node.name
    );
    now
}

/// True while the node's process runs and is not a zombie (read from /proc, so a shared
/// borrow suffices).
pub fn running(node: &Node) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", node.pid()))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
