//! The committed objects in `obj/` are what `bpf/` compiles to, so a machine without clang
//! builds exactly the programs in the sources. Needs clang and llvm-strip (CI installs them:
//! `apt-get install clang llvm libbpf-dev`); fails without them rather than pass unchecked.

#[test]
fn committed_objects_match_the_sources() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/check-objects.sh");
    let out = std::process::Command::new("sh")
        .arg(script)
        .output()
        .expect("run ebpf/check-objects.sh");
    assert!(
        out.status.success(),
        "ebpf/check-objects.sh failed (needs clang, llvm-strip and libbpf-dev):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
