//! The `zmesh-node` command line as an operator meets it: the help text documents every flag,
//! and a bad config file or a missing certificate source stops start-up at once with a message
//! that names the file, the line and the reason.
//!
//! These runs bind nothing (every listener is "off") and run with an empty environment, so a
//! `ZMESH_*`/`RUST_LOG` variable of the caller cannot change the outcome.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use zmesh_tests::node_bin;

/// What a finished (or stopped) run left behind.
struct Run {
    /// `None` when the process was still running at the deadline (and was killed).
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

/// Runs the node binary with `args` and no environment; kills it after `limit`.
fn run(args: &[&str], limit: Duration) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(node_bin())
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn zmesh-node");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    Run {
        status,
        stdout: read(&out),
        stderr: read(&err),
    }
}

// ---------------------------------------------------------------------------------------------
// --help

/// Flags that scripts, the test harness and the docs use; renaming one breaks them.
const KNOWN_FLAGS: &[&str] = &[
    "config",
    "node-name",
    "network",
    "cluster-id",
    "dev-ca",
    "cert-dir",
    "cert-ttl",
    "shards",
    "driver",
    "no-pin",
    "outbound-addr",
    "socks5-addr",
    "admin-addr",
    "metrics-addr",
    "readiness-addr",
    "max-connections-per-shard",
    "handshake-timeout",
    "connect-timeout",
    "pool-idle-timeout",
    "preserve-source-ip",
    "packet-mark",
    "log",
    "help",
    "version",
];

/// The long flags of a `--help` text and the first line of text under each.
fn documented_flags(help: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = help.lines().collect();
    let mut flags = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let t = match t.strip_prefix('-').and_then(|r| r.split_once(", ")) {
            Some((short, rest)) if short.len() == 1 => rest,
            _ => t,
        };
        let Some(rest) = t.strip_prefix("--") else {
            continue;
        };
        // A flag line is indented and holds only the flag and its value name.
        if !line.starts_with(' ') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let description = lines[i + 1..]
            .iter()
            .map(|l| l.trim())
            .find(|l| !l.is_empty())
            .filter(|l| !l.starts_with('[') && !l.starts_with('-'))
            .unwrap_or_default()
            .to_string();
        flags.push((name, description));
    }
    flags
}

#[test]
fn help_documents_every_flag() {
    let r = run(&["--help"], Duration::from_secs(10));
    assert!(
        r.status.is_some_and(|s| s.success()),
        "--help exit: {:?}\n{}",
        r.status,
        r.stderr
    );
    let flags = documented_flags(&r.stdout);
    assert!(
        flags.len() >= KNOWN_FLAGS.len(),
        "flags parsed from --help: {flags:?}\n{}",
        r.stdout
    );
    for (name, description) in &flags {
        assert!(
            description.split_whitespace().count() >= 2,
            "--{name} has no description line in --help (got {description:?})"
        );
    }
    let names: Vec<&str> = flags.iter().map(|(n, _)| n.as_str()).collect();
    for want in KNOWN_FLAGS {
        assert!(
            names.contains(want),
            "--{want} is not in --help; flags: {names:?}"
        );
    }
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        names.len(),
        "a flag is listed twice: {names:?}"
    );
    // The synopsis names what must be given.
    assert!(
        r.stdout.contains("--config <FILE>") && r.stdout.contains("--node-name <NAME>"),
        "usage line:\n{}",
        r.stdout
    );

    // The short help lists the same flags, each with text beside it.
    let short = run(&["-h"], Duration::from_secs(10));
    assert!(
        short.status.is_some_and(|s| s.success()),
        "-h exit: {:?}",
        short.status
    );
    for name in &names {
        let options = short
            .stdout
            .lines()
            .filter(|l| l.trim_start().starts_with('-'));
        let line = options.clone().find(|l| {
            l.contains(&format!("--{name} ")) || l.trim_end().ends_with(&format!("--{name}"))
        });
        let line = line.unwrap_or_else(|| panic!("--{name} missing from -h:\n{}", short.stdout));
        let after = line
            .split_once(&format!("--{name}"))
            .map(|(_, a)| a)
            .unwrap_or_default();
        let text = after
            .trim_start()
            .strip_prefix('<')
            .map_or(after, |v| v.split_once('>').map_or("", |(_, t)| t));
        assert!(
            text.split_whitespace().count() >= 2,
            "--{name} has no text in -h: {line:?}"
        );
    }
}

