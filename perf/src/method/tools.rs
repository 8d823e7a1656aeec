//! The external tools of BENCH-METHOD and how their output is read: `iperf3 -J` (JSON),
//! `sockperf ping-pong` (text), `ab` (text), `openssl speed -mr` (machine-readable text).
//! Each parser either returns every number it was asked for or an error that names the tool
//! and what was missing, so a changed output format stops the run instead of giving a report
//! with made-up numbers.

use std::path::{Path, PathBuf};

/// An error reading one tool's output.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{tool}: {what} not found in its output (has the output format changed?)\n{tail}")]
    Missing {
        tool: &'static str,
        what: String,
        tail: String,
    },
    #[error("{tool} reported an error: {msg}")]
    Reported { tool: &'static str, msg: String },
    #[error("`{0}` not found on PATH: {1}")]
    NotInstalled(String, &'static str),
}

fn missing(tool: &'static str, what: &str, text: &str) -> ToolError {
    let lines: Vec<&str> = text.lines().collect();
    ToolError::Missing {
        tool,
        what: what.to_string(),
        tail: lines[lines.len().saturating_sub(12)..].join("\n"),
    }
}

/// Finds `program` on PATH, or says which package provides it.
pub fn which(program: &str, package: &'static str) -> Result<PathBuf, ToolError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
        .ok_or_else(|| ToolError::NotInstalled(program.to_string(), package))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What `iperf3 -J` (client side) says the receiver got.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Iperf {
    pub bytes_received: u64,
    pub seconds: f64,
    pub bits_per_second: f64,
    pub retransmits: Option<u64>,
}

pub fn parse_iperf(json: &str) -> Result<Iperf, ToolError> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|_| missing("iperf3", "a JSON document", json))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(ToolError::Reported {
            tool: "iperf3",
            msg: e.to_string(),
        });
    }
    let end = &v["end"];
    let rx = &end["sum_received"];
    let f = |x: &serde_json::Value, k: &str| {
        x[k].as_f64()
            .ok_or_else(|| missing("iperf3", &format!("end.{k}"), json))
    };
    Ok(Iperf {
        bytes_received: f(rx, "bytes")? as u64,
        seconds: f(rx, "seconds")?,
        bits_per_second: f(rx, "bits_per_second")?,
        retransmits: end["sum_sent"]["retransmits"].as_u64(),
    })
}

/// What `sockperf ping-pong --full-rtt` reports for its valid window.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Sockperf {
    /// Round trips completed in the valid window (after sockperf's own warm-up).
    pub round_trips: u64,
    pub seconds: f64,
    pub round_trips_per_s: f64,
    pub avg_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Drops ANSI colour sequences (sockperf colours some lines even when not on a terminal).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ params letter
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value after `key=` in `line` (up to `;`, `(` or a space).
fn field(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest.find([';', ' ', '(']).unwrap_or(rest.len());
    rest[..end].trim().trim_end_matches("sec").parse().ok()
}

pub fn parse_sockperf(raw: &str) -> Result<Sockperf, ToolError> {
    let text = strip_ansi(raw);
    if !text.contains("--full-rtt") && !text.contains("avg-rtt") {
        return Err(missing(
            "sockperf",
            "avg-rtt (was --full-rtt given?)",
            &text,
        ));
    }
    let valid = text
        .lines()
        .find(|l| l.contains("[Valid Duration]"))
        .ok_or_else(|| missing("sockperf", "the [Valid Duration] line", &text))?;
    let seconds = field(valid, "RunTime=")
        .ok_or_else(|| missing("sockperf", "RunTime= of the valid window", &text))?;
    let round_trips = field(valid, "ReceivedMessages=")
        .ok_or_else(|| missing("sockperf", "ReceivedMessages= of the valid window", &text))?
        as u64;
    let avg_us = text
        .lines()
        .find_map(|l| field(l, "avg-rtt="))
        .ok_or_else(|| missing("sockperf", "avg-rtt=", &text))?;
    let pct = |p: &str| {
        let key = format!("percentile {p} =");
        text.lines()
            .find_map(|l| l.split_once(&key).and_then(|(_, v)| v.trim().parse().ok()))
            .ok_or_else(|| missing("sockperf", &format!("`{key}`"), &text))
    };
    let max_us = text
        .lines()
        .find_map(|l| {
            l.split_once("<MAX> observation =")
                .and_then(|(_, v)| v.trim().parse().ok())
        })
        .ok_or_else(|| missing("sockperf", "<MAX> observation", &text))?;
    if seconds <= 0.0 || round_trips == 0 {
        return Err(ToolError::Reported {
            tool: "sockperf",
            msg: format!("no round trips in the valid window ({round_trips} in {seconds} s)"),
        });
    }
    Ok(Sockperf {
        round_trips,
        seconds,
        round_trips_per_s: round_trips as f64 / seconds,
        avg_us,
        p50_us: pct("50.000")?,
        p90_us: pct("90.000")?,
        p99_us: pct("99.000")?,
        p999_us: pct("99.900")?,
        max_us,
    })
}

/// What `ab` reports.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Ab {
    pub complete: u64,
    pub failed: u64,
    pub non_2xx: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
}

pub fn parse_ab(text: &str) -> Result<Ab, ToolError> {
    let after = |key: &str| {
        text.lines()
            .find_map(|l| l.trim_start().strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let need = |key: &str| after(key).ok_or_else(|| missing("ab", key, text));
    let ab = Ab {
        complete: need("Complete requests:")? as u64,
        failed: need("Failed requests:")? as u64,
        // Only printed when some answers were not 2xx.
        non_2xx: after("Non-2xx responses:").unwrap_or(0.0) as u64,
        seconds: need("Time taken for tests:")?,
        requests_per_s: need("Requests per second:")?,
    };
    if ab.complete == 0 {
        return Err(ToolError::Reported {
            tool: "ab",
            msg: "no request completed".into(),
        });
    }
    Ok(ab)
}

/// `openssl speed -evp ALG -bytes N -mr`: bytes per second at the one block size asked for.
pub fn parse_openssl_speed(text: &str, algorithm: &str) -> Result<f64, ToolError> {
    // `+F:<n>:<algorithm>:<bytes/s for each size>`; with one -bytes size there is one value.
    text.lines()
        .filter_map(|l| l.strip_prefix("+F:"))
        .filter_map(|l| {
            let mut it = l.split(':');
            let _n = it.next()?;
            let alg = it.next()?;
            let v = it.next()?.trim().parse::<f64>().ok()?;
            alg.eq_ignore_ascii_case(algorithm).then_some(v)
        })
        .next()
        .filter(|v| *v > 0.0)
        .ok_or_else(|| missing("openssl speed", &format!("+F line for {algorithm}"), text))
}

#[cfg(test)]
#[path = "tools_tests.rs"]
mod tests;
