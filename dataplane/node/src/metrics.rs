//! Metrics, kept per shard and summed at scrape time.
//!
//! Each shard owns its counters: plain atomics written only by that shard (relaxed stores, no
//! contention) and read by the scraper on the control thread. A new traffic label set is
//! created on the shard and handed to the scraper through a lock-free channel, so the
//! per-connection path takes no lock. The scraper sums series with equal labels across shards
//! and writes Istio's metric names (`istio_tcp_*`) and zmesh's per-shard tuning metrics.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use zmesh_rt::RuntimeStats;

/// Istio's `CommonTrafficLabels`, in Istio's order. Missing values are "unknown".
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

pub const UNKNOWN: &str = "unknown";

impl TrafficLabels {
    /// All-unknown labels for a reporter ("source" or "destination").
    pub fn new(reporter: &'static str) -> TrafficLabels {
        let u = || UNKNOWN.to_string();
        TrafficLabels {
            reporter,
            source_workload: u(),
            source_canonical_service: u(),
            source_canonical_revision: u(),
            source_workload_namespace: u(),
            source_principal: u(),
            source_app: u(),
            source_version: u(),
            source_cluster: u(),
            destination_service: u(),
            destination_service_namespace: u(),
            destination_service_name: u(),
            destination_workload: u(),
            destination_canonical_service: u(),
            destination_canonical_revision: u(),
            destination_workload_namespace: u(),
            destination_principal: u(),
            destination_app: u(),
            destination_version: u(),
            destination_cluster: u(),
            request_protocol: "tcp",
            response_flags: "-",
            connection_security_policy: "unknown",
        }
    }
}

/// `value` or "unknown" when empty.
pub fn or_unknown(value: &str) -> String {
    if value.is_empty() {
        UNKNOWN.to_string()
    } else {
        value.to_string()
    }
}

/// Counters of one label set on one shard.
#[derive(Debug, Default)]
pub struct TrafficCounters {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    pub failed: AtomicU64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
}

impl TrafficCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        // Only the owning shard writes: a load and a store avoid a locked read-modify-write.
        counter.store(counter.load(Relaxed) + n, Relaxed);
    }
}

/// Why a connection or a tunnel was refused or ended early; the per-shard
/// `zmesh_rejections_total{reason}` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    OverLimit,
    HandshakeTimeout,
    TlsHandshake,
    H2Handshake,
    BadMethod,
    BadAuthority,
    NoWorkload,
    IllegalPort,
    Denied,
    UpstreamConnect,
    UnknownSource,
    Socks5,
    UpstreamTls,
    UpstreamH2,
    /// An open connection that a policy update denies.
    PolicyRecheck,
}

impl Rejection {
    pub const ALL: [Rejection; 15] = [
        Rejection::OverLimit,
        Rejection::HandshakeTimeout,
        Rejection::TlsHandshake,
        Rejection::H2Handshake,
        Rejection::BadMethod,
        Rejection::BadAuthority,
        Rejection::NoWorkload,
        Rejection::IllegalPort,
        Rejection::Denied,
        Rejection::UpstreamConnect,
        Rejection::UnknownSource,
        Rejection::Socks5,
        Rejection::UpstreamTls,
        Rejection::UpstreamH2,
        Rejection::PolicyRecheck,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::OverLimit => "over_limit",
            Rejection::HandshakeTimeout => "handshake_timeout",
            Rejection::TlsHandshake => "tls_handshake",
            Rejection::H2Handshake => "h2_handshake",
            Rejection::BadMethod => "bad_method",
            Rejection::BadAuthority => "bad_authority",
            Rejection::NoWorkload => "no_workload",
            Rejection::IllegalPort => "illegal_port",
            Rejection::Denied => "denied",
            Rejection::UpstreamConnect => "upstream_connect",
            Rejection::UnknownSource => "unknown_source",
            Rejection::Socks5 => "socks5",
            Rejection::UpstreamTls => "upstream_tls",
            Rejection::UpstreamH2 => "upstream_h2",
            Rejection::PolicyRecheck => "policy_recheck",
        }
    }
}

/// Per-shard counters the scraper reads.
#[derive(Debug, Default)]
pub struct ShardStats {
    pub connections_open: AtomicI64,
    pub connections_accepted: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub hbone_connections_open: AtomicI64,
    pub rejections: [AtomicU64; Rejection::ALL.len()],
    /// The shard's runtime counters, set once its runtime exists.
    pub runtime: OnceLock<Arc<RuntimeStats>>,
}

impl ShardStats {
    pub fn reject(&self, r: Rejection) {
        TrafficCounters::add(&self.rejections[r as usize], 1);
    }

    pub fn gauge_add(g: &AtomicI64, n: i64) {
        g.store(g.load(Relaxed) + n, Relaxed);
    }
}

