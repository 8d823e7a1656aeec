//! Issue 5's targets, judged against a run's medians: each row names the records its value
//! comes from, and says pass, FAIL, or `–` when the run did not measure it.

use std::fmt::Write;

use crate::method::record::Record;
use crate::method::report::{Rows, points};
use crate::report::Spread;
use crate::suite_report::num;

/// One target and where a system stands against it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Judged {
    pub system: String,
    pub target: &'static str,
    pub value: Option<f64>,
    pub unit: &'static str,
    pub pass: Option<bool>,
    pub records: String,
}

fn med(s: Option<Spread>) -> Option<f64> {
    s.map(|s| s.median)
}

/// Every target for every proxied system.
pub fn judge(records: &[Record], systems: &[String], pace: f64) -> Vec<Judged> {
    let mut out = Vec::new();
    for sys in systems.iter().filter(|s| *s != "direct") {
        let mut push = |target, value: Option<f64>, unit, ok: fn(f64) -> bool, records: String| {
            out.push(Judged {
                system: sys.clone(),
                target,
                value,
                unit,
                pass: value.map(ok),
                records,
            })
        };
        let iperf = points(records, "iperf3");
        let one = Rows::of(records, "iperf3 ×1", sys);
        push(
            "single-stream throughput ≥ 6.3 Gbit/s",
            med(one.metric(|r| r.gbit_per_s)),
            "Gbit/s",
            |v| v >= 6.3,
            one.ids(),
        );
        push(
            "proxy CPU per GB (one stream, both proxies) ≤ 1.6 CPU-s/GB",
            med(one.metric(|r| r.proxy_cpu_s_per_gb)),
            "CPU-s/GB",
            |v| v <= 1.6,
            one.ids(),
        );
        let paced = format!("sockperf @{}/s", num(pace));
        let (zp, dp) = (
            Rows::of(records, &paced, sys),
            Rows::of(records, &paced, "direct"),
        );
        let added = med(zp.metric(|r| r.sockperf.map(|s| s.p50_us)))
            .zip(med(dp.metric(|r| r.sockperf.map(|s| s.p50_us))))
            .map(|(z, d)| z - d);
        push(
            "p50 added round trip at 1,000 msg/s ≤ 127 µs over direct",
            added.filter(|_| pace == 1000.0),
            "µs",
            |v| v <= 127.0,
            format!("{} vs {}", zp.ids(), dp.ids()),
        );
        let max = Rows::of(records, "sockperf max", sys);
        push(
            "back-to-back round trips ≥ 11,000/s",
            med(max.metric(|r| r.sockperf.map(|s| s.round_trips_per_s))),
            "/s",
            |v| v >= 11_000.0,
            max.ids(),
        );
        let ab = points(records, "ab");
        let abr = Rows::of(records, ab.first().map(String::as_str).unwrap_or(""), sys);
        push(
            "new connections ≥ 4,600/s",
            med(abr.metric(|r| r.ab.map(|a| a.requests_per_s))),
            "/s",
            |v| v >= 4_600.0,
            abr.ids(),
        );
        push(
            "proxy CPU per new connection ≤ 0.285 ms (half of ztunnel's)",
            med(abr.metric(|r| r.proxy_cpu_ms_per_connection)),
            "ms",
            |v| v <= 0.285,
            abr.ids(),
        );
        let mem = Rows::of(records, "memory", sys);
        // The larger of the two proxies: the target is per proxy.
        push(
            "RSS per idle node proxy < 10 MiB",
            med(mem.metric(|r| {
                (r.memory.iter())
                    .filter_map(|m| m.idle_rss_kib)
                    .max()
                    .map(|k| k as f64 / 1024.0)
            })),
            "MiB",
            |v| v < 10.0,
            mem.ids(),
        );
        let idle = points(records, "idle");
        let idr = Rows::of(records, idle.first().map(String::as_str).unwrap_or(""), sys);
        push(
            "memory per idle tunnel < 8 KiB",
            med(idr.metric(|r| r.idle.as_ref().map(|i| i.kib_per_connection))),
            "KiB",
            |v| v < 8.0,
            idr.ids(),
        );
        let four = Rows::of(records, "iperf3 ×4", sys);
        let ratio = med(four.metric(|r| r.gbit_per_s))
            .zip(med(one.metric(|r| r.gbit_per_s)))
            .filter(|_| iperf.len() > 1)
            .map(|(f, o)| f / o);
        push(
            "four streams faster than one (×4 ÷ ×1 > 1)",
            ratio,
            "×",
            |v| v > 1.0,
            format!("{} vs {}", four.ids(), one.ids()),
        );
    }
    out
}

