//! The fallback where the eBPF hooks are unavailable: Istio's in-pod rules, in nftables. Inside
//! the pod's netns, outbound TCP is REDIRECTed to the outbound port and inbound TCP (except the
//! HBONE port) to the inbound port; the proxy reads the original destination with
//! `SO_ORIGINAL_DST` (conntrack), as with the eBPF back end. The proxy's own sockets carry
//! [`crate::PROXY_MARK`] and are skipped. There is no bind guard here, and every process in
//! the netns is captured (not only the pod's cgroup).

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Command, Stdio};

use crate::netns::run_in_netns;
use crate::{Error, PodSpec, Ports};

/// The table this module owns in each pod's netns.
pub const TABLE: &str = "zmesh_capture";

/// Generates and applies the in-pod ruleset.
#[derive(Debug, Clone, Copy)]
pub struct Nftables {
    ports: Ports,
    mark: u32,
}

impl Nftables {
    pub fn new(ports: Ports, mark: u32) -> Self {
        Self { ports, mark }
    }

    /// Whether `nft` can run here.
    pub fn detect() -> Result<(), Error> {
        let out = Command::new("nft")
            .arg("--version")
            .output()
            .map_err(|e| Error::Nft(format!("cannot run nft: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Nft(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    }

    /// The ruleset for one pod. Loading it replaces an earlier copy atomically (the empty
    /// `table` line makes the `delete` valid when there is none). Priority -100 is `dstnat`,
    /// spelled as a number because nft 1.0 accepts the name only for prerouting.
    pub fn ruleset(&self) -> String {
        let Ports {
            outbound,
            inbound,
            hbone,
        } = self.ports;
        let mark = self.mark;
        let orig_src = crate::ORIG_SRC_MARK;
        format!(
            "table inet {TABLE} {{}}\n\
             delete table inet {TABLE}\n\
             table inet {TABLE} {{\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority -100; policy accept;\n\
             \t\tiifname \"lo\" return\n\
             \t\tmeta mark & 0xfff == {mark:#x} return\n\
             \t\ttcp dport != {hbone} redirect to :{inbound}\n\
             \t}}\n\
             \tchain output {{\n\
             \t\ttype nat hook output priority -100; policy accept;\n\
             \t\tmeta mark & 0xfff == {mark:#x} return\n\
             \t\tmeta mark & 0xfff == {orig_src:#x} return\n\
             \t\tip daddr {{ 0.0.0.0, 127.0.0.0/8 }} return\n\
             \t\tip6 daddr {{ ::, ::1 }} return\n\
             \t\tmeta l4proto tcp redirect to :{outbound}\n\
             \t}}\n\
             }}\n"
        )
    }

    /// Loads the ruleset into the pod's netns. Dropping (or releasing) the result removes it.
    pub fn capture_pod(&self, spec: &PodSpec<'_>) -> Result<NftCapture, Error> {
        let netns = spec.netns.try_clone_to_owned().map_err(Error::Netns)?;
        nft_in(netns.as_fd(), &self.ruleset())?;
        tracing::info!(ips = ?spec.ips, "pod captured (nftables)");
        Ok(NftCapture {
            netns,
            released: false,
        })
    }
}

/// One pod captured by nftables.
#[derive(Debug)]
pub struct NftCapture {
    netns: OwnedFd,
    released: bool,
}

impl NftCapture {
    /// Removes the pod's table.
    pub fn release(mut self) -> Result<(), Error> {
        self.undo()
    }

    fn undo(&mut self) -> Result<(), Error> {
        if std::mem::replace(&mut self.released, true) {
            return Ok(());
        }
        nft_in(self.netns.as_fd(), &format!("delete table inet {TABLE}\n"))?;
        tracing::info!("pod released (nftables)");
        Ok(())
    }
}

impl Drop for NftCapture {
    fn drop(&mut self) {
        if let Err(e) = self.undo() {
            tracing::warn!(error = %e, "removing a pod's nftables rules");
        }
    }
}

/// Runs `nft -f -` with `script` inside `netns` (the child inherits the thread's netns).
fn nft_in(netns: BorrowedFd<'_>, script: &str) -> Result<(), Error> {
    run_in_netns(netns, || {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Nft(format!("cannot run nft: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| Error::Nft(format!("writing to nft: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::Nft(format!("waiting for nft: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Nft(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    })?
}
