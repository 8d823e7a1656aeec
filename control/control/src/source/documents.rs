//! Splitting a YAML file into documents and parsing each on its own, so that one broken
//! document costs only itself and its position can be reported.

use serde::Deserialize;

use crate::objects::{Kind, Object, ObjectKey, validate};

/// One non-empty document of a file.
pub(crate) struct RawDoc<'a> {
    /// Index among the file's non-empty documents.
    pub index: usize,
    /// Line (from 1) where the document starts.
    pub first_line: usize,
    pub text: &'a str,
}

/// Splits at `---` lines (column 0, as kubectl does). Documents holding only blank lines,
/// comments or a `...` end marker are dropped.
pub(crate) fn split(text: &str) -> Vec<RawDoc<'_>> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if is_separator(line) && offset > start {
            push_doc(&mut docs, &text[start..offset], start_line);
            start = offset;
            start_line = n + 1;
        }
        offset += line.len();
    }
    push_doc(&mut docs, &text[start..], start_line);
    docs
}

fn is_separator(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
}

fn push_doc<'a>(docs: &mut Vec<RawDoc<'a>>, text: &'a str, first_line: usize) {
    let empty = text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
    });
    if !empty {
        docs.push(RawDoc {
            index: docs.len(),
            first_line,
            text,
        });
    }
}

/// What one document turned out to be.
#[derive(Debug)]
pub(crate) enum Parsed {
    Object(std::sync::Arc<Object>),
    /// A known kind whose content Istio or Kubernetes would reject.
    Rejected {
        key: ObjectKey,
        reason: String,
        line: Option<usize>,
    },
    /// Not something we can identify.
    Broken {
        reason: String,
        line: Option<usize>,
    },
    /// `apiVersion` + `kind` we do not read, e.g. `networking.istio.io/v1 VirtualService`.
    Unknown {
        type_name: String,
    },
}

#[derive(Deserialize)]
struct Header {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: HeaderMeta,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct HeaderMeta {
    name: String,
    namespace: String,
}

/// Parses one document: header first (what is it?), then the full object of that kind.
pub(crate) fn parse(doc: &RawDoc<'_>) -> Parsed {
    let header: Header = match serde_saphyr::from_str(doc.text) {
        Ok(h) => h,
        Err(e) => {
            let (reason, line) = describe(&e, doc.first_line);
            return Parsed::Broken { reason, line };
        }
    };
    if header.api_version.is_empty() || header.kind.is_empty() {
        return Parsed::Broken {
            reason: "apiVersion and kind are required".to_owned(),
            line: Some(doc.first_line),
        };
    }
    let Some(kind) = Kind::from_type(&header.api_version, &header.kind) else {
        return Parsed::Unknown {
            type_name: format!("{} {}", header.api_version, header.kind),
        };
    };
    if header.metadata.name.is_empty() {
        return Parsed::Broken {
            reason: format!("{kind}: metadata.name is required"),
            line: Some(doc.first_line),
        };
    }
    let mut namespace = header.metadata.namespace;
    if !kind.is_namespaced() {
        namespace.clear();
    } else if namespace.is_empty() {
        namespace = "default".to_owned();
    }
    let key = ObjectKey::new(kind, namespace, header.metadata.name);
    let mut object = match Object::from_yaml(kind, doc.text) {
        Ok(o) => o,
        Err(e) => {
            let (reason, line) = describe(&e, doc.first_line);
            return Parsed::Rejected { key, reason, line };
        }
    };
    object.normalize();
    match validate(&object) {
        Ok(()) => Parsed::Object(std::sync::Arc::new(object)),
        Err(reason) => Parsed::Rejected {
            key,
            reason,
            line: Some(doc.first_line),
        },
    }
}

/// A one-line reason and the file line of a YAML error.
fn describe(e: &serde_saphyr::Error, first_line: usize) -> (String, Option<usize>) {
    use serde_saphyr::MessageFormatter;
    let e = e.without_snippet();
    let reason = serde_saphyr::UserMessageFormatter
        .format_message(e)
        .replace('\n', " ");
    let line = e
        .location()
        .map(|l| l.line())
        .filter(|l| *l > 0)
        .and_then(|l| usize::try_from(l).ok())
        .map(|l| first_line + l - 1)
        .or(Some(first_line));
    (reason, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_counts_only_non_empty_documents_and_keeps_lines() {
        let text = "---\n# only a comment\n---\na: 1\n---\n\n---\nb: 2\nc: 3\n...\n";
        let docs = split(text);
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].index, docs[0].first_line), (0, 3));
        assert_eq!((docs[1].index, docs[1].first_line), (1, 7));
        assert!(docs[1].text.contains("c: 3"));
    }

    #[test]
    fn separator_needs_column_zero_and_whitespace_after() {
        let docs = split("a: |\n  ---\n  x\n---x: 1\n");
        assert_eq!(docs.len(), 1);
    }
}
