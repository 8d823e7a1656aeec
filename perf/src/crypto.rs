//! The crypto ceiling: how fast one core seals and opens 16 KiB TLS records with AES-GCM, using
//! aws-lc-rs, the library behind rustls' default crypto provider in zmesh. Every HBONE byte is
//! sealed once (node A) and opened once (node B), so `1 / seal+open rate` is the CPU floor per
//! byte, and zmesh's CPU-s per GB can be set beside it (BENCH-METHOD's `openssl speed` number,
//! measured with the library that actually runs).

use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, Algorithm, LessSafeKey, Nonce, UnboundKey};

/// TLS's largest record payload: what a bulk transfer is cut into.
pub const RECORD: usize = 16 << 10;

/// One algorithm's result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CryptoResult {
    pub algorithm: String,
    pub record_bytes: usize,
    /// Sealing alone, GB (10⁹ bytes) of plaintext per second on one core.
    pub seal_gb_per_s: f64,
    /// Sealing then opening every record on the same core: bytes carried per second when one
    /// core does both ends' crypto.
    pub seal_open_gb_per_s: f64,
    /// CPU-seconds per GB for sealing and opening it: the floor of an HBONE hop's CPU cost.
    pub floor_cpu_s_per_gb: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("{0}: aws-lc-rs refused the operation")]
    Refused(&'static str),
}

/// Measures AES-256-GCM and AES-128-GCM, each for about `time` per mode, on this thread.
pub fn measure(time: Duration) -> Result<Vec<CryptoResult>, CryptoError> {
    [("AES-256-GCM", &AES_256_GCM), ("AES-128-GCM", &AES_128_GCM)]
        .into_iter()
        .map(|(name, alg)| one(name, alg, time))
        .collect()
}

fn one(name: &str, alg: &'static Algorithm, time: Duration) -> Result<CryptoResult, CryptoError> {
    let key_bytes = vec![0x42u8; alg.key_len()];
    let key = LessSafeKey::new(
        UnboundKey::new(alg, &key_bytes).map_err(|_| CryptoError::Refused("key"))?,
    );
    let mut buf = vec![0x17u8; RECORD];
    let seal = rate(time, |seq| {
        key.seal_in_place_separate_tag(nonce(seq), aad(), &mut buf)
            .map(|_| ())
            .map_err(|_| CryptoError::Refused("seal"))
    })?;
    let both = rate(time, |seq| {
        let tag = key
            .seal_in_place_separate_tag(nonce(seq), aad(), &mut buf)
            .map_err(|_| CryptoError::Refused("seal"))?;
        key.open_in_place_separate_tag(nonce(seq), aad(), tag.as_ref(), &mut buf)
            .map(|_| ())
            .map_err(|_| CryptoError::Refused("open"))
    })?;
    Ok(CryptoResult {
        algorithm: name.to_string(),
        record_bytes: RECORD,
        seal_gb_per_s: seal,
        seal_open_gb_per_s: both,
        floor_cpu_s_per_gb: 1.0 / both,
    })
}

/// GB of records per second that `f` processes, over about `time`.
fn rate(
    time: Duration,
    mut f: impl FnMut(u64) -> Result<(), CryptoError>,
) -> Result<f64, CryptoError> {
    let start = Instant::now();
    let mut seq = 0u64;
    // Check the clock every 64 records: reading it costs next to nothing, but why pay.
    while start.elapsed() < time {
        for _ in 0..64 {
            f(seq)?;
            seq += 1;
        }
    }
    Ok(seq as f64 * RECORD as f64 / start.elapsed().as_secs_f64() / 1e9)
}

/// TLS 1.3's per-record nonce: the sequence number in the last 8 bytes (the IV is zero here).
fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// TLS 1.3's additional data: the record header of an application-data record.
fn aad() -> Aad<[u8; 5]> {
    let len = (RECORD + 16) as u16;
    let [hi, lo] = len.to_be_bytes();
    Aad::from([0x17, 0x03, 0x03, hi, lo])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_both_algorithms() {
        let r = measure(Duration::from_millis(20)).expect("crypto");
        assert_eq!(r.len(), 2);
        for x in &r {
            assert!(x.seal_gb_per_s > 0.0 && x.seal_open_gb_per_s > 0.0, "{x:?}");
            // The floor is what a GB costs at the measured seal+open rate (no timing claims
            // here: the machine is shared and noisy).
            assert!(
                (x.floor_cpu_s_per_gb * x.seal_open_gb_per_s - 1.0).abs() < 1e-9,
                "{x:?}"
            );
        }
    }
}