pub fn markdown(judged: &[Judged]) -> String {
    if judged.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\n### Issue 5's targets (medians of this run)\n\n\
         | system | target | value | verdict | records |\n|---|---|---:|---|---|\n",
    );
    for j in judged {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            j.system,
            j.target,
            j.value
                .map(|v| format!("{} {}", num(v), j.unit))
                .unwrap_or_else(|| "–".into()),
            match j.pass {
                Some(true) => "pass",
                Some(false) => "**FAIL**",
                None => "not measured",
            },
            j.records
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::tools::Sockperf;

    fn rec(id: usize, system: &str, point: &str) -> Record {
        Record {
            id,
            system: system.into(),
            step: point.split_whitespace().next().unwrap_or("").into(),
            point: point.into(),
            repetition: 1,
            ..Record::default()
        }
    }

    fn lat(p50: f64) -> Option<Sockperf> {
        Some(Sockperf {
            round_trips: 1,
            seconds: 1.0,
            round_trips_per_s: 1.0,
            avg_us: p50,
            p50_us: p50,
            p90_us: p50,
            p99_us: p50,
            p999_us: p50,
            max_us: p50,
        })
    }

    #[test]
    fn medians_pass_fail_and_unmeasured() {
        let mut v = Vec::new();
        for (id, g) in [(1, 7.0), (2, 5.0), (3, 9.0)] {
            v.push(Record {
                gbit_per_s: Some(g),
                ..rec(id, "zmesh", "iperf3 ×1")
            });
        }
        // A failed run counts for nothing, even with a number in it.
        v.push(Record {
            gbit_per_s: Some(100.0),
            error: Some("boom".into()),
            ..rec(4, "zmesh", "iperf3 ×1")
        });
        v.push(Record {
            sockperf: lat(100.0),
            ..rec(5, "direct", "sockperf @1000/s")
        });
        v.push(Record {
            sockperf: lat(300.0),
            ..rec(6, "zmesh", "sockperf @1000/s")
        });
        let systems = vec!["direct".to_string(), "zmesh".to_string()];
        let j = judge(&v, &systems, 1000.0);
        let find = |p: &str| j.iter().find(|t| t.target.starts_with(p)).expect(p);
        let one = find("single-stream");
        assert_eq!((one.value, one.pass), (Some(7.0), Some(true)));
        assert_eq!(one.records, "#1 #2 #3 #4!");
        let added = find("p50 added");
        assert_eq!((added.value, added.pass), (Some(200.0), Some(false)));
        assert_eq!(find("new connections").pass, None);
        assert!(j.iter().all(|t| t.system == "zmesh"));
        // At another pace the 1,000 msg/s target is not measured.
        let j = judge(&v, &systems, 500.0);
        assert_eq!(
            j.iter()
                .find(|t| t.target.starts_with("p50 added"))
                .and_then(|t| t.value),
            None
        );
        let md = markdown(&judge(&v, &systems, 1000.0));
        assert!(md.contains("| zmesh | single-stream throughput ≥ 6.3 Gbit/s | 7.00 Gbit/s | pass | #1 #2 #3 #4! |"), "{md}");
    }
}
