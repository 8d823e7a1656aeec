//! Private network namespaces for tests that need capture rules (nftables) or their own
//! routing: the calling thread moves into a fresh namespace, and every thread and process it
//! starts afterwards lives there too. The namespace disappears with the last of them, so a
//! failed test leaves nothing behind on the host.

use std::process::Command;

/// Moves the calling thread into a new, empty network namespace with loopback up. Needs root
/// (CAP_SYS_ADMIN and CAP_NET_ADMIN): fails the test loudly otherwise — CI runs as root.
/// Call it first thing in a synchronous `#[test]`, before any runtime or thread is started.
pub fn enter_private_netns() {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        panic!(
            "this test needs root to create a network namespace (unshare(CLONE_NEWNET): {e}); \
             run the tests as root, as CI does"
        );
    }
    run("ip", &["link", "set", "lo", "up"]);
}

/// Loads an nftables ruleset into the current namespace.
pub fn nft(ruleset: &str) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run nft (apt-get install nftables)");
    child
        .stdin
        .take()
        .expect("nft stdin")
        .write_all(ruleset.as_bytes())
        .expect("write ruleset");
    let status = child.wait().expect("wait for nft");
    assert!(status.success(), "nft rejected the ruleset:\n{ruleset}");
}

/// Runs a command to completion, failing the test with its output if it fails.
pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
