//! `zmesh-perf control` end to end with tiny sizes and the debug builds of zmesh-control and
//! zmesh-node: the report holds every number, traceable to the raw records; a one-pod change
//! pushes far fewer bytes than the full set; propagation times are positive. Loopback
//! addresses 127.79.x.y and 127.80.x.y.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const PERF: &str = env!("CARGO_BIN_EXE_zmesh-perf");

/// The directory of the workspace's debug binaries (target/debug), as the e2e tests find it.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    for b in ["zmesh-control", "zmesh-node"] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: build first: cargo build --workspace --bins",
            dir.join(b).display()
        );
    }
    dir
}

fn control(out: &Path, args: &[&str]) -> Output {
    Command::new(PERF)
        .arg("control")
        .arg("--out")
        .arg(out)
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
    let name = dirs[0].file_name().expect("name").to_string_lossy();
    assert!(name.starts_with("control-"), "{name}");
    dirs[0].clone()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The cell of the markdown row starting with `name`, in column `col` (0 = first run).
fn cell(md: &str, name: &str, col: usize) -> String {
    let line = md
        .lines()
        .find(|l| l.starts_with(&format!("| {name} |")))
        .unwrap_or_else(|| panic!("row {name:?} missing:\n{md}"));
    line.split('|')
        .map(str::trim)
        .nth(2 + col)
        .unwrap_or_else(|| panic!("column {col} missing: {line}"))
        .to_string()
}

#[test]
fn tiny_run_reports_propagation_bytes_and_scale() {
    let bins = bin_dir();
    let out = tempfile::tempdir().expect("temp dir");
    let o = control(
        out.path(),
        &[
            "--pods",
            "50",
            "--policies",
            "5",
            "--repeat",
            "1",
            "--scale-pods",
            "200",
            "--net",
            "79",
            "--bin-dir",
            bins.to_str().expect("utf-8 path"),
        ],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "zmesh-perf control failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let dir = results_dir(out.path());
    let md = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    assert!(stdout.contains(&md), "the table is printed on stdout");
    let json: Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("report.json"))
            .expect("report.json is JSON");
    let runs = json["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "propagation run and scale run");
    let (main, scale) = (&runs[0], &runs[1]);
    assert_eq!(
        (f(&main["shape"]["pods"]), f(&scale["shape"]["pods"])),
        (50.0, 200.0)
    );

    // Propagation: one add and one delete, both seen through the data path.
    let policy = main["policy"].as_array().expect("policy records");
    assert_eq!(policy.len(), 1);
    for key in ["apply_s", "delete_s"] {
        let t = f(&policy[0][key]);
        assert!(t > 0.0 && t < 30.0, "{key} = {t}");
    }
    let apply_ms = f(&policy[0]["apply_s"]) * 1e3;
    assert_eq!(
        cell(&md, "DENY policy added → enforced on both nodes (ms)", 0),
        num(apply_ms)
    );
    assert_eq!(
        cell(&md, "DENY policy added → enforced on both nodes (ms)", 1),
        "–"
    );

    // A one-pod change is pushed alone: a small fraction of the full set, on both nodes.
    for run in [main, scale] {
        let full = f(&run["initial"][0]["address_bytes"]);
        let one = &run["one_pod"][0];
        for node in ["node_a", "node_b"] {
            let bytes = f(&one[node]["address_bytes"]);
            assert!(bytes > 0.0, "{node} received the change");
            assert!(
                bytes * 10.0 < full,
                "{node}: one-pod change {bytes} B vs full push {full} B: not incremental"
            );
        }
        assert!(f(&one["both_nodes_s"]) > 0.0);
        assert!(f(&run["control_cpu_initial_s"]) >= 0.0);
        assert!(f(&run["control_memory_end"]["vm_rss_kib"]) > 0.0);
        assert!(f(&run["nodes_ready_s"]) >= f(&run["control_listening_s"]));
    }
    let full_50 = f(&main["initial"][0]["address_bytes"]);
    let full_200 = f(&scale["initial"][0]["address_bytes"]);
    assert!(
        full_200 > 2.0 * full_50,
        "4× the pods, more than 2× the bytes"
    );
    for (col, run) in [main, scale].into_iter().enumerate() {
        assert_eq!(
            cell(&md, "one-pod change, Address bytes (node-a)", col),
            num(f(&run["one_pod"][0]["node_a"]["address_bytes"]))
        );
        assert_eq!(
            cell(&md, "full initial push, Address bytes (node-a)", col),
            num(f(&run["initial"][0]["address_bytes"]))
        );
        let hwm = f(&run["control_memory_end"]["vm_hwm_kib"]) / 1024.0;
        assert_eq!(
            cell(&md, "controller VmHWM at the end (MiB)", col),
            num(hwm)
        );
    }
}

/// The report's number format (perf/src/control_report.rs `num`).
fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() >= 1.0 {
        return format!("{x:.0}");
    }
    match x.abs() {
        a if a >= 100.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        _ => format!("{x:.2}"),
    }
}

#[test]
fn bad_arguments_fail_without_a_report() {
    let out = tempfile::tempdir().expect("temp dir");
    for bad in [
        &["--pods", "0"][..],
        &["--pods", "many"],
        &["--repeat", "0"],
        &["--scale-pods", "-1"],
        &["--policies", "-3"],
        &["--bin-dir", "/nonexistent/zmesh-bins"],
    ] {
        let o = control(out.path(), bad);
        assert!(!o.status.success(), "{bad:?} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.trim().is_empty(), "{bad:?}: no error message");
        if bad[0] == "--bin-dir" {
            assert!(err.contains("not found"), "{err}");
        }
    }
    assert_eq!(
        std::fs::read_dir(out.path()).expect("out").count(),
        0,
        "no results folder after a bad argument"
    );
}
