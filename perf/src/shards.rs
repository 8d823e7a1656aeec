//! zmesh's per-shard metrics, scraped from each node's Prometheus endpoint before and after a
//! run: the counters' growth over the run, per (node, shard). OpenMetrics names counters
//! `zmesh_shard_<name>_total`; the suffix is dropped here.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context;

/// One node's shard metrics at one instant: (shard, metric) → value.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub node: String,
    pub values: BTreeMap<(u32, String), f64>,
}

/// What one shard did over a run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ShardDelta {
    pub node: String,
    pub shard: u32,
    pub busy_seconds: f64,
    pub idle_seconds: f64,
    /// busy / (busy + idle) over the run: the share of the shard thread's time spent working.
    pub busy_fraction: Option<f64>,
    pub ring_submissions: f64,
    pub ring_completions: f64,
    pub task_polls: f64,
    pub accepted_connections: f64,
    pub received_bytes: f64,
    pub sent_bytes: f64,
    /// Gauges at the end of the run.
    pub connections_after: f64,
    pub queue_depth_after: f64,
}

/// Reads `http://addr/metrics`.
pub fn scrape(node: &str, addr: SocketAddr) -> anyhow::Result<Scrape> {
    let (status, body) = crate::zmesh::http_get(addr, "/metrics")
        .with_context(|| format!("scraping {node} metrics on {addr}"))?;
    anyhow::ensure!(status == 200, "{node} /metrics answered {status}");
    let s = parse(node, &body);
    anyhow::ensure!(
        !s.values.is_empty(),
        "{node} /metrics has no zmesh_shard_ series"
    );
    Ok(s)
}

/// Picks the `zmesh_shard_*{shard="N"}` samples out of a text exposition.
pub fn parse(node: &str, text: &str) -> Scrape {
    let mut values = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("zmesh_shard_")) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        let Some(shard) = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("shard=\""))
            .and_then(|v| v.trim_end_matches(['}', '"']).parse::<u32>().ok())
        else {
            continue;
        };
        let metric = name
            .trim_start_matches("zmesh_shard_")
            .trim_end_matches("_total");
        if let Ok(v) = value.trim().parse::<f64>() {
            values.insert((shard, metric.to_string()), v);
        }
    }
    Scrape {
        node: node.to_string(),
        values,
    }
}

/// Per-shard growth from `a` to `b` (same node).
pub fn delta(a: &Scrape, b: &Scrape) -> Vec<ShardDelta> {
    let shards: std::collections::BTreeSet<u32> = b.values.keys().map(|(s, _)| *s).collect();
    shards
        .into_iter()
        .map(|shard| {
            let at = |s: &Scrape, m: &str| {
                s.values
                    .get(&(shard, m.to_string()))
                    .copied()
                    .unwrap_or(0.0)
            };
            let d = |m: &str| (at(b, m) - at(a, m)).max(0.0);
            let (busy, idle) = (d("busy_seconds"), d("idle_seconds"));
            ShardDelta {
                node: b.node.clone(),
                shard,
                busy_seconds: busy,
                idle_seconds: idle,
                busy_fraction: (busy + idle > 0.0).then(|| busy / (busy + idle)),
                ring_submissions: d("ring_submissions"),
                ring_completions: d("ring_completions"),
                task_polls: d("task_polls"),
                accepted_connections: d("accepted_connections"),
                received_bytes: d("received_bytes"),
                sent_bytes: d("sent_bytes"),
                connections_after: at(b, "connections"),
                queue_depth_after: at(b, "queue_depth"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_subtracts() {
        let a = parse(
            "node-a",
            "# TYPE zmesh_shard_busy_seconds counter\n\
             zmesh_shard_busy_seconds_total{shard=\"0\"} 1.5\n\
             zmesh_shard_idle_seconds_total{shard=\"0\"} 2.0\n\
             zmesh_shard_ring_submissions_total{shard=\"1\"} 10\n\
             zmesh_other 7\n",
        );
        let b = parse(
            "node-a",
            "zmesh_shard_busy_seconds_total{shard=\"0\"} 2.5\n\
             zmesh_shard_idle_seconds_total{shard=\"0\"} 5.0\n\
             zmesh_shard_ring_submissions_total{shard=\"1\"} 25\n\
             zmesh_shard_queue_depth{shard=\"1\"} 3\n",
        );
        let d = delta(&a, &b);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].busy_seconds, 1.0);
        assert_eq!(d[0].busy_fraction, Some(0.25));
        assert_eq!(d[1].ring_submissions, 15.0);
        assert_eq!(d[1].queue_depth_after, 3.0);
    }
}
