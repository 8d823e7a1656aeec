//! Keeping the client's address on connections to a captured pod's app (`ENABLE_ORIG_SRC`).
//!
//! Inside the pod the proxy connects to the app from the client's address (IP_TRANSPARENT).
//! The app's replies go to that foreign address, so without help they would be routed out of
//! the pod instead of back to the proxy. As in Istio's in-pod rules, marked packets are routed
//! to `lo` by a policy route (mark 0x111/0xfff → table 100 → `local default dev lo`). Istio
//! copies the mark onto the app's replies with conntrack (CONNMARK); eBPF capture has no
//! conntrack rules, so the pod's `net.ipv4.tcp_fwmark_accept` is set instead: the app's
//! accepted socket then takes the mark of the SYN the proxy sent, and so does every packet it
//! sends on that connection (the sysctl covers IPv6 too). Other connections to the app carry no
//! mark and are not affected.

use std::io;
use std::process::Command;

/// The mark on the proxy's connections to a pod's app (Istio's inbound connmark).
pub const ORIG_SRC_MARK: u32 = zmesh_ebpf::ORIG_SRC_MARK;
const MASK: u32 = 0xfff;
const TABLE: &str = "100";
/// Before the main table's rule (32766), as Istio's.
const PRIORITY: &str = "32764";
const FWMARK_ACCEPT: &str = "/proc/sys/net/ipv4/tcp_fwmark_accept";

/// Installs the return route in the current thread's netns (the pod's). Idempotent: a pod
/// re-added after a proxy restart already has it.
pub fn install() -> io::Result<()> {
    std::fs::write(FWMARK_ACCEPT, "1")
        .map_err(|e| io::Error::new(e.kind(), format!("{FWMARK_ACCEPT}: {e}")))?;
    for (family, any) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
        remove_rule(family);
        ip(&[
            family,
            "rule",
            "add",
            "fwmark",
            &fwmark(),
            "pref",
            PRIORITY,
            "lookup",
            TABLE,
        ])?;
        ip(&[
            family, "route", "replace", "local", any, "dev", "lo", "table", TABLE,
        ])?;
    }
    Ok(())
}

/// Removes what `install` added (the pod stays, but leaves the mesh). Best effort.
pub fn remove() {
    for family in ["-4", "-6"] {
        remove_rule(family);
        let _ = ip(&[family, "route", "flush", "table", TABLE]);
    }
    let _ = std::fs::write(FWMARK_ACCEPT, "0");
}

fn fwmark() -> String {
    format!("{ORIG_SRC_MARK:#x}/{MASK:#x}")
}

fn remove_rule(family: &str) {
    // At most a few stale copies; `del` fails once none is left.
    for _ in 0..4 {
        if ip(&[
            family,
            "rule",
            "del",
            "fwmark",
            &fwmark(),
            "pref",
            PRIORITY,
            "lookup",
            TABLE,
        ])
        .is_err()
        {
            break;
        }
    }
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("run `ip` (iproute2) for the pod's return route: {e}"),
        )
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
