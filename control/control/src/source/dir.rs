//! The directory source: every `.yaml`/`.yml` file under a directory (recursively, sorted, hidden
//! entries skipped), each a stream of Kubernetes objects. Loads are incremental (a file whose
//! text did not change is not parsed again) and never half-apply: a rejected object keeps its
//! last valid version from an earlier load, as an API server keeps an object whose update its
//! webhook refused.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use super::documents::{self, Parsed};
use super::{Diagnostic, DiagnosticKind};
use crate::objects::ObjectKey;
use crate::store::Store;

/// Directories deeper than this are not read (guards against symlink loops).
const MAX_DEPTH: usize = 16;

/// The result of one load: what is in effect now, and what was wrong.
#[derive(Clone, Debug, Default)]
pub struct Load {
    pub store: Store,
    pub diagnostics: Vec<Diagnostic>,
}

/// Reads a directory of YAML; remembers the previous load to keep rejected objects' last
/// valid versions and to skip unchanged files.
#[derive(Debug)]
pub struct DirSource {
    root: PathBuf,
    cache: HashMap<PathBuf, CachedFile>,
    last: Store,
    /// The file each object of `last` came from.
    origins: HashMap<ObjectKey, PathBuf>,
}

#[derive(Debug)]
struct CachedFile {
    text: String,
    docs: Vec<CachedDoc>,
}

#[derive(Debug)]
struct CachedDoc {
    index: usize,
    first_line: usize,
    /// Where the document is in the file's text.
    range: std::ops::Range<usize>,
    /// One result per object (a `List` document holds several).
    parsed: Vec<Parsed>,
}

/// What a load collects before deciding what stays.
#[derive(Default)]
struct Pass {
    store: Store,
    origins: HashMap<ObjectKey, PathBuf>,
    diagnostics: Vec<Diagnostic>,
    rejected: Vec<Diagnostic>,
    /// Files with unreadable or unidentifiable content: their earlier objects stay.
    damaged: HashSet<PathBuf>,
    /// Unknown `apiVersion kind`, first place seen and how many objects, in order first seen.
    unknown: Vec<(String, PathBuf, usize, usize, usize)>,
}

impl DirSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirSource {
            root: root.into(),
            cache: HashMap::new(),
            last: Store::new(),
            origins: HashMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads the directory again and returns the objects now in effect.
    pub fn load(&mut self) -> Load {
        let mut pass = Pass::default();
        let files = match list_files(&self.root) {
            Ok(f) => f,
            Err(e) => {
                // The whole directory is gone or unreadable: keep what was in effect rather
                // than withdrawing every workload and policy at once.
                pass.diagnostics.push(unreadable(&self.root, &e));
                return Load {
                    store: self.last.clone(),
                    diagnostics: pass.diagnostics,
                };
            }
        };
        let mut cache = HashMap::with_capacity(files.len());
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    let cached = match self.cache.remove(&file) {
                        Some(c) if c.text == text => c,
                        old => parse_file(text, old.as_ref()),
                    };
                    pass.add_file(&file, &cached);
                    cache.insert(file, cached);
                }
                // Deleted between listing and reading: it is simply gone.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    pass.diagnostics.push(unreadable(&file, &e));
                    pass.damaged.insert(file);
                }
            }
        }
        self.cache = cache;
        self.finish(pass)
    }

    /// Applies the keep-the-last-valid-version rules and remembers the result.
    fn finish(&mut self, mut pass: Pass) -> Load {
        for mut diag in std::mem::take(&mut pass.rejected) {
            let kept = diag.object.as_ref().is_some_and(|key| {
                if pass.store.get(key).is_some() {
                    return false;
                }
                let Some(prev) = self.last.get(key) else {
                    return false;
                };
                pass.store.insert(prev.clone());
                if let Some(origin) = self.origins.get(key) {
                    pass.origins.insert(key.clone(), origin.clone());
                }
                true
            });
            diag.kind = DiagnosticKind::Rejected {
                kept_previous: kept,
            };
            pass.diagnostics.push(diag);
        }
        for (key, origin) in &self.origins {
            if pass.damaged.contains(origin)
                && pass.store.get(key).is_none()
                && let Some(prev) = self.last.get(key)
            {
                pass.store.insert(prev.clone());
                pass.origins.insert(key.clone(), origin.clone());
            }
        }
        for (type_name, file, doc, line, count) in std::mem::take(&mut pass.unknown) {
            pass.diagnostics.push(Diagnostic {
                file,
                document: Some(doc),
                line: Some(line),
                object: None,
                kind: DiagnosticKind::UnknownKind,
                reason: format!("{type_name} is not read by zmesh ({count} object(s) skipped)"),
            });
        }
        self.last = pass.store.clone();
        self.origins = pass.origins;
        Load {
            store: pass.store,
            diagnostics: pass.diagnostics,
        }
    }
}

