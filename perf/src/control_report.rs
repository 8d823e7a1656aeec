//! Raw records of `zmesh-perf control` and the markdown summary made from them. Every number
//! in the table is a median (with min–max) over the records of one run, or one record's value.

use std::fmt::Write as _;

use crate::control_gen::Shape;
use crate::control_procs::XdsCounters;
use crate::procfs::Memory;
use crate::report::{Spread, spread};

/// One add-then-delete of the DENY policy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PolicyRecord {
    pub repetition: u32,
    /// File renamed into place → both probe servers refuse the probe client.
    pub apply_s: f64,
    /// File deleted → both serve it again.
    pub delete_s: f64,
    pub apply_probes: u32,
    pub delete_probes: u32,
}

/// One change of one pod's labels.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OnePodRecord {
    pub repetition: u32,
    /// File renamed into place → both nodes' Address message counters moved.
    pub both_nodes_s: f64,
    /// Controller user+system CPU from just before the change to TRAILING after both nodes
    /// had it.
    pub control_cpu_s: f64,
    /// What each node received for the change.
    pub node_a: XdsCounters,
    pub node_b: XdsCounters,
}

/// One run (one generated cluster, one controller, two nodes).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunRecord {
    pub shape: Shape,
    /// Controller spawn → accepting connections (it loads and translates the directory first).
    pub control_listening_s: f64,
    /// Controller spawn → both nodes ready (nodes started once it listened).
    pub nodes_ready_s: f64,
    /// Controller spawn → the last change of either node's xDS counters in the initial push.
    pub first_full_push_s: f64,
    /// Both nodes' counters once the initial push settled: the full set.
    pub initial: [XdsCounters; 2],
    /// Controller user+system CPU from spawn to the settled initial push.
    pub control_cpu_initial_s: f64,
    /// Controller memory with both nodes connected, after the initial push.
    pub control_memory_started: Memory,
    pub control_memory_end: Memory,
    pub node_memory_end: [Memory; 2],
    pub policy: Vec<PolicyRecord>,
    pub one_pod: Vec<OnePodRecord>,
}

impl RunRecord {
    fn of(&self, f: impl Fn(&OnePodRecord) -> f64) -> Option<Spread> {
        spread(&self.one_pod.iter().map(f).collect::<Vec<_>>())
    }

    fn policy_of(&self, f: impl Fn(&PolicyRecord) -> f64) -> Option<Spread> {
        spread(&self.policy.iter().map(f).collect::<Vec<_>>())
    }
}

/// Compact number: whole numbers (counts, bytes) as they are, others with 3 significant-ish
/// digits as in the suite's report.
pub fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() >= 1.0 {
        return format!("{x:.0}");
    }
    match x.abs() {
        a if a >= 100.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        _ => format!("{x:.2}"),
    }
}

/// "median (min–max)", or the median alone when the range collapses; "–" when absent.
pub fn cell(s: Option<Spread>) -> String {
    match s {
        None => "–".into(),
        Some(s) => {
            let (lo, hi) = (num(s.min), num(s.max));
            if lo == hi {
                num(s.median)
            } else {
                format!("{} ({lo}–{hi})", num(s.median))
            }
        }
    }
}

