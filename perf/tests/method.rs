//! `zmesh-perf bench-method` end to end, as root, on the netns topology in its quickest form
//! (one repetition of 1 s runs, direct and zmesh): the report's cells and targets are the
//! medians of the raw records they name, every tool run kept its raw output, zmesh's runs
//! went through both node proxies (their CPU and shard byte counters moved), direct's through
//! none. No timing is asserted. Also: bad arguments and missing tools fail before anything is
//! written. Needs the debug binaries of the mesh (`cargo build --workspace --bins`) and
//! iperf3, sockperf, apache2-utils, nginx-light (CI installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const PERF: &str = env!("CARGO_BIN_EXE_zmesh-perf");

/// Runs in `cwd` with the default, relative, results folder (`perf/results`), as a user does.
fn method(cwd: &Path, args: &[&str]) -> Output {
    Command::new(PERF)
        .current_dir(cwd)
        .arg("bench-method")
        .args(args)
        .output()
        .expect("run zmesh-perf")
}

fn num(x: f64) -> String {
    match x.abs() {
        a if a >= 100.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        _ => format!("{x:.2}"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_cell(v: Vec<f64>) -> String {
    let (lo, hi) = (
        num(v.iter().copied().fold(f64::INFINITY, f64::min)),
        num(v.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
    );
    let m = num(median(v));
    if lo == hi {
        m
    } else {
        format!("{m} ({lo}–{hi})")
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
        .unwrap_or_else(|| panic!("no {col} in {row:?}"))
        .1
}

/// The records a row names (`#3 #9`).
fn cited<'a>(records: &'a [Value], row: &[(String, String)]) -> Vec<&'a Value> {
    get(row, "records")
        .split_whitespace()
        .map(|id| {
            let id: u64 = id
                .trim_start_matches('#')
                .trim_end_matches('!')
                .parse()
                .expect("id");
            records
                .iter()
                .find(|r| r["id"] == id)
                .unwrap_or_else(|| panic!("record #{id}"))
        })
        .collect()
}

/// A cell recomputed from the records the row cites.
fn check_cell(
    records: &[Value],
    row: &[(String, String)],
    col: &str,
    f: impl Fn(&Value) -> Option<f64>,
) {
    let rs = cited(records, row);
    for r in &rs {
        assert_eq!(
            r["system"].as_str(),
            Some(get(row, "system")),
            "{row:?} cites {r}"
        );
    }
    let v: Vec<f64> = rs
        .iter()
        .filter(|r| r["error"].is_null())
        .filter_map(|r| f(r))
        .collect();
    let want = if v.is_empty() {
        "–".to_string()
    } else {
        median_cell(v)
    };
    assert_eq!(get(row, col), want, "column {col} of {row:?}");
}

#[test]
fn quickest_run_is_consistent_with_its_records() {
    let out = tempfile::tempdir().expect("tempdir");
    let bin_dir = Path::new(PERF).parent().expect("bin dir").to_path_buf();
    let o = method(
        out.path(),
        &[
            "--quick",
            "--duration",
            "1",
            "--repeat",
            "1",
            "--idle-connections",
            "20",
            "--crypto-seconds",
            "1",
            "--bin-dir",
            bin_dir.to_str().expect("utf-8"),
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "bench-method failed:\n{stderr}");
    let dirs: Vec<PathBuf> = std::fs::read_dir(out.path().join("perf/results"))
        .expect("out")
        .map(|e| e.expect("e").path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let dir = &dirs[0];
    let md = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    let json: Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("json"))
            .expect("parse");
    let records = json["records"].as_array().expect("records").clone();
    assert!(json["aborted"].is_null(), "{}", json["aborted"]);

    for r in &records {
        assert!(r["error"].is_null(), "record failed: {r}");
        let sys = r["system"].as_str().expect("system");
        let step = r["step"].as_str().expect("step");
        if let Some(raw) = r["raw"].as_str() {
            assert!(dir.join(raw).is_file(), "raw output {raw} missing");
        } else {
            assert!(
                matches!(step, "memory" | "idle"),
                "{step} without raw output: {r}"
            );
        }
        if step == "memory" || step == "idle" {
            assert_ne!(sys, "direct");
            continue;
        }
        let proxies = r["cpu"]["per_proxy"].as_array().expect("per_proxy");
        if sys == "direct" {
            assert!(proxies.is_empty(), "direct has proxies: {r}");
            continue;
        }
        // Both node proxies carried this run: each spent CPU, and their shards moved bytes.
        assert_eq!(proxies.len(), 2, "{r}");
        for p in proxies {
            assert!(
                p[2].as_f64().expect("cpu") > 0.0,
                "a proxy did no work: {r}"
            );
        }
        let shard_bytes: f64 = r["shards"]
            .as_array()
            .expect("shards")
            .iter()
            .map(|s| s["received_bytes"].as_f64().unwrap_or(0.0))
            .sum();
        if step == "iperf3" {
            let got = r["iperf"]["bytes_received"].as_f64().expect("bytes");
            assert!(
                got > 0.0 && shard_bytes >= got,
                "shards saw {shard_bytes} B of {got} B: {r}"
            );
            let per_gb = r["proxy_cpu_s_per_gb"].as_f64().expect("per GB");
            let cpu = r["cpu"]["proxy_cpu_seconds"].as_f64().expect("cpu");
            assert!(
                (per_gb - cpu / (got / 1e9)).abs() < 1e-9 * per_gb.max(1.0),
                "{r}"
            );
        } else {
            assert!(shard_bytes > 0.0, "shards saw no bytes: {r}");
        }
    }
    for sys in ["direct", "zmesh"] {
        for point in [
            "iperf3 ×1",
            "iperf3 ×4",
            "sockperf @1000/s",
            "sockperf max",
            "ab c8",
        ] {
            assert!(
                records
                    .iter()
                    .any(|r| r["system"] == sys && r["point"] == point),
                "{sys} {point}"
            );
        }
    }

    for row in table(&md, "### Throughput") {
        check_cell(&records, &row, "Gbit/s", |r| r["gbit_per_s"].as_f64());
        check_cell(&records, &row, "proxy CPU-s per GB", |r| {
            r["proxy_cpu_s_per_gb"].as_f64()
        });
    }
    for row in table(&md, "### Latency") {
        check_cell(&records, &row, "p50", |r| r["sockperf"]["p50_us"].as_f64());
        check_cell(&records, &row, "p99", |r| r["sockperf"]["p99_us"].as_f64());
        check_cell(&records, &row, "round trips/s", |r| {
            r["sockperf"]["round_trips_per_s"].as_f64()
        });
    }
    for row in table(&md, "### New connections") {
        check_cell(&records, &row, "connections/s", |r| {
            r["ab"]["requests_per_s"].as_f64()
        });
        check_cell(&records, &row, "proxy CPU-ms per connection", |r| {
            r["proxy_cpu_ms_per_connection"].as_f64()
        });
    }
    // Every target's value is the median of what its records say.
    let targets = json["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 9, "{targets:?}");
    let one: Vec<f64> = records
        .iter()
        .filter(|r| r["system"] == "zmesh" && r["point"] == "iperf3 ×1")
        .filter_map(|r| r["gbit_per_s"].as_f64())
        .collect();
    let t = targets
        .iter()
        .find(|t| {
            t["target"]
                .as_str()
                .is_some_and(|s| s.starts_with("single-stream"))
        })
        .expect("target");
    assert_eq!(t["value"].as_f64(), Some(median(one)));
    assert_eq!(t["pass"].as_bool(), t["value"].as_f64().map(|v| v >= 6.3));
    for t in targets {
        let line = md
            .lines()
            .find(|l| l.contains(t["target"].as_str().expect("name")))
            .expect("in md");
        let verdict = match t["pass"].as_bool() {
            Some(true) => "pass",
            Some(false) => "**FAIL**",
            None => "not measured",
        };
        assert!(line.contains(verdict), "{line} vs {t}");
    }
    assert!(md.contains("### Issue 5's targets"), "{md}");
}

#[test]
fn bad_arguments_and_missing_tools_fail_without_a_report() {
    let out = tempfile::tempdir().expect("tempdir");
    for (args, says) in [
        (&["--systems", "zmesh"][..], "must include direct"),
        (&["--systems", "direct,direct"], "twice"),
        (&["--streams", "0"], "0"),
        (&["--duration", "-3"], "-3"),
        (&["--steps", "nope"], "nope"),
        (&["--bin-dir", "/nonexistent/zmesh"], "/nonexistent/zmesh"),
    ] {
        let o = method(out.path(), args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // sockperf missing from PATH: named, with its package.
    let empty = tempfile::tempdir().expect("tempdir");
    for tool in ["iperf3", "ab", "nginx", "openssl"] {
        let from = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .expect("sh");
        let path = String::from_utf8_lossy(&from.stdout).trim().to_string();
        std::os::unix::fs::symlink(&path, empty.path().join(tool)).expect("symlink");
    }
    let o = Command::new(PERF)
        .current_dir(out.path())
        .arg("bench-method")
        .env("PATH", empty.path())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("sockperf"), "{err}");
    assert!(
        !out.path().join("perf/results").exists(),
        "a report was written"
    );
}
