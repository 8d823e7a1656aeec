//! Provides the capture object in OUT_DIR: compiled from `bpf/` when clang is on the PATH,
//! otherwise the committed copy in `obj/`, so a machine without clang still builds.
//! `ZMESH_EBPF_PREBUILT=1` forces the committed copy.

use std::path::{Path, PathBuf};
use std::process::Command;

const OBJECTS: &[&str] = &["capture.bpf.o"];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-changed=obj");
    println!("cargo:rerun-if-env-changed=ZMESH_EBPF_PREBUILT");

    let prebuilt = std::env::var_os("ZMESH_EBPF_PREBUILT").is_some_and(|v| v != "0");
    if !prebuilt && tool_present("clang") && tool_present("llvm-strip") && compile(&manifest, &out)
    {
        for name in OBJECTS {
            let fresh = std::fs::read(out.join(name)).expect("read compiled object");
            let committed = std::fs::read(manifest.join("obj").join(name)).unwrap_or_default();
            if fresh != committed {
                println!(
                    "cargo:warning=ebpf/obj/{name} does not match ebpf/bpf/ as compiled by this \
                     clang: run `ebpf/check-objects.sh --update` and commit the result"
                );
            }
        }
    } else {
        for name in OBJECTS {
            std::fs::copy(manifest.join("obj").join(name), out.join(name))
                .expect("copy the committed eBPF object");
        }
    }
}

fn tool_present(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether clang compiled the sources. A failure (e.g. clang without libbpf-dev's headers)
/// falls back to the committed objects with a warning, so such a machine still builds.
fn compile(manifest: &Path, out: &Path) -> bool {
    let result = Command::new("sh")
        .arg(manifest.join("bpf/build.sh"))
        .arg(out)
        .output();
    match result {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            let stderr = String::from_utf8_lossy(&o.stderr);
            for line in stderr.lines().take(20) {
                println!("cargo:warning={line}");
            }
            println!("cargo:warning=compiling ebpf/bpf failed: using the committed ebpf/obj");
            false
        }
        Err(e) => {
            println!("cargo:warning=running ebpf/bpf/build.sh: {e}: using the committed ebpf/obj");
            false
        }
    }
}
