//! `zmesh-perf suite` end to end on loopback, against no mesh and test-double proxies started
//! from command templates (the plain relay, the delay proxy): the report's numbers trace back
//! to raw records, an injected delay shows up as latency, and bad arguments produce an error
//! and no report. zmesh itself is not started here (its numbers are not asserted anywhere).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const PERF: &str = env!("CARGO_BIN_EXE_zmesh-perf");

fn suite(out: &Path, args: &[&str]) -> Output {
    Command::new(PERF)
        .arg("suite")
        .arg("--out")
        .arg(out)
        .args(["--crypto-time", "100ms"])
        .args(args)
        .output()
        .expect("run zmesh-perf")
}

/// The one results folder a run wrote into `out`.
fn results_dir(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("out dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// The report's number format (perf/src/suite_report.rs `num`).
fn num(x: f64) -> String {
    match x.abs() {
        a if a >= 100.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        _ => format!("{x:.2}"),
    }
}

fn median_cell(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let (lo, hi) = (num(v[0]), num(v[n - 1]));
    if lo == hi {
        num(m)
    } else {
        format!("{} ({lo}–{hi})", num(m))
    }
}

/// Rows of the markdown table under `heading`: header names → cells.
fn table(md: &str, heading: &str) -> Vec<Vec<(String, String)>> {
    let start = md
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} missing:\n{md}"));
    let lines: Vec<&str> = md[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .collect();
    let split = |l: &str| -> Vec<String> {
        l.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let head = split(lines[0]);
    lines[2..]
        .iter()
        .map(|l| head.iter().cloned().zip(split(l)).collect())
        .collect()
}

fn get<'a>(row: &'a [(String, String)], col: &str) -> &'a str {
    &row.iter()
        .find(|(h, _)| h == col)
        .unwrap_or_else(|| panic!("no column {col}"))
        .1
}

/// The records a row names, looked up in the JSON.
fn records_of<'a>(row: &[(String, String)], json: &'a Value) -> Vec<&'a Value> {
    let all = json["records"].as_array().expect("records");
    let ids: Vec<u64> = get(row, "records")
        .split_whitespace()
        .map(|t| t.trim_start_matches('#').parse().expect("record id"))
        .collect();
    assert!(!ids.is_empty(), "row names no records: {row:?}");
    ids.iter()
        .map(|id| {
            all.iter()
                .find(|r| r["id"].as_u64() == Some(*id))
                .unwrap_or_else(|| panic!("record #{id} not in the JSON"))
        })
        .collect()
}

fn check_column(row: &[(String, String)], json: &Value, col: &str, f: impl Fn(&Value) -> f64) {
    let recs = records_of(row, json);
    for r in &recs {
        assert_eq!(r["system"].as_str(), Some(get(row, "system")), "{row:?}");
        assert!(r["error"].is_null(), "failed record {r}");
    }
    let want = median_cell(recs.iter().map(|r| f(r)).collect());
    assert_eq!(get(row, col), want, "{col} of {row:?}");
}

