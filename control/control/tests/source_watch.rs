//! The directory watcher: edits, atomic-rename saves, deletions and new subdirectories reach
//! the served resources within a second; a save that changes nothing sends nothing.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use zmesh_control::Resources;
use zmesh_control::source::{DEFAULT_DEBOUNCE, DirWatcher, WatchStatus};
use zmesh_control::translate::MeshOptions;
use zmesh_proto::workload::address;

/// Bound for one change to be served: the brief's "well within a second".
const DEADLINE: Duration = Duration::from_secs(1);

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/sample")
}

fn copy_sample(to: &Path) {
    for entry in fs::read_dir(sample()).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Waits for the next send; returns the new resources and how long it took.
async fn next(rx: &mut watch::Receiver<Arc<Resources>>) -> (Arc<Resources>, Duration) {
    let start = Instant::now();
    tokio::time::timeout(DEADLINE, rx.changed())
        .await
        .expect("change served within the deadline")
        .expect("watcher alive");
    (rx.borrow_and_update().clone(), start.elapsed())
}

fn principals(r: &Resources) -> Vec<String> {
    let p = &r.authorizations["shop/reviews-from-sleep"];
    p.rules[0].clauses[0].matches[0]
        .principals
        .iter()
        .map(|m| format!("{:?}", m.match_type))
        .collect()
}

fn has_workload(r: &Resources, name: &str) -> bool {
    r.addresses
        .get(&format!("Kubernetes//v1/Pod/shop/{name}"))
        .is_some_and(|a| matches!(a.r#type, Some(address::Type::Workload(_))))
}

/// Waits until no reload happened for 300 ms (late events of an earlier step can cause one
/// more reload); returns the number of loads then.
async fn settle(status: &watch::Receiver<Arc<WatchStatus>>) -> u64 {
    let mut loads = status.borrow().loads;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = status.borrow().loads;
        if now == loads {
            return now;
        }
        loads = now;
    }
    panic!("the watcher keeps reloading");
}

#[tokio::test(flavor = "current_thread")]
async fn edits_renames_and_deletions_are_served_and_no_change_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    copy_sample(dir.path());
    let (tx, mut rx) = watch::channel(Arc::new(Resources::default()));
    let watcher =
        DirWatcher::start(dir.path(), MeshOptions::default(), DEFAULT_DEBOUNCE, tx).unwrap();
    let initial = rx.borrow_and_update().clone();
    assert!(
        has_workload(&initial, "sleep"),
        "first load is served before start returns"
    );
    let mut status = watcher.status();
    assert_eq!(status.borrow_and_update().loads, 1);

    // An in-place edit.
    let security = dir.path().join("30-security.yaml");
    let text = fs::read_to_string(&security).unwrap();
    fs::write(&security, text.replace("sa/sleep", "sa/other")).unwrap();
    let (r, took) = next(&mut rx).await;
    assert!(
        principals(&r)[0].contains("sa/other"),
        "{:?}",
        principals(&r)
    );
    eprintln!("in-place edit served in {took:?}");

    // An editor's save: write a temporary file, rename it over the original.
    let tmp = dir.path().join(".30-security.yaml.swp");
    fs::write(&tmp, text.replace("sa/sleep", "sa/renamed")).unwrap();
    fs::rename(&tmp, &security).unwrap();
    let (r, took) = next(&mut rx).await;
    assert!(
        principals(&r)[0].contains("sa/renamed"),
        "{:?}",
        principals(&r)
    );
    eprintln!("rename save served in {took:?}");

    // Deleting a file withdraws its objects.
    fs::remove_file(dir.path().join("20-client.yaml")).unwrap();
    let (r, took) = next(&mut rx).await;
    assert!(!has_workload(&r, "sleep"));
    assert!(has_workload(&r, "reviews-6d8f7c9b5-7xk2p"));
    eprintln!("deletion served in {took:?}");

    // A new subdirectory and a file in it.
    let sub = dir.path().join("more");
    fs::create_dir(&sub).unwrap();
    fs::copy(sample().join("20-client.yaml"), sub.join("client.yaml")).unwrap();
    let (r, took) = next(&mut rx).await;
    assert!(has_workload(&r, "sleep"));
    eprintln!("file in a new subdirectory served in {took:?}");

    // Rewriting a file with the same objects reloads but sends nothing.
    let loads = settle(&status).await;
    fs::write(
        dir.path().join("00-namespace.yaml"),
        fs::read_to_string(sample().join("00-namespace.yaml")).unwrap() + "\n# a comment\n",
    )
    .unwrap();
    tokio::time::timeout(DEADLINE, async {
        while status.borrow_and_update().loads == loads {
            status.changed().await.expect("watcher alive");
        }
    })
    .await
    .expect("reloaded");
    assert!(!rx.has_changed().unwrap(), "no change, no send");
    // The watcher's own reads (open/close events) must not trigger more reloads.
    assert_eq!(settle(&status).await, loads + 1, "one reload for one write");
    let s = status.borrow().clone();
    assert_eq!(s.changes, 5, "the first load and four edits: {s:?}");
    drop(watcher);
}

#[tokio::test(flavor = "current_thread")]
async fn a_rejected_edit_keeps_serving_the_last_valid_policy_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    copy_sample(dir.path());
    let (tx, mut rx) = watch::channel(Arc::new(Resources::default()));
    let watcher =
        DirWatcher::start(dir.path(), MeshOptions::default(), DEFAULT_DEBOUNCE, tx).unwrap();
    let before = rx.borrow_and_update().clone();
    let mut status = watcher.status();
    status.borrow_and_update();

    let security = dir.path().join("30-security.yaml");
    let text = fs::read_to_string(&security).unwrap();
    fs::write(
        &security,
        text.replace(
            "cluster.local/ns/shop/sa/sleep",
            "spiffe://cluster.local/ns/shop/sa/sleep",
        ),
    )
    .unwrap();
    tokio::time::timeout(DEADLINE, status.changed())
        .await
        .expect("reloaded")
        .expect("alive");
    let s = status.borrow().clone();
    assert_eq!(s.diagnostics.len(), 1, "{:?}", s.diagnostics);
    assert!(s.diagnostics[0].reason.contains("spiffe://"));
    assert!(
        !rx.has_changed().unwrap(),
        "the served policy did not change"
    );
    assert_eq!(principals(&rx.borrow()), principals(&before));
}
