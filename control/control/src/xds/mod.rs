//! Delta ADS (`envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`)
//! for Istio's two ambient types, `istio.workload.Address` and `istio.security.Authorization`.
//!
//! [`snapshot`] encodes and versions a [`crate::Resources`] once for all streams; [`session`] is
//! the sans-IO per-stream state (who holds which version, what to push); [`service`] is the
//! tonic glue, one task per stream, fed by a watch channel so that a slow client only ever
//! sees the latest state and never holds up another.

use std::sync::atomic::{AtomicU64, Ordering};

pub mod service;
pub mod session;
pub mod snapshot;

pub use service::AdsService;
pub use session::{RequestKind, RequestOutcome, Session, diff, diff_names};
pub use snapshot::{Entry, Snapshot, TypeSnapshot};

/// Counters of the ADS server, summed over every stream since start.
#[derive(Debug, Default)]
pub struct Stats {
    streams_opened: AtomicU64,
    streams_closed: AtomicU64,
    responses: AtomicU64,
    resources: AtomicU64,
    removals: AtomicU64,
    bytes: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub streams_opened: u64,
    pub streams_closed: u64,
    /// DeltaDiscoveryResponses sent (first responses and pushes).
    pub responses: u64,
    /// Resources carried by those responses.
    pub resources: u64,
    /// Names carried in `removed_resources`.
    pub removals: u64,
    /// Encoded protobuf size of those responses (without gRPC framing and HTTP/2).
    pub bytes: u64,
    pub acks: u64,
    pub nacks: u64,
}

impl StatsSnapshot {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            streams_opened: self.streams_opened - earlier.streams_opened,
            streams_closed: self.streams_closed - earlier.streams_closed,
            responses: self.responses - earlier.responses,
            resources: self.resources - earlier.resources,
            removals: self.removals - earlier.removals,
            bytes: self.bytes - earlier.bytes,
            acks: self.acks - earlier.acks,
            nacks: self.nacks - earlier.nacks,
        }
    }
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            streams_opened: get(&self.streams_opened),
            streams_closed: get(&self.streams_closed),
            responses: get(&self.responses),
            resources: get(&self.resources),
            removals: get(&self.removals),
            bytes: get(&self.bytes),
            acks: get(&self.acks),
            nacks: get(&self.nacks),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn stream_opened(&self) {
        Self::add(&self.streams_opened, 1);
    }

    fn stream_closed(&self) {
        Self::add(&self.streams_closed, 1);
    }

    fn response(&self, resources: usize, removals: usize, bytes: usize) {
        Self::add(&self.responses, 1);
        Self::add(&self.resources, resources as u64);
        Self::add(&self.removals, removals as u64);
        Self::add(&self.bytes, bytes as u64);
    }

    fn ack(&self) {
        Self::add(&self.acks, 1);
    }

    fn nack(&self) {
        Self::add(&self.nacks, 1);
    }
}