#[test]
fn version_and_unknown_flags() {
    let r = run(&["--version"], Duration::from_secs(10));
    assert!(
        r.status.is_some_and(|s| s.success()),
        "--version exit: {:?}",
        r.status
    );
    let v = r.stdout.trim();
    let number = v
        .strip_prefix("zmesh-node ")
        .unwrap_or_else(|| panic!("--version printed {v:?}"));
    assert_eq!(
        number
            .split('.')
            .filter(|p| p.parse::<u32>().is_ok())
            .count(),
        3,
        "version {number:?}"
    );

    let r = run(
        &[
            "--config",
            "x.yaml",
            "--node-name",
            "n",
            "--dev-ca",
            "ca",
            "--sharts",
            "2",
        ],
        Duration::from_secs(10),
    );
    let status = r.status.expect("exits at once");
    assert!(!status.success(), "an unknown flag is accepted");
    assert!(
        r.stderr.contains("--sharts"),
        "the error names the unknown flag:\n{}",
        r.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Start-up errors

const GOOD: &str = r#"workloads:
- uid: cluster1//v1/Pod/demo/client
  name: client
  namespace: demo
  serviceAccount: client
  workloadIps: ["127.30.1.10"]
  protocol: HBONE
  node: node-a
"#;

/// The node's flags with every listener off, so a run binds nothing.
fn node_args<'a>(config: &'a str, ca: Option<&'a str>) -> Vec<&'a str> {
    let mut args = vec![
        "--config",
        config,
        "--node-name",
        "node-a",
        "--driver",
        "epoll",
        "--shards",
        "1",
    ];
    if let Some(ca) = ca {
        args.extend(["--dev-ca", ca]);
    }
    for flag in [
        "--outbound-addr",
        "--socks5-addr",
        "--admin-addr",
        "--metrics-addr",
        "--readiness-addr",
    ] {
        args.extend([flag, "off"]);
    }
    args
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

/// Start-up must end with a failure, quickly, and stderr must say why.
fn assert_rejected(r: &Run, what: &str) {
    let status = r.status.unwrap_or_else(|| {
        panic!(
            "{what}: still running after the deadline; stderr:\n{}",
            r.stderr
        )
    });
    assert!(
        !status.success(),
        "{what}: exit status {status}; stderr:\n{}",
        r.stderr
    );
}

#[test]
fn good_config_starts() {
    // The control for the cases below: the same flags with a good file keep running, so their
    // failures come from the file's content.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(dir.path(), "good.yaml", GOOD);
    let ca = dir.path().join("ca");
    let r = run(
        &node_args(
            config.to_str().expect("utf-8"),
            Some(ca.to_str().expect("utf-8")),
        ),
        Duration::from_secs(2),
    );
    assert!(
        r.status.is_none(),
        "a good config did not keep running: {:?}\nstderr:\n{}",
        r.status,
        r.stderr
    );
    assert!(
        r.stderr.contains("config loaded"),
        "start-up log:\n{}",
        r.stderr
    );
    // Logs go to files and journals, not a terminal: no colour escape codes in them.
    assert!(
        !r.stderr.contains('\u{1b}'),
        "ANSI escape codes in the log written to a file:\n{:?}",
        r.stderr
    );
}

#[test]
fn bad_config_is_rejected_with_file_line_and_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca");
    let ca = ca.to_str().expect("utf-8");
    // (name, text, line of the error, what the reason must say)
    let cases: &[(&str, String, u32, &[&str])] = &[
        (
            "unknown-field.yaml",
            GOOD.replace("serviceAccount: client", "serviceAcount: client"),
            5,
            &["unknown field", "serviceAcount"],
        ),
        (
            "bad-ip.yaml",
            GOOD.replace(
                "workloadIps: [\"127.30.1.10\"]",
                "workloadIps:\n  - 127.30.1.10\n  - 127.30.1.300",
            ),
            8,
            &["invalid IP address"],
        ),
        (
            "unclosed-quote.yaml",
            GOOD.replace("node: node-a", "node: \"node-a"),
            8,
            &["unclosed quote"],
        ),
        (
            "bad-indent.yaml",
            GOOD.replace("  namespace: demo", "    namespace: demo"),
            4,
            &["mapping values are not allowed"],
        ),
        (
            "duplicate-ip.yaml",
            format!(
                "{GOOD}{}",
                GOOD.replace("workloads:\n", "")
                    .replace("/client", "/client2")
            ),
            9,
            &["127.30.1.10", "already used"],
        ),
    ];
    for (name, text, line, reason) in cases {
        let path = write(dir.path(), name, text);
        let path = path.to_str().expect("utf-8");
        let start = Instant::now();
        let r = run(&node_args(path, Some(ca)), Duration::from_secs(10));
        assert_rejected(&r, name);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{name}: took {:?} to fail",
            start.elapsed()
        );
        let at = format!("{path}:{line}:");
        assert!(
            r.stderr.contains(&at),
            "{name}: stderr does not point at {at}\n{}",
            r.stderr
        );
        for word in *reason {
            assert!(
                r.stderr.contains(word),
                "{name}: stderr does not say {word:?}\n{}",
                r.stderr
            );
        }
    }

    // A file that is not there.
    let missing = dir.path().join("missing.yaml");
    let missing = missing.to_str().expect("utf-8");
    let r = run(&node_args(missing, Some(ca)), Duration::from_secs(10));
    assert_rejected(&r, "missing file");
    assert!(
        r.stderr.contains(missing) && r.stderr.contains("No such file"),
        "missing file:\n{}",
        r.stderr
    );
}

#[test]
fn no_certificate_source_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(dir.path(), "good.yaml", GOOD);
    let r = run(
        &node_args(config.to_str().expect("utf-8"), None),
        Duration::from_secs(10),
    );
    assert_rejected(&r, "no --dev-ca or --cert-dir");
    assert!(
        r.stderr.contains("certificates")
            && r.stderr.contains("--dev-ca")
            && r.stderr.contains("--cert-dir"),
        "the error says which flags give certificates:\n{}",
        r.stderr
    );
    // A certificate directory without the files is named in the error too.
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).expect("mkdir");
    let mut args = node_args(config.to_str().expect("utf-8"), None);
    args.extend(["--cert-dir", certs.to_str().expect("utf-8")]);
    let r = run(&args, Duration::from_secs(10));
    assert_rejected(&r, "empty --cert-dir");
    assert!(
        r.stderr.contains("cert-chain.pem") || r.stderr.contains("root-cert.pem"),
        "empty cert dir:\n{}",
        r.stderr
    );
}