type Series = (TrafficLabels, Arc<TrafficCounters>);

/// A shard's handle: its own series map and stats.
#[derive(Debug)]
pub struct ShardMetrics {
    series: RefCell<HashMap<TrafficLabels, Arc<TrafficCounters>>>,
    publish: crossbeam_channel::Sender<Series>,
    pub stats: Arc<ShardStats>,
}

impl ShardMetrics {
    /// The counters for `labels`, created (and announced to the scraper) on first use.
    pub fn traffic(&self, labels: TrafficLabels) -> Arc<TrafficCounters> {
        if let Some(c) = self.series.borrow().get(&labels) {
            return c.clone();
        }
        let counters = Arc::new(TrafficCounters::default());
        // The scraper lives as long as the process; a failed send only loses a series at exit.
        let _ = self.publish.send((labels.clone(), counters.clone()));
        self.series.borrow_mut().insert(labels, counters.clone());
        counters
    }
}

/// The scraper's side: every series of every shard, plus each shard's stats.
#[derive(Debug)]
pub struct MeshMetrics {
    incoming: crossbeam_channel::Receiver<Series>,
    known: Mutex<Vec<Series>>,
    shards: Vec<Arc<ShardStats>>,
}

/// Creates the scraper and one handle per shard.
pub fn new(n: usize) -> (Arc<MeshMetrics>, Vec<ShardMetrics>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut shards = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..n {
        let stats = Arc::new(ShardStats::default());
        shards.push(stats.clone());
        handles.push(ShardMetrics {
            series: RefCell::new(HashMap::new()),
            publish: tx.clone(),
            stats,
        });
    }
    (
        Arc::new(MeshMetrics {
            incoming: rx,
            known: Mutex::new(Vec::new()),
            shards,
        }),
        handles,
    )
}

/// The registry served on /metrics.
pub fn registry(
    mesh: Arc<MeshMetrics>,
    xds: Option<Arc<crate::xds::XdsMetrics>>,
    pods: Option<Arc<crate::zds::PodMetrics>>,
    version: &str,
) -> Registry {
    let mut r = Registry::default();
    let istio = r.sub_registry_with_prefix("istio");
    istio.register_collector(Box::new(IstioCollector {
        mesh: mesh.clone(),
        version: version.to_string(),
    }));
    if let Some(xds) = xds {
        istio.register_collector(Box::new(XdsCollector(xds)));
    }
    if let Some(pods) = pods {
        istio.register_collector(Box::new(crate::zds::PodCollector(pods)));
    }
    r.sub_registry_with_prefix("zmesh")
        .register_collector(Box::new(ShardCollector(mesh)));
    r
}

