//! Compiles zmesh's .proto files with protox (pure Rust), so a fresh machine needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/envoy/discovery.proto",
        "proto/istio/workload.proto",
        "proto/istio/authorization.proto",
        "proto/istio/ca.proto",
        "proto/istio/zds.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Addresses are raw 4/16-byte strings; `bytes::Bytes` avoids a copy per decode.
        .bytes(".istio.workload.Workload.addresses")
        // An ordered map: a workload always encodes to the same bytes (stable versions, stable
        // pushes); the other maps are request-side only.
        .btree_map(".istio.workload.Workload.services")
        .compile_fds(fds)?;
    Ok(())
}
