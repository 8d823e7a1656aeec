//! Watching the directory: inotify (via `notify`) on the whole tree, a short debounce so an
//! editor's write-rename-chmod burst is one reload, then load → translate → publish. The new
//! resources are sent only when they differ from what was served, so a save that changes
//! nothing pushes nothing. Runs on its own thread; dropping the [`DirWatcher`] stops it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::watch;

use super::{Diagnostic, DirSource};
use crate::resources::Resources;
use crate::store::Store;
use crate::translate::{MeshOptions, Warning, translate};

/// Quiet time after the last file event before reloading.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);
/// A steady stream of events still reloads this often.
const MAX_DELAY: Duration = Duration::from_millis(250);

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    #[error("watching {path}: {source}")]
    Notify {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("starting the watcher thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What the last reload saw, for logs, tests and an admin endpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WatchStatus {
    /// Loads done so far (the initial one included).
    pub loads: u64,
    /// How many of them changed the served resources.
    pub changes: u64,
    pub diagnostics: Vec<Diagnostic>,
    pub warnings: Vec<Warning>,
    /// The objects in effect after the last reload (shared, not copied): for readers that
    /// need the objects themselves, such as the node agent deciding which pods are enrolled.
    pub store: Arc<Store>,
}

/// A running directory watch. Dropping it stops the watch and joins its thread.
pub struct DirWatcher {
    watcher: Option<notify::RecommendedWatcher>,
    thread: Option<JoinHandle<()>>,
    status: watch::Receiver<Arc<WatchStatus>>,
}

struct Reloader {
    source: DirSource,
    mesh: MeshOptions,
    resources: watch::Sender<Arc<Resources>>,
    status: watch::Sender<Arc<WatchStatus>>,
    /// Reported last time: an unchanged broken file is logged once, not on every reload.
    reported: HashSet<String>,
}

impl DirWatcher {
    /// Loads `dir` once (the result is in `resources` when this returns), then reloads on
    /// every change until dropped.
    pub fn start(
        dir: impl Into<PathBuf>,
        mesh: MeshOptions,
        debounce: Duration,
        resources: watch::Sender<Arc<Resources>>,
    ) -> Result<DirWatcher, WatchError> {
        let dir = dir.into();
        let (events_tx, events) = mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(move |ev| {
            // The receiver is gone only while shutting down.
            let _ = events_tx.send(ev);
        })
        .map_err(|source| WatchError::Notify {
            path: dir.clone(),
            source,
        })?;
        // Watch before the first load, so a change made during it is not missed.
        watcher
            .watch(&dir, RecursiveMode::Recursive)
            .map_err(|source| WatchError::Notify {
                path: dir.clone(),
                source,
            })?;
        let (status_tx, status) = watch::channel(Arc::new(WatchStatus::default()));
        let mut reloader = Reloader {
            source: DirSource::new(dir),
            mesh,
            resources,
            status: status_tx,
            reported: HashSet::new(),
        };
        reloader.reload();
        let thread = std::thread::Builder::new()
            .name("zmesh-config-watch".to_owned())
            .spawn(move || reloader.run(&events, debounce))
            .map_err(WatchError::Thread)?;
        Ok(DirWatcher {
            watcher: Some(watcher),
            thread: Some(thread),
            status,
        })
    }

    /// The status of the latest load; changes after every reload.
    pub fn status(&self) -> watch::Receiver<Arc<WatchStatus>> {
        self.status.clone()
    }
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        // Dropping the notify watcher drops the event sender, which ends the thread's loop.
        drop(self.watcher.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Reloader {
    fn run(&mut self, events: &mpsc::Receiver<notify::Result<notify::Event>>, debounce: Duration) {
        loop {
            match events.recv() {
                Ok(ev) if !relevant(&ev) => continue,
                Ok(_) => {}
                Err(_) => return,
            }
            let deadline = Instant::now() + MAX_DELAY;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match events.recv_timeout(debounce.min(left)) {
                    Ok(_) => continue,
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            self.reload();
        }
    }

    fn reload(&mut self) {
        let started = Instant::now();
        let load = self.source.load();
        let translation = translate(&load.store, &self.mesh);
        self.report(&load.diagnostics, &translation.warnings);
        let new = translation.resources;
        let changed = self.resources.send_if_modified(|current| {
            if **current == new {
                return false;
            }
            *current = Arc::new(new);
            true
        });
        tracing::info!(
            dir = %self.source.root().display(),
            objects = load.store.len(),
            changed,
            diagnostics = load.diagnostics.len(),
            warnings = translation.warnings.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "config loaded"
        );
        self.status.send_modify(|s| {
            let s = Arc::make_mut(s);
            s.loads += 1;
            s.changes += u64::from(changed);
            s.diagnostics = load.diagnostics;
            s.warnings = translation.warnings;
            s.store = Arc::new(load.store);
        });
    }

    /// Logs diagnostics and warnings not already logged by the previous load.
    fn report(&mut self, diagnostics: &[Diagnostic], warnings: &[Warning]) {
        let mut now = HashSet::new();
        for d in diagnostics {
            let id = d.to_string();
            if !self.reported.contains(&id) {
                d.log();
            }
            now.insert(id);
        }
        for w in warnings {
            let id = w.to_string();
            if !self.reported.contains(&id) {
                w.log();
            }
            now.insert(id);
        }
        self.reported = now;
    }
}

/// Opening or reading a file changes nothing.
fn relevant(ev: &notify::Result<notify::Event>) -> bool {
    match ev {
        Ok(ev) => !matches!(
            ev.kind,
            EventKind::Access(
                notify::event::AccessKind::Open(_)
                    | notify::event::AccessKind::Read
                    | notify::event::AccessKind::Close(notify::event::AccessMode::Read)
            )
        ),
        Err(_) => true,
    }
}
