//! Config sources: where objects come from. The directory source loads Kubernetes-style YAML
//! files and watches them; every source yields a [`Store`](crate::store::Store) and
//! [`Diagnostic`]s, structured so the binary logs them and tests assert them.

mod dir;
mod documents;
#[cfg(feature = "kube")]
pub mod k8s;
mod watch;

use std::fmt;
use std::path::PathBuf;

use crate::objects::ObjectKey;

pub use self::dir::{DirSource, Load, load_str};
pub use self::watch::{DEFAULT_DEBOUNCE, DirWatcher, WatchError, WatchStatus};

/// A problem with one file or document, reported instead of failing the whole load.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// Index (from 0) of the document in its file, counting only non-empty documents.
    pub document: Option<usize>,
    /// Line (from 1) in the file where the document or the problem is.
    pub line: Option<usize>,
    /// The object concerned, when the document said which one it is.
    pub object: Option<ObjectKey>,
    pub kind: DiagnosticKind,
    pub reason: String,
}

/// What happened to the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiagnosticKind {
    /// The file could not be read.
    Unreadable,
    /// Not a YAML mapping naming `apiVersion`, `kind` and `metadata.name`: skipped. When a file
    /// has such a document, the objects it held before stay (we cannot tell which they were).
    Broken,
    /// A known kind that failed to parse or validate, as Istio's webhook would reject it:
    /// never applied. `kept_previous` tells whether the last valid version stays in effect.
    Rejected { kept_previous: bool },
    /// A kind the controller does not read: skipped, reported once per kind and load.
    UnknownKind,
    /// The same object defined again: the later definition (file order) wins.
    Duplicate,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(d) = self.document {
            write!(f, " document {d}")?;
        }
        if let Some(l) = self.line {
            write!(f, " (line {l})")?;
        }
        if let Some(o) = &self.object {
            write!(f, " {o}")?;
        }
        let what = match self.kind {
            DiagnosticKind::Unreadable => "unreadable",
            DiagnosticKind::Broken => "skipped",
            DiagnosticKind::Rejected {
                kept_previous: true,
            } => "rejected, last valid version kept",
            DiagnosticKind::Rejected {
                kept_previous: false,
            } => "rejected, not applied",
            DiagnosticKind::UnknownKind => "unknown kind skipped",
            DiagnosticKind::Duplicate => "duplicate",
        };
        write!(f, ": {what}: {}", self.reason)
    }
}

impl Diagnostic {
    /// Logs the diagnostic as a warning with structured fields.
    pub fn log(&self) {
        tracing::warn!(
            file = %self.file.display(),
            document = self.document,
            line = self.line,
            object = self.object.as_ref().map(|o| o.to_string()),
            kind = ?self.kind,
            reason = %self.reason,
            "config"
        );
    }
}
