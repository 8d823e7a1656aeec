//! In-pod metrics, under Istio's names: `istio_active_proxy_count`,
//! `istio_pending_proxy_count`, `istio_proxies_started_total`, `istio_proxies_stopped_total`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::metrics::{counter, gauge};

/// Written by the ZDS thread, read at scrape time.
#[derive(Debug, Default)]
pub struct PodMetrics {
    /// Pods captured and served.
    pub active: AtomicI64,
    /// Pods being enrolled (listeners and capture not yet in place).
    pub pending: AtomicI64,
    pub started: AtomicU64,
    pub stopped: AtomicU64,
}

#[derive(Debug)]
pub struct PodCollector(pub Arc<PodMetrics>);

type NoLabels = Vec<(String, String)>;

impl Collector for PodCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        gauge(
            &mut enc,
            "active_proxy_count",
            "Enrolled pods whose traffic is captured and served",
            [(NoLabels::new(), m.active.load(Relaxed))],
        )?;
        gauge(
            &mut enc,
            "pending_proxy_count",
            "Pods being enrolled",
            [(NoLabels::new(), m.pending.load(Relaxed))],
        )?;
        counter(
            &mut enc,
            "proxies_started",
            "Pods enrolled",
            [(NoLabels::new(), m.started.load(Relaxed))],
        )?;
        counter(
            &mut enc,
            "proxies_stopped",
            "Pods released",
            [(NoLabels::new(), m.stopped.load(Relaxed))],
        )
    }
}
