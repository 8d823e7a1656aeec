//! ztunnel's local config YAML (`LOCAL_XDS_PATH`): workloads, services and policies in one
//! file, read once. Every error names the file, the line (and column when known) and the reason.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde_saphyr::{Location, MessageFormatter, Spanned};

use crate::snapshot::{Item, Snapshot};

mod raw;

/// A config file that cannot be used.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// `line`/`column` are 1-based; 0 when unknown.
    #[error("{origin}{}: {reason}", Position(*line, *column))]
    Invalid {
        origin: String,
        line: u64,
        column: u64,
        reason: String,
    },
}

/// `:line:column`, `:line` or nothing, as far as known.
struct Position(u64, u64);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Position(0, _) => Ok(()),
            Position(line, 0) => write!(f, ":{line}"),
            Position(line, column) => write!(f, ":{line}:{column}"),
        }
    }
}

impl ConfigError {
    fn at(origin: &str, loc: Option<Location>, reason: impl Into<String>) -> ConfigError {
        let loc = loc.unwrap_or(Location::UNKNOWN);
        ConfigError::Invalid {
            origin: origin.to_owned(),
            line: loc.line(),
            column: loc.column(),
            reason: reason.into(),
        }
    }
}

/// Reads and parses a local config file; see [`parse_local_config`].
pub fn load_local_config(path: &Path) -> Result<Snapshot, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: origin.clone(),
        source,
    })?;
    parse_local_config(&text, &origin)
}

/// Parses local config YAML into a validated snapshot. `origin` names the source in messages.
/// Service endpoints are derived from the workloads' `services` maps.
pub fn parse_local_config(text: &str, origin: &str) -> Result<Snapshot, ConfigError> {
    if is_blank(text) {
        return Ok(Snapshot::empty());
    }
    let config: raw::LocalConfig = serde_saphyr::from_str(text).map_err(|e| {
        let e = e.without_snippet();
        let reason = serde_saphyr::UserMessageFormatter.format_message(e);
        ConfigError::at(origin, e.location(), reason.replace('\n', " "))
    })?;
    check_references(&config, origin)?;
    let spans: Vec<Location> = config.workloads.iter().map(|w| w.referenced).collect();
    let service_spans: Vec<Location> = config.services.iter().map(|s| s.referenced).collect();
    let policy_spans: Vec<Location> = config.policies.iter().map(|p| p.referenced).collect();
    let workloads = config.workloads.into_iter().map(|w| w.value.into_model());
    let services = config.services.into_iter().map(|s| s.value.into_model());
    let policies = config.policies.into_iter().map(|p| p.value.into_model());
    Snapshot::new(workloads.collect(), services.collect(), policies.collect()).map_err(|e| {
        let loc = match e.item() {
            Item::Workload(i) => spans.get(i),
            Item::Service(i) => service_spans.get(i),
            Item::Policy(i) => policy_spans.get(i),
        };
        ConfigError::at(origin, loc.copied(), e.to_string())
    })
}

/// Only whitespace and comments: an empty mesh rather than a YAML error.
fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#'))
}

/// References that ztunnel would tolerate (they may arrive later over xDS) but that in a static
/// file can only be typos: a workload naming an unknown service or policy.
fn check_references(config: &raw::LocalConfig, origin: &str) -> Result<(), ConfigError> {
    let services: HashSet<String> = config.services.iter().map(|s| s.value.key()).collect();
    let policies: HashSet<String> = config.policies.iter().map(|p| p.value.key()).collect();
    for Spanned {
        value, referenced, ..
    } in &config.workloads
    {
        let unknown = |what: &str, key: &str| {
            let reason = format!("workload {:?}: {what} {key:?} is not defined", value.uid());
            Err(ConfigError::at(origin, Some(*referenced), reason))
        };
        if let Some(key) = value.services.keys().find(|k| !services.contains(*k)) {
            return unknown("service", key);
        }
        if let Some(key) = value
            .authorization_policies
            .iter()
            .find(|k| !policies.contains(*k))
        {
            return unknown("authorization policy", key);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
