//! Certificates of local workload identities fetched from the CA: which identities need one,
//! when each is due (half of its lifetime, or a backoff after a failure), and which
//! certificates are usable now. Sans-IO: the caller passes `now` and does the fetching
//! (`client.rs`), so rotation timing is tested without sleeps.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use zmesh_state::Identity;

use crate::backoff::Backoff;
use crate::state::IdentityCert;

pub mod client;

/// Backoff for one identity's failed requests (Istio caps it at 150 s).
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(150);

#[derive(Debug)]
struct Entry {
    cert: Option<Arc<IdentityCert>>,
    due: SystemTime,
    in_flight: bool,
    backoff: Backoff,
}

/// The identities wanted on this node and their certificates.
#[derive(Debug, Default)]
pub struct CertBook {
    entries: HashMap<Identity, Entry>,
}

impl CertBook {
    /// Sets the identities needed now. New ones are due at once; certificates of identities no
    /// longer needed are dropped. Returns whether a certificate was dropped.
    pub fn set_wanted(&mut self, wanted: &BTreeSet<Identity>, now: SystemTime) -> bool {
        let before = self.entries.len();
        let had_cert = self.entries.values().filter(|e| e.cert.is_some()).count();
        self.entries.retain(|id, _| wanted.contains(id));
        let dropped = self.entries.values().filter(|e| e.cert.is_some()).count() != had_cert;
        for id in wanted {
            self.entries.entry(id.clone()).or_insert_with(|| Entry {
                cert: None,
                due: now,
                in_flight: false,
                backoff: Backoff::new(RETRY_BASE, RETRY_CAP),
            });
        }
        if before != self.entries.len() {
            tracing::debug!(identities = self.entries.len(), "certificate set changed");
        }
        dropped
    }

    /// The identities whose request should start now; they count as in flight until
    /// [`CertBook::succeeded`] or [`CertBook::failed`].
    pub fn take_due(&mut self, now: SystemTime) -> Vec<Identity> {
        let mut out = Vec::new();
        for (id, e) in &mut self.entries {
            if !e.in_flight && e.due <= now {
                e.in_flight = true;
                out.push(id.clone());
            }
        }
        out.sort();
        out
    }

    /// When the next request is due (none: nothing to do until an answer or a change).
    pub fn next_due(&self) -> Option<SystemTime> {
        self.entries
            .values()
            .filter(|e| !e.in_flight)
            .map(|e| e.due)
            .min()
    }

    /// A new certificate: it replaces the old one and is renewed at half its lifetime.
    /// Answers for identities no longer wanted are dropped.
    pub fn succeeded(&mut self, id: &Identity, cert: Arc<IdentityCert>) {
        if let Some(e) = self.entries.get_mut(id) {
            e.due = cert.cert.refresh_at();
            e.cert = Some(cert);
            e.in_flight = false;
            e.backoff.reset();
        }
    }

    /// A failed request: retried after a growing delay; the old certificate stays in use
    /// until it expires. Returns the delay.
    pub fn failed(&mut self, id: &Identity, now: SystemTime, jitter: f64) -> Option<Duration> {
        let e = self.entries.get_mut(id)?;
        let delay = e.backoff.next_delay(jitter);
        e.due = now + delay;
        e.in_flight = false;
        Some(delay)
    }

    /// Certificates usable at `now` (expired ones are left out).
    pub fn usable(&self, now: SystemTime) -> HashMap<Identity, Arc<IdentityCert>> {
        self.entries
            .iter()
            .filter_map(|(id, e)| {
                let c = e.cert.as_ref()?;
                (!c.cert.is_expired(now)).then(|| (id.clone(), c.clone()))
            })
            .collect()
    }

    /// The earliest expiry of a held certificate: the published state must change then.
    pub fn next_expiry(&self, now: SystemTime) -> Option<SystemTime> {
        self.entries
            .values()
            .filter_map(|e| e.cert.as_ref().map(|c| c.cert.not_after))
            .filter(|t| *t > now)
            .min()
    }

    /// Identities with no usable certificate.
    pub fn missing(&self, now: SystemTime) -> Vec<Identity> {
        let mut out: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, e)| e.cert.as_ref().is_none_or(|c| c.cert.is_expired(now)))
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests;
