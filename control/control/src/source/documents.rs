//! Splitting a YAML file into documents and parsing each on its own, so that one broken
//! document costs only itself and its position can be reported.

use std::sync::Arc;

use crate::objects::{Kind, Object, ObjectKey, validate};

/// One non-empty document of a file.
pub(crate) struct RawDoc<'a> {
    /// Index among the file's non-empty documents.
    pub index: usize,
    /// Line (from 1) where the document starts.
    pub first_line: usize,
    /// Byte offset of `text` in the file.
    pub start: usize,
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
            push_doc(&mut docs, text, start..offset, start_line);
            start = offset;
            start_line = n + 1;
        }
        offset += line.len();
    }
    push_doc(&mut docs, text, start..text.len(), start_line);
    docs
}

fn is_separator(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
}

fn push_doc<'a>(
    docs: &mut Vec<RawDoc<'a>>,
    file: &'a str,
    range: std::ops::Range<usize>,
    first_line: usize,
) {
    let start = range.start;
    let text = &file[range];
    let empty = text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
    });
    if !empty {
        docs.push(RawDoc {
            index: docs.len(),
            first_line,
            start,
            text,
        });
    }
}

/// What one document turned out to be. Lines are relative to the document (from 1), so a
/// parse can be reused when the document moves within its file.
#[derive(Clone, Debug)]
pub(crate) enum Parsed {
    Object(Arc<Object>),
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

/// Parses one document: once into a generic value (header and object come from the same
/// parse), then into the object of its kind. Only when that fails is the text parsed again as
/// the typed object, for an error that names the line. A `v1 List` (what `kubectl get -o yaml`
/// prints) yields one result per item.
pub(crate) fn parse(doc: &RawDoc<'_>) -> Vec<Parsed> {
    let value: serde_json::Value = match serde_saphyr::from_str(doc.text) {
        Ok(v) => v,
        Err(e) => {
            let (reason, line) = describe(&e);
            return vec![Parsed::Broken { reason, line }];
        }
    };
    let is_list = value.get("apiVersion").and_then(|v| v.as_str()) == Some("v1")
        && value.get("kind").and_then(|v| v.as_str()) == Some("List");
    match value {
        serde_json::Value::Object(mut map) if is_list => {
            let items = match map.remove("items") {
                Some(serde_json::Value::Array(items)) => items,
                _ => Vec::new(),
            };
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match parse_value(item, None) {
                    Parsed::Broken { reason, line } => Parsed::Broken {
                        reason: format!("items[{i}]: {reason}"),
                        line,
                    },
                    Parsed::Rejected { key, reason, line } => Parsed::Rejected {
                        key,
                        reason: format!("items[{i}]: {reason}"),
                        line,
                    },
                    other => other,
                })
                .collect()
        }
        value => vec![parse_value(value, Some(doc.text))],
    }
}

/// One object from its generic value; `text` (the document's YAML) locates typed errors.
pub(crate) fn parse_value(value: serde_json::Value, text: Option<&str>) -> Parsed {
    let Some(map) = value.as_object() else {
        return Parsed::Broken {
            reason: "not a mapping with apiVersion, kind and metadata".to_owned(),
            line: Some(1),
        };
    };
    let text_of =
        |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let (api_version, kind_name) = (text_of(map.get("apiVersion")), text_of(map.get("kind")));
    if api_version.is_empty() || kind_name.is_empty() {
        return Parsed::Broken {
            reason: "apiVersion and kind are required".to_owned(),
            line: Some(1),
        };
    }
    let Some(kind) = Kind::from_type(&api_version, &kind_name) else {
        return Parsed::Unknown {
            type_name: format!("{api_version} {kind_name}"),
        };
    };
    let meta = map.get("metadata");
    let name = text_of(meta.and_then(|m| m.get("name")));
    if name.is_empty() {
        return Parsed::Broken {
            reason: format!("{kind}: metadata.name is required"),
            line: Some(1),
        };
    }
    let mut namespace = text_of(meta.and_then(|m| m.get("namespace")));
    if !kind.is_namespaced() {
        namespace.clear();
    } else if namespace.is_empty() {
        namespace = "default".to_owned();
    }
    let key = ObjectKey::new(kind, namespace, name);
    let mut object = match Object::from_value(kind, value) {
        Ok(o) => o,
        Err(json_error) => {
            let located = text.map(|t| Object::from_yaml(kind, t));
            let (reason, line) = match located {
                Some(Err(e)) => describe(&e),
                _ => (json_error.to_string(), Some(1)),
            };
            return Parsed::Rejected { key, reason, line };
        }
    };
    object.normalize();
    match validate(&object) {
        Ok(()) => Parsed::Object(Arc::new(object)),
        Err(reason) => Parsed::Rejected {
            key,
            reason,
            line: Some(1),
        },
    }
}

/// A one-line reason and the line (in the document, from 1) of a YAML error.
fn describe(e: &serde_saphyr::Error) -> (String, Option<usize>) {
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
        .or(Some(1));
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