#[test]
fn quick_suite_report_is_traceable_to_raw_records() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = suite(
        out.path(),
        &[
            "--quick",
            "--systems",
            "direct",
            "--proxy",
            "name=double,cmd={perf} relay --listen {listen} --upstream {upstream} --threads 1",
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
            "--rates",
            "300,600",
            "--connections",
            "1,2",
            "--http-rate",
            "300",
            "--churn-rate",
            "100",
            "--idle-connections",
            "40",
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "suite failed: {stderr}");
    assert!(stderr.contains("/30 "), "no progress lines: {stderr}");
    let dir = results_dir(out.path());
    let md = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    let json: Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("report.json"))
            .expect("JSON");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .split("\nResults:")
            .next(),
        Some(md.as_str())
    );
    // (2 repetitions × 7 points + idle once) × 2 systems.
    assert_eq!(json["records"].as_array().expect("records").len(), 30);

    let lat = table(&md, "### Request/response latency");
    assert_eq!(lat.len(), 2 * 5, "{md}");
    for row in &lat {
        check_column(row, &json, "p50", |r| {
            r["latency"]["p50_us"].as_f64().expect("p50")
        });
        check_column(row, &json, "p99", |r| {
            r["latency"]["p99_us"].as_f64().expect("p99")
        });
    }
    let thr = table(&md, "### Throughput");
    assert_eq!(thr.len(), 2 * 2, "{md}");
    for row in &thr {
        check_column(row, &json, "Gbit/s", |r| {
            r["gbit_per_s"].as_f64().expect("gbit")
        });
        if get(row, "system") == "double" {
            check_column(row, &json, "proxy CPU-s per GB", |r| {
                r["proxy_cpu_s_per_gb"].as_f64().expect("cpu per GB")
            });
        }
    }
    let idle = table(&md, "### Idle connections");
    let double = idle
        .iter()
        .find(|r| get(r, "system") == "double")
        .expect("double row");
    check_column(double, &json, "KiB per connection", |r| {
        r["idle"]["kib_per_connection"].as_f64().expect("kib")
    });
    for c in json["crypto"].as_array().expect("crypto") {
        let row = format!(
            "| {} | {} | {} |",
            c["algorithm"].as_str().expect("alg"),
            num(c["seal_gb_per_s"].as_f64().expect("seal")),
            num(c["seal_open_gb_per_s"].as_f64().expect("both"))
        );
        assert!(md.contains(&row), "{row} missing:\n{md}");
    }
    for plot in ["latency-p50-vs-rate.svg", "throughput-vs-connections.svg"] {
        let svg = std::fs::read_to_string(dir.join(plot)).expect(plot);
        assert!(svg.contains("double") && svg.contains("direct"), "{plot}");
    }
}

#[test]
fn delay_proxy_latency_shows_in_the_report() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = suite(
        out.path(),
        &[
            "--systems",
            "direct",
            "--proxy",
            "name=slow,cmd={perf} delay-proxy --listen {listen} --upstream {upstream} --delay 1ms",
            "--scenarios",
            "tcp-latency,http1",
            "--rates",
            "200",
            "--http-rate",
            "200",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--repeat",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = results_dir(out.path());
    let json: Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("json"))
            .expect("JSON");
    let recs = json["records"].as_array().expect("records");
    for scenario in ["tcp-latency", "http1"] {
        let p50 = |sys: &str| {
            recs.iter()
                .find(|r| r["system"] == sys && r["scenario"] == scenario)
                .and_then(|r| r["latency"]["p50_us"].as_f64())
                .unwrap_or_else(|| panic!("{scenario} {sys} p50 missing: {json}"))
        };
        // 1 ms each way: a round trip gains 2 ms. Scheduling on a busy 2-core machine adds
        // some, so the window is generous above and tight below.
        let added = p50("slow") - p50("direct");
        assert!(
            (1_800.0..3_000.0).contains(&added),
            "{scenario}: the delay proxy added {added:.0} µs to p50, expected about 2000"
        );
    }
}

/// Runs the suite with bad arguments: a non-zero exit, an error that names the problem, and
/// no report written.
fn fails(args: &[&str], says: &str) {
    let out = tempfile::tempdir().expect("tempdir");
    let o = suite(out.path(), args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(
        stderr.contains(says),
        "{args:?}: stderr lacks {says:?}:\n{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(out.path()).expect("out").collect();
    assert!(left.is_empty(), "{args:?} left a report: {left:?}");
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains('|'),
        "{args:?} printed a table"
    );
}

#[test]
fn bad_arguments_give_an_error_and_no_report() {
    fails(&["--rates", "-5"], "greater than zero");
    fails(&["--http-rate", "0"], "greater than zero");
    fails(&["--scenarios", "tcp-latency,warp-speed"], "warp-speed");
    fails(&["--systems", "direct,istio"], "unknown system \"istio\"");
    fails(
        &[
            "--systems",
            "direct",
            "--proxy",
            "name=dead,cmd=sh -c 'exit 3'",
        ],
        "proxy dead",
    );
    fails(
        &[
            "--systems",
            "direct",
            "--proxy",
            "name=x,cmd={perf} relay --listen {lisen}",
        ],
        "unknown placeholder {lisen}",
    );
    fails(&["--systems", "direct", "--proxy", "name=nocmd"], "cmd=");
}

#[test]
fn a_proxy_that_exits_at_once_is_reported_with_its_status() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = suite(
        out.path(),
        &[
            "--systems",
            "direct",
            "--proxy",
            "name=dead,cmd=sh -c 'echo broken config >&2; exit 3'",
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("exit status: 3"), "{stderr}");
    assert!(stderr.contains("broken config"), "{stderr}");
}