fn one(x: f64) -> String {
    cell(spread(&[x]))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

type Row = (&'static str, Box<dyn Fn(&RunRecord) -> String>);

fn rows() -> Vec<Row> {
    vec![
        (
            "DENY policy added → enforced on both nodes (ms)",
            Box::new(|r| cell(r.policy_of(|p| p.apply_s * 1e3))),
        ),
        (
            "DENY policy deleted → both nodes serve again (ms)",
            Box::new(|r| cell(r.policy_of(|p| p.delete_s * 1e3))),
        ),
        (
            "one-pod change → both nodes received it (ms)",
            Box::new(|r| cell(r.of(|o| o.both_nodes_s * 1e3))),
        ),
        (
            "full initial push, Address bytes (node-a)",
            Box::new(|r| one(r.initial[0].address_bytes as f64)),
        ),
        (
            "full initial push, Authorization bytes (node-a)",
            Box::new(|r| one(r.initial[0].authorization_bytes as f64)),
        ),
        (
            "full initial push, xDS messages (node-a)",
            Box::new(|r| one(r.initial[0].all_messages as f64)),
        ),
        (
            "one-pod change, Address bytes (node-a)",
            Box::new(|r| cell(r.of(|o| o.node_a.address_bytes as f64))),
        ),
        (
            "one-pod change, Address bytes (node-b)",
            Box::new(|r| cell(r.of(|o| o.node_b.address_bytes as f64))),
        ),
        (
            "one-pod change, all xDS bytes (node-a)",
            Box::new(|r| cell(r.of(|o| o.node_a.all_bytes as f64))),
        ),
        (
            "one-pod change, xDS messages (node-a)",
            Box::new(|r| cell(r.of(|o| o.node_a.all_messages as f64))),
        ),
        (
            "full push ÷ one-pod change, Address bytes (node-a)",
            Box::new(|r| {
                let full = r.initial[0].address_bytes as f64;
                cell(r.of(|o| full / (o.node_a.address_bytes.max(1) as f64)))
            }),
        ),
        (
            "controller start → listening (s)",
            Box::new(|r| one(r.control_listening_s)),
        ),
        (
            "controller start → both nodes ready (s)",
            Box::new(|r| one(r.nodes_ready_s)),
        ),
        (
            "controller start → full push done (s)",
            Box::new(|r| one(r.first_full_push_s)),
        ),
        (
            "controller CPU, start-up and initial push (s)",
            Box::new(|r| one(r.control_cpu_initial_s)),
        ),
        (
            "controller CPU per one-pod change (s)",
            Box::new(|r| cell(r.of(|o| o.control_cpu_s))),
        ),
        (
            "controller VmRSS after the initial push (MiB)",
            Box::new(|r| one(mib(r.control_memory_started.vm_rss_kib))),
        ),
        (
            "controller VmRSS at the end (MiB)",
            Box::new(|r| one(mib(r.control_memory_end.vm_rss_kib))),
        ),
        (
            "controller VmHWM at the end (MiB)",
            Box::new(|r| one(mib(r.control_memory_end.vm_hwm_kib))),
        ),
        (
            "node-a VmRSS at the end (MiB)",
            Box::new(|r| one(mib(r.node_memory_end[0].vm_rss_kib))),
        ),
    ]
}

fn heading(r: &RunRecord) -> String {
    format!("{} pods, {} policies", r.shape.pods, r.shape.policies)
}

/// The summary: one row per measurement, one column per run.
pub fn markdown(main: &RunRecord, scale: Option<&RunRecord>, warnings: &[String]) -> String {
    let runs: Vec<&RunRecord> = std::iter::once(main).chain(scale).collect();
    let mut out = String::from("# zmesh-perf control\n\n");
    for w in warnings {
        let _ = writeln!(out, "> warning: {w}\n");
    }
    let _ = writeln!(
        out,
        "Median (min–max) over {} repetitions; single values are one measurement. Policy times \
         are seen through the data path (SOCKS5 connects through node-a to a probe pod on each \
         node, every 5 ms); bytes are the nodes' `istio_xds_message_bytes_total`; CPU is \
         user+system of zmesh-control from /proc (10 ms ticks).\n",
        main.policy.len().max(main.one_pod.len())
    );
    let _ = write!(out, "| measurement |");
    for r in &runs {
        let _ = write!(out, " {} |", heading(r));
    }
    let _ = write!(out, "\n|---|");
    for _ in &runs {
        let _ = write!(out, "---|");
    }
    out.push('\n');
    for (name, f) in rows() {
        let _ = write!(out, "| {name} |");
        for r in &runs {
            let _ = write!(out, " {} |", f(r));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells() {
        assert_eq!(cell(None), "–");
        assert_eq!(cell(spread(&[3.5, 1.25, 2.5])), "2.50 (1.25–3.50)");
        assert_eq!(cell(spread(&[3.0, 1.0, 2.0])), "2 (1–3)");
        assert_eq!(cell(spread(&[150.0])), "150");
        assert_eq!(cell(spread(&[2.0])), "2", "counts print as integers");
    }
}
