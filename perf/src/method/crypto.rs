//! The crypto ceiling: `openssl speed -evp` (BENCH-METHOD's number: AES-GCM encryption of
//! 16 KiB blocks on one core) beside the aws-lc-rs micro-benchmark of the library zmesh's TLS
//! actually uses (seal, and seal+open, of 16 KiB records).

use std::fmt::Write;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::method::cli::Settings;
use crate::method::tools::parse_openssl_speed;
use crate::suite_report::num;

const BLOCK: u32 = 16 << 10;

#[derive(Clone, Debug, serde::Serialize)]
pub struct OpensslSpeed {
    pub algorithm: String,
    pub block_bytes: u32,
    /// Encryption, GB (10⁹ bytes) per second on one core.
    pub encrypt_gb_per_s: f64,
    /// 2 / encrypt rate: encrypting on one node and decrypting on the other (decryption
    /// costs about what encryption does with AES-GCM), CPU-seconds per GB.
    pub floor_cpu_s_per_gb: f64,
    /// `openssl speed -mr` output.
    pub raw: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Ceiling {
    pub openssl_version: String,
    pub openssl: Vec<OpensslSpeed>,
    pub aws_lc_rs: Vec<crate::crypto::CryptoResult>,
}

pub fn measure(s: &Settings) -> anyhow::Result<Ceiling> {
    let mut openssl = Vec::new();
    for alg in ["aes-256-gcm", "aes-128-gcm"] {
        let out = Command::new("openssl")
            .args(["speed", "-evp", alg, "-bytes", &BLOCK.to_string()])
            .args(["-seconds", &s.crypto_seconds.to_string(), "-mr"])
            .output()
            .context("running openssl speed")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(
            out.status.success(),
            "openssl speed {alg} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let bps = parse_openssl_speed(&text, alg)?;
        let gb = bps / 1e9;
        openssl.push(OpensslSpeed {
            algorithm: alg.to_uppercase(),
            block_bytes: BLOCK,
            encrypt_gb_per_s: gb,
            floor_cpu_s_per_gb: 2.0 / gb,
            raw: text,
        });
    }
    let version = Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let t = Duration::from_secs_f64(if s.quick { 0.25 } else { 1.0 });
    Ok(Ceiling {
        openssl_version: version,
        openssl,
        aws_lc_rs: crate::crypto::measure(t)?,
    })
}

pub fn markdown(c: &Ceiling) -> String {
    let mut out = String::from(
        "\n### Crypto ceiling (one core, 16 KiB blocks)\n\n\
         | tool | algorithm | encrypt GB/s | seal+open GB/s | floor CPU-s per GB (encrypt + decrypt) |\n\
         |---|---|---:|---:|---:|\n",
    );
    for o in &c.openssl {
        let _ = writeln!(
            out,
            "| {} | {} | {} | – | {} |",
            c.openssl_version
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
            o.algorithm,
            num(o.encrypt_gb_per_s),
            num(o.floor_cpu_s_per_gb)
        );
    }
    for a in &c.aws_lc_rs {
        let _ = writeln!(
            out,
            "| aws-lc-rs | {} | {} | {} | {} |",
            a.algorithm,
            num(a.seal_gb_per_s),
            num(a.seal_open_gb_per_s),
            num(a.floor_cpu_s_per_gb)
        );
    }
    out
}