impl Pass {
    fn add_file(&mut self, file: &Path, cached: &CachedFile) {
        for doc in &cached.docs {
            for parsed in &doc.parsed {
                self.add(file, doc, parsed);
            }
        }
    }

    fn add(&mut self, file: &Path, doc: &CachedDoc, parsed: &Parsed) {
        let diag = |object, kind, line: &Option<usize>, reason: &str| Diagnostic {
            file: file.to_owned(),
            document: Some(doc.index),
            line: Some(doc.first_line + line.unwrap_or(1) - 1),
            object,
            kind,
            reason: reason.to_owned(),
        };
        match parsed {
            Parsed::Object(o) => {
                let key = o.key();
                if let Some(prev) = self.origins.insert(key.clone(), file.to_owned()) {
                    let reason = format!("also defined in {}; this one wins", prev.display());
                    let d = diag(Some(key), DiagnosticKind::Duplicate, &None, &reason);
                    self.diagnostics.push(d);
                }
                self.store.insert(o.clone());
            }
            Parsed::Rejected { key, reason, line } => {
                let kind = DiagnosticKind::Rejected {
                    kept_previous: false,
                };
                self.rejected
                    .push(diag(Some(key.clone()), kind, line, reason));
            }
            Parsed::Broken { reason, line } => {
                let d = diag(None, DiagnosticKind::Broken, line, reason);
                self.diagnostics.push(d);
                self.damaged.insert(file.to_owned());
            }
            Parsed::Unknown { type_name } => {
                match self.unknown.iter_mut().find(|u| &u.0 == type_name) {
                    Some(u) => u.4 += 1,
                    None => {
                        let first = (file.to_owned(), doc.index, doc.first_line);
                        self.unknown
                            .push((type_name.clone(), first.0, first.1, first.2, 1));
                    }
                }
            }
        }
    }
}

fn parse_file(text: String, old: Option<&CachedFile>) -> CachedFile {
    let previous: HashMap<&str, &Vec<Parsed>> = old
        .into_iter()
        .flat_map(|f| {
            f.docs
                .iter()
                .map(move |d| (&f.text[d.range.clone()], &d.parsed))
        })
        .collect();
    let docs = documents::split(&text)
        .iter()
        .map(|d| CachedDoc {
            index: d.index,
            first_line: d.first_line,
            range: d.start..d.start + d.text.len(),
            parsed: match previous.get(d.text) {
                Some(p) => (*p).clone(),
                None => documents::parse(d),
            },
        })
        .collect();
    CachedFile { text, docs }
}

fn unreadable(path: &Path, e: &io::Error) -> Diagnostic {
    Diagnostic {
        file: path.to_owned(),
        document: None,
        line: None,
        object: None,
        kind: DiagnosticKind::Unreadable,
        reason: e.to_string(),
    }
}

/// `.yaml`/`.yml` files under `root`, sorted. Entries whose name starts with `.` are skipped:
/// editors' swap files, and Kubernetes ConfigMap volumes' `..data` copies.
fn list_files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    walk(root, 0, &mut files, true)?;
    files.sort();
    Ok(files)
}

fn walk(dir: &Path, depth: usize, files: &mut Vec<PathBuf>, is_root: bool) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if is_root => return Err(e),
        // A subdirectory that vanished or cannot be read does not stop the load.
        Err(_) => return Ok(()),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // Follows symlinks, so a linked file or directory counts as what it points to.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, depth + 1, files, false)?;
            }
        } else if is_yaml(&path) {
            files.push(path);
        }
    }
    Ok(())
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Parses one YAML stream on its own (no directory, no earlier load: a rejected object is
/// simply not applied). Diagnostics name the file `origin`.
pub fn load_str(origin: &Path, text: &str) -> Load {
    let mut source = DirSource::new(origin);
    let mut pass = Pass::default();
    let cached = parse_file(text.to_owned(), None);
    pass.add_file(origin, &cached);
    source.finish(pass)
}