#[derive(Debug)]
struct IstioCollector {
    mesh: Arc<MeshMetrics>,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    component: &'static str,
    tag: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

pub(crate) fn counter<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in values {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

pub(crate) fn gauge<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in values {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for IstioCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut known = self.mesh.known.lock().unwrap_or_else(|p| p.into_inner());
        known.extend(self.mesh.incoming.try_iter());
        let mut sums: HashMap<&TrafficLabels, [u64; 5]> = HashMap::new();
        for (labels, c) in known.iter() {
            let s = sums.entry(labels).or_default();
            for (i, v) in [&c.opened, &c.closed, &c.failed, &c.received, &c.sent]
                .iter()
                .enumerate()
            {
                s[i] += v.load(Relaxed);
            }
        }
        let pick = |i: usize| sums.iter().map(move |(l, s)| ((*l).clone(), s[i]));
        counter(
            &mut enc,
            "tcp_connections_opened",
            "TCP connections opened",
            pick(0),
        )?;
        counter(
            &mut enc,
            "tcp_connections_closed",
            "TCP connections closed",
            pick(1),
        )?;
        counter(
            &mut enc,
            "tcp_connections_failed",
            "TCP connections that failed",
            pick(2),
        )?;
        counter(
            &mut enc,
            "tcp_received_bytes",
            "Bytes received from the downstream",
            pick(3),
        )?;
        counter(
            &mut enc,
            "tcp_sent_bytes",
            "Bytes sent to the downstream",
            pick(4),
        )?;
        let open: i64 = self
            .mesh
            .shards
            .iter()
            .map(|s| s.connections_open.load(Relaxed))
            .sum();
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Reporter {
            reporter: &'static str,
        }
        gauge(
            &mut enc,
            "tcp_sockets_open",
            "Open sockets",
            [(
                Reporter {
                    reporter: "destination",
                },
                open,
            )],
        )?;
        gauge(
            &mut enc,
            "build",
            "Build information",
            [(
                BuildLabels {
                    component: "zmesh",
                    tag: self.version.clone(),
                },
                1,
            )],
        )
    }
}

#[derive(Debug)]
struct ShardCollector(Arc<MeshMetrics>);

impl Collector for ShardCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let shards = &self.0.shards;
        let label = |i: usize| ShardLabel {
            shard: i.to_string(),
        };
        let rt =
            |s: &ShardStats| -> Arc<RuntimeStats> { s.runtime.get().cloned().unwrap_or_default() };
        let per = |f: &dyn Fn(&ShardStats, &RuntimeStats) -> u64| {
            shards
                .iter()
                .enumerate()
                .map(|(i, s)| (label(i), f(s, &rt(s))))
                .collect::<Vec<_>>()
        };
        let per_gauge = |f: &dyn Fn(&ShardStats, &RuntimeStats) -> i64| {
            shards
                .iter()
                .enumerate()
                .map(|(i, s)| (label(i), f(s, &rt(s))))
                .collect::<Vec<_>>()
        };
        gauge(
            &mut enc,
            "shard_connections",
            "Open connections per shard (downstream and upstream sockets)",
            per_gauge(&|s, _| s.connections_open.load(Relaxed)),
        )?;
        gauge(
            &mut enc,
            "shard_hbone_pool_connections",
            "Pooled outbound HBONE connections per shard",
            per_gauge(&|s, _| s.hbone_connections_open.load(Relaxed)),
        )?;
        counter(
            &mut enc,
            "shard_accepted_connections",
            "Connections accepted per shard",
            per(&|s, _| s.connections_accepted.load(Relaxed)),
        )?;
        counter(
            &mut enc,
            "shard_received_bytes",
            "Payload bytes read from apps and peers per shard",
            per(&|s, _| s.bytes_in.load(Relaxed)),
        )?;
        counter(
            &mut enc,
            "shard_sent_bytes",
            "Payload bytes written to apps and peers per shard",
            per(&|s, _| s.bytes_out.load(Relaxed)),
        )?;
        counter(
            &mut enc,
            "shard_ring_submissions",
            "IO operations submitted per shard",
            per(&|_, r| r.submissions.load(Relaxed)),
        )?;
        counter(
            &mut enc,
            "shard_ring_completions",
            "IO completions handled per shard",
            per(&|_, r| r.completions.load(Relaxed)),
        )?;
        counter(
            &mut enc,
            "shard_task_polls",
            "Task polls per shard",
            per(&|_, r| r.polls.load(Relaxed)),
        )?;
        gauge(
            &mut enc,
            "shard_queue_depth",
            "IO operations in flight per shard",
            per_gauge(&|_, r| r.queue_depth.load(Relaxed) as i64),
        )?;
        let secs = |ns: u64| ns as f64 / 1e9;
        let mut busy = enc.encode_descriptor(
            "shard_busy_seconds",
            "Time each shard spent working",
            None,
            MetricType::Counter,
        )?;
        for (i, s) in shards.iter().enumerate() {
            ConstCounter::new(secs(rt(s).busy_ns.load(Relaxed)))
                .encode(busy.encode_family(&label(i))?)?;
        }
        let mut idle = enc.encode_descriptor(
            "shard_idle_seconds",
            "Time each shard spent waiting for IO",
            None,
            MetricType::Counter,
        )?;
        for (i, s) in shards.iter().enumerate() {
            ConstCounter::new(secs(rt(s).idle_ns.load(Relaxed)))
                .encode(idle.encode_family(&label(i))?)?;
        }
        let reasons = Rejection::ALL.iter().map(|r| {
            let n = shards
                .iter()
                .map(|s| s.rejections[*r as usize].load(Relaxed))
                .sum();
            (ReasonLabel { reason: r.as_str() }, n)
        });
        counter(
            &mut enc,
            "rejections",
            "Connections and tunnels refused, by reason",
            reasons,
        )
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeUrlLabel {
    url: String,
}

/// `istio_xds_connection_terminations_total`, `istio_xds_message_total` and
/// `istio_xds_message_bytes_total{url}`.
#[derive(Debug)]
struct XdsCollector(Arc<crate::xds::XdsMetrics>);

impl Collector for XdsCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let x = &self.0;
        counter(
            &mut enc,
            "xds_connection_terminations",
            "xDS streams that ended",
            [(Vec::<(String, String)>::new(), x.terminations.load(Relaxed))],
        )?;
        let m = x.messages.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let by = |f: fn(&(u64, u64)) -> u64| {
            m.iter()
                .map(move |(k, v)| (TypeUrlLabel { url: k.clone() }, f(v)))
                .collect::<Vec<_>>()
        };
        counter(
            &mut enc,
            "xds_message",
            "xDS responses received, by type url",
            by(|v| v.0),
        )?;
        counter(
            &mut enc,
            "xds_message_bytes",
            "Bytes of xDS responses received, by type url",
            by(|v| v.1),
        )
    }
}
