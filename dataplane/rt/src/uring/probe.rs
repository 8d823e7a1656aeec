//! Can this process use io_uring the way the driver does? Container seccomp profiles commonly
//! block the syscalls; older kernels lack opcodes or provided-buffer rings.

use std::sync::Arc;

use io_uring::{IoUring, Probe, opcode};

use crate::RuntimeStats;

/// Ok if io_uring is usable, else the reason it is not.
pub(crate) fn probe() -> Result<(), String> {
    let mut ring = IoUring::new(8).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let params = ring.params();
    if !params.is_feature_ext_arg() {
        return Err("kernel lacks IORING_FEAT_EXT_ARG (needs Linux 5.11+)".into());
    }
    if !params.is_feature_nodrop() {
        return Err("kernel lacks IORING_FEAT_NODROP".into());
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring probe failed: {e}"))?;
    let needed = [
        ("Accept", opcode::Accept::CODE),
        ("Recv", opcode::Recv::CODE),
        ("Send", opcode::Send::CODE),
        ("SendZc", opcode::SendZc::CODE),
        ("Connect", opcode::Connect::CODE),
        ("Read", opcode::Read::CODE),
        ("Timeout", opcode::Timeout::CODE),
        ("AsyncCancel", opcode::AsyncCancel::CODE),
    ];
    for (name, code) in needed {
        if !probe.is_supported(code) {
            return Err(format!("io_uring opcode {name} unsupported"));
        }
    }
    // Provided-buffer rings arrived with multishot accept (5.19): registering one proves both.
    let stats = Arc::new(RuntimeStats::default());
    let bufs = super::bufring::BufRing::new(&ring.submitter(), 1, 4096, 0, &stats)
        .map_err(|e| format!("io_uring buffer ring registration failed: {e}"))?;
    let unregistered = ring.submitter().unregister_buf_ring(0);
    if unregistered.is_err() {
        bufs.leak.set(true);
    }
    drop(bufs);
    // Seccomp may allow setup but not enter: run one no-op through the ring.
    let nop = opcode::Nop::new().build().user_data(7);
    // SAFETY: a NOP references no memory.
    unsafe { ring.submission().push(&nop) }.map_err(|_| "io_uring queue full".to_string())?;
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter failed: {e}"))?;
    match ring.completion().next() {
        Some(c) if c.user_data() == 7 && c.result() >= 0 => Ok(()),
        _ => Err("io_uring no-op did not complete".into()),
    }
}
